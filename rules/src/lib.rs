//! portcullis policy engine: Azure Firewall Policy files (YAML or JSON, Azure's field names) parsed,
//! validated with `FILE:LINE:COL` diagnostics, compiled and evaluated in Azure's processing order.
//!
//! Pure: no sockets, no clock; files come through a [`Loader`]. One compiled [`Policy`] answers the data
//! plane, the application proxy, DNS pinning and `explain`.

#![forbid(unsafe_code)]

pub mod addr;
pub mod appindex;
pub mod classify;
pub mod compile;
pub mod decode;
pub mod diag;
pub mod eval;
pub mod fqdn;
pub mod fqdn_tags;
pub mod import;
pub mod policy;
pub mod port;
pub mod source;
pub mod threat;
pub mod yaml_emit;

pub use compile::{FsLoader, Invalid, Loaded, Loader, MemLoader, load, load_str};
pub use decode::{Action, AppProtocol, NatTarget, ThreatIntelMode};
pub use diag::{Diagnostic, Severity};
pub use eval::{Decision, Env, Flow, NoResolutions, Protocol, Resolutions, Stage, Verdict};
pub use fqdn::{FqdnPattern, Name};
pub use policy::{Config, Policy};
pub use threat::ThreatFeed;
