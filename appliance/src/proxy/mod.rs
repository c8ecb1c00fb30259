//! The transparent application proxy (application rules): wire parsers first — the TLS ClientHello
//! (SNI) and the HTTP request head (Host) — pure, bounded, and fuzzed.

pub mod client_hello;
pub mod http_head;
