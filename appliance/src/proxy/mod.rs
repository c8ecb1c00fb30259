//! The transparent application proxy (application rules, azure-firewall.md §2.3–2.4, §3).
//!
//! The data plane hands TCP to application-rule ports to the host stack; nftables TPROXY ([`steer`])
//! delivers it to one `IP_TRANSPARENT` listener ([`server`]), whose accepted sockets still carry the
//! destination the client used. Each connection ([`conn`]) is classified by its first bytes — a TLS
//! ClientHello ([`client_hello`], by SNI) or an HTTP/1.x request head ([`http_head`], by Host, every request
//! of a keep-alive connection, bodies framed by [`http_body`]) — decided by `rules/`, and, when allowed,
//! dialled by name through the appliance's own resolver ([`resolve`]) and relayed with splice ([`relay`]).

pub mod client_hello;
mod conn;
pub mod http_body;
pub mod http_head;
mod relay;
pub mod resolve;
mod server;
pub mod stats;
pub mod steer;
#[cfg(test)]
mod tests;

pub use conn::{AppEvent, Compiled, EventSink, Timeouts};
pub use server::{Limits, Proxy, ProxyConfig, ProxyError, dns_servers};
