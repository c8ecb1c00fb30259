//! Incremental Internet checksum updates (RFC 1624) and the NAT header rewrite.
//!
//! XDP has no `bpf_l3/l4_csum_replace` (those need an skb), so checksums are patched here: for each
//! changed 16-bit word `m → m'`, `HC' = ~(~HC + ~m + m')`. Values are big-endian 16-bit words as
//! they sit in the header. A zero UDP checksum means "none" and stays zero; a computed zero is sent
//! as 0xFFFF (RFC 768).

use aya_ebpf::programs::XdpContext;

use crate::parse::{
    ETH_HLEN, ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IcmpHdr, Ipv4Hdr, Pkt, TcpHdr, UdpHdr, ptr_at,
};

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// `old`/`new`: an address as loaded from the packet (`u32::from_ne_bytes` of network-order bytes).
#[inline(always)]
pub fn replace_addr(check: u16, old: u32, new: u32) -> u16 {
    let (o, n) = (old.to_ne_bytes(), new.to_ne_bytes());
    let c = replace16(
        check,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([n[0], n[1]]),
    );
    replace16(c, u16::from_be_bytes([o[2], o[3]]), u16::from_be_bytes([n[2], n[3]]))
}

/// The rewrite of one packet: new addresses and ports (ICMP echo: the id, in `sport` for a
/// request and `dport` for a reply, as in `Pkt`).
#[derive(Clone, Copy)]
pub struct Rewrite {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
}

/// Rewrites the headers of `pkt` (parsed from `ctx`) to `rw`, patching the IPv4 and L4 checksums.
/// `Err` only if the headers moved out of bounds (cannot happen after a successful parse, but the
/// verifier needs the checks).
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, pkt: &Pkt, rw: &Rewrite) -> Result<(), ()> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let ip = ptr_at::<Ipv4Hdr>(start, end, ETH_HLEN).ok_or(())? as *mut Ipv4Hdr;
    // SAFETY: `ptr_at` checked the whole header is inside the frame; alignment 1; XDP frames are
    // writable.
    let ip = unsafe { &mut *ip };
    let addr_changed = rw.src != pkt.saddr || rw.dst != pkt.daddr;
    if addr_changed {
        let mut c = u16::from_be_bytes(ip.check);
        c = replace_addr(c, pkt.saddr, rw.src);
        c = replace_addr(c, pkt.daddr, rw.dst);
        ip.check = c.to_be_bytes();
        ip.saddr = rw.src.to_ne_bytes();
        ip.daddr = rw.dst.to_ne_bytes();
    }
    if pkt.later_fragment {
        return Ok(());
    }
    match pkt.proto {
        IPPROTO_TCP => {
            let tcp = ptr_at::<TcpHdr>(start, end, pkt.l4_off).ok_or(())? as *mut TcpHdr;
            // SAFETY: as above.
            let tcp = unsafe { &mut *tcp };
            let mut c = u16::from_be_bytes(tcp.check);
            c = replace_addr(c, pkt.saddr, rw.src);
            c = replace_addr(c, pkt.daddr, rw.dst);
            c = replace16(c, pkt.sport, rw.sport);
            c = replace16(c, pkt.dport, rw.dport);
            tcp.check = c.to_be_bytes();
            tcp.source = rw.sport.to_be_bytes();
            tcp.dest = rw.dport.to_be_bytes();
        }
        IPPROTO_UDP => {
            let udp = ptr_at::<UdpHdr>(start, end, pkt.l4_off).ok_or(())? as *mut UdpHdr;
            // SAFETY: as above.
            let udp = unsafe { &mut *udp };
            let old = u16::from_be_bytes(udp.check);
            if old != 0 {
                let mut c = replace_addr(old, pkt.saddr, rw.src);
                c = replace_addr(c, pkt.daddr, rw.dst);
                c = replace16(c, pkt.sport, rw.sport);
                c = replace16(c, pkt.dport, rw.dport);
                udp.check = (if c == 0 { 0xffff } else { c }).to_be_bytes();
            }
            udp.source = rw.sport.to_be_bytes();
            udp.dest = rw.dport.to_be_bytes();
        }
        IPPROTO_ICMP => {
            let icmp = ptr_at::<IcmpHdr>(start, end, pkt.l4_off).ok_or(())? as *mut IcmpHdr;
            // SAFETY: as above.
            let icmp = unsafe { &mut *icmp };
            // The ICMP checksum has no pseudo-header: only the echo id matters.
            let (old_id, new_id) = if pkt.icmp_type == ICMP_ECHO_REQUEST {
                (pkt.sport, rw.sport)
            } else {
                (pkt.dport, rw.dport)
            };
            if old_id != new_id {
                let c = replace16(u16::from_be_bytes(icmp.check), old_id, new_id);
                icmp.check = c.to_be_bytes();
                let id = new_id.to_be_bytes();
                icmp.rest[0] = id[0];
                icmp.rest[1] = id[1];
            }
        }
        _ => {}
    }
    Ok(())
}
