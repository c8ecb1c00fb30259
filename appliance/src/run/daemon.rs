//! The running daemon: host settings, data plane, flow-event thread, signal loop, shutdown.
#![forbid(unsafe_code)]

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use portcullis_rules::{Loaded, NoResolutions, Policy, ThreatFeed};

use super::flowlog::{self, FlowLog, Record};
use super::settings::{FlowLogTarget, Settings};
use super::signals::{self, Request};
use super::{Options, RunError, load_config, load_feed, log};
use crate::bpf::{DataPlane, DataPlaneSettings, EventReader, FlowEvent};
use crate::netsetup::{self, ProcSys, Session};
use crate::proxy::steer::{Spec, Steering};
use crate::proxy::{EventSink, Proxy, ProxyConfig};

/// How long a stopping proxy lets open connections finish.
const PROXY_DRAIN: Duration = Duration::from_secs(2);

/// The flow log, shared by the data plane's event thread and the proxy.
type SharedLog = Arc<Mutex<FlowLog>>;

/// The application proxy and the steering that feeds it.
struct AppProxy {
    proxy: Proxy,
    steering: Steering,
    /// Writes the proxy's flow records, so a slow log file never stalls a proxy thread.
    writer: thread::JoinHandle<u64>,
    /// Records dropped because the writer's queue was full (counted, never blocking a connection).
    lost: Arc<AtomicU64>,
}

/// Proxy flow records queued for the writer thread at most.
const APP_LOG_QUEUE: usize = 16_384;

impl AppProxy {
    fn start(
        opts: &Options,
        settings: &Settings,
        policy: &Policy,
        feed: Option<ThreatFeed>,
        log: SharedLog,
    ) -> Result<Self, RunError> {
        // Application-rule traffic always leaves with the appliance's address (Azure SNATs it, §3).
        let source = settings
            .snat_addresses
            .first()
            .copied()
            .filter(|a| settings.local_addresses.contains(a));
        let mut config = ProxyConfig::new(source);
        config.listen.set_port(opts.proxy_port);
        config.timeouts = opts.proxy_timeouts;
        config.limits = opts.proxy_limits;
        let (tx, rx) = mpsc::sync_channel::<flowlog::AppRecord>(APP_LOG_QUEUE);
        let writer = thread::Builder::new()
            .name("proxy-flow-log".into())
            .spawn(move || {
                let mut written = 0u64;
                for record in rx {
                    let mut out = log.lock().unwrap_or_else(|p| p.into_inner());
                    match out.write(&record) {
                        Ok(()) => written += 1,
                        Err(e) => log_write_error(&e),
                    }
                }
                written
            })
            .map_err(RunError::Signals)?;
        let lost = Arc::new(AtomicU64::new(0));
        let sink: EventSink = {
            let lost = lost.clone();
            Arc::new(move |event| {
                let record = flowlog::AppRecord::new(&event, SystemTime::now());
                let sent = tx.try_send(record);
                if sent.is_err() && lost.fetch_add(1, Ordering::Relaxed) == 0 {
                    super::log("proxy flow records dropped: the flow log does not keep up (counted; total at stop)");
                }
            })
        };
        let proxy = Proxy::start(config, policy.clone(), feed, sink)?;
        let spec = Spec {
            interfaces: vec![settings.internal.clone()],
            listen_port: opts.proxy_port,
        };
        match Steering::install(spec, app_ports(policy)) {
            Ok(steering) => Ok(Self {
                proxy,
                steering,
                writer,
                lost,
            }),
            Err(e) => {
                proxy.stop(Duration::ZERO);
                Err(e.into())
            }
        }
    }

    /// Stops the proxy (bounded drain), then the steering; the writer drains what is queued. Returns the
    /// proxy's counters and its flow records written and lost, as JSON.
    fn stop(self) -> String {
        let stats = self.proxy.stop(PROXY_DRAIN);
        if let Err(e) = self.steering.remove() {
            log(format!("removing the proxy steering: {}", chain(&e)));
        }
        // The proxy (and with it the sending side) is gone: the writer ends once its queue is empty.
        let deadline = Instant::now() + EVENT_THREAD_JOIN;
        while !self.writer.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let written = if self.writer.is_finished() {
            self.writer.join().unwrap_or(0)
        } else {
            log("proxy flow-log writer did not finish in time");
            0
        };
        let mut value = serde_json::to_value(&stats).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("flow_records_written".into(), written.into());
            map.insert("flow_records_lost".into(), self.lost.load(Ordering::Relaxed).into());
        }
        value.to_string()
    }
}

fn app_ports(policy: &Policy) -> std::collections::BTreeSet<u16> {
    policy.application_ports().keys().copied().collect()
}

fn log_write_error(e: &std::io::Error) {
    use std::sync::atomic::AtomicU64;
    static FAILED: AtomicU64 = AtomicU64::new(0);
    if FAILED.fetch_add(1, Ordering::Relaxed) == 0 {
        log(format!("writing the flow log: {e}"));
    }
}

/// How long the event thread waits for events before checking whether it should stop.
const EVENT_POLL: Duration = Duration::from_millis(200);
/// How often the main loop checks the data plane's counters (lost events).
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// How long shutdown waits for the event thread.
const EVENT_THREAD_JOIN: Duration = Duration::from_secs(5);

/// Policies by the data-plane generation they were loaded as (newest last; a few kept so events classified
/// just before a reload still name the rule that decided them).
#[derive(Clone, Default)]
struct Policies(Arc<RwLock<Vec<Generation>>>);

/// A loaded policy and its data-plane generation.
type Generation = (u32, Arc<Policy>);

/// How many loaded policies [`Policies`] remembers.
const POLICIES_KEPT: usize = 4;

impl Policies {
    fn push(&self, generation: u32, policy: Policy) {
        let mut v = self.0.write().unwrap_or_else(|p| p.into_inner());
        v.push((generation, Arc::new(policy)));
        if v.len() > POLICIES_KEPT {
            v.remove(0);
        }
    }

    /// The policy of `generation`, or the newest.
    fn get(&self, generation: u32) -> Option<Arc<Policy>> {
        let v = self.0.read().unwrap_or_else(|p| p.into_inner());
        v.iter()
            .rev()
            .find(|(g, _)| *g == generation)
            .or(v.last())
            .map(|(_, p)| p.clone())
    }
}

/// Runs until SIGTERM/SIGINT. See the module documentation of [`super`].
pub fn serve(
    opts: &Options,
    loaded: Loaded,
    settings: Settings,
    feed: Option<ThreatFeed>,
) -> Result<ExitCode, RunError> {
    let (tx, rx) = mpsc::channel();
    signals::spawn(tx).map_err(RunError::Signals)?;
    let started = Instant::now();

    let flow_log: SharedLog = Arc::new(Mutex::new(open_flow_log(&settings.flow_log)?));
    if let Some(mounted) = netsetup::ensure_bpffs(&settings.pin_dir)? {
        log(format!("mounted bpffs at {}", mounted.display()));
    }
    let host = Session::start(&settings.host, &opts.state_dir, &mut ProcSys)?;
    let taking_over = settings.pin_dir.join(portcullis_common::CT_PIN_NAME).exists();
    // The proxy and its steering first: the data plane passes application-rule ports to the host stack only
    // once something there takes them.
    let mut app_proxy = None;
    if opts.application_proxy {
        match AppProxy::start(opts, &settings, &loaded.config.policy, feed.clone(), flow_log.clone()) {
            Ok(p) => app_proxy = Some(p),
            Err(e) => {
                host.abandon(&mut ProcSys);
                return Err(e);
            }
        }
    }
    let plane = match start_plane(&settings, &loaded.config.policy, feed.as_ref(), app_proxy.is_some()) {
        Ok(p) => p,
        Err(e) => {
            if let Some(p) = app_proxy.take() {
                p.stop();
            }
            host.abandon(&mut ProcSys);
            return Err(e);
        }
    };
    let Started {
        mut plane,
        attached,
        generation,
        reader,
    } = plane;

    let policies = Policies::default();
    policies.push(generation, loaded.config.policy.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let events = {
        let (policies, stop) = (policies.clone(), stop.clone());
        thread::Builder::new()
            .name("flow-events".into())
            .spawn(move || event_loop(reader, flow_log, &policies, &stop))
            .map_err(RunError::Signals)?
    };

    // Start-up summary.
    log(format!(
        "policy {}: {} (data-plane generation {generation})",
        opts.config.display(),
        crate::cli::summary(&loaded.config.policy)
    ));
    for (interface, mode) in &attached {
        let role = if *interface == settings.internal {
            if settings.external.is_some() {
                "internal"
            } else {
                "internal+external (one-arm)"
            }
        } else {
            "external"
        };
        log(format!("xdp attached to {interface} ({role}) in {mode} mode"));
    }
    log(format!(
        "internal address {}; SNAT {} ports {}-{}; conntrack {} entries; pins {}",
        settings.internal_address,
        join(&settings.snat_addresses),
        settings.snat_ports.0,
        settings.snat_ports.1,
        settings.ct_max_entries,
        settings.pin_dir.display()
    ));
    if taking_over {
        log(format!(
            "took over the pinned conntrack/NAT state and XDP links in {}",
            settings.pin_dir.display()
        ));
    }
    if host.made.is_empty() {
        log("host settings: nothing to change");
    }
    for c in &host.made {
        log(format!("host setting {c}"));
    }
    match &app_proxy {
        Some(p) => {
            let ports = p.steering.ports();
            log(format!(
                "application proxy: TCP ports {} on {} steered to the transparent listener :{}; upstream from {}; resolver {}",
                if ports.is_empty() {
                    "(none)".to_owned()
                } else {
                    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
                },
                settings.internal,
                opts.proxy_port,
                p.proxy
                    .config()
                    .source
                    .map_or("the route's address".to_owned(), |a| a.to_string()),
                crate::proxy::dns_servers(&loaded.config.policy)
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        None => log("application proxy: off (--no-application-proxy): TCP to application-rule ports is dropped"),
    }
    if let Some(f) = &feed {
        log(format!(
            "threat-intelligence feed: {} address ranges",
            f.ips().ranges().len()
        ));
    }
    log(format!(
        "flow log: {}",
        match &settings.flow_log {
            FlowLogTarget::Stdout => "stdout".to_owned(),
            FlowLogTarget::File(p) => p.display().to_string(),
        }
    ));
    log(format!("ready (pid {})", std::process::id()));

    let mut reloads = (0u64, 0u64);
    let mut lost_reported = plane.stats().map_or(0, |s| s.events_lost);
    let appliance = loaded.config.appliance.clone();
    let stopped_by = loop {
        match rx.recv_timeout(HOUSEKEEPING) {
            Ok(Request::Reload) => {
                if reload(
                    opts,
                    &settings,
                    appliance.as_ref(),
                    &mut plane,
                    &policies,
                    app_proxy.as_mut(),
                ) {
                    reloads.0 += 1;
                } else {
                    reloads.1 += 1;
                }
            }
            Ok(Request::Stop(sig)) => break sig.as_str().to_owned(),
            Err(RecvTimeoutError::Timeout) => {
                // Flow events the ring buffer had no room for: say so when it happens, not only at exit.
                if let Ok(stats) = plane.stats()
                    && stats.events_lost > lost_reported
                {
                    log(format!(
                        "{} flow events lost (ring buffer full; {} in total)",
                        stats.events_lost - lost_reported,
                        stats.events_lost
                    ));
                    lost_reported = stats.events_lost;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break "signal thread gone".to_owned(),
        }
    };

    log(format!("{stopped_by}: stopping"));
    if let Some(p) = app_proxy.take() {
        let stats = p.stop();
        // A kept program keeps running without the proxy: application-rule ports are dropped, never
        // passed to a kernel that would forward them unfiltered.
        if let Err(e) = plane.set_application_proxy(false) {
            log(format!("turning the data plane's proxy pass off: {}", chain(&e)));
        }
        log(format!("application proxy: {stats}"));
    }
    stop.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + EVENT_THREAD_JOIN;
    while !events.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let written = if events.is_finished() {
        events.join().unwrap_or(0)
    } else {
        log("flow-event thread did not stop in time");
        0
    };
    let mut lost = 0;
    match plane.stats() {
        Ok(s) => {
            lost = s.events_lost;
            log(format!("data plane: {}", serde_json::to_string(&s).unwrap_or_default()));
        }
        Err(e) => log(format!("reading data-plane statistics: {}", chain(&e))),
    }
    log(format!(
        "flow events logged {written}, lost {lost}; reloads {} applied, {} rejected; up {:.1}s",
        reloads.0,
        reloads.1,
        started.elapsed().as_secs_f64()
    ));
    plane.close(!opts.flush)?;
    if opts.flush {
        host.restore_all(&mut ProcSys)?;
        log("flushed: pinned state and links removed, host settings restored");
    } else {
        log(format!(
            "pinned state and links kept in {} (restart to take over; --flush to remove)",
            settings.pin_dir.display()
        ));
    }
    Ok(ExitCode::SUCCESS)
}

struct Started {
    plane: DataPlane,
    attached: Vec<(String, crate::bpf::AttachMode)>,
    /// The data-plane generation of the loaded policy.
    generation: u32,
    reader: EventReader,
}

fn start_plane(
    settings: &Settings,
    policy: &Policy,
    feed: Option<&ThreatFeed>,
    proxy: bool,
) -> Result<Started, RunError> {
    let mut dp = data_plane_settings(settings);
    dp.application_proxy = proxy;
    let mut plane = DataPlane::open(&dp)?;
    let generation = match plane.load_policy(policy, feed, &NoResolutions) {
        Ok(n) => n,
        Err(e) => {
            let _ = plane.close(true);
            return Err(e.into());
        }
    };
    let attached = match plane.attach() {
        Ok(a) => a,
        Err(e) => {
            let _ = plane.close(true);
            return Err(e.into());
        }
    };
    let reader = match plane.take_events() {
        Ok(r) => r,
        Err(e) => {
            let _ = plane.close(true);
            return Err(e.into());
        }
    };
    Ok(Started {
        plane,
        attached,
        generation,
        reader,
    })
}

/// The data plane's settings for `settings` (the data plane's defaults for the rest).
pub fn data_plane_settings(settings: &Settings) -> DataPlaneSettings {
    let mut dp = DataPlaneSettings::new(settings.internal.clone(), settings.internal_address);
    dp.pin_dir = settings.pin_dir.clone();
    dp.external = settings.external.clone();
    dp.snat_addresses = settings.snat_addresses.clone();
    dp.snat_ports = settings.snat_ports;
    dp.local_addresses = settings.local_addresses.clone();
    dp.ct_max_entries = settings.ct_max_entries;
    dp
}

fn open_flow_log(target: &FlowLogTarget) -> Result<FlowLog, RunError> {
    FlowLog::open(target).map_err(|source| RunError::FlowLog {
        path: match target {
            FlowLogTarget::Stdout => "-".into(),
            FlowLogTarget::File(p) => p.clone(),
        },
        source,
    })
}

/// SIGHUP: parse → validate → compile → load. Anything invalid keeps the running policy. Returns whether the
/// new policy is in force.
fn reload(
    opts: &Options,
    settings: &Settings,
    appliance: Option<&portcullis_rules::policy::Appliance>,
    plane: &mut DataPlane,
    policies: &Policies,
    app_proxy: Option<&mut AppProxy>,
) -> bool {
    log(format!("SIGHUP: reloading {}", opts.config.display()));
    let loaded = match load_config(&opts.config) {
        Ok(l) => l,
        Err(e) => {
            log(format!("reload rejected, keeping the running policy:\n{e}"));
            return false;
        }
    };
    if loaded.config.appliance.as_ref() != appliance {
        log("the appliance section changed: interfaces, addresses and logs take effect on restart only");
    }
    let feed = match settings.threat_feed.as_deref().map(load_feed).transpose() {
        Ok(f) => f,
        Err(e) => {
            log(format!("reload rejected, keeping the running policy: {e}"));
            return false;
        }
    };
    // Steer the union of old and new ports while the data plane switches, then the new ones only.
    let new_ports = app_ports(&loaded.config.policy);
    let mut app_proxy = app_proxy;
    if let Some(p) = app_proxy.as_deref_mut() {
        let union = p.steering.ports().union(&new_ports).copied().collect();
        if let Err(e) = p.steering.set_ports(union) {
            log(format!(
                "reload rejected, keeping the running policy: proxy steering: {}",
                chain(&e)
            ));
            return false;
        }
    }
    match plane.load_policy(&loaded.config.policy, feed.as_ref(), &NoResolutions) {
        Ok(generation) => {
            let summary = crate::cli::summary(&loaded.config.policy);
            if let Some(p) = app_proxy {
                p.proxy.update(loaded.config.policy.clone(), feed.clone());
                if let Err(e) = p.steering.set_ports(new_ports) {
                    log(format!("proxy steering: keeping the wider port set: {}", chain(&e)));
                }
            }
            policies.push(generation, loaded.config.policy);
            log(format!("reloaded (generation {generation}): {summary}"));
            true
        }
        Err(e) => {
            log(format!(
                "reload rejected by the data plane, keeping the running policy: {}",
                chain(&e)
            ));
            false
        }
    }
}

/// Writes every flow event to the flow log until `stop`. Returns how many were written. (Events the ring
/// buffer had no room for are counted by the data plane: `DataPlaneStats::events_lost`.)
fn event_loop(mut reader: EventReader, out: SharedLog, policies: &Policies, stop: &AtomicBool) -> u64 {
    let mut failed_writes = 0u64;
    let timeout = PollTimeout::from(EVENT_POLL.as_millis().min(u128::from(u16::MAX)) as u16);
    while !stop.load(Ordering::Relaxed) {
        let ready = {
            let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, timeout)
        };
        match ready {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                log(format!("waiting for flow events: {e}"));
                thread::sleep(EVENT_POLL);
                continue;
            }
        }
        let now = SystemTime::now();
        let events = reader.drain();
        for (_, hop) in reader.take_neighbour_requests() {
            if let Err(e) = netsetup::solicit_neighbour(hop) {
                log(format!("resolving the next hop {hop}: {e}"));
            }
        }
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        for ev in events {
            let Some(policy) = policies.get(ev.generation) else {
                continue;
            };
            if let Err(e) = out.write(&Record::new(&event(&ev), &policy, now)) {
                failed_writes += 1;
                if failed_writes == 1 {
                    log(format!("writing the flow log: {e}"));
                }
            }
        }
    }
    out.lock().unwrap_or_else(|p| p.into_inner()).written
}

fn event(e: &FlowEvent) -> flowlog::Event {
    flowlog::Event {
        protocol: e.proto,
        source: e.src,
        source_port: e.sport,
        destination: e.dst,
        destination_port: e.dport,
        action: e.verdict,
        stage: e.stage,
        rule_index: e.rule_index,
        snat: e.snat,
        nat: e.nat,
        threat_intel_alert: e.threat_intel_alert,
        reclassified: e.reclassified,
    }
}

fn join(ips: &[std::net::Ipv4Addr]) -> String {
    ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// An error with its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
