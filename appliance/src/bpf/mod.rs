//! The eBPF data plane from userspace: the embedded object, loading, XDP attachment, map access.
//!
//! This module is the only place in the crate allowed to contain `unsafe` code (every other module
//! can carry `#![forbid(unsafe_code)]`). At present it needs none: aya wraps the `bpf(2)` syscalls
//! and the map value types are primitives aya already implements `Pod` for. Any `unsafe` added here
//! later must carry a `// SAFETY:` comment.
//!
//! - [`object`]: the ELF object `appliance/build.rs` compiled from `ebpf/programs`.
//! - [`DataPlane`]: loads the object and the `xdp_ingress` program (running the verifier), attaches
//!   it (native/driver mode, falling back to generic/skb mode), reads the class counters, and
//!   writes the `DENY_V4` trie.
//! - [`privileged_env`]: why privileged (root + BPF) code cannot run here, if it cannot.

mod counters;
mod privileged;

use std::{fmt, net::Ipv4Addr};

use aya::{
    Ebpf, EbpfError,
    maps::{LpmTrie, MapError, PerCpuArray, lpm_trie::Key},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
    sys::SyscallError,
};
pub use counters::ClassCounters;
use portcullis_common::{COUNTERS_MAP, DENY_V4_MAP, Ipv4Key, XDP_INGRESS};
pub use portcullis_common::{Counter, RuleId};
pub use privileged::privileged_env;

/// The eBPF object (ELF, all programs and maps), 8-byte aligned as aya's loader requires.
///
/// Empty if the crate was built with `AYA_BUILD_SKIP=1`.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis"))
}

/// Errors of the eBPF data plane.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("the eBPF object was not built (AYA_BUILD_SKIP was set when compiling); rebuild without it")]
    NotBuilt,
    #[error("loading the eBPF object")]
    Load(#[source] Box<EbpfError>),
    #[error("the eBPF object has no {kind} named `{name}`")]
    Missing { kind: &'static str, name: &'static str },
    #[error("program `{name}`")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("no network interface named `{0}` (in this thread's network namespace)")]
    UnknownInterface(String),
    #[error(
        "attaching `{XDP_INGRESS}` to `{interface}` failed in native (driver) mode ({driver}) and in \
         generic (skb) mode ({skb})"
    )]
    Attach {
        interface: String,
        driver: Box<ProgramError>,
        skb: Box<ProgramError>,
    },
    #[error("`{XDP_INGRESS}` is already attached to `{0}`; detach it first")]
    AlreadyAttached(String),
    #[error("IPv4 prefix length {0} is longer than 32")]
    PrefixLength(u8),
}

/// How `xdp_ingress` was attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// Native XDP, run by the driver (`XDP_FLAGS_DRV_MODE`).
    Driver,
    /// Generic XDP, run by the kernel stack on the skb (`XDP_FLAGS_SKB_MODE`); slower, works on
    /// any device.
    Skb,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Driver => "driver (native)",
            AttachMode::Skb => "skb (generic)",
        })
    }
}

#[derive(Debug)]
struct Attachment {
    interface: String,
    mode: AttachMode,
    link: XdpLinkId,
}

/// The loaded eBPF object with `xdp_ingress` verified and loaded into the kernel.
///
/// Maps and counters belong to this instance: a second `DataPlane` has its own. Dropping it detaches
/// the program (the XDP link is owned by this process) and frees the maps.
///
/// Attachment resolves the interface name in the network namespace of the calling thread; load,
/// attach and detach on a thread that stays in one namespace.
#[derive(Debug)]
pub struct DataPlane {
    ebpf: Ebpf,
    attachment: Option<Attachment>,
}

impl DataPlane {
    /// Loads the embedded object and the `xdp_ingress` program (the verifier runs here).
    pub fn load() -> Result<Self, BpfError> {
        Self::load_object(object())
    }

    /// Loads `object` (an ELF object with the same programs and maps as [`object`]).
    pub fn load_object(object: &[u8]) -> Result<Self, BpfError> {
        if object.is_empty() {
            return Err(BpfError::NotBuilt);
        }
        let ebpf = Ebpf::load(object).map_err(|e| BpfError::Load(Box::new(e)))?;
        let mut plane = DataPlane { ebpf, attachment: None };
        plane
            .xdp_ingress_mut()?
            .load()
            .map_err(|e| program_error(XDP_INGRESS, e))?;
        // Fail early (rather than on first use) if the object lacks a map.
        plane.counters()?;
        plane.deny_v4_map()?;
        Ok(plane)
    }

    /// The loaded `xdp_ingress` program, e.g. for `aya::programs::TestRun::test_run`.
    pub fn xdp_ingress(&self) -> Result<&Xdp, BpfError> {
        let program = self.ebpf.program(XDP_INGRESS).ok_or(BpfError::Missing {
            kind: "program",
            name: XDP_INGRESS,
        })?;
        program.try_into().map_err(|e| program_error(XDP_INGRESS, e))
    }

    fn xdp_ingress_mut(&mut self) -> Result<&mut Xdp, BpfError> {
        let program = self.ebpf.program_mut(XDP_INGRESS).ok_or(BpfError::Missing {
            kind: "program",
            name: XDP_INGRESS,
        })?;
        program.try_into().map_err(|e| program_error(XDP_INGRESS, e))
    }

    /// Attaches `xdp_ingress` to `interface` (a name in the calling thread's network namespace):
    /// native (driver) mode first, generic (skb) mode if the driver refuses. Returns the mode used.
    pub fn attach(&mut self, interface: &str) -> Result<AttachMode, BpfError> {
        if let Some(attachment) = &self.attachment {
            return Err(BpfError::AlreadyAttached(attachment.interface.clone()));
        }
        let program = self.xdp_ingress_mut()?;
        let (link, mode) = match program.attach(interface, XdpMode::Driver) {
            Ok(link) => (link, AttachMode::Driver),
            Err(ProgramError::UnknownInterface { name }) => {
                return Err(BpfError::UnknownInterface(name));
            }
            Err(driver) => match program.attach(interface, XdpMode::Skb) {
                Ok(link) => (link, AttachMode::Skb),
                Err(skb) => {
                    return Err(BpfError::Attach {
                        interface: interface.to_owned(),
                        driver: Box::new(driver),
                        skb: Box::new(skb),
                    });
                }
            },
        };
        self.attachment = Some(Attachment {
            interface: interface.to_owned(),
            mode,
            link,
        });
        Ok(mode)
    }

    /// The interface and mode `xdp_ingress` is attached with, if it is.
    pub fn attached(&self) -> Option<(&str, AttachMode)> {
        self.attachment.as_ref().map(|a| (a.interface.as_str(), a.mode))
    }

    /// Detaches `xdp_ingress` if it is attached (a no-op otherwise).
    pub fn detach(&mut self) -> Result<(), BpfError> {
        let Some(attachment) = self.attachment.take() else {
            return Ok(());
        };
        self.xdp_ingress_mut()?
            .detach(attachment.link)
            .map_err(|e| program_error(XDP_INGRESS, e))
    }

    /// The class counters, each summed over all CPUs. Cumulative since [`DataPlane::load`].
    pub fn counters(&self) -> Result<ClassCounters, BpfError> {
        let map = self.ebpf.map(COUNTERS_MAP).ok_or(BpfError::Missing {
            kind: "map",
            name: COUNTERS_MAP,
        })?;
        let array = PerCpuArray::<_, u64>::try_from(map).map_err(|e| map_error(COUNTERS_MAP, e))?;
        let mut counters = ClassCounters::default();
        for counter in Counter::ALL {
            let per_cpu = array.get(&counter.index(), 0).map_err(|e| map_error(COUNTERS_MAP, e))?;
            counters.set(counter, per_cpu.iter().copied().fold(0, u64::wrapping_add));
        }
        Ok(counters)
    }

    fn deny_v4_map(&mut self) -> Result<LpmTrie<&mut aya::maps::MapData, Ipv4Key, RuleId>, BpfError> {
        let map = self.ebpf.map_mut(DENY_V4_MAP).ok_or(BpfError::Missing {
            kind: "map",
            name: DENY_V4_MAP,
        })?;
        LpmTrie::try_from(map).map_err(|e| map_error(DENY_V4_MAP, e))
    }

    /// Denies IPv4 destinations in `network/prefix_len` (host bits are masked off), recording `rule`
    /// as the reason. Replaces an existing entry for the same prefix.
    pub fn deny_v4(&mut self, network: Ipv4Addr, prefix_len: u8, rule: RuleId) -> Result<(), BpfError> {
        let key = lpm_key(network, prefix_len)?;
        self.deny_v4_map()?
            .insert(&key, rule, 0)
            .map_err(|e| map_error(DENY_V4_MAP, e))
    }

    /// Removes the `network/prefix_len` deny entry. Returns whether it existed.
    pub fn allow_v4(&mut self, network: Ipv4Addr, prefix_len: u8) -> Result<bool, BpfError> {
        let key = lpm_key(network, prefix_len)?;
        match self.deny_v4_map()?.remove(&key) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(e) => Err(map_error(DENY_V4_MAP, e)),
        }
    }

    /// The rule id of the longest deny prefix containing `addr`, as `xdp_ingress` would find it.
    pub fn deny_v4_lookup(&self, addr: Ipv4Addr) -> Result<Option<RuleId>, BpfError> {
        let map = self.ebpf.map(DENY_V4_MAP).ok_or(BpfError::Missing {
            kind: "map",
            name: DENY_V4_MAP,
        })?;
        let trie = LpmTrie::<_, Ipv4Key, RuleId>::try_from(map).map_err(|e| map_error(DENY_V4_MAP, e))?;
        match trie.get(&Key::new(32, addr.octets()), 0) {
            Ok(rule) => Ok(Some(rule)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(DENY_V4_MAP, e)),
        }
    }
}

/// The `DENY_V4` key for `network/prefix_len`: data in network byte order, host bits cleared.
fn lpm_key(network: Ipv4Addr, prefix_len: u8) -> Result<Key<Ipv4Key>, BpfError> {
    if prefix_len > 32 {
        return Err(BpfError::PrefixLength(prefix_len));
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
    let masked = u32::from(network) & mask;
    Ok(Key::new(u32::from(prefix_len), masked.to_be_bytes()))
}

fn program_error(name: &'static str, source: ProgramError) -> BpfError {
    BpfError::Program {
        name,
        source: Box::new(source),
    }
}

fn map_error(name: &'static str, source: MapError) -> BpfError {
    BpfError::Map {
        name,
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpm_key_masks_host_bits() {
        let key = lpm_key(Ipv4Addr::new(203, 0, 113, 77), 24).unwrap();
        assert_eq!(key.prefix_len(), 24);
        assert_eq!(key.data(), [203, 0, 113, 0]);

        let key = lpm_key(Ipv4Addr::new(203, 0, 113, 77), 32).unwrap();
        assert_eq!(key.data(), [203, 0, 113, 77]);

        let key = lpm_key(Ipv4Addr::new(203, 0, 113, 77), 0).unwrap();
        assert_eq!((key.prefix_len(), key.data()), (0, [0, 0, 0, 0]));

        let key = lpm_key(Ipv4Addr::new(203, 0, 113, 77), 15).unwrap();
        assert_eq!(key.data(), [203, 0, 0, 0]);

        assert!(matches!(
            lpm_key(Ipv4Addr::UNSPECIFIED, 33),
            Err(BpfError::PrefixLength(33))
        ));
    }

    #[test]
    fn object_is_an_elf_for_bpf() {
        let object = object();
        if object.is_empty() {
            eprintln!("skip: built with AYA_BUILD_SKIP");
            return;
        }
        assert_eq!(&object[..4], b"\x7fELF");
        // e_machine (offset 18, little-endian on bpfel) = EM_BPF (247).
        assert_eq!(u16::from_le_bytes([object[18], object[19]]), 247);
    }
}
