//! The proxy as the daemon sees it: a tokio runtime on its own threads, the transparent listener, the
//! connection limits, policy updates and a bounded drain on stop.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_rules::{Policy, ThreatFeed};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::conn::{self, Compiled, EventSink, Shared, Timeouts};
use super::relay;
use super::resolve::{Resolver, ResolverOptions};
use super::stats::Snapshot;

/// Connection limits (a hostile or broken client cannot take the proxy down for everyone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, appliance-wide.
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_per_source: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            max_per_source: 4_096,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The transparent listener (TPROXY sends every intercepted connection here).
    pub listen: SocketAddrV4,
    /// Upstream connections leave from this address (`None`: the route's).
    pub source: Option<Ipv4Addr>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Runtime worker threads.
    pub workers: usize,
}

impl ProxyConfig {
    pub const DEFAULT_PORT: u16 = 15001;

    pub fn new(source: Option<Ipv4Addr>) -> Self {
        Self {
            listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, Self::DEFAULT_PORT),
            source,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            // One per CPU the daemon may run on (its affinity), so a pinned appliance does not switch
            // between workers sharing a core.
            workers: std::thread::available_parallelism().map_or(2, |n| n.get().min(8)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("starting the proxy runtime: {0}")]
    Runtime(std::io::Error),
    #[error("binding the transparent listener {addr} (needs CAP_NET_ADMIN): {source}")]
    Bind { addr: SocketAddrV4, source: std::io::Error },
}

/// Per-source connection counts.
#[derive(Default)]
struct Sources(Mutex<HashMap<Ipv4Addr, u32>>);

struct SourceSlot {
    sources: Arc<Sources>,
    ip: Ipv4Addr,
}

impl Sources {
    fn take(self: &Arc<Self>, ip: Ipv4Addr, max: u32) -> Option<SourceSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = self.sources.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// The running proxy.
pub struct Proxy {
    runtime: Option<tokio::runtime::Runtime>,
    stop: watch::Sender<bool>,
    policy: watch::Sender<Arc<Compiled>>,
    shared: Arc<Shared>,
    config: ProxyConfig,
}

/// The resolver's servers for `policy`: `dnsSettings.servers`, else the host's resolv.conf.
pub fn dns_servers(policy: &Policy) -> Vec<SocketAddrV4> {
    if !policy.dns.servers.is_empty() {
        return policy.dns.servers.iter().map(|ip| SocketAddrV4::new(*ip, 53)).collect();
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .map(|ip| SocketAddrV4::new(ip, 53))
        .collect()
}

impl Proxy {
    /// Binds the listener and starts serving `policy`. Decisions go to `sink`.
    pub fn start(
        config: ProxyConfig,
        policy: Policy,
        feed: Option<ThreatFeed>,
        sink: EventSink,
    ) -> Result<Self, ProxyError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.workers.max(1))
            .thread_name("proxy")
            .enable_io()
            .enable_time()
            .build()
            .map_err(ProxyError::Runtime)?;
        let listener = bind_transparent(config.listen).map_err(|source| ProxyError::Bind {
            addr: config.listen,
            source,
        })?;
        let resolver = Resolver::new(dns_servers(&policy), ResolverOptions::default());
        let (policy_tx, policy_rx) = watch::channel(Arc::new(Compiled::new(policy, feed)));
        let shared = Arc::new(Shared {
            stats: Default::default(),
            resolver,
            timeouts: config.timeouts,
            source: config.source,
            sink,
            policy: policy_rx,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(listener).map_err(ProxyError::Runtime)?
        };
        runtime.spawn(accept_loop(listener, shared.clone(), config.clone(), stop_rx));
        Ok(Self {
            runtime: Some(runtime),
            stop: stop_tx,
            policy: policy_tx,
            shared,
            config,
        })
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// A reloaded policy: new connections and requests use it at once; open connections it denies are cut.
    pub fn update(&self, policy: Policy, feed: Option<ThreatFeed>) {
        self.shared.resolver.set_servers(dns_servers(&policy));
        self.policy.send_replace(Arc::new(Compiled::new(policy, feed)));
    }

    pub fn stats(&self) -> Snapshot {
        self.shared.stats.snapshot()
    }

    /// Stops accepting, gives open connections up to `drain` to finish, then closes the rest.
    pub fn stop(mut self, drain: Duration) -> Snapshot {
        let _ = self.stop.send(true);
        if let Some(rt) = self.runtime.take() {
            let shared = self.shared.clone();
            rt.block_on(async move {
                let deadline = tokio::time::Instant::now() + drain;
                while shared.stats.snapshot().active > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        self.shared.stats.snapshot()
    }
}

fn bind_transparent(addr: SocketAddrV4) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    // Before bind: accept connections addressed to any destination (TPROXY); `local_addr` of an
    // accepted socket is the destination the client used.
    socket.set_ip_transparent_v4(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::V4(addr).into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

async fn accept_loop(listener: TcpListener, sh: Arc<Shared>, config: ProxyConfig, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let sources = Arc::new(Sources::default());
    let s = &sh.stats;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(_) => {
                // Out of descriptors or memory: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        s.inc(&s.accepted);
        let (SocketAddr::V4(client), Ok(SocketAddr::V4(orig))) = (peer, stream.local_addr()) else {
            s.inc(&s.not_intercepted);
            continue;
        };
        if orig.port() == config.listen.port() {
            // Addressed to the listener itself, not steered there.
            s.inc(&s.not_intercepted);
            refuse(stream);
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            s.inc(&s.refused_total_limit);
            refuse(stream);
            continue;
        };
        let Some(slot) = sources.take(*client.ip(), config.limits.max_per_source) else {
            s.inc(&s.refused_source_limit);
            refuse(stream);
            continue;
        };
        let sh = sh.clone();
        tokio::spawn(async move {
            // Released however the task ends (a panic included).
            let _held = (permit, slot, Active::new(sh.clone()));
            conn::handle(stream, client, orig, sh).await;
        });
    }
}

/// Counts a connection in `active` while it lives.
struct Active(Arc<Shared>);

impl Active {
    fn new(sh: Arc<Shared>) -> Self {
        sh.stats.inc(&sh.stats.active);
        Self(sh)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn refuse(stream: TcpStream) {
    relay::reset(&stream);
}
