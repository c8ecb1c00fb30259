//! Everything `portcullis run` changes on (or reads from) the host, in one place.
//!
//! - Kernel settings (sysctls under `/proc/sys`, all per network namespace): IPv4 forwarding, reverse-path
//!   filtering and ICMP redirects off on the data interfaces (the kernel uses the larger of `all` and the interface's value, so both
//!   are cleared), and the split of the port space: the host's own ephemeral ports
//!   (`net.ipv4.ip_local_port_range`, used by the proxy's and DNS proxy's upstream sockets) are kept out of the
//!   SNAT range the data plane allocates from.
//! - Interface queries: which interfaces exist and which IPv4 addresses they carry.
//!
//! The work is split so it can be checked without root: [`plan`] reads the current values through a [`Host`] and
//! returns the [`Change`]s needed (nothing for a value that is already right); [`apply`] writes them (rolling back
//! what it wrote if one fails); [`restore`] writes the previous values back. [`DryRun`] is a [`Host`] that records
//! writes instead of making them; [`ProcSys`] is the real one. [`HostState`] persists the values found before the
//! first change, so a daemon restart (which keeps the data plane, and with it the host settings, running) still
//! restores the original values when the appliance is finally stopped with `--flush`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// `net.ipv4.ip_forward`.
pub const IP_FORWARD: &str = "net.ipv4.ip_forward";
/// `net.ipv4.ip_local_port_range` ("LOW\tHIGH").
pub const LOCAL_PORT_RANGE: &str = "net.ipv4.ip_local_port_range";
/// The fewest ephemeral ports the host keeps for its own sockets.
pub const MIN_HOST_PORTS: u16 = 1024;
/// Ports below this are never handed out as ephemeral or SNAT ports.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// `net.ipv4.conf.<interface>.send_redirects`.
pub fn send_redirects_key(interface: &str) -> String {
    format!("net.ipv4.conf.{interface}.send_redirects")
}

/// `net.ipv4.conf.<interface>.rp_filter`.
pub fn rp_filter_key(interface: &str) -> String {
    // Interface names may contain dots (VLANs: eth0.100); `key_path` keeps them in the path.
    format!("net.ipv4.conf.{interface}.rp_filter")
}

/// Errors of host configuration.
#[derive(Debug, thiserror::Error)]
pub enum NetSetupError {
    #[error("reading {key}")]
    Read {
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("setting {key} to {value}")]
    Write {
        key: String,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("{key} has an unexpected value `{value}`")]
    Unexpected { key: String, value: String },
    #[error(
        "SNAT port range {0}-{1} is invalid: it must be LOW-HIGH with LOW >= {FIRST_UNPRIVILEGED_PORT} + \
         {MIN_HOST_PORTS} (the host keeps at least {MIN_HOST_PORTS} ephemeral ports below it) and LOW <= HIGH"
    )]
    SnatRange(u16, u16),
    #[error("restoring host settings failed: {}", .0.join("; "))]
    Restore(Vec<String>),
    #[error("host state file {path}")]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("host state file {path} is not valid: {message}")]
    StateFormat { path: PathBuf, message: String },
    #[error(
        "the pin directory {} is not on a bpffs (mount one: mount -t bpf bpf DIR, or use --pin-dir under \
         /sys/fs/bpf)",
        .0.display()
    )]
    NotBpffs(PathBuf),
    #[error("mounting bpffs at {BPF_FS_MOUNT}")]
    MountBpffs(#[source] io::Error),
    #[error("listing network interfaces")]
    Interfaces(#[source] io::Error),
}

/// Reads and writes kernel settings by sysctl name (`net.ipv4.ip_forward`).
pub trait Host {
    fn read(&self, key: &str) -> io::Result<String>;
    fn write(&mut self, key: &str, value: &str) -> io::Result<()>;
}

/// The running kernel, through `/proc/sys` (values of the calling process's network namespace).
#[derive(Debug, Default)]
pub struct ProcSys;

/// `/proc/sys/net/ipv4/conf/eth0.100/rp_filter` for `net.ipv4.conf.eth0.100.rp_filter`.
pub fn key_path(key: &str) -> PathBuf {
    let mut path = PathBuf::from("/proc/sys");
    // net.ipv4.conf.<ifname>.<setting>: the interface name may contain dots.
    if let Some(rest) = key.strip_prefix("net.ipv4.conf.")
        && let Some((interface, setting)) = rest.rsplit_once('.')
    {
        return path.join("net/ipv4/conf").join(interface).join(setting);
    }
    for part in key.split('.') {
        path.push(part);
    }
    path
}

impl Host for ProcSys {
    fn read(&self, key: &str) -> io::Result<String> {
        Ok(std::fs::read_to_string(key_path(key))?.trim().to_owned())
    }

    fn write(&mut self, key: &str, value: &str) -> io::Result<()> {
        std::fs::write(key_path(key), value)
    }
}

/// A pretend host: values come from a map, writes are recorded (and update the map).
#[derive(Debug, Default, Clone)]
pub struct DryRun {
    pub values: BTreeMap<String, String>,
    pub writes: Vec<(String, String)>,
}

impl DryRun {
    pub fn with(values: &[(&str, &str)]) -> Self {
        DryRun {
            values: values.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            writes: Vec::new(),
        }
    }
}

impl Host for DryRun {
    fn read(&self, key: &str) -> io::Result<String> {
        self.values
            .get(key)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no such sysctl {key}")))
    }

    fn write(&mut self, key: &str, value: &str) -> io::Result<()> {
        if !self.values.contains_key(key) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no such sysctl {key}")));
        }
        self.values.insert(key.to_owned(), value.to_owned());
        self.writes.push((key.to_owned(), value.to_owned()));
        Ok(())
    }
}

/// What the data plane needs from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// Interfaces that carry forwarded traffic (reverse-path filtering off).
    pub data_interfaces: Vec<String>,
    /// The SNAT port range (inclusive); the host's ephemeral range is moved out of it.
    pub snat_ports: (u16, u16),
}

/// One sysctl write and the value it replaces.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub key: String,
    pub previous: String,
    pub value: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.key, self.previous, self.value)
    }
}

/// Checks a SNAT port range: above the well-known ports, with room for the host's ephemeral ports below it.
pub fn check_snat_ports(snat: (u16, u16)) -> Result<(), NetSetupError> {
    let (lo, hi) = snat;
    if lo > hi || lo < FIRST_UNPRIVILEGED_PORT + MIN_HOST_PORTS {
        return Err(NetSetupError::SnatRange(lo, hi));
    }
    Ok(())
}

/// The host's ephemeral range given the current one and the SNAT range: unchanged (`None`) if they don't
/// overlap; otherwise moved below the SNAT range, keeping its low end when that leaves at least
/// [`MIN_HOST_PORTS`] ports.
pub fn host_port_range(current: (u16, u16), snat: (u16, u16)) -> Result<Option<(u16, u16)>, NetSetupError> {
    check_snat_ports(snat)?;
    if current.1 < snat.0 || current.0 > snat.1 {
        return Ok(None);
    }
    let hi = snat.0 - 1;
    let lo = if current.0 < hi && hi - current.0 + 1 >= MIN_HOST_PORTS {
        current.0
    } else {
        hi + 1 - MIN_HOST_PORTS
    };
    Ok(Some((lo, hi)))
}

fn parse_port_range(value: &str) -> Result<(u16, u16), NetSetupError> {
    let unexpected = || NetSetupError::Unexpected {
        key: LOCAL_PORT_RANGE.to_owned(),
        value: value.to_owned(),
    };
    let mut it = value.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) => Ok((lo, hi)),
        _ => Err(unexpected()),
    }
}

/// The writes that bring `host` to `req`, each with the value it replaces. Values already right are left out.
pub fn plan(req: &Requirements, host: &dyn Host) -> Result<Vec<Change>, NetSetupError> {
    let read = |key: &str| {
        host.read(key).map_err(|source| NetSetupError::Read {
            key: key.to_owned(),
            source,
        })
    };
    let mut changes = Vec::new();
    let mut want = |key: String, value: String, current: String| {
        if current != value {
            changes.push(Change {
                key,
                previous: current,
                value,
            });
        }
    };
    want(IP_FORWARD.to_owned(), "1".to_owned(), read(IP_FORWARD)?);
    // rp_filter: the kernel uses max(all, interface). send_redirects: the kernel sends a redirect when it
    // forwards a packet out of the interface it came in on (one-arm, or packets the data plane passes to the
    // stack), which would tell clients to bypass the appliance; it uses all || interface.
    let mut seen = Vec::new();
    for interface in std::iter::once("all").chain(req.data_interfaces.iter().map(String::as_str)) {
        if seen.contains(&interface) {
            continue;
        }
        seen.push(interface);
        for key in [rp_filter_key(interface), send_redirects_key(interface)] {
            let current = read(&key)?;
            want(key, "0".to_owned(), current);
        }
    }
    let current = read(LOCAL_PORT_RANGE)?;
    if let Some((lo, hi)) = host_port_range(parse_port_range(&current)?, req.snat_ports)? {
        // Written with a tab, as the kernel prints it, so a restore compares equal.
        want(LOCAL_PORT_RANGE.to_owned(), format!("{lo}\t{hi}"), current);
    }
    Ok(changes)
}

/// Writes `changes` in order. If one fails, the ones already written are restored and the error returned.
pub fn apply(changes: &[Change], host: &mut dyn Host) -> Result<(), NetSetupError> {
    for (i, c) in changes.iter().enumerate() {
        if let Err(source) = host.write(&c.key, &c.value) {
            let _ = restore(&changes[..i], host);
            return Err(NetSetupError::Write {
                key: c.key.clone(),
                value: c.value.clone(),
                source,
            });
        }
    }
    Ok(())
}

/// Writes the previous values back, in reverse order; tries every one and reports all failures.
pub fn restore(changes: &[Change], host: &mut dyn Host) -> Result<(), NetSetupError> {
    let mut failures = Vec::new();
    for c in changes.iter().rev() {
        if let Err(e) = host.write(&c.key, &c.previous) {
            failures.push(format!("{} back to {}: {e}", c.key, c.previous));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(NetSetupError::Restore(failures))
    }
}

/// The original values of every setting the appliance changed, kept in a file across daemon restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostState {
    /// Every change made since the appliance was first started (previous = the value found before it).
    pub changes: Vec<Change>,
}

impl HostState {
    /// The state file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("host-settings.json")
    }

    /// The saved state, or `None` if there is no file.
    pub fn load(path: &Path) -> Result<Option<Self>, NetSetupError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(NetSetupError::State {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| NetSetupError::StateFormat {
                path: path.to_owned(),
                message: e.to_string(),
            })
    }

    pub fn save(&self, path: &Path) -> Result<(), NetSetupError> {
        let err = |source| NetSetupError::State {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("host state serializes");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    pub fn remove(path: &Path) -> Result<(), NetSetupError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NetSetupError::State {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Adds `changes` made now: a key already recorded keeps its original previous value (found before the
    /// first start), a new key records the value this run found.
    pub fn merge(&mut self, changes: &[Change]) {
        for c in changes {
            match self.changes.iter_mut().find(|s| s.key == c.key) {
                Some(saved) => saved.value = c.value.clone(),
                None => self.changes.push(c.clone()),
            }
        }
    }
}

/// The host settings of one daemon start: what it changed, and what the first start found.
#[derive(Debug)]
pub struct Session {
    path: PathBuf,
    /// Changed by this start (undone if start-up fails).
    pub made: Vec<Change>,
    /// Everything changed since the first start (undone by [`Session::restore_all`]).
    pub state: HostState,
    /// Whether a state file existed: an earlier daemon left the data plane (and these settings) in place.
    pub inherited: bool,
}

impl Session {
    /// Applies `req` and records the original values in `state_dir` (see [`HostState`]).
    pub fn start(req: &Requirements, state_dir: &Path, host: &mut dyn Host) -> Result<Self, NetSetupError> {
        let path = HostState::path(state_dir);
        let saved = HostState::load(&path)?;
        let inherited = saved.is_some();
        let mut state = saved.unwrap_or_default();
        let made = plan(req, host)?;
        apply(&made, host)?;
        state.merge(&made);
        if let Err(e) = state.save(&path) {
            let _ = restore(&made, host);
            return Err(e);
        }
        Ok(Session {
            path,
            made,
            state,
            inherited,
        })
    }

    /// Start-up failed: undo this start's changes; forget the state if it was this start's alone.
    pub fn abandon(self, host: &mut dyn Host) {
        let _ = restore(&self.made, host);
        if self.inherited {
            let mut state = self.state;
            state
                .changes
                .retain(|c| !self.made.iter().any(|m| m.key == c.key && m.previous == c.previous));
            let _ = state.save(&self.path);
        } else {
            let _ = HostState::remove(&self.path);
        }
    }

    /// The appliance is stopped for good (`--flush`): restore every value the first start found.
    pub fn restore_all(self, host: &mut dyn Host) -> Result<(), NetSetupError> {
        restore(&self.state.changes, host)?;
        HostState::remove(&self.path)
    }
}

/// `statfs` type of bpffs.
pub const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Where bpffs is mounted by convention (systemd mounts it there at boot).
pub const BPF_FS_MOUNT: &str = "/sys/fs/bpf";

/// Makes sure `pin_dir` can be created on a bpffs: fine if its nearest existing ancestor is on bpffs; if that
/// ancestor is the conventional, unmounted mount point `/sys/fs/bpf`, bpffs is mounted there (and stays: the
/// pins live in it). Returns the mount point if it mounted one.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<Option<PathBuf>, NetSetupError> {
    let Some(existing) = pin_dir.ancestors().find(|a| a.exists()) else {
        return Err(NetSetupError::NotBpffs(pin_dir.to_owned()));
    };
    if is_bpffs(existing) {
        return Ok(None);
    }
    if existing != Path::new(BPF_FS_MOUNT) {
        return Err(NetSetupError::NotBpffs(pin_dir.to_owned()));
    }
    nix::mount::mount(
        Some("bpf"),
        BPF_FS_MOUNT,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| NetSetupError::MountBpffs(e.into()))?;
    Ok(Some(PathBuf::from(BPF_FS_MOUNT)))
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 as u32 == BPF_FS_MAGIC)
}

/// An interface of the calling process's network namespace and its IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    /// (address, prefix length), in the kernel's order (the primary address first).
    pub ipv4: Vec<(Ipv4Addr, u8)>,
}

/// Every interface of the calling process's network namespace.
pub fn interfaces() -> Result<Vec<Interface>, NetSetupError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| NetSetupError::Interfaces(e.into()))?;
    let mut out: Vec<Interface> = Vec::new();
    for a in addrs {
        let index = match out.iter().position(|i| i.name == a.interface_name) {
            Some(i) => i,
            None => {
                let index = nix::net::if_::if_nametoindex(a.interface_name.as_str()).unwrap_or(0);
                out.push(Interface {
                    name: a.interface_name.clone(),
                    index,
                    ipv4: Vec::new(),
                });
                out.len() - 1
            }
        };
        let Some(addr) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) else {
            continue;
        };
        let prefix = a
            .netmask
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map_or(32, |m| u32::from(m.ip()).count_ones() as u8);
        out[index].ipv4.push((addr.ip(), prefix));
    }
    Ok(out)
}

/// Makes the kernel resolve the neighbour `addr` (a next hop the data plane found unresolved): an empty
/// datagram to its discard port, routed by the kernel, which sends the ARP request first. The datagram
/// itself is harmless (discard, or an ICMP port unreachable back).
pub fn solicit_neighbour(addr: std::net::Ipv4Addr) -> std::io::Result<()> {
    let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))?;
    socket.send_to(&[], (addr, 9)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(range: &str) -> DryRun {
        DryRun::with(&[
            (IP_FORWARD, "0"),
            ("net.ipv4.conf.all.rp_filter", "2"),
            ("net.ipv4.conf.in0.rp_filter", "1"),
            ("net.ipv4.conf.out0.rp_filter", "0"),
            ("net.ipv4.conf.all.send_redirects", "1"),
            ("net.ipv4.conf.in0.send_redirects", "1"),
            ("net.ipv4.conf.out0.send_redirects", "0"),
            (LOCAL_PORT_RANGE, range),
        ])
    }

    fn req() -> Requirements {
        Requirements {
            data_interfaces: vec!["in0".into(), "out0".into()],
            snat_ports: (40000, 65535),
        }
    }

    #[test]
    fn plan_lists_only_what_changes_and_apply_restore_round_trip() {
        let mut h = host("32768\t60999");
        let changes = plan(&req(), &h).unwrap();
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "net.ipv4.ip_forward 0 -> 1",
                "net.ipv4.conf.all.rp_filter 2 -> 0",
                "net.ipv4.conf.all.send_redirects 1 -> 0",
                "net.ipv4.conf.in0.rp_filter 1 -> 0",
                "net.ipv4.conf.in0.send_redirects 1 -> 0",
                "net.ipv4.ip_local_port_range 32768\t60999 -> 32768\t39999",
            ]
        );
        assert!(h.writes.is_empty(), "planning writes nothing");
        apply(&changes, &mut h).unwrap();
        assert_eq!(h.writes.len(), 6);
        assert!(plan(&req(), &h).unwrap().is_empty(), "applied: nothing left to do");
        let before = host("32768\t60999").values;
        restore(&changes, &mut h).unwrap();
        assert_eq!(h.values, before);
    }

    #[test]
    fn apply_rolls_back_on_failure() {
        let mut h = host("32768 60999");
        let mut changes = plan(&req(), &h).unwrap();
        changes.insert(
            2,
            Change {
                key: "net.ipv4.conf.gone0.rp_filter".into(),
                previous: "1".into(),
                value: "0".into(),
            },
        );
        let before = h.values.clone();
        let err = apply(&changes, &mut h).unwrap_err();
        assert!(err.to_string().contains("gone0"), "{err}");
        assert_eq!(h.values, before, "what was written was restored");
    }

    #[test]
    fn port_range_moves_below_snat_only_when_overlapping() {
        assert_eq!(
            host_port_range((32768, 60999), (40000, 65535)).unwrap(),
            Some((32768, 39999))
        );
        assert_eq!(host_port_range((32768, 39999), (40000, 65535)).unwrap(), None);
        assert_eq!(host_port_range((10000, 20000), (40000, 65535)).unwrap(), None);
        // Too little room above the current low end: keep MIN_HOST_PORTS ports right below the SNAT range.
        assert_eq!(
            host_port_range((39500, 60999), (40000, 65535)).unwrap(),
            Some((38976, 39999))
        );
        assert_eq!(
            host_port_range((45000, 50000), (40000, 65535)).unwrap(),
            Some((38976, 39999))
        );
        assert!(matches!(
            host_port_range((32768, 60999), (1500, 65535)),
            Err(NetSetupError::SnatRange(1500, 65535))
        ));
        assert!(host_port_range((32768, 60999), (50000, 40000)).is_err());
    }

    #[test]
    fn rp_filter_of_an_unknown_interface_is_a_read_error() {
        let h = host("32768 60999");
        let req = Requirements {
            data_interfaces: vec!["nope0".into()],
            snat_ports: (40000, 65535),
        };
        let err = plan(&req, &h).unwrap_err();
        assert!(matches!(err, NetSetupError::Read { ref key, .. } if key == "net.ipv4.conf.nope0.rp_filter"));
    }

    #[test]
    fn sysctl_paths_keep_dots_in_interface_names() {
        assert_eq!(key_path(IP_FORWARD), Path::new("/proc/sys/net/ipv4/ip_forward"));
        assert_eq!(
            key_path(&rp_filter_key("eth0.100")),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
    }

    #[test]
    fn host_state_keeps_the_first_previous_value() {
        let dir = std::env::temp_dir().join(format!("portcullis-netsetup-{}", std::process::id()));
        let path = HostState::path(&dir);
        assert_eq!(HostState::load(&path).unwrap(), None);
        let mut state = HostState::default();
        state.merge(&[Change {
            key: IP_FORWARD.into(),
            previous: "0".into(),
            value: "1".into(),
        }]);
        state.save(&path).unwrap();
        let mut again = HostState::load(&path).unwrap().unwrap();
        // A restart finds ip_forward already 1 (and so plans nothing for it) but changes the port range.
        again.merge(&[Change {
            key: LOCAL_PORT_RANGE.into(),
            previous: "32768\t60999".into(),
            value: "32768\t39999".into(),
        }]);
        assert_eq!(again.changes[0].previous, "0");
        assert_eq!(again.changes.len(), 2);
        HostState::remove(&path).unwrap();
        HostState::remove(&path).unwrap();
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn restart_keeps_the_first_values_and_flush_restores_them() {
        let dir = std::env::temp_dir().join(format!("portcullis-session-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let original = host("32768\t60999");
        let mut h = original.clone();
        let first = Session::start(&req(), &dir, &mut h).unwrap();
        assert_eq!(first.made.len(), 6);
        assert!(!first.inherited);
        // The daemon stops without --flush: settings stay. The next start changes nothing but knows the originals.
        drop(first);
        let second = Session::start(&req(), &dir, &mut h).unwrap();
        assert!(second.made.is_empty());
        assert!(second.inherited);
        assert_eq!(second.state.changes.len(), 6);
        second.restore_all(&mut h).unwrap();
        assert_eq!(h.values, original.values);
        assert!(!HostState::path(&dir).exists());
        // A start that fails undoes its own changes and leaves no state behind.
        let third = Session::start(&req(), &dir, &mut h).unwrap();
        third.abandon(&mut h);
        assert_eq!(h.values, original.values);
        assert!(!HostState::path(&dir).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pin_directory_outside_bpffs_is_refused() {
        let dir = std::env::temp_dir().join("portcullis-not-bpffs/pins");
        let e = ensure_bpffs(&dir).unwrap_err();
        assert!(matches!(e, NetSetupError::NotBpffs(_)), "{e}");
        assert!(!is_bpffs(Path::new("/proc")));
    }

    #[test]
    fn lists_loopback() {
        let all = interfaces().unwrap();
        let lo = all.iter().find(|i| i.name == "lo").expect("lo");
        assert!(lo.index > 0);
        assert!(lo.ipv4.contains(&(Ipv4Addr::LOCALHOST, 8)));
    }
}
