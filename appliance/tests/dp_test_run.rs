//! The policy data plane (`xdp_ingress` → `xdp_new_flow` → `xdp_apply`) driven with
//! `BPF_PROG_TEST_RUN` on synthetic frames: every verdict path, NAT rewrites with checksums
//! recomputed here, conntrack transitions, re-classification, pins, threat intel, and a
//! randomized comparison with `Policy::decide`.
//!
//! Root only (loading BPF); skipped elsewhere, and failing in CI (`CI=true`) if it cannot run.
//! Test-run uses the calling thread's network namespace: with ingress `lo`, `bpf_fib_lookup`
//! does not forward, so allowed packets come back as XDP_PASS with their rewrites applied; the
//! redirect path is proven in `fib_success_redirects_with_mac_rewrite` inside its own namespace.

use std::{net::Ipv4Addr, path::PathBuf};

use aya::{TestRunOptions, programs::TestRun as _};
use portcullis::bpf::{Counter, DataPlane, DataPlaneSettings, FlowEvent, privileged_env};
use portcullis_common::{CT_STATE_CLOSED, CT_STATE_ESTABLISHED, CT_STATE_FIN, CT_STATE_SYN_SENT, CtKey, CtValue};
use portcullis_rules::{Env, Flow, MemLoader, Name, NoResolutions, Policy, Protocol, Stage, ThreatFeed, Verdict};

macro_rules! require_privileged {
    () => {
        if let Err(why) = privileged_env() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("privileged test cannot run in CI: {why}");
            }
            eprintln!("skip: {why}");
            return;
        }
    };
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const PRIVATE_DST: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
const SNAT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const INTERNAL: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 4);
const MGMT: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 5);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 7);
const INTERNET_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

// ---------------------------------------------------------------------------------------------
// Policies.

/// One collection per `(action, rules)`: actions Allow/Deny are network collections, DNAT a NAT
/// collection, App an application collection (Allow).
fn policy_yaml(collections: &[(&str, &[&str])], extra: &str) -> String {
    let mut y = format!(
        "policy:\n{extra}  ruleCollectionGroups:\n    - name: g\n      priority: 100\n      ruleCollections:\n"
    );
    for (ci, (action, rules)) in collections.iter().enumerate() {
        let (kind, action) = match *action {
            "DNAT" => ("FirewallPolicyNatRuleCollection", "DNAT"),
            "App" => ("FirewallPolicyFilterRuleCollection", "Allow"),
            a => ("FirewallPolicyFilterRuleCollection", a),
        };
        y.push_str(&format!(
            "        - ruleCollectionType: {kind}\n          name: c{ci}\n          priority: {}\n          action: {{type: {action}}}\n          rules:\n",
            100 + ci * 10
        ));
        for r in *rules {
            y.push_str(&format!("            - {r}\n"));
        }
    }
    y
}

fn load_policy(yaml: &str) -> Policy {
    match portcullis_rules::load_str("p.yaml", yaml, &MemLoader::default()) {
        Ok(l) => l.config.policy,
        Err(e) => panic!("{e:?}\n{yaml}"),
    }
}

fn net(name: &str, protos: &str, src: &str, dst: &str, ports: &str) -> String {
    format!(
        "{{ruleType: NetworkRule, name: {name}, ipProtocols: [{protos}], sourceAddresses: [{src}], destinationAddresses: [{dst}], destinationPorts: [{ports}]}}"
    )
}

fn settings() -> DataPlaneSettings {
    let mut s = DataPlaneSettings::new("lo", INTERNAL);
    s.pin_dir = PathBuf::new();
    s.snat_addresses = vec![SNAT];
    s.local_addresses = vec![MGMT];
    s
}

fn open(policy: &Policy) -> DataPlane {
    open_with(settings(), policy, None)
}

fn open_with(s: DataPlaneSettings, policy: &Policy, feed: Option<&ThreatFeed>) -> DataPlane {
    let mut plane = DataPlane::open(&s).expect("open the data plane");
    plane.load_policy(policy, feed, &NoResolutions).expect("load policy");
    plane
}

fn rule_index(policy: &Policy, name: &str) -> u32 {
    policy.rules.iter().position(|r| r.name == name).expect("rule") as u32
}

// ---------------------------------------------------------------------------------------------
// Frames.

#[derive(Clone, Debug)]
struct P {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    sport: u16,
    dport: u16,
    flags: u8,
    icmp_type: u8,
    payload: Vec<u8>,
    udp_checksum: bool,
    frag_off: u16,
    ttl: u8,
}

impl P {
    fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Self {
        P {
            src,
            dst,
            proto: TCP,
            sport,
            dport,
            flags,
            icmp_type: 0,
            payload: b"hello".to_vec(),
            udp_checksum: true,
            frag_off: 0,
            ttl: 64,
        }
    }
    fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Self {
        P {
            proto: UDP,
            flags: 0,
            ..P::tcp(src, dst, sport, dport, 0)
        }
    }
    /// Echo request (`id` in `sport`) or reply (`id` in `dport`), as the data plane keys them.
    fn echo(src: Ipv4Addr, dst: Ipv4Addr, request: bool, id: u16) -> Self {
        let (sport, dport) = if request { (id, 0) } else { (0, id) };
        P {
            proto: ICMP,
            icmp_type: if request { 8 } else { 0 },
            ..P::tcp(src, dst, sport, dport, 0)
        }
    }
    fn reply(&self) -> Self {
        let mut r = self.clone();
        std::mem::swap(&mut r.src, &mut r.dst);
        std::mem::swap(&mut r.sport, &mut r.dport);
        if r.proto == ICMP {
            r.icmp_type = 0;
        }
        r
    }

    fn frame(&self) -> Vec<u8> {
        let l4 = match self.proto {
            TCP => {
                let mut h = Vec::new();
                h.extend_from_slice(&self.sport.to_be_bytes());
                h.extend_from_slice(&self.dport.to_be_bytes());
                h.extend_from_slice(&1000u32.to_be_bytes());
                h.extend_from_slice(&0u32.to_be_bytes());
                h.push(5 << 4);
                h.push(self.flags);
                h.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
                h.extend_from_slice(&self.payload);
                let c = l4_checksum(self.src, self.dst, TCP, &h);
                h[16..18].copy_from_slice(&c.to_be_bytes());
                h
            }
            UDP => {
                let mut h = Vec::new();
                h.extend_from_slice(&self.sport.to_be_bytes());
                h.extend_from_slice(&self.dport.to_be_bytes());
                h.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&self.payload);
                if self.udp_checksum {
                    let mut c = l4_checksum(self.src, self.dst, UDP, &h);
                    if c == 0 {
                        c = 0xffff;
                    }
                    h[6..8].copy_from_slice(&c.to_be_bytes());
                }
                h
            }
            ICMP => {
                let id = if self.icmp_type == 8 { self.sport } else { self.dport };
                let mut h = vec![self.icmp_type, 0, 0, 0];
                h.extend_from_slice(&id.to_be_bytes());
                h.extend_from_slice(&7u16.to_be_bytes());
                h.extend_from_slice(&self.payload);
                let c = checksum(&h, 0);
                h[2..4].copy_from_slice(&c.to_be_bytes());
                h
            }
            _ => self.payload.clone(),
        };
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0x12, 0x34]);
        ip.extend_from_slice(&self.frag_off.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        let c = checksum(&ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }
}

fn sum(data: &[u8], mut acc: u32) -> u32 {
    for chunk in data.chunks(2) {
        let w = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn checksum(data: &[u8], acc: u32) -> u16 {
    fold(sum(data, acc))
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    sum(&p, 0)
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    checksum(l4, pseudo(src, dst, proto, l4.len()))
}

/// Header fields of an IPv4 frame and whether every checksum verifies (recomputed from scratch).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ttl: u8,
    udp_checksum_zero: bool,
}

fn inspect(frame: &[u8]) -> Seen {
    let ip = &frame[14..34];
    assert_eq!(checksum(ip, 0), 0, "IPv4 header checksum");
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &frame[34..14 + tot];
    let mut udp_checksum_zero = false;
    let (sport, dport) = match ip[9] {
        TCP => {
            assert_eq!(checksum(l4, pseudo(src, dst, TCP, l4.len())), 0, "TCP checksum");
            (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]))
        }
        UDP => {
            if l4[6..8] == [0, 0] {
                udp_checksum_zero = true;
            } else {
                assert_eq!(checksum(l4, pseudo(src, dst, UDP, l4.len())), 0, "UDP checksum");
            }
            (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]))
        }
        ICMP => {
            assert_eq!(checksum(l4, 0), 0, "ICMP checksum");
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            if l4[0] == 8 { (id, 0) } else { (0, id) }
        }
        _ => (0, 0),
    };
    Seen {
        src,
        dst,
        sport,
        dport,
        ttl: ip[8],
        udp_checksum_zero,
    }
}

fn run(plane: &DataPlane, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    let r = plane
        .xdp_ingress()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "?",
    }
}

/// Forwarded: XDP_PASS here (lo never forwards: the kernel gets the rewritten packet), or TX /
/// REDIRECT where the FIB resolves.
fn forwarded(v: u32) -> bool {
    matches!(v, XDP_PASS | XDP_TX | XDP_REDIRECT)
}

#[track_caller]
fn expect(plane: &DataPlane, p: &P, verdict: u32) -> Vec<u8> {
    let (v, out) = run(plane, &p.frame());
    assert_eq!(verdict_name(v), verdict_name(verdict), "{p:?}");
    out
}

fn counter(plane: &DataPlane, c: Counter) -> u64 {
    plane.counters().unwrap().get(c)
}

fn ct(plane: &DataPlane, k: &P) -> Option<CtValue> {
    let key = CtKey {
        src: u32::from_ne_bytes(k.src.octets()),
        dst: u32::from_ne_bytes(k.dst.octets()),
        sport: k.sport,
        dport: k.dport,
        proto: k.proto,
        _pad: [0; 3],
    };
    plane
        .conntrack()
        .unwrap()
        .into_iter()
        .find(|(kk, _)| *kk == key)
        .map(|(_, v)| v)
}

fn events(reader: &mut portcullis::bpf::EventReader) -> Vec<FlowEvent> {
    reader.drain()
}

fn std_policy() -> Policy {
    let allow_web = net("allow-web", "TCP", "198.18.0.0/15", "\"*\"", "\"443\", \"1000-2000\"");
    let allow_dns = net("allow-udp", "UDP", "198.18.0.0/15", "\"*\"", "\"53\", \"123\"");
    let allow_ping = net("allow-ping", "ICMP", "198.18.0.0/15", "\"*\"", "\"*\"");
    let deny_ssh = net("deny-ssh", "TCP", "\"*\"", "\"*\"", "\"22\"");
    let allow_private = net("allow-private", "Any", "198.18.0.0/15", "10.0.0.0/8", "\"*\"");
    let app = "{ruleType: ApplicationRule, name: app, sourceAddresses: [\"*\"], protocols: [{protocolType: Https, port: 8443}], targetFqdns: [example.com]}";
    load_policy(&policy_yaml(
        &[
            ("Deny", &[&deny_ssh]),
            ("Allow", &[&allow_web, &allow_dns, &allow_ping, &allow_private]),
            ("App", &[app]),
        ],
        "",
    ))
}

// ---------------------------------------------------------------------------------------------
// Verdict paths.

#[test]
fn network_allow_without_snat_creates_both_conntrack_entries() {
    require_privileged!();
    let policy = std_policy();
    let mut plane = open(&policy);
    let mut ev = plane.take_events().unwrap();
    let p = P::tcp(CLIENT, PRIVATE_DST, 40001, 8080, SYN);
    let out = expect(&plane, &p, XDP_PASS);
    // Private destination: no rewrite.
    let seen = inspect(&out);
    assert_eq!(
        (seen.src, seen.dst, seen.sport, seen.dport),
        (CLIENT, PRIVATE_DST, 40001, 8080)
    );
    assert!(ct(&plane, &p).is_some() && ct(&plane, &p.reply()).is_some());
    let e = events(&mut ev);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].verdict, e[0].stage), (Verdict::Allow, Stage::Network));
    assert_eq!(e[0].rule_index, Some(rule_index(&policy, "allow-private")));
    assert!(!e[0].snat);
    assert_eq!(counter(&plane, Counter::NewAllowed), 1);
    // The reply is tracked: fast path, no event.
    expect(&plane, &p.reply(), XDP_PASS);
    assert_eq!(counter(&plane, Counter::CtHit), 1);
    assert!(events(&mut ev).is_empty());
    let rc = plane.rule_counters().unwrap();
    let c = rc[rule_index(&policy, "allow-private") as usize];
    assert_eq!((c.hits, c.packets), (1, 2));
}

#[test]
fn network_deny_drops_with_event_and_rule_index() {
    require_privileged!();
    let policy = std_policy();
    let mut plane = open(&policy);
    let mut ev = plane.take_events().unwrap();
    expect(&plane, &P::tcp(CLIENT, SERVER, 40002, 22, SYN), XDP_DROP);
    let e = events(&mut ev);
    assert_eq!((e[0].verdict, e[0].stage), (Verdict::Deny, Stage::Network));
    assert_eq!(e[0].rule_index, Some(rule_index(&policy, "deny-ssh")));
    assert_eq!(counter(&plane, Counter::NewDenied), 1);
    assert!(plane.conntrack().unwrap().is_empty());
    assert_eq!(
        plane.rule_counters().unwrap()[rule_index(&policy, "deny-ssh") as usize].hits,
        1
    );
}

#[test]
fn unmatched_flows_are_default_denied_with_an_event() {
    require_privileged!();
    let policy = std_policy();
    let mut plane = open(&policy);
    let mut ev = plane.take_events().unwrap();
    // Wrong port, wrong source, GRE (no Any rule to the Internet).
    expect(&plane, &P::tcp(CLIENT, SERVER, 40003, 444, SYN), XDP_DROP);
    expect(
        &plane,
        &P::tcp(Ipv4Addr::new(192, 168, 1, 1), SERVER, 40003, 443, SYN),
        XDP_DROP,
    );
    let mut gre = P::tcp(CLIENT, SERVER, 0, 0, 0);
    gre.proto = 47;
    expect(&plane, &gre, XDP_DROP);
    let e = events(&mut ev);
    assert_eq!(e.len(), 3);
    assert!(
        e.iter()
            .all(|e| e.verdict == Verdict::Deny && e.stage == Stage::Default && e.rule_index.is_none())
    );
    assert_eq!(counter(&plane, Counter::DefaultDeny), 3);
}

#[test]
fn reply_direction_never_opens_a_flow() {
    require_privileged!();
    let policy = std_policy();
    let plane = open(&policy);
    // A "reply" from the Internet to the client without a flow: evaluated as new, matches nothing.
    expect(&plane, &P::tcp(SERVER, CLIENT, 443, 40004, SYN | ACK), XDP_DROP);
    assert_eq!(counter(&plane, Counter::DefaultDeny), 1);
}

// ---------------------------------------------------------------------------------------------
// SNAT.

#[test]
fn snat_rewrites_tcp_and_the_reply_is_translated_back() {
    require_privileged!();
    let policy = std_policy();
    let mut plane = open(&policy);
    let mut ev = plane.take_events().unwrap();
    let p = P::tcp(CLIENT, SERVER, 40010, 443, SYN);
    let out = inspect(&expect(&plane, &p, XDP_PASS));
    assert_eq!((out.src, out.dst, out.dport), (SNAT, SERVER, 443));
    let (lo, hi) = settings().snat_ports;
    assert!((lo..=hi).contains(&out.sport), "SNAT port {} in {lo}-{hi}", out.sport);
    let e = events(&mut ev);
    assert!(e[0].snat);
    assert_eq!(e[0].nat, Some((SNAT, out.sport)));
    // The reply, to the SNAT address and port, goes back to the client.
    let reply = P::tcp(SERVER, SNAT, 443, out.sport, SYN | ACK);
    let back = inspect(&expect(&plane, &reply, XDP_PASS));
    assert_eq!(
        (back.src, back.dst, back.sport, back.dport),
        (SERVER, CLIENT, 443, 40010)
    );
    // Later packets keep the same binding.
    let again = inspect(&expect(&plane, &P::tcp(CLIENT, SERVER, 40010, 443, ACK), XDP_PASS));
    assert_eq!(again.sport, out.sport);
    let sweep = plane.sweep().unwrap();
    assert_eq!((sweep.ct_entries, sweep.nat_ports_in_use), (2, 1));
}

#[test]
fn snat_rewrites_udp_with_and_without_checksum_and_icmp_echo() {
    require_privileged!();
    let policy = std_policy();
    let plane = open(&policy);
    for with_checksum in [true, false] {
        let mut p = P::udp(CLIENT, SERVER, 40020 + u16::from(with_checksum), 53);
        p.udp_checksum = with_checksum;
        let out = inspect(&expect(&plane, &p, XDP_PASS));
        assert_eq!(out.src, SNAT);
        assert_eq!(out.udp_checksum_zero, !with_checksum, "a zero UDP checksum stays zero");
        let mut reply = P::udp(SERVER, SNAT, 53, out.sport);
        reply.udp_checksum = with_checksum;
        let back = inspect(&expect(&plane, &reply, XDP_PASS));
        assert_eq!((back.dst, back.dport), (CLIENT, p.sport));
        assert_eq!(back.udp_checksum_zero, !with_checksum);
    }
    // ICMP echo: tracked by id; the id is translated like a port.
    let ping = P::echo(CLIENT, SERVER, true, 0x4242);
    let out = inspect(&expect(&plane, &ping, XDP_PASS));
    assert_eq!(out.src, SNAT);
    let id = out.sport;
    let back = inspect(&expect(&plane, &P::echo(SERVER, SNAT, false, id), XDP_PASS));
    assert_eq!((back.src, back.dst, back.dport), (SERVER, CLIENT, 0x4242));
}

#[test]
fn snat_exhaustion_is_a_counted_drop_never_a_wrong_rewrite() {
    require_privileged!();
    let policy = std_policy();
    let mut s = settings();
    s.snat_ports = (60000, 60002);
    let mut plane = open_with(s, &policy, None);
    let mut ev = plane.take_events().unwrap();
    let mut ports = Vec::new();
    for i in 0..3 {
        let out = inspect(&expect(&plane, &P::udp(CLIENT, SERVER, 41000 + i, 123), XDP_PASS));
        ports.push(out.sport);
    }
    ports.sort();
    assert_eq!(ports, vec![60000, 60001, 60002]);
    expect(&plane, &P::udp(CLIENT, SERVER, 41003, 123), XDP_DROP);
    assert_eq!(counter(&plane, Counter::SnatExhausted), 1);
    assert_eq!(plane.stats().unwrap().snat_exhausted, 1);
    let e = events(&mut ev);
    assert!(e.last().unwrap().snat_exhausted);
    // Existing flows keep working.
    expect(&plane, &P::udp(CLIENT, SERVER, 41000, 123), XDP_PASS);
}

#[test]
fn snat_private_ranges_decide_snat() {
    require_privileged!();
    // 0.0.0.0/0 private: never SNAT; 255.255.255.255/32 alone: always SNAT.
    for (ranges, dst, snat) in [
        ("[0.0.0.0/0]", SERVER, false),
        ("[255.255.255.255/32]", PRIVATE_DST, true),
        ("[IANAPrivateRanges]", PRIVATE_DST, false),
        ("[IANAPrivateRanges]", SERVER, true),
    ] {
        let r = net("any", "TCP", "\"*\"", "\"*\"", "\"*\"");
        let policy = load_policy(&policy_yaml(
            &[("Allow", &[&r])],
            &format!("  snat:\n    privateRanges: {ranges}\n"),
        ));
        let plane = open(&policy);
        let out = inspect(&expect(&plane, &P::tcp(CLIENT, dst, 40030, 80, SYN), XDP_PASS));
        assert_eq!(out.src == SNAT, snat, "{ranges} → {dst}");
        assert_eq!(policy.network_snat(dst), snat);
    }
}

// ---------------------------------------------------------------------------------------------
// DNAT.

fn dnat_policy() -> Policy {
    let tcp = format!(
        "{{ruleType: NatRule, name: web, ipProtocols: [TCP], sourceAddresses: [198.51.100.0/24], destinationAddresses: [{SNAT}], destinationPorts: [\"8080\"], translatedAddress: {BACKEND}, translatedPort: \"80\"}}"
    );
    let udp = format!(
        "{{ruleType: NatRule, name: dns, ipProtocols: [UDP], sourceAddresses: [\"*\"], destinationAddresses: [{SNAT}], destinationPorts: [\"5353\"], translatedAddress: {BACKEND}, translatedPort: \"53\"}}"
    );
    load_policy(&policy_yaml(&[("DNAT", &[&tcp, &udp])], ""))
}

#[test]
fn dnat_rewrites_destination_and_source_and_replies_come_back() {
    require_privileged!();
    let policy = dnat_policy();
    let mut plane = open(&policy);
    let mut ev = plane.take_events().unwrap();
    let p = P::tcp(INTERNET_CLIENT, SNAT, 50000, 8080, SYN);
    let out = inspect(&expect(&plane, &p, XDP_PASS));
    // Destination translated, source rewritten to the internal address, source port kept.
    assert_eq!((out.src, out.dst, out.sport, out.dport), (INTERNAL, BACKEND, 50000, 80));
    let e = events(&mut ev);
    assert_eq!((e[0].verdict, e[0].stage), (Verdict::Dnat, Stage::Dnat));
    assert_eq!(e[0].rule_index, Some(rule_index(&policy, "web")));
    assert_eq!(e[0].nat, Some((BACKEND, 80)));
    let back = inspect(&expect(
        &plane,
        &P::tcp(BACKEND, INTERNAL, 80, 50000, SYN | ACK),
        XDP_PASS,
    ));
    assert_eq!(
        (back.src, back.dst, back.sport, back.dport),
        (SNAT, INTERNET_CLIENT, 8080, 50000)
    );
    assert_eq!(counter(&plane, Counter::Dnat), 1);

    // UDP, and a second client with the same source port: the source port must be reallocated.
    let a = inspect(&expect(&plane, &P::udp(INTERNET_CLIENT, SNAT, 50001, 5353), XDP_PASS));
    let b = inspect(&expect(
        &plane,
        &P::udp(Ipv4Addr::new(192, 0, 2, 200), SNAT, 50001, 5353),
        XDP_PASS,
    ));
    assert_eq!((a.dst, a.dport, a.sport), (BACKEND, 53, 50001));
    assert_eq!((b.dst, b.dport), (BACKEND, 53));
    assert_ne!(b.sport, 50001, "collision on the internal side is avoided");
    let back_b = inspect(&expect(&plane, &P::udp(BACKEND, INTERNAL, 53, b.sport), XDP_PASS));
    assert_eq!(
        (back_b.dst, back_b.dport, back_b.src, back_b.sport),
        (Ipv4Addr::new(192, 0, 2, 200), 50001, SNAT, 5353)
    );
}

#[test]
fn dnat_source_restriction_and_other_ports_fall_through() {
    require_privileged!();
    let policy = dnat_policy();
    let plane = open(&policy);
    // Source outside 198.51.100.0/24: no DNAT; the SNAT address is the appliance's own → host.
    expect(
        &plane,
        &P::tcp(Ipv4Addr::new(192, 0, 2, 9), SNAT, 50002, 8080, SYN),
        XDP_PASS,
    );
    assert_eq!(counter(&plane, Counter::PassLocal), 1);
    assert_eq!(counter(&plane, Counter::Dnat), 0);
    // A SNAT-range port on the appliance address without a flow: a late reply, dropped.
    expect(&plane, &P::tcp(SERVER, SNAT, 443, 61234, ACK), XDP_DROP);
    assert_eq!(counter(&plane, Counter::StaleNatPort), 1);
}

#[test]
fn dnat_with_unresolved_translated_fqdn_is_absent() {
    require_privileged!();
    let rule = format!(
        "{{ruleType: NatRule, name: byname, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [{SNAT}], destinationPorts: [\"8443\"], translatedFqdn: web.internal, translatedPort: \"443\"}}"
    );
    let policy = load_policy(&policy_yaml(
        &[("DNAT", &[&rule])],
        "  dnsSettings: {enableProxy: true}\n",
    ));
    let mut plane = DataPlane::open(&settings()).unwrap();
    plane.load_policy(&policy, None, &NoResolutions).unwrap();
    expect(&plane, &P::tcp(INTERNET_CLIENT, SNAT, 50003, 8443, SYN), XDP_PASS);
    assert_eq!(counter(&plane, Counter::Dnat), 0);
    let mut res = std::collections::BTreeMap::new();
    res.insert(
        Name::parse("web.internal").unwrap(),
        vec![BACKEND, Ipv4Addr::new(10, 2, 0, 8)],
    );
    plane.load_policy(&policy, None, &res).unwrap();
    let out = inspect(&expect(
        &plane,
        &P::tcp(INTERNET_CLIENT, SNAT, 50004, 8443, SYN),
        XDP_PASS,
    ));
    assert_eq!((out.dst, out.dport), (BACKEND, 443), "the first resolved address");
}

// ---------------------------------------------------------------------------------------------
// Conntrack.

#[test]
fn tcp_state_syn_established_fin_and_rst() {
    require_privileged!();
    let policy = std_policy();
    let plane = open(&policy);
    let p = P::tcp(CLIENT, PRIVATE_DST, 40100, 443, SYN);
    expect(&plane, &p, XDP_PASS);
    assert_eq!(ct(&plane, &p).unwrap().state, CT_STATE_SYN_SENT);
    expect(&plane, &P::tcp(PRIVATE_DST, CLIENT, 443, 40100, SYN | ACK), XDP_PASS);
    assert_eq!(ct(&plane, &p).unwrap().state, CT_STATE_ESTABLISHED);
    assert_eq!(ct(&plane, &p.reply()).unwrap().state, CT_STATE_ESTABLISHED);
    expect(&plane, &P::tcp(CLIENT, PRIVATE_DST, 40100, 443, FIN | ACK), XDP_PASS);
    assert_eq!(ct(&plane, &p).unwrap().state, CT_STATE_FIN);
    expect(&plane, &P::tcp(PRIVATE_DST, CLIENT, 443, 40100, FIN | ACK), XDP_PASS);
    assert_eq!(ct(&plane, &p).unwrap().state, CT_STATE_CLOSED);
    assert_eq!(ct(&plane, &p.reply()).unwrap().state, CT_STATE_CLOSED);
    // The last ACK still passes.
    expect(&plane, &P::tcp(CLIENT, PRIVATE_DST, 40100, 443, ACK), XDP_PASS);

    // RST closes at once.
    let q = P::tcp(CLIENT, PRIVATE_DST, 40101, 443, SYN);
    expect(&plane, &q, XDP_PASS);
    expect(&plane, &P::tcp(PRIVATE_DST, CLIENT, 443, 40101, RST), XDP_PASS);
    assert_eq!(ct(&plane, &q).unwrap().state, CT_STATE_CLOSED);
    // A new SYN on the closed tuple starts a new flow (a new hit).
    expect(&plane, &q, XDP_PASS);
    assert_eq!(ct(&plane, &q).unwrap().state, CT_STATE_SYN_SENT);
    assert_eq!(counter(&plane, Counter::NewAllowed), 3);
}

#[test]
fn idle_flows_expire_and_replies_after_expiry_are_new_flows() {
    require_privileged!();
    let policy = std_policy();
    let mut s = settings();
    s.timeouts.udp = std::time::Duration::from_millis(50);
    let mut plane = open_with(s, &policy, None);
    let p = P::udp(CLIENT, PRIVATE_DST, 40200, 123);
    expect(&plane, &p, XDP_PASS);
    expect(&plane, &p.reply(), XDP_PASS);
    std::thread::sleep(std::time::Duration::from_millis(120));
    // The reply alone no longer passes: stale entry removed, evaluated as new → default deny.
    expect(&plane, &p.reply(), XDP_DROP);
    assert_eq!(counter(&plane, Counter::CtExpired), 1);
    assert_eq!(plane.sweep().unwrap().ct_entries, 0);
}

#[test]
fn policy_change_to_deny_cuts_established_flows() {
    require_privileged!();
    let allow = net("allow", "TCP", "\"*\"", "\"*\"", "\"443\"");
    let p1 = load_policy(&policy_yaml(&[("Allow", &[&allow])], ""));
    let mut plane = open(&p1);
    let mut ev = plane.take_events().unwrap();
    let flow = P::tcp(CLIENT, SERVER, 40300, 443, SYN);
    let out = inspect(&expect(&plane, &flow, XDP_PASS));
    let g1 = plane.generation();
    // Reload the same policy: the flow is re-classified, still allowed, and keeps its binding.
    assert!(plane.load_policy(&p1, None, &NoResolutions).unwrap() > g1);
    let again = inspect(&expect(&plane, &P::tcp(CLIENT, SERVER, 40300, 443, ACK), XDP_PASS));
    assert_eq!(again.sport, out.sport);
    assert_eq!(counter(&plane, Counter::Reclassified), 1);
    events(&mut ev);
    // Now a deny: the next packet (either direction) is dropped and the entries are gone.
    let deny = net("deny", "TCP", "\"*\"", "\"*\"", "\"443\"");
    let p2 = load_policy(&policy_yaml(&[("Deny", &[&deny]), ("Allow", &[&allow])], ""));
    plane.load_policy(&p2, None, &NoResolutions).unwrap();
    expect(&plane, &P::tcp(SERVER, SNAT, 443, out.sport, ACK), XDP_DROP);
    assert_eq!(counter(&plane, Counter::ReclassifiedDenied), 1);
    let e = events(&mut ev);
    assert!(e[0].reclassified);
    assert_eq!(e[0].rule_index, Some(rule_index(&p2, "deny")));
    assert_eq!((e[0].src, e[0].dst), (CLIENT, SERVER), "reported as the original tuple");
    assert!(plane.conntrack().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Classification edges.

#[test]
fn port_range_and_prefix_edges() {
    require_privileged!();
    let r = net(
        "r",
        "TCP",
        "198.18.0.0/24",
        "203.0.113.0-203.0.113.9",
        "\"1000-2000\", \"443\"",
    );
    let policy = load_policy(&policy_yaml(&[("Allow", &[&r])], ""));
    let plane = open(&policy);
    let mut sport = 42000;
    let mut check = |src: Ipv4Addr, dst: Ipv4Addr, port: u16, ok: bool| {
        sport += 1;
        let (v, _) = run(&plane, &P::tcp(src, dst, sport, port, SYN).frame());
        assert_eq!(forwarded(v), ok, "{src} → {dst}:{port}: {}", verdict_name(v));
    };
    let src = Ipv4Addr::new(198, 18, 0, 1);
    let dst = Ipv4Addr::new(203, 0, 113, 5);
    for (port, ok) in [
        (999, false),
        (1000, true),
        (2000, true),
        (2001, false),
        (442, false),
        (443, true),
        (444, false),
        (0, false),
        (65535, false),
    ] {
        check(src, dst, port, ok);
    }
    for (s, ok) in [
        ("198.18.0.0", true),
        ("198.18.0.255", true),
        ("198.17.255.255", false),
        ("198.18.1.0", false),
    ] {
        check(s.parse().unwrap(), dst, 443, ok);
    }
    for (d, ok) in [
        ("203.0.113.0", true),
        ("203.0.113.9", true),
        ("203.0.112.255", false),
        ("203.0.113.10", false),
    ] {
        check(src, d.parse().unwrap(), 443, ok);
    }
    // UDP on the same port: TCP-only rule.
    let (v, _) = run(&plane, &P::udp(src, dst, 42999, 443).frame());
    assert_eq!(v, XDP_DROP);
}

#[test]
fn more_than_64_rules_and_interleaved_allow_deny() {
    require_privileged!();
    let rules: Vec<String> = (0..130)
        .map(|i| {
            net(
                &format!("r{i}"),
                "TCP",
                "\"*\"",
                &format!("10.{}.{}.0/24", i / 100, i % 100),
                "\"443\"",
            )
        })
        .collect();
    let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
    let deny = net("deny-129", "TCP", "\"*\"", "10.1.29.0/24", "\"443\"");
    let policy = load_policy(&policy_yaml(
        &[("Allow", &refs[..129]), ("Deny", &[&deny]), ("Allow", &refs[129..])],
        "",
    ));
    let mut plane = open(&policy);
    let mut ev = plane.take_events().unwrap();
    for (i, want) in [(0u16, "r0"), (63, "r63"), (64, "r64"), (128, "r128"), (129, "deny-129")] {
        let dst = Ipv4Addr::new(10, (i / 100) as u8, (i % 100) as u8, 255);
        run(&plane, &P::tcp(CLIENT, dst, 43000 + i, 443, SYN).frame());
        let e = events(&mut ev);
        assert_eq!(e[0].rule_index, Some(rule_index(&policy, want)), "rule {i}");
    }
}

// ---------------------------------------------------------------------------------------------
// Pins, threat intel, host traffic.

#[test]
fn fqdn_rules_match_through_pins() {
    require_privileged!();
    let f = "{ruleType: NetworkRule, name: ntp, ipProtocols: [UDP], sourceAddresses: [\"*\"], destinationFqdns: [time.example], destinationPorts: [\"123\"]}";
    let policy = load_policy(&policy_yaml(&[("Allow", &[f])], "  dnsSettings: {enableProxy: true}\n"));
    let mut plane = open(&policy);
    let ntp = Ipv4Addr::new(203, 0, 113, 123);
    expect(&plane, &P::udp(CLIENT, ntp, 44000, 123), XDP_DROP);
    plane.pin_address(ntp, &[Name::parse("time.example").unwrap()]).unwrap();
    expect(&plane, &P::udp(CLIENT, ntp, 44001, 123), XDP_PASS);
    // Pins survive a reload.
    plane.load_policy(&policy, None, &NoResolutions).unwrap();
    expect(&plane, &P::udp(CLIENT, ntp, 44002, 123), XDP_PASS);
    // An unrelated name adds nothing; unpinning removes the match.
    plane
        .pin_address(
            Ipv4Addr::new(203, 0, 113, 124),
            &[Name::parse("other.example").unwrap()],
        )
        .unwrap();
    expect(
        &plane,
        &P::udp(CLIENT, Ipv4Addr::new(203, 0, 113, 124), 44003, 123),
        XDP_DROP,
    );
    plane.unpin_address(ntp).unwrap();
    expect(&plane, &P::udp(CLIENT, ntp, 44004, 123), XDP_DROP);
}

#[test]
fn threat_intel_deny_alert_and_allow_list() {
    require_privileged!();
    let feed = ThreatFeed::parse("203.0.113.0/24\n").unwrap();
    let allow = net("all", "TCP", "\"*\"", "\"*\"", "\"*\"");
    for (mode, verdict) in [("Deny", XDP_DROP), ("Alert", XDP_PASS), ("Off", XDP_PASS)] {
        let extra = format!("  threatIntelMode: {mode}\n  threatIntelWhitelist: {{ipAddresses: [203.0.113.99]}}\n");
        let policy = load_policy(&policy_yaml(&[("Allow", &[&allow])], &extra));
        let mut plane = open_with(settings(), &policy, Some(&feed));
        let mut ev = plane.take_events().unwrap();
        expect(&plane, &P::tcp(CLIENT, SERVER, 45000, 443, SYN), verdict);
        let e = events(&mut ev);
        match mode {
            "Deny" => {
                assert_eq!((e[0].verdict, e[0].stage), (Verdict::Deny, Stage::ThreatIntel));
                assert_eq!(counter(&plane, Counter::ThreatIntelDeny), 1);
            }
            "Alert" => {
                assert!(e[0].threat_intel_alert && e[0].verdict == Verdict::Allow);
                assert_eq!(counter(&plane, Counter::ThreatIntelAlert), 1);
            }
            _ => assert!(!e[0].threat_intel_alert),
        }
        // The allow-listed address and addresses outside the feed are not affected.
        expect(
            &plane,
            &P::tcp(CLIENT, Ipv4Addr::new(203, 0, 113, 99), 45001, 443, SYN),
            XDP_PASS,
        );
        expect(
            &plane,
            &P::tcp(CLIENT, Ipv4Addr::new(203, 0, 114, 1), 45002, 443, SYN),
            XDP_PASS,
        );
    }
}

#[test]
fn application_ports_dns_and_local_traffic_pass_to_the_host() {
    require_privileged!();
    let policy = std_policy();
    // Without the application proxy, application-rule ports fail closed: passing them to the host
    // would let the kernel forward them unfiltered.
    let closed = open(&policy);
    expect(&closed, &P::tcp(CLIENT, SERVER, 46000, 8443, SYN), XDP_DROP);
    assert_eq!(counter(&closed, Counter::AppNoProxy), 1);
    assert_eq!(counter(&closed, Counter::PassAppPort), 0);
    drop(closed);
    let mut s = settings();
    s.application_proxy = true;
    let plane = open_with(s, &policy, None);
    // TCP 8443 (an application rule's port), no network rule: the proxy's.
    expect(&plane, &P::tcp(CLIENT, SERVER, 46000, 8443, SYN), XDP_PASS);
    assert_eq!(counter(&plane, Counter::PassAppPort), 1);
    // Later packets of that flow pass from the remembered decision, without the slow path.
    expect(&plane, &P::tcp(CLIENT, SERVER, 46000, 8443, ACK), XDP_PASS);
    assert_eq!(counter(&plane, Counter::HostHit), 1);
    assert_eq!(counter(&plane, Counter::PassAppPort), 2);
    // UDP 8443 is not intercepted.
    expect(&plane, &P::udp(CLIENT, SERVER, 46001, 8443), XDP_DROP);
    // DNS to the appliance (UDP and TCP), management, replies to the host's own sockets.
    expect(&plane, &P::udp(CLIENT, INTERNAL, 46002, 53), XDP_PASS);
    expect(&plane, &P::tcp(CLIENT, MGMT, 46003, 53, SYN), XDP_PASS);
    assert_eq!(counter(&plane, Counter::PassDns), 2);
    expect(&plane, &P::tcp(CLIENT, MGMT, 46004, 9100, SYN), XDP_PASS);
    expect(&plane, &P::tcp(SERVER, SNAT, 443, 35000, SYN | ACK), XDP_PASS);
    assert_eq!(counter(&plane, Counter::PassLocal), 4);
    assert!(plane.conntrack().unwrap().is_empty(), "host traffic is not tracked");
    // The proxy gone: the remembered decision no longer passes an application port (fail closed).
    let mut plane = plane;
    plane.set_application_proxy(false).unwrap();
    expect(&plane, &P::tcp(CLIENT, SERVER, 46000, 8443, ACK), XDP_DROP);
    assert_eq!(counter(&plane, Counter::AppNoProxy), 1);
    // A reload (new generation) decides again instead of trusting what was remembered.
    plane.set_application_proxy(true).unwrap();
    let hits = counter(&plane, Counter::HostHit);
    plane
        .load_policy(&policy, None, &portcullis_rules::NoResolutions)
        .unwrap();
    expect(&plane, &P::tcp(CLIENT, MGMT, 46004, 9100, ACK), XDP_PASS);
    assert_eq!(
        counter(&plane, Counter::HostHit),
        hits,
        "decided again after the reload"
    );
    expect(&plane, &P::tcp(CLIENT, MGMT, 46004, 9100, ACK), XDP_PASS);
    assert_eq!(counter(&plane, Counter::HostHit), hits + 1);
}

#[test]
fn ipv6_is_dropped_and_counted_arp_passes() {
    require_privileged!();
    let policy = std_policy();
    let plane = open(&policy);
    let mut v6 = vec![
        0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, 17, 64,
    ];
    v6.extend_from_slice(&[0u8; 32]);
    assert_eq!(run(&plane, &v6).0, XDP_DROP);
    assert_eq!(counter(&plane, Counter::Ipv6Dropped), 1);
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(run(&plane, &arp).0, XDP_PASS);
    // Opt-in pass.
    let mut s = settings();
    s.pass_ipv6 = true;
    let plane = open_with(s, &policy, None);
    assert_eq!(run(&plane, &v6).0, XDP_PASS);
}

#[test]
fn malformed_frames_and_fragments() {
    require_privileged!();
    let policy = std_policy();
    let plane = open(&policy);
    let good = P::tcp(CLIENT, PRIVATE_DST, 47000, 443, SYN).frame();
    // Bad IHL, truncated L4, bad version.
    let mut f = good.clone();
    f[14] = 0x44;
    assert_eq!(run(&plane, &f).0, XDP_DROP);
    let f = &good[..14 + 20 + 10];
    let mut f = f.to_vec();
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    assert_eq!(run(&plane, &f).0, XDP_DROP);
    let mut f = good.clone();
    f[14] = 0x65;
    assert_eq!(run(&plane, &f).0, XDP_DROP);
    let c = plane.counters().unwrap();
    assert_eq!((c.bad_ihl, c.truncated_l4, c.bad_version), (1, 1, 1));
    // Non-first fragment: no ports, dropped.
    let mut frag = P::udp(CLIENT, PRIVATE_DST, 47001, 123);
    frag.frag_off = 100;
    assert_eq!(run(&plane, &frag.frame()).0, XDP_DROP);
    assert_eq!(counter(&plane, Counter::FragmentDropped), 1);
    // A first fragment is classified by its L4 header.
    let mut first = P::udp(CLIENT, PRIVATE_DST, 47002, 123);
    first.frag_off = 0x2000;
    assert_eq!(run(&plane, &first.frame()).0, XDP_PASS);
    assert_eq!(counter(&plane, Counter::NewAllowed), 1);
    // A denied first fragment stays denied.
    let mut denied = P::tcp(CLIENT, SERVER, 47003, 22, SYN);
    denied.frag_off = 0x2000;
    assert_eq!(run(&plane, &denied.frame()).0, XDP_DROP);
}

#[test]
fn policies_larger_than_the_data_plane_are_refused() {
    require_privileged!();
    let rules: Vec<String> = (0..16_385)
        .map(|i| {
            net(
                &format!("r{i}"),
                "TCP",
                "\"*\"",
                &format!("10.{}.{}.0/24", i / 256, i % 256),
                "\"443\"",
            )
        })
        .collect();
    let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
    let policy = load_policy(&policy_yaml(&[("Allow", &refs)], ""));
    let mut plane = DataPlane::open(&settings()).unwrap();
    let err = plane.load_policy(&policy, None, &NoResolutions).unwrap_err();
    assert!(err.to_string().contains("at most 16384"), "{err}");
    assert_eq!(plane.generation(), 0);
}

#[test]
fn attach_refuses_without_a_policy() {
    require_privileged!();
    let mut plane = DataPlane::open(&settings()).unwrap();
    assert!(matches!(plane.attach(), Err(portcullis::bpf::BpfError::NoPolicy)));
}

// ---------------------------------------------------------------------------------------------
// Pinned state across a restart.

#[test]
fn pinned_conntrack_survives_a_restart() {
    require_privileged!();
    let dir = PathBuf::from(format!("/sys/fs/bpf/portcullis-test-{}", std::process::id()));
    let mut s = settings();
    s.pin_dir = dir.clone();
    let policy = std_policy();
    let plane = open_with(s.clone(), &policy, None);
    let p = P::tcp(CLIENT, SERVER, 48000, 443, SYN);
    let out = inspect(&expect(&plane, &p, XDP_PASS));
    plane.close(true).unwrap();
    assert!(dir.join("ct_v1").exists());
    // A new process: the reply still finds its flow (re-classified under the new generation).
    let plane = open_with(s, &policy, None);
    let back = inspect(&expect(
        &plane,
        &P::tcp(SERVER, SNAT, 443, out.sport, SYN | ACK),
        XDP_PASS,
    ));
    assert_eq!((back.dst, back.dport), (CLIENT, 48000));
    assert_eq!(counter(&plane, Counter::Reclassified), 1);
    plane.close(false).unwrap();
    assert!(!dir.exists());
}

// ---------------------------------------------------------------------------------------------
// The kernel agrees with the engine.

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.next() as usize % v.len()]
    }
}

#[test]
fn randomized_flows_agree_with_policy_decide() {
    require_privileged!();
    let mut rng = Lcg(0x5eed_1234);
    let srcs = [
        "198.18.0.0/16",
        "198.18.1.0/24",
        "198.18.1.128/25",
        "\"*\"",
        "198.19.0.0-198.19.0.200",
        "10.0.0.0/8",
    ];
    let dsts = [
        "203.0.113.0/24",
        "203.0.113.128/26",
        "\"*\"",
        "10.1.0.0/16",
        "192.0.2.64/27",
        "203.0.112.0/23",
    ];
    let protos = ["TCP", "UDP", "ICMP", "Any", "TCP, UDP"];
    let ports = [
        "\"*\"",
        "\"443\"",
        "\"1000-2000\"",
        "\"53\"",
        "\"22\", \"80\"",
        "\"1999-3000\"",
    ];
    let mut collections: Vec<(String, Vec<String>)> = Vec::new();
    let mut n = 0;
    for c in 0..8 {
        let action = if c % 3 == 1 { "Deny" } else { "Allow" };
        let mut rules = Vec::new();
        for _ in 0..(3 + rng.next() % 8) {
            let [proto, src, dst, port] = [&protos[..], &srcs, &dsts, &ports].map(|v| v[rng.next() as usize % v.len()]);
            rules.push(net(&format!("r{n}"), proto, src, dst, port));
            n += 1;
        }
        collections.push((action.to_owned(), rules));
    }
    let dnat = format!(
        "{{ruleType: NatRule, name: nat, ipProtocols: [TCP, UDP], sourceAddresses: [198.51.100.0/24], destinationAddresses: [{SNAT}], destinationPorts: [\"8080\"], translatedAddress: {BACKEND}, translatedPort: \"80\"}}"
    );
    let app = "{ruleType: ApplicationRule, name: app, sourceAddresses: [\"*\"], protocols: [{protocolType: Https, port: 8443}], targetFqdns: [example.com]}";
    let mut spec: Vec<(&str, Vec<&str>)> = vec![("DNAT", vec![dnat.as_str()])];
    for (a, r) in &collections {
        spec.push((a.as_str(), r.iter().map(String::as_str).collect()));
    }
    spec.push(("App", vec![app]));
    let spec_ref: Vec<(&str, &[&str])> = spec.iter().map(|(a, r)| (*a, r.as_slice())).collect();
    let policy = load_policy(&policy_yaml(&spec_ref, ""));
    let mut plane = open(&policy);
    let mut ev = plane.take_events().unwrap();

    let src_pool: Vec<Ipv4Addr> = [
        "198.18.0.1",
        "198.18.1.1",
        "198.18.1.200",
        "198.19.0.200",
        "198.19.0.201",
        "10.9.9.9",
        "198.51.100.5",
        "8.8.8.8",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let dst_pool: Vec<Ipv4Addr> = [
        "203.0.113.1",
        "203.0.113.129",
        "203.0.113.192",
        "10.1.2.3",
        "192.0.2.64",
        "192.0.2.95",
        "192.0.2.96",
        "203.0.112.0",
        "1.1.1.1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .chain([SNAT])
    .collect();
    let port_pool = [
        22u16, 53, 80, 443, 999, 1000, 1500, 1999, 2000, 2001, 3000, 3001, 8080, 8443,
    ];
    let mut compared = 0;
    for i in 0..600u16 {
        let src = *rng.pick(&src_pool);
        let dst = *rng.pick(&dst_pool);
        let (proto, protocol) = *rng.pick(&[(TCP, Protocol::Tcp), (UDP, Protocol::Udp), (ICMP, Protocol::Icmp)]);
        let port = if proto == ICMP { 0 } else { *rng.pick(&port_pool) };
        let sport = 1024 + i;
        let p = match proto {
            TCP => P::tcp(src, dst, sport, port, SYN),
            UDP => P::udp(src, dst, sport, port),
            _ => P::echo(src, dst, true, sport),
        };
        let flow = Flow {
            source: src,
            destination_ip: Some(dst),
            destination_name: None,
            port,
            protocol,
            host_port: None,
        };
        let d = policy.decide(&flow, &Env::default());
        let (v, _) = run(&plane, &p.frame());
        let e = events(&mut ev);
        let ctx = format!(
            "{p:?}: engine {:?} {:?} {:?} ({}), kernel {} {e:?}",
            d.verdict,
            d.stage,
            d.rule_index,
            d.reason,
            verdict_name(v)
        );
        if dst == SNAT && d.verdict != Verdict::Dnat {
            // The appliance's own address: the host stack's (not a rule decision).
            assert_eq!(v, XDP_PASS, "{ctx}");
            continue;
        }
        compared += 1;
        let intercepted = proto == TCP && policy.application_ports().contains_key(&port);
        match d.verdict {
            Verdict::Deny if d.stage == Stage::Default && intercepted => {
                // No application proxy runs here: application-rule ports fail closed.
                assert_eq!(v, XDP_DROP, "{ctx}");
                assert_eq!(e.len(), 1, "{ctx}");
                assert_eq!((e[0].verdict, e[0].rule_index), (Verdict::Deny, None), "{ctx}");
            }
            Verdict::Deny => {
                assert_eq!(v, XDP_DROP, "{ctx}");
                assert_eq!(e.len(), 1, "{ctx}");
                assert_eq!((e[0].verdict, e[0].stage), (Verdict::Deny, d.stage), "{ctx}");
                assert_eq!(e[0].rule_index.map(|i| i as usize), d.rule_index, "{ctx}");
            }
            Verdict::Allow | Verdict::Dnat => {
                assert!(forwarded(v), "{ctx}");
                assert_eq!(e.len(), 1, "{ctx}");
                assert_eq!((e[0].verdict, e[0].stage), (d.verdict, d.stage), "{ctx}");
                assert_eq!(e[0].rule_index.map(|i| i as usize), d.rule_index, "{ctx}");
                assert_eq!(Some(e[0].snat), d.snat, "{ctx}");
            }
        }
    }
    assert!(compared > 400, "{compared} flows compared");
}

// ---------------------------------------------------------------------------------------------
// Real forwarding decision: bpf_fib_lookup SUCCESS in a namespace of our own.

fn sh(cmd: &str) {
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .expect("sh");
    assert!(st.success(), "{cmd}");
}

#[test]
fn fib_success_redirects_with_mac_rewrite() {
    require_privileged!();
    let ns = format!("pcdp{}", std::process::id());
    sh(&format!("ip netns add {ns}"));
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    let x = |c: &str| sh(&format!("ip netns exec {ns} {c}"));
    x("ip link set lo up");
    x("ip link add in0 type veth peer name in1");
    x("ip link add out0 type veth peer name out1");
    x("ip link set in0 up");
    x("ip link set in1 up");
    x("ip link set out0 address 02:00:00:00:00:aa");
    x("ip link set out0 up");
    x("ip link set out1 up");
    x("ip addr add 198.18.0.1/24 dev in0");
    x("ip addr add 192.0.2.1/24 dev out0");
    x("ip route add default via 192.0.2.254 dev out0");
    x("ip neigh add 192.0.2.254 lladdr 02:00:00:00:00:fe dev out0 nud permanent");
    x("sysctl -qw net.ipv4.ip_forward=1");
    let ns_path = format!("/var/run/netns/{ns}");
    let policy = std_policy();
    let result = std::thread::spawn(move || {
        let f = std::fs::File::open(&ns_path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s = settings();
        s.internal = "in0".into();
        s.external = Some("out0".into());
        let plane = open_with(s, &policy, None);
        let ifindex = nix::net::if_::if_nametoindex("in0").unwrap();
        let frame = P::tcp(CLIENT, SERVER, 49000, 443, SYN).frame();
        let mut out = vec![0u8; frame.len()];
        // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let mut md = [0u8; 24];
        md[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        md[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let r = plane
            .xdp_ingress()
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ctx_in: Some(&md),
                ..TestRunOptions::default()
            })
            .expect("test run");
        (r.return_value, out, plane.counters().unwrap())
    })
    .join()
    .unwrap();
    let (v, out, counters) = result;
    assert_eq!(verdict_name(v), "XDP_REDIRECT", "{counters:?}");
    assert_eq!(counters.fib_redirect, 1);
    assert_eq!(&out[0..6], &[0x02, 0, 0, 0, 0, 0xfe], "destination MAC = the neighbour");
    assert_eq!(&out[6..12], &[0x02, 0, 0, 0, 0, 0xaa], "source MAC = out0");
    let seen = inspect(&out);
    assert_eq!(seen.ttl, 63, "TTL decremented with the checksum patched");
    assert_eq!(seen.src, SNAT);
}

/// The XDP program id attached to `dev` in namespace `ns`, if any (from `ip -d link`).
fn xdp_prog_id(ns: &str, dev: &str) -> Option<u32> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-d", "link", "show", dev])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("prog/xdp id ")?;
    text[at + 12..].split_whitespace().next()?.parse().ok()
}

/// Restart without a gap: the pinned link keeps the program attached after `close(true)`, and a
/// new instance replaces the program behind the same link (`bpf_link_update`), keeping the mode.
#[test]
fn pinned_links_survive_close_and_are_replaced_in_place() {
    require_privileged!();
    let ns = format!("pcln{}", std::process::id());
    sh(&format!("ip netns add {ns}"));
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    sh(&format!("ip -n {ns} link add in0 type veth peer name in1"));
    sh(&format!("ip -n {ns} link set in0 up"));
    sh(&format!("ip -n {ns} link set in1 up"));
    let ns_path = format!("/var/run/netns/{ns}");
    let dir = PathBuf::from(format!("/sys/fs/bpf/portcullis-linktest-{}", std::process::id()));
    let policy = std_policy();
    let ns2 = ns.clone();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns_path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s = settings();
        s.internal = "in0".into();
        s.pin_dir = dir.clone();
        let mut plane = open_with(s.clone(), &policy, None);
        let modes = plane.attach().unwrap();
        assert_eq!(modes.len(), 1);
        let first = xdp_prog_id(&ns2, "in0").expect("attached");
        plane.close(true).unwrap();
        assert_eq!(
            xdp_prog_id(&ns2, "in0"),
            Some(first),
            "still attached after the process let go"
        );
        let mut plane = open_with(s, &policy, None);
        let again = plane.attach().unwrap();
        assert_eq!(again, modes, "same link, same mode");
        let second = xdp_prog_id(&ns2, "in0").expect("attached");
        assert_ne!(second, first, "the new program replaced the old one behind the link");
        plane.close(false).unwrap();
        assert_eq!(xdp_prog_id(&ns2, "in0"), None, "close(false) detaches");
        assert!(!dir.exists());
    })
    .join()
    .unwrap();
}

/// An ICMP error from `from` to `to` quoting the first 28 bytes (IPv4 header + 8 bytes of L4) of `quoted`.
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, kind: u8, code: u8, quoted: &P) -> Vec<u8> {
    let q = quoted.frame();
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0x78]; // next-hop MTU 1400
    icmp.extend_from_slice(&q[14..14 + 28]);
    let c = checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, ICMP, 0, 0]);
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&to.octets());
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// (outer src, outer dst, quoted src, quoted dst, quoted sport, quoted dport) of an ICMP error frame, after
/// checking that the outer IPv4, quoted IPv4 and ICMP checksums are all valid.
fn icmp_error_fields(f: &[u8]) -> (Ipv4Addr, Ipv4Addr, Ipv4Addr, Ipv4Addr, u16, u16) {
    let ip4 = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    assert_eq!(checksum(&f[14..34], 0), 0, "outer IPv4 checksum");
    assert_eq!(checksum(&f[34..], 0), 0, "ICMP checksum");
    let q = &f[42..];
    assert_eq!(checksum(&q[..20], 0), 0, "quoted IPv4 checksum");
    (
        ip4(&f[26..30]),
        ip4(&f[30..34]),
        ip4(&q[12..16]),
        ip4(&q[16..20]),
        u16::from_be_bytes([q[20], q[21]]),
        u16::from_be_bytes([q[22], q[23]]),
    )
}

#[test]
fn icmp_errors_about_tracked_flows_are_translated_back_and_forwarded() {
    require_privileged!();
    let policy = std_policy();
    let plane = open(&policy);
    let router = Ipv4Addr::new(192, 0, 2, 254);
    // A SNATed TCP flow; a router on the way to the server says "fragmentation needed" about a packet it
    // saw after SNAT (SNAT:port → SERVER:443), addressed to the SNAT address.
    let out = inspect(&expect(&plane, &P::tcp(CLIENT, SERVER, 40110, 443, SYN), XDP_PASS));
    let sent = P::tcp(SNAT, SERVER, out.sport, 443, ACK);
    let (v, f) = run(&plane, &icmp_error(router, SNAT, 3, 4, &sent));
    assert!(forwarded(v), "{}", verdict_name(v));
    assert_eq!(
        icmp_error_fields(&f),
        (router, CLIENT, CLIENT, SERVER, 40110, 443),
        "the error reaches the client about the packet the client sent"
    );
    assert_eq!(counter(&plane, Counter::IcmpErrorRelated), 1);
    // The same for UDP (time exceeded), with the quoted UDP checksum field rewritten too.
    let out = inspect(&expect(&plane, &P::udp(CLIENT, SERVER, 40111, 53), XDP_PASS));
    let sent = P::udp(SNAT, SERVER, out.sport, 53);
    let (v, f) = run(&plane, &icmp_error(router, SNAT, 11, 0, &sent));
    assert!(forwarded(v));
    assert_eq!(icmp_error_fields(&f), (router, CLIENT, CLIENT, SERVER, 40111, 53));
    // The client's own port unreachable about a reply: the outer source is SNATed like the flow.
    let reply = P::udp(SERVER, CLIENT, 53, 40111);
    let (v, f) = run(&plane, &icmp_error(CLIENT, SERVER, 3, 3, &reply));
    assert!(forwarded(v));
    assert_eq!(
        icmp_error_fields(&f),
        (SNAT, SERVER, SERVER, SNAT, 53, out.sport),
        "seen from the Internet, about the packet the server sent"
    );
    assert_eq!(counter(&plane, Counter::IcmpErrorRelated), 3);
    // About no tracked flow: not related (decided like any ICMP packet).
    let stranger = P::tcp(SNAT, SERVER, 1, 443, ACK);
    run(&plane, &icmp_error(router, SNAT, 3, 4, &stranger));
    assert_eq!(counter(&plane, Counter::IcmpErrorRelated), 3);
    // Repeated errors are related each time (never remembered as host traffic).
    let sent = P::tcp(
        SNAT,
        SERVER,
        inspect(&expect(&plane, &P::tcp(CLIENT, SERVER, 40112, 443, SYN), XDP_PASS)).sport,
        443,
        ACK,
    );
    for _ in 0..2 {
        let (v, _) = run(&plane, &icmp_error(router, SNAT, 3, 4, &sent));
        assert!(forwarded(v));
    }
    assert_eq!(counter(&plane, Counter::IcmpErrorRelated), 5);
}

#[test]
fn dnat_reload_to_another_backend_cuts_the_old_flows() {
    require_privileged!();
    let policy = dnat_policy();
    let mut plane = open(&policy);
    let first = P::tcp(INTERNET_CLIENT, SNAT, 50100, 8080, SYN);
    assert_eq!(inspect(&expect(&plane, &first, XDP_PASS)).dst, BACKEND);
    expect(&plane, &P::tcp(BACKEND, INTERNAL, 80, 50100, SYN | ACK), XDP_PASS);
    // The same policy again: the flow keeps its backend.
    plane
        .load_policy(&policy, None, &portcullis_rules::NoResolutions)
        .unwrap();
    let ack = P::tcp(INTERNET_CLIENT, SNAT, 50100, 8080, ACK);
    assert_eq!(inspect(&expect(&plane, &ack, XDP_PASS)).dst, BACKEND);
    // The rule now translates to another backend: the open flow is cut (it cannot move mid-stream), in
    // both directions, and new flows go to the new backend.
    let moved = Ipv4Addr::new(10, 2, 0, 8);
    let yaml = policy_yaml(
        &[(
            "DNAT",
            &[&format!(
                "{{ruleType: NatRule, name: web, ipProtocols: [TCP], sourceAddresses: [198.51.100.0/24], destinationAddresses: [{SNAT}], destinationPorts: [\"8080\"], translatedAddress: {moved}, translatedPort: \"80\"}}"
            )],
        )],
        "",
    );
    plane
        .load_policy(&load_policy(&yaml), None, &portcullis_rules::NoResolutions)
        .unwrap();
    let cut_before = counter(&plane, Counter::ReclassifiedDenied);
    expect(&plane, &P::tcp(BACKEND, INTERNAL, 80, 50100, ACK), XDP_DROP);
    expect(&plane, &ack, XDP_PASS); // no entry any more: a new decision, to the new backend
    assert_eq!(counter(&plane, Counter::ReclassifiedDenied), cut_before + 1);
    let again = inspect(&expect(
        &plane,
        &P::tcp(INTERNET_CLIENT, SNAT, 50101, 8080, SYN),
        XDP_PASS,
    ));
    assert_eq!(again.dst, moved);
}
