//! L3/L4 load generator of the netns bench (bench/netns/l4.sh).
//!
//! Loads `l4gen.bpf.o` (bench/netns/bpf/l4gen.bpf.c) and drives it with BPF_PROG_TEST_RUN in
//! live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`): the kernel runs the XDP program on a page pool of
//! frames built from `data_in` and really transmits what it XDP_REDIRECTs, here into the client veth.
//! The program rewrites the whole Ethernet/IPv4/UDP header from a template in a map every time and
//! cycles the source port over `--flows` flows. Run it inside the client namespace; run two of them
//! (different `--sport-base`) to keep the forwarder's ring full on 2 cores.
//!
//! Prints one line on exit: `frames=N seconds=S`.

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, TestRunAttrs, TestRunOptions,
    maps::Array,
    programs::{TestRun as _, Xdp},
};
use clap::Parser;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "XDP live-frames UDP generator (BPF_PROG_TEST_RUN)")]
struct Args {
    /// The compiled generator object (bench/netns/build-bpf.sh)
    #[arg(long)]
    obj: PathBuf,
    /// Interface to transmit on (the client veth); also the test run's ingress interface
    #[arg(long, default_value = "l4c")]
    iface: String,
    /// Destination MAC (the firewall's veth)
    #[arg(long)]
    dst_mac: String,
    /// Source MAC (default: the interface's own)
    #[arg(long)]
    src_mac: Option<String>,
    #[arg(long, default_value = "198.18.0.2")]
    src: Ipv4Addr,
    #[arg(long, default_value = "198.19.0.2")]
    dst: Ipv4Addr,
    #[arg(long, default_value_t = 9)]
    dport: u16,
    #[arg(long, default_value_t = 10000)]
    sport_base: u16,
    /// Number of flows (source ports sport_base ..)
    #[arg(long, default_value_t = 5000)]
    flows: u32,
    /// Frame size without FCS (60 = minimum Ethernet frame)
    #[arg(long, default_value_t = 60)]
    size: usize,
    /// Stop after this many seconds ...
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// ... or after this many frames (whichever comes first; 0 = no limit)
    #[arg(long, default_value_t = 0)]
    frames: u64,
    /// Frames per BPF_PROG_TEST_RUN call
    #[arg(long, default_value_t = 1 << 18)]
    repeat: u32,
    /// Live-frames batch size (frames per redirect flush)
    #[arg(long, default_value_t = 64)]
    batch: u32,
    /// Pace to this many runs/s (0 = as fast as possible); each call's setup costs ~30 ms
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Transmit only every n-th run of the program and drop the others: evenly spaced frames at
    /// ~1/n of the full rate (priming conntrack). --frames counts runs.
    #[arg(long, default_value_t = 1)]
    every: u32,
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC address {s:?}");
    }
    for (o, p) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC address {s:?}"))?;
    }
    Ok(out)
}

fn ip_checksum(hdr: &[u8]) -> u16 {
    let mut sum: u32 = hdr.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 + UDP frame of `size` bytes, UDP checksum 0 (none), source port `sport`.
fn frame(args: &Args, src_mac: [u8; 6], dst_mac: [u8; 6], sport: u16) -> Result<Vec<u8>> {
    if !(42..=1514).contains(&args.size) {
        bail!("--size must be 42..=1514");
    }
    let mut f = vec![0u8; args.size];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (args.size - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&args.src.octets());
    ip[16..20].copy_from_slice(&args.dst.octets());
    let csum = ip_checksum(ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&args.dport.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    Ok(f)
}

fn if_index(name: &str) -> Result<u32> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .with_context(|| format!("interface {name} not found in this namespace"))?;
    Ok(s.trim().parse()?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.flows == 0 || u32::from(args.sport_base) + args.flows > 65536 {
        bail!("--flows must be 1.. and sport_base + flows <= 65536");
    }
    let ifindex = if_index(&args.iface)?;
    let src_mac = match &args.src_mac {
        Some(m) => parse_mac(m)?,
        None => parse_mac(&std::fs::read_to_string(format!(
            "/sys/class/net/{}/address",
            args.iface
        ))?)?,
    };
    let dst_mac = parse_mac(&args.dst_mac)?;
    let pkt = frame(&args, src_mac, dst_mac, args.sport_base)?;

    let mut bpf = Ebpf::load_file(&args.obj).with_context(|| format!("loading {}", args.obj.display()))?;
    {
        let mut cfg: Array<_, [u8; 64]> = Array::try_from(bpf.map_mut("gen_cfg").context("map gen_cfg")?)?;
        let mut v = [0u8; 64];
        v[..42].copy_from_slice(&pkt[..42]);
        v[48..52].copy_from_slice(&ifindex.to_ne_bytes());
        v[52..56].copy_from_slice(&args.flows.to_ne_bytes());
        v[56..60].copy_from_slice(&u32::from(args.sport_base).to_ne_bytes());
        v[60..64].copy_from_slice(&args.every.to_ne_bytes());
        cfg.set(0, v, 0)?;
    }
    let prog: &mut Xdp = bpf.program_mut("l4gen").context("program l4gen")?.try_into()?;
    prog.load()?;

    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex;
    // the kernel wants data_end = the frame length, data = data_meta = 0 (no metadata).
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(pkt.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut sent: u64 = 0;
    // Bounded: the deadline, or the frame budget.
    while Instant::now() < deadline && (args.frames == 0 || sent < args.frames) {
        let mut repeat = args.repeat.max(1);
        if args.frames > 0 {
            repeat = repeat.min((args.frames - sent).min(u64::from(u32::MAX)) as u32);
        }
        prog.test_run(TestRunOptions {
            data_in: Some(&pkt),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(args.batch),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN (live frames)")?;
        sent += u64::from(repeat);
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(sent as f64 / args.rate as f64);
            if let Some(ahead) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(ahead);
            }
        }
    }
    println!("frames={sent} seconds={:.3}", start.elapsed().as_secs_f64());
    Ok(())
}
