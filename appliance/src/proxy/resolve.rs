//! A small DNS stub resolver with a cache, for the transparent application proxy.
//!
//! The proxy "dials by name": it connects to what the TLS SNI / HTTP Host name resolves to, not to the
//! destination address the client chose, so a client cannot pair an allowed name with an arbitrary
//! address. It asks the policy's DNS servers (`dnsSettings.servers`) itself, over UDP with a TCP retry
//! for truncated answers, and caches answers (positive and negative) for their TTL within bounds.
//!
//! Answers are only accepted from the server queried, with the query's random id and question, from a
//! fresh random-port socket per query, which makes off-path spoofing as hard as for any stub resolver.
//! Everything is bounded: time (per-attempt timeout, fixed number of attempts), the CNAME chain, the
//! cache size. Concurrent lookups of the same uncached name share one query.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name as DnsName, RData, RecordType},
};
use portcullis_rules::fqdn::Name;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::watch,
};

/// CNAME records followed inside one answer before giving up on it.
const MAX_CNAME_HOPS: usize = 16;
/// Receive buffer for UDP answers (the largest datagram, so nothing is cut short).
const UDP_BUFFER: usize = 65_535;

/// Tuning of a [`Resolver`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverOptions {
    /// Time allowed for one query to one server (UDP, and again for its TCP retry when truncated).
    pub timeout: Duration,
    /// Rounds over all servers before giving up (0 counts as 1).
    pub attempts: u32,
    /// Upper bound on how long an answer is cached.
    pub max_ttl: Duration,
    /// Lower bound on how long an answer is cached (also for negative answers).
    pub min_ttl: Duration,
    /// How long NXDOMAIN / no-A answers are cached; capped by the SOA minimum when the answer has one.
    pub negative_ttl: Duration,
    /// Most names held in the cache; the soonest-expiring entry is evicted first. 0 disables the cache.
    pub max_entries: usize,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            attempts: 2,
            max_ttl: Duration::from_secs(3600),
            min_ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(30),
            max_entries: 10_000,
        }
    }
}

/// The IPv4 addresses a name resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The A records of the name (at the end of its CNAME chain), in answer order, without duplicates;
    /// never empty.
    pub addrs: Vec<Ipv4Addr>,
    /// The server that answered; `None` when the answer came from the cache.
    pub server: Option<SocketAddrV4>,
    /// How much longer the answer may be used (clamped to the options' bounds; what is left of it for
    /// a cached answer).
    pub ttl: Duration,
}

/// Why a name could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {name}: no DNS servers are configured (policy dnsSettings.servers)")]
    NoServers { name: String },
    #[error("{name} does not exist (the DNS server answered NXDOMAIN)")]
    NxDomain { name: String },
    #[error("{name} has no IPv4 address (the DNS server answered without an A record)")]
    NoAddress { name: String },
    #[error("cannot resolve {name}: no DNS server gave an answer; the last one, {server}, answered {rcode}")]
    ServerFailure {
        name: String,
        server: SocketAddrV4,
        rcode: String,
    },
    #[error(
        "cannot resolve {name}: no answer from DNS server(s) {} ({tried} queries, {}ms each)",
        list(.servers),
        .timeout.as_millis()
    )]
    Timeout {
        name: String,
        tried: usize,
        servers: Vec<SocketAddrV4>,
        timeout: Duration,
    },
    #[error(
        "cannot resolve {name}: no DNS server gave an answer; the last one, {server}, sent an unusable one ({reason})"
    )]
    BadResponse {
        name: String,
        server: SocketAddrV4,
        reason: String,
    },
    #[error("cannot resolve {name}: no DNS server gave an answer; querying the last one, {server}, failed ({error})")]
    Network {
        name: String,
        server: SocketAddrV4,
        error: String,
    },
    #[error("cannot resolve {name}: not encodable as a DNS name ({reason})")]
    InvalidName { name: String, reason: String },
}

fn list(servers: &[SocketAddrV4]) -> String {
    let parts: Vec<String> = servers.iter().map(ToString::to_string).collect();
    parts.join(", ")
}

/// Counters since the resolver was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Calls of [`Resolver::resolve_v4`].
    pub queries: u64,
    /// Lookups answered from the cache (positive or negative).
    pub cache_hits: u64,
    /// Lookups not in the cache (including those that joined a query already in flight).
    pub cache_misses: u64,
    /// Queries to one server that got no (acceptable) answer in time, UDP or TCP.
    pub timeouts: u64,
    /// Moves to the next server (or the next round) after a failed query.
    pub failovers: u64,
    /// Truncated UDP answers retried over TCP.
    pub tcp_retries: u64,
    /// Answers with SERVFAIL, REFUSED or another error rcode (not NXDOMAIN).
    pub servfail: u64,
    /// NXDOMAIN answers from servers (not counting cache hits).
    pub nxdomain: u64,
    /// Datagrams ignored (wrong source, id or question; undecodable) and answers rejected as unusable.
    pub bad_responses: u64,
}

#[derive(Default)]
struct Counters {
    queries: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    timeouts: AtomicU64,
    failovers: AtomicU64,
    tcp_retries: AtomicU64,
    servfail: AtomicU64,
    nxdomain: AtomicU64,
    bad_responses: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A caching DNS stub resolver for A records. Cheap to clone (clones share cache and counters).
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("servers", &self.servers())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

struct Inner {
    options: ResolverOptions,
    state: Mutex<State>,
    counters: Counters,
}

type Shared = Option<Result<Resolved, ResolveError>>;

struct State {
    servers: Vec<SocketAddrV4>,
    /// Bumped when the servers change: answers of queries started before are not cached.
    generation: u64,
    cache: Cache,
    inflight: HashMap<Name, Flight>,
    next_flight: u64,
}

struct Flight {
    id: u64,
    result: watch::Receiver<Shared>,
}

/// Removes the in-flight entry when the leading lookup finishes or is cancelled.
struct FlightGuard<'a> {
    inner: &'a Inner,
    name: &'a Name,
    id: u64,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        if state.inflight.get(self.name).is_some_and(|f| f.id == self.id) {
            state.inflight.remove(self.name);
        }
    }
}

enum Role {
    Leader {
        sender: watch::Sender<Shared>,
        id: u64,
        generation: u64,
        servers: Vec<SocketAddrV4>,
    },
    Follower(watch::Receiver<Shared>),
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent data (every update is one step).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Resolver {
    pub fn new(servers: Vec<SocketAddrV4>, options: ResolverOptions) -> Self {
        let cache = Cache::new(options.max_entries);
        Self {
            inner: Arc::new(Inner {
                options,
                state: Mutex::new(State {
                    servers,
                    generation: 0,
                    cache,
                    inflight: HashMap::new(),
                    next_flight: 0,
                }),
                counters: Counters::default(),
            }),
        }
    }

    /// Replaces the servers (policy reload). The cache is flushed only when they changed.
    pub fn set_servers(&self, servers: Vec<SocketAddrV4>) {
        let mut state = self.inner.lock();
        if state.servers != servers {
            state.servers = servers;
            state.generation = state.generation.wrapping_add(1);
            state.cache.clear();
            // Lookups from now on ask the new servers; queries in flight finish for their own callers.
            state.inflight.clear();
        }
    }

    pub fn servers(&self) -> Vec<SocketAddrV4> {
        self.inner.lock().servers.clone()
    }

    /// Names in the cache (expired ones not yet evicted included).
    pub fn cache_len(&self) -> usize {
        self.inner.lock().cache.len()
    }

    pub fn stats(&self) -> ResolverStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ResolverStats {
            queries: get(&c.queries),
            cache_hits: get(&c.cache_hits),
            cache_misses: get(&c.cache_misses),
            timeouts: get(&c.timeouts),
            failovers: get(&c.failovers),
            tcp_retries: get(&c.tcp_retries),
            servfail: get(&c.servfail),
            nxdomain: get(&c.nxdomain),
            bad_responses: get(&c.bad_responses),
        }
    }

    /// The IPv4 addresses of `name`: from the cache, or by asking the servers in order.
    pub async fn resolve_v4(&self, name: &Name) -> Result<Resolved, ResolveError> {
        let inner = &*self.inner;
        bump(&inner.counters.queries);
        let role = {
            let mut state = inner.lock();
            if let Some(hit) = state.cache.get(name, Instant::now()) {
                bump(&inner.counters.cache_hits);
                return hit.into_result(name, None);
            }
            bump(&inner.counters.cache_misses);
            if let Some(flight) = state.inflight.get(name) {
                Role::Follower(flight.result.clone())
            } else {
                if state.servers.is_empty() {
                    return Err(ResolveError::NoServers { name: name.to_string() });
                }
                let (sender, receiver) = watch::channel(None);
                let id = state.next_flight;
                state.next_flight = state.next_flight.wrapping_add(1);
                state.inflight.insert(name.clone(), Flight { id, result: receiver });
                Role::Leader {
                    sender,
                    id,
                    generation: state.generation,
                    servers: state.servers.clone(),
                }
            }
        };
        match role {
            Role::Leader {
                sender,
                id,
                generation,
                servers,
            } => {
                let _guard = FlightGuard { inner, name, id };
                let result = self.lookup(name, &servers, generation).await;
                // Nobody waiting is fine.
                let _ = sender.send(Some(result.clone()));
                result
            }
            Role::Follower(mut receiver) => {
                let shared = match receiver.wait_for(Option::is_some).await {
                    Ok(value) => value.clone(),
                    Err(_) => None,
                };
                match shared {
                    Some(result) => result,
                    // The leading lookup was cancelled before it finished: ask on our own.
                    None => {
                        let (servers, generation) = {
                            let state = inner.lock();
                            (state.servers.clone(), state.generation)
                        };
                        if servers.is_empty() {
                            return Err(ResolveError::NoServers { name: name.to_string() });
                        }
                        self.lookup(name, &servers, generation).await
                    }
                }
            }
        }
    }

    /// Asks the servers and caches a definitive answer (if the servers did not change meanwhile).
    async fn lookup(&self, name: &Name, servers: &[SocketAddrV4], generation: u64) -> Result<Resolved, ResolveError> {
        let (answer, server) = self.query_servers(name, servers).await?;
        {
            let mut state = self.inner.lock();
            if state.generation == generation {
                state.cache.insert(name.clone(), answer.clone(), Instant::now());
            }
        }
        answer.into_result(name, Some(server))
    }

    /// Tries every server in order, `attempts` rounds, until one gives a definitive answer.
    async fn query_servers(
        &self,
        name: &Name,
        servers: &[SocketAddrV4],
    ) -> Result<(Answer, SocketAddrV4), ResolveError> {
        let inner = &*self.inner;
        let options = &inner.options;
        let mut qname = DnsName::from_ascii(name.as_str()).map_err(|e| ResolveError::InvalidName {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        qname.set_fqdn(true);

        let rounds = options.attempts.max(1);
        let mut tried = 0usize;
        let mut last_failure: Option<(SocketAddrV4, Failure)> = None;
        for _round in 0..rounds {
            for &server in servers {
                if tried > 0 {
                    bump(&inner.counters.failovers);
                }
                tried += 1;
                match self.query_server(server, &qname).await {
                    Ok(answer) => {
                        if matches!(answer, Answer::NxDomain { .. }) {
                            bump(&inner.counters.nxdomain);
                        }
                        return Ok((answer, server));
                    }
                    Err(Failure::Timeout) => bump(&inner.counters.timeouts),
                    Err(failure) => {
                        match failure {
                            Failure::Rcode(_) => bump(&inner.counters.servfail),
                            Failure::Bad(_) => bump(&inner.counters.bad_responses),
                            _ => {}
                        }
                        last_failure = Some((server, failure));
                    }
                }
            }
        }
        let name = name.to_string();
        Err(match last_failure {
            Some((server, Failure::Rcode(rcode))) => ResolveError::ServerFailure {
                name,
                server,
                rcode: rcode_text(rcode),
            },
            Some((server, Failure::Bad(reason))) => ResolveError::BadResponse { name, server, reason },
            Some((server, Failure::Io(error))) => ResolveError::Network { name, server, error },
            Some((_, Failure::Timeout)) | None => ResolveError::Timeout {
                name,
                tried,
                servers: servers.to_vec(),
                timeout: options.timeout,
            },
        })
    }

    /// One query to one server: UDP, then TCP if the answer was truncated.
    async fn query_server(&self, server: SocketAddrV4, qname: &DnsName) -> Result<Answer, Failure> {
        let timeout = self.inner.options.timeout;
        let mut query = Message::query(); // random id
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(qname.clone(), RecordType::A));
        let id = query.metadata.id;
        let bytes = query
            .to_vec()
            .map_err(|e| Failure::Bad(format!("cannot encode the query: {e}")))?;

        let deadline = tokio::time::Instant::now() + timeout;
        let mut response = self.exchange_udp(server, &bytes, id, qname, deadline).await?;
        if response.metadata.truncation {
            bump(&self.inner.counters.tcp_retries);
            response = match tokio::time::timeout(timeout, exchange_tcp(server, &bytes, id, qname)).await {
                Ok(result) => result?,
                Err(_) => return Err(Failure::Timeout),
            };
        }
        interpret(&response, qname, &self.inner.options)
    }

    /// Sends the query from a fresh socket and waits for a matching answer until `deadline`, ignoring
    /// every other datagram.
    async fn exchange_udp(
        &self,
        server: SocketAddrV4,
        query: &[u8],
        id: u16,
        qname: &DnsName,
        deadline: tokio::time::Instant,
    ) -> Result<Message, Failure> {
        let io = |e: std::io::Error| Failure::Io(e.to_string());
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .await
            .map_err(io)?;
        // Connected: the kernel drops datagrams from other sources and reports ICMP port unreachable.
        socket.connect(server).await.map_err(io)?;
        match tokio::time::timeout_at(deadline, socket.send(query)).await {
            Ok(result) => result.map_err(io)?,
            Err(_) => return Err(Failure::Timeout),
        };
        let mut buffer = vec![0u8; UDP_BUFFER];
        loop {
            let (len, from) = match tokio::time::timeout_at(deadline, socket.recv_from(&mut buffer)).await {
                Ok(result) => result.map_err(io)?,
                Err(_) => return Err(Failure::Timeout),
            };
            let accepted = buffer
                .get(..len)
                .filter(|_| from == SocketAddr::V4(server))
                .and_then(|datagram| Message::from_vec(datagram).ok())
                .filter(|message| answers_query(message, id, qname));
            match accepted {
                Some(message) => return Ok(message),
                None => bump(&self.inner.counters.bad_responses),
            }
        }
    }
}

/// The TCP retry: 2-byte length prefix each way (RFC 1035 §4.2.2). The caller bounds it in time.
async fn exchange_tcp(server: SocketAddrV4, query: &[u8], id: u16, qname: &DnsName) -> Result<Message, Failure> {
    let io = |e: std::io::Error| Failure::Io(format!("TCP: {e}"));
    let len = u16::try_from(query.len()).map_err(|_| Failure::Bad("query too long for TCP".into()))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    let mut stream = TcpStream::connect(server).await.map_err(io)?;
    stream.write_all(&framed).await.map_err(io)?;
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).await.map_err(io)?;
    let mut buffer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut buffer).await.map_err(io)?;
    let message = Message::from_vec(&buffer).map_err(|e| Failure::Bad(format!("undecodable answer over TCP: {e}")))?;
    if !answers_query(&message, id, qname) {
        return Err(Failure::Bad("the answer over TCP is not for our query".into()));
    }
    Ok(message)
}

/// A response to our query: same id, a response, the same single question (name case-insensitively).
fn answers_query(message: &Message, id: u16, qname: &DnsName) -> bool {
    let meta = &message.metadata;
    meta.id == id
        && meta.message_type == MessageType::Response
        && meta.op_code == OpCode::Query
        && message.queries.len() == 1
        && message
            .queries
            .iter()
            .all(|q| q.query_type == RecordType::A && q.query_class == DNSClass::IN && q.name.eq(qname))
}

/// Why one query to one server did not give a definitive answer.
#[derive(Debug)]
enum Failure {
    Timeout,
    Rcode(ResponseCode),
    Bad(String),
    Io(String),
}

fn rcode_text(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("rcode {} ({other})", u16::from(other)),
    }
}

/// A definitive answer, as cached.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Addrs { addrs: Vec<Ipv4Addr>, ttl: Duration },
    NxDomain { ttl: Duration },
    NoAddress { ttl: Duration },
}

impl Answer {
    fn ttl(&self) -> Duration {
        match self {
            Self::Addrs { ttl, .. } | Self::NxDomain { ttl } | Self::NoAddress { ttl } => *ttl,
        }
    }

    fn with_ttl(mut self, remaining: Duration) -> Self {
        match &mut self {
            Self::Addrs { ttl, .. } | Self::NxDomain { ttl } | Self::NoAddress { ttl } => *ttl = remaining,
        }
        self
    }

    fn into_result(self, name: &Name, server: Option<SocketAddrV4>) -> Result<Resolved, ResolveError> {
        match self {
            Self::Addrs { addrs, ttl } => Ok(Resolved { addrs, server, ttl }),
            Self::NxDomain { .. } => Err(ResolveError::NxDomain { name: name.to_string() }),
            Self::NoAddress { .. } => Err(ResolveError::NoAddress { name: name.to_string() }),
        }
    }
}

/// Reads an answer to our (already matched) query: the rcode, then the CNAME chain from the query name
/// to its A records.
fn interpret(message: &Message, qname: &DnsName, options: &ResolverOptions) -> Result<Answer, Failure> {
    match message.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Ok(Answer::NxDomain {
                ttl: negative_ttl(message, u32::MAX, options),
            });
        }
        rcode => return Err(Failure::Rcode(rcode)),
    }
    let mut current = qname;
    let mut chain_ttl = u32::MAX;
    for _hop in 0..=MAX_CNAME_HOPS {
        let mut addrs = Vec::new();
        let mut ttl = chain_ttl;
        let mut next = None;
        for record in message
            .answers
            .iter()
            .filter(|r| r.dns_class == DNSClass::IN && r.name.eq(current))
        {
            match &record.data {
                RData::A(a) => {
                    if !addrs.contains(&a.0) {
                        addrs.push(a.0);
                    }
                    ttl = ttl.min(record.ttl);
                }
                RData::CNAME(target) if next.is_none() => next = Some((&target.0, record.ttl)),
                _ => {}
            }
        }
        if !addrs.is_empty() {
            return Ok(Answer::Addrs {
                addrs,
                ttl: clamp_ttl(Duration::from_secs(u64::from(ttl)), options),
            });
        }
        match next {
            Some((target, ttl)) => {
                current = target;
                chain_ttl = chain_ttl.min(ttl);
            }
            None => {
                return Ok(Answer::NoAddress {
                    ttl: negative_ttl(message, chain_ttl, options),
                });
            }
        }
    }
    Err(Failure::Bad(format!(
        "CNAME chain longer than {MAX_CNAME_HOPS} records"
    )))
}

fn clamp_ttl(ttl: Duration, options: &ResolverOptions) -> Duration {
    // Not Duration::clamp: it panics when min > max.
    ttl.max(options.min_ttl).min(options.max_ttl)
}

/// RFC 2308 §5: the lesser of the SOA's TTL and MINIMUM, here also capped by `negative_ttl` and the
/// CNAME chain's TTL; at least `min_ttl` (or `negative_ttl` when that is smaller).
fn negative_ttl(message: &Message, chain_ttl: u32, options: &ResolverOptions) -> Duration {
    let soa = message.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
        _ => None,
    });
    let secs = soa.unwrap_or(u32::MAX).min(chain_ttl);
    let floor = options.min_ttl.min(options.negative_ttl);
    Duration::from_secs(u64::from(secs))
        .min(options.negative_ttl)
        .max(floor)
}

/// Answers by name, bounded; expired entries are dropped when met or when room is needed.
struct Cache {
    entries: HashMap<Name, CacheEntry>,
    /// (expiry, insertion sequence) → name: the soonest-expiring entry first.
    by_expiry: BTreeMap<(Instant, u64), Name>,
    max_entries: usize,
    next_seq: u64,
}

struct CacheEntry {
    answer: Answer,
    expires: Instant,
    seq: u64,
}

impl Cache {
    fn new(max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            max_entries,
            next_seq: 0,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.by_expiry.clear();
    }

    /// The answer for `name` with what is left of its TTL, unless absent or expired (then dropped).
    fn get(&mut self, name: &Name, now: Instant) -> Option<Answer> {
        let entry = self.entries.get(name)?;
        match entry.expires.checked_duration_since(now) {
            Some(remaining) if !remaining.is_zero() => Some(entry.answer.clone().with_ttl(remaining)),
            _ => {
                self.remove(name);
                None
            }
        }
    }

    fn remove(&mut self, name: &Name) {
        if let Some(entry) = self.entries.remove(name) {
            self.by_expiry.remove(&(entry.expires, entry.seq));
        }
    }

    fn insert(&mut self, name: Name, answer: Answer, now: Instant) {
        self.remove(&name);
        if self.max_entries == 0 {
            return;
        }
        let Some(expires) = now.checked_add(answer.ttl()) else {
            return; // a TTL beyond the clock's range: not worth caching
        };
        // Expired entries go first, then the soonest-expiring live ones, until there is room.
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now && self.entries.len() < self.max_entries {
                break;
            }
            let evicted = entry.remove();
            self.entries.remove(&evicted);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.by_expiry.insert((expires, seq), name.clone());
        self.entries.insert(name, CacheEntry { answer, expires, seq });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use hickory_proto::rr::{
        Record,
        rdata::{A, CNAME, SOA},
    };
    use tokio::net::TcpListener;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Transport {
        Udp,
        Tcp,
    }

    /// What the fake server does with one query.
    enum Reply {
        /// Send these bytes from the server's socket.
        Send(Vec<u8>),
        /// Send these bytes from another socket (a spoofer's address).
        FromElsewhere(Vec<u8>),
        /// Send these bytes from the server's socket after a delay.
        Later(Duration, Vec<u8>),
    }

    type Handler = Arc<dyn Fn(&Message, Transport) -> Vec<Reply> + Send + Sync>;

    /// A fake DNS server on 127.0.0.1 (UDP and TCP on the same port), answering with `handler`.
    struct FakeServer {
        addr: SocketAddrV4,
        udp_queries: Arc<AtomicUsize>,
        tcp_queries: Arc<AtomicUsize>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Drop for FakeServer {
        fn drop(&mut self) {
            for task in &self.tasks {
                task.abort();
            }
        }
    }

    async fn fake_server(handler: impl Fn(&Message, Transport) -> Vec<Reply> + Send + Sync + 'static) -> FakeServer {
        let handler: Handler = Arc::new(handler);
        // The UDP port must also be free for TCP; retry with another port if not.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = match udp.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        let udp = Arc::new(udp);
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));

        let udp_task = {
            let (handler, count) = (handler.clone(), udp_queries.clone());
            tokio::spawn(async move {
                let spoofer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let mut buf = vec![0u8; 65_535];
                loop {
                    let Ok((len, from)) = udp.recv_from(&mut buf).await else {
                        continue;
                    };
                    let Ok(query) = Message::from_vec(&buf[..len]) else {
                        continue;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    for reply in handler(&query, Transport::Udp) {
                        match reply {
                            Reply::Send(bytes) => {
                                let _ = udp.send_to(&bytes, from).await;
                            }
                            Reply::FromElsewhere(bytes) => {
                                let _ = spoofer.send_to(&bytes, from).await;
                            }
                            Reply::Later(delay, bytes) => {
                                let udp = udp.clone();
                                tokio::spawn(async move {
                                    tokio::time::sleep(delay).await;
                                    let _ = udp.send_to(&bytes, from).await;
                                });
                            }
                        }
                    }
                }
            })
        };
        let tcp_task = {
            let (handler, count) = (handler.clone(), tcp_queries.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = tcp.accept().await else {
                        continue;
                    };
                    let (handler, count) = (handler.clone(), count.clone());
                    tokio::spawn(async move {
                        let mut prefix = [0u8; 2];
                        stream.read_exact(&mut prefix).await.unwrap();
                        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
                        stream.read_exact(&mut buf).await.unwrap();
                        let query = Message::from_vec(&buf).unwrap();
                        count.fetch_add(1, Ordering::SeqCst);
                        for reply in handler(&query, Transport::Tcp) {
                            if let Reply::Send(bytes) | Reply::Later(_, bytes) = reply {
                                let len = u16::try_from(bytes.len()).unwrap();
                                stream.write_all(&len.to_be_bytes()).await.unwrap();
                                stream.write_all(&bytes).await.unwrap();
                            }
                        }
                    });
                }
            })
        };
        FakeServer {
            addr,
            udp_queries,
            tcp_queries,
            tasks: vec![udp_task, tcp_task],
        }
    }

    fn dns(name: &str) -> DnsName {
        DnsName::from_ascii(name).unwrap()
    }

    fn name(text: &str) -> Name {
        Name::parse(text).unwrap()
    }

    fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(dns(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(dns(owner), ttl, RData::CNAME(CNAME(dns(target))))
    }

    fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
        let data = SOA::new(
            dns("ns.invalid."),
            dns("hostmaster.invalid."),
            1,
            3600,
            600,
            86400,
            minimum,
        );
        Record::from_rdata(dns(zone), ttl, RData::SOA(data))
    }

    /// A response to `query` (same id and question) with `rcode` and `answers`.
    fn respond(query: &Message, rcode: ResponseCode, answers: Vec<Record>) -> Message {
        let mut response = Message::response(query.metadata.id, OpCode::Query);
        response.metadata.response_code = rcode;
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.queries = query.queries.clone();
        response.answers = answers;
        response
    }

    fn bytes(message: &Message) -> Vec<u8> {
        message.to_vec().unwrap()
    }

    fn options(timeout_ms: u64) -> ResolverOptions {
        ResolverOptions {
            timeout: Duration::from_millis(timeout_ms),
            attempts: 1,
            ..ResolverOptions::default()
        }
    }

    async fn resolve(resolver: &Resolver, host: &str) -> Result<Resolved, ResolveError> {
        tokio::time::timeout(LIMIT, resolver.resolve_v4(&name(host)))
            .await
            .expect("lookup took too long")
    }

    #[tokio::test]
    async fn a_answer() {
        let server = fake_server(|q, _| {
            assert!(q.metadata.recursion_desired);
            assert_eq!(q.queries[0].query_type, RecordType::A);
            let answers = vec![
                a("www.example.com.", 300, [192, 0, 2, 1]),
                a("www.example.com.", 300, [192, 0, 2, 2]),
            ];
            vec![Reply::Send(bytes(&respond(q, ResponseCode::NoError, answers)))]
        })
        .await;
        let resolver = Resolver::new(vec![server.addr], options(1000));
        let got = resolve(&resolver, "www.example.com").await.unwrap();
        assert_eq!(got.addrs, [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)]);
        assert_eq!(got.server, Some(server.addr));
        assert_eq!(got.ttl, Duration::from_secs(300));
        assert_eq!(resolver.stats().queries, 1);
        assert_eq!(resolver.stats().cache_misses, 1);
    }

    #[tokio::test]
    async fn cname_chain_is_followed_case_insensitively_with_the_least_ttl() {
        let server = fake_server(|q, _| {
            let answers = vec![
                a("unrelated.example.net.", 5000, [203, 0, 113, 9]),
                cname("WWW.Example.COM.", 300, "edge.cdn.example.net."),
                a("e1.cdn.example.net.", 120, [198, 51, 100, 7]),
                cname("edge.cdn.example.net.", 60, "e1.CDN.example.net."),
            ];
            vec![Reply::Send(bytes(&respond(q, ResponseCode::NoError, answers)))]
        })
        .await;
        let resolver = Resolver::new(vec![server.addr], options(1000));
        let got = resolve(&resolver, "www.example.com").await.unwrap();
        assert_eq!(got.addrs, [Ipv4Addr::new(198, 51, 100, 7)]);
        assert_eq!(got.ttl, Duration::from_secs(60));
    }

    #[tokio::test]
    async fn cname_loop_is_a_bad_response() {
        let server = fake_server(|q, _| {
            let answers = vec![
                cname("a.example.com.", 300, "b.example.com."),
                cname("b.example.com.", 300, "a.example.com."),
            ];
            vec![Reply::Send(bytes(&respond(q, ResponseCode::NoError, answers)))]
        })
        .await;
        let resolver = Resolver::new(vec![server.addr], options(1000));
        let err = resolve(&resolver, "a.example.com").await.unwrap_err();
        assert!(matches!(err, ResolveError::BadResponse { .. }), "{err}");
        assert!(err.to_string().contains("a.example.com"), "{err}");
    }

    #[tokio::test]
    async fn ttl_is_clamped_and_the_second_lookup_is_a_cache_hit() {
        let server = fake_server(|q, _| {
            let ttl = if q.queries[0].name.to_ascii().starts_with("short") {
                1
            } else {
                1_000_000
            };
            let owner = q.queries[0].name.to_ascii();
            vec![Reply::Send(bytes(&respond(
                q,
                ResponseCode::NoError,
                vec![a(&owner, ttl, [192, 0, 2, 3])],
            )))]
        })
        .await;
        let resolver = Resolver::new(vec![server.addr], options(1000));
        let short = resolve(&resolver, "short.example.com").await.unwrap();
        assert_eq!(short.ttl, Duration::from_secs(5));
        let long = resolve(&resolver, "long.example.com").await.unwrap();
        assert_eq!(long.ttl, Duration::from_secs(3600));

        let again = resolve(&resolver, "long.example.com").await.unwrap();
        assert_eq!(again.server, None);
        assert_eq!(again.addrs, long.addrs);
        assert!(again.ttl <= Duration::from_secs(3600) && again.ttl > Duration::from_secs(3590));
        assert_eq!(server.udp_queries.load(Ordering::SeqCst), 2);
        let stats = resolver.stats();
        assert_eq!((stats.queries, stats.cache_hits, stats.cache_misses), (3, 1, 2));
    }

    #[tokio::test]
    async fn nxdomain_is_negatively_cached() {
        let server = fake_server(|q, _| {
            let mut response = respond(q, ResponseCode::NXDomain, vec![]);
            response.authorities.push(soa("example.com.", 900, 10));
            vec![Reply::Send(bytes(&response))]
        })
        .await;
        let resolver = Resolver::new(vec![server.addr], options(1000));
        let err = resolve(&resolver, "nope.example.com").await.unwrap_err();
        assert_eq!(
            err,
            ResolveError::NxDomain {
                name: "nope.example.com".into()
            }
        );
        assert!(err.to_string().contains("nope.example.com"));
        let err = resolve(&resolver, "nope.example.com").await.unwrap_err();
        assert!(matches!(err, ResolveError::NxDomain { .. }));
        assert_eq!(server.udp_queries.load(Ordering::SeqCst), 1);
        let stats = resolver.stats();
        assert_eq!((stats.nxdomain, stats.cache_hits), (1, 1));
        // SOA minimum 10 s caps the 30 s negative TTL.
        let state = resolver.inner.lock();
        let entry = state.cache.entries.get(&name("nope.example.com")).unwrap();
        assert_eq!(
            entry.answer,
            Answer::NxDomain {
                ttl: Duration::from_secs(10)
            }
        );
    }

    #[tokio::test]
    async fn noerror_without_a_is_no_address_and_cached() {
        let server = fake_server(|q, _| {
            // A CNAME to a name whose A records are not in the answer: nothing to connect to.
            let answers = vec![cname("v6only.example.com.", 300, "host.example.net.")];
            vec![Reply::Send(bytes(&respond(q, ResponseCode::NoError, answers)))]
        })
        .await;
        let resolver = Resolver::new(vec![server.addr], options(1000));
        for _ in 0..2 {
            let err = resolve(&resolver, "v6only.example.com").await.unwrap_err();
            assert_eq!(
                err,
                ResolveError::NoAddress {
                    name: "v6only.example.com".into()
                }
            );
        }
        assert_eq!(server.udp_queries.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn fails_over_when_the_first_server_never_answers() {
        let silent = fake_server(|_, _| vec![]).await;
        let good = fake_server(|q, _| {
            vec![Reply::Send(bytes(&respond(
                q,
                ResponseCode::NoError,
                vec![a("x.example.com.", 60, [192, 0, 2, 4])],
            )))]
        })
        .await;
        let resolver = Resolver::new(vec![silent.addr, good.addr], options(200));
        let started = Instant::now();
        let got = resolve(&resolver, "x.example.com").await.unwrap();
        assert_eq!(got.server, Some(good.addr));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(silent.udp_queries.load(Ordering::SeqCst), 1);
        let stats = resolver.stats();
        assert_eq!((stats.timeouts, stats.failovers), (1, 1));
    }

    #[tokio::test]
    async fn all_servers_silent_is_a_timeout_after_every_attempt() {
        let one = fake_server(|_, _| vec![]).await;
        let two = fake_server(|_, _| vec![]).await;
        let opts = ResolverOptions {
            attempts: 2,
            ..options(100)
        };
        let resolver = Resolver::new(vec![one.addr, two.addr], opts);
        let err = resolve(&resolver, "x.example.com").await.unwrap_err();
        match &err {
            ResolveError::Timeout { tried, servers, .. } => {
                assert_eq!(*tried, 4);
                assert_eq!(servers, &[one.addr, two.addr]);
            }
            other => panic!("unexpected {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("x.example.com") && text.contains(&one.addr.to_string()),
            "{text}"
        );
        assert_eq!(one.udp_queries.load(Ordering::SeqCst), 2);
        assert_eq!(resolver.stats().timeouts, 4);
        assert_eq!(resolver.cache_len(), 0);
    }

    #[tokio::test]
    async fn servfail_and_refused_fail_over() {
        let servfail = fake_server(|q, _| vec![Reply::Send(bytes(&respond(q, ResponseCode::ServFail, vec![])))]).await;
        let refused = fake_server(|q, _| vec![Reply::Send(bytes(&respond(q, ResponseCode::Refused, vec![])))]).await;
        let good = fake_server(|q, _| {
            vec![Reply::Send(bytes(&respond(
                q,
                ResponseCode::NoError,
                vec![a("x.example.com.", 60, [192, 0, 2, 5])],
            )))]
        })
        .await;
        let resolver = Resolver::new(vec![servfail.addr, refused.addr, good.addr], options(1000));
        let got = resolve(&resolver, "x.example.com").await.unwrap();
        assert_eq!(got.server, Some(good.addr));
        assert_eq!(got.addrs, [Ipv4Addr::new(192, 0, 2, 5)]);
        let stats = resolver.stats();
        assert_eq!((stats.servfail, stats.failovers), (2, 2));
    }

    #[tokio::test]
    async fn servfail_everywhere_is_reported_and_not_cached() {
        let servfail = fake_server(|q, _| vec![Reply::Send(bytes(&respond(q, ResponseCode::ServFail, vec![])))]).await;
        let resolver = Resolver::new(vec![servfail.addr], options(1000));
        for _ in 0..2 {
            let err = resolve(&resolver, "x.example.com").await.unwrap_err();
            assert_eq!(
                err,
                ResolveError::ServerFailure {
                    name: "x.example.com".into(),
                    server: servfail.addr,
                    rcode: "SERVFAIL".into()
                }
            );
        }
        assert_eq!(servfail.udp_queries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn truncated_answer_is_retried_over_tcp() {
        let server = fake_server(|q, transport| {
            let full = respond(
                q,
                ResponseCode::NoError,
                vec![a("big.example.com.", 60, [192, 0, 2, 6])],
            );
            match transport {
                Transport::Udp => vec![Reply::Send(bytes(&full.truncate()))],
                Transport::Tcp => vec![Reply::Send(bytes(&full))],
            }
        })
        .await;
        let resolver = Resolver::new(vec![server.addr], options(1000));
        let got = resolve(&resolver, "big.example.com").await.unwrap();
        assert_eq!(got.addrs, [Ipv4Addr::new(192, 0, 2, 6)]);
        assert_eq!(server.udp_queries.load(Ordering::SeqCst), 1);
        assert_eq!(server.tcp_queries.load(Ordering::SeqCst), 1);
        assert_eq!(resolver.stats().tcp_retries, 1);
    }

    #[tokio::test]
    async fn spoofed_stale_and_garbage_datagrams_are_ignored() {
        let server = fake_server(|q, _| {
            let evil = vec![a("x.example.com.", 60, [6, 6, 6, 6])];
            let mut wrong_id = respond(q, ResponseCode::NoError, evil.clone());
            wrong_id.metadata.id = q.metadata.id.wrapping_add(1);
            let mut wrong_question = respond(q, ResponseCode::NoError, vec![a("y.example.com.", 60, [6, 6, 6, 6])]);
            wrong_question.queries = vec![Query::query(dns("y.example.com."), RecordType::A)];
            let mut wrong_type = respond(q, ResponseCode::NoError, evil.clone());
            wrong_type.queries = vec![Query::query(dns("x.example.com."), RecordType::AAAA)];
            let mut not_a_response = respond(q, ResponseCode::NoError, evil.clone());
            not_a_response.metadata.message_type = MessageType::Query;
            let mut truncated_bytes = bytes(&respond(q, ResponseCode::NoError, evil.clone()));
            truncated_bytes.truncate(truncated_bytes.len() - 3);
            let real = respond(q, ResponseCode::NoError, vec![a("x.example.com.", 60, [192, 0, 2, 7])]);
            vec![
                Reply::FromElsewhere(bytes(&respond(q, ResponseCode::NoError, evil))),
                Reply::Send(bytes(&wrong_id)),
                Reply::Send(bytes(&wrong_question)),
                Reply::Send(bytes(&wrong_type)),
                Reply::Send(bytes(&not_a_response)),
                Reply::Send(vec![]),
                Reply::Send(vec![0xff; 7]),
                Reply::Send(truncated_bytes),
                Reply::Later(Duration::from_millis(50), bytes(&real)),
            ]
        })
        .await;
        let resolver = Resolver::new(vec![server.addr], options(2000));
        let got = resolve(&resolver, "x.example.com").await.unwrap();
        assert_eq!(got.addrs, [Ipv4Addr::new(192, 0, 2, 7)]);
        // The spoofer's datagram is dropped by the kernel (connected socket); the rest are counted.
        assert!(resolver.stats().bad_responses >= 7, "{:?}", resolver.stats());
    }

    #[tokio::test]
    async fn garbage_only_ends_in_a_timeout_and_failover() {
        let garbage = fake_server(|_, _| {
            vec![
                Reply::Send(vec![0; 1]),
                Reply::Send(vec![0xab; 600]),
                Reply::Send(b"HTTP/1.1 200 OK\r\n".to_vec()),
            ]
        })
        .await;
        let good = fake_server(|q, _| {
            vec![Reply::Send(bytes(&respond(
                q,
                ResponseCode::NoError,
                vec![a("x.example.com.", 60, [192, 0, 2, 8])],
            )))]
        })
        .await;
        let resolver = Resolver::new(vec![garbage.addr], options(200));
        let err = resolve(&resolver, "x.example.com").await.unwrap_err();
        assert!(matches!(err, ResolveError::Timeout { tried: 1, .. }), "{err}");
        resolver.set_servers(vec![garbage.addr, good.addr]);
        let got = resolve(&resolver, "x.example.com").await.unwrap();
        assert_eq!(got.server, Some(good.addr));
    }

    #[tokio::test]
    async fn concurrent_lookups_share_one_query() {
        let server = fake_server(|q, _| {
            let response = respond(q, ResponseCode::NoError, vec![a("x.example.com.", 60, [192, 0, 2, 9])]);
            vec![Reply::Later(Duration::from_millis(100), bytes(&response))]
        })
        .await;
        let resolver = Resolver::new(vec![server.addr], options(2000));
        let handles: Vec<_> = (0..5)
            .map(|_| {
                let resolver = resolver.clone();
                tokio::spawn(async move { resolve(&resolver, "x.example.com").await })
            })
            .collect();
        for handle in handles {
            let got = handle.await.unwrap().unwrap();
            assert_eq!(got.addrs, [Ipv4Addr::new(192, 0, 2, 9)]);
        }
        assert_eq!(server.udp_queries.load(Ordering::SeqCst), 1);
        assert!(resolver.inner.lock().inflight.is_empty());
    }

    #[tokio::test]
    async fn cancelled_leader_does_not_strand_followers() {
        let server = fake_server(|q, _| {
            let response = respond(q, ResponseCode::NoError, vec![a("x.example.com.", 60, [192, 0, 2, 10])]);
            vec![Reply::Later(Duration::from_millis(100), bytes(&response))]
        })
        .await;
        let resolver = Resolver::new(vec![server.addr], options(2000));
        let leader = {
            let resolver = resolver.clone();
            tokio::spawn(async move { resolve(&resolver, "x.example.com").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let follower = {
            let resolver = resolver.clone();
            tokio::spawn(async move { resolve(&resolver, "x.example.com").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        let got = follower.await.unwrap().unwrap();
        assert_eq!(got.addrs, [Ipv4Addr::new(192, 0, 2, 10)]);
        assert_eq!(server.udp_queries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn closed_port_fails_over_without_waiting_for_the_timeout() {
        let closed = {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            match socket.local_addr().unwrap() {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(_) => unreachable!(),
            }
        };
        let good = fake_server(|q, _| {
            vec![Reply::Send(bytes(&respond(
                q,
                ResponseCode::NoError,
                vec![a("x.example.com.", 60, [192, 0, 2, 12])],
            )))]
        })
        .await;
        let resolver = Resolver::new(vec![closed, good.addr], options(5000));
        let started = Instant::now();
        let got = resolve(&resolver, "x.example.com").await.unwrap();
        assert_eq!(got.server, Some(good.addr));
        // ICMP port unreachable reaches the connected socket: no 5 s wait.
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(resolver.stats().failovers, 1);

        let resolver = Resolver::new(vec![closed], options(5000));
        let err = resolve(&resolver, "x.example.com").await.unwrap_err();
        assert!(
            matches!(err, ResolveError::Network { server, .. } if server == closed),
            "{err}"
        );
    }

    #[test]
    fn resolver_is_send_and_sync() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Resolver>();
    }

    #[tokio::test]
    async fn no_servers() {
        let resolver = Resolver::new(vec![], ResolverOptions::default());
        let err = resolve(&resolver, "x.example.com").await.unwrap_err();
        assert_eq!(
            err,
            ResolveError::NoServers {
                name: "x.example.com".into()
            }
        );
        assert!(err.to_string().contains("dnsSettings.servers"));
    }

    #[tokio::test]
    async fn set_servers_flushes_the_cache_only_when_they_change() {
        let server = fake_server(|q, _| {
            vec![Reply::Send(bytes(&respond(
                q,
                ResponseCode::NoError,
                vec![a("x.example.com.", 60, [192, 0, 2, 11])],
            )))]
        })
        .await;
        let other = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
        let resolver = Resolver::new(vec![server.addr], options(1000));
        resolve(&resolver, "x.example.com").await.unwrap();
        resolver.set_servers(vec![server.addr]);
        assert_eq!(resolver.cache_len(), 1);
        assert_eq!(resolve(&resolver, "x.example.com").await.unwrap().server, None);
        resolver.set_servers(vec![other, server.addr]);
        assert_eq!(resolver.servers(), [other, server.addr]);
        assert_eq!(resolver.cache_len(), 0);
    }

    fn addrs(last: u8, ttl_secs: u64) -> Answer {
        Answer::Addrs {
            addrs: vec![Ipv4Addr::new(192, 0, 2, last)],
            ttl: Duration::from_secs(ttl_secs),
        }
    }

    #[test]
    fn cache_expires_lazily_and_reports_the_remaining_ttl() {
        let t0 = Instant::now();
        let mut cache = Cache::new(10);
        cache.insert(name("a.example"), addrs(1, 30), t0);
        let hit = cache.get(&name("a.example"), t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(hit, addrs(1, 20));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&name("a.example"), t0 + Duration::from_secs(30)), None);
        assert_eq!(cache.len(), 0);
        assert!(cache.by_expiry.is_empty());
    }

    #[test]
    fn cache_is_bounded_and_evicts_expired_then_soonest_expiring() {
        let t0 = Instant::now();
        let mut cache = Cache::new(3);
        cache.insert(name("a.example"), addrs(1, 100), t0);
        cache.insert(name("b.example"), addrs(2, 10), t0);
        cache.insert(name("c.example"), addrs(3, 50), t0);
        cache.insert(name("d.example"), addrs(4, 70), t0);
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&name("b.example"), t0).is_none(), "soonest-expiring evicted");
        // At t0+60 c has expired: it goes first, a stays.
        let t1 = t0 + Duration::from_secs(60);
        cache.insert(name("e.example"), addrs(5, 5), t1);
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&name("c.example"), t1).is_none());
        assert!(cache.get(&name("a.example"), t1).is_some());
        // Replacing a name does not grow the cache.
        cache.insert(name("a.example"), addrs(9, 100), t1);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.by_expiry.len(), 3);
        for i in 0..100u8 {
            cache.insert(name(&format!("n{i}.example")), addrs(i, u64::from(i) + 1), t1);
            assert!(cache.len() <= 3 && cache.by_expiry.len() == cache.len());
        }
    }

    #[test]
    fn zero_capacity_caches_nothing_and_huge_ttls_do_not_panic() {
        let t0 = Instant::now();
        let mut cache = Cache::new(0);
        cache.insert(name("a.example"), addrs(1, 30), t0);
        assert_eq!(cache.len(), 0);
        let mut cache = Cache::new(1);
        cache.insert(name("a.example"), Answer::NxDomain { ttl: Duration::MAX }, t0);
        assert!(cache.len() <= 1);
    }

    #[test]
    fn ttl_bounds_never_panic() {
        let weird = ResolverOptions {
            min_ttl: Duration::from_secs(100),
            max_ttl: Duration::from_secs(10),
            ..ResolverOptions::default()
        };
        assert_eq!(clamp_ttl(Duration::from_secs(50), &weird), Duration::from_secs(10));
        let message = Message::response(1, OpCode::Query);
        assert_eq!(
            negative_ttl(&message, u32::MAX, &ResolverOptions::default()),
            Duration::from_secs(30)
        );
    }
}
