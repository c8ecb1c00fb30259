//! The eBPF data plane from userspace: the embedded object, loading, XDP attachment, map access.
//!
//! This module is the only place in the crate allowed to contain `unsafe` code (every other module
//! can carry `#![forbid(unsafe_code)]`). Each `unsafe` block carries a `// SAFETY:` comment.
//!
//! - [`object`]: the ELF object `appliance/build.rs` compiled from `ebpf/programs`.
//! - [`DataPlane::open`] / [`DataPlane::load_policy`] / [`DataPlane::attach`] …: the policy data
//!   plane `portcullis run` drives (see below).
//! - [`DataPlane::load`] / [`DataPlane::attach_interface`] / [`DataPlane::deny_v4`]: the
//!   policy-less first program (class counters and a deny list), kept for `lab xdp-smoke`.
//! - [`privileged_env`]: why privileged (root + BPF) code cannot run here, if it cannot.
//!
//! # Map layout (names in `portcullis-common`)
//!
//! | map | type | contents |
//! |---|---|---|
//! | `ACTIVE` | array[1] u32 | `generation << 1 \| set`; 0 = no policy (the program passes everything) |
//! | `GLOBALS` | array[1] `Globals` | interfaces, internal address, SNAT addresses/ports, timeouts |
//! | `LOCAL` | hash u32 → 1 | the appliance's own addresses |
//! | `CT` | LRU hash `CtKey` → `CtValue` | conntrack, two entries per flow; pinned `<pin_dir>/ct_v1` |
//! | `RULE_STATS` | per-CPU array[65,536] `RuleStat` | per rule **index in `Policy::rules`**: packets, bytes, hits (new flows) |
//! | `EVENTS` | ring buffer 1 MiB | `FlowEvent`s |
//! | `COUNTERS` | per-CPU array | `Counter` (classes, paths, drop reasons) |
//! | `SETCFG` | array[2] `SetConfig` | per set: words, chunks, ICMP/other bitmap ids, TI mode |
//! | `SRC_n`, `DST_n` | LPM → bitmap id | LBVS address dimensions |
//! | `PORTS_n` | array[131,072] u32 | TCP/UDP port → bitmap id, `APP_PORT_FLAG` on TCP ports of application rules |
//! | `BITMAPS_n` | array[`bitmap_chunks`] `[u64; 8]` | bitmap id × chunks + c |
//! | `RULES_n` | array[16,384] `RuleInfo` | rule bit → (rule index, action) |
//! | `PINS_n` | hash addr → bitmap id | DNS pins (union bitmap of the names resolved to the address) |
//! | `NAT_n`, `NATSRC_n` | hash `NatKey` → ≤ 8 candidates; LPM (candidate id ++ source) | DNAT |
//! | `TI_n` | LPM | threat-intel feed minus the allow list |
//! | `PRIVATE_n` | LPM | `snat.privateRanges` (destination inside → no SNAT) |
//!
//! `load_policy` clears and writes the inactive set `n`, then flips `ACTIVE` with one 4-byte
//! write: a packet reads `ACTIVE` once and sees one whole policy. Established flows carry the
//! generation they were classified under and are re-classified on their next packet (O(1)
//! reload work; a rule change to deny cuts them, as in Azure).
//!
//! # Limits
//!
//! 16,384 network rules (256 bitmap words, `MAX_WORDS`), 65,536 rules in the policy, 8 DNAT rules
//! per (protocol, address, port), 16 SNAT addresses, 32 SNAT port probes per new flow, the map
//! sizes in `portcullis-common`. `load_policy` refuses a bigger policy with
//! [`BpfError::PolicyTooLarge`] and keeps the old one.

mod counters;
mod events;
mod privileged;
mod settings;
mod tables;

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues, ProgramArray, RingBuf,
        lpm_trie::Key,
    },
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
    sys::SyscallError,
};
pub use counters::ClassCounters;
pub use events::{EventReader, FlowEvent};
use portcullis_common::{
    ACTIVE_MAP, APPLY, BITMAPS_MAP, COUNTERS_MAP, CT_DNAT, CT_MAP, CT_PIN_NAME, CT_REPLY, CT_SNAT, CT_STATE_CLOSED,
    CT_STATE_ESTABLISHED, CT_STATE_FIN, Chunk, CtKey, CtValue, DENY_V4_MAP, DST_MAP, EVENTS_MAP, GLOBALS_MAP, Globals,
    Ipv4Key, JUMP_MAP, LOCAL_MAP, NAT_MAP, NAT_SRC_MAP, NatKey, NatValue, PINS_MAP, PORTS_ENTRIES, PORTS_MAP,
    PRIVATE_MAP, RULE_STATS_MAP, RULES_MAP, RuleInfo, RuleStat, SET_CONFIG_MAP, SLOW_PATH, SRC_MAP, SetConfig, TI_MAP,
    XDP_APPLY, XDP_INGRESS, XDP_NEW_FLOW, pin_key,
};
pub use portcullis_common::{Counter, MAX_NETWORK_RULES, MAX_WORDS, RuleId};
use portcullis_rules::{Name, Policy, Resolutions, ThreatFeed, classify::NetworkTables};
pub use privileged::privileged_env;
pub use settings::{DEFAULT_PIN_DIR, DEFAULT_SNAT_PORTS, DataPlaneSettings, HOST_EPHEMERAL_PORTS, Timeouts};

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
    #[error("invalid data-plane settings: {0}")]
    Settings(String),
    #[error("the policy does not fit the data plane: {0}")]
    PolicyTooLarge(String),
    #[error(
        "no policy loaded yet: call load_policy before attach (an attached program without a policy passes everything)"
    )]
    NoPolicy,
    #[error("this DataPlane was made by DataPlane::load (no settings); use DataPlane::open")]
    NotOpened,
    #[error("the event ring buffer was already taken")]
    EventsTaken,
    #[error("{what} `{}`", path.display())]
    Pin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("reading the clock: {0}")]
    Clock(#[source] std::io::Error),
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

/// Per-rule counters, summed over CPUs, since the last `load_policy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuleCounter {
    /// Index into `Policy::rules` (DNAT and network rules).
    pub rule_index: u32,
    pub packets: u64,
    /// IPv4 total length of the packets.
    pub bytes: u64,
    /// New flows the rule decided (allowed, DNAT'ed or denied).
    pub hits: u64,
}

/// Data-plane statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DataPlaneStats {
    /// Classes, paths and drop reasons (see [`Counter`]).
    pub counters: ClassCounters,
    pub generation: u32,
    /// From the last [`DataPlane::sweep`] (iterating a million entries takes a while, so stats
    /// does not): live conntrack entries (two per flow) and SNAT/DNAT source ports in use.
    pub last_sweep: Option<SweepStats>,
    pub ct_max_entries: u32,
    pub snat_exhausted: u64,
    pub events_lost: u64,
    /// Dropped packets by reason (non-zero only), names as in [`Counter::name`].
    pub drops: Vec<(&'static str, u64)>,
}

/// What [`DataPlane::sweep`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepStats {
    pub ct_entries: u64,
    pub expired_removed: u64,
    /// Reply entries of SNAT'ed/DNAT'ed flows: one allocated port each.
    pub nat_ports_in_use: u64,
}

/// Pin-file prefix of the tail-call map (`jump_<pid>_<generation base>`).
const JUMP_PIN_PREFIX: &str = "jump_";

/// The policy-dependent state of the active set that pins need.
struct ActivePolicy {
    set: u32,
    bitmap_base: u32,
    tables: NetworkTables,
    rules: usize,
    chunks: usize,
    /// Next free bitmap id (pins' union bitmaps go after the compiled ones).
    next_bitmap: u32,
    /// Union bitmaps already written (deduplicated).
    pin_bitmaps: StdHashMap<Vec<u64>, u32>,
}

/// The loaded eBPF object with `xdp_ingress` verified and loaded into the kernel.
///
/// Maps and counters belong to this instance (except pinned ones, which a later instance with the
/// same pin directory reuses). Attachment resolves interface names in the network namespace of
/// the calling thread; load, attach and detach on a thread that stays in one namespace.
pub struct DataPlane {
    ebpf: Ebpf,
    attachment: Option<Attachment>,
    settings: Option<DataPlaneSettings>,
    /// Pinned (or, without a pin directory, owned) links: (interface, mode, pin path).
    links: Vec<(String, AttachMode, Option<PathBuf>)>,
    generation: u32,
    active: Option<ActivePolicy>,
    pins: BTreeMap<Ipv4Addr, Vec<Name>>,
    /// What each set's `PORTS` holds (skip unchanged entries on reload).
    port_shadow: [Option<Vec<u32>>; 2],
    last_sweep: Option<SweepStats>,
    ct_max_entries: u32,
    /// This instance's pin of the tail-call map (see `open`).
    jump_pin: Option<PathBuf>,
}

impl fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataPlane")
            .field("generation", &self.generation)
            .field("links", &self.links)
            .finish_non_exhaustive()
    }
}

fn if_index(name: &str) -> Result<u32, BpfError> {
    nix::net::if_::if_nametoindex(name).map_err(|_| BpfError::UnknownInterface(name.to_owned()))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`, which stamps conntrack.
fn monotonic_ns() -> Result<u64, BpfError> {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid, writable timespec; the call only writes it.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return Err(BpfError::Clock(std::io::Error::last_os_error()));
    }
    Ok(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
}

fn ip_u32(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

impl DataPlane {
    /// Loads the embedded object and the `xdp_ingress` program (the verifier runs here), without
    /// settings or policy: the program passes everything but malformed frames and `DENY_V4`.
    pub fn load() -> Result<Self, BpfError> {
        Self::load_object(object())
    }

    /// Loads `object` (an ELF object with the same programs and maps as [`object`]).
    pub fn load_object(object: &[u8]) -> Result<Self, BpfError> {
        if object.is_empty() {
            return Err(BpfError::NotBuilt);
        }
        let ebpf = Ebpf::load(object).map_err(|e| BpfError::Load(Box::new(e)))?;
        Self::finish_load(ebpf, None)
    }

    fn finish_load(ebpf: Ebpf, settings: Option<DataPlaneSettings>) -> Result<Self, BpfError> {
        let mut plane = DataPlane {
            ebpf,
            attachment: None,
            ct_max_entries: settings.as_ref().map_or(0, |s| s.ct_max_entries),
            settings,
            links: Vec::new(),
            generation: 0,
            active: None,
            pins: BTreeMap::new(),
            port_shadow: [None, None],
            last_sweep: None,
            jump_pin: None,
        };
        plane
            .xdp_ingress_mut()?
            .load()
            .map_err(|e| program_error(XDP_INGRESS, e))?;
        // The slow path, tail-called from `xdp_ingress` (two stages).
        for (name, slot) in [(XDP_NEW_FLOW, SLOW_PATH), (XDP_APPLY, APPLY)] {
            let program: &mut Xdp = plane
                .ebpf
                .program_mut(name)
                .ok_or(BpfError::Missing { kind: "program", name })?
                .try_into()
                .map_err(|e| program_error(name, e))?;
            program.load().map_err(|e| program_error(name, e))?;
            let fd = program
                .fd()
                .map_err(|e| program_error(name, e))?
                .try_clone()
                .map_err(|e| BpfError::Pin {
                    what: "duplicating the program fd",
                    path: PathBuf::new(),
                    source: Box::new(e),
                })?;
            let mut jump: ProgramArray<&mut MapData> =
                ProgramArray::try_from(plane.map_mut(JUMP_MAP)?).map_err(|e| map_error(JUMP_MAP, e))?;
            jump.set(slot, &fd, 0).map_err(|e| map_error(JUMP_MAP, e))?;
        }
        // Fail early (rather than on first use) if the object lacks a map.
        plane.counters()?;
        plane.deny_v4_map()?;
        Ok(plane)
    }

    /// Loads the data plane for `settings`: creates (or reuses) the pinned conntrack map under
    /// `settings.pin_dir`, loads the program, writes the global settings. No policy yet: call
    /// [`load_policy`](Self::load_policy), then [`attach`](Self::attach) (which replaces a
    /// program left attached by an earlier process through its pinned link, without a gap).
    pub fn open(settings: &DataPlaneSettings) -> Result<Self, BpfError> {
        settings.validate().map_err(BpfError::Settings)?;
        let object = object();
        if object.is_empty() {
            return Err(BpfError::NotBuilt);
        }
        let internal_ifindex = if_index(&settings.internal)?;
        let external_ifindex = match &settings.external {
            Some(ext) => {
                let i = if_index(ext)?;
                if i == internal_ifindex { 0 } else { i }
            }
            None => 0,
        };
        let pin_dir = &settings.pin_dir;
        let pinned = !pin_dir.as_os_str().is_empty();
        let ct_pin = pin_dir.join(CT_PIN_NAME);
        if pinned {
            std::fs::create_dir_all(pin_dir).map_err(|e| BpfError::Pin {
                what: "creating the pin directory",
                path: pin_dir.clone(),
                source: Box::new(e),
            })?;
        }
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(CT_MAP, settings.ct_max_entries)
            .map_max_entries(BITMAPS_MAP, 2 * settings.bitmap_chunks);
        if pinned {
            loader.map_pin_path(CT_MAP, ct_pin.as_path());
        }
        let ebpf = loader.load(object).map_err(|e| BpfError::Load(Box::new(e)))?;
        let mut plane = Self::finish_load(ebpf, Some(settings.clone()))?;
        // A reused pinned map keeps its size.
        if let Some(ct) = plane.ebpf.map(CT_MAP)
            && let Map::LruHashMap(data) = ct
            && let Ok(info) = data.info()
        {
            plane.ct_max_entries = info.max_entries();
        }
        // Entries of an earlier process carry its generations: start from the clock so they are
        // re-classified rather than mistaken for current ones.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        plane.generation = (now.as_secs() as u32) & 0x3fff_ffff;
        let globals = settings.globals(external_ifindex);
        plane
            .array_mut::<Globals>(GLOBALS_MAP)?
            .set(0, globals, 0)
            .map_err(|e| map_error(GLOBALS_MAP, e))?;
        let mut local = plane.hash_mut::<u32, u32>(LOCAL_MAP)?;
        for a in settings.all_local_addresses() {
            local.insert(ip_u32(a), 1, 0).map_err(|e| map_error(LOCAL_MAP, e))?;
        }
        // The kernel empties a program array when its last user reference goes, and the tail
        // calls of a program left running by a pinned link would then fail: new flows dropped
        // while the daemon is down. A per-instance pin keeps it (never reused by the next
        // process, whose programs have their own scratch map); `attach` removes the pins of
        // earlier instances once their programs are replaced.
        if pinned {
            let path = pin_dir.join(format!("{JUMP_PIN_PREFIX}{}_{}", std::process::id(), plane.generation));
            plane.map_ref(JUMP_MAP)?.pin(&path).map_err(|e| BpfError::Pin {
                what: "pinning the tail-call map",
                path: path.clone(),
                source: Box::new(e),
            })?;
            plane.jump_pin = Some(path);
        }
        Ok(plane)
    }

    /// The settings given to [`open`](Self::open).
    pub fn settings(&self) -> Option<&DataPlaneSettings> {
        self.settings.as_ref()
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

    fn map_ref(&self, name: &'static str) -> Result<&Map, BpfError> {
        self.ebpf.map(name).ok_or(BpfError::Missing { kind: "map", name })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, BpfError> {
        self.ebpf.map_mut(name).ok_or(BpfError::Missing { kind: "map", name })
    }

    fn array_mut<V: aya::Pod>(&mut self, name: &'static str) -> Result<Array<&mut MapData, V>, BpfError> {
        Array::try_from(self.map_mut(name)?).map_err(|e| map_error(name, e))
    }

    fn hash_mut<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, BpfError> {
        HashMap::try_from(self.map_mut(name)?).map_err(|e| map_error(name, e))
    }

    fn lpm_mut<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<LpmTrie<&mut MapData, K, V>, BpfError> {
        LpmTrie::try_from(self.map_mut(name)?).map_err(|e| map_error(name, e))
    }

    fn clear_hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        select: impl Fn(&K) -> bool,
    ) -> Result<(), BpfError> {
        let mut m = self.hash_mut::<K, V>(name)?;
        let keys: Vec<K> = m.keys().filter_map(Result::ok).filter(|k| select(k)).collect();
        for k in keys {
            let _ = m.remove(&k);
        }
        Ok(())
    }

    fn clear_lpm(&mut self, name: &'static str, select: impl Fn(&[u8; 8]) -> bool) -> Result<(), BpfError> {
        let mut m = self.lpm_mut::<[u8; 8], u32>(name)?;
        let keys: Vec<Key<[u8; 8]>> = m.keys().filter_map(Result::ok).filter(|k| select(&k.data())).collect();
        for k in keys {
            let _ = m.remove(&k);
        }
        Ok(())
    }

    /// Compiles `policy` into the inactive table set and makes it active. Returns the new
    /// generation. On error (policy too large, map failure) the active policy is unchanged.
    ///
    /// `threat_feed`: the feed's addresses (with the policy's mode and allow list). `resolutions`:
    /// addresses of `translatedFqdn`s (the first one is used; unresolved = rule absent). Pins
    /// written with [`pin_address`](Self::pin_address) are carried over to the new tables.
    /// Per-rule counters restart at zero (rule indexes change with the policy).
    pub fn load_policy(
        &mut self,
        policy: &Policy,
        threat_feed: Option<&ThreatFeed>,
        resolutions: &dyn Resolutions,
    ) -> Result<u32, BpfError> {
        let bitmap_chunks = self.settings.as_ref().ok_or(BpfError::NotOpened)?.bitmap_chunks;
        let set = self.active.as_ref().map_or(0, |a| 1 - a.set);
        let s = set as usize;
        let (image, tables) = tables::build(policy, threat_feed, resolutions, bitmap_chunks, set)?;

        // Clear the inactive set: entries whose key carries `set`.
        let tag = set.to_be_bytes();
        for name in [SRC_MAP, DST_MAP, TI_MAP, PRIVATE_MAP] {
            self.clear_lpm(name, |d| d[..4] == tag)?;
        }
        self.clear_lpm(NAT_SRC_MAP, |d| {
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]) >> 24 == set
        })?;
        self.clear_hash::<u64, u32>(PINS_MAP, |k| (k >> 32) as u32 == set)?;
        self.clear_hash::<NatKey, NatValue>(NAT_MAP, |k| u32::from(k.set) == set)?;

        let write_lpm = |m: &mut LpmTrie<&mut MapData, [u8; 8], u32>, name, v: &[((u8, [u8; 8]), u32)]| {
            for &((len, data), id) in v {
                m.insert(&Key::new(u32::from(len), data), id, 0)
                    .map_err(|e| map_error(name, e))?;
            }
            Ok::<(), BpfError>(())
        };
        write_lpm(&mut self.lpm_mut(SRC_MAP)?, SRC_MAP, &image.src)?;
        write_lpm(&mut self.lpm_mut(DST_MAP)?, DST_MAP, &image.dst)?;
        let ones = |v: &[(u8, [u8; 8])]| -> Vec<((u8, [u8; 8]), u32)> { v.iter().map(|&p| (p, 1)).collect() };
        write_lpm(&mut self.lpm_mut(TI_MAP)?, TI_MAP, &ones(&image.ti))?;
        write_lpm(&mut self.lpm_mut(PRIVATE_MAP)?, PRIVATE_MAP, &ones(&image.private))?;
        write_lpm(&mut self.lpm_mut(NAT_SRC_MAP)?, NAT_SRC_MAP, &ones(&image.nat_src))?;
        {
            let mut m = self.hash_mut::<NatKey, NatValue>(NAT_MAP)?;
            for (k, v) in &image.nat {
                m.insert(k, v, 0).map_err(|e| map_error(NAT_MAP, e))?;
            }
        }
        {
            let shadow = self.port_shadow[s].take();
            let mut m = self.array_mut::<u32>(PORTS_MAP)?;
            for (i, &id) in image.ports.iter().enumerate() {
                if shadow.as_ref().is_some_and(|old| old[i] == id) {
                    continue;
                }
                m.set(set * PORTS_ENTRIES + i as u32, id, 0)
                    .map_err(|e| map_error(PORTS_MAP, e))?;
            }
            self.port_shadow[s] = Some(image.ports.clone());
        }
        {
            let mut m = self.array_mut::<Chunk>(BITMAPS_MAP)?;
            for (i, c) in image.bitmaps.iter().enumerate() {
                m.set(image.cfg.bitmap_base + i as u32, c, 0)
                    .map_err(|e| map_error(BITMAPS_MAP, e))?;
            }
        }
        {
            let mut m = self.array_mut::<RuleInfo>(RULES_MAP)?;
            for (i, r) in image.rules.iter().enumerate() {
                m.set(set * MAX_NETWORK_RULES + i as u32, r, 0)
                    .map_err(|e| map_error(RULES_MAP, e))?;
            }
        }
        let chunks = image.cfg.chunks as usize;
        let mut active = ActivePolicy {
            set,
            bitmap_base: image.cfg.bitmap_base,
            rules: policy.rules.len(),
            chunks,
            next_bitmap: tables.bitmap_count() as u32,
            pin_bitmaps: StdHashMap::new(),
            tables,
        };
        let pins: Vec<(Ipv4Addr, Vec<Name>)> = self.pins.iter().map(|(a, n)| (*a, n.clone())).collect();
        for (ip, names) in pins {
            self.write_pin(&mut active, ip, &names)?;
        }
        self.array_mut::<SetConfig>(SET_CONFIG_MAP)?
            .set(set, image.cfg, 0)
            .map_err(|e| map_error(SET_CONFIG_MAP, e))?;

        // Counters restart with the new rule numbering.
        let old_rules = self.active.as_ref().map_or(0, |a| a.rules);
        self.zero_rule_stats(old_rules.max(active.rules))?;

        let generation = (self.generation + 1) & 0x7fff_ffff;
        let generation = if generation == 0 { 1 } else { generation };
        self.array_mut::<u32>(ACTIVE_MAP)?
            .set(0, generation << 1 | set, 0)
            .map_err(|e| map_error(ACTIVE_MAP, e))?;
        self.generation = generation;
        self.active = Some(active);
        Ok(generation)
    }

    fn zero_rule_stats(&mut self, n: usize) -> Result<(), BpfError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| BpfError::Pin {
            what: "counting CPUs",
            path: PathBuf::from("/sys/devices/system/cpu/possible"),
            source: Box::new(e),
        })?;
        let mut m: PerCpuArray<&mut MapData, RuleStat> =
            PerCpuArray::try_from(self.map_mut(RULE_STATS_MAP)?).map_err(|e| map_error(RULE_STATS_MAP, e))?;
        for i in 0..n.min(portcullis_common::MAX_RULE_INDEX as usize) {
            let zeros = PerCpuValues::try_from(vec![RuleStat::default(); cpus]).map_err(|e| BpfError::Pin {
                what: "per-CPU values",
                path: PathBuf::new(),
                source: Box::new(e),
            })?;
            m.set(i as u32, zeros, 0).map_err(|e| map_error(RULE_STATS_MAP, e))?;
        }
        Ok(())
    }

    /// The current policy generation (0 before the first `load_policy`).
    pub fn generation(&self) -> u32 {
        if self.active.is_some() { self.generation } else { 0 }
    }

    fn write_pin(&mut self, active: &mut ActivePolicy, ip: Ipv4Addr, names: &[Name]) -> Result<(), BpfError> {
        let key = pin_key(active.set, ip_u32(ip));
        let bitmap = active.tables.pin_bitmap_for(names);
        if bitmap.is_zero() {
            let _ = self.hash_mut::<u64, u32>(PINS_MAP)?.remove(&key);
            return Ok(());
        }
        let words = bitmap.into_words();
        let id = match active.pin_bitmaps.get(&words) {
            Some(&id) => id,
            None => {
                let id = active.next_bitmap;
                let capacity = self.settings.as_ref().map_or(0, |s| s.bitmap_chunks) as usize;
                if (id as usize + 1) * active.chunks > capacity {
                    return Err(BpfError::PolicyTooLarge(format!(
                        "no room for another pin bitmap ({} in use); raise bitmap_chunks",
                        id
                    )));
                }
                let mut m = self.array_mut::<Chunk>(BITMAPS_MAP)?;
                for (c, chunk) in tables::to_chunks(&words, active.chunks).iter().enumerate() {
                    let at = active.bitmap_base as usize + id as usize * active.chunks + c;
                    m.set(at as u32, chunk, 0).map_err(|e| map_error(BITMAPS_MAP, e))?;
                }
                active.pin_bitmaps.insert(words, id);
                active.next_bitmap += 1;
                id
            }
        };
        // The bitmap is written before the pin that names it.
        self.hash_mut::<u64, u32>(PINS_MAP)?
            .insert(key, id, 0)
            .map_err(|e| map_error(PINS_MAP, e))
    }

    /// Pins `ip` as an address of `names` (FQDN network rules): replaces the names pinned for
    /// `ip`. The DNS proxy calls this before releasing an answer. Names no network rule lists are
    /// remembered (a later policy may list them) but add nothing now.
    pub fn pin_address(&mut self, ip: Ipv4Addr, names: &[Name]) -> Result<(), BpfError> {
        self.pins.insert(ip, names.to_vec());
        if let Some(mut active) = self.active.take() {
            let r = self.write_pin(&mut active, ip, names);
            self.active = Some(active);
            r?;
        }
        Ok(())
    }

    /// Removes the pin of `ip`.
    pub fn unpin_address(&mut self, ip: Ipv4Addr) -> Result<(), BpfError> {
        self.pins.remove(&ip);
        if let Some(set) = self.active.as_ref().map(|a| a.set) {
            let _ = self.hash_mut::<u64, u32>(PINS_MAP)?.remove(&pin_key(set, ip_u32(ip)));
        }
        Ok(())
    }

    /// The pinned addresses and their names.
    pub fn pinned(&self) -> &BTreeMap<Ipv4Addr, Vec<Name>> {
        &self.pins
    }

    /// Attaches `xdp_ingress` to the internal interface and, two-arm, the external one. Each
    /// attachment is a bpf_link pinned as `<pin_dir>/link_<interface>_<drv|skb>`: the program stays
    /// attached while the daemon restarts, and a new process replaces the program behind the
    /// existing link atomically (`bpf_link_update`), so no packet sees no program. Native mode
    /// first, generic if the driver refuses.
    pub fn attach(&mut self) -> Result<Vec<(String, AttachMode)>, BpfError> {
        let settings = self.settings.clone().ok_or(BpfError::NotOpened)?;
        if self.active.is_none() {
            return Err(BpfError::NoPolicy);
        }
        let mut interfaces = vec![settings.internal.clone()];
        if let Some(ext) = &settings.external
            && *ext != settings.internal
        {
            interfaces.push(ext.clone());
        }
        let pin_dir = (!settings.pin_dir.as_os_str().is_empty()).then_some(settings.pin_dir.clone());
        let mut out = Vec::new();
        for iface in interfaces {
            if self.links.iter().any(|(i, _, _)| *i == iface) {
                return Err(BpfError::AlreadyAttached(iface));
            }
            let existing = pin_dir.as_ref().and_then(|dir| {
                [(AttachMode::Driver, "drv"), (AttachMode::Skb, "skb")]
                    .into_iter()
                    .map(|(m, tag)| (m, dir.join(format!("link_{iface}_{tag}"))))
                    .find(|(_, p)| p.exists())
            });
            if let Some((mode, path)) = existing {
                let pinned = PinnedLink::from_pin(&path).map_err(|e| BpfError::Pin {
                    what: "opening the pinned XDP link",
                    path: path.clone(),
                    source: Box::new(e),
                })?;
                let fd: FdLink = pinned.into();
                let link = XdpLink::try_from(fd).map_err(|e| BpfError::Pin {
                    what: "the pinned link is not an XDP link",
                    path: path.clone(),
                    source: Box::new(e),
                })?;
                // Atomic replacement: the link keeps its interface and mode, now with our program.
                self.xdp_ingress_mut()?
                    .attach_to_link(link)
                    .map_err(|e| program_error(XDP_INGRESS, e))?;
                self.links.push((iface.clone(), mode, Some(path)));
                out.push((iface, mode));
                continue;
            }
            let (id, mode) = self.attach_new(&iface)?;
            let path = match &pin_dir {
                Some(dir) => {
                    let tag = if mode == AttachMode::Driver { "drv" } else { "skb" };
                    let path = dir.join(format!("link_{iface}_{tag}"));
                    let program = self.xdp_ingress_mut()?;
                    let link = program.take_link(id).map_err(|e| program_error(XDP_INGRESS, e))?;
                    let fd = FdLink::try_from(link).map_err(|e| BpfError::Pin {
                        what: "the XDP attachment is not a bpf_link (netlink fallback); cannot pin",
                        path: path.clone(),
                        source: Box::new(e),
                    })?;
                    let pinned = fd.pin(&path).map_err(|e| BpfError::Pin {
                        what: "pinning the XDP link",
                        path: path.clone(),
                        source: Box::new(e),
                    })?;
                    // Keep the pin; the fd closes, the pinned link stays attached.
                    drop(FdLink::from(pinned));
                    Some(path)
                }
                None => None,
            };
            self.links.push((iface.clone(), mode, path));
            out.push((iface, mode));
        }
        // Our programs now run on every link: earlier instances' tail-call maps can go.
        if let (Some(dir), Some(ours)) = (&pin_dir, &self.jump_pin) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                let name = entry.file_name();
                if name.to_string_lossy().starts_with(JUMP_PIN_PREFIX) && path != *ours {
                    remove_pin(&path)?;
                }
            }
        }
        Ok(out)
    }

    fn attach_new(&mut self, interface: &str) -> Result<(XdpLinkId, AttachMode), BpfError> {
        let program = self.xdp_ingress_mut()?;
        match program.attach(interface, XdpMode::Driver) {
            Ok(link) => Ok((link, AttachMode::Driver)),
            Err(ProgramError::UnknownInterface { name }) => Err(BpfError::UnknownInterface(name)),
            Err(driver) => match program.attach(interface, XdpMode::Skb) {
                Ok(link) => Ok((link, AttachMode::Skb)),
                Err(skb) => Err(BpfError::Attach {
                    interface: interface.to_owned(),
                    driver: Box::new(driver),
                    skb: Box::new(skb),
                }),
            },
        }
    }

    /// Hands out the flow-event ring buffer (once).
    pub fn take_events(&mut self) -> Result<EventReader, BpfError> {
        let map = self.ebpf.take_map(EVENTS_MAP).ok_or(BpfError::EventsTaken)?;
        let ring = RingBuf::try_from(map).map_err(|e| map_error(EVENTS_MAP, e))?;
        Ok(EventReader::new(ring))
    }

    /// Per-rule counters for every rule index of the loaded policy, summed over CPUs.
    pub fn rule_counters(&self) -> Result<Vec<RuleCounter>, BpfError> {
        let n = self.active.as_ref().map_or(0, |a| a.rules);
        let m: PerCpuArray<&MapData, RuleStat> =
            PerCpuArray::try_from(self.map_ref(RULE_STATS_MAP)?).map_err(|e| map_error(RULE_STATS_MAP, e))?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n as u32 {
            let v = m.get(&i, 0).map_err(|e| map_error(RULE_STATS_MAP, e))?;
            let mut c = RuleCounter {
                rule_index: i,
                ..Default::default()
            };
            for s in v.iter() {
                c.packets += s.packets;
                c.bytes += s.bytes;
                c.hits += s.hits;
            }
            out.push(c);
        }
        Ok(out)
    }

    /// Counters, generation, the last sweep's conntrack numbers.
    pub fn stats(&self) -> Result<DataPlaneStats, BpfError> {
        let counters = self.counters()?;
        let drops = counters
            .iter()
            .filter(|&(c, v)| v != 0 && (c.is_malformed() || c.is_drop()))
            .map(|(c, v)| (c.name(), v))
            .collect();
        Ok(DataPlaneStats {
            generation: self.generation(),
            last_sweep: self.last_sweep,
            ct_max_entries: self.ct_max_entries,
            snat_exhausted: counters.snat_exhausted,
            events_lost: counters.events_lost,
            drops,
            counters,
        })
    }

    /// Walks the conntrack map: removes entries idle past their timeout in both directions, and
    /// counts live entries and allocated NAT ports. O(entries) syscalls: call it every few tens of
    /// seconds, not per scrape.
    pub fn sweep(&mut self) -> Result<SweepStats, BpfError> {
        let timeouts = self.settings.as_ref().ok_or(BpfError::NotOpened)?.timeouts;
        let now = monotonic_ns()?;
        let mut ct = self.hash_mut::<CtKey, CtValue>(CT_MAP)?;
        let entries: Vec<(CtKey, CtValue)> = ct.iter().filter_map(Result::ok).collect();
        let by_key: StdHashMap<CtKey, CtValue> = entries.iter().copied().collect();
        let expired = |v: &CtValue, proto: u8| {
            let limit = match proto {
                6 => match v.state {
                    CT_STATE_ESTABLISHED => timeouts.tcp_established,
                    CT_STATE_FIN => timeouts.tcp_fin,
                    CT_STATE_CLOSED => timeouts.tcp_closed,
                    _ => timeouts.tcp_syn,
                },
                17 => timeouts.udp,
                1 => timeouts.icmp,
                _ => timeouts.other,
            };
            now.saturating_sub(v.last_seen) > limit.as_nanos() as u64
        };
        let mut stats = SweepStats::default();
        for (k, v) in &entries {
            let peer_live = by_key.get(&v.peer).is_some_and(|p| !expired(p, k.proto));
            if expired(v, k.proto) && !peer_live {
                let _ = ct.remove(k);
                stats.expired_removed += 1;
                continue;
            }
            stats.ct_entries += 1;
            if v.flags & CT_REPLY != 0 && v.flags & (CT_SNAT | CT_DNAT) != 0 {
                stats.nat_ports_in_use += 1;
            }
        }
        self.last_sweep = Some(stats);
        Ok(stats)
    }

    /// Conntrack entries (both directions of every flow), for tests and diagnostics.
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtValue)>, BpfError> {
        let ct: HashMap<&MapData, CtKey, CtValue> =
            HashMap::try_from(self.map_ref(CT_MAP)?).map_err(|e| map_error(CT_MAP, e))?;
        Ok(ct.iter().filter_map(Result::ok).collect())
    }

    /// Turns the pass of application-rule TCP ports to the host stack on or off while running: on once
    /// the proxy's steering is in place, off before it goes away (a stopped appliance keeps forwarding with
    /// pinned links, and must then drop those ports rather than let the kernel forward them unfiltered).
    pub fn set_application_proxy(&mut self, on: bool) -> Result<(), BpfError> {
        let mut globals = self.array_mut::<Globals>(GLOBALS_MAP)?;
        let mut g = globals.get(&0, 0).map_err(|e| map_error(GLOBALS_MAP, e))?;
        if on {
            g.flags |= portcullis_common::FLAG_APP_PROXY;
        } else {
            g.flags &= !portcullis_common::FLAG_APP_PROXY;
        }
        globals.set(0, g, 0).map_err(|e| map_error(GLOBALS_MAP, e))?;
        if let Some(s) = &mut self.settings {
            s.application_proxy = on;
        }
        Ok(())
    }

    /// Ends this instance. `keep_state`: leave the pinned links (the program keeps forwarding with
    /// the last policy) and the pinned conntrack map for the next process. Otherwise detach
    /// and remove every pin.
    pub fn close(mut self, keep_state: bool) -> Result<(), BpfError> {
        if keep_state {
            return Ok(());
        }
        self.detach()?;
        for (_, _, path) in std::mem::take(&mut self.links) {
            if let Some(path) = path {
                remove_pin(&path)?;
            }
        }
        if let Some(path) = self.jump_pin.take() {
            remove_pin(&path)?;
        }
        if let Some(s) = &self.settings
            && !s.pin_dir.as_os_str().is_empty()
        {
            // Also tail-call maps of earlier instances that never got replaced.
            for entry in std::fs::read_dir(&s.pin_dir).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(JUMP_PIN_PREFIX) {
                    remove_pin(&entry.path())?;
                }
            }
            remove_pin(&s.pin_dir.join(CT_PIN_NAME))?;
            // Only if empty (another tool may keep its own pins there).
            let _ = std::fs::remove_dir(&s.pin_dir);
        }
        Ok(())
    }

    /// Attaches `xdp_ingress` to `interface` (a name in the calling thread's network namespace):
    /// native (driver) mode first, generic (skb) mode if the driver refuses. Returns the mode used.
    /// Not pinned: the attachment ends with this instance (the policy-less smoke lab uses it).
    pub fn attach_interface(&mut self, interface: &str) -> Result<AttachMode, BpfError> {
        if let Some(attachment) = &self.attachment {
            return Err(BpfError::AlreadyAttached(attachment.interface.clone()));
        }
        let (link, mode) = self.attach_new(interface)?;
        self.attachment = Some(Attachment {
            interface: interface.to_owned(),
            mode,
            link,
        });
        Ok(mode)
    }

    /// The interface and mode [`attach_interface`](Self::attach_interface) attached to, if any.
    pub fn attached(&self) -> Option<(&str, AttachMode)> {
        self.attachment.as_ref().map(|a| (a.interface.as_str(), a.mode))
    }

    /// Detaches what [`attach_interface`](Self::attach_interface) attached (a no-op otherwise).
    pub fn detach(&mut self) -> Result<(), BpfError> {
        let Some(attachment) = self.attachment.take() else {
            return Ok(());
        };
        self.xdp_ingress_mut()?
            .detach(attachment.link)
            .map_err(|e| program_error(XDP_INGRESS, e))
    }

    /// The class counters, each summed over all CPUs. Cumulative since the object was loaded.
    pub fn counters(&self) -> Result<ClassCounters, BpfError> {
        let map = self.map_ref(COUNTERS_MAP)?;
        let array = PerCpuArray::<_, u64>::try_from(map).map_err(|e| map_error(COUNTERS_MAP, e))?;
        let mut counters = ClassCounters::default();
        for counter in Counter::ALL {
            let per_cpu = array.get(&counter.index(), 0).map_err(|e| map_error(COUNTERS_MAP, e))?;
            counters.set(counter, per_cpu.iter().copied().fold(0, u64::wrapping_add));
        }
        Ok(counters)
    }

    fn deny_v4_map(&mut self) -> Result<LpmTrie<&mut aya::maps::MapData, Ipv4Key, RuleId>, BpfError> {
        self.lpm_mut(DENY_V4_MAP)
    }

    /// Denies IPv4 destinations in `network/prefix_len` (host bits are masked off), recording `rule`
    /// as the reason. Replaces an existing entry for the same prefix. Checked before the policy.
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
        let map = self.map_ref(DENY_V4_MAP)?;
        let trie = LpmTrie::<_, Ipv4Key, RuleId>::try_from(map).map_err(|e| map_error(DENY_V4_MAP, e))?;
        match trie.get(&Key::new(32, addr.octets()), 0) {
            Ok(rule) => Ok(Some(rule)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(DENY_V4_MAP, e)),
        }
    }
}

fn remove_pin(path: &Path) -> Result<(), BpfError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BpfError::Pin {
            what: "removing the pin",
            path: path.to_path_buf(),
            source: Box::new(e),
        }),
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
