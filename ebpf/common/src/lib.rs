//! Types and constants shared by the portcullis eBPF programs (`portcullis-ebpf`) and the userspace
//! loader (`portcullis::bpf`).
//!
//! Everything here is `no_std` and layout-stable (`#[repr(C)]`/`#[repr(u32)]`), because both sides
//! read and write the same map memory. The `user` feature adds the `aya::Pod` impls the userspace
//! side needs for map keys and values; the eBPF side never enables it (it would pull in `std`).
#![no_std]

/// Name of the XDP program in the object (`#[xdp] fn xdp_ingress`).
pub const XDP_INGRESS: &str = "xdp_ingress";

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
/// Every frame `xdp_ingress` sees increments exactly one *class* counter (everything except
/// [`Counter::DenyV4`]). A well-formed IPv4 frame whose destination matches `DENY_V4` additionally
/// increments [`Counter::DenyV4`] and is dropped. Malformed frames (the `Truncated*`/`Bad*` classes)
/// are dropped; everything else is passed.
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
    /// IPv6 (ethertype 0x86DD); counted and passed, not parsed yet.
    Ipv6 = 4,
    /// ARP (ethertype 0x0806); passed.
    Arp = 5,
    /// Any other ethertype (including VLAN tags, not parsed yet); passed.
    OtherEthertype = 6,
    /// Frame shorter than an Ethernet header. Dropped.
    TruncatedEth = 7,
    /// IPv4 ethertype, but the frame ends before the IPv4 header (20 bytes, or IHL × 4 with
    /// options) does. Dropped.
    TruncatedIp = 8,
    /// IPv4 version field is not 4. Dropped.
    BadVersion = 9,
    /// IPv4 IHL below 5 (header shorter than 20 bytes). Dropped.
    BadIhl = 10,
    /// IPv4 total length below the header length, or beyond the end of the frame. Dropped.
    BadTotalLength = 11,
    /// The TCP/UDP/ICMP header (or a UDP datagram per its length field, or TCP options per the data
    /// offset) extends beyond the IPv4 payload. Dropped.
    TruncatedL4 = 12,
    /// TCP data offset below 5, or UDP length below 8. Dropped.
    BadL4Header = 13,
    /// IPv4 fragment (MF set or non-zero offset). Non-first fragments carry no L4 header and are not
    /// parsed; a first fragment must still hold a complete base TCP/UDP/ICMP header (else
    /// [`Counter::TruncatedL4`]). Passed unless the destination is denied.
    Fragment = 14,
    /// Dropped because the IPv4 destination matched `DENY_V4` (in addition to its class counter).
    DenyV4 = 15,
}

impl Counter {
    /// Number of counters; the `max_entries` of [`COUNTERS_MAP`].
    pub const COUNT: u32 = 16;

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
        }
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

// `aya::Pod` impls for shared `#[repr(C)]` map key/value structs go here, gated on the `user`
// feature (`unsafe impl aya::Pod for T {}`). The current maps only use primitive keys and values
// (`u32`, `u64`, `[u8; 4]`), which aya already implements `Pod` for.
#[cfg(feature = "user")]
const _: () = {
    const fn assert_pod<T: aya::Pod>() {}
    assert_pod::<RuleId>();
    assert_pod::<Ipv4Key>();
};
