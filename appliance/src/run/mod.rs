//! `portcullis run`: the appliance daemon.
//!
//! Start-up, in this order so that configuration mistakes are reported before anything is touched:
//! 1. load and validate the policy file (`FILE:LINE:COL` diagnostics), require its `appliance` section;
//! 2. derive the [`settings::Settings`] from it, the command line and the host's interfaces (unknown interface,
//!    interface without IPv4 address);
//! 3. read the threat-intelligence feed (`FILE:LINE` diagnostics);
//! 4. require root and BPF;
//! 5. [`daemon::serve`]: host settings ([`crate::netsetup`]), open the data plane (re-using pinned
//!    conntrack/NAT state and links), load the policy, attach XDP, log flow events, and wait for signals:
//!    SIGHUP reloads the policy (an invalid file keeps the running one), SIGTERM/SIGINT stop.
//!
//! Stopping keeps the pinned state and links (and the host settings they need), so a restarted daemon takes
//! over established flows with no gap; `--flush` removes everything and restores the host settings found
//! before the first start.
#![forbid(unsafe_code)]

pub mod daemon;
pub mod flowlog;
pub mod settings;
pub mod signals;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use portcullis_rules::{Loaded, ThreatFeed};

use crate::bpf::BpfError;
use crate::netsetup::{self, NetSetupError};

/// Default directory of the pinned maps and links (bpffs).
pub use crate::bpf::DEFAULT_PIN_DIR;
/// Default SNAT port range; the host's ephemeral ports are kept below it.
pub use crate::bpf::DEFAULT_SNAT_PORTS;
/// Default conntrack table size (entries; two per flow).
pub const DEFAULT_CT_MAX: u32 = portcullis_common::CT_DEFAULT_MAX_ENTRIES;
/// Default directory of the daemon's own state (the host settings to restore).
pub const DEFAULT_STATE_DIR: &str = "/run/portcullis";

/// How `portcullis run` was asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    /// On exit, remove pinned state and links and restore the host settings.
    pub flush: bool,
    /// Print what would be done (settings, host changes) and exit without touching anything.
    pub dry_run: bool,
    /// The appliance's internal address (default: from the internal interface).
    pub internal_address: Option<Ipv4Addr>,
    pub snat_ports: (u16, u16),
    pub conntrack_max: u32,
    /// Run the application proxy (HTTP/HTTPS application rules). Without it, TCP to application-rule
    /// ports is dropped by the data plane.
    pub application_proxy: bool,
    /// The proxy's transparent listener port (connections are steered to it; never exposed directly).
    pub proxy_port: u16,
    /// The proxy's time limits (handshake, connect, idle).
    pub proxy_timeouts: crate::proxy::Timeouts,
    pub proxy_limits: crate::proxy::Limits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: PathBuf::new(),
            pin_dir: DEFAULT_PIN_DIR.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            flush: false,
            dry_run: false,
            internal_address: None,
            snat_ports: DEFAULT_SNAT_PORTS,
            conntrack_max: DEFAULT_CT_MAX,
            application_proxy: true,
            proxy_port: crate::proxy::ProxyConfig::DEFAULT_PORT,
            proxy_timeouts: crate::proxy::Timeouts::default(),
            proxy_limits: crate::proxy::Limits::default(),
        }
    }
}

/// Why `portcullis run` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The policy file did not load; the diagnostics, one `FILE:LINE:COL: message` per line.
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{} has no `appliance` section: `portcullis run` needs at least `appliance: {{interfaces: {{internal: IFACE}}}}` \
         (add `external: IFACE` for two-arm, and `snatAddresses`)",
        .0.display()
    )]
    NoAppliance(PathBuf),
    #[error("appliance.interfaces.{role}: no network interface named `{name}` (interfaces here: {})", .available.join(", "))]
    UnknownInterface {
        role: &'static str,
        name: String,
        available: Vec<String>,
    },
    #[error("appliance.interfaces.{role}: interface `{name}` has no IPv4 address")]
    NoIpv4 { role: &'static str, name: String },
    #[error("--internal-address {address} is not an address of the internal interface {interface}")]
    InternalAddress { address: Ipv4Addr, interface: String },
    #[error("reading the threat-intelligence feed {}", .path.display())]
    FeedRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One `FILE:LINE: message` per line.
    #[error("invalid threat-intelligence feed:\n{0}")]
    Feed(String),
    #[error("cannot run the data plane: {0}")]
    NotPrivileged(String),
    #[error(transparent)]
    NetSetup(#[from] NetSetupError),
    #[error("data plane")]
    Bpf(#[from] BpfError),
    #[error("flow log {}", .path.display())]
    FlowLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signals")]
    Signals(#[source] std::io::Error),
    #[error("application proxy")]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error("application proxy steering (nftables TPROXY)")]
    Steer(#[from] crate::proxy::steer::SteerError),
}

/// A line on stderr, the daemon's log.
pub fn log(message: impl std::fmt::Display) {
    eprintln!("portcullis: {message}");
}

/// Loads and validates the policy file; warnings are logged.
pub fn load_config(path: &Path) -> Result<Loaded, RunError> {
    match portcullis_rules::load(path, &portcullis_rules::FsLoader) {
        Ok(l) => {
            for w in &l.warnings {
                log(w);
            }
            Ok(l)
        }
        Err(invalid) => Err(RunError::Invalid(invalid.to_string().trim_end().to_owned())),
    }
}

/// Reads the threat-intelligence feed: one IP, CIDR, range or host name per line.
pub fn load_feed(path: &Path) -> Result<ThreatFeed, RunError> {
    let text = std::fs::read_to_string(path).map_err(|source| RunError::FeedRead {
        path: path.to_owned(),
        source,
    })?;
    ThreatFeed::parse(&text).map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("{}:{}: {}", path.display(), e.line, e.message))
            .collect();
        RunError::Feed(lines.join("\n"))
    })
}

/// `portcullis run`: returns when the daemon was stopped by a signal.
pub fn main(opts: &Options) -> Result<ExitCode, RunError> {
    signals::block().map_err(|e| RunError::Signals(e.into()))?;
    let loaded = load_config(&opts.config)?;
    let interfaces = netsetup::interfaces()?;
    let settings = settings::derive(&opts.config, loaded.config.appliance.as_ref(), &interfaces, opts)?;
    let feed = settings.threat_feed.as_deref().map(load_feed).transpose()?;
    if opts.dry_run {
        print!("{}", dry_run(opts, &loaded, &settings, feed.as_ref())?);
        return Ok(ExitCode::SUCCESS);
    }
    crate::bpf::privileged_env().map_err(RunError::NotPrivileged)?;
    daemon::serve(opts, loaded, settings, feed)
}

/// `--dry-run`: what `run` would do, as text (reads the current host settings; changes nothing).
pub fn dry_run(
    opts: &Options,
    loaded: &Loaded,
    settings: &settings::Settings,
    feed: Option<&ThreatFeed>,
) -> Result<String, RunError> {
    use std::fmt::Write;
    let mut s = String::new();
    let list = |ips: &[Ipv4Addr]| ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let _ = writeln!(s, "policy: {}", crate::cli::summary(&loaded.config.policy));
    let _ = writeln!(
        s,
        "interfaces: internal {}{}",
        settings.internal,
        settings
            .external
            .as_ref()
            .map_or(" (one-arm)".to_owned(), |e| format!(", external {e}"))
    );
    let _ = writeln!(s, "internal address: {}", settings.internal_address);
    let _ = writeln!(
        s,
        "snat: {} ports {}-{}",
        list(&settings.snat_addresses),
        settings.snat_ports.0,
        settings.snat_ports.1
    );
    let _ = writeln!(s, "local addresses: {}", list(&settings.local_addresses));
    let ports = loaded.config.policy.application_ports();
    if opts.application_proxy {
        let _ = writeln!(
            s,
            "application proxy: TCP ports {} on {} steered (nftables table ip {}) to the listener on port {}",
            if ports.is_empty() {
                "(none yet)".to_owned()
            } else {
                ports.keys().map(u16::to_string).collect::<Vec<_>>().join(", ")
            },
            settings.internal,
            crate::proxy::steer::TABLE,
            opts.proxy_port
        );
    } else {
        let _ = writeln!(s, "application proxy: off (TCP to application-rule ports is dropped)");
    }
    let _ = writeln!(
        s,
        "pins: {} (conntrack {} entries)",
        settings.pin_dir.display(),
        settings.ct_max_entries
    );
    let _ = writeln!(
        s,
        "flow log: {}",
        match &settings.flow_log {
            settings::FlowLogTarget::Stdout => "stdout".to_owned(),
            settings::FlowLogTarget::File(p) => p.display().to_string(),
        }
    );
    if let Some(f) = feed {
        let _ = writeln!(s, "threat-intelligence feed: {} address ranges", f.ips().ranges().len());
    }
    let changes = netsetup::plan(&settings.host, &netsetup::ProcSys)?;
    if changes.is_empty() {
        let _ = writeln!(s, "host settings: nothing to change");
    }
    for c in changes {
        let _ = writeln!(s, "host setting: {c}");
    }
    let _ = writeln!(s, "state: {}", netsetup::HostState::path(&opts.state_dir).display());
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_errors_carry_file_and_line() {
        let dir = std::env::temp_dir().join(format!("portcullis-feed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ti.txt");
        std::fs::write(&path, "# feed\n203.0.113.66\n203.0.113.999\n198.51.100.0/33\n").unwrap();
        let e = load_feed(&path).unwrap_err().to_string();
        let shown = path.display();
        assert!(e.contains(&format!("{shown}:3: ")), "{e}");
        assert!(e.contains(&format!("{shown}:4: ")), "{e}");
        std::fs::write(&path, "203.0.113.66\n").unwrap();
        assert!(load_feed(&path).unwrap().contains_ip(Ipv4Addr::new(203, 0, 113, 66)));
        let e = load_feed(&dir.join("missing.txt")).unwrap_err();
        assert!(matches!(e, RunError::FeedRead { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
