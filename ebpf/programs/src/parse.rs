//! Bounds-checked header parsing for XDP frames: Ethernet → IPv4 → TCP/UDP/ICMP.
//!
//! Every header struct has alignment 1 (byte arrays for multi-byte fields), so reads never depend on
//! packet alignment, and every access goes through [`ptr_at`], which checks the header against the
//! end of the frame the way the verifier requires (a packet pointer plus a bounded offset compared
//! with `data_end`).
//!
//! Beyond what the verifier needs, lengths are checked against the IPv4 total length: an L4 header
//! must lie inside the IPv4 payload, not merely inside the frame (Ethernet padding does not count).

use core::mem::size_of;

use portcullis_common::Counter;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86DD;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// IPv4 "more fragments" flag in `frag_off` (host order).
const IP_MF: u16 = 0x2000;
/// IPv4 fragment offset mask in `frag_off` (host order), in units of 8 bytes.
const IP_OFFSET: u16 = 0x1fff;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

#[repr(C)]
pub struct TcpHdr {
    pub source: [u8; 2],
    pub dest: [u8; 2],
    pub seq: [u8; 4],
    pub ack_seq: [u8; 4],
    /// Data offset (high nibble, in 32-bit words) and reserved bits.
    pub doff_res: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg_ptr: [u8; 2],
}

#[repr(C)]
pub struct UdpHdr {
    pub source: [u8; 2],
    pub dest: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub rest: [u8; 4],
}

pub const ETH_HLEN: usize = size_of::<EthHdr>();
const IPV4_MIN_HLEN: usize = size_of::<Ipv4Hdr>();
const TCP_MIN_HLEN: usize = size_of::<TcpHdr>();
const UDP_HLEN: usize = size_of::<UdpHdr>();
const ICMP_HLEN: usize = size_of::<IcmpHdr>();

const _: () = {
    assert!(ETH_HLEN == 14);
    assert!(IPV4_MIN_HLEN == 20);
    assert!(TCP_MIN_HLEN == 20);
    assert!(UDP_HLEN == 8);
    assert!(ICMP_HLEN == 8);
};

/// The frame as seen by `xdp_ingress`.
pub enum Parsed {
    /// Well-formed IPv4: `class` is its class counter, `daddr` the destination (network order) to
    /// check against the deny map.
    Ipv4 { class: Counter, daddr: [u8; 4] },
    /// Not IPv4 (IPv6, ARP, anything else): count and pass.
    Pass(Counter),
    /// Malformed or truncated: count and drop.
    Drop(Counter),
}

/// A pointer to a `T` at `offset` bytes into the frame `[start, end)`, if all of it is inside.
#[inline(always)]
fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    let at = start + offset;
    if at + size_of::<T>() > end {
        return None;
    }
    Some(at as *const T)
}

/// Classifies the frame `[start, end)` (`ctx.data()`, `ctx.data_end()`).
#[inline(always)]
pub fn parse(start: usize, end: usize) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(start, end, 0) else {
        return Parsed::Drop(Counter::TruncatedEth);
    };
    // SAFETY: `ptr_at` checked that the whole header is inside the frame; alignment is 1.
    let ethertype = u16::from_be_bytes(unsafe { (*eth).ethertype });
    match ethertype {
        ETH_P_IP => parse_ipv4(start, end),
        ETH_P_IPV6 => Parsed::Pass(Counter::Ipv6),
        ETH_P_ARP => Parsed::Pass(Counter::Arp),
        _ => Parsed::Pass(Counter::OtherEthertype),
    }
}

#[inline(always)]
fn parse_ipv4(start: usize, end: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv4Hdr>(start, end, ETH_HLEN) else {
        return Parsed::Drop(Counter::TruncatedIp);
    };
    // SAFETY: `ptr_at` checked that the whole fixed header is inside the frame; alignment is 1.
    let ip = unsafe { &*ip };

    if ip.version_ihl >> 4 != 4 {
        return Parsed::Drop(Counter::BadVersion);
    }
    let ihl = usize::from(ip.version_ihl & 0x0f);
    if ihl < 5 {
        return Parsed::Drop(Counter::BadIhl);
    }
    let hdr_len = ihl * 4;
    // Options (IHL > 5) must be inside the frame too.
    if start + ETH_HLEN + hdr_len > end {
        return Parsed::Drop(Counter::TruncatedIp);
    }
    let tot_len = usize::from(u16::from_be_bytes(ip.tot_len));
    if tot_len < hdr_len || start + ETH_HLEN + tot_len > end {
        return Parsed::Drop(Counter::BadTotalLength);
    }

    let daddr = ip.daddr;
    let frag_off = u16::from_be_bytes(ip.frag_off);
    if frag_off & IP_OFFSET != 0 {
        // Non-first fragment: the payload continues an L4 datagram; there is no header to parse.
        return Parsed::Ipv4 {
            class: Counter::Fragment,
            daddr,
        };
    }
    let first_fragment = frag_off & IP_MF != 0;

    let l4_off = ETH_HLEN + hdr_len;
    let l4_len = tot_len - hdr_len;
    let l4 = match ip.protocol {
        IPPROTO_TCP => tcp(start, end, l4_off, l4_len),
        IPPROTO_UDP => udp(start, end, l4_off, l4_len, first_fragment),
        IPPROTO_ICMP => icmp(start, end, l4_off, l4_len),
        _ => Ok(Counter::Ipv4Other),
    };
    match l4 {
        Ok(_) if first_fragment => Parsed::Ipv4 {
            class: Counter::Fragment,
            daddr,
        },
        Ok(class) => Parsed::Ipv4 { class, daddr },
        Err(malformed) => Parsed::Drop(malformed),
    }
}

/// TCP: the base header and the options announced by the data offset must be inside the IPv4
/// payload. This also holds for a first fragment (a TCP header split across fragments is the
/// RFC 1858 tiny-fragment attack).
#[inline(always)]
fn tcp(start: usize, end: usize, off: usize, l4_len: usize) -> Result<Counter, Counter> {
    let Some(tcp) = ptr_at::<TcpHdr>(start, end, off) else {
        return Err(Counter::TruncatedL4);
    };
    if l4_len < TCP_MIN_HLEN {
        return Err(Counter::TruncatedL4);
    }
    // SAFETY: `ptr_at` checked that the whole base header is inside the frame; alignment is 1.
    let doff = usize::from(unsafe { (*tcp).doff_res } >> 4);
    if doff < 5 {
        return Err(Counter::BadL4Header);
    }
    if doff * 4 > l4_len {
        return Err(Counter::TruncatedL4);
    }
    Ok(Counter::Ipv4Tcp)
}

/// UDP: the header must be inside the IPv4 payload and its length field must be at least 8. Unless
/// the datagram is fragmented, the length must also fit in the payload (longer means truncated).
#[inline(always)]
fn udp(start: usize, end: usize, off: usize, l4_len: usize, first_fragment: bool) -> Result<Counter, Counter> {
    let Some(udp) = ptr_at::<UdpHdr>(start, end, off) else {
        return Err(Counter::TruncatedL4);
    };
    if l4_len < UDP_HLEN {
        return Err(Counter::TruncatedL4);
    }
    // SAFETY: `ptr_at` checked that the whole header is inside the frame; alignment is 1.
    let len = usize::from(u16::from_be_bytes(unsafe { (*udp).len }));
    if len < UDP_HLEN {
        return Err(Counter::BadL4Header);
    }
    if !first_fragment && len > l4_len {
        return Err(Counter::TruncatedL4);
    }
    Ok(Counter::Ipv4Udp)
}

/// ICMP: type, code, checksum and the 4-byte rest-of-header must be inside the IPv4 payload.
#[inline(always)]
fn icmp(start: usize, end: usize, off: usize, l4_len: usize) -> Result<Counter, Counter> {
    if ptr_at::<IcmpHdr>(start, end, off).is_none() || l4_len < ICMP_HLEN {
        return Err(Counter::TruncatedL4);
    }
    Ok(Counter::Ipv4Icmp)
}
