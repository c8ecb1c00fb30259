//! The lab itself, without portcullis: namespaces come and go, nothing leaks out, and real peers talk through
//! plain kernel forwarding (with an nftables masquerade standing in for SNAT) in both topologies.
//!
//! Root only: without it each test prints `skip: …` and passes, except with CI=true, where it fails.

use std::path::Path;
use std::time::Duration;

use portcullis_e2e::lab::{self, Arms, Lab, sa};
use portcullis_e2e::{netns, peers, skip};

const T: Duration = Duration::from_secs(5);

fn namespaces_of(lab_id: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{lab_id}-")))
                .collect()
        })
        .unwrap_or_default()
}

fn root_links() -> Vec<String> {
    let json = netns::ip(&["-j", "link", "show"]).expect("ip link");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn privileged_lab_is_created_isolated_and_removed() {
    if skip(portcullis_e2e::lab_available()) {
        return;
    }
    let before = root_links();
    let lab = Lab::new(Arms::Two).expect("lab");
    let id = lab.id.clone();
    let dir = lab.dir.clone();
    assert_eq!(namespaces_of(&id).len(), 5);
    assert_eq!(root_links(), before, "nothing is created in the host's namespace");
    let mut links = lab.fw.links().unwrap();
    links.sort();
    assert_eq!(links, ["in0", "lo", "out0"]);
    assert_eq!(lab.spoke.links().unwrap(), ["lo", "eth0"]);
    // No route out: the spoke's only way is the appliance, whose only way is the lab's Internet, which has
    // no default route.
    let routes = lab.inet.ip(&["route", "show"]).unwrap();
    assert!(!routes.contains("default"), "{routes}");
    // Without forwarding on the appliance nothing crosses it.
    let mut nginx = lab.nginx(&lab.onprem, &[sa(lab::ONPREM, 80)]).unwrap();
    let c = peers::curl(&lab.spoke, sa(lab::ONPREM, 80), None, Duration::from_secs(2)).unwrap();
    assert!(!c.ok(), "{c:?}");
    drop(lab);
    assert!(namespaces_of(&id).is_empty(), "namespaces removed");
    assert!(!dir.exists(), "scratch directory removed");
    // nginx lived in a deleted namespace: killed with it.
    assert!(nginx.wait_timeout(T).is_some(), "nginx killed with its namespace");
}

#[test]
fn privileged_lab_cleans_up_when_a_test_panics() {
    if skip(portcullis_e2e::lab_available()) {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let lab = Lab::new(Arms::One).expect("lab");
        let sleeper = lab.spawn(&lab.inet, "sleeper", "sleep", &["600"]).unwrap();
        tx.send((lab.id.clone(), sleeper.pid())).unwrap();
        panic!("test failure inside the lab");
    });
    assert!(result.is_err());
    let (id, pid) = rx.recv().unwrap();
    assert!(namespaces_of(&id).is_empty(), "namespaces removed after the panic");
    std::thread::sleep(Duration::from_millis(100));
    assert!(nix::sys::signal::kill(pid, None).is_err(), "child killed");
}

fn kernel_forwarding(arms: Arms) {
    let lab = Lab::new(arms).expect("lab");
    lab.kernel_forwarding().unwrap();
    let _web = lab.nginx(&lab.inet, &[sa(lab::SERVER, 80)]).unwrap();
    let _private = lab.nginx(&lab.onprem, &[sa(lab::ONPREM, 80)]).unwrap();
    let _udp = lab.udp_echo(&lab.inet, sa(lab::SERVER, 7)).unwrap();
    let _iperf = lab.iperf3_server(&lab.inet, sa(lab::SERVER2, 5201)).unwrap();

    let c = peers::curl(&lab.spoke, sa(lab::SERVER, 80), None, T).unwrap();
    assert!(c.ok(), "{c:?}");
    assert_eq!(
        c.body.trim(),
        lab::FW_EXTERNAL.to_string(),
        "masqueraded to the appliance's address"
    );
    let c = peers::curl(&lab.spoke, sa(lab::ONPREM, 80), None, T).unwrap();
    assert_eq!(
        c.body.trim(),
        lab::CLIENT.to_string(),
        "east-west keeps the client address"
    );
    assert!(peers::ping(&lab.spoke, lab::ONPREM, 2).unwrap());
    let echo = peers::udp_exchange(&lab.spoke, sa(lab::SERVER, 7), b"hello", T).unwrap();
    assert_eq!(echo.as_deref(), Some(&b"hello"[..]));
    let r = lab
        .iperf3_client(&lab.spoke, sa(lab::SERVER2, 5201), 2)
        .unwrap()
        .finish()
        .unwrap();
    assert!(r.success, "{r:?}");
    assert!(r.bytes_received > 0);
    // An Internet host cannot reach the spoke: no route back to it.
    let _spoke_web = lab.nginx(&lab.spoke, &[sa(lab::CLIENT, 8080)]).unwrap();
    let c = peers::curl(
        &lab.inet,
        sa(lab::CLIENT, 8080),
        Some(lab::OUTSIDE_CLIENT),
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(!c.ok(), "{c:?}");
}

#[test]
fn privileged_lab_kernel_forwarding_two_arm() {
    if skip(portcullis_e2e::lab_available()) {
        return;
    }
    kernel_forwarding(Arms::Two);
}

#[test]
fn privileged_lab_kernel_forwarding_one_arm() {
    if skip(portcullis_e2e::lab_available()) {
        return;
    }
    kernel_forwarding(Arms::One);
}

#[test]
fn privileged_lab_commands_are_bounded() {
    if skip(portcullis_e2e::lab_available()) {
        return;
    }
    let lab = Lab::new(Arms::Two).expect("lab");
    let started = std::time::Instant::now();
    let err = lab.spoke.run("sleep", &["30"], Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, portcullis_e2e::HarnessError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(Path::new(&format!("/run/netns/{}", lab.spoke.name)).exists());
}

// The application-proxy fixtures (TLS CA, nginx vhosts, dnsmasq, curl/openssl/dig clients), without any
// firewall: clients run inside the Internet namespace against its own server addresses.

const WEB: std::net::Ipv4Addr = lab::SERVER;
const RESOLVER: std::net::Ipv4Addr = lab::SERVER2;
const NAMES: &[&str] = &["a.lab.test", "b.lab.test", "*.wild.lab.test"];

/// A scratch directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn lab_ca_issues_verifiable_server_certificates() {
    if skip(peers::tools_missing(&["openssl"])) {
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(format!("pce-ca-test-{}", std::process::id())));
    let ca = portcullis_e2e::tls::LabCa::new(&dir.0).unwrap();
    let (cert, key) = ca.issue(&["a.lab.test", "*.wild.lab.test"]).unwrap();
    assert!(key.is_file());
    let run = |args: &[&str]| {
        portcullis_e2e::cmd::run(std::process::Command::new("openssl").args(args), T)
            .unwrap()
            .ok()
            .unwrap()
    };
    let ca_s = ca.ca_cert().to_string_lossy().into_owned();
    let cert_s = cert.to_string_lossy().into_owned();
    let verified = run(&["verify", "-CAfile", &ca_s, "-purpose", "sslserver", &cert_s]);
    assert!(verified.contains(": OK"), "{verified}");
    let text = run(&["x509", "-in", &cert_s, "-noout", "-text"]);
    assert!(text.contains("DNS:a.lab.test, DNS:*.wild.lab.test"), "{text}");
    assert!(text.contains("prime256v1") || text.contains("P-256"), "{text}");
    assert!(text.contains("CN = portcullis lab CA"), "{text}");
    // A second certificate gets its own files and serial.
    let (cert2, _) = ca.issue(&["a.lab.test"]).unwrap();
    assert_ne!(cert, cert2);
    let serial = |c: &str| run(&["x509", "-in", c, "-noout", "-serial"]);
    assert_ne!(serial(&cert_s), serial(&cert2.to_string_lossy()));
}

#[test]
fn privileged_proxy_fixtures_dnsmasq_answers_its_records() {
    if skip(peers::proxy_fixtures_available()) {
        return;
    }
    let lab = Lab::new(Arms::Two).expect("lab");
    let dns = sa(RESOLVER, 53);
    let mut dnsmasq = lab
        .dnsmasq(
            &lab.inet,
            dns,
            &[
                ("a.lab.test", WEB),
                ("multi.lab.test", WEB),
                ("multi.lab.test", lab::SERVER2),
                ("*.wild.lab.test", WEB),
                ("bad.lab.test", lab::BAD_SERVER),
            ],
        )
        .unwrap();
    assert_eq!(peers::dig(&lab.inet, dns, "a.lab.test").unwrap(), [WEB]);
    let mut multi = peers::dig(&lab.inet, dns, "multi.lab.test").unwrap();
    multi.sort();
    assert_eq!(multi, [WEB, lab::SERVER2]);
    assert_eq!(peers::dig(&lab.inet, dns, "x.wild.lab.test").unwrap(), [WEB]);
    assert_eq!(peers::dig(&lab.inet, dns, "y.z.wild.lab.test").unwrap(), [WEB]);
    assert_eq!(peers::dig(&lab.inet, dns, "bad.lab.test").unwrap(), [lab::BAD_SERVER]);
    assert!(peers::dig(&lab.inet, dns, "unknown.lab.test").unwrap().is_empty());
    assert!(
        peers::dig(&lab.inet, dns, "example.com").unwrap().is_empty(),
        "no upstream"
    );
    assert!(dnsmasq.stderr().contains("query[A] a.lab.test"), "{}", dnsmasq.stderr());
    // Nothing listens elsewhere: dig reports no answer as an error (bounded by +time=1).
    let started = std::time::Instant::now();
    assert!(peers::dig(&lab.inet, sa(WEB, 53), "a.lab.test").is_err());
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(dnsmasq.try_status().is_none(), "still running");
}

#[test]
fn privileged_proxy_fixtures_https_vhosts_by_sni() {
    if skip(peers::proxy_fixtures_available()) {
        return;
    }
    let lab = Lab::new(Arms::Two).expect("lab");
    let ca = lab.ca().unwrap();
    let https = [sa(WEB, 443), sa(WEB, 8443)];
    let _web = lab
        .nginx_vhosts(&lab.inet, &ca, &https, NAMES, &[sa(WEB, 80)], 1)
        .unwrap();
    let cacert = Some(ca.ca_cert());
    for port in [443, 8443] {
        for (name, vhost) in [
            ("a.lab.test", "a.lab.test"),
            ("b.lab.test", "b.lab.test"),
            ("x.wild.lab.test", "*.wild.lab.test"),
        ] {
            let url = format!("https://{name}:{port}/");
            let c = peers::curl_https(&lab.inet, &url, Some((name, port, WEB)), cacert, T).unwrap();
            assert!(c.ok(), "{url}: {c:?}");
            assert_eq!(c.status, Some(200));
            assert_eq!(peers::field(&c.body, "vhost").as_deref(), Some(vhost), "{c:?}");
            assert_eq!(peers::field(&c.body, "sni").as_deref(), Some(name), "{c:?}");
            let host = if port == 443 {
                name.to_owned()
            } else {
                format!("{name}:{port}")
            };
            assert_eq!(peers::field(&c.body, "host"), Some(host), "{c:?}");
            assert_eq!(peers::field(&c.body, "client"), Some(WEB.to_string()), "{c:?}");
        }
    }
    // An unknown name gets the default server, whose certificate does not match: curl refuses (60) unless
    // told not to verify.
    let c = peers::curl_https(
        &lab.inet,
        "https://c.lab.test/",
        Some(("c.lab.test", 443, WEB)),
        cacert,
        T,
    )
    .unwrap();
    assert_eq!(c.exit, Some(60), "{c:?}");
    assert_eq!(c.status, None);
    let c = peers::curl_https(
        &lab.inet,
        "https://c.lab.test/",
        Some(("c.lab.test", 443, WEB)),
        None,
        T,
    )
    .unwrap();
    assert_eq!(peers::field(&c.body, "vhost").as_deref(), Some("default"), "{c:?}");
    assert_eq!(peers::field(&c.body, "sni").as_deref(), Some("c.lab.test"), "{c:?}");
    // By address (curl sends no SNI for an IP literal): the default server.
    let c = peers::curl_https(&lab.inet, &format!("https://{WEB}/"), None, None, T).unwrap();
    assert_eq!(peers::field(&c.body, "vhost").as_deref(), Some("default"), "{c:?}");
    assert_eq!(peers::field(&c.body, "sni").as_deref(), Some(""), "{c:?}");
    // TLS to a plain-HTTP port: the handshake fails and curl says so (35), as for a reset after the ClientHello.
    let c = peers::curl_https(
        &lab.inet,
        "https://a.lab.test/",
        Some(("a.lab.test", 443, WEB)),
        cacert,
        T,
    );
    assert!(c.unwrap().ok());
    let c = peers::curl_https(
        &lab.inet,
        "https://a.lab.test:80/",
        Some(("a.lab.test", 80, WEB)),
        cacert,
        T,
    )
    .unwrap();
    assert_eq!(c.exit, Some(35), "{c:?}");
    let c = peers::curl_https(
        &lab.inet,
        "https://a.lab.test:9/",
        Some(("a.lab.test", 9, WEB)),
        cacert,
        T,
    )
    .unwrap();
    assert_eq!(c.exit, Some(7), "refused: {c:?}");

    // openssl s_client: without SNI the default certificate, with SNI the vhost's, verified by the CA.
    let s = peers::openssl_s_client(&lab.inet, sa(WEB, 443), None, T).unwrap();
    assert!(s.handshake_ok(), "{s:?}");
    assert_eq!(s.subject(), Some("CN = default.lab.test"), "{s:?}");
    let ca_s = ca.ca_cert().to_string_lossy().into_owned();
    let s = peers::openssl_s_client_with(
        &lab.inet,
        sa(WEB, 8443),
        Some("b.lab.test"),
        &["-CAfile", &ca_s, "-verify_hostname", "b.lab.test"],
        T,
    )
    .unwrap();
    assert!(s.handshake_ok(), "{s:?}");
    assert_eq!(s.subject(), Some("CN = b.lab.test"), "{s:?}");
    assert!(s.stdout.contains("Verify return code: 0 (ok)"), "{s:?}");
    let s = peers::openssl_s_client(&lab.inet, sa(WEB, 80), Some("a.lab.test"), T).unwrap();
    assert!(!s.handshake_ok() && s.exit == Some(1), "{s:?}");
}

#[test]
fn privileged_proxy_fixtures_http_echo_keepalive_and_big() {
    if skip(peers::proxy_fixtures_available()) {
        return;
    }
    let lab = Lab::new(Arms::Two).expect("lab");
    let ca = lab.ca().unwrap();
    let web = lab
        .nginx_vhosts(&lab.inet, &ca, &[], &[], &[sa(WEB, 80), sa(lab::SERVER2, 8080)], 8)
        .unwrap();
    let c = peers::curl_http(
        &lab.inet,
        &format!("http://{WEB}/path?q=1"),
        &["Host: a.lab.test", "X-Forwarded-For: 198.51.100.7, 198.51.100.8"],
        T,
    )
    .unwrap();
    assert!(c.ok(), "{c:?}");
    assert_eq!(c.status, Some(200));
    assert_eq!(peers::field(&c.body, "host").as_deref(), Some("a.lab.test"), "{c:?}");
    assert_eq!(peers::field(&c.body, "client"), Some(WEB.to_string()), "{c:?}");
    assert_eq!(
        peers::field(&c.body, "xff").as_deref(),
        Some("198.51.100.7, 198.51.100.8"),
        "{c:?}"
    );
    assert_eq!(peers::field(&c.body, "uri").as_deref(), Some("/path?q=1"), "{c:?}");
    let c = peers::curl_http(&lab.inet, &format!("http://{}:8080/", lab::SERVER2), &[], T).unwrap();
    assert_eq!(
        peers::field(&c.body, "host"),
        Some(format!("{}:8080", lab::SERVER2)),
        "{c:?}"
    );
    assert_eq!(peers::field(&c.body, "xff").as_deref(), Some(""), "{c:?}");
    assert_eq!(peers::field(&c.body, "client"), Some(lab::SERVER2.to_string()), "{c:?}");
    // Keep-alive: three requests over one connection.
    let u = format!("http://{WEB}/k");
    let c = peers::curl_with(&lab.inet, &[&u, &u, &u], T).unwrap();
    assert!(c.ok(), "{c:?}");
    assert_eq!(c.connects, 1, "{c:?}");
    assert_eq!(c.body.matches("uri=/k").count(), 3, "{c:?}");
    // The big file, counted without keeping it.
    let c = peers::curl_with(&lab.inet, &["-o", "/dev/null", &format!("http://{WEB}/big")], T).unwrap();
    assert!(c.ok(), "{c:?}");
    assert_eq!(c.status, Some(200));
    assert_eq!(c.downloaded, web.big_bytes);
    assert_eq!(web.big_bytes, 8 << 20);
    let c = peers::curl_http(&lab.inet, &format!("http://{WEB}/nothing-here/big"), &[], T).unwrap();
    assert!(c.body.starts_with("host="), "only /big is the file: {c:?}");
    assert!(
        web.access_log().contains("\"GET /big HTTP/1.1\" 200"),
        "{}",
        web.access_log()
    );
}
