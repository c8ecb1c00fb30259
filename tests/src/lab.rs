//! The lab topology.
//!
//! ```text
//!  spoke (client)            onprem (private-range server)
//!  eth0 198.18.1.10/24       eth0 10.20.0.10/24
//!  default via 198.18.1.1    default via 10.20.0.1
//!        \                      /
//!         +------ sw: br0 -----+----------------------------+   (one-arm: inet is on br0 too)
//!                   |                                        |
//!  fw (the appliance)                                        |
//!  two-arm: in0  198.18.1.1/24 + 10.20.0.1/24               |
//!           out0 192.0.2.1/24 ---- veth ---- inet eth0       |
//!  one-arm: arm0 198.18.1.1/24 + 10.20.0.1/24 + 192.0.2.1/24 ... inet eth0 on br0
//!  default via 192.0.2.254
//!
//!  inet (the Internet): eth0 192.0.2.254/24; servers 203.0.113.10, .11, .66 and an outside client .50 on lo;
//!  routes: 192.0.2.0/24 only (replies to the spoke come back only if the appliance SNATs them)
//! ```
//!
//! The veth pitfalls of native XDP are taken care of: GRO on every non-appliance veth end (an XDP_REDIRECT into a
//! veth is dropped unless its peer has NAPI), an XDP_PASS program on the appliance's bridge-side peer `p-fw` (an
//! XDP_TX'd frame is only delivered if the peer has an XDP program, [`crate::xdp_pass`]), transmit checksum offload off on the client and
//! server ends (TCP over XDP_REDIRECT on veth loses CHECKSUM_PARTIAL), and permanent neighbour entries on the
//! appliance for its peers (`bpf_fib_lookup` answers NO_NEIGH until ARP resolves).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::HarnessError;
use crate::cmd::{self, Proc};
use crate::netns::{self, Netns};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
pub const FW_INTERNAL: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const SPOKE_NET: &str = "198.18.1.0/24";
pub const ONPREM: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 10);
pub const FW_ONPREM: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);
pub const FW_EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const INET_ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// Internet servers.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const SERVER2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
/// A "malicious" Internet address (threat-intelligence tests).
pub const BAD_SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// An Internet client (DNAT tests).
pub const OUTSIDE_CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);

/// Two interfaces (internal, external) or one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arms {
    Two,
    One,
}

/// A lab: five namespaces, a scratch directory and a bpffs pin directory, all removed on drop.
pub struct Lab {
    pub arms: Arms,
    /// `pce-<pid>-<n>`: namespaces are `<id>-spoke` etc.
    pub id: String,
    pub spoke: Netns,
    pub onprem: Netns,
    pub fw: Netns,
    pub inet: Netns,
    pub sw: Netns,
    /// Scratch directory (configs, logs, nginx prefixes).
    pub dir: PathBuf,
    /// A bpffs directory for the daemon's pins (not created; removed on drop).
    pub pin_dir: PathBuf,
    seq: AtomicU32,
    /// XDP_PASS links on the veth peers the appliance hairpins into (see [`crate::xdp_pass`]).
    peer_xdp: Vec<std::os::fd::OwnedFd>,
}

impl Lab {
    /// Builds the topology. Also deletes namespaces left behind by killed test processes.
    pub fn new(arms: Arms) -> Result<Self, HarnessError> {
        static LABS: AtomicU32 = AtomicU32::new(0);
        netns::sweep_stale();
        let id = format!(
            "{}{}-{}",
            netns::PREFIX,
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| HarnessError::Io {
            what: format!("creating {}", dir.display()),
            source: e,
        })?;
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&id);
        let ns = |role: &str| Netns::create(&format!("{id}-{role}"));
        // Field order = drop order: processes inside are killed as each namespace goes.
        let lab = Lab {
            arms,
            spoke: ns("spoke")?,
            onprem: ns("onprem")?,
            fw: ns("fw")?,
            inet: ns("inet")?,
            sw: ns("sw")?,
            id,
            dir,
            pin_dir,
            seq: AtomicU32::new(0),
            peer_xdp: Vec::new(),
        };
        let mut lab = lab;
        lab.build()?;
        // XDP_TX out of the appliance's internal interface (hairpin) needs an XDP program on its bridge-side peer.
        let link = lab.sw.enter(|| {
            let index = nix::net::if_::if_nametoindex("p-fw").map_err(std::io::Error::from)?;
            crate::xdp_pass::attach(index)
        })?;
        lab.peer_xdp.push(link.map_err(|e| HarnessError::Io {
            what: "attaching XDP_PASS to p-fw".into(),
            source: e,
        })?);
        Ok(lab)
    }

    /// The appliance's interface names: (internal, external); one-arm has one.
    pub fn fw_interfaces(&self) -> (&'static str, Option<&'static str>) {
        match self.arms {
            Arms::Two => ("in0", Some("out0")),
            Arms::One => ("arm0", None),
        }
    }

    fn build(&self) -> Result<(), HarnessError> {
        let sw = self.sw.name.as_str();
        self.sw.ip(&["link", "add", "br0", "type", "bridge"])?;
        self.sw.ip(&["link", "set", "br0", "up"])?;
        // A veth from `ns`/`inner` to the bridge port `port`.
        let to_bridge = |ns: &Netns, inner: &str, port: &str| -> Result<(), HarnessError> {
            ns.ip(&["link", "add", inner, "type", "veth", "peer", "name", port, "netns", sw])?;
            self.sw.ip(&["link", "set", port, "master", "br0", "up"])?;
            gro_on(&self.sw, port)?;
            ns.ip(&["link", "set", inner, "up"]).map(drop)
        };
        to_bridge(&self.spoke, "eth0", "p-spoke")?;
        to_bridge(&self.onprem, "eth0", "p-onprem")?;
        let (internal, external) = self.fw_interfaces();
        to_bridge(&self.fw, internal, "p-fw")?;
        match external {
            Some(ext) => {
                self.fw.ip(&[
                    "link",
                    "add",
                    ext,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &self.inet.name,
                ])?;
                self.fw.ip(&["link", "set", ext, "up"])?;
                self.inet.ip(&["link", "set", "eth0", "up"])?;
            }
            None => to_bridge(&self.inet, "eth0", "p-inet")?,
        }
        // Endpoints: GRO on (NAPI for XDP_TX/REDIRECT into them), tx checksum offload off (full checksums).
        for ns in [&self.spoke, &self.onprem, &self.inet] {
            gro_on(ns, "eth0")?;
            ns.run("ethtool", &["-K", "eth0", "tx", "off"], netns::CONFIG_TIMEOUT)?
                .ok()?;
        }

        self.spoke
            .ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])?;
        self.spoke
            .ip(&["route", "add", "default", "via", &FW_INTERNAL.to_string()])?;
        self.onprem
            .ip(&["addr", "add", &format!("{ONPREM}/24"), "dev", "eth0"])?;
        self.onprem
            .ip(&["route", "add", "default", "via", &FW_ONPREM.to_string()])?;

        self.fw
            .ip(&["addr", "add", &format!("{FW_INTERNAL}/24"), "dev", internal])?;
        self.fw
            .ip(&["addr", "add", &format!("{FW_ONPREM}/24"), "dev", internal])?;
        let ext = external.unwrap_or(internal);
        self.fw.ip(&["addr", "add", &format!("{FW_EXTERNAL}/24"), "dev", ext])?;
        self.fw
            .ip(&["route", "add", "default", "via", &INET_ROUTER.to_string(), "dev", ext])?;

        self.inet
            .ip(&["addr", "add", &format!("{INET_ROUTER}/24"), "dev", "eth0"])?;
        for ip in [SERVER, SERVER2, BAD_SERVER, OUTSIDE_CLIENT] {
            self.inet.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
        }

        // The appliance knows its neighbours from the start.
        let neigh = |ip: Ipv4Addr, ns: &Netns, dev: &str| -> Result<(), HarnessError> {
            let mac = ns.mac("eth0")?;
            self.fw
                .ip(&[
                    "neigh",
                    "replace",
                    &ip.to_string(),
                    "lladdr",
                    &mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ])
                .map(drop)
        };
        neigh(CLIENT, &self.spoke, internal)?;
        neigh(ONPREM, &self.onprem, internal)?;
        neigh(INET_ROUTER, &self.inet, ext)?;
        Ok(())
    }

    /// Turns on plain kernel forwarding on the appliance (harness self-tests, without portcullis), with an
    /// nftables masquerade toward the Internet standing in for SNAT.
    pub fn kernel_forwarding(&self) -> Result<(), HarnessError> {
        self.fw.sysctl("net.ipv4.ip_forward", "1")?;
        self.fw.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
        let ext = self.fw_interfaces().1.unwrap_or(self.fw_interfaces().0);
        let rules = format!(
            "table ip labnat {{\n chain post {{\n  type nat hook postrouting priority srcnat; policy accept;\n  \
             oifname \"{ext}\" ip daddr 203.0.113.0/24 masquerade\n }}\n}}\n"
        );
        let path = self.write("labnat.nft", &rules)?;
        self.fw
            .run("nft", &["-f", &path.to_string_lossy()], netns::CONFIG_TIMEOUT)?
            .ok()
            .map(drop)
    }

    /// A fresh name for a process or file (`nginx-3`).
    pub fn unique(&self, base: &str) -> String {
        format!("{base}-{}", self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Writes `name` in the scratch directory.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf, HarnessError> {
        let p = self.dir.join(name);
        std::fs::write(&p, text).map_err(|e| HarnessError::Io {
            what: format!("writing {}", p.display()),
            source: e,
        })?;
        Ok(p)
    }

    /// Starts `program args…` in `ns`, output in the scratch directory.
    pub fn spawn(&self, ns: &Netns, name: &str, program: &str, args: &[&str]) -> Result<Proc, HarnessError> {
        let name = self.unique(name);
        Proc::spawn(&name, ns.command(program).args(args), &self.dir)
    }

    /// Starts `portcullis run --config CONFIG` in the appliance namespace with the lab's pin and state
    /// directories, plus `extra` arguments.
    pub fn portcullis(&self, binary: &Path, config: &Path, extra: &[&str]) -> Result<Daemon, HarnessError> {
        let pin = self.pin_dir.to_string_lossy().into_owned();
        let state = self.dir.join("state").to_string_lossy().into_owned();
        let cfg = config.to_string_lossy().into_owned();
        let mut args = vec!["run", "--config", &cfg, "--pin-dir", &pin, "--state-dir", &state];
        args.extend_from_slice(extra);
        let proc = self.spawn(&self.fw, "portcullis", &binary.to_string_lossy(), &args)?;
        Ok(Daemon { proc })
    }
}

fn gro_on(ns: &Netns, dev: &str) -> Result<(), HarnessError> {
    ns.run("ethtool", &["-K", dev, "gro", "on"], netns::CONFIG_TIMEOUT)?
        .ok()
        .map(drop)
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Namespaces are fields and drop after this (killing what runs inside). Pins and files go here.
        if self.pin_dir.starts_with("/sys/fs/bpf") && self.pin_dir.exists() {
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
        if std::env::var_os("PCE_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("PCE_KEEP: lab files kept in {}", self.dir.display());
        }
    }
}

/// A running `portcullis run`.
pub struct Daemon {
    pub proc: Proc,
}

impl Daemon {
    /// Waits until the daemon logs `ready`; fails with its stderr if it exits first or takes too long.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        self.wait_log("ready (pid", timeout)
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<(), HarnessError> {
        let mut exited = None;
        let found = cmd::eventually(timeout, || {
            if self.proc.stderr().contains(needle) {
                return Some(true);
            }
            if let Some(s) = self.proc.try_status() {
                exited = Some(s);
                return Some(false);
            }
            None
        });
        match (found, exited) {
            (Some(true), _) => Ok(()),
            (_, Some(status)) => Err(HarnessError::Failed {
                command: self.proc.command.clone(),
                detail: format!(
                    "exited ({status}) before logging `{needle}`:\n{}",
                    tail(&self.proc.stderr())
                ),
            }),
            _ => Err(HarnessError::Timeout {
                what: format!("`{needle}` in the log of {}", self.proc.command),
                after: timeout,
                detail: tail(&self.proc.stderr()),
            }),
        }
    }

    /// How often stderr contains `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.proc.stderr().matches(needle).count()
    }

    /// SIGHUP (reload).
    pub fn reload(&self) -> Result<(), HarnessError> {
        self.proc.signal(nix::sys::signal::Signal::SIGHUP)
    }

    /// SIGTERM, then waits up to `timeout` for the exit; returns whether it exited successfully.
    pub fn stop(&mut self, timeout: Duration) -> Result<bool, HarnessError> {
        self.proc.signal(nix::sys::signal::Signal::SIGTERM)?;
        match self.proc.wait_timeout(timeout) {
            Some(s) => Ok(s.success()),
            None => Err(HarnessError::Timeout {
                what: format!("{} to exit after SIGTERM", self.proc.command),
                after: timeout,
                detail: self.proc.stderr(),
            }),
        }
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }
}

/// The last few kilobytes of a log, for messages (a verifier log can be megabytes).
pub fn tail(log: &str) -> String {
    const KEEP: usize = 6000;
    if log.len() <= KEEP {
        return log.to_owned();
    }
    let mut start = log.len() - KEEP;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} bytes]{}", &log[start..])
}

/// `ip:port`.
pub fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}
