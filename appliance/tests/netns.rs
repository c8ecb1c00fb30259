//! End to end: the real `portcullis run` binary in the appliance namespace of a lab (tests/src, crate
//! portcullis-e2e), between a spoke client, an on-premises server and the Internet, with real peers (nginx,
//! curl, ping, socat, iperf3).
//!
//! Tests named `privileged_*` need root and BPF: without them they print `skip: …` and pass, except with
//! CI=true, where they fail. The others check `run`'s start-up errors and need nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_e2e::cmd::{self, eventually};
use portcullis_e2e::lab::{self, Arms, Daemon, Lab, sa};
use portcullis_e2e::peers::{self, TcpFlow};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// Bound for start-up (loading and verifying the eBPF object included).
const READY: Duration = Duration::from_secs(120);
const STOP: Duration = Duration::from_secs(20);
/// curl's bound when the answer must come.
const ANSWER: Duration = Duration::from_secs(5);
/// curl's bound when no answer must come.
const SILENCE: Duration = Duration::from_secs(2);

/// Returns from the test (skip) or fails it (CI=true) unless the lab and the data plane can run here.
macro_rules! require_privileged {
    () => {
        if portcullis_e2e::skip(portcullis_e2e::lab_available().and_then(|()| portcullis::bpf::privileged_env())) {
            return;
        }
    };
}

/// What the test policy allows; a reload writes a changed copy.
#[derive(Clone, Copy)]
struct Knobs {
    /// Allow TCP to the echo server (203.0.113.11:7).
    allow_tcp_echo: bool,
    /// Break the file (an invalid priority) to test a rejected reload.
    invalid: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            allow_tcp_echo: true,
            invalid: false,
        }
    }
}

/// The test policy: DNAT 192.0.2.1:8443 → spoke 198.18.1.10:8080; a deny collection (priority 100) before an
/// allow collection (priority 200); threat intel in Deny mode with 203.0.113.66 on the feed.
fn policy(lab: &Lab, k: Knobs) -> String {
    let (internal, external) = lab.fw_interfaces();
    let interfaces = match external {
        Some(e) => format!("{{internal: {internal}, external: {e}}}"),
        None => format!("{{internal: {internal}}}"),
    };
    let echo_rule = r#"
            - ruleType: NetworkRule
              name: tcp-echo
              ipProtocols: [TCP]
              sourceAddresses: [198.18.1.0/24]
              destinationAddresses: [203.0.113.11]
              destinationPorts: ["7"]"#;
    let (deny_extra, allow_extra) = if k.allow_tcp_echo {
        ("", echo_rule)
    } else {
        (echo_rule, "")
    };
    let priority = if k.invalid { 50 } else { 200 };
    format!(
        r#"appliance:
  interfaces: {interfaces}
  snatAddresses: [{ext}]
  flowLog: flows.jsonl
  threatIntelFeed: ti.txt
policy:
  threatIntelMode: Deny
  snat:
    privateRanges: [IANAPrivateRanges]
  ruleCollectionGroups:
    - name: rcg-dnat
      priority: 100
      ruleCollections:
        - ruleCollectionType: FirewallPolicyNatRuleCollection
          name: inbound
          priority: 100
          action: {{type: DNAT}}
          rules:
            - ruleType: NatRule
              name: web-in
              ipProtocols: [TCP]
              sourceAddresses: [203.0.113.0/24]
              destinationAddresses: [{ext}]
              destinationPorts: ["8443"]
              translatedAddress: {client}
              translatedPort: "8080"
    - name: rcg-net
      priority: {priority}
      ruleCollections:
        - ruleCollectionType: FirewallPolicyFilterRuleCollection
          name: deny-first
          priority: 100
          action: {{type: Deny}}
          rules:
            - ruleType: NetworkRule
              name: no-9001
              ipProtocols: [TCP]
              sourceAddresses: ["*"]
              destinationAddresses: [203.0.113.10]
              destinationPorts: ["9001"]
            - ruleType: NetworkRule
              name: onprem-may-not-call-the-spoke
              ipProtocols: [Any]
              sourceAddresses: [10.20.0.0/24]
              destinationAddresses: [198.18.1.0/24]
              destinationPorts: ["*"]{deny_extra}
        - ruleCollectionType: FirewallPolicyFilterRuleCollection
          name: allow-out
          priority: 200
          action: {{type: Allow}}
          rules:
            - ruleType: NetworkRule
              name: web
              ipProtocols: [TCP]
              sourceAddresses: [198.18.1.0/24]
              destinationAddresses: [203.0.113.10, 203.0.113.66]
              destinationPorts: ["80", "9001"]
            - ruleType: NetworkRule
              name: bulk
              ipProtocols: [TCP]
              sourceAddresses: [198.18.1.0/24]
              destinationAddresses: [203.0.113.11]
              destinationPorts: ["5201"]
            - ruleType: NetworkRule
              name: udp-echo
              ipProtocols: [UDP]
              sourceAddresses: [198.18.1.0/24]
              destinationAddresses: [203.0.113.10]
              destinationPorts: ["7"]
            - ruleType: NetworkRule
              name: onprem-web
              ipProtocols: [TCP]
              sourceAddresses: [198.18.1.0/24]
              destinationAddresses: [10.20.0.0/24]
              destinationPorts: ["80"]
            - ruleType: NetworkRule
              name: onprem-ping
              ipProtocols: [ICMP]
              sourceAddresses: [198.18.1.0/24]
              destinationAddresses: [10.20.0.0/24]
              destinationPorts: ["*"]{allow_extra}
"#,
        ext = lab::FW_EXTERNAL,
        client = lab::CLIENT,
    )
}

/// A lab with the test policy written and the daemon started.
struct Running {
    daemon: Daemon,
    config: PathBuf,
    // Declared last: dropped after the daemon.
    lab: Lab,
}

fn start(arms: Arms, extra: &[&str]) -> Running {
    let lab = Lab::new(arms).expect("lab");
    lab.write("ti.txt", "# test feed\n203.0.113.66\n").unwrap();
    let config = lab.write("policy.yaml", &policy(&lab, Knobs::default())).unwrap();
    let mut daemon = lab
        .portcullis(Path::new(BIN), &config, extra)
        .expect("spawn portcullis");
    daemon.wait_ready(READY).expect("portcullis ready");
    Running { daemon, config, lab }
}

impl Running {
    fn flows(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.lab.dir.join("flows.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for a flow-log record with these fields.
    fn wait_flow(&self, fields: &[(&str, serde_json::Value)]) -> serde_json::Value {
        eventually(Duration::from_secs(5), || {
            self.flows()
                .into_iter()
                .find(|r| fields.iter().all(|(k, v)| &r[*k] == v))
        })
        .unwrap_or_else(|| panic!("no flow record with {fields:?}; have {:#?}", self.flows()))
    }

    fn restart(&mut self, extra: &[&str]) {
        assert!(
            self.daemon.stop(STOP).expect("stop"),
            "clean exit:\n{}",
            lab::tail(&self.daemon.stderr())
        );
        self.start_again(extra);
    }

    /// Starts a new daemon (the previous one has exited).
    fn start_again(&mut self, extra: &[&str]) {
        self.daemon = self
            .lab
            .portcullis(Path::new(BIN), &self.config, extra)
            .expect("spawn portcullis");
        self.daemon.wait_ready(READY).expect("portcullis ready again");
    }

    fn rewrite(&self, k: Knobs) {
        std::fs::write(&self.config, policy(&self.lab, k)).unwrap();
    }
}

fn curl_ok(ns: &portcullis_e2e::netns::Netns, to: std::net::SocketAddrV4) -> String {
    let c = peers::curl(ns, to, None, ANSWER).unwrap();
    assert!(c.ok(), "curl {to}: {c:?}");
    c.body.trim().to_owned()
}

fn curl_blocked(ns: &portcullis_e2e::netns::Netns, to: std::net::SocketAddrV4) {
    let c = peers::curl(ns, to, None, SILENCE).unwrap();
    assert!(!c.ok(), "curl {to} must not get through: {c:?}");
}

#[test]
fn privileged_two_arm_rules_priorities_threat_intel_and_flow_log() {
    require_privileged!();
    let r = start(Arms::Two, &[]);
    let lab = &r.lab;
    let log = r.daemon.stderr();
    assert!(
        log.contains("xdp attached to in0 (internal) in driver (native) mode"),
        "{log}"
    );
    assert!(log.contains("xdp attached to out0 (external)"), "{log}");
    let _web = lab
        .nginx(
            &lab.inet,
            &[
                sa(lab::SERVER, 80),
                sa(lab::SERVER, 81),
                sa(lab::SERVER, 9001),
                sa(lab::BAD_SERVER, 80),
            ],
        )
        .unwrap();
    let _udp = lab.udp_echo(&lab.inet, sa(lab::SERVER, 7)).unwrap();
    let _onprem = lab.nginx(&lab.onprem, &[sa(lab::ONPREM, 80)]).unwrap();

    // Allowed by rule `web`.
    curl_ok(&lab.spoke, sa(lab::SERVER, 80));
    // Port 81: no rule → default deny.
    curl_blocked(&lab.spoke, sa(lab::SERVER, 81));
    // 9001 is in the allow collection (priority 200) but denied by the deny collection (priority 100) first.
    curl_blocked(&lab.spoke, sa(lab::SERVER, 9001));
    // 203.0.113.66 is allowed by `web` but on the threat-intel feed (mode Deny), which comes first.
    curl_blocked(&lab.spoke, sa(lab::BAD_SERVER, 80));
    // UDP by rule `udp-echo`.
    let echo = peers::udp_exchange(&lab.spoke, sa(lab::SERVER, 7), b"portcullis", ANSWER).unwrap();
    assert_eq!(echo.as_deref(), Some(&b"portcullis"[..]));
    // ICMP east-west by `onprem-ping`; no ICMP rule toward the Internet.
    assert!(peers::ping(&lab.spoke, lab::ONPREM, 2).unwrap(), "ping onprem");
    assert!(
        !peers::ping(&lab.spoke, lab::SERVER, 2).unwrap(),
        "ping to the Internet must be denied"
    );

    use serde_json::json;
    let allow = r.wait_flow(&[
        ("Rule", json!("web")),
        ("Action", json!("Allow")),
        ("DestinationPort", json!(80)),
    ]);
    assert_eq!(allow["Category"], "AZFWNetworkRule");
    assert_eq!(allow["RuleCollection"], "allow-out");
    assert_eq!(allow["RuleCollectionGroup"], "rcg-net");
    assert_eq!(allow["SourceIp"], lab::CLIENT.to_string());
    assert_eq!(allow["Snat"], true);
    r.wait_flow(&[("Rule", json!("no-9001")), ("Action", json!("Deny"))]);
    r.wait_flow(&[
        ("DestinationPort", json!(81)),
        ("Action", json!("Deny")),
        ("ActionReason", json!("Default Action")),
    ]);
    r.wait_flow(&[
        ("Category", json!("AZFWThreatIntel")),
        ("DestinationIp", json!("203.0.113.66")),
    ]);
    r.wait_flow(&[("Rule", json!("udp-echo")), ("Protocol", json!("UDP"))]);
}

#[test]
fn privileged_two_arm_snat_to_the_internet_not_to_private_ranges() {
    require_privileged!();
    let r = start(Arms::Two, &[]);
    let lab = &r.lab;
    let _web = lab.nginx(&lab.inet, &[sa(lab::SERVER, 80)]).unwrap();
    let _onprem = lab.nginx(&lab.onprem, &[sa(lab::ONPREM, 80)]).unwrap();
    // The Internet server sees the appliance's SNAT address (and could not answer the spoke otherwise: it has
    // no route to 198.18.0.0/15).
    assert_eq!(curl_ok(&lab.spoke, sa(lab::SERVER, 80)), lab::FW_EXTERNAL.to_string());
    // 10.20.0.0/24 is in snat.privateRanges (IANAPrivateRanges): the server sees the client itself.
    assert_eq!(curl_ok(&lab.spoke, sa(lab::ONPREM, 80)), lab::CLIENT.to_string());
}

#[test]
fn privileged_two_arm_stateful_replies_only() {
    require_privileged!();
    let r = start(Arms::Two, &[]);
    let lab = &r.lab;
    let _onprem = lab.nginx(&lab.onprem, &[sa(lab::ONPREM, 80)]).unwrap();
    let _spoke = lab.nginx(&lab.spoke, &[sa(lab::CLIENT, 8080)]).unwrap();
    // Replies from onprem to the client pass although `onprem-may-not-call-the-spoke` denies that direction…
    curl_ok(&lab.spoke, sa(lab::ONPREM, 80));
    // …but onprem cannot open a connection to the client.
    curl_blocked(&lab.onprem, sa(lab::CLIENT, 8080));
    // Nor can the Internet, even with a route to the spoke through the appliance: only DNAT opens inbound.
    lab.inet
        .ip(&["route", "add", lab::SPOKE_NET, "via", &lab::FW_EXTERNAL.to_string()])
        .unwrap();
    let c = peers::curl(&lab.inet, sa(lab::CLIENT, 8080), Some(lab::OUTSIDE_CLIENT), SILENCE).unwrap();
    assert!(!c.ok(), "{c:?}");
}

fn dnat(arms: Arms) {
    let r = start(arms, &[]);
    let lab = &r.lab;
    let _spoke = lab.nginx(&lab.spoke, &[sa(lab::CLIENT, 8080)]).unwrap();
    let c = peers::curl(&lab.inet, sa(lab::FW_EXTERNAL, 8443), Some(lab::OUTSIDE_CLIENT), ANSWER).unwrap();
    assert!(c.ok(), "{c:?}\n{}", lab::tail(&r.daemon.stderr()));
    // Azure rewrites the source of DNATed flows to the firewall's own (internal) address.
    assert_eq!(c.body.trim(), lab::FW_INTERNAL.to_string());
    // Only from the sources of the rule: 192.0.2.254 is not in 203.0.113.0/24.
    let c = peers::curl(&lab.inet, sa(lab::FW_EXTERNAL, 8443), Some(lab::INET_ROUTER), SILENCE).unwrap();
    assert!(!c.ok(), "{c:?}");
    use serde_json::json;
    let rec = r.wait_flow(&[("Rule", json!("web-in")), ("Action", json!("DNAT"))]);
    assert_eq!(rec["Category"], "AZFWNatRule");
    assert_eq!(rec["TranslatedIp"], lab::CLIENT.to_string());
    assert_eq!(rec["TranslatedPort"], 8080);
}

#[test]
fn privileged_two_arm_dnat_rewrites_source_to_internal_address() {
    require_privileged!();
    dnat(Arms::Two);
}

#[test]
fn privileged_one_arm_snat_dnat_and_deny() {
    require_privileged!();
    let r = start(Arms::One, &[]);
    let lab = &r.lab;
    let log = r.daemon.stderr();
    assert!(
        log.contains("xdp attached to arm0 (internal+external (one-arm))"),
        "{log}"
    );
    assert!(log.contains(&format!("internal address {}", lab::FW_INTERNAL)), "{log}");
    let _web = lab
        .nginx(&lab.inet, &[sa(lab::SERVER, 80), sa(lab::SERVER, 9001)])
        .unwrap();
    let _onprem = lab.nginx(&lab.onprem, &[sa(lab::ONPREM, 80)]).unwrap();
    assert_eq!(curl_ok(&lab.spoke, sa(lab::SERVER, 80)), lab::FW_EXTERNAL.to_string());
    assert_eq!(curl_ok(&lab.spoke, sa(lab::ONPREM, 80)), lab::CLIENT.to_string());
    curl_blocked(&lab.spoke, sa(lab::SERVER, 9001));
    drop(r);
    dnat(Arms::One);
}

#[test]
fn privileged_restart_during_iperf3_keeps_the_transfer() {
    require_privileged!();
    let mut r = start(Arms::Two, &[]);
    let _server = r.lab.iperf3_server(&r.lab.inet, sa(lab::SERVER2, 5201)).unwrap();
    let client = r.lab.iperf3_client(&r.lab.spoke, sa(lab::SERVER2, 5201), 10).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let stopped = Instant::now();
    r.restart(&[]);
    eprintln!("daemon restarted in {:?}", stopped.elapsed());
    let log = r.daemon.stderr();
    assert!(!log.contains("error"), "{log}");
    let result = client.finish().unwrap();
    assert!(
        result.success,
        "iperf3 failed across the restart: {:?}\n{}",
        result.error, result.json
    );
    assert!(result.bytes_received > 0);
    assert!(result.intervals.len() >= 9, "{:?}", result.intervals);
}

#[test]
fn privileged_sighup_allow_to_deny_cuts_an_established_flow() {
    require_privileged!();
    let mut r = start(Arms::Two, &[]);
    let _echo = r.lab.tcp_echo(&r.lab.inet, sa(lab::SERVER2, 7)).unwrap();
    let mut flow = TcpFlow::connect(&r.lab.spoke, sa(lab::SERVER2, 7), ANSWER).unwrap();
    assert!(flow.echo(ANSWER), "established flow works before the reload");
    r.rewrite(Knobs {
        allow_tcp_echo: false,
        ..Knobs::default()
    });
    r.daemon.reload().unwrap();
    r.daemon.wait_log("reloaded (generation", ANSWER).unwrap();
    // The next packet of the flow is re-classified under the new policy and dropped.
    let cut = eventually(Duration::from_secs(5), || {
        (!flow.echo(Duration::from_millis(500))).then_some(())
    });
    assert!(
        cut.is_some(),
        "the established flow still works after the reload to deny"
    );
    assert!(
        TcpFlow::connect(&r.lab.spoke, sa(lab::SERVER2, 7), SILENCE).is_err(),
        "new flows are denied"
    );
    use serde_json::json;
    r.wait_flow(&[
        ("Rule", json!("tcp-echo")),
        ("Action", json!("Deny")),
        ("Reclassified", json!(true)),
    ]);
    // Back to allow: new flows pass again.
    r.rewrite(Knobs::default());
    r.daemon.reload().unwrap();
    eventually(ANSWER, || {
        (r.daemon.count_log("reloaded (generation") == 2).then_some(())
    })
    .expect("second reload");
    let mut again = TcpFlow::connect(&r.lab.spoke, sa(lab::SERVER2, 7), ANSWER).unwrap();
    assert!(again.echo(ANSWER));
    r.restart(&["--flush"]);
}

#[test]
fn privileged_invalid_reload_keeps_the_running_policy() {
    require_privileged!();
    let mut r = start(Arms::Two, &[]);
    let _echo = r.lab.tcp_echo(&r.lab.inet, sa(lab::SERVER2, 7)).unwrap();
    let _web = r.lab.nginx(&r.lab.inet, &[sa(lab::SERVER, 80)]).unwrap();
    let mut flow = TcpFlow::connect(&r.lab.spoke, sa(lab::SERVER2, 7), ANSWER).unwrap();
    assert!(flow.echo(ANSWER));
    r.rewrite(Knobs {
        allow_tcp_echo: false,
        invalid: true,
    });
    r.daemon.reload().unwrap();
    r.daemon.wait_log("reload rejected", ANSWER).unwrap();
    let log = r.daemon.stderr();
    let config = r.config.display().to_string();
    let diag = log
        .lines()
        .find(|l| l.starts_with(&format!("{config}:")))
        .unwrap_or_else(|| panic!("no FILE:LINE:COL diagnostic in\n{log}"));
    let mut parts = diag[config.len() + 1..].splitn(3, ':');
    assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{diag}");
    assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{diag}");
    // The old policy (echo allowed) is still in force, for the established flow and new ones.
    assert!(flow.echo(ANSWER), "established flow survives an invalid reload");
    let mut new = TcpFlow::connect(&r.lab.spoke, sa(lab::SERVER2, 7), ANSWER).unwrap();
    assert!(new.echo(ANSWER));
    curl_ok(&r.lab.spoke, sa(lab::SERVER, 80));
}

fn port_range(lab: &Lab) -> Vec<u16> {
    lab.fw
        .read_sysctl("net.ipv4.ip_local_port_range")
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[test]
fn privileged_stop_keeps_state_and_flush_removes_it() {
    require_privileged!();
    let mut r = start(Arms::Two, &[]);
    let forward = "net.ipv4.ip_forward";
    assert_eq!(r.lab.fw.read_sysctl(forward).unwrap(), "1");
    let ports = port_range(&r.lab);
    assert!(ports[1] < 40_000, "host ephemeral ports {ports:?} below the SNAT range");
    assert_eq!(r.lab.fw.read_sysctl("net.ipv4.conf.in0.rp_filter").unwrap(), "0");
    let _echo = r.lab.tcp_echo(&r.lab.inet, sa(lab::SERVER2, 7)).unwrap();
    let mut flow = TcpFlow::connect(&r.lab.spoke, sa(lab::SERVER2, 7), ANSWER).unwrap();
    assert!(flow.echo(ANSWER));
    // A plain stop keeps the data plane: pins stay, established flows keep flowing without a daemon.
    assert!(r.daemon.stop(STOP).unwrap(), "{}", lab::tail(&r.daemon.stderr()));
    assert!(r.lab.pin_dir.join("ct_v1").exists(), "conntrack pin kept");
    assert_eq!(
        r.lab.fw.read_sysctl(forward).unwrap(),
        "1",
        "host settings kept with the data plane"
    );
    assert!(flow.echo(ANSWER), "established flow works while no daemon runs");
    // A new start takes over; a stop with --flush removes everything and restores what the first start found.
    r.start_again(&["--flush"]);
    assert!(
        r.daemon.stderr().contains("took over the pinned conntrack/NAT state"),
        "{}",
        r.daemon.stderr()
    );
    assert!(flow.echo(ANSWER), "established flow works after the takeover");
    assert!(r.daemon.stop(STOP).unwrap(), "{}", lab::tail(&r.daemon.stderr()));
    assert!(!r.lab.pin_dir.join("ct_v1").exists(), "conntrack pin removed");
    assert_eq!(r.lab.fw.read_sysctl(forward).unwrap(), "0", "ip_forward restored");
    assert_eq!(port_range(&r.lab), [32768, 60999], "port range restored");
    assert!(!flow.echo(SILENCE), "nothing forwards after --flush");
}

#[test]
fn privileged_new_flows_pass_while_the_daemon_is_stopped() {
    require_privileged!();
    let mut r = start(Arms::Two, &[]);
    let _web = r.lab.nginx(&r.lab.inet, &[sa(lab::SERVER, 80)]).unwrap();
    let _onprem = r.lab.nginx(&r.lab.onprem, &[sa(lab::ONPREM, 80)]).unwrap();
    curl_ok(&r.lab.spoke, sa(lab::SERVER, 80));
    assert!(r.daemon.stop(STOP).unwrap(), "{}", lab::tail(&r.daemon.stderr()));
    // The kernel program classifies new flows on its own: a restart window is not an outage.
    assert_eq!(curl_ok(&r.lab.spoke, sa(lab::SERVER, 80)), lab::FW_EXTERNAL.to_string());
    assert_eq!(curl_ok(&r.lab.spoke, sa(lab::ONPREM, 80)), lab::CLIENT.to_string());
    curl_blocked(&r.lab.spoke, sa(lab::SERVER, 81));
    r.start_again(&["--flush"]);
    assert!(r.daemon.stop(STOP).unwrap(), "{}", lab::tail(&r.daemon.stderr()));
}

#[test]
fn privileged_interface_without_ipv4_is_refused() {
    if portcullis_e2e::skip(portcullis_e2e::lab_available()) {
        return;
    }
    let lab = Lab::new(Arms::Two).expect("lab");
    lab.fw
        .ip(&["link", "add", "bare0", "type", "veth", "peer", "name", "bare1"])
        .unwrap();
    let text = policy(&lab, Knobs::default()).replace("external: out0", "external: bare0");
    lab.write("ti.txt", "203.0.113.66\n").unwrap();
    let config = lab.write("policy.yaml", &text).unwrap();
    let cfg = config.to_string_lossy().into_owned();
    let out = lab
        .fw
        .run(BIN, &["run", "--config", &cfg], Duration::from_secs(30))
        .unwrap();
    assert!(!out.success());
    assert!(
        out.stderr
            .contains("appliance.interfaces.external: interface `bare0` has no IPv4 address"),
        "{}",
        out.stderr
    );
}

// Start-up errors, without privileges.

fn run_binary(args: &[&str], as_nobody: bool) -> cmd::Output {
    let mut c = if as_nobody && nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    c.args(args);
    cmd::run(&mut c, Duration::from_secs(30)).expect("run portcullis")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-run-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const MINIMAL: &str = "policy:\n  ruleCollectionGroups: []\n";

#[test]
fn run_without_appliance_section_fails_clearly() {
    let dir = scratch("no-appliance");
    let config = dir.join("policy.yaml");
    std::fs::write(&config, MINIMAL).unwrap();
    let out = run_binary(&["run", "--config", &config.to_string_lossy()], false);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("has no `appliance` section"), "{}", out.stderr);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_with_unknown_interface_fails_clearly() {
    let dir = scratch("unknown-if");
    let config = dir.join("policy.yaml");
    std::fs::write(
        &config,
        format!("appliance:\n  interfaces: {{internal: pc-nonexistent0}}\n{MINIMAL}"),
    )
    .unwrap();
    let out = run_binary(&["run", "--config", &config.to_string_lossy()], false);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .contains("appliance.interfaces.internal: no network interface named `pc-nonexistent0`"),
        "{}",
        out.stderr
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_reports_threat_feed_errors_with_file_and_line() {
    let dir = scratch("feed");
    let config = dir.join("policy.yaml");
    std::fs::write(
        &config,
        format!("appliance:\n  interfaces: {{internal: lo}}\n  threatIntelFeed: ti.txt\n{MINIMAL}"),
    )
    .unwrap();
    std::fs::write(dir.join("ti.txt"), "203.0.113.66\n\n203.0.113.300\n").unwrap();
    let out = run_binary(&["run", "--config", &config.to_string_lossy()], false);
    assert_eq!(out.status.code(), Some(1));
    let feed = dir.join("ti.txt");
    assert!(
        out.stderr.contains(&format!("{}:3: ", feed.display())),
        "{}",
        out.stderr
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_reports_policy_errors_with_line_and_column() {
    let dir = scratch("invalid");
    let config = dir.join("policy.yaml");
    std::fs::write(
        &config,
        "appliance:\n  interfaces: {internal: lo}\npolicy:\n  ruleCollectionGroups:\n    - name: g\n      priority: 5\n",
    )
    .unwrap();
    let out = run_binary(&["run", "--config", &config.to_string_lossy()], false);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains(&format!("{}:6:", config.display())),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("not started"), "{}", out.stderr);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_dry_run_prints_the_plan_and_changes_nothing() {
    let dir = scratch("dry-run");
    let config = dir.join("policy.yaml");
    std::fs::write(
        &config,
        format!("appliance:\n  interfaces: {{internal: lo}}\n  flowLog: flows.jsonl\n{MINIMAL}"),
    )
    .unwrap();
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let out = run_binary(&["run", "--config", &config.to_string_lossy(), "--dry-run"], true);
    assert!(out.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("interfaces: internal lo (one-arm)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("internal address: 127.0.0.1"), "{}", out.stdout);
    assert!(
        out.stdout.contains("snat: 127.0.0.1 ports 40000-65535"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("flow log: {}", dir.join("flows.jsonl").display())),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("host setting"), "{}", out.stdout);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        forward
    );
    assert!(!dir.join("flows.jsonl").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_as_non_root_fails_clearly() {
    let dir = scratch("nonroot");
    let config = dir.join("policy.yaml");
    std::fs::write(
        &config,
        format!("appliance:\n  interfaces: {{internal: lo}}\n{MINIMAL}"),
    )
    .unwrap();
    // nobody must be able to read it.
    let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    let _ = std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let out = run_binary(&["run", "--config", &config.to_string_lossy()], true);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot run the data plane: not root"),
        "{}",
        out.stderr
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn privileged_next_hops_without_a_neighbour_entry_are_resolved_not_handed_to_the_kernel() {
    require_privileged!();
    let mut r = start(Arms::Two, &[]);
    let lab = &r.lab;
    // An on-premises server the appliance has never talked to, and the Internet router forgotten: the
    // first packet toward each finds no neighbour entry. The data plane drops it and has the kernel
    // resolve the next hop; the client's retransmission then goes through (translated or not).
    lab.onprem.ip(&["addr", "add", "10.20.0.20/24", "dev", "eth0"]).unwrap();
    let fresh = std::net::Ipv4Addr::new(10, 20, 0, 20);
    let _onprem = lab.nginx(&lab.onprem, &[sa(fresh, 80)]).unwrap();
    let _web = lab.nginx(&lab.inet, &[sa(lab::SERVER, 80)]).unwrap();
    lab.fw
        .ip(&["neigh", "del", &lab::INET_ROUTER.to_string(), "dev", "out0"])
        .unwrap();
    assert_eq!(curl_ok(&lab.spoke, sa(fresh, 80)), lab::CLIENT.to_string());
    assert_eq!(curl_ok(&lab.spoke, sa(lab::SERVER, 80)), lab::FW_EXTERNAL.to_string());
    assert!(r.daemon.stop(STOP).unwrap());
    let log = r.daemon.stderr();
    let no_neigh: u64 = log
        .split("\"fib_no_neigh\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fib_no_neigh counter in {log}"));
    assert!(no_neigh >= 1, "{log}");
}

#[test]
fn privileged_icmp_errors_about_snated_flows_reach_the_client() {
    require_privileged!();
    let r = start(Arms::Two, &[]);
    // UDP to the server's port 7 is allowed (rule `udp-echo`) and SNATed, but nothing listens there now:
    // the server answers ICMP port unreachable to the appliance's SNAT address. Related to the flow and
    // translated back, it reaches the client, whose connected socket reports "connection refused"
    // (without relating it would only time out).
    let got = r
        .lab
        .spoke
        .enter(|| -> std::io::Result<std::io::ErrorKind> {
            let s = std::net::UdpSocket::bind((lab::CLIENT, 0))?;
            s.connect(sa(lab::SERVER, 7))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut buf = [0u8; 64];
            for _ in 0..3 {
                s.send(b"anyone there?")?;
                match s.recv(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return Ok(e.kind());
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => return Ok(e.kind()),
                    Ok(_) => return Ok(std::io::ErrorKind::Other),
                }
            }
            Ok(std::io::ErrorKind::TimedOut)
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        std::io::ErrorKind::ConnectionRefused,
        "{}",
        lab::tail(&r.daemon.stderr())
    );
}

/// README's first command: `portcullis lab` runs the embedded policy end to end (explanations, the XDP smoke
/// test, then `portcullis run` in namespaces with real servers and clients, every outcome checked).
#[test]
fn privileged_lab_enforces_the_embedded_policy_end_to_end() {
    if portcullis_e2e::skip(
        portcullis_e2e::peers::proxy_fixtures_available().and_then(|()| portcullis::bpf::privileged_env()),
    ) {
        return;
    }
    let out = cmd::run(Command::new(BIN).arg("lab"), Duration::from_secs(240)).expect("portcullis lab");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(out.success(), "{text}");
    assert!(!text.contains("[FAIL]"), "{text}");
    assert!(!text.contains("skipped"), "nothing may be skipped here: {text}");
    for needle in [
        "== enforcement: `portcullis run`",
        "[ ok ] HTTPS mcr.microsoft.com: allowed by the FQDN tag AzureKubernetesService",
        "[ ok ] HTTP example.com: status 470",
        "[ ok ] Internet to 192.0.2.1:443: DNAT to the ingress",
        "\"Category\":\"AZFWApplicationRule\"",
        "application proxy: {",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}
