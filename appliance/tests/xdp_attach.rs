//! Attaching `xdp_ingress` to real interfaces, in network namespaces these tests create.
//!
//! Needs root. Without it each test prints `skip: <why>` and passes, except under `CI=true`, where
//! it fails. Test names contain "privileged" so nextest runs them one at a time (.config/nextest.toml).

use std::process::Command;
use std::thread;

use nix::sched::{CloneFlags, unshare};
use portcullis::bpf::{AttachMode, BpfError, DataPlane, privileged_env};

/// Returns from the calling test (skip) or panics (under `CI=true`) unless privileged code can run.
macro_rules! require_privileged {
    () => {
        if let Err(why) = privileged_env() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("privileged test cannot run in CI: {why}");
            }
            eprintln!("skip: {why}");
            return;
        }
    };
}

/// Runs `ip <args>`; the child inherits the calling thread's network namespace.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `f` on a thread with a fresh, anonymous network namespace of its own. The namespace (and
/// every interface in it) disappears when the thread ends, so there is nothing to clean up.
fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[test]
fn privileged_attach_prefers_driver_mode_and_falls_back_to_skb() {
    require_privileged!();
    in_fresh_netns(|| {
        ip(&["link", "add", "pct-veth0", "type", "veth", "peer", "name", "pct-veth1"]);
        for dev in ["pct-veth0", "pct-veth1", "lo"] {
            ip(&["link", "set", dev, "up"]);
        }
        let mut plane = DataPlane::load().expect("load");

        // veth implements native XDP.
        assert_eq!(plane.attach_interface("pct-veth0").unwrap(), AttachMode::Driver);
        assert_eq!(plane.attached(), Some(("pct-veth0", AttachMode::Driver)));
        assert!(matches!(
            plane.attach_interface("lo"),
            Err(BpfError::AlreadyAttached(dev)) if dev == "pct-veth0"
        ));
        plane.detach().unwrap();
        assert_eq!(plane.attached(), None);
        // Detaching twice is a no-op.
        plane.detach().unwrap();

        // Loopback has no native XDP: the driver refuses, generic mode works.
        assert_eq!(plane.attach_interface("lo").unwrap(), AttachMode::Skb);
        assert_eq!(plane.attached(), Some(("lo", AttachMode::Skb)));
        plane.detach().unwrap();

        assert!(matches!(
            plane.attach_interface("pct-missing"),
            Err(BpfError::UnknownInterface(dev)) if dev == "pct-missing"
        ));
    });
}

#[test]
fn privileged_lab_xdp_smoke_passes_every_check() {
    require_privileged!();
    let report = portcullis::lab::xdp::xdp_smoke().expect("xdp_smoke");
    let failures: Vec<_> = report.failures().collect();
    assert!(failures.is_empty(), "failed checks: {failures:#?}");
    assert_eq!(report.mode, AttachMode::Driver, "veth supports native XDP");
    // Both namespaces are gone.
    for ns in [&report.namespace, &report.peer_namespace] {
        assert!(
            !std::path::Path::new("/run/netns").join(ns).exists(),
            "{ns} left behind"
        );
    }
}
