//! One intercepted connection, from the first byte to the last: classify (TLS or HTTP), decide through
//! `rules/` (the same compiled tables the data plane uses), dial the allowed name through the appliance's
//! resolver — the address the client chose is ignored (Azure's dial-by-name) — and relay; or deny the way
//! Azure Firewall does (HTTP 470 page, TLS reset). HTTP connections are checked request by request.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use portcullis_rules::classify::FastPath;
use portcullis_rules::{Decision, Env, Flow, Name, Policy, Protocol, Stage, ThreatFeed, Verdict};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};

use super::client_hello::{self, Hello};
use super::http_body::BodyFramer;
use super::http_head::{self, HeadError, RequestHead};
use super::relay::{self, Activity};
use super::resolve::Resolver;
use super::stats::Stats;

/// A policy compiled for the proxy: the reference policy (names, reasons) and its tables.
pub struct Compiled {
    pub policy: Policy,
    pub fast: FastPath,
    pub feed: Option<ThreatFeed>,
}

impl Compiled {
    pub fn new(policy: Policy, feed: Option<ThreatFeed>) -> Self {
        let fast = FastPath::build(&policy);
        Self { policy, fast, feed }
    }

    pub fn decide(&self, flow: &Flow) -> Decision {
        let env = Env {
            threat_feed: self.feed.as_ref(),
            ..Env::default()
        };
        self.policy.decide_fast(&self.fast, flow, &env)
    }
}

/// The proxy's time limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept until the ClientHello or the first request head is complete; also the limit for each
    /// later request head once its first byte arrived. Bounds silent and dribbling clients.
    pub handshake: Duration,
    /// Resolving the name and connecting to the origin.
    pub connect: Duration,
    /// No byte in either direction (Azure Firewall's TCP idle timeout is 4 minutes).
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(240),
        }
    }
}

/// What the flow log records for each decision (AZFWApplicationRule).
#[derive(Clone, Debug)]
pub struct AppEvent {
    /// `HTTP` or `HTTPS`.
    pub protocol: &'static str,
    pub source: SocketAddrV4,
    /// The address and port the client connected to (only the port is Azure's column).
    pub destination: SocketAddrV4,
    pub fqdn: Option<String>,
    /// HTTP: `http://host[:port]/path`.
    pub target_url: Option<String>,
    pub decision: Decision,
    /// Where the appliance connected (allowed flows that got that far).
    pub upstream: Option<SocketAddrV4>,
}

pub type EventSink = Arc<dyn Fn(AppEvent) + Send + Sync>;

/// Everything a connection task shares with the others.
pub struct Shared {
    pub stats: Stats,
    pub resolver: Resolver,
    pub timeouts: Timeouts,
    /// The address upstream connections leave from (`None`: the kernel's choice by route).
    pub source: Option<Ipv4Addr>,
    pub sink: EventSink,
    pub policy: watch::Receiver<Arc<Compiled>>,
}

/// Why a connection ended early (for the counters; the flow log has the decisions).
enum End {
    Done,
    HandshakeTimeout,
    Closed,
}

pub async fn handle(stream: TcpStream, client: SocketAddrV4, orig: SocketAddrV4, sh: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + sh.timeouts.handshake;
    let mut buf = vec![0u8; client_hello::MAX_CLIENT_HELLO];
    let end = match timeout_at(deadline, relay::peek_more(&stream, &mut buf, 0)).await {
        Err(_) => End::HandshakeTimeout,
        Ok(Err(_)) | Ok(Ok(0)) => End::Closed,
        Ok(Ok(n)) if buf[0] == 0x16 => tls(stream, client, orig, &sh, buf, n, deadline).await,
        Ok(Ok(_)) => http(stream, client, orig, &sh, deadline).await,
    };
    if let End::HandshakeTimeout = end {
        sh.stats.inc(&sh.stats.handshake_timeouts);
    }
}

fn record(sh: &Shared, ev: AppEvent) {
    let s = &sh.stats;
    if ev.decision.verdict == Verdict::Allow {
        s.inc(&s.allowed);
    } else {
        s.inc(&s.denied);
    }
    (sh.sink)(ev);
}

fn allowed_where(d: &Decision) -> Option<Stage> {
    match (d.verdict, d.stage) {
        (Verdict::Allow, s @ (Stage::Application | Stage::Network)) => Some(s),
        _ => None,
    }
}

async fn tls(
    stream: TcpStream,
    client: SocketAddrV4,
    orig: SocketAddrV4,
    sh: &Arc<Shared>,
    mut buf: Vec<u8>,
    mut n: usize,
    deadline: Instant,
) -> End {
    sh.stats.inc(&sh.stats.tls);
    let hello = loop {
        match client_hello::inspect(&buf[..n]) {
            Ok(h) => break h,
            Err(_) if n >= buf.len() => break Hello::TooLarge,
            Err(_) => match timeout_at(deadline, relay::peek_more(&stream, &mut buf, n)).await {
                Err(_) => return End::HandshakeTimeout,
                Ok(Ok(m)) if m > n => n = m,
                Ok(_) => return End::Closed,
            },
        }
    };
    drop(buf);
    let compiled = sh.policy.borrow().clone();
    let mut flow = Flow {
        source: *client.ip(),
        destination_ip: Some(*orig.ip()),
        destination_name: None,
        port: orig.port(),
        protocol: Protocol::Https,
        host_port: None,
    };
    let s = &sh.stats;
    let decision = match &hello {
        Hello::Sni(name) => {
            flow.destination_name = Some(name.clone());
            compiled.decide(&flow)
        }
        Hello::NoSni => {
            s.inc(&s.denied_no_sni);
            compiled.decide(&flow)
        }
        other => {
            // Threat intelligence and network rules still come first (a network allow that reached the
            // proxy relays as such); otherwise the hello's own reason.
            let d = compiled.decide(&flow);
            if allowed_where(&d) == Some(Stage::Network) || d.stage == Stage::ThreatIntel {
                d
            } else {
                let reason = match other {
                    Hello::Ech { outer_sni } => {
                        s.inc(&s.denied_ech);
                        format!(
                            "ClientHello carries encrypted_client_hello (outer name {}): the server name cannot be checked.",
                            outer_sni.as_ref().map_or("none".to_owned(), ToString::to_string)
                        )
                    }
                    Hello::InvalidSni(raw) => {
                        s.inc(&s.denied_unparsable);
                        format!("SNI {raw:?} is not a valid host name.")
                    }
                    Hello::TooLarge => {
                        s.inc(&s.denied_unparsable);
                        format!("ClientHello larger than {} bytes.", client_hello::MAX_HANDSHAKE)
                    }
                    Hello::Malformed(why) => {
                        s.inc(&s.denied_unparsable);
                        format!("Malformed ClientHello: {why}.")
                    }
                    _ => {
                        s.inc(&s.denied_unparsable);
                        "Not a TLS ClientHello on an intercepted port.".to_owned()
                    }
                };
                compiled.policy.application_denial(reason)
            }
        }
    };
    let fqdn = flow.destination_name.as_ref().map(ToString::to_string);
    let event = |decision: Decision, upstream| AppEvent {
        protocol: "HTTPS",
        source: client,
        destination: orig,
        fqdn: fqdn.clone(),
        target_url: None,
        decision,
        upstream,
    };
    let Some(stage) = allowed_where(&decision) else {
        record(sh, event(decision, None));
        relay::reset(&stream);
        return End::Done;
    };
    let (upstream, up_addr) = match dial(sh, stage, &flow, orig).await {
        Ok(u) => u,
        Err(why) => {
            record(sh, event(upstream_failed(decision, &why), None));
            relay::reset(&stream);
            return End::Done;
        }
    };
    record(sh, event(decision, Some(up_addr)));
    relay_checked(sh, &stream, &upstream, &flow).await;
    End::Done
}

/// Relays both ways until both sides are done, the idle timeout, or a reload that denies the flow.
async fn relay_checked(sh: &Arc<Shared>, client: &TcpStream, upstream: &TcpStream, flow: &Flow) {
    let activity = Activity::new();
    let s = &sh.stats;
    let up = async {
        let r = relay::splice_copy(client, upstream, None, &activity, &s.bytes_up).await;
        relay::shutdown_write(upstream);
        r
    };
    let down = async {
        let r = relay::splice_copy(upstream, client, None, &activity, &s.bytes_down).await;
        relay::shutdown_write(client);
        r
    };
    let mut rx = sh.policy.clone();
    tokio::select! {
        (a, b) = async { tokio::join!(up, down) } => {
            if a.is_err() || b.is_err() {
                // One side reset: pass the reset on rather than leaving the other half open.
                relay::reset(client);
                relay::reset(upstream);
            }
        }
        _ = activity.idle(sh.timeouts.idle) => {
            s.inc(&s.idle_timeouts);
            relay::reset(client);
            relay::reset(upstream);
        }
        _ = denied_by_reload(&mut rx, flow) => {
            s.inc(&s.cut_by_reload);
            relay::reset(client);
            relay::reset(upstream);
        }
    }
}

/// Resolves when a reloaded policy no longer allows `flow` (Azure cuts existing sessions on a change to
/// deny). Never resolves if the policy channel closes.
async fn denied_by_reload(rx: &mut watch::Receiver<Arc<Compiled>>, flow: &Flow) {
    loop {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let compiled = rx.borrow_and_update().clone();
        if compiled.decide(flow).verdict != Verdict::Allow {
            return;
        }
    }
}

/// Why no upstream connection was made.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("resolving {0}: {1}")]
    Resolve(Name, super::resolve::ResolveError),
    #[error("resolving {0}: no answer within {1:?}")]
    ResolveTimeout(Name, Duration),
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddrV4, std::io::Error),
    #[error("connecting to {0}: no answer within {1:?}")]
    ConnectTimeout(SocketAddrV4, Duration),
}

/// The decision, with why its upstream connection failed (the flow log's reason).
fn upstream_failed(mut d: Decision, why: &DialError) -> Decision {
    d.reason = format!("{} Upstream: {why}", d.reason);
    d
}

/// Connects where an allowed flow goes, from the appliance's address, on `orig`'s port: an application
/// rule's flow to its name as the appliance resolves it (the client's destination is ignored), a network
/// rule's flow to `orig` itself. Returns the stream and the address connected to.
async fn dial(
    sh: &Shared,
    stage: Stage,
    flow: &Flow,
    orig: SocketAddrV4,
) -> Result<(TcpStream, SocketAddrV4), DialError> {
    let name = match stage {
        Stage::Application => flow.destination_name.as_ref(),
        _ => None,
    };
    let s = &sh.stats;
    let deadline = Instant::now() + sh.timeouts.connect;
    let addrs = match name {
        None => vec![*orig.ip()],
        Some(name) => match timeout_at(deadline, sh.resolver.resolve_v4(name)).await {
            Ok(Ok(r)) => r.addrs,
            Ok(Err(e)) => {
                s.inc(&s.resolve_failures);
                return Err(DialError::Resolve(name.clone(), e));
            }
            Err(_) => {
                s.inc(&s.resolve_failures);
                return Err(DialError::ResolveTimeout(name.clone(), sh.timeouts.connect));
            }
        },
    };
    let mut last = None;
    for ip in addrs.iter().take(3) {
        let to = SocketAddrV4::new(*ip, orig.port());
        match timeout_at(deadline, connect(sh.source, to)).await {
            Ok(Ok(stream)) => {
                s.inc(&s.upstream_connections);
                let _ = stream.set_nodelay(true);
                return Ok((stream, to));
            }
            Ok(Err(e)) => last = Some(DialError::Connect(to, e)),
            Err(_) => {
                last = Some(DialError::ConnectTimeout(to, sh.timeouts.connect));
                break;
            }
        }
    }
    s.inc(&s.connect_failures);
    Err(last.unwrap_or(DialError::ConnectTimeout(orig, sh.timeouts.connect)))
}

async fn connect(source: Option<Ipv4Addr>, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(src) = source {
        // Port chosen at connect time by the 4-tuple, so many upstream flows share the host's range.
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
            .map_err(std::io::Error::from)?;
        socket.bind(SocketAddrV4::new(src, 0).into())?;
    }
    socket.connect(to.into()).await
}

/// The upstream of an HTTP connection, for one host.
struct Upstream {
    stream: Arc<TcpStream>,
    /// Where it is connected (the flow log's UpstreamIp).
    addr: SocketAddrV4,
    /// Name (or address, for a network-rule flow) and port requests on it are for.
    key: (String, u16),
    /// Set when the proxy half-closes it to switch hosts: its EOF must not end the client connection.
    switching: Arc<AtomicBool>,
    /// The server → client relay; ends at the server's EOF.
    down: tokio::task::JoinHandle<()>,
    /// Touched by every byte either way on the client connection.
    activity: Arc<Activity>,
}

impl Upstream {
    /// Lets the server finish its responses (half-close, wait for its EOF while bytes still flow, at most
    /// `idle` without any) so nothing that follows can interleave with them.
    async fn finish(self, idle: Duration) {
        self.switching.store(true, Ordering::Relaxed);
        relay::shutdown_write(&self.stream);
        let mut down = self.down;
        // A finished relay may already have been awaited: never poll it again.
        if down.is_finished() {
            return;
        }
        tokio::select! {
            _ = &mut down => {}
            _ = self.activity.idle(idle) => down.abort(),
        }
    }
}

async fn http(stream: TcpStream, client: SocketAddrV4, orig: SocketAddrV4, sh: &Arc<Shared>, deadline: Instant) -> End {
    let client_stream = Arc::new(stream);
    let stream = &*client_stream;
    let s = &sh.stats;
    let mut pending: Vec<u8> = Vec::with_capacity(4096);
    let mut buf = vec![0u8; 16 * 1024];
    let mut upstream: Option<Upstream> = None;
    let mut first = true;
    let activity = Arc::new(Activity::new());
    let mut rx = sh.policy.clone();
    loop {
        // A complete request head in `pending`.
        let head_deadline = if first { Some(deadline) } else { None };
        let parsed = loop {
            match http_head::parse_head(&pending) {
                Err(HeadError::Incomplete { .. }) => {}
                other => break other,
            }
            if pending.len() >= http_head::MAX_HEAD {
                break Err(HeadError::TooLarge);
            }
            // Between requests the connection may wait as long as bytes flow either way (a long
            // download); inside a head only for the handshake timeout.
            let between = head_deadline.is_none() && pending.is_empty();
            let limit = match head_deadline {
                Some(d) => d,
                None => Instant::now() + sh.timeouts.handshake,
            };
            let read = async {
                match &mut upstream {
                    // The server closed: the connection is over once the client has its last response.
                    Some(u) if u.down.is_finished() && !u.switching.load(Ordering::Relaxed) => Ok(0),
                    Some(u) => tokio::select! {
                        r = relay::read_some(stream, &mut buf) => r,
                        _ = &mut u.down => Ok(0),
                    },
                    None => relay::read_some(stream, &mut buf).await,
                }
            };
            let got = if between {
                tokio::select! {
                    r = read => Ok(r),
                    _ = activity.idle(sh.timeouts.idle) => Err(()),
                }
            } else {
                timeout_at(limit, read).await.map_err(|_| ())
            };
            match got {
                Err(_) if first => return End::HandshakeTimeout,
                Err(_) if pending.is_empty() => {
                    s.inc(&s.idle_timeouts);
                    return close_http(upstream, stream, sh).await;
                }
                Err(_) => {
                    s.inc(&s.handshake_timeouts);
                    return close_http(upstream, stream, sh).await;
                }
                Ok(Ok(0)) | Ok(Err(_)) => return close_http(upstream, stream, sh).await,
                Ok(Ok(n)) => {
                    pending.extend_from_slice(&buf[..n]);
                    activity.touch();
                }
            }
        };
        let was_first = first;
        first = false;
        s.inc(&s.http_requests);
        let compiled = rx.borrow_and_update().clone();
        let mut flow = Flow {
            source: *client.ip(),
            destination_ip: Some(*orig.ip()),
            destination_name: None,
            port: orig.port(),
            protocol: Protocol::Http,
            host_port: None,
        };
        let head: RequestHead = match parsed {
            Ok(h) => h,
            Err(e) => {
                // Not HTTP at all on the first bytes: the rules' own reason for the port; otherwise
                // the parse error. Either way the connection ends here.
                let d = if was_first && matches!(e, HeadError::NotHttp) {
                    flow.protocol = Protocol::Tcp;
                    compiled.decide(&flow)
                } else {
                    compiled.policy.application_denial(format!("{e}."))
                };
                s.inc(&s.denied_unparsable);
                if allowed_where(&d) == Some(Stage::Network) {
                    // A network rule allows this flow: relay it as such (it reached the proxy in a race).
                    if let Some(u) = upstream.take() {
                        u.finish(sh.timeouts.idle).await;
                    }
                    match dial(sh, Stage::Network, &flow, orig).await {
                        Ok((up, to)) => {
                            record(sh, http_event(client, orig, None, None, d, Some(to)));
                            if relay::write_all(&up, &pending).await.is_ok() {
                                relay_checked(sh, stream, &up, &flow).await;
                            }
                        }
                        Err(why) => {
                            record(sh, http_event(client, orig, None, None, upstream_failed(d, &why), None));
                            relay::reset(stream);
                        }
                    }
                    return End::Done;
                }
                record(sh, http_event(client, orig, None, None, d, None));
                if let Some(u) = upstream.take() {
                    u.finish(sh.timeouts.idle).await;
                }
                if was_first && matches!(e, HeadError::NotHttp) {
                    relay::reset(stream);
                } else {
                    let _ = relay::write_all(stream, BAD_REQUEST).await;
                    linger_close(stream).await;
                }
                return End::Done;
            }
        };
        if let Some(h) = &head.host {
            flow.destination_name = Some(h.name.clone());
            flow.host_port = h.port;
        }
        let decision = compiled.decide(&flow);
        // Azure drops a request whose Host port is not the TCP port (§3): no page.
        let port_mismatch = head.host.is_some() && flow.host_port.unwrap_or(80) != flow.port;
        if port_mismatch {
            s.inc(&s.denied_host_port);
        }
        let host_text = head.host.as_ref().map(|h| h.name.to_string());
        let url = head.host.as_ref().map(|h| target_url(h, &head.target));
        let Some(stage) = allowed_where(&decision) else {
            if let Some(u) = upstream.take() {
                u.finish(sh.timeouts.idle).await;
            }
            let detail = decision.rule.as_ref().map(|rule| {
                (
                    decision.rule_collection_group.clone().unwrap_or_default(),
                    decision.rule_collection.clone().unwrap_or_default(),
                    rule.clone(),
                )
            });
            let page = http_head::deny_page(
                client,
                host_text.as_deref().unwrap_or("-"),
                head.host.as_ref().map_or(orig.port(), |h| h.port_or_default()),
                detail.as_ref().map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str())),
            );
            record(sh, http_event(client, orig, host_text, url, decision, None));
            if port_mismatch {
                relay::reset(stream);
            } else {
                let _ = relay::write_all(stream, &page).await;
                linger_close(stream).await;
            }
            return End::Done;
        };
        let key = match (stage, &flow.destination_name) {
            (Stage::Application, Some(n)) => (n.to_string(), orig.port()),
            _ => (orig.ip().to_string(), orig.port()),
        };
        if head.upgrade {
            // A protocol switch gets a connection of its own, and nothing more from the client is forwarded
            // until the server has answered it.
            if let Some(u) = upstream.take() {
                u.finish(sh.timeouts.idle).await;
            }
            let up = match dial(sh, stage, &flow, orig).await {
                Ok((up, to)) => {
                    record(sh, http_event(client, orig, host_text, url, decision, Some(to)));
                    up
                }
                Err(why) => {
                    return bad_gateway(
                        sh,
                        stream,
                        http_event(client, orig, host_text, url, upstream_failed(decision, &why), None),
                    )
                    .await;
                }
            };
            upgrade(sh, stream, &up, *client.ip(), &head, pending, &flow).await;
            return End::Done;
        }
        if upstream.as_ref().is_some_and(|u| u.key != key)
            && let Some(u) = upstream.take()
        {
            u.finish(sh.timeouts.idle).await;
        }
        if upstream.is_none() {
            match dial(sh, stage, &flow, orig).await {
                Ok((up, addr)) => {
                    let up = Arc::new(up);
                    let switching = Arc::new(AtomicBool::new(false));
                    let down = {
                        let (up, cl, sw, sh2) = (up.clone(), client_stream.clone(), switching.clone(), sh.clone());
                        let act = activity.clone();
                        tokio::spawn(async move {
                            let r = relay::splice_copy(&up, &cl, None, &act, &sh2.stats.bytes_down).await;
                            if r.is_err() || !sw.load(Ordering::Relaxed) {
                                relay::shutdown_write(&cl);
                            }
                        })
                    };
                    upstream = Some(Upstream {
                        stream: up,
                        addr,
                        key,
                        switching,
                        down,
                        activity: activity.clone(),
                    });
                }
                Err(why) => {
                    return bad_gateway(
                        sh,
                        stream,
                        http_event(client, orig, host_text, url, upstream_failed(decision, &why), None),
                    )
                    .await;
                }
            }
        }
        let Some(up) = upstream.as_ref() else {
            return End::Closed;
        };
        record(sh, http_event(client, orig, host_text, url, decision, Some(up.addr)));
        // The head, with X-Forwarded-For, then exactly the body.
        let rewritten = http_head::with_forwarded_for(&pending[..head.head_len], &head, *client.ip());
        pending.drain(..head.head_len);
        let upstream_stream = up.stream.clone();
        let forwarded = async {
            relay::write_all(&upstream_stream, &rewritten).await?;
            s.add(&s.bytes_up, rewritten.len() as u64);
            forward_body(
                stream,
                &upstream_stream,
                &mut pending,
                &mut buf,
                head.body,
                &activity,
                s,
            )
            .await
        };
        let result = tokio::select! {
            r = forwarded => r,
            _ = activity.idle(sh.timeouts.idle) => {
                s.inc(&s.idle_timeouts);
                Err(std::io::ErrorKind::TimedOut.into())
            }
            _ = denied_by_reload(&mut rx, &flow) => {
                s.inc(&s.cut_by_reload);
                Err(std::io::ErrorKind::ConnectionAborted.into())
            }
        };
        if result.is_err() {
            relay::reset(stream);
            if let Some(u) = upstream.take() {
                relay::reset(&u.stream);
                u.down.abort();
            }
            return End::Done;
        }
        if head.connection_close {
            return close_http(upstream, stream, sh).await;
        }
    }
}

/// Forwards an upgrade request, reads the server's response head, and tunnels both ways after a 101; after
/// anything else, relays that response and ends the connection (whatever follows is not checked HTTP).
async fn upgrade(
    sh: &Arc<Shared>,
    client: &TcpStream,
    up: &TcpStream,
    client_ip: Ipv4Addr,
    head: &RequestHead,
    mut pending: Vec<u8>,
    flow: &Flow,
) {
    let s = &sh.stats;
    let activity = Activity::new();
    let mut buf = vec![0u8; 16 * 1024];
    let rewritten = http_head::with_forwarded_for(&pending[..head.head_len], head, client_ip);
    pending.drain(..head.head_len);
    let sent = async {
        relay::write_all(up, &rewritten).await?;
        s.add(&s.bytes_up, rewritten.len() as u64);
        forward_body(client, up, &mut pending, &mut buf, head.body, &activity, s).await
    };
    if !matches!(timeout(sh.timeouts.idle, sent).await, Ok(Ok(()))) {
        relay::reset(client);
        relay::reset(up);
        return;
    }
    let mut response = Vec::new();
    let answered = timeout(sh.timeouts.idle, async {
        loop {
            let n = relay::read_some(up, &mut buf).await?;
            if n == 0 || response.len() + n > http_head::MAX_HEAD {
                return Ok::<bool, std::io::Error>(false);
            }
            response.extend_from_slice(&buf[..n]);
            if response.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
        }
    })
    .await;
    if !matches!(answered, Ok(Ok(true))) || relay::write_all(client, &response).await.is_err() {
        relay::reset(client);
        relay::reset(up);
        return;
    }
    s.add(&s.bytes_down, response.len() as u64);
    let switched = response.starts_with(b"HTTP/1.1 101 ") || response.starts_with(b"HTTP/1.0 101 ");
    if switched {
        s.inc(&s.upgrades);
        if relay::write_all(up, &pending).await.is_err() {
            relay::reset(client);
            relay::reset(up);
            return;
        }
        relay_checked(sh, client, up, flow).await;
    } else {
        relay::shutdown_write(up);
        let _ = timeout(
            sh.timeouts.idle,
            relay::splice_copy(up, client, None, &activity, &s.bytes_down),
        )
        .await;
        relay::shutdown_write(client);
    }
}

/// Forwards one request body: what is already buffered, then from the socket (spliced when the length is
/// known). Leaves the bytes after the body in `pending`.
async fn forward_body(
    client: &TcpStream,
    upstream: &TcpStream,
    pending: &mut Vec<u8>,
    buf: &mut [u8],
    body: http_head::Body,
    activity: &Activity,
    s: &Stats,
) -> std::io::Result<()> {
    let mut framer = BodyFramer::new(body);
    let invalid = |e: super::http_body::BodyError| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
    let k = framer.feed(pending).map_err(invalid)?;
    relay::write_all(upstream, &pending[..k]).await?;
    s.add(&s.bytes_up, k as u64);
    pending.drain(..k);
    while !framer.done() {
        if let Some(rest) = framer.remaining_fixed() {
            let moved = relay::splice_copy(client, upstream, Some(rest), activity, &s.bytes_up).await?;
            if moved < rest {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            return Ok(());
        }
        let n = relay::read_some(client, buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        activity.touch();
        let k = framer.feed(&buf[..n]).map_err(invalid)?;
        relay::write_all(upstream, &buf[..k]).await?;
        s.add(&s.bytes_up, k as u64);
        pending.extend_from_slice(&buf[k..n]);
    }
    Ok(())
}

/// The client is done (EOF, `Connection: close`, timeout): let the server finish, then close.
async fn close_http(upstream: Option<Upstream>, client: &TcpStream, sh: &Shared) -> End {
    if let Some(u) = upstream {
        u.finish(sh.timeouts.idle).await;
    }
    relay::shutdown_write(client);
    End::Done
}

/// Records `event` (an allowed request whose upstream failed) and answers 502.
async fn bad_gateway(sh: &Shared, client: &TcpStream, event: AppEvent) -> End {
    record(sh, event);
    let _ = relay::write_all(client, BAD_GATEWAY).await;
    linger_close(client).await;
    End::Done
}

/// After a final response: half-close, then read and discard briefly so unread request bytes do not turn
/// the close into a reset that destroys the response before the client reads it.
async fn linger_close(stream: &TcpStream) {
    relay::shutdown_write(stream);
    let mut sink = [0u8; 4096];
    let _ = timeout(Duration::from_secs(2), async {
        let mut total = 0usize;
        while total < 1 << 20 {
            match relay::read_some(stream, &mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

fn target_url(host: &http_head::HostHeader, target: &str) -> String {
    let path = if target.starts_with('/') {
        target.to_owned()
    } else {
        // absolute-form: keep the path part only
        target
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
            .unwrap_or_else(|| "/".to_owned())
    };
    match host.port {
        Some(p) if p != 80 => format!("http://{}:{p}{path}", host.name),
        _ => format!("http://{}{path}", host.name),
    }
}

fn http_event(
    client: SocketAddrV4,
    orig: SocketAddrV4,
    fqdn: Option<String>,
    target_url: Option<String>,
    decision: Decision,
    upstream: Option<SocketAddrV4>,
) -> AppEvent {
    AppEvent {
        protocol: "HTTP",
        source: client,
        destination: orig,
        fqdn,
        target_url,
        decision,
        upstream,
    }
}

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nBad Request\n";
const BAD_GATEWAY: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nBad Gateway\n";
