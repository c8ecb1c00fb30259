//! Sink of the L3/L4 netns bench (bench/netns/l4.sh): attaches `l4sink.bpf.o`
//! (bench/netns/bpf/l4sink.bpf.c) in native XDP mode to an interface of the current namespace, which
//! counts and drops IPv4/UDP frames (and counts the SNATed ones and the distinct flows).
//!
//! Driven over stdin, one command a line, each answered with one line on stdout:
//! - `snap` → `rx=N snat=N tx=N pass=N flows=N bytes=N` (sums over CPUs, cumulative)
//! - `reply 1` / `reply 0` → `ok`: answer every frame (XDP_TX, addresses swapped) instead of dropping
//! - `echo` → `ok`: pass every frame to the stack, where a UDP socket on `--echo-port` answers it
//! - `quit` or end of input → detach and exit.

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use clap::Parser;
use std::io::{BufRead as _, Write as _};
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "XDP counting sink")]
struct Args {
    /// The compiled sink object (bench/netns/build-bpf.sh)
    #[arg(long)]
    obj: PathBuf,
    #[arg(long, default_value = "l4s")]
    iface: String,
    /// Count frames from this source address as SNATed
    #[arg(long)]
    snat: Option<Ipv4Addr>,
    /// Key distinct flows by destination port (the client-side reply catcher) instead of source port
    #[arg(long)]
    key_dport: bool,
    /// Answer datagrams to this UDP port from a socket (used with the `echo` command)
    #[arg(long)]
    echo_port: Option<u16>,
}

const NAMES: [&str; 6] = ["rx", "snat", "tx", "pass", "flows", "bytes"];

fn set_cfg(bpf: &mut Ebpf, snat: Option<Ipv4Addr>, reply: u32, key_dport: bool) -> Result<()> {
    let mut cfg: Array<_, [u8; 16]> = Array::try_from(bpf.map_mut("sink_cfg").context("map sink_cfg")?)?;
    let mut v = [0u8; 16];
    if let Some(a) = snat {
        v[0..4].copy_from_slice(&a.octets()); // network order
    }
    v[4..8].copy_from_slice(&reply.to_ne_bytes());
    v[8..12].copy_from_slice(&u32::from(key_dport).to_ne_bytes());
    cfg.set(0, v, 0)?;
    Ok(())
}

fn snap(bpf: &Ebpf) -> Result<String> {
    let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(bpf.map("sink_counters").context("map sink_counters")?)?;
    let mut out = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let v: u64 = counters.get(&(i as u32), 0)?.iter().sum();
        out.push(format!("{name}={v}"));
    }
    Ok(out.join(" "))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut bpf = Ebpf::load_file(&args.obj).with_context(|| format!("loading {}", args.obj.display()))?;
    set_cfg(&mut bpf, args.snat, 0, args.key_dport)?;
    if let Some(port) = args.echo_port {
        let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).context("binding the echo socket")?;
        // A priming pass arrives faster than a thread on the shared core answers: 16 MiB of buffer
        // (SO_RCVBUFFORCE, we are root) so nothing is dropped.
        let size: libc::c_int = 16 << 20;
        // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        });
    }
    let prog: &mut Xdp = bpf.program_mut("l4sink").context("program l4sink")?.try_into()?;
    prog.load()?;
    prog.attach(&args.iface, XdpMode::Driver)
        .with_context(|| format!("attaching the sink to {} in native mode", args.iface))?;
    println!("ready");
    std::io::stdout().flush()?;

    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line?;
        let reply = match line.trim() {
            "snap" => snap(&bpf)?,
            "reply 1" => {
                set_cfg(&mut bpf, args.snat, 1, args.key_dport)?;
                "ok".to_owned()
            }
            "echo" => {
                set_cfg(&mut bpf, args.snat, 2, args.key_dport)?;
                "ok".to_owned()
            }
            "reply 0" => {
                set_cfg(&mut bpf, args.snat, 0, args.key_dport)?;
                "ok".to_owned()
            }
            "quit" => break,
            other => bail!("unknown command {other:?}"),
        };
        println!("{reply}");
        std::io::stdout().flush()?;
    }
    Ok(())
}
