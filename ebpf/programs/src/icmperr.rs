//! ICMP errors (destination unreachable — fragmentation needed among them — and time exceeded) about a
//! tracked flow: related to that flow, translated back like its packets, and forwarded. Without this,
//! an error about a SNATed or DNATed packet is addressed to the appliance, which has no socket for it,
//! and path-MTU discovery through the appliance fails.
//!
//! The error quotes the packet it is about (its IPv4 header and the first 8 bytes of TCP/UDP). The flow's
//! conntrack entry for packets travelling like the error (toward the quoted packet's source) says how
//! such packets are rewritten: the outer destination and the quoted header are rewritten the same way,
//! with every checksum (outer IPv4, quoted IPv4, quoted UDP, ICMP) updated incrementally.

use aya_ebpf::programs::XdpContext;
use portcullis_common::{Counter, CtKey};

use crate::{
    counters::count,
    csum::{replace_addr, replace16},
    fwd,
    maps::CT,
    parse::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IcmpHdr, Ipv4Hdr, Pkt, ptr_at},
};

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_HLEN: usize = 8;
const QUOTED_IP_HLEN: usize = 20;

/// Whether `pkt` is an ICMP error type this module relates.
#[inline(always)]
pub fn is_error(pkt: &Pkt) -> bool {
    pkt.icmp_type == ICMP_DEST_UNREACH || pkt.icmp_type == ICMP_TIME_EXCEEDED
}

/// Relates, rewrites and forwards the error; `None` if it is about no tracked flow (the caller decides
/// it like any other packet).
#[inline(always)]
pub fn related(ctx: &XdpContext, pkt: &Pkt) -> Option<u32> {
    let quoted_off = pkt.l4_off + ICMP_HLEN;
    // Read what the lookup needs first: packet pointers do not survive the map helper call in the
    // verifier's eyes (the compiler re-derives them from the frame start), so they are taken again below.
    let (qproto, qsrc, qdst, qsport, qdport, old_qcheck, old_ucheck) = {
        let (start, end) = (ctx.data(), ctx.data_end());
        let q = ptr_at::<Ipv4Hdr>(start, end, quoted_off)?;
        let l4 = ptr_at::<[u8; 8]>(start, end, quoted_off + QUOTED_IP_HLEN)?;
        // SAFETY: `ptr_at` checked both are inside the frame; alignment 1.
        let (q, l4) = unsafe { (&*q, &*l4) };
        if q.version_ihl != 0x45 || (q.protocol != IPPROTO_TCP && q.protocol != IPPROTO_UDP) {
            return None;
        }
        (
            q.protocol,
            u32::from_ne_bytes(q.saddr),
            u32::from_ne_bytes(q.daddr),
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
            u16::from_be_bytes(q.check),
            u16::from_be_bytes([l4[6], l4[7]]),
        )
    };
    if pkt.daddr != qsrc {
        // An error goes to the source of the packet it quotes.
        return None;
    }
    let key = CtKey {
        src: qdst,
        dst: qsrc,
        sport: qdport,
        dport: qsport,
        proto: qproto,
        _pad: [0; 3],
    };
    // SAFETY: the value is copied out right away.
    let v = unsafe { CT.get(&key) }.copied()?;
    // Packets like the error go to `new_dst`; the quoted packet, seen from there, came from it.
    let (nsrc, ndst, nsport, ndport) = (v.new_dst, v.new_src, v.new_dport, v.new_sport);

    let (start, end) = (ctx.data(), ctx.data_end());
    let ip = ptr_at::<Ipv4Hdr>(start, end, ETH_HLEN)? as *mut Ipv4Hdr;
    let icmp = ptr_at::<IcmpHdr>(start, end, pkt.l4_off)? as *mut IcmpHdr;
    let q = ptr_at::<Ipv4Hdr>(start, end, quoted_off)? as *mut Ipv4Hdr;
    let l4 = ptr_at::<[u8; 8]>(start, end, quoted_off + QUOTED_IP_HLEN)? as *mut [u8; 8];
    // SAFETY: `ptr_at` checked each header is inside the frame; alignment 1; XDP frames are writable;
    // the four regions do not overlap (outer IPv4, ICMP header, quoted IPv4 without options, quoted L4).
    let (ip, icmp, q, l4) = unsafe { (&mut *ip, &mut *icmp, &mut *q, &mut *l4) };

    let mut c = u16::from_be_bytes(ip.check);
    c = replace_addr(c, pkt.daddr, v.new_dst);
    ip.daddr = v.new_dst.to_ne_bytes();
    if pkt.saddr == qdst {
        // Sent by the flow's own peer (e.g. a client's port unreachable about a reply): its source is
        // translated like the flow's packets from there.
        c = replace_addr(c, pkt.saddr, v.new_src);
        ip.saddr = v.new_src.to_ne_bytes();
    }
    ip.check = c.to_be_bytes();

    let mut qc = replace_addr(old_qcheck, qsrc, nsrc);
    qc = replace_addr(qc, qdst, ndst);
    q.check = qc.to_be_bytes();
    q.saddr = nsrc.to_ne_bytes();
    q.daddr = ndst.to_ne_bytes();

    let mut ic = u16::from_be_bytes(icmp.check);
    ic = replace_addr(ic, qsrc, nsrc);
    ic = replace_addr(ic, qdst, ndst);
    ic = replace16(ic, old_qcheck, qc);
    ic = replace16(ic, qsport, nsport);
    ic = replace16(ic, qdport, ndport);
    if qproto == IPPROTO_UDP && old_ucheck != 0 {
        let mut u = replace_addr(old_ucheck, qsrc, nsrc);
        u = replace_addr(u, qdst, ndst);
        u = replace16(u, qsport, nsport);
        u = replace16(u, qdport, ndport);
        let u = if u == 0 { 0xffff } else { u };
        ic = replace16(ic, old_ucheck, u);
        [l4[6], l4[7]] = u.to_be_bytes();
    }
    [l4[0], l4[1]] = nsport.to_be_bytes();
    [l4[2], l4[3]] = ndport.to_be_bytes();
    icmp.check = ic.to_be_bytes();
    count(Counter::IcmpErrorRelated);
    Some(fwd::forward(ctx))
}
