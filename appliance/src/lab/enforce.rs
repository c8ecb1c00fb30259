//! `portcullis lab`, the enforcement part: the embedded policy run by the real `portcullis run` (this
//! binary) in throw-away network namespaces — an AKS node subnet (198.18.1.0/24), the appliance, and a lab
//! Internet (TEST-NET, no route out) with nginx (HTTPS vhosts from a lab CA, HTTP), dnsmasq as the policy's
//! `dnsSettings.servers` (203.0.113.53) — and real curl clients sending what a cluster sends. Every result
//! is checked against what the policy says, and the daemon's flow log and counters are shown.
//!
//! The namespaces, the servers and the daemon are the ones the end-to-end tests use (crate
//! portcullis-e2e), removed when the lab ends, also on failure.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use portcullis_e2e::lab::{self, Arms, Lab, sa};
use portcullis_e2e::peers::{self, Curl};

/// The web server of every lab name (203.0.113.10 is the API server address of the policy's network rules).
const WEB: Ipv4Addr = lab::SERVER2;
const API: Ipv4Addr = lab::SERVER;
const DNS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
/// The cluster's internal ingress (the DNAT rule's translated address).
const INGRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
const NAMES: &[&str] = &["mcr.microsoft.com", "security.ubuntu.com", "example.com"];
const ANSWER: Duration = Duration::from_secs(8);
const SILENCE: Duration = Duration::from_secs(2);

/// One observed flow: what was sent, what the policy expects, what happened.
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

pub struct Report {
    pub checks: Vec<Check>,
    /// Flow-log lines (JSON) the daemon wrote.
    pub flow_log: Vec<String>,
    /// The daemon's stop lines (counters of the data plane and the proxy).
    pub counters: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// Whether this machine can run it (root, namespaces, the tools `scripts/bootstrap.sh` installs).
pub fn available() -> Result<(), String> {
    peers::proxy_fixtures_available().and_then(|()| crate::bpf::privileged_env())
}

/// The embedded policy with the lab's interface names and a flow-log file.
fn lab_policy(text: &str) -> Result<String> {
    let from = "interfaces: {internal: pc-in, external: pc-out}";
    if !text.contains(from) {
        return Err(anyhow!("the policy's appliance section is not the embedded one"));
    }
    Ok(text
        .replace(from, "interfaces: {internal: in0, external: out0}")
        .replace("flowLog: \"-\"", "flowLog: flows.jsonl"))
}

pub fn run(binary: &Path, policy_text: &str) -> Result<Report> {
    let lab = Lab::new(Arms::Two).context("creating the lab namespaces")?;
    lab.inet.ip(&["addr", "add", &format!("{DNS}/32"), "dev", "lo"])?;
    lab.spoke
        .ip(&["addr", "add", &format!("{INGRESS}/24"), "dev", "eth0"])?;
    let ca = lab.ca()?;
    let records: Vec<(&str, Ipv4Addr)> = NAMES.iter().map(|n| (*n, WEB)).collect();
    let _dns = lab.dnsmasq(&lab.inet, sa(DNS, 53), &records)?;
    let _web = lab.nginx_vhosts(
        &lab.inet,
        &ca,
        &[sa(WEB, 443), sa(API, 443)],
        NAMES,
        &[sa(WEB, 80), sa(API, 9000)],
        1,
    )?;
    let _ingress = lab.nginx(&lab.spoke, &[sa(INGRESS, 443)])?;
    let config = lab.write("policy.yaml", &lab_policy(policy_text)?)?;
    let mut daemon = lab.portcullis(binary, &config, &["--flush"])?;
    daemon.wait_ready(Duration::from_secs(120))?;

    let cacert = ca.ca_cert().to_owned();
    let https = |name: &str, ip: Ipv4Addr| -> Result<Curl> {
        Ok(peers::curl_https(
            &lab.spoke,
            &format!("https://{name}/"),
            Some((name, 443, ip)),
            Some(&cacert),
            ANSWER,
        )?)
    };
    let http = |host: &str| -> Result<Curl> {
        Ok(peers::curl_http(
            &lab.spoke,
            &format!("http://{WEB}/"),
            &[&format!("Host: {host}")],
            ANSWER,
        )?)
    };
    let mut checks = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        checks.push(Check {
            what: what.to_owned(),
            ok,
            detail,
        })
    };
    let served = |c: &Curl| peers::field(&c.body, "vhost").unwrap_or_default();
    let client = |c: &Curl| peers::field(&c.body, "client").unwrap_or_default();

    let c = https("mcr.microsoft.com", WEB)?;
    check(
        "HTTPS mcr.microsoft.com: allowed by the FQDN tag AzureKubernetesService, SNATed",
        c.status == Some(200) && client(&c) == lab::FW_EXTERNAL.to_string(),
        format!("status {:?}, server saw {}", c.status, client(&c)),
    );
    let c = https("mcr.microsoft.com", lab::BAD_SERVER)?;
    check(
        "HTTPS mcr.microsoft.com aimed at 203.0.113.66: dialled by name, the real server answers",
        c.status == Some(200) && served(&c) == "mcr.microsoft.com",
        format!("status {:?}, vhost {}", c.status, served(&c)),
    );
    let c = https("example.com", WEB)?;
    check(
        "HTTPS example.com: denied by deny-everything-else, reset after the ClientHello",
        c.status.is_none(),
        format!("curl exit {:?}", c.exit),
    );
    let c = https("example.com", API)?;
    check(
        "HTTPS example.com to 203.0.113.10: the network rule apiserver-ip wins over application rules",
        c.status == Some(200),
        format!("status {:?}, vhost {}", c.status, served(&c)),
    );
    let c = http("security.ubuntu.com")?;
    check(
        "HTTP security.ubuntu.com: allowed by ubuntu-updates, X-Forwarded-For added",
        c.status == Some(200) && peers::field(&c.body, "xff").as_deref() == Some("198.18.1.10"),
        format!("status {:?}, xff {:?}", c.status, peers::field(&c.body, "xff")),
    );
    let c = http("example.com")?;
    check(
        "HTTP example.com: status 470 with Azure's text",
        c.status == Some(470),
        format!("status {:?}: {}", c.status, c.body.trim()),
    );
    let c = peers::curl(&lab.spoke, sa(API, 9000), None, ANSWER)?;
    check(
        "TCP 9000 to the API server: allowed by the network rule apitcp (XDP, SNAT)",
        c.status == Some(200),
        format!("status {:?}", c.status),
    );
    for (port, rule) in [(22u16, "default deny"), (25, "the network rule no-smtp")] {
        let c = peers::curl(&lab.spoke, sa(WEB, port), None, SILENCE)?;
        check(
            &format!("TCP {port} to the Internet: dropped by {rule}"),
            c.status.is_none(),
            format!("curl exit {:?}", c.exit),
        );
    }
    let c = peers::curl(&lab.inet, sa(lab::FW_EXTERNAL, 443), Some(lab::OUTSIDE_CLIENT), ANSWER)?;
    check(
        "Internet to 192.0.2.1:443: DNAT to the ingress 198.18.1.100, source rewritten to the appliance",
        c.status == Some(200) && c.body.trim() == lab::FW_INTERNAL.to_string(),
        format!("status {:?}, ingress saw {}", c.status, c.body.trim()),
    );

    let stopped = daemon.stop(Duration::from_secs(20))?;
    check(
        "the daemon stops cleanly and removes its state (--flush)",
        stopped,
        String::new(),
    );
    let stderr = daemon.stderr();
    let counters = stderr
        .lines()
        .filter(|l| l.contains("data plane: {") || l.contains("application proxy: {"))
        .map(str::to_owned)
        .collect();
    let flow_log = std::fs::read_to_string(lab.dir.join("flows.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    Ok(Report {
        checks,
        flow_log,
        counters,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lab_policy_is_the_embedded_one_with_lab_interfaces() {
        let p = super::lab_policy(crate::cli::DEFAULT_POLICY).unwrap();
        assert!(p.contains("interfaces: {internal: in0, external: out0}"));
        assert!(p.contains("flowLog: flows.jsonl"));
        portcullis_rules::load_str("lab.yaml", &p, &portcullis_rules::MemLoader::default()).unwrap();
        assert!(super::lab_policy("policy: {}").is_err());
    }
}
