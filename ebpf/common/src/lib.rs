//! Types and constants shared by the portcullis eBPF programs (`portcullis-ebpf`) and the userspace
//! loader (`portcullis::bpf`).
//!
//! Everything here is `no_std` and layout-stable (`#[repr(C)]`/`#[repr(u32)]`), because both sides
//! read and write the same map memory. The `user` feature adds the `aya::Pod` impls the userspace
//! side needs for map keys and values; the eBPF side never enables it (it would pull in `std`).
#![no_std]

/// Name of the XDP program in the object (`#[xdp] fn xdp_ingress`).
pub const XDP_INGRESS: &str = "xdp_ingress";

/// The slow-path program (new flows, re-classification), tail-called from [`XDP_INGRESS`].
pub const XDP_NEW_FLOW: &str = "xdp_new_flow";
/// Program array for the tail call (`ProgramArray`), slot [`SLOW_PATH`].
pub const JUMP_MAP: &str = "JUMP";
pub const JUMP_ENTRIES: u32 = 2;
pub const SLOW_PATH: u32 = 0;
/// Stage 2 of the slow path (`xdp_apply`).
pub const XDP_APPLY: &str = "xdp_apply";
pub const APPLY: u32 = 1;

/// Name of the per-CPU class counter map (`PerCpuArray<u64>`, indexed by [`Counter`]).
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Name of the IPv4 destination deny map (`LpmTrie<[u8; 4], u32>`).
///
/// Key: the destination prefix in network byte order (`Key { prefix_len, data: [u8; 4] }`).
/// Value: the id of the rule that produced the entry ([`RuleId`]).
pub const DENY_V4_MAP: &str = "DENY_V4";

/// Maximum number of prefixes in [`DENY_V4_MAP`].
pub const DENY_V4_MAX_ENTRIES: u32 = 65_536;

/// Value type of [`DENY_V4_MAP`]: the id of the rule that denied the destination.
pub type RuleId = u32;

/// Key data type of [`DENY_V4_MAP`]: an IPv4 address in network byte order.
pub type Ipv4Key = [u8; 4];

/// Index into [`COUNTERS_MAP`].
///
/// Every frame increments exactly one *class* counter (the first 15, `ipv4_tcp` … `fragment`);
/// the other counters record what the program did with it (path, verdict, drop reason) and are
/// counted on top.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// Well-formed, unfragmented IPv4/TCP.
    Ipv4Tcp = 0,
    /// Well-formed, unfragmented IPv4/UDP.
    Ipv4Udp = 1,
    /// Well-formed, unfragmented IPv4/ICMP.
    Ipv4Icmp = 2,
    /// Well-formed, unfragmented IPv4 with another protocol (L4 not parsed).
    Ipv4Other = 3,
    /// IPv6 (ethertype 0x86DD). Passed without a policy; with one, dropped (also counted as `ipv6_dropped`) unless `FLAG_PASS_IPV6`.
    Ipv6 = 4,
    /// ARP (ethertype 0x0806); passed.
    Arp = 5,
    /// Any other ethertype (including VLAN tags, not parsed); passed to the host stack, which does not forward them.
    OtherEthertype = 6,
    /// Frame shorter than an Ethernet header. Dropped.
    TruncatedEth = 7,
    /// IPv4 ethertype, but the frame ends before the IPv4 header (20 bytes, or IHL × 4 with options) does. Dropped.
    TruncatedIp = 8,
    /// IPv4 version field is not 4. Dropped.
    BadVersion = 9,
    /// IPv4 IHL below 5 (header shorter than 20 bytes). Dropped.
    BadIhl = 10,
    /// IPv4 total length below the header length, or beyond the end of the frame. Dropped.
    BadTotalLength = 11,
    /// The TCP/UDP/ICMP header (or a UDP datagram per its length field, or TCP options per the data offset) extends beyond the IPv4 payload. Dropped.
    TruncatedL4 = 12,
    /// TCP data offset below 5, or UDP length below 8. Dropped.
    BadL4Header = 13,
    /// IPv4 fragment (MF set or non-zero offset). A first fragment must hold a complete L4 header (else `truncated_l4`) and is classified by it; with a policy, non-first fragments are dropped (`fragment_dropped`).
    Fragment = 14,
    /// Dropped because the IPv4 destination matched `DENY_V4` (the operator block list, checked before the policy; in addition to the class counter).
    DenyV4 = 15,
    /// IPv6 dropped because a policy is active and IPv6 is not supported (Azure Firewall rules are IPv4).
    Ipv6Dropped = 16,
    /// Non-first IPv4 fragment dropped (no ports to classify or track it by).
    FragmentDropped = 17,
    /// Packet of a tracked flow (fast path).
    CtHit = 18,
    /// Tracked flow found idle past its timeout: its entries are deleted and the packet is a new flow.
    CtExpired = 19,
    /// Tracked flow re-classified because the policy generation changed.
    Reclassified = 20,
    /// Re-classification no longer allows the flow: entries deleted, packet dropped.
    ReclassifiedDenied = 21,
    /// New flow allowed by a network rule.
    NewAllowed = 22,
    /// New flow denied by a network rule.
    NewDenied = 23,
    /// New flow matched nothing and is dropped.
    DefaultDeny = 24,
    /// New flow to a threat-intel address dropped (mode Deny).
    ThreatIntelDeny = 25,
    /// New flow to a threat-intel address in mode Alert (processing continues).
    ThreatIntelAlert = 26,
    /// New flow translated by a DNAT rule.
    Dnat = 27,
    /// Addressed to the appliance itself (its own sockets, management, DNS): passed to the host stack.
    PassLocal = 28,
    /// Of `pass_local`: DNS (TCP/UDP 53) to the appliance.
    PassDns = 29,
    /// TCP to a port of an application rule with no network-rule decision: passed to the host stack (the proxy).
    PassAppPort = 30,
    /// No free SNAT port within the probe bound: dropped, never rewritten.
    SnatExhausted = 31,
    /// Allowed flow of a protocol without ports (not TCP/UDP/ICMP echo) to a destination that needs SNAT: dropped (Azure cannot SNAT those either, §1.5).
    SnatUnsupported = 32,
    /// A conntrack insert failed (map error): dropped.
    CtInsertFailed = 33,
    /// To an appliance address on a SNAT-range port without a conntrack entry (a late reply): dropped.
    StaleNatPort = 34,
    /// New flow arriving on the external interface (two-arm) that no DNAT rule matched: dropped (the Internet side only opens DNAT flows).
    ExternalNoDnat = 35,
    /// Forwarded by `bpf_redirect` to another interface after `bpf_fib_lookup`.
    FibRedirect = 36,
    /// Forwarded back out of the ingress interface (XDP_TX, one-arm).
    FibTx = 37,
    /// `bpf_fib_lookup` has no neighbour yet: passed so the kernel resolves ARP (and forwards this packet).
    FibNoNeigh = 38,
    /// `bpf_fib_lookup` did not forward (local, forwarding disabled, unreachable, MTU, TTL ≤ 1): passed to the host stack.
    FibPass = 39,
    /// Flow events not written because the ring buffer was full.
    EventsLost = 40,
    /// IPv4 seen while no policy is loaded: passed (legacy behaviour; `attach` refuses without a policy).
    NoPolicy = 41,
    /// The tail call into `xdp_new_flow` failed (program not inserted): dropped.
    TailCallFailed = 42,
    /// TCP to an application-rule port, not decided by a network rule, while no application proxy
    /// runs (`FLAG_APP_PROXY` unset): dropped, because passing it to the host stack would let the
    /// kernel forward it unfiltered.
    AppNoProxy = 43,
    /// A packet of a flow to the host stack passed from the remembered decision (`HOST_MAP`), without
    /// the slow path.
    HostHit = 44,
    /// An ICMP error (unreachable, fragmentation needed, time exceeded) about a tracked flow, translated
    /// back like the flow's packets and forwarded.
    IcmpErrorRelated = 45,
}

impl Counter {
    /// Number of counters; the `max_entries` of [`COUNTERS_MAP`].
    pub const COUNT: u32 = 46;

    /// All counters, in index order.
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::Ipv4Tcp,
        Counter::Ipv4Udp,
        Counter::Ipv4Icmp,
        Counter::Ipv4Other,
        Counter::Ipv6,
        Counter::Arp,
        Counter::OtherEthertype,
        Counter::TruncatedEth,
        Counter::TruncatedIp,
        Counter::BadVersion,
        Counter::BadIhl,
        Counter::BadTotalLength,
        Counter::TruncatedL4,
        Counter::BadL4Header,
        Counter::Fragment,
        Counter::DenyV4,
        Counter::Ipv6Dropped,
        Counter::FragmentDropped,
        Counter::CtHit,
        Counter::CtExpired,
        Counter::Reclassified,
        Counter::ReclassifiedDenied,
        Counter::NewAllowed,
        Counter::NewDenied,
        Counter::DefaultDeny,
        Counter::ThreatIntelDeny,
        Counter::ThreatIntelAlert,
        Counter::Dnat,
        Counter::PassLocal,
        Counter::PassDns,
        Counter::PassAppPort,
        Counter::SnatExhausted,
        Counter::SnatUnsupported,
        Counter::CtInsertFailed,
        Counter::StaleNatPort,
        Counter::ExternalNoDnat,
        Counter::FibRedirect,
        Counter::FibTx,
        Counter::FibNoNeigh,
        Counter::FibPass,
        Counter::EventsLost,
        Counter::NoPolicy,
        Counter::TailCallFailed,
        Counter::AppNoProxy,
        Counter::HostHit,
        Counter::IcmpErrorRelated,
    ];

    /// The map index of this counter.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Stable snake_case name (for metrics and reports).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Ipv4Tcp => "ipv4_tcp",
            Counter::Ipv4Udp => "ipv4_udp",
            Counter::Ipv4Icmp => "ipv4_icmp",
            Counter::Ipv4Other => "ipv4_other",
            Counter::Ipv6 => "ipv6",
            Counter::Arp => "arp",
            Counter::OtherEthertype => "other_ethertype",
            Counter::TruncatedEth => "truncated_eth",
            Counter::TruncatedIp => "truncated_ip",
            Counter::BadVersion => "bad_version",
            Counter::BadIhl => "bad_ihl",
            Counter::BadTotalLength => "bad_total_length",
            Counter::TruncatedL4 => "truncated_l4",
            Counter::BadL4Header => "bad_l4_header",
            Counter::Fragment => "fragment",
            Counter::DenyV4 => "deny_v4",
            Counter::Ipv6Dropped => "ipv6_dropped",
            Counter::FragmentDropped => "fragment_dropped",
            Counter::CtHit => "ct_hit",
            Counter::CtExpired => "ct_expired",
            Counter::Reclassified => "reclassified",
            Counter::ReclassifiedDenied => "reclassified_denied",
            Counter::NewAllowed => "new_allowed",
            Counter::NewDenied => "new_denied",
            Counter::DefaultDeny => "default_deny",
            Counter::ThreatIntelDeny => "threat_intel_deny",
            Counter::ThreatIntelAlert => "threat_intel_alert",
            Counter::Dnat => "dnat",
            Counter::PassLocal => "pass_local",
            Counter::PassDns => "pass_dns",
            Counter::PassAppPort => "pass_app_port",
            Counter::SnatExhausted => "snat_exhausted",
            Counter::SnatUnsupported => "snat_unsupported",
            Counter::CtInsertFailed => "ct_insert_failed",
            Counter::StaleNatPort => "stale_nat_port",
            Counter::ExternalNoDnat => "external_no_dnat",
            Counter::FibRedirect => "fib_redirect",
            Counter::FibTx => "fib_tx",
            Counter::FibNoNeigh => "fib_no_neigh",
            Counter::FibPass => "fib_pass",
            Counter::EventsLost => "events_lost",
            Counter::NoPolicy => "no_policy",
            Counter::TailCallFailed => "tail_call_failed",
            Counter::AppNoProxy => "app_no_proxy",
            Counter::HostHit => "host_hit",
            Counter::IcmpErrorRelated => "icmp_error_related",
        }
    }

    /// Whether this is a class counter (exactly one per frame).
    pub const fn is_class(self) -> bool {
        (self as u32) <= Counter::Fragment as u32
    }

    /// Whether frames in this class are dropped as malformed.
    pub const fn is_malformed(self) -> bool {
        matches!(
            self,
            Counter::TruncatedEth
                | Counter::TruncatedIp
                | Counter::BadVersion
                | Counter::BadIhl
                | Counter::BadTotalLength
                | Counter::TruncatedL4
                | Counter::BadL4Header
        )
    }

    /// Whether this counter records a dropped packet (besides malformed ones).
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Counter::DenyV4
                | Counter::Ipv6Dropped
                | Counter::FragmentDropped
                | Counter::ReclassifiedDenied
                | Counter::NewDenied
                | Counter::DefaultDeny
                | Counter::ThreatIntelDeny
                | Counter::SnatExhausted
                | Counter::SnatUnsupported
                | Counter::CtInsertFailed
                | Counter::StaleNatPort
                | Counter::ExternalNoDnat
                | Counter::TailCallFailed
                | Counter::AppNoProxy
        )
    }
}

// Compile-time check that `ALL` is in index order and complete.
const _: () = {
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!(Counter::ALL[i] as u32 == i as u32);
        i += 1;
    }
    assert!(Counter::ALL.len() == Counter::COUNT as usize);
};

// ---------------------------------------------------------------------------------------------
// The policy data plane: maps, keys and values.
//
// Conventions: IPv4 addresses in keys and values are `u32`s holding the address bytes in network
// order (`u32::from_ne_bytes(ip.octets())`), as the program loads them from the packet; ports are
// host order. LPM keys carry network-order bytes (`[u8; 4]`, `[u8; 8]`).
//
// Double-buffered rule tables: every per-policy map exists twice, suffixed `_0` and `_1` (a
// "set"). Userspace writes the inactive set, then flips [`ACTIVE_MAP`] (one aligned `u32` write:
// generation << 1 | set), so a packet reads one consistent set. See appliance/src/bpf/mod.rs.

/// Active policy: `[0]` = `generation << 1 | set`; generation 0 = no policy loaded.
pub const ACTIVE_MAP: &str = "ACTIVE";
/// Settings that do not change with the policy (`Array<Globals>`, one entry).
pub const GLOBALS_MAP: &str = "GLOBALS";
/// The appliance's own addresses (`HashMap<u32, u32>`, value unused = 1).
pub const LOCAL_MAP: &str = "LOCAL";
pub const LOCAL_MAX_ENTRIES: u32 = 256;
/// Conntrack (`LruHashMap<CtKey, CtValue>`), pinned as [`CT_PIN_NAME`] under the pin directory.
pub const CT_MAP: &str = "CT";
/// The pin file name carries the layout version: a restart with an incompatible layout starts
/// with a fresh table instead of misreading the old one.
pub const CT_PIN_NAME: &str = "ct_v1";
pub const CT_DEFAULT_MAX_ENTRIES: u32 = 1 << 20;
/// Per-rule counters (`PerCpuArray<RuleStat>`), indexed by the rule's index in `Policy::rules`.
pub const RULE_STATS_MAP: &str = "RULE_STATS";
pub const MAX_RULE_INDEX: u32 = 65_536;
/// Flow events (`RingBuf` of [`FlowEvent`]).
pub const EVENTS_MAP: &str = "EVENTS";
pub const EVENTS_BYTES: u32 = 1 << 20;
/// Next hops without a neighbour entry, by address, with the time the last request for it was
/// emitted (`LruHashMap<u32, u64>`): one request per hop per [`NEIGHBOUR_REQUEST_NS`].
pub const NEIGH_MAP: &str = "NEIGH";
pub const NEIGH_MAX_ENTRIES: u32 = 1024;
pub const NEIGHBOUR_REQUEST_NS: u64 = 200_000_000;
/// Flows handed to the host stack (the application proxy, its upstream sockets, DNS, the host itself)
/// have no conntrack entry; their decision is remembered per tuple (`LruHashMap<CtKey, u64>`, value
/// `generation << 2 | HOST_*`) so later packets skip the slow path until the policy changes.
pub const HOST_MAP: &str = "HOST";
pub const HOST_MAX_ENTRIES: u32 = 65_536;
pub const HOST_LOCAL: u64 = 0;
pub const HOST_DNS: u64 = 1;
pub const HOST_APP: u64 = 2;

// Per-policy maps. Each holds both sets: the set is part of the key (LPM keys start with the set
// as a big-endian u32, array indexes are offset by set × size, hash keys carry it), so the program
// never branches on the set to pick a map (branches on map pointers multiply verifier states).
pub const SET_CONFIG_MAP: &str = "SETCFG"; // Array<SetConfig>, 2 entries (index = set)
pub const SRC_MAP: &str = "SRC"; // LpmTrie<[u8; 8] = set ++ addr, u32 bitmap id>
pub const DST_MAP: &str = "DST"; // LpmTrie<[u8; 8] = set ++ addr, u32 bitmap id>
pub const PORTS_MAP: &str = "PORTS"; // Array<u32>: set × 131072 + [port] TCP, [65536 + port] UDP
pub const BITMAPS_MAP: &str = "BITMAPS"; // Array<Chunk>: SetConfig::bitmap_base + id × chunks + c
pub const RULES_MAP: &str = "RULES"; // Array<RuleInfo>: set × MAX_NETWORK_RULES + rule bit
pub const PINS_MAP: &str = "PINS"; // HashMap<u64 = set << 32 | addr, u32 bitmap id>
pub const NAT_MAP: &str = "NAT"; // HashMap<NatKey (with set), NatValue>
pub const NAT_SRC_MAP: &str = "NATSRC"; // LpmTrie<[u8; 8] = candidate id (BE) ++ source, u32>
pub const TI_MAP: &str = "TI"; // LpmTrie<[u8; 8] = set ++ addr, u32>: feed minus allow list
pub const PRIVATE_MAP: &str = "PRIVATE"; // LpmTrie<[u8; 8] = set ++ addr, u32>: snat private ranges

/// The `PINS` key of `addr` in `set`.
#[inline(always)]
pub const fn pin_key(set: u32, addr: u32) -> u64 {
    (set as u64) << 32 | addr as u64
}

/// The `NATSRC` candidate id of a NAT rule in `set` (rule indexes are below 2^24).
#[inline(always)]
pub const fn nat_candidate_id(set: u32, rule_index: u32) -> u32 {
    set << 24 | rule_index
}

/// Words (`u64`) per bitmap chunk; bitmaps are stored as `chunks` consecutive [`Chunk`]s.
pub const CHUNK_WORDS: usize = 8;
/// Upper bound of the classification loop, in chunks.
pub const MAX_CHUNKS: u32 = 32;
/// Maximum words per bitmap: 256 × 64 = 16,384 network rules. Userspace refuses bigger policies.
pub const MAX_WORDS: u32 = MAX_CHUNKS * CHUNK_WORDS as u32;
pub const MAX_NETWORK_RULES: u32 = MAX_WORDS * 64;
/// Default chunks per set of `BITMAPS` (64-byte chunks: 16 MiB per set; the map holds two sets).
pub const BITMAP_CHUNKS_DEFAULT: u32 = 1 << 18;
pub const PORTS_ENTRIES: u32 = 2 * 65_536;
/// Set in a TCP `PORTS` entry: an application rule uses this port.
pub const APP_PORT_FLAG: u32 = 1 << 31;
pub const SRC_MAX_ENTRIES: u32 = 1 << 18;
pub const DST_MAX_ENTRIES: u32 = 1 << 18;
pub const PINS_MAX_ENTRIES: u32 = 1 << 16;
pub const NAT_MAX_ENTRIES: u32 = 4096;
pub const NAT_SRC_MAX_ENTRIES: u32 = 1 << 16;
pub const TI_MAX_ENTRIES: u32 = 1 << 20;
pub const PRIVATE_MAX_ENTRIES: u32 = 4096;
/// DNAT rules per (protocol, address, port) key.
pub const MAX_NAT_CANDIDATES: usize = 8;
/// SNAT addresses in [`Globals`].
pub const MAX_SNAT_ADDRS: usize = 16;
/// Ports tried (linear probing from a hash of the tuple) before a SNAT allocation gives up.
pub const SNAT_PROBES: u32 = 32;

/// One 64-byte piece of a rule bitmap.
pub type Chunk = [u64; CHUNK_WORDS];

/// `Globals::flags`: pass IPv6 to the host stack instead of dropping it.
pub const FLAG_PASS_IPV6: u32 = 1;
/// The application proxy is listening: pass TCP to application-rule ports to the host stack. Without
/// it such connections are dropped (fail closed), never forwarded by the kernel.
pub const FLAG_APP_PROXY: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    pub flags: u32,
    /// ifindex of the external interface (two-arm); 0 = one-arm.
    pub external_ifindex: u32,
    /// Source of DNAT'ed flows toward the spoke.
    pub internal_addr: u32,
    pub snat_port_lo: u16,
    pub snat_port_hi: u16,
    pub n_snat: u32,
    pub _pad: u32,
    pub snat: [u32; MAX_SNAT_ADDRS],
    /// Idle timeouts in nanoseconds, indexed by [`timeout_slot`].
    pub timeouts: [u64; TIMEOUT_SLOTS],
}

pub const TIMEOUT_SLOTS: usize = 8;
pub const TIMEOUT_TCP_SYN: usize = 0;
pub const TIMEOUT_TCP_ESTABLISHED: usize = 1;
pub const TIMEOUT_TCP_FIN: usize = 2;
pub const TIMEOUT_TCP_CLOSED: usize = 3;
pub const TIMEOUT_UDP: usize = 4;
pub const TIMEOUT_ICMP: usize = 5;
pub const TIMEOUT_OTHER: usize = 6;

/// Which timeout applies to an entry of protocol `proto` in TCP state `state`.
#[inline(always)]
pub const fn timeout_slot(proto: u8, state: u8) -> usize {
    match proto {
        6 => match state {
            2 => TIMEOUT_TCP_ESTABLISHED,
            3 => TIMEOUT_TCP_FIN,
            4 => TIMEOUT_TCP_CLOSED,
            _ => TIMEOUT_TCP_SYN,
        },
        17 => TIMEOUT_UDP,
        1 => TIMEOUT_ICMP,
        _ => TIMEOUT_OTHER,
    }
}

pub const TI_OFF: u32 = 0;
pub const TI_ALERT: u32 = 1;
pub const TI_DENY: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetConfig {
    /// First `BITMAPS` index of this set.
    pub bitmap_base: u32,
    pub words: u32,
    /// `words` rounded up to chunks.
    pub chunks: u32,
    pub rules: u32,
    pub icmp_bitmap: u32,
    pub other_bitmap: u32,
    pub ti_mode: u32,
}

pub const ACTION_ALLOW: u32 = 1;
pub const ACTION_DENY: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleInfo {
    /// Index into `Policy::rules`.
    pub rule_index: u32,
    pub action: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    /// The rule-table set.
    pub set: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatCand {
    /// Key prefix in `NATSRC` for this candidate's sources.
    pub id: u32,
    pub rule_index: u32,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatValue {
    pub count: u32,
    pub _pad: u32,
    pub cands: [NatCand; MAX_NAT_CANDIDATES],
}

/// A conntrack key: one direction of a flow as packets arrive. ICMP echo: the request's key has
/// `sport = id, dport = 0`, the reply's `sport = 0, dport = id`; other ICMP and other protocols
/// have zero ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// `CtValue::flags`.
pub const CT_REPLY: u8 = 1;
pub const CT_SNAT: u8 = 2;
pub const CT_DNAT: u8 = 4;
pub const CT_FIN_ORIG: u8 = 8;
pub const CT_FIN_REPLY: u8 = 16;

/// `CtValue::state`.
pub const CT_STATE_NEW: u8 = 0;
pub const CT_STATE_SYN_SENT: u8 = 1;
pub const CT_STATE_ESTABLISHED: u8 = 2;
pub const CT_STATE_FIN: u8 = 3;
pub const CT_STATE_CLOSED: u8 = 4;

pub const NO_RULE: u32 = u32::MAX;

/// One direction of a tracked flow. Both directions have an entry; each names the other in
/// `peer` (for the forward entry, `peer` is the reply key; for the reply entry, the original
/// tuple, which re-classification needs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// `bpf_ktime_get_ns` of the last packet in this direction.
    pub last_seen: u64,
    pub peer: CtKey,
    /// Header fields after rewriting (equal to the key's when nothing is translated).
    pub new_src: u32,
    pub new_dst: u32,
    pub new_sport: u16,
    pub new_dport: u16,
    pub generation: u32,
    pub rule_index: u32,
    pub flags: u8,
    pub state: u8,
    pub stage: u8,
    pub _pad: u8,
}

/// Per-CPU per-rule counters (`RULE_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStat {
    pub packets: u64,
    pub bytes: u64,
    /// New flows decided by the rule (including denied ones).
    pub hits: u64,
}

pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;
pub const VERDICT_DNAT: u8 = 3;
/// Not a flow: the next hop `dst` (on interface `rule_index`) has no neighbour entry; the packet was
/// dropped and userspace makes the kernel resolve it (the sender's retransmission then goes through).
pub const VERDICT_NEIGHBOUR: u8 = 4;

pub const STAGE_THREAT_INTEL: u8 = 0;
pub const STAGE_DNAT: u8 = 1;
pub const STAGE_NETWORK: u8 = 2;
pub const STAGE_APPLICATION: u8 = 3;
pub const STAGE_DEFAULT: u8 = 4;

/// `FlowEvent::flags`.
pub const EV_SNAT: u8 = 1;
pub const EV_TI_ALERT: u8 = 2;
/// The event is a re-classification of an established flow (after a generation change).
pub const EV_RECLASSIFIED: u8 = 4;
/// Dropped for lack of SNAT ports.
pub const EV_SNAT_EXHAUSTED: u8 = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub verdict: u8,
    pub stage: u8,
    pub flags: u8,
    pub rule_index: u32,
    /// Translated destination (DNAT) or SNAT source address; 0 if none.
    pub nat_addr: u32,
    pub nat_port: u16,
    pub _pad: u16,
    pub generation: u32,
}

// `aya::Pod` impls for shared `#[repr(C)]` map key/value structs go here, gated on the `user`
// feature (`unsafe impl aya::Pod for T {}`). The current maps only use primitive keys and values
// (`u32`, `u64`, `[u8; 4]`), which aya already implements `Pod` for.
#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made of integers and integer arrays only, with
    // explicit padding fields, so every bit pattern is valid and there is no uninitialised padding.
    unsafe impl aya::Pod for Globals {}
    unsafe impl aya::Pod for SetConfig {}
    unsafe impl aya::Pod for RuleInfo {}
    unsafe impl aya::Pod for NatKey {}
    unsafe impl aya::Pod for NatCand {}
    unsafe impl aya::Pod for NatValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for RuleStat {}
    unsafe impl aya::Pod for FlowEvent {}

    const _: () = {
        const fn assert_pod<T: aya::Pod>() {}
        assert_pod::<RuleId>();
        assert_pod::<Ipv4Key>();
        assert_pod::<Chunk>();
    };
}

// Layouts without implicit padding (the `Pod` impls above rely on it).
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Globals>() == 24 + 4 * MAX_SNAT_ADDRS + 8 * TIMEOUT_SLOTS);
    assert!(size_of::<NatKey>() == 8);
    assert!(size_of::<NatCand>() == 16);
    assert!(size_of::<CtKey>() == 16);
    assert!(size_of::<CtValue>() == 48);
    assert!(size_of::<FlowEvent>() == 32);
};
