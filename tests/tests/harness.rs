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
