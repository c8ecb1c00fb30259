//! Policy engine behaviour against the Azure Firewall spec (reference/azure-firewall.md).

use portcullis_rules::{Decision, Env, Flow, MemLoader, Name, Protocol, Stage, Verdict, load_str};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

fn policy(yaml: &str) -> portcullis_rules::Policy {
    policy_with(yaml, &MemLoader::default())
}

fn policy_with(yaml: &str, loader: &MemLoader) -> portcullis_rules::Policy {
    match load_str("policy.yaml", yaml, loader) {
        Ok(l) => l.config.policy,
        Err(e) => panic!("policy should load:\n{e}"),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn flow(src: &str, dst: &str, port: u16, protocol: Protocol) -> Flow {
    let (destination_ip, destination_name) = match dst.parse::<Ipv4Addr>() {
        Ok(a) => (Some(a), None),
        Err(_) => (None, Some(Name::parse(dst).unwrap())),
    };
    let host_port = (protocol == Protocol::Http && port != 80).then_some(port);
    Flow {
        source: ip(src),
        destination_ip,
        destination_name,
        port,
        protocol,
        host_port,
    }
}

fn decide(p: &portcullis_rules::Policy, f: &Flow) -> Decision {
    let d = p.explain(f, &Env::default());
    // Enforcement (no trace) and explain must agree.
    let mut quiet = p.decide(f, &Env::default());
    quiet.trace = d.trace.clone();
    assert_eq!(quiet, d, "decide and explain disagree for {f:?}");
    d
}

fn rule_of(d: &Decision) -> Option<&str> {
    d.rule.as_deref()
}

const HEAD: &str = "policy:\n  ruleCollectionGroups:\n";

fn app_policy(targets: &[&str]) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "{HEAD}    - name: g\n      priority: 100\n      ruleCollections:\n        - ruleCollectionType: FirewallPolicyFilterRuleCollection\n          name: c\n          priority: 100\n          action: {{type: Allow}}\n          rules:\n            - ruleType: ApplicationRule\n              name: r\n              sourceAddresses: [\"*\"]\n              protocols: [{{protocolType: Https, port: 443}}]\n              targetFqdns: [{}]\n",
        list.join(", ")
    )
}

fn allowed(p: &portcullis_rules::Policy, name: &str) -> bool {
    decide(p, &flow("198.18.1.10", name, 443, Protocol::Https)).verdict == Verdict::Allow
}

// §2.4, row by row, through the whole engine.
#[test]
fn wildcard_table_rows() {
    let p = policy(&app_policy(&["www.contoso.com"]));
    assert!(allowed(&p, "www.contoso.com"));
    assert!(allowed(&p, "WWW.CONTOSO.COM."));
    assert!(!allowed(&p, "contoso.com"));

    let p = policy(&app_policy(&["*.contoso.com"]));
    assert!(allowed(&p, "any.contoso.com"));
    assert!(allowed(&p, "sub1.any.contoso.com"));
    assert!(!allowed(&p, "contoso.com"), "*.contoso.com does not match contoso.com");

    let p = policy(&app_policy(&["*contoso.com"]));
    assert!(allowed(&p, "example.anycontoso.com"));
    assert!(allowed(&p, "contoso.com"));
    assert!(allowed(&p, "th3re4lcontoso.com"));
    assert!(!allowed(&p, "contoso.com.evil.example"));

    let p = policy(&app_policy(&["*"]));
    assert!(allowed(&p, "anything.example"));

    for bad in [
        "www.contoso.*",
        "*.contoso.*",
        "test.*.testcom.com",
        "aabbcc*.test.local",
        "*.*.test.local",
        "www.contoso.com:8080",
    ] {
        let e = load_str("policy.yaml", &app_policy(&[bad]), &MemLoader::default()).unwrap_err();
        let first = e.diagnostics[0].to_string();
        assert!(first.starts_with("policy.yaml:15:29: "), "{bad}: {first}");
    }
}

/// RP25's worked example (§1.2): parent RCGs before child RCGs, RC priority compared only within an RCG.
#[test]
fn rp25_processing_order() {
    fn rc(kind: &str, name: &str, prio: u32, port: u16) -> String {
        let (rct, action, rule) = match kind {
            "dnat" => (
                "FirewallPolicyNatRuleCollection",
                "DNAT",
                format!(
                    "{{ruleType: NatRule, name: r-{name}, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [192.0.2.1], destinationPorts: [\"{port}\"], translatedAddress: 198.18.1.5, translatedPort: \"{port}\"}}"
                ),
            ),
            "net" => (
                "FirewallPolicyFilterRuleCollection",
                "Allow",
                format!(
                    "{{ruleType: NetworkRule, name: r-{name}, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [\"*\"], destinationPorts: [\"{port}\"]}}"
                ),
            ),
            _ => (
                "FirewallPolicyFilterRuleCollection",
                "Allow",
                format!(
                    "{{ruleType: ApplicationRule, name: r-{name}, sourceAddresses: [\"*\"], protocols: [{{protocolType: Https, port: 443}}], targetFqdns: [\"{name}.example\", \"all.example\"]}}"
                ),
            ),
        };
        format!(
            "        - {{ruleCollectionType: {rct}, name: {name}, priority: {prio}, action: {{type: {action}}}, rules: [{rule}]}}\n"
        )
    }
    let parent = format!(
        "policy:\n  ruleCollectionGroups:\n    - name: BaseRCG1\n      priority: 200\n      ruleCollections:\n{}{}{}    - name: BaseRCG2\n      priority: 300\n      ruleCollections:\n{}{}",
        rc("dnat", "DNATRC1", 600, 1001),
        rc("dnat", "DNATRC3", 610, 1003),
        rc("net", "NetworkRC1", 800, 2001),
        rc("app", "AppRC2", 1200, 0),
        rc("net", "NetworkRC2", 1300, 2002),
    );
    let child = format!(
        "policy:\n  basePolicy: parent.yaml\n  ruleCollectionGroups:\n    - name: ChildRCG1\n      priority: 300\n      ruleCollections:\n{}{}    - name: ChildRCG2\n      priority: 650\n      ruleCollections:\n{}{}{}",
        rc("net", "ChNetRC1", 700, 2003),
        rc("app", "ChAppRC1", 900, 0),
        rc("net", "ChNetRC2", 1100, 2004),
        rc("app", "ChAppRC2", 2000, 0),
        rc("dnat", "ChDNATRC3", 3000, 1004),
    );
    let loader = MemLoader::default().with("parent.yaml", parent);
    let p = policy_with(&child, &loader);
    let order: Vec<&str> = p.collections.iter().map(|c| c.name.as_str()).collect();
    let mut by_rule: Vec<&str> = p.rules.iter().map(|r| p.collection_of(r).name.as_str()).collect();
    by_rule.dedup();
    let expected = [
        "DNATRC1",
        "DNATRC3",
        "ChDNATRC3",
        "NetworkRC1",
        "NetworkRC2",
        "ChNetRC1",
        "ChNetRC2",
        "AppRC2",
        "ChAppRC1",
        "ChAppRC2",
    ];
    assert_eq!(by_rule, expected, "rule evaluation order");
    assert_eq!(order.len(), expected.len());
    // A name every application collection allows is decided by the first in order: the parent's AppRC2,
    // although the child's ChAppRC1 has a better (lower) RC priority.
    let d = decide(&p, &flow("198.18.1.10", "all.example", 443, Protocol::Https));
    assert_eq!(d.rule_collection.as_deref(), Some("AppRC2"));
    assert_eq!(d.policy.as_deref(), Some("parent"));
    let trace_rcs: Vec<&str> = d.trace.iter().filter_map(|t| t.rule_collection.as_deref()).collect();
    assert_eq!(
        &trace_rcs[..5],
        &["DNATRC1", "DNATRC3", "ChDNATRC3", "NetworkRC1", "NetworkRC2"]
    );
}

/// §1.3 Example 1: a network rule allowing TCP 80,443 to * makes an application deny of google.com moot.
#[test]
fn network_rule_short_circuits_application_deny() {
    let yaml = format!(
        "{HEAD}    - name: net\n      priority: 200\n      ruleCollections:\n        - ruleCollectionType: FirewallPolicyFilterRuleCollection\n          name: allow-web\n          priority: 100\n          action: {{type: Allow}}\n          rules:\n            - {{ruleType: NetworkRule, name: web, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [\"*\"], destinationPorts: [\"80\", \"443\"]}}\n    - name: app\n      priority: 100\n      ruleCollections:\n        - ruleCollectionType: FirewallPolicyFilterRuleCollection\n          name: deny-google\n          priority: 100\n          action: {{type: Deny}}\n          rules:\n            - {{ruleType: ApplicationRule, name: google, sourceAddresses: [\"*\"], protocols: [{{protocolType: Https, port: 443}}, {{protocolType: Http, port: 80}}], targetFqdns: [google.com]}}\n"
    );
    let p = policy(&yaml);
    let mut f = flow("198.18.1.10", "google.com", 443, Protocol::Https);
    f.destination_ip = Some(ip("198.51.100.80"));
    let d = decide(&p, &f);
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.stage, Stage::Network);
    assert_eq!(rule_of(&d), Some("web"));
    // Without the network allow, the application deny would decide.
    let p2 = policy(&yaml.replace("destinationPorts: [\"80\", \"443\"]", "destinationPorts: [\"8080\"]"));
    let d = decide(&p2, &f);
    assert_eq!((d.verdict, rule_of(&d)), (Verdict::Deny, Some("google")));
}

#[test]
fn ip_groups_and_empty_group_skips_rule() {
    let yaml = "policy:\n  ipGroups:\n    nodes: [198.18.1.0/24, 198.18.2.0-198.18.2.31]\n    empty: []\n  ruleCollectionGroups:\n    - name: g\n      priority: 100\n      ruleCollections:\n        - ruleCollectionType: FirewallPolicyFilterRuleCollection\n          name: deny\n          priority: 100\n          action: {type: Deny}\n          rules:\n            - {ruleType: NetworkRule, name: deny-empty, ipProtocols: [Any], sourceIpGroups: [empty], destinationAddresses: [\"*\"], destinationPorts: [\"*\"]}\n        - ruleCollectionType: FirewallPolicyFilterRuleCollection\n          name: allow\n          priority: 200\n          action: {type: Allow}\n          rules:\n            - {ruleType: NetworkRule, name: nodes-dns, ipProtocols: [UDP], sourceIpGroups: [/subscriptions/x/resourceGroups/y/providers/Microsoft.Network/ipGroups/nodes], destinationAddresses: [203.0.113.53], destinationPorts: [\"53\"]}\n".to_string();
    let loaded = load_str("policy.yaml", &yaml, &MemLoader::default()).unwrap();
    assert!(loaded.warnings.iter().any(|w| {
        w.to_string()
            .contains("rule `deny-empty` is skipped: IP group `empty` has no addresses")
    }));
    let p = loaded.config.policy;
    for (src, ok) in [
        ("198.18.1.77", true),
        ("198.18.2.31", true),
        ("198.18.2.32", false),
        ("198.18.0.255", false),
    ] {
        let d = decide(&p, &flow(src, "203.0.113.53", 53, Protocol::Udp));
        assert_eq!(d.verdict == Verdict::Allow, ok, "{src}: {d:?}");
    }
    let d = decide(&p, &flow("198.18.1.77", "203.0.113.53", 53, Protocol::Udp));
    assert_eq!(d.trace[0].result, "skipped");
}

#[test]
fn parent_policy_precedence_and_inheritance() {
    let parent = "policy:\n  threatIntelMode: Deny\n  dnsSettings: {enableProxy: true, servers: [203.0.113.53]}\n  ruleCollectionGroups:\n    - name: corp\n      priority: 60000\n      ruleCollections:\n        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: corp-deny, priority: 65000, action: {type: Deny}, rules: [{ruleType: NetworkRule, name: no-ssh, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [\"*\"], destinationPorts: [\"22\"]}]}\n";
    let child = "policy:\n  basePolicy: base/corp.yaml\n  ruleCollectionGroups:\n    - name: team\n      priority: 100\n      ruleCollections:\n        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: team-allow, priority: 100, action: {type: Allow}, rules: [{ruleType: NetworkRule, name: ssh, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [\"*\"], destinationPorts: [\"22\"]}]}\n";
    let loader = MemLoader::default().with("base/corp.yaml", parent);
    let p = policy_with(child, &loader);
    let d = decide(&p, &flow("198.18.1.10", "198.51.100.22", 22, Protocol::Tcp));
    assert_eq!(
        (d.verdict, rule_of(&d), d.policy.as_deref()),
        (Verdict::Deny, Some("no-ssh"), Some("corp"))
    );
    assert_eq!(p.threat_intel.mode, portcullis_rules::ThreatIntelMode::Deny);
    assert!(p.dns.enable_proxy);
    assert_eq!(p.dns.servers, vec![ip("203.0.113.53")]);

    // A child may not loosen the parent's threat-intel mode.
    let weaker = child.replace(
        "  basePolicy: base/corp.yaml\n",
        "  basePolicy: base/corp.yaml\n  threatIntelMode: Alert\n",
    );
    let e = load_str("policy.yaml", &weaker, &loader).unwrap_err();
    assert!(
        e.diagnostics[0]
            .to_string()
            .starts_with("policy.yaml:3:20: threatIntelMode Alert is weaker than Deny"),
        "{e}"
    );

    // Missing and cyclic base policies point at basePolicy.
    let e = load_str("policy.yaml", child, &MemLoader::default()).unwrap_err();
    assert!(
        e.diagnostics[0]
            .to_string()
            .starts_with("policy.yaml:2:15: cannot read base policy base/corp.yaml"),
        "{e}"
    );
    let cyc = MemLoader::default().with("a.yaml", "policy:\n  basePolicy: policy.yaml\n");
    let e = load_str("policy.yaml", "policy:\n  basePolicy: a.yaml\n", &cyc).unwrap_err();
    assert!(e.to_string().contains("makes a cycle"), "{e}");
}

#[test]
fn http_host_port_must_match_tcp_port() {
    let yaml = app_policy(&["web.example"]).replace("protocolType: Https, port: 443", "protocolType: Http, port: 8080");
    let p = policy(&yaml);
    let mut f = flow("198.18.1.10", "web.example", 8080, Protocol::Http);
    assert_eq!(f.host_port, Some(8080));
    assert_eq!(decide(&p, &f).verdict, Verdict::Allow);
    f.host_port = Some(9090);
    let d = decide(&p, &f);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(
        d.reason
            .contains("Host header port 9090 does not match the TCP port 8080"),
        "{}",
        d.reason
    );
    // No port in Host means 80 (Azure's assumption), which mismatches 8080.
    f.host_port = None;
    assert_eq!(decide(&p, &f).verdict, Verdict::Deny);
}

#[test]
fn missing_sni_and_default_deny_reasons() {
    let p = policy(&app_policy(&["*"]));
    let mut f = flow("198.18.1.10", "198.51.100.9", 443, Protocol::Https);
    let d = decide(&p, &f);
    assert_eq!(
        (d.verdict, d.reason.as_str()),
        (Verdict::Deny, "SNI TLS extension was missing.")
    );
    f.protocol = Protocol::Tcp;
    let d = decide(&p, &f);
    assert!(
        d.reason.contains("TCP port 443 is intercepted for application rules"),
        "{}",
        d.reason
    );
    let d = decide(&p, &flow("198.18.1.10", "198.51.100.9", 22, Protocol::Tcp));
    assert_eq!(
        (d.verdict, d.stage, d.rule.as_deref()),
        (Verdict::Deny, Stage::Default, None)
    );
    assert_eq!(d.reason, "No rule matched. Proceeding with default action.");
}

#[test]
fn dnat_then_network_and_snat_ranges() {
    let yaml = "policy:\n  snat: {privateRanges: [IANAPrivateRanges, 198.18.0.0/15]}\n  ruleCollectionGroups:\n    - name: g\n      priority: 100\n      ruleCollections:\n        - {ruleCollectionType: FirewallPolicyNatRuleCollection, name: in, priority: 100, action: {type: DNAT}, rules: [{ruleType: NatRule, name: web, ipProtocols: [TCP], sourceAddresses: [203.0.113.0/24], destinationAddresses: [192.0.2.1], destinationPorts: [\"443\"], translatedAddress: 198.18.1.100, translatedPort: \"8443\"}]}\n        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: out, priority: 200, action: {type: Allow}, rules: [{ruleType: NetworkRule, name: all, ipProtocols: [Any], sourceAddresses: [\"*\"], destinationAddresses: [\"*\"], destinationPorts: [\"*\"]}]}\n";
    let p = policy(yaml);
    let d = decide(&p, &flow("203.0.113.50", "192.0.2.1", 443, Protocol::Tcp));
    assert_eq!(d.verdict, Verdict::Dnat);
    assert_eq!(
        d.translated.as_ref().map(|t| (t.address, t.port)),
        Some((ip("198.18.1.100"), 8443))
    );
    // Outside the DNAT source restriction the network rule decides.
    let d = decide(&p, &flow("198.51.100.50", "192.0.2.1", 443, Protocol::Tcp));
    assert_eq!((d.verdict, d.stage), (Verdict::Allow, Stage::Network));
    assert_eq!(
        decide(&p, &flow("198.18.1.1", "198.51.100.1", 53, Protocol::Udp)).snat,
        Some(true)
    );
    assert_eq!(
        decide(&p, &flow("198.18.1.1", "198.19.0.1", 53, Protocol::Udp)).snat,
        Some(false)
    );
    assert_eq!(
        decide(&p, &flow("198.18.1.1", "10.1.2.3", 53, Protocol::Udp)).snat,
        Some(false)
    );
    // ICMP is matched by Any with ports `*`.
    assert_eq!(
        decide(&p, &flow("198.18.1.1", "198.51.100.1", 0, Protocol::Icmp)).verdict,
        Verdict::Allow
    );
}

#[test]
fn fqdn_network_rules_match_pinned_addresses() {
    let yaml = "policy:\n  dnsSettings: {enableProxy: true}\n  ruleCollectionGroups:\n    - name: g\n      priority: 100\n      ruleCollections:\n        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: NetworkRule, name: ntp, ipProtocols: [UDP], sourceAddresses: [\"*\"], destinationFqdns: [NTP.ubuntu.com.], destinationPorts: [\"123\"]}]}\n";
    let p = policy(yaml);
    assert_eq!(
        p.pinned_names().keys().map(Name::as_str).collect::<Vec<_>>(),
        vec!["ntp.ubuntu.com"]
    );
    let f = flow("198.18.1.1", "198.51.100.123", 123, Protocol::Udp);
    assert_eq!(p.decide(&f, &Env::default()).verdict, Verdict::Deny);
    let mut pins: BTreeMap<Name, Vec<Ipv4Addr>> = BTreeMap::new();
    pins.insert(Name::parse("ntp.ubuntu.com").unwrap(), vec![ip("198.51.100.123")]);
    let env = Env {
        resolutions: &pins,
        threat_feed: None,
    };
    assert_eq!(p.decide(&f, &env).verdict, Verdict::Allow);
    // By name (explain with a name destination).
    assert_eq!(
        p.decide(
            &flow("198.18.1.1", "ntp.ubuntu.com", 123, Protocol::Udp),
            &Env::default()
        )
        .verdict,
        Verdict::Allow
    );
    // Without the DNS proxy the rule is refused, as Azure refuses it.
    let e = load_str(
        "policy.yaml",
        &yaml.replace("enableProxy: true", "enableProxy: false"),
        &MemLoader::default(),
    )
    .unwrap_err();
    assert!(
        e.diagnostics[0]
            .to_string()
            .starts_with("policy.yaml:7:221: destinationFqdns in network rules need the DNS proxy"),
        "{e}"
    );
}

#[test]
fn threat_intel_modes() {
    let base = "policy:\n  threatIntelMode: MODE\n  threatIntelWhitelist: {ipAddresses: [198.51.100.7]}\n  ruleCollectionGroups:\n    - name: g\n      priority: 100\n      ruleCollections:\n        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: NetworkRule, name: all, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [\"*\"], destinationPorts: [\"*\"]}]}\n";
    let feed = portcullis_rules::ThreatFeed::parse("198.51.100.0/24\n").unwrap();
    let env = Env {
        resolutions: &portcullis_rules::NoResolutions,
        threat_feed: Some(&feed),
    };
    let f = flow("198.18.1.1", "198.51.100.9", 443, Protocol::Tcp);
    let d = policy(&base.replace("MODE", "Deny")).explain(&f, &env);
    assert_eq!((d.verdict, d.stage), (Verdict::Deny, Stage::ThreatIntel));
    let d = policy(&base.replace("MODE", "Alert")).explain(&f, &env);
    assert_eq!((d.verdict, d.alerts.len()), (Verdict::Allow, 1));
    let d = policy(&base.replace("MODE", "Off")).explain(&f, &env);
    assert!(d.alerts.is_empty());
    let allowlisted = flow("198.18.1.1", "198.51.100.7", 443, Protocol::Tcp);
    assert_eq!(
        policy(&base.replace("MODE", "Deny"))
            .explain(&allowlisted, &env)
            .verdict,
        Verdict::Allow
    );
}

/// Every validation error, with the exact line:col of the offending node.
#[test]
fn validation_errors_point_at_nodes() {
    let cases: &[(&str, &str)] = &[
        (
            "policy:\n  ruleCollectionGroups:\n    - name: g\n      priority: 99\n",
            "policy.yaml:4:17: priority 99 is out of range",
        ),
        (
            "policy:\n  ruleCollectionGroups:\n    - name: g\n      priority: 65001\n",
            "policy.yaml:4:17: priority 65001 is out of range",
        ),
        (
            "policy:\n  ruleCollectionGroups:\n    - name: -bad\n      priority: 100\n",
            "policy.yaml:3:13: rule collection group name `-bad` must start with a letter or digit",
        ),
        (
            "policy:\n  ruleCollectionGroups:\n    - name: bad.\n      priority: 100\n",
            "policy.yaml:3:13: rule collection group name `bad.` must end with",
        ),
        (
            "policy:\n  ruleCollectionGroups:\n    - name: g\n      priority: 100\n      prority: 3\n",
            "policy.yaml:5:7: unknown field `prority` in a rule collection group; did you mean `priority`?",
        ),
        (
            "policy:\n  threatIntelMode: Sometimes\n",
            "policy.yaml:2:20: threatIntelMode `Sometimes` is not one of: Off, Alert, Deny",
        ),
        (
            "policy:\n  intrusionDetection: {mode: Deny}\n",
            "policy.yaml:2:3: `intrusionDetection` is not supported by portcullis",
        ),
        (
            "appliance:\n  interfaces: {internal: eth0}\n  snatAddresses: [192.0.2.300]\npolicy: {}\n",
            "policy.yaml:3:19: each snatAddresses entry must be a single IPv4 address",
        ),
        (
            "nonsense: 1\npolicy: {}\n",
            "policy.yaml:1:1: unknown field `nonsense` in the config file",
        ),
        (
            "policy:\n  ruleCollectionGroups: [ {name: g, priority: 100\n",
            "policy.yaml:3:1: syntax error",
        ),
    ];
    for (yaml, want) in cases {
        let e = load_str("policy.yaml", yaml, &MemLoader::default()).unwrap_err();
        let got: Vec<String> = e.diagnostics.iter().map(ToString::to_string).collect();
        assert!(got.iter().any(|g| g.starts_with(want)), "want `{want}`, got {got:#?}");
    }

    let rc = |body: &str| {
        format!(
            "policy:\n  ipGroups: {{nodes: [198.18.1.0/24]}}\n  dnsSettings: {{enableProxy: true}}\n  ruleCollectionGroups:\n    - name: g\n      priority: 100\n      ruleCollections:\n{body}"
        )
    };
    let rule_cases: &[(&str, &str, &str)] = &[
        // Filter collection with a DNAT action.
        (
            "        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: DNAT}, rules: []}\n",
            "DNAT}",
            "a FirewallPolicyFilterRuleCollection takes action Allow or Deny",
        ),
        // Mixed rule types.
        (
            "        - ruleCollectionType: FirewallPolicyFilterRuleCollection\n          name: c\n          priority: 100\n          action: {type: Allow}\n          rules:\n            - {ruleType: NetworkRule, name: a, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [\"*\"], destinationPorts: [\"1\"]}\n            - {ruleType: ApplicationRule, name: b, sourceAddresses: [\"*\"], protocols: [{protocolType: Https, port: 443}], targetFqdns: [a.example]}\n",
            "{ruleType: ApplicationRule",
            "all rules of a collection must be of one type",
        ),
        // NatRule in a filter collection.
        (
            "        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: NatRule, name: n}]}\n",
            "NatRule, name: n",
            "a NatRule cannot be in a FirewallPolicyFilterRuleCollection",
        ),
        // NAT port 64000.
        (
            "        - {ruleCollectionType: FirewallPolicyNatRuleCollection, name: c, priority: 100, action: {type: DNAT}, rules: [{ruleType: NatRule, name: n, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [192.0.2.1], destinationPorts: [\"64000\"], translatedAddress: 198.18.1.1, translatedPort: \"80\"}]}\n",
            "\"64000\"",
            "port 64000 is out of range 1-63999",
        ),
        // Both translatedAddress and translatedFqdn.
        (
            "        - {ruleCollectionType: FirewallPolicyNatRuleCollection, name: c, priority: 100, action: {type: DNAT}, rules: [{ruleType: NatRule, name: n, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [192.0.2.1], destinationPorts: [\"443\"], translatedAddress: 198.18.1.1, translatedFqdn: svc.example, translatedPort: \"80\"}]}\n",
            "svc.example",
            "give exactly one of translatedAddress and translatedFqdn",
        ),
        // Wildcard in destinationFqdns.
        (
            "        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: NetworkRule, name: a, ipProtocols: [UDP], sourceAddresses: [\"*\"], destinationFqdns: [\"*.ubuntu.com\"], destinationPorts: [\"123\"]}]}\n",
            "\"*.ubuntu.com\"",
            "`*.ubuntu.com`: destinationFqdns take exact names",
        ),
        // Unknown IP group.
        (
            "        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: NetworkRule, name: a, ipProtocols: [UDP], sourceIpGroups: [nodez], destinationAddresses: [\"*\"], destinationPorts: [\"123\"]}]}\n",
            "nodez",
            "unknown IP group `nodez` (defined: nodes)",
        ),
        // Service tag.
        (
            "        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: NetworkRule, name: a, ipProtocols: [UDP], sourceAddresses: [\"*\"], destinationAddresses: [AzureCloud.westeurope], destinationPorts: [\"1194\"]}]}\n",
            "AzureCloud",
            "`AzureCloud.westeurope` looks like an Azure service tag",
        ),
        // Bad address, bad port, bad protocol.
        (
            "        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: NetworkRule, name: a, ipProtocols: [SCTP], sourceAddresses: [10.0.0.0/33], destinationAddresses: [\"*\"], destinationPorts: [\"0\"]}]}\n",
            "SCTP",
            "ipProtocols entry `SCTP` is not one of: TCP, UDP, ICMP, Any",
        ),
        (
            "        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: NetworkRule, name: a, ipProtocols: [TCP], sourceAddresses: [10.0.0.0/33], destinationAddresses: [\"*\"], destinationPorts: [\"0\"]}]}\n",
            "10.0.0.0/33",
            "prefix length in `10.0.0.0/33` must be 0..=32",
        ),
        (
            "        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: NetworkRule, name: a, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [\"*\"], destinationPorts: [\"0\"]}]}\n",
            "\"0\"",
            "port 0 is out of range 1-65535",
        ),
        // Application rule: unknown tag, Premium field, port out of range, missing targets.
        (
            "        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: ApplicationRule, name: a, sourceAddresses: [\"*\"], protocols: [{protocolType: Https, port: 443}], fqdnTags: [AzureKubernetes]}]}\n",
            "AzureKubernetes]",
            "unknown FQDN tag `AzureKubernetes`",
        ),
        (
            "        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: ApplicationRule, name: a, sourceAddresses: [\"*\"], protocols: [{protocolType: Https, port: 443}], targetUrls: [a.example/x]}]}\n",
            "targetUrls",
            "`targetUrls` is not supported by portcullis",
        ),
        (
            "        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: ApplicationRule, name: a, sourceAddresses: [\"*\"], protocols: [{protocolType: Https, port: 64001}], targetFqdns: [a.example]}]}\n",
            "64001",
            "application rule port 64001 is out of range 0-64000",
        ),
        (
            "        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: ApplicationRule, name: a, sourceAddresses: [\"*\"], protocols: [{protocolType: Https, port: 443}]}]}\n",
            "{ruleType: ApplicationRule",
            "an application rule needs targetFqdns or fqdnTags",
        ),
        // Duplicate rule names.
        (
            "        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: NetworkRule, name: a, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [\"*\"], destinationPorts: [\"1\"]}, {ruleType: NetworkRule, name: A, ipProtocols: [TCP], sourceAddresses: [\"*\"], destinationAddresses: [\"*\"], destinationPorts: [\"1\"]}]}\n",
            "A, ipProtocols",
            "rule name `A` is used twice in this collection",
        ),
    ];
    for (body, token, msg) in rule_cases {
        let text = rc(body);
        // The error must point at the offending node: the token's line and column.
        let at = text.find(token).unwrap_or_else(|| panic!("{token} not in case"));
        let line = text[..at].matches('\n').count() + 1;
        let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
        let want = format!("policy.yaml:{line}:{col}: {msg}");
        let e = load_str("policy.yaml", &text, &MemLoader::default()).unwrap_err();
        let got: Vec<String> = e.diagnostics.iter().map(ToString::to_string).collect();
        assert!(
            got.iter().any(|g| g.starts_with(want.as_str())),
            "want `{want}`, got {got:#?}"
        );
    }
}

#[test]
fn json_policies_load_with_positions() {
    let json = r#"{
  "policy": {
    "ruleCollectionGroups": [
      {"name": "g", "priority": 100, "ruleCollections": [
        {"ruleCollectionType": "FirewallPolicyFilterRuleCollection", "name": "c", "priority": 100,
         "action": {"type": "Allow"},
         "rules": [{"ruleType": "NetworkRule", "name": "r", "ipProtocols": ["TCP"],
                    "sourceAddresses": ["*"], "destinationAddresses": ["*"], "destinationPorts": ["443"]}]}]}]
  }
}"#;
    let p = policy(json);
    assert_eq!(
        decide(&p, &flow("198.18.1.1", "198.51.100.1", 443, Protocol::Tcp)).verdict,
        Verdict::Allow
    );
    let e = load_str(
        "policy.json",
        &json.replace("\"443\"", "\"99999\""),
        &MemLoader::default(),
    )
    .unwrap_err();
    assert!(
        e.diagnostics[0]
            .to_string()
            .starts_with("policy.json:8:99: port 99999 is out of range"),
        "{e}"
    );
}

#[test]
fn application_denial_has_the_pipelines_shape() {
    let p = policy(&app_policy(&["a.example"]));
    let d = p.application_denial("Malformed ClientHello: truncated extension.".into());
    assert_eq!((d.verdict, d.stage), (Verdict::Deny, Stage::Application));
    assert_eq!(d.policy.as_deref(), Some(p.name.as_str()));
    assert_eq!(d.rule, None);
    assert_eq!(d.reason, "Malformed ClientHello: truncated extension.");
    // The same as the pipeline gives for a hello without a name.
    let no_sni = decide(&p, &flow("198.18.1.10", "203.0.113.10", 443, Protocol::Https));
    let same = p.application_denial(no_sni.reason.clone());
    assert_eq!(
        (same.verdict, same.stage, same.policy),
        (no_sni.verdict, no_sni.stage, no_sni.policy)
    );
}
