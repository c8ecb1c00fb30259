//! `portcullis lab` XDP smoke test: attach `xdp_ingress` to a veth inside throw-away network
//! namespaces, send real traffic through it, and report the attach mode and the class counters.
//!
//! Topology (both namespaces are created here and deleted afterwards, also on failure; neither gets
//! a route out, and nothing is created in the caller's namespace):
//!
//! ```text
//!  netns pc-lab-<pid>-<n>                          netns pc-lab-<pid>-<n>-peer
//!  ┌───────────────────────────────┐               ┌──────────────────────────────┐
//!  │ pcl-fw 198.18.1.1/24          │ veth          │ pcl-peer 198.18.1.10/24      │
//!  │        198.18.1.2/32 (denied) │◀─────────────▶│                              │
//!  │ xdp_ingress on pcl-fw ingress │               │ traffic sources              │
//!  └───────────────────────────────┘               └──────────────────────────────┘
//! ```
//!
//! Two namespaces, not one: between two addresses of the same namespace the kernel routes over
//! `lo`, so the veth (and XDP) would never see the traffic. `xdp_ingress` sees what the peer sends
//! to the firewall side:
//! - UDP and TCP to 198.18.1.1 (closed ports): must pass; the firewall's stack answers with ICMP
//!   port unreachable / RST, which the peer observes as "connection refused".
//! - ICMP: the firewall side sends UDP to a closed port of the peer; the peer's ICMP port
//!   unreachable enters through `xdp_ingress` and must pass (the firewall's socket sees "refused").
//! - UDP and TCP to 198.18.1.2, which is in `DENY_V4`: must be dropped (no answer at all).
//! - ARP in both directions: passes.
//!
//! (No `ping`: iputils is not on the base image, and the ICMP errors above exercise the ICMP class
//! without a raw socket.)
#![forbid(unsafe_code)]

use std::{
    fs::File,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

use crate::bpf::{self, AttachMode, BpfError, ClassCounters, DataPlane, RuleId};

/// Interface names inside the lab namespaces (fresh namespaces, so fixed names cannot collide).
const FW_IF: &str = "pcl-fw";
const PEER_IF: &str = "pcl-peer";
/// Addresses from the 198.18.0.0/15 benchmarking range (RFC 2544), never routed anywhere.
const FW_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const DENIED_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const PREFIX_LEN: u8 = 24;
/// Rule id recorded for the lab's deny entry.
const DENY_RULE: RuleId = 1;
/// UDP/TCP port with no listener (discard).
const CLOSED_PORT: u16 = 9;
/// Datagrams sent per UDP probe.
const UDP_PROBES: u32 = 3;
/// How long a probe waits for an answer that must (or must not) come.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a denied probe waits to make sure no answer comes.
const SILENCE_TIMEOUT: Duration = Duration::from_millis(500);
/// Upper bound for the data plane thread's steps (load + attach, and the whole run).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the lab XDP smoke test.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot run the XDP lab: {0}")]
    NotPrivileged(String),
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("entering network namespace {namespace}")]
    EnterNetns {
        namespace: String,
        #[source]
        source: io::Error,
    },
    #[error("data plane in network namespace {namespace}")]
    Bpf {
        namespace: String,
        #[source]
        source: BpfError,
    },
    #[error("socket in network namespace {namespace}: {what}")]
    Socket {
        namespace: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the {0} thread stopped unexpectedly")]
    Thread(&'static str),
    #[error("timed out waiting for the data plane thread to {0}")]
    Timeout(&'static str),
}

/// One expectation of the smoke test and whether it held.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SmokeCheck {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// What [`xdp_smoke`] did and saw.
#[derive(Clone, Debug, serde::Serialize)]
pub struct XdpSmokeReport {
    /// The namespace `xdp_ingress` was attached in, and its peer (both deleted by now).
    pub namespace: String,
    pub peer_namespace: String,
    /// The interface `xdp_ingress` was attached to (inside `namespace`).
    pub interface: &'static str,
    /// Native (driver) mode, or the generic (skb) fallback.
    pub mode: AttachMode,
    /// Counters read after the traffic, before detaching (cumulative since the load).
    pub counters: ClassCounters,
    /// The behaviour and counter expectations.
    pub checks: Vec<SmokeCheck>,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
}

impl XdpSmokeReport {
    /// Whether every check held.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The checks that did not hold.
    pub fn failures(&self) -> impl Iterator<Item = &SmokeCheck> {
        self.checks.iter().filter(|c| !c.ok)
    }
}

/// Runs the XDP smoke test (root only; takes about two seconds). See the module documentation.
///
/// `Err` means the lab could not be set up or torn down properly; an `Ok` report can still contain
/// failed checks ([`XdpSmokeReport::ok`]).
pub fn xdp_smoke() -> Result<XdpSmokeReport, LabError> {
    bpf::privileged_env().map_err(LabError::NotPrivileged)?;
    let started = Instant::now();

    static RUNS: AtomicU32 = AtomicU32::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let namespace = format!("pc-lab-{}-{run}", std::process::id());
    let peer_namespace = format!("{namespace}-peer");

    // Guards first: whatever fails below, both namespaces are deleted when they drop.
    let fw_ns = Netns::create(&namespace)?;
    let peer_ns = Netns::create(&peer_namespace)?;
    setup_topology(&fw_ns, &peer_ns)?;

    // The data plane lives on its own thread inside the firewall namespace: load, attach, wait
    // until the traffic is done, read the counters, detach.
    let (attached_tx, attached_rx) = mpsc::channel::<Result<AttachMode, LabError>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let plane_thread = {
        let namespace = namespace.clone();
        thread::Builder::new()
            .name("lab-xdp-plane".into())
            .spawn(move || data_plane_thread(&namespace, &attached_tx, &done_rx))
            .map_err(|_| LabError::Thread("data plane"))?
    };

    let outcome = attached_rx
        .recv_timeout(STEP_TIMEOUT)
        .map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => LabError::Timeout("load and attach"),
            mpsc::RecvTimeoutError::Disconnected => LabError::Thread("data plane"),
        })
        .and_then(|attached| {
            let mode = attached?;
            Ok((mode, send_traffic(&namespace, &peer_namespace)?))
        });

    // Whatever happened, let the data plane thread read the counters, detach and finish before
    // the namespaces go away.
    let _ = done_tx.send(());
    let counters = join_with_timeout(plane_thread, STEP_TIMEOUT);

    let (mode, observed) = outcome?;
    let counters = counters??;

    fw_ns.delete()?;
    peer_ns.delete()?;

    Ok(XdpSmokeReport {
        checks: checks(&observed, &counters),
        namespace,
        peer_namespace,
        interface: FW_IF,
        mode,
        counters,
        elapsed: started.elapsed(),
    })
}

fn data_plane_thread(
    namespace: &str,
    attached_tx: &mpsc::Sender<Result<AttachMode, LabError>>,
    done_rx: &mpsc::Receiver<()>,
) -> Result<ClassCounters, LabError> {
    let bpf_err = |source| LabError::Bpf {
        namespace: namespace.to_owned(),
        source,
    };
    let setup = || -> Result<(DataPlane, AttachMode), LabError> {
        enter_netns(namespace)?;
        let mut plane = DataPlane::load().map_err(bpf_err)?;
        plane.deny_v4(DENIED_ADDR, 32, DENY_RULE).map_err(bpf_err)?;
        let mode = plane.attach_interface(FW_IF).map_err(bpf_err)?;
        Ok((plane, mode))
    };
    let (mut plane, mode) = match setup() {
        Ok(ok) => ok,
        Err(e) => {
            let _ = attached_tx.send(Err(e));
            return Err(LabError::Thread("data plane setup"));
        }
    };
    if attached_tx.send(Ok(mode)).is_err() {
        return Err(LabError::Thread("lab"));
    }
    // Keep the link alive until the traffic is done (or the caller went away).
    let _ = done_rx.recv_timeout(STEP_TIMEOUT);
    let counters = plane.counters().map_err(bpf_err)?;
    plane.detach().map_err(bpf_err)?;
    Ok(counters)
}

/// What the traffic probes observed.
#[derive(Debug)]
struct Observed {
    /// The peer's UDP to the firewall address was answered with ICMP port unreachable.
    udp_refused: bool,
    /// The peer's TCP SYN to the firewall address was answered with RST.
    tcp_refused: bool,
    /// The firewall side's UDP to the peer was answered with ICMP port unreachable (which came in
    /// through `xdp_ingress`).
    icmp_seen: bool,
    /// Answers to the peer's UDP to the denied address (must be none).
    denied_udp_answered: bool,
    /// Outcome of the peer's TCP connect to the denied address (must time out).
    denied_tcp: io::ErrorKind,
}

fn send_traffic(namespace: &str, peer_namespace: &str) -> Result<Observed, LabError> {
    let fw = SocketAddr::V4(SocketAddrV4::new(FW_ADDR, CLOSED_PORT));
    let denied = SocketAddr::V4(SocketAddrV4::new(DENIED_ADDR, CLOSED_PORT));
    let peer = SocketAddr::V4(SocketAddrV4::new(PEER_ADDR, CLOSED_PORT));

    let ns = peer_namespace.to_owned();
    let mut observed = in_netns(peer_namespace, move || -> Result<Observed, LabError> {
        let udp_refused = udp_probe(&ns, fw, UDP_PROBES, ANSWER_TIMEOUT)?;
        let tcp_refused = matches!(
            TcpStream::connect_timeout(&fw, ANSWER_TIMEOUT),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
        );
        let denied_udp_answered = udp_probe(&ns, denied, UDP_PROBES, SILENCE_TIMEOUT)?;
        let denied_tcp = match TcpStream::connect_timeout(&denied, ANSWER_TIMEOUT) {
            Ok(_) => io::ErrorKind::Other,
            Err(e) => e.kind(),
        };
        Ok(Observed {
            udp_refused,
            tcp_refused,
            icmp_seen: false,
            denied_udp_answered,
            denied_tcp,
        })
    })??;

    let ns = namespace.to_owned();
    observed.icmp_seen = in_netns(namespace, move || udp_probe(&ns, peer, 1, ANSWER_TIMEOUT))??;
    Ok(observed)
}

/// Sends `count` datagrams from a connected UDP socket to `to` (a closed port) and reports whether
/// an ICMP port unreachable came back (the kernel turns it into `ECONNREFUSED` on the socket).
fn udp_probe(namespace: &str, to: SocketAddr, count: u32, wait: Duration) -> Result<bool, LabError> {
    let socket_err = |what| {
        let namespace = namespace.to_owned();
        move |source| LabError::Socket {
            namespace,
            what,
            source,
        }
    };
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(socket_err("bind"))?;
    socket.connect(to).map_err(socket_err("connect"))?;
    socket
        .set_read_timeout(Some(wait))
        .map_err(socket_err("set_read_timeout"))?;
    let mut refused = false;
    for i in 0..count {
        // The pending error can surface on a later send instead of the recv.
        match socket.send(format!("portcullis lab probe {i}").as_bytes()) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => refused = true,
            Err(e) => return Err(socket_err("send")(e)),
            Ok(_) => {}
        }
        let mut buf = [0u8; 64];
        match socket.recv(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => refused = true,
            // Timed out (EAGAIN) or, unexpectedly, data: neither is a refusal.
            _ => {}
        }
    }
    Ok(refused)
}

fn checks(observed: &Observed, counters: &ClassCounters) -> Vec<SmokeCheck> {
    let check = |name, ok, detail: String| SmokeCheck { name, ok, detail };
    vec![
        check(
            "udp_passed",
            observed.udp_refused,
            format!("UDP {PEER_ADDR} → {FW_ADDR}:{CLOSED_PORT} reached the stack (port unreachable came back)"),
        ),
        check(
            "tcp_passed",
            observed.tcp_refused,
            format!("TCP SYN {PEER_ADDR} → {FW_ADDR}:{CLOSED_PORT} reached the stack (RST came back)"),
        ),
        check(
            "icmp_passed",
            observed.icmp_seen,
            format!("ICMP port unreachable {PEER_ADDR} → {FW_ADDR} reached the socket"),
        ),
        check(
            "denied_udp_dropped",
            !observed.denied_udp_answered,
            format!("UDP to denied {DENIED_ADDR} got no answer"),
        ),
        check(
            "denied_tcp_dropped",
            matches!(observed.denied_tcp, io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock),
            format!(
                "TCP connect to denied {DENIED_ADDR} timed out (outcome: {})",
                observed.denied_tcp
            ),
        ),
        check(
            "udp_counted",
            counters.ipv4_udp >= u64::from(2 * UDP_PROBES),
            format!(
                "ipv4_udp = {} (≥ {} sent to {FW_ADDR} and {DENIED_ADDR})",
                counters.ipv4_udp,
                2 * UDP_PROBES
            ),
        ),
        check(
            "tcp_counted",
            counters.ipv4_tcp >= 2,
            format!("ipv4_tcp = {} (≥ 2 SYNs)", counters.ipv4_tcp),
        ),
        check(
            "icmp_counted",
            counters.ipv4_icmp >= 1,
            format!("ipv4_icmp = {} (≥ 1 port unreachable)", counters.ipv4_icmp),
        ),
        check(
            "arp_counted",
            counters.arp >= 1,
            format!("arp = {} (≥ 1)", counters.arp),
        ),
        check(
            "deny_counted",
            counters.deny_v4 > u64::from(UDP_PROBES),
            format!(
                "deny_v4 = {} (≥ {UDP_PROBES} datagrams + ≥ 1 SYN to {DENIED_ADDR})",
                counters.deny_v4
            ),
        ),
        check(
            "nothing_malformed",
            counters.malformed() == 0,
            format!("malformed = {}", counters.malformed()),
        ),
    ]
}

/// Creates the veth pair across the two namespaces and configures addresses.
fn setup_topology(fw: &Netns, peer: &Netns) -> Result<(), LabError> {
    let (fw, peer) = (fw.name.as_str(), peer.name.as_str());
    let fw_cidr = format!("{FW_ADDR}/{PREFIX_LEN}");
    let denied_cidr = format!("{DENIED_ADDR}/32");
    let peer_cidr = format!("{PEER_ADDR}/{PREFIX_LEN}");
    let steps: [&[&str]; 8] = [
        &[
            "-n", fw, "link", "add", FW_IF, "type", "veth", "peer", "name", PEER_IF, "netns", peer,
        ],
        &["-n", fw, "addr", "add", &fw_cidr, "dev", FW_IF],
        &["-n", fw, "addr", "add", &denied_cidr, "dev", FW_IF],
        &["-n", fw, "link", "set", "lo", "up"],
        &["-n", fw, "link", "set", FW_IF, "up"],
        &["-n", peer, "addr", "add", &peer_cidr, "dev", PEER_IF],
        &["-n", peer, "link", "set", "lo", "up"],
        &["-n", peer, "link", "set", PEER_IF, "up"],
    ];
    for args in steps {
        ip(args)?;
    }
    Ok(())
}

/// Runs `ip <args>` and fails with its stderr if it fails.
fn ip(args: &[&str]) -> Result<(), LabError> {
    let command = format!("ip {}", args.join(" "));
    let output = Command::new("ip").args(args).output().map_err(|e| LabError::Command {
        command: command.clone(),
        detail: format!("{e} (is iproute2 installed?)"),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            command,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// A named network namespace (`ip netns add`), deleted when dropped.
struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    fn create(name: &str) -> Result<Self, LabError> {
        // A namespace of this name can only be left over from a dead process with our pid.
        if std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            ip(&["netns", "delete", name])?;
        }
        ip(&["netns", "add", name])?;
        Ok(Netns {
            name: name.to_owned(),
            deleted: false,
        })
    }

    /// Deletes the namespace, reporting failure (dropping deletes it too, silently).
    fn delete(mut self) -> Result<(), LabError> {
        self.deleted = true;
        ip(&["netns", "delete", &self.name])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = ip(&["netns", "delete", &self.name]);
        }
    }
}

/// Moves the calling thread into the named network namespace (for good: use a dedicated thread).
fn enter_netns(namespace: &str) -> Result<(), LabError> {
    let enter_err = |source| LabError::EnterNetns {
        namespace: namespace.to_owned(),
        source,
    };
    let file = File::open(format!("/run/netns/{namespace}")).map_err(enter_err)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| enter_err(errno.into()))
}

/// Runs `f` on a new thread inside the named network namespace (sockets it creates stay there).
fn in_netns<T: Send + 'static>(namespace: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, LabError> {
    let namespace = namespace.to_owned();
    thread::Builder::new()
        .name("lab-netns".into())
        .spawn(move || enter_netns(&namespace).map(|()| f()))
        .map_err(|_| LabError::Thread("netns"))?
        .join()
        .map_err(|_| LabError::Thread("netns"))?
}

/// Joins `handle`, giving up after `timeout` (the thread is then left to finish on its own).
fn join_with_timeout<T>(
    handle: thread::JoinHandle<Result<T, LabError>>,
    timeout: Duration,
) -> Result<Result<T, LabError>, LabError> {
    let deadline = Instant::now() + timeout;
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            return Err(LabError::Timeout("finish"));
        }
        thread::sleep(Duration::from_millis(10));
    }
    handle.join().map_err(|_| LabError::Thread("data plane"))
}
