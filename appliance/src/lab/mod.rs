//! `portcullis lab`: the main job on the embedded default policy — load and validate it, explain sample
//! flows an AKS cluster produces, and exercise the XDP program in a throw-away network namespace.

pub mod enforce;
pub mod xdp;

use crate::cli::{DEFAULT_POLICY, DEFAULT_POLICY_NAME, LabArgs, describe_flow, rule_path, summary};
use anyhow::{Result, bail};
use portcullis_rules::{Env, Flow, MemLoader, Name, Protocol};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::ExitCode;

/// One sample flow and the addresses the DNS proxy would have resolved for it.
struct Sample {
    what: &'static str,
    flow: Flow,
}

fn name(s: &str) -> Option<Name> {
    Name::parse(s).ok()
}

fn samples() -> Vec<Sample> {
    let node = Ipv4Addr::new(198, 18, 1, 10);
    let f = |protocol, ip: Option<Ipv4Addr>, host: Option<&str>, port| Flow {
        source: node,
        destination_ip: ip,
        destination_name: host.and_then(name),
        port,
        protocol,
        host_port: None,
    };
    let mut http = f(Protocol::Http, None, Some("security.ubuntu.com"), 80);
    http.host_port = None;
    let mut http_mismatch = f(Protocol::Http, None, Some("security.ubuntu.com"), 80);
    http_mismatch.host_port = Some(8080);
    vec![
        Sample {
            what: "image pull from MCR (FQDN tag AzureKubernetesService)",
            flow: f(Protocol::Https, None, Some("mcr.microsoft.com"), 443),
        },
        Sample {
            what: "node to API server (wildcard *.azmk8s.io in the tag)",
            flow: f(Protocol::Https, None, Some("aks-1a2b.hcp.westeurope.azmk8s.io"), 443),
        },
        Sample {
            what: "any other HTTPS site (final deny collection)",
            flow: f(Protocol::Https, None, Some("example.com"), 443),
        },
        Sample {
            what: "HTTPS without SNI",
            flow: f(Protocol::Https, Some(Ipv4Addr::new(198, 51, 100, 20)), None, 443),
        },
        Sample {
            what: "Ubuntu security updates over HTTP",
            flow: http,
        },
        Sample {
            what: "HTTP Host port differs from the TCP port",
            flow: http_mismatch,
        },
        Sample {
            what: "control-plane tunnel TCP 9000",
            flow: f(Protocol::Tcp, Some(Ipv4Addr::new(203, 0, 113, 10)), None, 9000),
        },
        Sample {
            what: "NTP by FQDN network rule (address pinned by the DNS proxy)",
            flow: f(Protocol::Udp, Some(Ipv4Addr::new(198, 51, 100, 123)), None, 123),
        },
        Sample {
            what: "SMTP out (explicit network deny)",
            flow: f(Protocol::Tcp, Some(Ipv4Addr::new(198, 51, 100, 25)), None, 25),
        },
        Sample {
            what: "SSH to the Internet (default deny)",
            flow: f(Protocol::Tcp, Some(Ipv4Addr::new(198, 51, 100, 22)), None, 22),
        },
        Sample {
            what: "inbound HTTPS to the public address (DNAT to the ingress)",
            flow: Flow {
                source: Ipv4Addr::new(203, 0, 113, 50),
                destination_ip: Some(Ipv4Addr::new(192, 0, 2, 1)),
                destination_name: None,
                port: 443,
                protocol: Protocol::Tcp,
                host_port: None,
            },
        },
    ]
}

pub fn run(args: &LabArgs) -> Result<ExitCode> {
    let loaded = match &args.config {
        Some(p) => match crate::cli::load_or_report(p) {
            Some(l) => l,
            None => return Ok(ExitCode::from(1)),
        },
        None => match portcullis_rules::load_str(DEFAULT_POLICY_NAME, DEFAULT_POLICY, &MemLoader::default()) {
            Ok(l) => l,
            Err(e) => bail!("the embedded default policy is invalid:\n{e}"),
        },
    };
    let policy = &loaded.config.policy;
    println!("== policy {}: {}", policy.name, summary(policy));
    let ports: Vec<String> = policy
        .application_ports()
        .iter()
        .map(|(p, kinds)| format!("{p} ({kinds:?})"))
        .collect();
    println!(
        "   application-rule ports intercepted by the proxy: {}",
        ports.join(", ")
    );
    let pins: Vec<String> = policy.pinned_names().keys().map(ToString::to_string).collect();
    println!("   names the DNS proxy pins for network rules: {}", pins.join(", "));

    let mut resolved: BTreeMap<Name, Vec<Ipv4Addr>> = BTreeMap::new();
    if let Some(n) = name("ntp.ubuntu.com") {
        resolved.insert(n, vec![Ipv4Addr::new(198, 51, 100, 123)]);
    }
    let env = Env {
        resolutions: &resolved,
        threat_feed: None,
    };
    println!("\n== explain: sample flows from the AKS node subnet and the Internet");
    for s in samples() {
        let d = policy.explain(&s.flow, &env);
        println!(
            "-- {}\n   {}\n   {:?} by {}\n   {}",
            s.what,
            describe_flow(&s.flow),
            d.verdict,
            rule_path(&d),
            d.reason
        );
    }

    if args.no_xdp {
        return Ok(ExitCode::SUCCESS);
    }
    println!("\n== data plane: XDP program in a throw-away network namespace");
    if let Err(why) = crate::bpf::privileged_env() {
        println!("   skipped: {why} (run as root, or pass --no-xdp)");
        return Ok(ExitCode::SUCCESS);
    }
    let report = xdp::xdp_smoke()?;
    println!(
        "   xdp_ingress attached to {} in namespace {} ({:?} mode), {:.1?}",
        report.interface, report.namespace, report.mode, report.elapsed
    );
    println!("   counters: {:?}", report.counters);
    for c in &report.checks {
        println!("   [{}] {}: {}", if c.ok { " ok " } else { "FAIL" }, c.name, c.detail);
    }
    if !report.ok() {
        bail!("the XDP smoke test failed (see FAIL above)");
    }

    println!("\n== enforcement: `portcullis run` on this policy between an AKS subnet and a lab Internet (namespaces)");
    if args.config.is_some() {
        println!("   skipped: the enforcement lab runs the embedded policy (its addresses are the lab's)");
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(why) = enforce::available() {
        println!("   skipped: {why}");
        return Ok(ExitCode::SUCCESS);
    }
    let binary = std::env::current_exe()?;
    let report = enforce::run(&binary, DEFAULT_POLICY)?;
    for c in &report.checks {
        let detail = if c.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", c.detail)
        };
        println!("   [{}] {}{detail}", if c.ok { " ok " } else { "FAIL" }, c.what);
    }
    println!("   flow log ({} records), first ones:", report.flow_log.len());
    for line in report.flow_log.iter().take(6) {
        println!("     {line}");
    }
    for line in &report.counters {
        println!("   {}", line.trim_start_matches("portcullis: "));
    }
    if !report.ok() {
        bail!("the enforcement lab failed (see FAIL above)");
    }
    Ok(ExitCode::SUCCESS)
}
