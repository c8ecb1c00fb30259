//! The compiled fast paths (classify: NetworkTables + NatTable; appindex: AppIndex) pick exactly the rule
//! the linear reference evaluator (`Policy::decide`) picks, on random policies loaded through the real YAML
//! loader and random flows biased towards rule edges. Deterministic: a fixed-seed splitmix64.

use portcullis_rules::classify::{
    FastPath, NetworkTables, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Prefix, ZERO, first_common,
};
use portcullis_rules::policy::RuleKind;
use portcullis_rules::{
    AppProtocol, Env, Flow, FqdnPattern, MemLoader, Name, Policy, Protocol, Stage, ThreatFeed, load_str,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const ANCHORS: [u32; 6] = [
    0x0A00_0000, // 10.0.0.0
    0x0A00_0100, // 10.0.1.0
    0x0A01_0000, // 10.1.0.0
    0xC000_0200, // 192.0.2.0
    0xC612_0000, // 198.18.0.0
    0xCB00_7100, // 203.0.113.0
];
const PORTS: [u16; 12] = [1, 22, 53, 80, 123, 443, 1000, 2000, 8080, 8443, 64000, 65535];
const APP_PROTOCOLS: [(&str, u16); 4] = [("Https", 443), ("Http", 80), ("Http", 8080), ("Https", 8443)];
const NET_FQDNS: [&str; 4] = ["ntp.example", "time.example", "db.internal", "api.contoso.com"];
const NAT_DESTINATIONS: [&str; 2] = ["203.0.113.1", "203.0.113.2"];
const NAT_PORTS: [u16; 4] = [80, 443, 2222, 53];
const BASES: [&str; 6] = [
    "contoso.com",
    "x.contoso.com",
    "a.b.contoso.com",
    "fabrikam.net",
    "sub.fabrikam.net",
    "example",
];

/// A random policy (as YAML) and what flows should aim at.
struct Gen {
    rng: Rng,
    addr_points: Vec<u32>,
    port_points: Vec<u16>,
    resolved: Vec<Ipv4Addr>,
    /// (destination, port) of the NAT rules written.
    nat_keys: Vec<(Ipv4Addr, u16)>,
}

impl Gen {
    fn note_range(&mut self, start: u32, end: u32) {
        self.addr_points
            .extend([start, end, start.wrapping_sub(1), end.wrapping_add(1)]);
    }

    fn addr_near(&mut self) -> u32 {
        let base = *self.rng.pick(&ANCHORS);
        base + self.rng.below(600) as u32
    }

    fn addr_entry(&mut self) -> String {
        match self.rng.below(100) {
            0..=14 => "*".into(),
            15..=16 => {
                let v = *self.rng.pick(&[0u32, u32::MAX]);
                self.note_range(v, v);
                Ipv4Addr::from(v).to_string()
            }
            17..=39 => {
                let v = self.addr_near();
                self.note_range(v, v);
                Ipv4Addr::from(v).to_string()
            }
            40..=74 => {
                let len = *self.rng.pick(&[1u8, 8, 16, 22, 23, 24, 25, 26, 28, 30, 31, 32]);
                let v = self.addr_near();
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
                let net = v & mask;
                self.note_range(net, net | !mask);
                // Host bits set is only a warning: the loader masks them.
                format!("{}/{len}", Ipv4Addr::from(if self.rng.pct(20) { v } else { net }))
            }
            _ => {
                let a = self.addr_near();
                let b = a.saturating_add(*self.rng.pick(&[0u32, 1, 7, 255, 256, 700, 70_000]));
                self.note_range(a, b);
                format!("{}-{}", Ipv4Addr::from(a), Ipv4Addr::from(b))
            }
        }
    }

    fn addr_list(&mut self) -> String {
        let n = self.rng.range(1, 3);
        let v: Vec<String> = (0..n).map(|_| format!("\"{}\"", self.addr_entry())).collect();
        format!("[{}]", v.join(", "))
    }

    fn port_entry(&mut self) -> String {
        match self.rng.below(100) {
            0..=14 => "*".into(),
            15..=59 => {
                let p = *self.rng.pick(&PORTS);
                self.port_points.extend([p, p.saturating_sub(1), p.saturating_add(1)]);
                p.to_string()
            }
            _ => {
                let lo = *self.rng.pick(&PORTS);
                let hi = lo.saturating_add(*self.rng.pick(&[1u16, 20, 999, 7000, 65535]));
                self.port_points
                    .extend([lo, hi, lo.saturating_sub(1), hi.saturating_add(1)]);
                format!("{lo}-{hi}")
            }
        }
    }

    fn endpoints(&mut self, addr_key: &str, group_key: &str, out: &mut String) {
        match self.rng.below(100) {
            0..=69 => write!(out, ", {addr_key}: {}", self.addr_list()).unwrap(),
            70..=84 => write!(out, ", {group_key}: [g{}]", self.rng.below(4)).unwrap(),
            _ => write!(
                out,
                ", {addr_key}: {}, {group_key}: [g{}]",
                self.addr_list(),
                self.rng.below(4)
            )
            .unwrap(),
        }
    }

    fn network_rule(&mut self, name: &str) -> String {
        let mut protos: Vec<&str> = ["TCP", "UDP", "ICMP", "Any"]
            .into_iter()
            .filter(|_| self.rng.pct(35))
            .collect();
        if protos.is_empty() {
            protos.push(*self.rng.pick(&["TCP", "UDP", "ICMP", "Any"]));
        }
        let mut s = format!(
            "{{ruleType: NetworkRule, name: {name}, ipProtocols: [{}]",
            protos.join(", ")
        );
        self.endpoints("sourceAddresses", "sourceIpGroups", &mut s);
        let roll = self.rng.below(100);
        if roll < 75 {
            self.endpoints("destinationAddresses", "destinationIpGroups", &mut s);
        }
        if roll >= 65 {
            let n = self.rng.range(1, 2);
            let names: Vec<String> = (0..n).map(|_| format!("\"{}\"", self.rng.pick(&NET_FQDNS))).collect();
            write!(s, ", destinationFqdns: [{}]", names.join(", ")).unwrap();
        }
        let n = self.rng.range(1, 3);
        let ports: Vec<String> = (0..n).map(|_| format!("\"{}\"", self.port_entry())).collect();
        write!(s, ", destinationPorts: [{}]}}", ports.join(", ")).unwrap();
        s
    }

    fn nat_rule(&mut self, name: &str) -> String {
        let protos = *self.rng.pick(&["TCP", "UDP", "TCP, UDP", "Any"]);
        let mut s = format!("{{ruleType: NatRule, name: {name}, ipProtocols: [{protos}]");
        if self.rng.pct(40) {
            s.push_str(", sourceAddresses: [\"*\"]");
        } else {
            self.endpoints("sourceAddresses", "sourceIpGroups", &mut s);
        }
        let dsts: Vec<&str> = if self.rng.pct(30) {
            NAT_DESTINATIONS.to_vec()
        } else {
            vec![*self.rng.pick(&NAT_DESTINATIONS)]
        };
        let port = *self.rng.pick(&NAT_PORTS);
        for d in &dsts {
            self.nat_keys.push((d.parse().unwrap(), port));
        }
        write!(
            s,
            ", destinationAddresses: [{}], destinationPorts: [\"{port}\"]",
            dsts.join(", ")
        )
        .unwrap();
        match self.rng.below(3) {
            0 => write!(s, ", translatedFqdn: web.internal").unwrap(),
            1 => write!(s, ", translatedFqdn: gone.internal").unwrap(),
            _ => write!(s, ", translatedAddress: 10.0.0.5").unwrap(),
        }
        write!(s, ", translatedPort: \"{}\"}}", self.rng.range(1, 9000)).unwrap();
        s
    }

    fn pattern(&mut self) -> String {
        let base = *self.rng.pick(&BASES);
        match self.rng.below(100) {
            0..=29 => base.to_string(),
            30..=54 => format!("*.{base}"),
            55..=79 => format!("*{base}"),
            80..=84 => "*".into(),
            _ => (*self.rng.pick(&["*ontoso.com", "*-contoso.com", "*com", "*t", "*.com"])).to_string(),
        }
    }

    fn app_rule(&mut self, name: &str) -> String {
        let mut s = format!("{{ruleType: ApplicationRule, name: {name}");
        if self.rng.pct(40) {
            s.push_str(", sourceAddresses: [\"*\"]");
        } else {
            self.endpoints("sourceAddresses", "sourceIpGroups", &mut s);
        }
        let n = self.rng.range(1, 2);
        let protos: Vec<String> = (0..n)
            .map(|_| {
                let (t, p) = *self.rng.pick(&APP_PROTOCOLS);
                format!("{{protocolType: {t}, port: {p}}}")
            })
            .collect();
        write!(s, ", protocols: [{}]", protos.join(", ")).unwrap();
        if self.rng.pct(8) {
            write!(s, ", fqdnTags: [AzureKubernetesService]").unwrap();
        } else {
            let n = self.rng.range(1, 3);
            let t: Vec<String> = (0..n).map(|_| format!("\"{}\"", self.pattern())).collect();
            write!(s, ", targetFqdns: [{}]", t.join(", ")).unwrap();
        }
        s.push('}');
        s
    }

    fn policy(&mut self) -> String {
        let mut y = String::from("policy:\n");
        let mode = *self.rng.pick(&["Off", "Alert", "Deny"]);
        writeln!(y, "  threatIntelMode: {mode}").unwrap();
        if self.rng.pct(30) {
            let a = self.addr_entry();
            writeln!(
                y,
                "  threatIntelWhitelist: {{ipAddresses: [\"{a}\"], fqdns: [\"*.contoso.com\"]}}"
            )
            .unwrap();
        }
        y.push_str("  dnsSettings: {enableProxy: true}\n  ipGroups:\n");
        for g in 0..4 {
            let n = if g == 3 && self.rng.pct(50) {
                0
            } else {
                self.rng.range(1, 3)
            };
            let v: Vec<String> = (0..n).map(|_| format!("\"{}\"", self.addr_entry())).collect();
            writeln!(y, "    g{g}: [{}]", v.join(", ")).unwrap();
        }
        y.push_str("  ruleCollectionGroups:\n");
        let groups = self.rng.range(1, 3);
        for g in 0..groups {
            writeln!(
                y,
                "    - name: rcg{g}\n      priority: {}\n      ruleCollections:",
                100 + 100 * (groups - g)
            )
            .unwrap();
            let colls = self.rng.range(1, 4);
            for c in 0..colls {
                let kind = self.rng.below(100);
                let (rct, action) = match kind {
                    0..=19 => ("FirewallPolicyNatRuleCollection", "DNAT"),
                    _ => ("FirewallPolicyFilterRuleCollection", *self.rng.pick(&["Allow", "Deny"])),
                };
                writeln!(
                    y,
                    "        - ruleCollectionType: {rct}\n          name: rc{g}_{c}\n          priority: {}\n          action: {{type: {action}}}\n          rules:",
                    100 + 10 * self.rng.below(50) + c
                )
                .unwrap();
                for r in 0..self.rng.range(1, 5) {
                    let name = format!("r{g}_{c}_{r}");
                    let rule = match kind {
                        0..=19 => self.nat_rule(&name),
                        20..=64 => self.network_rule(&name),
                        _ => self.app_rule(&name),
                    };
                    writeln!(y, "            - {rule}").unwrap();
                }
            }
        }
        y
    }

    fn resolutions(&mut self) -> BTreeMap<Name, Vec<Ipv4Addr>> {
        let mut m = BTreeMap::new();
        for n in NET_FQDNS.iter().chain(&["web.internal"]) {
            let k = self.rng.below(4);
            let addrs: Vec<Ipv4Addr> = (0..k).map(|_| Ipv4Addr::from(self.point())).collect();
            self.resolved.extend(&addrs);
            if !addrs.is_empty() || self.rng.pct(50) {
                m.insert(Name::parse(n).unwrap(), addrs);
            }
        }
        m
    }

    fn point(&mut self) -> u32 {
        if !self.addr_points.is_empty() && self.rng.pct(80) {
            *self.rng.pick(&self.addr_points)
        } else {
            self.addr_near()
        }
    }

    fn flow_name(&mut self) -> Name {
        let base = *self.rng.pick(&BASES);
        let s = match self.rng.below(14) {
            0 => base.to_string(),
            1 => format!("x.{base}"),
            2 => format!("y.x.{base}"),
            3 => format!("x{base}"),
            4 => format!("x-{base}"),
            5 => base[1..].trim_start_matches('.').to_string(),
            6 => (*self
                .rng
                .pick(&["com", "net", "t", "contoso.com.evil.net", "ontoso.com"]))
            .to_string(),
            7 => (*self
                .rng
                .pick(&["mcr.microsoft.com", "a.hcp.eastus.azmk8s.io", "azmk8s.io"]))
            .to_string(),
            8 | 9 => (*self.rng.pick(&NET_FQDNS)).to_string(),
            _ => base.to_string(),
        };
        Name::parse(&s).unwrap()
    }

    fn flow(&mut self) -> Flow {
        let protocol = *self.rng.pick(&[
            Protocol::Tcp,
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Icmp,
            Protocol::Http,
            Protocol::Https,
            Protocol::Https,
        ]);
        let source = Ipv4Addr::from(self.point());
        let aim_nat = (!self.nat_keys.is_empty() && self.rng.pct(20)).then(|| *self.rng.pick(&self.nat_keys));
        let destination_ip = match self.rng.below(100) {
            _ if aim_nat.is_some() => aim_nat.map(|k| k.0),
            0..=9 => None,
            10..=17 => Some(self.rng.pick(&NAT_DESTINATIONS).parse().unwrap()),
            25..=34 if !self.resolved.is_empty() => Some(*self.rng.pick(&self.resolved)),
            _ => Some(Ipv4Addr::from(self.point())),
        };
        let app = matches!(protocol, Protocol::Http | Protocol::Https);
        let destination_name = if (app && self.rng.pct(92)) || (!app && self.rng.pct(15)) {
            Some(self.flow_name())
        } else {
            None
        };
        let port = match self.rng.below(100) {
            _ if aim_nat.is_some() && self.rng.pct(85) => aim_nat.map_or(0, |k| k.1),
            0..=49 if protocol == Protocol::Https => *self.rng.pick(&[443, 8443]),
            0..=49 if protocol == Protocol::Http => *self.rng.pick(&[80, 8080]),
            0..=34 if app || self.rng.pct(50) => self.rng.pick(&APP_PROTOCOLS).1,
            35..=44 => *self.rng.pick(&NAT_PORTS),
            _ if !self.port_points.is_empty() && self.rng.pct(85) => *self.rng.pick(&self.port_points),
            _ => *self.rng.pick(&PORTS),
        };
        let host_port = match (protocol, self.rng.below(100)) {
            (Protocol::Http, 0..=9) => Some(self.rng.range(1, 9000) as u16),
            (Protocol::Http, _) if port != 80 || self.rng.pct(30) => Some(port),
            _ => None,
        };
        Flow {
            source,
            destination_ip,
            destination_name,
            port,
            protocol,
            host_port,
        }
    }
}

fn threat_feed(rng: &mut Rng, g: &mut Gen) -> Option<ThreatFeed> {
    if !rng.pct(30) {
        return None;
    }
    let ip = Ipv4Addr::from(g.point());
    let text = format!(
        "# feed\n{ip}\n{}/24\ncontoso.com\n*.fabrikam.net\n",
        Ipv4Addr::from(g.addr_near() & 0xFFFF_FF00)
    );
    Some(ThreatFeed::parse(&text).unwrap())
}

/// An LPM lookup over disjoint prefixes (sorted by address); a miss is the zero bitmap.
fn lpm(prefixes: &[Prefix], ip: Ipv4Addr) -> u32 {
    let v = u32::from(ip);
    let i = prefixes.partition_point(|p| p.addr <= v);
    match i.checked_sub(1).map(|i| prefixes[i]) {
        Some(p) if p.range().contains(v) => p.bitmap,
        _ => ZERO,
    }
}

/// The data plane's view: two LPM tries, a port array per protocol, the pin map written by the DNS proxy.
struct DataPlane<'a> {
    t: &'a NetworkTables,
    tcp: Vec<u32>,
    udp: Vec<u32>,
    pins: HashMap<Ipv4Addr, Vec<u64>>,
}

impl<'a> DataPlane<'a> {
    fn new(t: &'a NetworkTables, res: &BTreeMap<Name, Vec<Ipv4Addr>>) -> Self {
        let mut by_addr: HashMap<Ipv4Addr, Vec<Name>> = HashMap::new();
        for (n, addrs) in res {
            for a in addrs {
                by_addr.entry(*a).or_default().push(n.clone());
            }
        }
        let pins = by_addr
            .into_iter()
            .map(|(a, names)| (a, t.pin_bitmap_for(&names).into_words()))
            .collect();
        Self {
            t,
            tcp: t.port_array(PROTO_TCP),
            udp: t.port_array(PROTO_UDP),
            pins,
        }
    }

    fn classify(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> Option<usize> {
        let t = self.t;
        let s = t.bitmap(lpm(t.src_prefixes(), src));
        let p = t.bitmap(match proto {
            PROTO_TCP => self.tcp[port as usize],
            PROTO_UDP => self.udp[port as usize],
            PROTO_ICMP => t.icmp_bitmap(),
            _ => t.other_protocol_bitmap(),
        });
        let mut d = t.bitmap(lpm(t.dst_prefixes(), dst)).to_vec();
        if let Some(pin) = self.pins.get(&dst) {
            for (a, b) in d.iter_mut().zip(pin) {
                *a |= b;
            }
        }
        first_common(&[s, p, &d]).map(|bit| t.rules()[bit].rule_index)
    }
}

fn check_prefixes(t: &NetworkTables) {
    for (iv, px) in [
        (t.src_intervals(), t.src_prefixes()),
        (t.dst_intervals(), t.dst_prefixes()),
    ] {
        assert_eq!(iv[0].start, 0);
        let mut prev: Option<u32> = None;
        let mut covered = 0u64;
        for p in px {
            let r = p.range();
            assert_eq!(r.start, p.addr);
            assert!(prev.is_none_or(|e| e < r.start), "prefixes overlap");
            prev = Some(r.end);
            covered += u64::from(r.end - r.start) + 1;
        }
        let nonzero: u64 = iv
            .iter()
            .enumerate()
            .filter(|(_, v)| v.bitmap != ZERO)
            .map(|(i, v)| iv.get(i + 1).map_or(1 << 32, |n| u64::from(n.start)) - u64::from(v.start))
            .sum();
        assert_eq!(covered, nonzero, "prefixes cover exactly the non-zero intervals");
    }
}

fn load(yaml: &str) -> Policy {
    match load_str("policy.yaml", yaml, &MemLoader::default()) {
        Ok(l) => l.config.policy,
        Err(e) => panic!("generated policy should load:\n{e}\n{yaml}"),
    }
}

#[test]
fn fast_paths_pick_the_rule_the_linear_evaluator_picks() {
    let mut rng = Rng(0x5eed_0fc0_ffee);
    let mut stages: BTreeMap<String, usize> = BTreeMap::new();
    let (mut flows, mut dataplane_checked) = (0usize, 0usize);
    for case in 0..400 {
        let mut g = Gen {
            rng: Rng(rng.next()),
            addr_points: Vec::new(),
            port_points: Vec::new(),
            resolved: Vec::new(),
            nat_keys: Vec::new(),
        };
        let yaml = g.policy();
        let p = load(&yaml);
        let res = g.resolutions();
        let feed = threat_feed(&mut rng, &mut g);
        let env = Env {
            resolutions: &res,
            threat_feed: feed.as_ref(),
        };
        let fast: FastPath = p.fast_path();
        check_prefixes(&fast.network);
        assert_eq!(fast.application.intercepted_ports(), p.application_ports());
        let dp = DataPlane::new(&fast.network, &res);
        for _ in 0..60 {
            let f = g.flow();
            flows += 1;
            let d = p.decide(&f, &env);
            let ctx = || format!("case {case}, flow {f:?}\ndecision {d:?}\n{yaml}\nresolutions {res:?}");
            let q = p.decide_fast(&fast, &f, &env);
            assert_eq!(q, d, "decide_fast differs: {}", ctx());
            *stages.entry(format!("{:?}", d.stage)).or_default() += 1;
            if let Some(i) = d.rule_index {
                let kind = match &p.rules[i].kind {
                    RuleKind::Network(n) if !n.fqdns.is_empty() => "network rule with FQDNs".to_string(),
                    RuleKind::Application(a) => {
                        let name = f.destination_name.as_ref().unwrap();
                        match a.targets.iter().find(|t| t.pattern.matches(name)).map(|t| &t.pattern) {
                            Some(FqdnPattern::Any) => "app *",
                            Some(FqdnPattern::Exact(_)) => "app exact",
                            Some(FqdnPattern::Subdomains(_)) => "app *.suffix",
                            Some(FqdnPattern::EndsWith(_)) => "app *suffix",
                            None => unreachable!(),
                        }
                        .to_string()
                    }
                    _ => "other".to_string(),
                };
                *stages.entry(kind).or_default() += 1;
            }
            if d.stage == Stage::ThreatIntel {
                continue;
            }
            let proto = f.protocol.ip_number();
            // DNAT stage.
            let nat = match (f.destination_ip, proto) {
                (Some(dst), PROTO_TCP | PROTO_UDP) => fast.nat.lookup(proto, f.source, dst, f.port, &res),
                _ => None,
            };
            let expect = (d.stage == Stage::Dnat).then_some(d.rule_index).flatten();
            assert_eq!(nat, expect, "NatTable: {}", ctx());
            if d.stage == Stage::Dnat {
                continue;
            }
            // Network stage, as `Flow` describes it and as the data plane sees it.
            let net = fast.network.lookup_flow(
                f.source,
                f.destination_ip,
                f.destination_name.as_ref(),
                proto,
                f.port,
                &res,
            );
            let expect = (d.stage == Stage::Network).then_some(d.rule_index).flatten();
            assert_eq!(net, expect, "NetworkTables: {}", ctx());
            if let (Some(dst), None) = (f.destination_ip, &f.destination_name) {
                assert_eq!(
                    fast.network.lookup(f.source, dst, proto, f.port, &res),
                    expect,
                    "lookup: {}",
                    ctx()
                );
                assert_eq!(
                    dp.classify(f.source, dst, proto, f.port),
                    expect,
                    "data-plane tables: {}",
                    ctx()
                );
                let pin = dp.pins.get(&dst).map(Vec::as_slice);
                assert_eq!(
                    fast.network.lookup_pinned(f.source, dst, proto, f.port, pin),
                    expect,
                    "lookup_pinned: {}",
                    ctx()
                );
                dataplane_checked += 1;
            }
            if d.stage == Stage::Network {
                continue;
            }
            // Application stage (reached when the name is known and an HTTP Host port agrees).
            let app_proto = match f.protocol {
                Protocol::Http if f.host_port.unwrap_or(80) == f.port => AppProtocol::Http,
                Protocol::Https => AppProtocol::Https,
                _ => continue,
            };
            let Some(name) = &f.destination_name else {
                continue;
            };
            let app = fast.application.lookup(app_proto, f.port, f.source, name);
            let expect = (d.stage == Stage::Application).then_some(d.rule_index).flatten();
            assert_eq!(app, expect, "AppIndex: {}", ctx());
        }
    }
    eprintln!("{flows} flows; decided at {stages:?}; {dataplane_checked} checked against the data-plane tables");
    // The generator must keep reaching every stage, or the test proves little.
    for what in [
        "Dnat",
        "Network",
        "Application",
        "Default",
        "ThreatIntel",
        "network rule with FQDNs",
        "app *",
        "app exact",
        "app *.suffix",
        "app *suffix",
    ] {
        let n = stages.get(what).copied().unwrap_or(0);
        assert!(n * 400 > flows, "{what} decided only {n} of {flows} flows");
    }
}
