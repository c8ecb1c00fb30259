//! Data-plane speed with BPF_PROG_TEST_RUN (root only; prints a skip otherwise): ns per packet for
//! the established fast path (SNAT rewrite), new flows allowed by the last network rule, and new
//! flows whose dimensions all match some rule but no rule matches all (the full bitmap AND, the
//! worst case of LBVS), at 10 and 10,000 rules (`synthetic_policy`).
//!
//! `cargo bench -p portcullis-bench --bench xdp`. Numbers, not assertions; see the report for the
//! machine they were taken on. With ingress `lo`, `bpf_fib_lookup` does not forward, so the
//! forwarding step is a FIB miss (XDP_PASS) rather than a redirect.

use std::{net::Ipv4Addr, path::PathBuf};

use aya::{TestRunOptions, programs::TestRun as _};
use portcullis::bpf::{DataPlane, DataPlaneSettings, privileged_env};
use portcullis_bench::synthetic_policy;
use portcullis_rules::{MemLoader, NoResolutions, load_str};

const REPEAT: u32 = 1_000_000;
const NEW_FLOWS: u16 = 20_000;

fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

fn run(plane: &DataPlane, frame: &[u8], repeat: u32) -> (u32, u128) {
    let r = plane
        .xdp_ingress()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    (r.return_value, r.duration.as_nanos())
}

fn main() {
    if let Err(why) = privileged_env() {
        eprintln!("skip: {why}");
        return;
    }
    let client = Ipv4Addr::new(198, 18, 0, 10);
    println!("{:>7} {:>6} {:>44} {:>10}", "rules", "words", "path", "ns/packet");
    for n in [10usize, 10_000] {
        let policy = load_str("synthetic.yaml", &synthetic_policy(n), &MemLoader::default())
            .expect("synthetic policy")
            .config
            .policy;
        let net = n * 6 / 10;
        let last = net - 1;
        let dst_of = |i: usize| Ipv4Addr::new(203, ((i / 250) % 250) as u8, (i % 250) as u8, 1);
        let port_of = |i: usize| (1000 + (i % 30000)) as u16;
        let open = |snat: bool| {
            let mut s = DataPlaneSettings::new("lo", Ipv4Addr::new(10, 255, 0, 4));
            s.pin_dir = PathBuf::new();
            // No SNAT addresses = never SNAT (an identity rewrite, so repeats see the same frame).
            if snat {
                s.snat_addresses = vec![Ipv4Addr::new(192, 0, 2, 1)];
            }
            let mut plane = DataPlane::open(&s).expect("open");
            plane.load_policy(&policy, None, &NoResolutions).expect("load");
            plane
        };
        let words = (net.div_ceil(64)).max(1);
        let row = |what: &str, ns: u128| println!("{n:>7} {words:>6} {what:>44} {ns:>10}");

        // Established without NAT, in-kernel repeat (test-run does not restore the frame between
        // repeats, so only an identity rewrite can be repeated).
        let plain = open(false);
        let frame = tcp_frame(client, dst_of(last), 20_000, port_of(last));
        run(&plain, &frame, 1);
        let (_, ns) = run(&plain, &frame, REPEAT);
        row("established, no NAT (repeat 1e6)", ns);
        plain.close(false).expect("close");

        // Established with the SNAT rewrite: one run per call (fresh frame), mean.
        let plane = open(true);
        run(&plane, &frame, 1);
        let mut total = 0u128;
        for _ in 0..NEW_FLOWS {
            total += run(&plane, &frame, 1).1;
        }
        row(
            "established + SNAT rewrite (mean of 2e4)",
            total / u128::from(NEW_FLOWS),
        );

        // New flows allowed by the last network rule: distinct source ports, one run each.
        let mut total = 0u128;
        for i in 0..NEW_FLOWS {
            total += run(&plane, &tcp_frame(client, dst_of(last), 21_000 + i, port_of(last)), 1).1;
        }
        row(
            "new flow, last rule, SNAT + 2 ct inserts (2e4)",
            total / u128::from(NEW_FLOWS),
        );

        // Worst case: destination of the last rule, port of the first; nothing matches both, so
        // every word is ANDed. Dropped (default deny), so every repeat is a new flow.
        let frame = tcp_frame(client, dst_of(last), 30_000, port_of(0));
        let (_, ns) = run(&plane, &frame, REPEAT);
        row("new flow, full AND, default deny (repeat 1e6)", ns);
        let stats = plane.stats().expect("stats");
        row(
            "(flow events lost: ring full, nobody reading)",
            u128::from(stats.events_lost),
        );
        plane.close(false).expect("close");
    }
}
