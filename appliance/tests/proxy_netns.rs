//! End to end, the application proxy: the real `portcullis run` in the appliance namespace, real nginx
//! (HTTPS vhosts from a lab CA, an HTTP vhost echoing Host / client / X-Forwarded-For) and dnsmasq (the
//! appliance's `dnsSettings.servers`) on the lab's Internet, real curl / openssl clients in the spoke.
//!
//! Tests named `privileged_*` need root and BPF: without them they print `skip: …` and pass, except with
//! CI=true, where they fail.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portcullis_e2e::cmd::eventually;
use portcullis_e2e::lab::{self, Arms, Daemon, Lab, sa};
use portcullis_e2e::netns::Netns;
use portcullis_e2e::peers::{self, Curl, Vhosts};
use portcullis_e2e::tls::LabCa;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const READY: Duration = Duration::from_secs(120);
const STOP: Duration = Duration::from_secs(20);
const ANSWER: Duration = Duration::from_secs(8);

/// The real server of every lab name, and the resolver the appliance is told to use.
const WEB: Ipv4Addr = lab::SERVER;
const RESOLVER: Ipv4Addr = lab::SERVER2;
/// An address the client may aim at with an allowed SNI: nothing listens there on 443.
const ELSEWHERE: Ipv4Addr = lab::BAD_SERVER;
const NAMES: &[&str] = &[
    "a.lab.test",
    "b.lab.test",
    "big.lab.test",
    "denied.lab.test",
    "*.wild.lab.test",
];

macro_rules! require_privileged {
    () => {
        if portcullis_e2e::skip(peers::proxy_fixtures_available().and_then(|()| portcullis::bpf::privileged_env())) {
            return;
        }
    };
}

/// The test policy. Application rules: explicit deny of b.lab.test (collection priority 100) before the
/// allows (200): a.lab.test on Http:80, Https:443 and Https:8443, `*.wild.lab.test` on Https:443,
/// `*lab.test` never. Network rule: TCP 443 to SERVER2 allowed (it must win over the application deny).
fn policy(lab: &Lab, allow_a: bool) -> String {
    let a_name = if allow_a { "a.lab.test" } else { "not-a.lab.test" };
    let (internal, external) = lab.fw_interfaces();
    let interfaces = match external {
        Some(e) => format!("{{internal: {internal}, external: {e}}}"),
        None => format!("{{internal: {internal}}}"),
    };
    format!(
        r#"appliance:
  interfaces: {interfaces}
  snatAddresses: [{ext}]
  flowLog: flows.jsonl
policy:
  dnsSettings:
    servers: [{RESOLVER}]
  ruleCollectionGroups:
    - name: rcg-net
      priority: 100
      ruleCollections:
        - ruleCollectionType: FirewallPolicyFilterRuleCollection
          name: net-allow
          priority: 100
          action: {{type: Allow}}
          rules:
            - ruleType: NetworkRule
              name: tls-to-server2
              ipProtocols: [TCP]
              sourceAddresses: [{spoke}]
              destinationAddresses: [{server2}]
              destinationPorts: ["443"]
    - name: rcg-app
      priority: 200
      ruleCollections:
        - ruleCollectionType: FirewallPolicyFilterRuleCollection
          name: app-deny
          priority: 100
          action: {{type: Deny}}
          rules:
            - ruleType: ApplicationRule
              name: no-b
              sourceAddresses: ["*"]
              protocols: [{{protocolType: Http, port: 80}}, {{protocolType: Https, port: 443}}]
              targetFqdns: [b.lab.test]
        - ruleCollectionType: FirewallPolicyFilterRuleCollection
          name: app-allow
          priority: 200
          action: {{type: Allow}}
          rules:
            - ruleType: ApplicationRule
              name: a
              sourceAddresses: [{spoke}]
              protocols: [{{protocolType: Http, port: 80}}, {{protocolType: Https, port: 443}}, {{protocolType: Https, port: 8443}}, {{protocolType: Http, port: 8081}}]
              targetFqdns: [{a_name}, gone.lab.test, big.lab.test]
            - ruleType: ApplicationRule
              name: wild
              sourceAddresses: [{spoke}]
              protocols: [{{protocolType: Https, port: 443}}]
              targetFqdns: ["*.wild.lab.test"]
"#,
        ext = lab::FW_EXTERNAL,
        spoke = lab::SPOKE_NET,
        server2 = lab::SERVER2,
    )
}

struct Running {
    daemon: Daemon,
    config: PathBuf,
    ca: LabCa,
    vhosts: Vhosts,
    _dns: portcullis_e2e::cmd::Proc,
    lab: Lab,
}

fn start(arms: Arms, extra: &[&str]) -> Running {
    let lab = Lab::new(arms).expect("lab");
    let ca = lab.ca().expect("lab CA");
    let records: Vec<(&str, Ipv4Addr)> = NAMES.iter().map(|n| (*n, WEB)).collect();
    let dns = lab.dnsmasq(&lab.inet, sa(RESOLVER, 53), &records).expect("dnsmasq");
    let vhosts = lab
        .nginx_vhosts(
            &lab.inet,
            &ca,
            &[sa(WEB, 443), sa(WEB, 8443), sa(lab::SERVER2, 443)],
            NAMES,
            &[sa(WEB, 80)],
            16,
        )
        .expect("nginx vhosts");
    let config = lab.write("policy.yaml", &policy(&lab, true)).unwrap();
    let mut daemon = lab
        .portcullis(Path::new(BIN), &config, extra)
        .expect("spawn portcullis");
    daemon.wait_ready(READY).expect("portcullis ready");
    Running {
        daemon,
        config,
        ca,
        vhosts,
        _dns: dns,
        lab,
    }
}

impl Running {
    fn flows(&self) -> Vec<Value> {
        std::fs::read_to_string(self.lab.dir.join("flows.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn wait_flow(&self, fields: &[(&str, Value)]) -> Value {
        eventually(Duration::from_secs(5), || {
            self.flows()
                .into_iter()
                .find(|r| fields.iter().all(|(k, v)| &r[*k] == v))
        })
        .unwrap_or_else(|| panic!("no flow record with {fields:?}; have {:#?}", self.flows()))
    }

    /// HTTPS from the spoke to `name:port`, the client resolving it to `ip`.
    fn https(&self, name: &str, port: u16, ip: Ipv4Addr) -> Curl {
        let url = format!("https://{name}:{port}/");
        peers::curl_https(
            &self.lab.spoke,
            &url,
            Some((name, port, ip)),
            Some(self.ca.ca_cert()),
            ANSWER,
        )
        .unwrap()
    }
}

fn field(c: &Curl, key: &str) -> String {
    peers::field(&c.body, key).unwrap_or_else(|| panic!("no {key}= in {c:?}"))
}

#[test]
fn privileged_https_by_sni_dial_by_name_and_denials() {
    require_privileged!();
    let r = start(Arms::Two, &[]);
    let log = r.daemon.stderr();
    assert!(
        log.contains("application proxy: TCP ports 80, 443, 8081, 8443 on in0"),
        "{log}"
    );

    // Allowed by SNI; the server sees the appliance's address (application rules always SNAT).
    let c = r.https("a.lab.test", 443, WEB);
    assert_eq!(c.status, Some(200), "{c:?}");
    assert_eq!(field(&c, "vhost"), "a.lab.test");
    assert_eq!(field(&c, "sni"), "a.lab.test");
    assert_eq!(field(&c, "client"), lab::FW_EXTERNAL.to_string());
    // Wildcard, deeper labels included (§2.4); a non-standard port of the same rule.
    assert_eq!(field(&r.https("x.wild.lab.test", 443, WEB), "vhost"), "*.wild.lab.test");
    // (The lab certificate covers one label only: no verification for the deeper name.)
    let deep = peers::curl_https(
        &r.lab.spoke,
        "https://x.y.wild.lab.test/",
        Some(("x.y.wild.lab.test", 443, WEB)),
        None,
        ANSWER,
    )
    .unwrap();
    assert_eq!(field(&deep, "sni"), "x.y.wild.lab.test", "{deep:?}");
    assert_eq!(field(&r.https("a.lab.test", 8443, WEB), "vhost"), "a.lab.test");

    // Dial by name: the client aims an allowed SNI at an address where nothing listens; the appliance
    // connects where its own resolver says, so the real server answers.
    let spoofed = r.https("a.lab.test", 443, ELSEWHERE);
    assert_eq!(spoofed.status, Some(200), "{spoofed:?}");
    assert_eq!(field(&spoofed, "vhost"), "a.lab.test");
    let rec = r.wait_flow(&[
        ("Fqdn", json!("a.lab.test")),
        ("DestinationIp", json!(ELSEWHERE.to_string())),
    ]);
    assert_eq!(rec["UpstreamIp"], WEB.to_string());
    assert_eq!(rec["Category"], "AZFWApplicationRule");
    assert_eq!(rec["Protocol"], "HTTPS");
    assert_eq!(rec["Rule"], "a");

    // Denied: by the explicit rule, by default (no rule), on 8443 for a name only allowed on 443; all reset
    // after the ClientHello (curl: 35 handshake failure, or 56 receive failure).
    for (name, port) in [("b.lab.test", 443), ("denied.lab.test", 443), ("x.wild.lab.test", 8443)] {
        let c = r.https(name, port, WEB);
        assert!(c.status.is_none(), "{name}:{port} must be denied: {c:?}");
        assert!(matches!(c.exit, Some(35 | 56)), "{name}:{port}: {c:?}");
    }
    let rec = r.wait_flow(&[("Fqdn", json!("b.lab.test")), ("Action", json!("Deny"))]);
    assert_eq!(rec["Rule"], "no-b");
    assert_eq!(rec["RuleCollection"], "app-deny");
    let rec = r.wait_flow(&[("Fqdn", json!("denied.lab.test")), ("Action", json!("Deny"))]);
    assert_eq!(rec["ActionReason"], "No rule matched. Proceeding with default action.");

    // No SNI: denied with Azure's reason.
    let s = peers::openssl_s_client(&r.lab.spoke, sa(WEB, 443), None, ANSWER).unwrap();
    assert!(!s.handshake_ok(), "{s:?}");
    let rec = r.wait_flow(&[
        ("Fqdn", json!("")),
        ("Action", json!("Deny")),
        ("Protocol", json!("HTTPS")),
    ]);
    assert_eq!(rec["ActionReason"], "SNI TLS extension was missing.");

    // A network rule allowing TCP 443 to SERVER2 wins over the application deny of b.lab.test (§1.3):
    // forwarded by the data plane, the server's default vhost answers (the name has no vhost there).
    let c = peers::curl_https(
        &r.lab.spoke,
        "https://b.lab.test/",
        Some(("b.lab.test", 443, lab::SERVER2)),
        None,
        ANSWER,
    )
    .unwrap();
    assert_eq!(c.status, Some(200), "{c:?}");
    assert_eq!(field(&c, "sni"), "b.lab.test");
    r.wait_flow(&[
        ("Rule", json!("tls-to-server2")),
        ("Category", json!("AZFWNetworkRule")),
    ]);

    // A ClientHello larger than one MTU (a 1 KiB ffdhe8192 key share and a long ALPN list), from openssl:
    // reassembled across segments, then relayed untouched (ALPN included).
    let alpn: Vec<String> = std::iter::once("http/1.1".to_owned())
        .chain((0..30).map(|i| format!("{i:02}-{}", "x".repeat(47))))
        .collect();
    let alpn = alpn.join(",");
    let ca = r.ca.ca_cert().to_string_lossy().into_owned();
    let big = peers::openssl_s_client_with(
        &r.lab.spoke,
        sa(WEB, 443),
        Some("a.lab.test"),
        &["-groups", "ffdhe8192:x25519", "-alpn", &alpn, "-CAfile", &ca],
        ANSWER,
    )
    .unwrap();
    assert!(big.handshake_ok(), "{big:?}");
    assert!(big.stdout.contains("ALPN protocol: http/1.1"), "{big:?}");
    // The same captured 2,848-byte ClientHello written in four pieces 300 ms apart: one decision, relayed.
    let hello = include_bytes!("../src/proxy/testdata/openssl_large.bin");
    let answer = send_pieces(&r.lab.spoke, sa(WEB, 443), hello, 4, Duration::from_millis(300));
    assert!(
        matches!(answer.first(), Some(0x16 | 0x15)),
        "a TLS server answered: {answer:?}"
    );
    r.wait_flow(&[("Fqdn", json!("big.lab.test")), ("Action", json!("Allow"))]);

    // QUIC (UDP 443) is not handled by application rules: dropped without a network rule allowing it.
    let _quic = r.lab.udp_echo(&r.lab.inet, sa(WEB, 443)).unwrap();
    let echo = peers::udp_exchange(&r.lab.spoke, sa(WEB, 443), b"quic initial", Duration::from_secs(2)).unwrap();
    assert_eq!(echo, None, "UDP 443 must not pass");

    // Bytes that are neither TLS nor HTTP on an intercepted port: closed.
    let garbage = send_raw(&r.lab.spoke, sa(WEB, 443), b"\x00\x01\x02\x03 not tls\r\n\r\n");
    assert!(garbage.is_empty(), "{garbage:?}");

    // Nothing of this reached the server by the client's chosen address.
    let access = r.vhosts.access_log();
    assert!(access.contains("a.lab.test"), "{access}");
}

#[test]
fn privileged_http_by_host_xff_470_and_keep_alive_checks() {
    require_privileged!();
    let r = start(Arms::One, &[]);
    let lab = &r.lab;
    let c = peers::curl_http(
        &lab.spoke,
        &format!("http://{WEB}/hello"),
        &["Host: a.lab.test"],
        ANSWER,
    )
    .unwrap();
    assert_eq!(c.status, Some(200), "{c:?}");
    assert_eq!(field(&c, "host"), "a.lab.test");
    assert_eq!(field(&c, "xff"), lab::CLIENT.to_string());
    assert_eq!(
        field(&c, "client"),
        lab::FW_EXTERNAL.to_string(),
        "SNAT to the appliance"
    );
    assert_eq!(field(&c, "uri"), "/hello");
    // An existing X-Forwarded-For is appended to.
    let c = peers::curl_http(
        &lab.spoke,
        &format!("http://{WEB}/"),
        &["Host: a.lab.test", "X-Forwarded-For: 192.0.2.77"],
        ANSWER,
    )
    .unwrap();
    assert_eq!(field(&c, "xff"), format!("192.0.2.77, {}", lab::CLIENT));

    // Denied: status 470 with Azure's text; the explicit deny names its collection and rule.
    let c = peers::curl_http(
        &lab.spoke,
        &format!("http://{WEB}/"),
        &["Host: denied.lab.test"],
        ANSWER,
    )
    .unwrap();
    assert_eq!(c.status, Some(470), "{c:?}");
    let prefix = format!("HTTP request from {}:", lab::CLIENT);
    assert!(c.body.starts_with(&prefix), "{c:?}");
    assert!(
        c.body
            .ends_with("to denied.lab.test:80. Action: Deny. Reason: No rule matched. Proceeding with default action."),
        "{c:?}"
    );
    let c = peers::curl_http(&lab.spoke, &format!("http://{WEB}/"), &["Host: b.lab.test"], ANSWER).unwrap();
    assert_eq!(c.status, Some(470), "{c:?}");
    assert!(c.body.contains("Rule Collection: app-deny. Rule: no-b"), "{c:?}");
    let rec = r.wait_flow(&[("Fqdn", json!("b.lab.test")), ("Protocol", json!("HTTP"))]);
    assert_eq!(rec["TargetUrl"], "http://b.lab.test/");
    assert_eq!(rec["Action"], "Deny");

    // Allowed, but the appliance's resolver has no address for it: 502, and the log says why.
    let c = peers::curl_http(&lab.spoke, &format!("http://{WEB}/"), &["Host: gone.lab.test"], ANSWER).unwrap();
    assert_eq!(c.status, Some(502), "{c:?}");
    let rec = r.wait_flow(&[("Fqdn", json!("gone.lab.test"))]);
    assert!(
        rec["Reason"]
            .as_str()
            .unwrap()
            .contains("Upstream: resolving gone.lab.test"),
        "{rec}"
    );

    // A Host port that is not the TCP port: dropped, no page (§3).
    let c = peers::curl_http(
        &lab.spoke,
        &format!("http://{WEB}/"),
        &["Host: a.lab.test:8080"],
        ANSWER,
    )
    .unwrap();
    assert!(c.status.is_none(), "{c:?}");

    // Keep-alive: every request is checked. An allowed request, then one for a denied host on the same
    // connection: the first is answered by the server, the second gets 470 and the connection ends.
    let reply = send_raw(
        &lab.spoke,
        sa(WEB, 80),
        b"GET /one HTTP/1.1\r\nHost: a.lab.test\r\n\r\nGET /two HTTP/1.1\r\nHost: denied.lab.test\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("uri=/one"), "{text}");
    assert!(text.contains("HTTP/1.1 470"), "{text}");
    assert!(
        !text.contains("uri=/two"),
        "the denied request must not reach the server: {text}"
    );
    // Two allowed requests with a body in between (chunked), pipelined on one connection.
    let reply = send_raw(
        &lab.spoke,
        sa(WEB, 80),
        b"POST /p HTTP/1.1\r\nHost: a.lab.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: a.lab.test\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("uri=/after"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text}");

    // WebSocket-style upgrade: after the server's 101 the connection is a tunnel (bytes echoed back by the
    // lab's upgrade server); before it, nothing else is forwarded.
    let script = lab
        .write(
            "upgrade.sh",
            "#!/bin/sh\nwhile IFS= read -r line; do [ -z \"$(printf '%s' \"$line\" | tr -d '\\r')\" ] && break; done\n\
             printf 'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n'\nexec cat\n",
        )
        .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let listen = format!("TCP-LISTEN:8081,bind={WEB},fork,reuseaddr");
    let exec = format!("EXEC:{}", script.display());
    let _upgrade = lab
        .spawn(&lab.inet, "upgrade-server", "socat", &[&listen, &exec])
        .unwrap();
    peers::wait_tcp(&lab.inet, sa(WEB, 8081), Duration::from_secs(5)).unwrap();
    let tunnel = lab
        .spoke
        .enter(move || -> std::io::Result<(String, Vec<u8>)> {
            let mut s = TcpStream::connect_timeout(&sa(WEB, 8081).into(), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(
                b"GET /ws HTTP/1.1\r\nHost: a.lab.test:8081\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            )?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
                if s.read(&mut byte)? == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            // Not HTTP: only a tunnel carries it.
            s.write_all(b"\x81\x05hello-frame")?;
            let mut echo = vec![0u8; 13];
            s.read_exact(&mut echo)?;
            Ok((String::from_utf8_lossy(&head).into_owned(), echo))
        })
        .unwrap()
        .unwrap();
    assert!(tunnel.0.starts_with("HTTP/1.1 101 "), "{tunnel:?}");
    assert_eq!(tunnel.1, b"\x81\x05hello-frame", "{tunnel:?}");

    // A large download through the relay arrives whole.
    let c = peers::curl_with(
        &lab.spoke,
        &[
            "-o",
            "/dev/null",
            "-H",
            "Host: a.lab.test",
            &format!("http://{WEB}/big"),
        ],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(c.downloaded, r.vhosts.big_bytes, "{c:?}");
}

#[test]
fn privileged_silent_client_is_closed_and_stop_removes_the_steering() {
    require_privileged!();
    let mut r = start(
        Arms::Two,
        &["--proxy-handshake-timeout", "2", "--proxy-max-per-source", "2"],
    );
    // A client that connects and sends nothing is closed after the handshake timeout.
    let started = Instant::now();
    let out = r
        .lab
        .spoke
        .enter(move || {
            let mut s = TcpStream::connect_timeout(&sa(WEB, 443).into(), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut b = [0u8; 16];
            s.read(&mut b)
        })
        .unwrap();
    let waited = started.elapsed();
    assert!(matches!(out, Ok(0) | Err(_)), "{out:?}");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(9),
        "{waited:?}"
    );
    // A dribbling client (one byte a second) fares no better.
    let started = Instant::now();
    let dribble = r
        .lab
        .spoke
        .enter(move || -> std::io::Result<Duration> {
            let mut s = TcpStream::connect_timeout(&sa(WEB, 80).into(), Duration::from_secs(3))?;
            for b in b"GET / HTTP/1.1\r\nHost: a.lab.test\r\n" {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
                if started.elapsed() > Duration::from_secs(10) {
                    break;
                }
            }
            Ok(started.elapsed())
        })
        .unwrap()
        .unwrap();
    assert!(
        dribble < Duration::from_secs(8),
        "dribbling client not cut: {dribble:?}"
    );

    // Per-source limit 2: two silent connections are held, a third is reset at once.
    let third = r
        .lab
        .spoke
        .enter(move || -> std::io::Result<(std::io::Result<usize>, Duration)> {
            let _one = TcpStream::connect_timeout(&sa(WEB, 443).into(), Duration::from_secs(3))?;
            let _two = TcpStream::connect_timeout(&sa(WEB, 443).into(), Duration::from_secs(3))?;
            std::thread::sleep(Duration::from_millis(200));
            let started = Instant::now();
            let mut s = TcpStream::connect_timeout(&sa(WEB, 443).into(), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut b = [0u8; 16];
            let r = s.read(&mut b);
            Ok((r, started.elapsed()))
        })
        .unwrap()
        .unwrap();
    assert!(matches!(third.0, Ok(0) | Err(_)), "{third:?}");
    assert!(
        third.1 < Duration::from_secs(1),
        "the third connection is refused at once: {third:?}"
    );

    assert!(r.daemon.stop(STOP).expect("stop"), "{}", lab::tail(&r.daemon.stderr()));
    let log = r.daemon.stderr();
    let stats = log
        .lines()
        .find_map(|l| l.strip_prefix("portcullis: application proxy: {"))
        .map(|rest| serde_json::from_str::<Value>(&format!("{{{rest}")).unwrap())
        .unwrap_or_else(|| panic!("no proxy counters in {log}"));
    assert!(stats["handshake_timeouts"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["refused_source_limit"].as_u64().unwrap() >= 1, "{stats}");
    let tables = r
        .lab
        .fw
        .run("nft", &["list", "tables"], Duration::from_secs(5))
        .unwrap()
        .stdout;
    assert!(!tables.contains("portcullis_proxy"), "{tables}");
    let rules = r.lab.fw.ip(&["rule", "show"]).unwrap();
    assert!(!rules.contains("5043"), "{rules}");
    // Stopped with state kept: the pinned program drops application-rule ports instead of passing them to a
    // kernel that would forward them unfiltered.
    let c = r.https("a.lab.test", 443, WEB);
    assert!(c.status.is_none(), "{c:?}");
}

#[test]
fn privileged_reload_to_deny_cuts_proxied_connections() {
    require_privileged!();
    let r = start(Arms::Two, &[]);
    let lab = &r.lab;
    // A slow HTTPS download of an allowed name, in the background.
    let url = "https://a.lab.test/big";
    let resolve = format!("a.lab.test:443:{WEB}");
    let ca = r.ca.ca_cert().to_string_lossy().into_owned();
    let mut slow = lab
        .spawn(
            &lab.spoke,
            "slow-curl",
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "--limit-rate",
                "1M",
                "--max-time",
                "30",
                "--resolve",
                &resolve,
                "--cacert",
                &ca,
                url,
            ],
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        slow.try_status().is_none(),
        "the download is still running: {}",
        slow.stderr()
    );
    std::fs::write(&r.config, policy(lab, false)).unwrap();
    let mut d = r.daemon;
    d.reload().unwrap();
    d.wait_log("reloaded (generation", Duration::from_secs(10)).unwrap();
    let status = slow
        .wait_timeout(Duration::from_secs(10))
        .expect("the download is cut, not left running");
    assert!(!status.success(), "the download must not complete: {}", slow.stderr());
    // New requests for the name are denied now.
    let c = peers::curl_http(&lab.spoke, &format!("http://{WEB}/"), &["Host: a.lab.test"], ANSWER).unwrap();
    assert_eq!(c.status, Some(470), "{c:?}");
    assert!(d.stop(STOP).unwrap());
    let log = d.stderr();
    assert!(log.contains("\"cut_by_reload\":1"), "{log}");
    // Every decision reached the flow log through the writer thread, none dropped.
    assert!(log.contains("\"flow_records_lost\":0"), "{log}");
    let written = std::fs::read_to_string(lab.dir.join("flows.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|f| f["Category"] == "AZFWApplicationRule")
        .count();
    assert!(written >= 2, "{written} application records");
    assert!(
        log.contains(&format!("\"flow_records_written\":{written}")),
        "{written}: {log}"
    );
}

/// Writes `bytes` from `ns` to `to` in `pieces` writes `gap` apart (no Nagle), then returns what comes back
/// within a few seconds.
fn send_pieces(ns: &Netns, to: SocketAddrV4, bytes: &'static [u8], pieces: usize, gap: Duration) -> Vec<u8> {
    ns.enter(move || {
        let mut out = Vec::new();
        let Ok(mut s) = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3)) else {
            return out;
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        for chunk in bytes.chunks(bytes.len().div_ceil(pieces)) {
            if s.write_all(chunk).is_err() {
                return out;
            }
            std::thread::sleep(gap);
        }
        let mut buf = [0u8; 16384];
        if let Ok(n) = s.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        out
    })
    .unwrap()
}

/// Sends `bytes` from `ns` to `to`, half-closes, and returns everything received (bounded).
fn send_raw(ns: &Netns, to: SocketAddrV4, bytes: &'static [u8]) -> Vec<u8> {
    ns.enter(move || {
        let mut out = Vec::new();
        let Ok(mut s) = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3)) else {
            return out;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(bytes).is_err() {
            return out;
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut buf = [0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    })
    .unwrap()
}
