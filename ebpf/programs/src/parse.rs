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
pub const IPV4_MIN_HLEN: usize = size_of::<Ipv4Hdr>();
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

/// What the program needs of a well-formed IPv4 packet. Addresses are the raw network-order
/// bytes loaded as `u32`; ports are host order.
#[derive(Clone, Copy)]
pub struct Pkt {
    pub class: Counter,
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
    /// TCP/UDP ports; ICMP echo request: `sport` = id; echo reply: `dport` = id.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// Non-first fragment: no L4 header.
    pub later_fragment: bool,
    pub tot_len: u16,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// The frame as seen by `xdp_ingress`.
pub enum Parsed {
    /// Well-formed IPv4.
    Ipv4(Pkt),
    /// Not IPv4 (IPv6, ARP, anything else): count and pass.
    Pass(Counter),
    /// Malformed or truncated: count and drop.
    Drop(Counter),
}

/// A pointer to a `T` at `offset` bytes into the frame `[start, end)`, if all of it is inside.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
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

    let l4_off = ETH_HLEN + hdr_len;
    let mut pkt = Pkt {
        class: Counter::Fragment,
        saddr: u32::from_ne_bytes(ip.saddr),
        daddr: u32::from_ne_bytes(ip.daddr),
        proto: ip.protocol,
        l4_off,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        later_fragment: false,
        tot_len: tot_len as u16,
    };
    let frag_off = u16::from_be_bytes(ip.frag_off);
    if frag_off & IP_OFFSET != 0 {
        // Non-first fragment: the payload continues an L4 datagram; there is no header to parse.
        pkt.later_fragment = true;
        return Parsed::Ipv4(pkt);
    }
    let first_fragment = frag_off & IP_MF != 0;

    let l4_len = tot_len - hdr_len;
    let l4 = match ip.protocol {
        IPPROTO_TCP => tcp(start, end, l4_off, l4_len, &mut pkt),
        IPPROTO_UDP => udp(start, end, l4_off, l4_len, first_fragment, &mut pkt),
        IPPROTO_ICMP => icmp(start, end, l4_off, l4_len, &mut pkt),
        _ => Ok(Counter::Ipv4Other),
    };
    match l4 {
        Ok(_) if first_fragment => Parsed::Ipv4(pkt),
        Ok(class) => {
            pkt.class = class;
            Parsed::Ipv4(pkt)
        }
        Err(malformed) => Parsed::Drop(malformed),
    }
}

/// TCP: the base header and the options announced by the data offset must be inside the IPv4
/// payload. This also holds for a first fragment (a TCP header split across fragments is the
/// RFC 1858 tiny-fragment attack).
#[inline(always)]
fn tcp(start: usize, end: usize, off: usize, l4_len: usize, pkt: &mut Pkt) -> Result<Counter, Counter> {
    let Some(tcp) = ptr_at::<TcpHdr>(start, end, off) else {
        return Err(Counter::TruncatedL4);
    };
    if l4_len < TCP_MIN_HLEN {
        return Err(Counter::TruncatedL4);
    }
    // SAFETY: `ptr_at` checked that the whole base header is inside the frame; alignment is 1.
    let tcp = unsafe { &*tcp };
    let doff = usize::from(tcp.doff_res >> 4);
    if doff < 5 {
        return Err(Counter::BadL4Header);
    }
    if doff * 4 > l4_len {
        return Err(Counter::TruncatedL4);
    }
    pkt.sport = u16::from_be_bytes(tcp.source);
    pkt.dport = u16::from_be_bytes(tcp.dest);
    pkt.tcp_flags = tcp.flags;
    Ok(Counter::Ipv4Tcp)
}

/// UDP: the header must be inside the IPv4 payload and its length field must be at least 8. Unless
/// the datagram is fragmented, the length must also fit in the payload (longer means truncated).
#[inline(always)]
fn udp(
    start: usize,
    end: usize,
    off: usize,
    l4_len: usize,
    first_fragment: bool,
    pkt: &mut Pkt,
) -> Result<Counter, Counter> {
    let Some(udp) = ptr_at::<UdpHdr>(start, end, off) else {
        return Err(Counter::TruncatedL4);
    };
    if l4_len < UDP_HLEN {
        return Err(Counter::TruncatedL4);
    }
    // SAFETY: `ptr_at` checked that the whole header is inside the frame; alignment is 1.
    let udp = unsafe { &*udp };
    let len = usize::from(u16::from_be_bytes(udp.len));
    if len < UDP_HLEN {
        return Err(Counter::BadL4Header);
    }
    if !first_fragment && len > l4_len {
        return Err(Counter::TruncatedL4);
    }
    pkt.sport = u16::from_be_bytes(udp.source);
    pkt.dport = u16::from_be_bytes(udp.dest);
    Ok(Counter::Ipv4Udp)
}

/// ICMP: type, code, checksum and the 4-byte rest-of-header must be inside the IPv4 payload.
#[inline(always)]
fn icmp(start: usize, end: usize, off: usize, l4_len: usize, pkt: &mut Pkt) -> Result<Counter, Counter> {
    let Some(icmp) = ptr_at::<IcmpHdr>(start, end, off) else {
        return Err(Counter::TruncatedL4);
    };
    if l4_len < ICMP_HLEN {
        return Err(Counter::TruncatedL4);
    }
    // SAFETY: `ptr_at` checked that the whole header is inside the frame; alignment is 1.
    let icmp = unsafe { &*icmp };
    pkt.icmp_type = icmp.kind;
    let id = u16::from_be_bytes([icmp.rest[0], icmp.rest[1]]);
    match icmp.kind {
        ICMP_ECHO_REQUEST => pkt.sport = id,
        ICMP_ECHO_REPLY => pkt.dport = id,
        _ => {}
    }
    Ok(Counter::Ipv4Icmp)
}
