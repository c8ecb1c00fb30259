//! The proxy's counters: every decision, refusal and failure is counted here (and, for decisions, also
//! written to the flow log), so the operations work can export them without touching the proxy.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters, shared by every connection task.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`Stats`] at one moment.
        #[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
        pub struct Snapshot {
            $(pub $name: u64,)*
        }

        impl Stats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Connections accepted by the listener.
    accepted,
    /// Connections open now (gauge).
    active,
    /// Refused at accept: the appliance-wide connection limit.
    refused_total_limit,
    /// Refused at accept: the per-source connection limit.
    refused_source_limit,
    /// Reached the listener without having been steered (not an intercepted port).
    not_intercepted,
    /// TLS ClientHellos decided.
    tls,
    /// HTTP requests decided (every request of a keep-alive connection).
    http_requests,
    /// Decisions: allowed (application rules, or a network rule that won the race to the proxy).
    allowed,
    /// Decisions: denied by a rule or the default action.
    denied,
    /// Denied: ClientHello without server_name.
    denied_no_sni,
    /// Denied: ClientHello with encrypted_client_hello.
    denied_ech,
    /// Denied: not TLS and not HTTP/1.x on an intercepted port, or a malformed/oversized hello or head.
    denied_unparsable,
    /// Denied: HTTP Host port different from the TCP port.
    denied_host_port,
    /// Closed: the first bytes did not complete in time (silent or dribbling client).
    handshake_timeouts,
    /// Closed: no bytes either way for the idle timeout.
    idle_timeouts,
    /// Closed: a policy reload denies the connection now.
    cut_by_reload,
    /// The name did not resolve (NXDOMAIN, no address, servers failing).
    resolve_failures,
    /// The upstream connection failed or timed out.
    connect_failures,
    /// Upstream connections opened.
    upstream_connections,
    /// HTTP connections switched to a tunnel by a 101 (WebSocket and other upgrades).
    upgrades,
    /// Bytes client → server and server → client.
    bytes_up,
    bytes_down,
}

impl Stats {
    pub fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self, counter: &AtomicU64) {
        self.add(counter, 1);
    }
}
