//! The real `portcullis` binary on fixture files: check, explain (human and JSON), import, lab, --help.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("portcullis runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `portcullis explain … --json`, which must succeed and print one JSON object.
fn explain_json(config: &str, source: &str, destination: &str, protocol: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "explain",
        "--config",
        config,
        "--source",
        source,
        "--destination",
        destination,
        "--protocol",
        protocol,
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(
        o.status.success(),
        "explain {source} -> {destination} {protocol}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    serde_json::from_str(&stdout(&o)).expect("one JSON object")
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("portcullis-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Self(p)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn default_policy() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies/aks-egress-baseline.yaml")
        .display()
        .to_string()
}

#[test]
fn check_accepts_the_default_policy() {
    let o = run(&["check", "--config", &default_policy()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("valid: 3 rule collection groups, 5 rule collections, 11 rules"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn check_reports_file_line_col_and_exits_1() {
    let s = Scratch::new("check");
    let path = s.write(
        "bad.yaml",
        "policy:\n  ruleCollectionGroups:\n    - name: g\n      priority: 70000\n      ruleCollections:\n        - {ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c, priority: 100, action: {type: Allow}, rules: [{ruleType: ApplicationRule, name: r, sourceAddresses: [\"*\"], protocols: [{protocolType: Https, port: 443}], targetFqdns: [\"www.contoso.*\"]}]}\n",
    );
    let o = run(&["check", "--config", &path]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&format!("{path}:4:17: priority 70000 is out of range")),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!("{path}:6:245: `www.contoso.*`: the asterisk is only allowed")),
        "{out}"
    );

    let o = run(&["check", "--config", "/nonexistent/policy.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).starts_with("/nonexistent/policy.yaml:1:1: cannot read:"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn explain_json_shape() {
    let p = default_policy();
    let v = explain_json(&p, "198.18.1.10", "mcr.microsoft.com:443", "https", &[]);
    assert_eq!(v["verdict"], "Allow");
    assert_eq!(v["ruleCollectionGroup"], "rcg-aks-application");
    assert_eq!(v["ruleCollection"], "aks-app-allow");
    assert_eq!(v["rule"], "aks-fqdn-tag");
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("AzureKubernetesService")
    );
    assert!(v["trace"].as_array().is_some_and(|t| t.len() >= 6), "{v}");

    let v = explain_json(&p, "198.18.1.10", "198.51.100.22:22", "tcp", &[]);
    assert_eq!(v["verdict"], "Deny");
    assert!(
        v["ruleCollectionGroup"].is_null() && v["ruleCollection"].is_null() && v["rule"].is_null(),
        "{v}"
    );
    assert_eq!(v["reason"], "No rule matched. Proceeding with default action.");

    let v = explain_json(&p, "203.0.113.50", "192.0.2.1:443", "tcp", &[]);
    assert_eq!(v["verdict"], "DNAT");
    assert_eq!(v["translated"]["address"], "198.18.1.100");

    // FQDN network rule: by name, and by address only when the DNS proxy resolved it.
    let v = explain_json(
        &p,
        "198.18.1.10",
        "198.51.100.123:123",
        "udp",
        &["--resolve", "ntp.ubuntu.com=198.51.100.123"],
    );
    assert_eq!(v["rule"], "ntp");
    let v = explain_json(&p, "198.18.1.10", "198.51.100.123:123", "udp", &[]);
    assert_eq!(v["verdict"], "Deny");
}

#[test]
fn explain_human_output_and_bad_input() {
    let p = default_policy();
    let o = run(&[
        "explain",
        "--config",
        &p,
        "--source",
        "198.18.1.10",
        "--destination",
        "security.ubuntu.com:80",
        "--protocol",
        "http",
        "--host-header",
        "security.ubuntu.com:8080",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Verdict:  Deny"), "{out}");
    assert!(
        out.contains("Host header port 8080 does not match the TCP port 80"),
        "{out}"
    );

    let o = run(&[
        "explain",
        "--config",
        &p,
        "--source",
        "198.18.1.10",
        "--destination",
        "example.com",
        "--protocol",
        "https",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--destination needs HOST_OR_IP:PORT"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "explain",
        "--config",
        &p,
        "--source",
        "not-an-ip",
        "--destination",
        "example.com:443",
        "--protocol",
        "https",
    ]);
    assert_eq!(o.status.code(), Some(2), "clap usage error");
    let o = run(&[
        "explain",
        "--config",
        &p,
        "--source",
        "198.18.1.10",
        "--destination",
        "example.com:443",
        "--protocol",
        "sctp",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

/// (source, destination, port, protocol, expected verdict, rule collection, rule) — the §11 policy's
/// intended behaviour, as the spec describes it.
const SECTION_11_FLOWS: &[(&str, &str, &str, &str, &str, &str, &str)] = &[
    (
        "10.42.1.5",
        "mcr.microsoft.com",
        "443",
        "https",
        "Allow",
        "aks-app-allow",
        "aks-fqdn-tag",
    ),
    (
        "10.42.1.5",
        "example.com",
        "443",
        "https",
        "Deny",
        "deny-all-web-last",
        "deny-everything-else",
    ),
    (
        "10.42.1.5",
        "aks-x.hcp.westeurope.azmk8s.io",
        "443",
        "https",
        "Allow",
        "aks-app-allow",
        "aks-fqdn-tag",
    ),
    (
        "10.42.1.5",
        "security.ubuntu.com",
        "80",
        "http",
        "Allow",
        "aks-app-allow",
        "ubuntu-updates-http",
    ),
    (
        "10.42.1.5",
        "x.ods.opinsights.azure.com",
        "443",
        "https",
        "Allow",
        "aks-app-allow",
        "container-insights",
    ),
    (
        "10.42.1.5",
        "snapshot.ubuntu.com",
        "443",
        "https",
        "Allow",
        "aks-app-allow",
        "ubuntu-snapshot",
    ),
    (
        "10.42.1.5",
        "20.50.1.2",
        "9000",
        "tcp",
        "Allow",
        "aks-net-allow",
        "apitcp",
    ),
    (
        "10.42.1.5",
        "20.50.1.2",
        "1194",
        "udp",
        "Allow",
        "aks-net-allow",
        "apiudp",
    ),
    (
        "10.42.1.5",
        "51.0.0.10",
        "443",
        "tcp",
        "Allow",
        "aks-net-allow",
        "apiserver-ip",
    ),
    (
        "10.42.1.5",
        "20.60.0.7",
        "443",
        "tcp",
        "Allow",
        "aks-net-allow",
        "azure-monitor",
    ),
    (
        "10.42.1.5",
        "ntp.ubuntu.com",
        "123",
        "udp",
        "Allow",
        "aks-net-allow",
        "ntp",
    ),
    ("10.42.9.5", "20.50.1.2", "9000", "tcp", "Deny", "", ""),
    (
        "10.42.9.5",
        "example.com",
        "443",
        "https",
        "Deny",
        "deny-all-web-last",
        "deny-everything-else",
    ),
    (
        "203.0.113.9",
        "20.1.2.3",
        "443",
        "tcp",
        "DNAT",
        "aks-ingress-dnat",
        "https-to-ilb",
    ),
    ("198.51.100.9", "20.1.2.3", "443", "tcp", "Deny", "", ""),
];

fn decisions(config: &str) -> Vec<(String, String, String)> {
    SECTION_11_FLOWS
        .iter()
        .map(|(src, dst, port, proto, _, _, _)| {
            let v = explain_json(config, src, &format!("{dst}:{port}"), proto, &[]);
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            (s("verdict"), s("ruleCollection"), s("rule"))
        })
        .collect()
}

#[test]
fn import_arm_rest_and_azcli_give_the_same_decisions() {
    let s = Scratch::new("import");
    let dir = fixtures().join("import");
    let mut all = Vec::new();
    for input in ["aks-arm-export.json", "aks-rest.json", "aks-azcli.json"] {
        let o = run(&["import", &dir.join(input).display().to_string()]);
        assert!(o.status.success(), "import {input}: {}", stderr(&o));
        let yaml = stdout(&o);
        let path = s.write(&format!("{input}.yaml"), &yaml);
        let c = run(&["check", "--config", &path]);
        assert!(
            c.status.success(),
            "check of imported {input}:\n{}{}",
            stdout(&c),
            stderr(&c)
        );
        let got = decisions(&path);
        for (i, (verdict, rc, rule)) in got.iter().enumerate() {
            let (src, dst, port, proto, want_v, want_rc, want_rule) = SECTION_11_FLOWS[i];
            assert_eq!(
                (verdict.as_str(), rc.as_str(), rule.as_str()),
                (want_v, want_rc, want_rule),
                "{input}: {proto} {src} -> {dst}:{port}"
            );
        }
        all.push(got);
    }
    assert!(all.windows(2).all(|w| w[0] == w[1]));
    // --output writes the same text.
    let out = s.0.join("out.yaml");
    let o = run(&[
        "import",
        &dir.join("aks-rest.json").display().to_string(),
        "-o",
        &out.display().to_string(),
    ]);
    assert!(o.status.success());
    assert!(std::fs::read_to_string(&out).is_ok_and(|t| t.contains("ruleCollectionGroups:")));
}

#[test]
fn import_refuses_premium_features_unless_told() {
    let premium = fixtures().join("import/premium-policy.json").display().to_string();
    let o = run(&["import", &premium]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("TLS inspection") || stderr(&o).contains("not support"),
        "{}",
        stderr(&o)
    );
    let o = run(&["import", "--skip-unsupported", &premium]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning:"), "{}", stderr(&o));
    let s = Scratch::new("premium");
    let path = s.write("p.yaml", &stdout(&o));
    let c = run(&["check", "--config", &path]);
    assert!(c.status.success(), "{}", stdout(&c));
    let o = run(&["import", "/nonexistent.json"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn help_speaks_azure_firewall() {
    for (cmd, words) in [
        (
            vec!["--help"],
            vec!["Azure Firewall Policy", "DNAT", "application rules"],
        ),
        (vec!["check", "--help"], vec!["FILE:LINE:COL", "priorities"]),
        (vec!["explain", "--help"], vec!["SNI", "--resolve", "--json"]),
        (vec!["import", "--help"], vec!["ARM template", "az CLI"]),
        (vec!["lab", "--help"], vec!["network namespace"]),
    ] {
        let o = run(&cmd);
        assert!(o.status.success());
        let out = stdout(&o);
        for w in words {
            assert!(out.contains(w), "`portcullis {}` help lacks {w}:\n{out}", cmd.join(" "));
        }
    }
}

#[test]
fn lab_without_xdp_explains_sample_flows() {
    let o = run(&["lab", "--no-xdp"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("Allow by rcg-aks-application / aks-app-allow / aks-fqdn-tag"),
        "{out}"
    );
    assert!(
        out.contains("Dnat by rcg-aks-dnat / aks-ingress-dnat / https-to-ingress"),
        "{out}"
    );
    assert!(out.contains("SNI TLS extension was missing."), "{out}");
}
