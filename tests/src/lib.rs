//! portcullis-e2e: the network-namespace lab the end-to-end tests run in, and its real peers (nginx, curl,
//! ping, socat, iperf3) and the real `portcullis run` binary.
//!
//! - [`lab::Lab`]: the topology (spoke client, on-premises server, appliance, Internet), two-arm or one-arm,
//!   torn down on drop (also when a test panics); see its documentation for the addresses.
//! - [`cmd`]: bounded command runs and [`cmd::Proc`], a child process killed with its process group on drop.
//! - [`xdp_pass`]: an XDP_PASS program for the veth peers the appliance hairpins into (XDP_TX).
//! - [`netns`]: named namespaces, commands and threads inside them, and a sweep of namespaces left by killed
//!   test processes.
//!
//! Every wait is bounded. No namespace has a link to the host's namespace, so nothing reaches outside the lab.

pub mod cmd;
pub mod lab;
pub mod netns;
pub mod peers;
pub mod tls;
pub mod xdp_pass;

use std::time::Duration;

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("starting `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Failed { command: String, detail: String },
    #[error("`{what}` did not finish within {after:?}\n{detail}")]
    Timeout {
        what: String,
        after: Duration,
        detail: String,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Programs the lab runs.
pub const TOOLS: &[&str] = &[
    "ip", "nsenter", "setpriv", "sysctl", "ethtool", "nft", "nginx", "curl", "socat", "iperf3", "ping",
];

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(program).is_file())
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(program).is_file())
}

/// `Ok(())` if the lab can be built here: root, network namespaces, and the tools. Otherwise why not.
pub fn lab_available() -> Result<(), String> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Err(format!(
            "not root (euid {euid}): network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN"
        ));
    }
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing tools: {} (scripts/bootstrap.sh installs them)",
            missing.join(", ")
        ));
    }
    if !std::path::Path::new("/proc/self/ns/net").exists() {
        return Err("the kernel has no network namespaces".into());
    }
    Ok(())
}

/// Whether a test must give up: `Some(reason)` is printed as `skip: …` and the test returns (passes), except
/// with `CI=true`, where a privileged test that cannot run fails.
pub fn skip(reason: Result<(), String>) -> bool {
    match reason {
        Ok(()) => false,
        Err(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("privileged test cannot run in CI: {why}");
            }
            eprintln!("skip: {why}");
            true
        }
    }
}
