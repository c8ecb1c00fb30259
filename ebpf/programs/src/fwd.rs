//! Forwarding: `bpf_fib_lookup` on the (rewritten) headers, then MAC rewrite, TTL decrement and
//! `bpf_redirect` (or XDP_TX out of the ingress interface). A next hop without a neighbour entry: the
//! packet is dropped and userspace is asked (through the event ring, at most every 200 ms per hop) to
//! make the kernel resolve it — handing the packet to the kernel instead would not work for translated
//! packets (their source is the appliance's own address: a martian) and would let the kernel forward
//! untranslated ones past the policy's steering. Anything else the FIB does not forward (no route, TTL)
//! goes to the host stack, which answers with ICMP itself.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_ktime_get_ns, bpf_redirect},
    programs::XdpContext,
};
use portcullis_common::{Counter, FlowEvent, NEIGHBOUR_REQUEST_NS, VERDICT_NEIGHBOUR};

use crate::{
    counters::count,
    csum::replace16,
    maps::{EVENTS, NEIGH},
    parse::{ETH_HLEN, EthHdr, Ipv4Hdr, ptr_at},
};

const AF_INET: u8 = 2;

#[inline(always)]
pub fn forward(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(eth) = ptr_at::<EthHdr>(start, end, 0) else {
        return xdp_action::XDP_PASS;
    };
    let Some(ip) = ptr_at::<Ipv4Hdr>(start, end, ETH_HLEN) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: `ptr_at` checked both headers are inside the frame; alignment 1; frames are writable.
    let (eth, ip) = unsafe { (&mut *(eth as *mut EthHdr), &mut *(ip as *mut Ipv4Hdr)) };
    if ip.ttl <= 1 {
        // The kernel sends the ICMP time-exceeded.
        count(Counter::FibPass);
        return xdp_action::XDP_PASS;
    }
    // SAFETY: all-zero is a valid `bpf_fib_lookup` (plain integers and unions of integers).
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = ip.protocol;
    p.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
    p.__bindgen_anon_2.tos = ip.tos;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.saddr);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.daddr);
    // SAFETY: `ctx.ctx` is the live `xdp_md`.
    p.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let ingress = p.ifindex;
    // SAFETY: `p` is a valid, initialised parameter block of the size passed.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx as *mut _, &mut p, core::mem::size_of::<FibParams>() as i32, 0) };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        // TTL is the high byte of the 16-bit word (ttl, protocol).
        let old = u16::from_be_bytes([ip.ttl, ip.protocol]);
        ip.ttl -= 1;
        let new = u16::from_be_bytes([ip.ttl, ip.protocol]);
        ip.check = replace16(u16::from_be_bytes(ip.check), old, new).to_be_bytes();
        eth.dst = p.dmac;
        eth.src = p.smac;
        if p.ifindex == ingress {
            count(Counter::FibTx);
            return xdp_action::XDP_TX;
        }
        count(Counter::FibRedirect);
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(p.ifindex, 0) } as u32;
    }
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        count(Counter::FibNoNeigh);
        // SAFETY: the union's IPv4 member is the one the lookup used (family AF_INET).
        let hop = unsafe { p.__bindgen_anon_4.ipv4_dst };
        request_neighbour(hop, p.ifindex);
        return xdp_action::XDP_DROP;
    } else {
        count(Counter::FibPass);
    }
    xdp_action::XDP_PASS
}

/// Asks userspace to resolve `hop` (network byte order) on `ifindex`, unless asked recently.
#[inline(always)]
fn request_neighbour(hop: u32, ifindex: u32) {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(last) = NEIGH.get_ptr(&hop) {
        // SAFETY: a valid map value pointer for the duration of this program run.
        if now.wrapping_sub(unsafe { *last }) < NEIGHBOUR_REQUEST_NS {
            return;
        }
    }
    let _ = NEIGH.insert(&hop, &now, 0);
    match EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            entry.write(FlowEvent {
                dst: hop,
                verdict: VERDICT_NEIGHBOUR,
                rule_index: ifindex,
                ..FlowEvent::default()
            });
            entry.submit(0);
        }
        None => count(Counter::EventsLost),
    }
}
