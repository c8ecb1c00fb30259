//! The compiled policy's network rules as an nftables ruleset with conntrack and masquerade: what an
//! nftables firewall enforcing the same policy would run, for the `nft-*` modes of the bench.
//!
//! Two forms of the same rules:
//! - `Linear`: one nft rule per (network rule, protocol group), in Azure's evaluation order, first
//!   match wins — how a straightforward translation (or iptables) looks; destination match first.
//! - `Concat`: one verdict map keyed by `ip daddr . th dport . meta l4proto . ip saddr` with interval
//!   elements (nft's pipapo set): one lookup whatever the rule count — the best nftables offers. A set
//!   has no order, so this form is only equivalent when no two rules overlap; it refuses otherwise.
//!   Field order matters: pipapo narrows field by field and its per-packet cost grows with the
//!   elements still matching after each field, so the most selective field (destination) comes
//!   first. With `ip saddr` first (one IP group shared by every rule) the 10k-rule map cost 290 µs
//!   per packet on this machine, nearly all in `nft_pipapo_avx2_refill`.
//!
//! Both: `ct state established,related accept` first (the conntrack fast path), default drop, and a
//! postrouting `masquerade` on the external interface for destinations outside
//! `snat.privateRanges` (Azure SNATs network-rule traffic except to those).
//!
//! Not translated (not needed for the bench's policies): FQDN destinations (they need the DNS proxy's
//! pins; such rules are skipped with a comment) and, in the concat form, non-TCP/UDP rules.

use anyhow::{Result, bail};
use portcullis_rules::Action;
use portcullis_rules::Policy;
use portcullis_rules::addr::{AddrSet, Ipv4Range};
use portcullis_rules::policy::RuleKind;
use portcullis_rules::port::PortRange;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Form {
    Linear,
    Concat,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Linear => "linear",
            Form::Concat => "concat",
        }
    }
}

pub struct Ruleset {
    pub text: String,
    /// Network rules translated.
    pub rules: usize,
    /// nft rules in the forward chain (linear) or elements of the verdict map (concat).
    pub entries: usize,
}

fn range(r: &Ipv4Range) -> String {
    if *r == Ipv4Range::ALL {
        return "0.0.0.0/0".to_owned();
    }
    if r.start == r.end {
        return Ipv4Addr::from(r.start).to_string();
    }
    match r.to_prefixes().as_slice() {
        [(a, l)] => format!("{}/{l}", Ipv4Addr::from(*a)),
        _ => format!("{}-{}", Ipv4Addr::from(r.start), Ipv4Addr::from(r.end)),
    }
}

fn port(p: &PortRange) -> String {
    if p.lo == p.hi {
        p.lo.to_string()
    } else {
        format!("{}-{}", p.lo, p.hi)
    }
}

/// One network rule as the flat pieces both forms use.
struct Flat {
    index: usize,
    name: String,
    verdict: &'static str,
    sources: AddrSet,
    destinations: AddrSet,
    /// TCP/UDP protocol numbers with `ports` (empty = none).
    l4: Vec<u8>,
    ports: Vec<PortRange>,
    icmp: bool,
    all: bool,
}

fn flatten(policy: &Policy) -> (Vec<Flat>, Vec<String>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (index, r) in policy.rules[policy.network_rules.clone()].iter().enumerate() {
        let RuleKind::Network(n) = &r.kind else { continue };
        if let Some(why) = &r.skipped {
            skipped.push(format!("{}: {why}", r.name));
            continue;
        }
        if n.destinations.is_empty() {
            skipped.push(format!(
                "{}: FQDN destinations only (need the DNS proxy's pins)",
                r.name
            ));
            continue;
        }
        let verdict = match policy.collection_of(r).action {
            Action::Allow => "accept",
            Action::Deny => "drop",
            Action::Dnat => continue,
        };
        let mut l4 = Vec::new();
        if n.protocols.tcp {
            l4.push(6);
        }
        if n.protocols.udp {
            l4.push(17);
        }
        out.push(Flat {
            index,
            name: r.name.clone(),
            verdict,
            sources: n.sources.clone(),
            destinations: n.destinations.clone(),
            l4,
            ports: if n.ports.is_all() {
                vec![PortRange::ALL]
            } else {
                n.ports.ranges().to_vec()
            },
            icmp: n.protocols.icmp,
            all: n.protocols.all,
        });
    }
    (out, skipped)
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        _ => "icmp",
    }
}

fn header(policy: &Policy, iif: &str, oif: &str, out: &mut String) {
    let nosnat: Vec<String> = policy.snat_private_ranges.ranges().iter().map(range).collect();
    let _ = writeln!(out, "table ip pcl4 {{");
    if nosnat.is_empty() {
        let _ = writeln!(out, "  set nosnat {{ type ipv4_addr; flags interval; }}");
    } else {
        let _ = writeln!(
            out,
            "  set nosnat {{ type ipv4_addr; flags interval; elements = {{ {} }} }}",
            nosnat.join(", ")
        );
    }
    let _ = writeln!(out, "  chain postrouting {{");
    let _ = writeln!(out, "    type nat hook postrouting priority srcnat; policy accept;");
    let _ = writeln!(out, "    oifname \"{oif}\" ip daddr != @nosnat masquerade");
    let _ = writeln!(out, "  }}");
    let _ = iif;
}

/// The ruleset for `policy`; `iif`/`oif` are the firewall's internal and external interfaces.
pub fn ruleset(policy: &Policy, form: Form, iif: &str, oif: &str) -> Result<Ruleset> {
    let (rules, skipped) = flatten(policy);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {} network rules of policy {} as nftables ({} form), generated by l4bench",
        rules.len(),
        policy.name,
        form.name()
    );
    for s in &skipped {
        let _ = writeln!(out, "# skipped {s}");
    }
    header(policy, iif, oif, &mut out);
    let entries;
    match form {
        Form::Linear => {
            // Multi-element matches use named sets: nft 1.0.6 / kernel 6.18 load thousands of
            // anonymous sets quadratically slowly (12,000 took 47 s; 6,000 named ones take ~3 s).
            // Per packet it is the same lookup.
            let mut sets = String::new();
            let mut chain = String::new();
            let mut n = 0;
            let mut named = |kind: &str, ty: &str, id: &str, items: Vec<String>| -> String {
                if items.len() == 1 {
                    return items.into_iter().next().unwrap_or_default();
                }
                let flags = if ty == "inet_proto" { "" } else { " flags interval;" };
                let _ = writeln!(
                    sets,
                    "  set {kind}{id} {{ type {ty};{flags} elements = {{ {} }} }}",
                    items.join(", ")
                );
                format!("@{kind}{id}")
            };
            for r in &rules {
                let id = r.index.to_string();
                // Destination first: the most selective match fails fastest.
                let mut common = Vec::new();
                if !r.destinations.is_any() {
                    let m = named(
                        "d",
                        "ipv4_addr",
                        &id,
                        r.destinations.ranges().iter().map(range).collect(),
                    );
                    common.push(format!("ip daddr {m}"));
                }
                if !r.sources.is_any() {
                    let m = named("s", "ipv4_addr", &id, r.sources.ranges().iter().map(range).collect());
                    common.push(format!("ip saddr {m}"));
                }
                let mut lines = Vec::new();
                if r.all {
                    lines.push(common.clone());
                } else {
                    if !r.l4.is_empty() {
                        let mut m = common.clone();
                        let protos = if r.l4.len() == 2 {
                            "@tcpudp".to_owned()
                        } else {
                            proto_name(r.l4[0]).to_owned()
                        };
                        m.push(format!("meta l4proto {protos}"));
                        if r.ports != [PortRange::ALL] {
                            let p = named("p", "inet_service", &id, r.ports.iter().map(port).collect());
                            m.push(format!("th dport {p}"));
                        }
                        lines.push(m);
                    }
                    if r.icmp {
                        let mut m = common.clone();
                        m.push("meta l4proto icmp".to_owned());
                        lines.push(m);
                    }
                }
                for m in lines {
                    let _ = writeln!(chain, "    {} {} comment \"{}\"", m.join(" "), r.verdict, r.name);
                    n += 1;
                }
            }
            entries = n;
            let _ = writeln!(out, "  set tcpudp {{ type inet_proto; elements = {{ tcp, udp }} }}");
            out.push_str(&sets);
            let _ = writeln!(out, "  chain forward {{");
            let _ = writeln!(out, "    type filter hook forward priority filter; policy drop;");
            let _ = writeln!(out, "    ct state established,related accept");
            out.push_str(&chain);
            let _ = writeln!(out, "  }}");
        }
        Form::Concat => {
            struct Elem {
                rule: usize,
                src: Ipv4Range,
                dst: Ipv4Range,
                proto: u8,
                port: PortRange,
            }
            let mut elems = Vec::new();
            for r in &rules {
                if r.all || r.icmp {
                    bail!(
                        "rule {}: the concat form handles TCP/UDP rules only (ICMP/Any would need ordered rules)",
                        r.name
                    );
                }
                for s in r.sources.ranges() {
                    for d in r.destinations.ranges() {
                        for &p in &r.l4 {
                            for pr in &r.ports {
                                elems.push(Elem {
                                    rule: r.index,
                                    src: *s,
                                    dst: *d,
                                    proto: p,
                                    port: *pr,
                                });
                            }
                        }
                    }
                }
            }
            // A set has no order: refuse overlapping elements of different rules (and pipapo refuses
            // overlaps anyway). Sweep by (proto, dst start).
            let mut order: Vec<usize> = (0..elems.len()).collect();
            order.sort_by_key(|&i| (elems[i].proto, elems[i].dst.start));
            for (k, &i) in order.iter().enumerate() {
                let a = &elems[i];
                for &j in &order[k + 1..] {
                    let b = &elems[j];
                    if b.proto != a.proto || b.dst.start > a.dst.end {
                        break;
                    }
                    let src = a.src.start <= b.src.end && b.src.start <= a.src.end;
                    let prt = a.port.lo <= b.port.hi && b.port.lo <= a.port.hi;
                    if src && prt {
                        bail!(
                            "network rules {} and {} overlap: the concat (set) form would not keep their order",
                            rules
                                .iter()
                                .find(|r| r.index == a.rule)
                                .map_or("?", |r| r.name.as_str()),
                            rules
                                .iter()
                                .find(|r| r.index == b.rule)
                                .map_or("?", |r| r.name.as_str())
                        );
                    }
                }
            }
            let by_index: std::collections::HashMap<usize, &str> = rules.iter().map(|r| (r.index, r.verdict)).collect();
            let _ = writeln!(out, "  map netrules {{");
            let _ = writeln!(
                out,
                "    type ipv4_addr . inet_service . inet_proto . ipv4_addr : verdict;"
            );
            let _ = writeln!(out, "    flags interval;");
            if !elems.is_empty() {
                let _ = writeln!(out, "    elements = {{");
                for (n, e) in elems.iter().enumerate() {
                    let v = by_index.get(&e.rule).copied().unwrap_or("drop");
                    let sep = if n + 1 == elems.len() { "" } else { "," };
                    let _ = writeln!(
                        out,
                        "      {} . {} . {} . {} : {v}{sep}",
                        range(&e.dst),
                        port(&e.port),
                        proto_name(e.proto),
                        range(&e.src)
                    );
                }
                let _ = writeln!(out, "    }}");
            }
            let _ = writeln!(out, "  }}");
            let _ = writeln!(out, "  chain forward {{");
            let _ = writeln!(out, "    type filter hook forward priority filter; policy drop;");
            let _ = writeln!(out, "    ct state established,related accept");
            let _ = writeln!(
                out,
                "    meta l4proto {{ tcp, udp }} ip daddr . th dport . meta l4proto . ip saddr vmap @netrules"
            );
            let _ = writeln!(out, "  }}");
            entries = elems.len();
        }
    }
    let _ = writeln!(out, "}}");
    Ok(Ruleset {
        text: out,
        rules: rules.len(),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        portcullis_rules::load_str("t.yaml", yaml, &portcullis_rules::MemLoader::default())
            .unwrap_or_else(|e| panic!("{e}"))
            .config
            .policy
    }

    const TWO: &str = "policy:\n  ruleCollectionGroups:\n    - name: g\n      priority: 100\n      ruleCollections:\n      - ruleCollectionType: FirewallPolicyFilterRuleCollection\n        name: deny\n        priority: 100\n        action: {type: Deny}\n        rules:\n          - {ruleType: NetworkRule, name: d1, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [\"203.0.113.0/24\"], destinationPorts: [\"22\"]}\n      - ruleCollectionType: FirewallPolicyFilterRuleCollection\n        name: allow\n        priority: 200\n        action: {type: Allow}\n        rules:\n          - {ruleType: NetworkRule, name: a1, ipProtocols: [TCP, UDP], sourceAddresses: [\"198.18.0.0/24\"], destinationAddresses: [\"203.0.113.0/24\", \"198.51.100.7\"], destinationPorts: [\"443\", \"8000-8080\"]}\n";

    #[test]
    fn linear_keeps_azure_order_and_verdicts() {
        let rs = ruleset(&policy(TWO), Form::Linear, "in", "out").unwrap();
        let t = &rs.text;
        let d1 = t.find("comment \"d1\"").unwrap();
        let a1 = t.find("comment \"a1\"").unwrap();
        assert!(d1 < a1, "{t}");
        assert!(
            t.contains("ip daddr 203.0.113.0/24 meta l4proto tcp th dport 22 drop comment \"d1\""),
            "{t}"
        );
        assert!(
            t.contains("ip daddr @d1 ip saddr 198.18.0.0/24 meta l4proto @tcpudp th dport @p1 accept"),
            "{t}"
        );
        assert!(
            t.contains("set p1 { type inet_service; flags interval; elements = { 443, 8000-8080 } }"),
            "{t}"
        );
        assert!(t.contains("ct state established,related accept"));
        assert!(t.contains("oifname \"out\" ip daddr != @nosnat masquerade"));
        assert_eq!((rs.rules, rs.entries), (2, 2));
    }

    #[test]
    fn concat_refuses_overlapping_rules() {
        // d1 on 443 shadows part of a1.
        let shadow = TWO.replace("\"22\"", "\"443\"");
        let e = ruleset(&policy(&shadow), Form::Concat, "in", "out").err().unwrap();
        assert!(e.to_string().contains("overlap"), "{e}");
    }

    #[test]
    fn concat_of_disjoint_rules_is_one_map() {
        let one = TWO.replace("\"22\"", "\"21\"").replace(
            "203.0.113.0/24\"], destinationPorts: [\"21",
            "192.0.2.0/24\"], destinationPorts: [\"21",
        );
        let rs = ruleset(&policy(&one), Form::Concat, "in", "out").unwrap();
        // d1: 1 element; a1: 2 destinations × 2 protocols × 2 port ranges.
        assert_eq!(rs.entries, 1 + 8, "{}", rs.text);
        assert!(
            rs.text.contains("192.0.2.0/24 . 21 . tcp . 0.0.0.0/0 : drop"),
            "{}",
            rs.text
        );
        assert!(
            rs.text
                .contains("198.51.100.7 . 8000-8080 . udp . 198.18.0.0/24 : accept"),
            "{}",
            rs.text
        );
        assert!(
            rs.text
                .contains("ip daddr . th dport . meta l4proto . ip saddr vmap @netrules")
        );
    }

    #[test]
    fn bench_policy_sizes_translate() {
        for n in [10usize, 1000] {
            let text = portcullis_bench::synthetic_policy(n);
            let p = policy(&text);
            let lin = ruleset(&p, Form::Linear, "in", "out").unwrap();
            let cat = ruleset(&p, Form::Concat, "in", "out").unwrap();
            assert_eq!(lin.rules, n * 6 / 10);
            assert_eq!(cat.entries, lin.rules * 4);
        }
    }
}
