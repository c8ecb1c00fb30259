//! portcullis eBPF programs (one object, `portcullis`, embedded by the appliance).
//!
//! `xdp_ingress` (one program for the internal and the external interface, or the one interface
//! of a one-arm appliance):
//!
//! 1. Parse (Ethernet → IPv4 → TCP/UDP/ICMP, strict bounds and length checks); malformed → counted
//!    drop. `DENY_V4` (operator block list) → drop. No policy loaded (`ACTIVE` generation 0) →
//!    pass, as the first program did.
//! 2. Conntrack hit (both directions have an entry; see `portcullis-common::CtValue`): expire if
//!    idle past its timeout (then the packet is a new flow), re-classify if the policy generation
//!    changed (deny → entries deleted, drop), track TCP state, count, NAT rewrite with incremental
//!    checksums, `bpf_fib_lookup` + redirect/TX.
//! 3. New flow, in Azure order: threat intel (dst), DNAT (TCP/UDP), addressed to the appliance →
//!    pass (DNS, management, replies to the host's own sockets; a SNAT-range port without an entry
//!    is dropped), arriving on the external interface (two-arm) → drop, network rules (LBVS),
//!    TCP to an application-rule port → pass (proxy), default deny. Allowed and DNAT'ed flows get
//!    conntrack entries (SNAT/DNAT port allocation by probing `BPF_NOEXIST` inserts of the reply
//!    key), a flow event and per-rule counters.
//!
//! Only the `bpfel-unknown-none` build (appliance/build.rs, via aya-build, with feature `bpf`)
//! produces the object. On the host the same code compiles into a stub binary, so that
//! `cargo clippy -p portcullis-ebpf --features bpf` lints it with the host toolchain.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Map keys are passed by reference on purpose: a by-value `Borrow` copy is one more stack slot in
// a program that lives close to the 512-byte stack limit.
#![allow(clippy::needless_borrows_for_generic_args)]

mod counters;
mod csum;
mod deny;
mod fwd;
mod icmperr;
mod maps;
mod parse;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, xdp_action},
    helpers::{bpf_ktime_get_ns, bpf_loop},
    macros::{map, xdp},
    maps::PerCpuArray,
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use portcullis_common::*;

use crate::{
    counters::count,
    csum::{Rewrite, rewrite},
    maps::{
        ACTIVE, BITMAPS, CT, DST, EVENTS, GLOBALS, HOST, JUMP, LOCAL, NAT, NATSRC, PINS, PORTS, PRIVATE, RULE_STATS,
        RULES, SETCFG, SRC, TI, set_key,
    },
    parse::{
        ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Parsed, Pkt, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN,
    },
};

#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    match parse::parse(ctx.data(), ctx.data_end()) {
        Parsed::Ipv4(pkt) => {
            count(pkt.class);
            if deny::lookup(pkt.daddr.to_ne_bytes()).is_some() {
                count(Counter::DenyV4);
                return xdp_action::XDP_DROP;
            }
            let active = ACTIVE.get(0).copied().unwrap_or(0);
            if active >> 1 == 0 {
                count(Counter::NoPolicy);
                return xdp_action::XDP_PASS;
            }
            ipv4(&ctx, &pkt, active)
        }
        Parsed::Pass(class) => {
            count(class);
            if class == Counter::Ipv6 && ACTIVE.get(0).copied().unwrap_or(0) >> 1 != 0 {
                let pass = GLOBALS.get(0).is_some_and(|g| g.flags & FLAG_PASS_IPV6 != 0);
                if !pass {
                    count(Counter::Ipv6Dropped);
                    return xdp_action::XDP_DROP;
                }
            }
            xdp_action::XDP_PASS
        }
        Parsed::Drop(class) => {
            count(class);
            xdp_action::XDP_DROP
        }
    }
}

/// What a new (or re-classified) flow gets.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Allow,
    Deny,
    Dnat,
    PassLocal,
    PassDns,
    PassApp,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Dec {
    kind: Kind,
    stage: u8,
    rule_index: u32,
    /// Why a `Deny` drops (the counter).
    reason: Counter,
    alert: bool,
    snat: bool,
    xaddr: u32,
    xport: u16,
}

impl Dec {
    #[inline(always)]
    fn new(kind: Kind, stage: u8, rule_index: u32, reason: Counter, alert: bool) -> Self {
        Dec {
            kind,
            stage,
            rule_index,
            reason,
            alert,
            snat: false,
            xaddr: 0,
            xport: 0,
        }
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: `ctx.ctx` is the live `xdp_md`.
    unsafe { (*ctx.ctx).ingress_ifindex }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, pkt: &Pkt, active: u32) -> u32 {
    let generation = active >> 1;
    let Some(g) = GLOBALS.get(0) else {
        return xdp_action::XDP_DROP;
    };
    if pkt.later_fragment {
        // No ports: neither the conntrack key nor the port dimension can be known.
        count(Counter::FragmentDropped);
        return xdp_action::XDP_DROP;
    }
    let key = CtKey {
        src: pkt.saddr,
        dst: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    let now = now_ns();
    if let Some(v) = CT.get_ptr_mut(&key)
        && live(pkt, &key, v, g, now)
        // SAFETY: valid map value pointer from the kernel.
        && unsafe { (*v).generation } == generation
    {
        return established(ctx, pkt, &key, v, generation, None);
    }
    // A flow to the host stack decided under this generation: pass without the slow path (an
    // application-port flow only while the proxy runs).
    // SAFETY: the value is copied out right away.
    if let Some(h) = unsafe { HOST.get(&key) }.copied()
        && h >> 2 == u64::from(generation)
        && (h & 3 != HOST_APP
            || (g.flags & FLAG_APP_PROXY != 0
                && (g.external_ifindex == 0 || ingress_ifindex(ctx) != g.external_ifindex)))
    {
        count(Counter::HostHit);
        match h & 3 {
            HOST_APP => count(Counter::PassAppPort),
            HOST_DNS => {
                count(Counter::PassLocal);
                count(Counter::PassDns);
            }
            _ => count(Counter::PassLocal),
        }
        return xdp_action::XDP_PASS;
    }
    // New flow or re-classification: the second program (verified on its own; keeps this one,
    // the fast path, small).
    // SAFETY: `ctx` is this program's context; on success the call does not return.
    unsafe { JUMP.tail_call(ctx, SLOW_PATH) };
    count(Counter::TailCallFailed);
    xdp_action::XDP_DROP
}

/// The slow path: decides new flows and re-classifies flows of an older policy generation.
/// What `xdp_new_flow` hands to `xdp_apply` (per CPU: a tail call stays on the CPU).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    dec: Dec,
    dkey: CtKey,
    reclassify: u32,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The slow path, stage 1: the policy decision for a new flow, or the re-classification of a
/// flow of an older policy generation. Stage 2 (`xdp_apply`, another tail call) acts on it; the
/// split keeps each program within the verifier's budget (every outcome of `decide` is a
/// different constant to the verifier; through the scratch map they arrive as one unknown).
#[xdp]
pub fn xdp_new_flow(ctx: XdpContext) -> u32 {
    let Parsed::Ipv4(pkt) = parse::parse(ctx.data(), ctx.data_end()) else {
        return xdp_action::XDP_DROP;
    };
    let active = ACTIVE.get(0).copied().unwrap_or(0);
    let set = active & 1;
    let Some(g) = GLOBALS.get(0) else {
        return xdp_action::XDP_DROP;
    };
    if pkt.proto == IPPROTO_ICMP
        && icmperr::is_error(&pkt)
        && let Some(verdict) = icmperr::related(&ctx, &pkt)
    {
        return verdict;
    }
    let key = CtKey {
        src: pkt.saddr,
        dst: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    // SAFETY: the value is copied out right away.
    let (dkey, reclassify) = match unsafe { CT.get(&key) } {
        Some(v) if v.flags & CT_REPLY != 0 => (v.peer, true),
        Some(_) => (key, true),
        None => (key, false),
    };
    let ingress = ingress_ifindex(&ctx);
    let external = g.external_ifindex != 0 && ingress == g.external_ifindex && !reclassify;
    let dec = decide(&dkey, g, set, external);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: this CPU's slot of the scratch array.
    unsafe {
        *scratch = Scratch {
            dec,
            dkey,
            reclassify: reclassify as u32,
        }
    };
    // SAFETY: `ctx` is this program's context; on success the call does not return.
    unsafe { JUMP.tail_call(&ctx, APPLY) };
    count(Counter::TailCallFailed);
    xdp_action::XDP_DROP
}

/// The slow path, stage 2: creates the flow (conntrack, NAT, event, counters) or applies the
/// re-classification, then rewrites and forwards.
#[xdp]
pub fn xdp_apply(ctx: XdpContext) -> u32 {
    let Parsed::Ipv4(pkt) = parse::parse(ctx.data(), ctx.data_end()) else {
        return xdp_action::XDP_DROP;
    };
    let active = ACTIVE.get(0).copied().unwrap_or(0);
    let generation = active >> 1;
    let Some(g) = GLOBALS.get(0) else {
        return xdp_action::XDP_DROP;
    };
    let Some(scratch) = SCRATCH.get(0) else {
        return xdp_action::XDP_DROP;
    };
    let key = CtKey {
        src: pkt.saddr,
        dst: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    let d = scratch.dec;
    let dkey = scratch.dkey;
    match CT.get_ptr_mut(&key) {
        Some(v) if scratch.reclassify != 0 => established(&ctx, &pkt, &key, v, generation, Some((&dkey, &d))),
        _ => new_flow(&ctx, &pkt, &key, g, now_ns(), generation, &d),
    }
}

#[inline(always)]
fn timeout(g: &Globals, proto: u8, state: u8) -> u64 {
    let i = timeout_slot(proto, state);
    // LLVM folds the slot into an offset computed from `state` and drops the bound the verifier
    // needs; a volatile read makes the bound check stay.
    // SAFETY: reading a local.
    let i = unsafe { core::ptr::read_volatile(&i) };
    if i >= TIMEOUT_SLOTS {
        return 0;
    }
    g.timeouts[i]
}

/// Whether the entry `v` for `key` is live; stale entries (idle past the timeout in both
/// directions, or a closed TCP flow whose tuple a new SYN reuses) are deleted.
#[inline(always)]
fn live(pkt: &Pkt, key: &CtKey, v: *mut CtValue, g: &Globals, now: u64) -> bool {
    // SAFETY: the kernel returned a valid pointer to the map value; concurrent updates from other
    // CPUs can only tear individual fields, which every use tolerates.
    let v = unsafe { &*v };
    let peer = v.peer;
    if now.saturating_sub(v.last_seen) > timeout(g, pkt.proto, v.state) {
        // One-way traffic keeps only one direction fresh: the flow is live if either is.
        // SAFETY: as above.
        let peer_fresh = CT
            .get_ptr(&peer)
            .is_some_and(|p| unsafe { now.saturating_sub((*p).last_seen) <= timeout(g, pkt.proto, (*p).state) });
        if !peer_fresh {
            let _ = CT.remove(key);
            let _ = CT.remove(&peer);
            count(Counter::CtExpired);
            return false;
        }
    }
    if pkt.proto == IPPROTO_TCP
        && v.state == CT_STATE_CLOSED
        && v.flags & CT_REPLY == 0
        && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    {
        let _ = CT.remove(key);
        let _ = CT.remove(&peer);
        return false;
    }
    true
}

/// Whether the DNAT flow of entry `v` (either direction; `peer` is the other) is translated to the
/// address and port decision `d` translates to.
#[inline(always)]
fn same_translation(v: &CtValue, peer: &CtKey, d: &Dec) -> bool {
    if v.flags & CT_REPLY == 0 {
        return v.new_dst == d.xaddr && v.new_dport == d.xport;
    }
    // SAFETY: the value is copied out right away.
    match unsafe { CT.get(peer) } {
        Some(o) => o.new_dst == d.xaddr && o.new_dport == d.xport,
        None => false,
    }
}

/// The fast path. `reclassified`: the original tuple and its new decision, when the policy
/// generation changed since the flow was classified.
#[inline(always)]
fn established(
    ctx: &XdpContext,
    pkt: &Pkt,
    key: &CtKey,
    v: *mut CtValue,
    generation: u32,
    reclassified: Option<(&CtKey, &Dec)>,
) -> u32 {
    // SAFETY: see `live`.
    let v = unsafe { &mut *v };
    let peer = v.peer;
    count(Counter::CtHit);
    let bytes = u64::from(pkt.tot_len);
    if let Some((orig, d)) = reclassified {
        count(Counter::Reclassified);
        let keep = match d.kind {
            Kind::Allow => v.stage == STAGE_NETWORK,
            // Still DNAT, and to the same backend: a flow cannot move to another one mid-stream.
            Kind::Dnat => v.stage == STAGE_DNAT && same_translation(v, &peer, d),
            _ => false,
        };
        if !keep {
            let flags = EV_RECLASSIFIED | if d.alert { EV_TI_ALERT } else { 0 };
            emit(orig, VERDICT_DENY, d.stage, flags, d.rule_index, 0, 0, generation);
            rule_stat(d.rule_index, bytes, 1);
            let _ = CT.remove(key);
            let _ = CT.remove(&peer);
            count(Counter::ReclassifiedDenied);
            return xdp_action::XDP_DROP;
        }
        v.generation = generation;
        v.rule_index = d.rule_index;
        if let Some(p) = CT.get_ptr_mut(&peer) {
            // SAFETY: as above.
            unsafe {
                (*p).generation = generation;
                (*p).rule_index = d.rule_index;
            }
        }
    }
    if pkt.proto == IPPROTO_TCP {
        track_tcp(pkt.tcp_flags, v);
    }
    v.last_seen = now_ns();
    rule_stat(v.rule_index, bytes, 0);
    let rw = Rewrite {
        src: v.new_src,
        dst: v.new_dst,
        sport: v.new_sport,
        dport: v.new_dport,
    };
    if rewrite(ctx, pkt, &rw).is_err() {
        return xdp_action::XDP_DROP;
    }
    fwd::forward(ctx)
}

/// TCP state, kept in both entries of the flow (written on transitions only).
#[inline(always)]
fn track_tcp(tcp_flags: u8, v: &mut CtValue) {
    let reply = v.flags & CT_REPLY != 0;
    let mut state = v.state;
    let mut flags = v.flags;
    if tcp_flags & TCP_RST != 0 {
        state = CT_STATE_CLOSED;
    } else {
        if tcp_flags & TCP_FIN != 0 {
            flags |= if reply { CT_FIN_REPLY } else { CT_FIN_ORIG };
        }
        if flags & (CT_FIN_ORIG | CT_FIN_REPLY) == CT_FIN_ORIG | CT_FIN_REPLY {
            state = CT_STATE_CLOSED;
        } else if flags & (CT_FIN_ORIG | CT_FIN_REPLY) != 0 {
            if state != CT_STATE_CLOSED {
                state = CT_STATE_FIN;
            }
        } else if state == CT_STATE_SYN_SENT && reply {
            state = CT_STATE_ESTABLISHED;
        }
    }
    if state != v.state || flags != v.flags {
        v.state = state;
        v.flags = flags;
        if let Some(p) = CT.get_ptr_mut(&v.peer) {
            // SAFETY: valid map value pointer from the kernel.
            unsafe {
                (*p).state = state;
                (*p).flags = ((*p).flags & !(CT_FIN_ORIG | CT_FIN_REPLY)) | (flags & (CT_FIN_ORIG | CT_FIN_REPLY));
            }
        }
    }
}

/// Index of the lowest set bit of a non-zero word (BPF has no ctz instruction; a binary search
/// keeps LLVM from emitting a lookup table).
#[inline(always)]
fn lowest_bit(x: u64) -> u32 {
    let mut x = x & x.wrapping_neg();
    let mut n = 0;
    if x & 0xffff_ffff == 0 {
        n += 32;
        x >>= 32;
    }
    if x & 0xffff == 0 {
        n += 16;
        x >>= 16;
    }
    if x & 0xff == 0 {
        n += 8;
        x >>= 8;
    }
    if x & 0xf == 0 {
        n += 4;
        x >>= 4;
    }
    if x & 0x3 == 0 {
        n += 2;
        x >>= 2;
    }
    if x & 0x1 == 0 {
        n += 1;
    }
    n
}

#[repr(C)]
struct ClassifyCtx {
    base: u32,
    chunks: u32,
    src: u32,
    port: u32,
    dst: u32,
    pin: u32,
    result: u32,
}

/// One chunk of the AND: `bpf_loop` callback (the verifier checks it once, not per iteration).
extern "C" fn classify_chunk(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `ClassifyCtx` on `classify`'s stack, passed through `bpf_loop`.
    let c = unsafe { &mut *(ctx as *mut ClassifyCtx) };
    let i = index as u32;
    let bitmaps = &BITMAPS;
    let at = |id: u32| c.base.wrapping_add(id.wrapping_mul(c.chunks)).wrapping_add(i);
    let (Some(a), Some(b), Some(d), Some(p)) = (
        bitmaps.get(at(c.src)),
        bitmaps.get(at(c.port)),
        bitmaps.get(at(c.dst)),
        bitmaps.get(at(c.pin)),
    ) else {
        return 1;
    };
    for w in 0..CHUNK_WORDS {
        let x = a[w] & b[w] & (d[w] | p[w]);
        if x != 0 {
            c.result = i * (CHUNK_WORDS as u32 * 64) + w as u32 * 64 + lowest_bit(x);
            return 1;
        }
    }
    0
}

/// LBVS: the first rule whose source, destination (address bitmap OR pin bitmap) and
/// protocol/port bitmaps all have its bit set.
#[inline(always)]
fn classify(set: u32, cfg: &SetConfig, src: u32, dst: u32, port_id: u32) -> Option<u32> {
    if port_id == 0 {
        return None;
    }
    let src_id = SRC.get(set_key(set, src)).copied().unwrap_or(0);
    if src_id == 0 {
        return None;
    }
    let dst_id = DST.get(set_key(set, dst)).copied().unwrap_or(0);
    // SAFETY: a plain u32 value; the hash map value outlives this read.
    let pin_id = unsafe { PINS.get(pin_key(set, dst)) }.copied().unwrap_or(0);
    if dst_id == 0 && pin_id == 0 {
        return None;
    }
    let mut c = ClassifyCtx {
        base: cfg.bitmap_base,
        chunks: cfg.chunks,
        src: src_id,
        port: port_id,
        dst: dst_id,
        pin: pin_id,
        result: NO_RULE,
    };
    let n = if cfg.chunks > MAX_CHUNKS {
        MAX_CHUNKS
    } else {
        cfg.chunks
    };
    // SAFETY: the callback and its context match bpf_loop's contract.
    unsafe {
        bpf_loop(
            n,
            classify_chunk as *mut c_void,
            &mut c as *mut ClassifyCtx as *mut c_void,
            0,
        )
    };
    (c.result != NO_RULE).then_some(c.result)
}

/// The policy decision for a flow's original tuple (no side effects). `external`: arrived on the
/// external interface (two-arm); re-classification passes false (a flow that once passed was
/// either DNAT'ed, which is checked first, or came from inside).
#[inline(always)]
fn decide(k: &CtKey, g: &Globals, set: u32, external: bool) -> Dec {
    let Some(cfg) = SETCFG.get(set) else {
        return Dec::new(Kind::Deny, STAGE_DEFAULT, NO_RULE, Counter::DefaultDeny, false);
    };
    let mut alert = false;
    if cfg.ti_mode != TI_OFF && TI.get(set_key(set, k.dst)).is_some() {
        if cfg.ti_mode == TI_DENY {
            return Dec::new(Kind::Deny, STAGE_THREAT_INTEL, NO_RULE, Counter::ThreatIntelDeny, false);
        }
        alert = true;
    }
    let tcp_udp = k.proto == IPPROTO_TCP || k.proto == IPPROTO_UDP;
    if tcp_udp {
        let nk = NatKey {
            addr: k.dst,
            port: k.dport,
            proto: k.proto,
            set: set as u8,
        };
        // SAFETY: read-only use of the value while this program runs (RCU-protected).
        if let Some(nv) = unsafe { NAT.get(&nk) } {
            let natsrc = &NATSRC;
            let s = k.src.to_ne_bytes();
            for i in 0..MAX_NAT_CANDIDATES {
                if i as u32 >= nv.count {
                    break;
                }
                let c = &nv.cands[i];
                let id = c.id.to_be_bytes();
                let data = [id[0], id[1], id[2], id[3], s[0], s[1], s[2], s[3]];
                if natsrc.get(Key::new(64, data)).is_some() {
                    let mut d = Dec::new(Kind::Dnat, STAGE_DNAT, c.rule_index, Counter::Dnat, alert);
                    d.xaddr = c.addr;
                    d.xport = c.port;
                    d.snat = true;
                    return d;
                }
            }
        }
    }
    // SAFETY: a plain u32 value.
    if unsafe { LOCAL.get(&k.dst) }.is_some() {
        if tcp_udp && k.dport == 53 {
            return Dec::new(Kind::PassDns, STAGE_DEFAULT, NO_RULE, Counter::PassDns, alert);
        }
        if tcp_udp && k.dport >= g.snat_port_lo && k.dport <= g.snat_port_hi {
            return Dec::new(Kind::Deny, STAGE_DEFAULT, NO_RULE, Counter::StaleNatPort, alert);
        }
        return Dec::new(Kind::PassLocal, STAGE_DEFAULT, NO_RULE, Counter::PassLocal, alert);
    }
    if external {
        return Dec::new(Kind::Deny, STAGE_DEFAULT, NO_RULE, Counter::ExternalNoDnat, alert);
    }
    let ports_base = set * PORTS_ENTRIES;
    let port_entry = match k.proto {
        IPPROTO_TCP => PORTS.get(ports_base + u32::from(k.dport)).copied().unwrap_or(0),
        IPPROTO_UDP => PORTS
            .get(ports_base + 65_536 + u32::from(k.dport))
            .copied()
            .unwrap_or(0),
        IPPROTO_ICMP => cfg.icmp_bitmap,
        _ => cfg.other_bitmap,
    };
    if let Some(bit) = classify(set, cfg, k.src, k.dst, port_entry & !APP_PORT_FLAG) {
        let Some(r) = RULES.get(set * MAX_NETWORK_RULES + bit) else {
            return Dec::new(Kind::Deny, STAGE_DEFAULT, NO_RULE, Counter::DefaultDeny, alert);
        };
        if r.action == ACTION_ALLOW {
            let mut d = Dec::new(Kind::Allow, STAGE_NETWORK, r.rule_index, Counter::NewAllowed, alert);
            d.snat = PRIVATE.get(set_key(set, k.dst)).is_none();
            return d;
        }
        return Dec::new(Kind::Deny, STAGE_NETWORK, r.rule_index, Counter::NewDenied, alert);
    }
    if k.proto == IPPROTO_TCP && port_entry & APP_PORT_FLAG != 0 {
        if g.flags & FLAG_APP_PROXY == 0 {
            return Dec::new(Kind::Deny, STAGE_APPLICATION, NO_RULE, Counter::AppNoProxy, alert);
        }
        return Dec::new(Kind::PassApp, STAGE_APPLICATION, NO_RULE, Counter::PassAppPort, alert);
    }
    Dec::new(Kind::Deny, STAGE_DEFAULT, NO_RULE, Counter::DefaultDeny, alert)
}

#[inline(always)]
fn mix(k: &CtKey) -> u32 {
    let mut h = k.src ^ k.dst.rotate_left(11) ^ (u32::from(k.sport) << 16 | u32::from(k.dport)) ^ u32::from(k.proto);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

#[repr(C)]
struct ProbeCtx {
    reply: CtKey,
    value: CtValue,
    lo: u32,
    range: u32,
    start: u32,
    found: u32,
}

/// One probe: `bpf_loop` callback.
extern "C" fn probe_port(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `ProbeCtx` on `allocate`'s stack, passed through `bpf_loop`.
    let c = unsafe { &mut *(ctx as *mut ProbeCtx) };
    let off = c.start.wrapping_add(index as u32).checked_rem(c.range).unwrap_or(0);
    c.reply.dport = (c.lo + off) as u16;
    if CT.insert(&c.reply, &c.value, u64::from(BPF_NOEXIST)).is_ok() {
        c.found = 1;
        return 1;
    }
    0
}

/// Allocates the translated source port: `preferred` first (DNAT keeps the client's port), then
/// up to `SNAT_PROBES` ports of the SNAT range from a hash of the tuple. A port is taken by
/// inserting the reply entry with `BPF_NOEXIST`, so two CPUs can never get the same one.
#[inline(always)]
fn allocate(g: &Globals, reply: &mut CtKey, value: &CtValue, preferred: u16, hash: u32) -> bool {
    if preferred != 0 {
        reply.dport = preferred;
        if CT.insert(&*reply, value, u64::from(BPF_NOEXIST)).is_ok() {
            return true;
        }
    }
    let lo = u32::from(g.snat_port_lo);
    let hi = u32::from(g.snat_port_hi);
    if hi < lo || lo == 0 {
        return false;
    }
    let range = hi - lo + 1;
    let mut c = ProbeCtx {
        reply: *reply,
        value: *value,
        lo,
        range,
        start: hash.checked_rem(range).unwrap_or(0),
        found: 0,
    };
    let n = if range < SNAT_PROBES { range } else { SNAT_PROBES };
    // SAFETY: the callback and its context match bpf_loop's contract.
    unsafe { bpf_loop(n, probe_port as *mut c_void, &mut c as *mut ProbeCtx as *mut c_void, 0) };
    reply.dport = c.reply.dport;
    c.found != 0
}

#[inline(always)]
fn new_flow(ctx: &XdpContext, pkt: &Pkt, key: &CtKey, g: &Globals, now: u64, generation: u32, d: &Dec) -> u32 {
    let alert = if d.alert {
        count(Counter::ThreatIntelAlert);
        EV_TI_ALERT
    } else {
        0
    };
    let bytes = u64::from(pkt.tot_len);
    // Only TCP/UDP: an ICMP error to the host must reach the slow path each time (`icmperr`).
    let host = |kind: u64| {
        if pkt.proto == IPPROTO_TCP || pkt.proto == IPPROTO_UDP {
            let _ = HOST.insert(key, &((u64::from(generation) << 2) | kind), 0);
        }
    };
    match d.kind {
        Kind::PassLocal => {
            count(Counter::PassLocal);
            host(HOST_LOCAL);
            return xdp_action::XDP_PASS;
        }
        Kind::PassDns => {
            count(Counter::PassLocal);
            count(Counter::PassDns);
            host(HOST_DNS);
            return xdp_action::XDP_PASS;
        }
        Kind::PassApp => {
            count(Counter::PassAppPort);
            host(HOST_APP);
            return xdp_action::XDP_PASS;
        }
        Kind::Deny => {
            count(d.reason);
            if d.reason != Counter::StaleNatPort {
                emit(key, VERDICT_DENY, d.stage, alert, d.rule_index, 0, 0, generation);
                rule_stat(d.rule_index, bytes, 1);
            }
            return xdp_action::XDP_DROP;
        }
        Kind::Allow | Kind::Dnat => {}
    }
    let dnat = d.kind == Kind::Dnat;
    count(if dnat { Counter::Dnat } else { Counter::NewAllowed });

    // Where the packet goes after translation, and which protocols can be tracked.
    let echo = pkt.proto == IPPROTO_ICMP && pkt.icmp_type == ICMP_ECHO_REQUEST;
    let ported = pkt.proto == IPPROTO_TCP || pkt.proto == IPPROTO_UDP || echo;
    let untracked_icmp = pkt.proto == IPPROTO_ICMP && !echo;
    let mut rw = Rewrite {
        src: key.src,
        dst: key.dst,
        sport: key.sport,
        dport: key.dport,
    };
    let mut snat = d.snat && (dnat || g.n_snat != 0);
    if dnat {
        rw.src = g.internal_addr;
        rw.dst = d.xaddr;
        rw.dport = d.xport;
    } else if snat {
        if !ported {
            count(Counter::SnatUnsupported);
            emit(key, VERDICT_DENY, d.stage, alert, d.rule_index, 0, 0, generation);
            return xdp_action::XDP_DROP;
        }
        let n = g.n_snat;
        let idx = mix(key).checked_rem(n).unwrap_or(0);
        let Some(addr) = g.snat.get(idx as usize) else {
            return xdp_action::XDP_DROP;
        };
        rw.src = *addr;
    } else {
        snat = false;
    }
    if untracked_icmp {
        // ICMP other than echo (errors, …) is forwarded as decided, without state. Rewriting it
        // for SNAT would need the embedded header too: refused above unless no SNAT is needed.
        rule_stat(d.rule_index, bytes, 1);
        emit(key, VERDICT_ALLOW, d.stage, alert, d.rule_index, 0, 0, generation);
        return fwd::forward(ctx);
    }

    let state = if pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        CT_STATE_SYN_SENT
    } else {
        CT_STATE_ESTABLISHED
    };
    let nat_flags = if dnat {
        CT_DNAT
    } else if snat {
        CT_SNAT
    } else {
        0
    };
    // The reply arrives from the translated destination to the translated source.
    let mut reply = CtKey {
        src: rw.dst,
        dst: rw.src,
        sport: rw.dport,
        dport: rw.sport,
        proto: key.proto,
        _pad: [0; 3],
    };
    let reply_value = CtValue {
        last_seen: now,
        peer: *key,
        new_src: key.dst,
        new_dst: key.src,
        new_sport: key.dport,
        new_dport: key.sport,
        generation,
        rule_index: d.rule_index,
        flags: CT_REPLY | nat_flags,
        state,
        stage: d.stage,
        _pad: 0,
    };
    if dnat || snat {
        // ICMP echo: the id travels in `sport` of the request and `dport` of the reply.
        let preferred = if dnat { key.sport } else { 0 };
        if !allocate(g, &mut reply, &reply_value, preferred, mix(key)) {
            count(Counter::SnatExhausted);
            emit(
                key,
                VERDICT_DENY,
                d.stage,
                alert | EV_SNAT_EXHAUSTED,
                d.rule_index,
                0,
                0,
                generation,
            );
            return xdp_action::XDP_DROP;
        }
        rw.sport = reply.dport;
    } else if CT.insert(&reply, &reply_value, u64::from(BPF_ANY)).is_err() {
        count(Counter::CtInsertFailed);
        return xdp_action::XDP_DROP;
    }
    let forward_value = CtValue {
        last_seen: now,
        peer: reply,
        new_src: rw.src,
        new_dst: rw.dst,
        new_sport: rw.sport,
        new_dport: rw.dport,
        generation,
        rule_index: d.rule_index,
        flags: nat_flags,
        state,
        stage: d.stage,
        _pad: 0,
    };
    if CT.insert(key, &forward_value, u64::from(BPF_ANY)).is_err() {
        let _ = CT.remove(&reply);
        count(Counter::CtInsertFailed);
        return xdp_action::XDP_DROP;
    }
    rule_stat(d.rule_index, bytes, 1);
    let (verdict, nat_addr, nat_port, ev_snat) = if dnat {
        (VERDICT_DNAT, d.xaddr, d.xport, EV_SNAT)
    } else if snat {
        (VERDICT_ALLOW, rw.src, rw.sport, EV_SNAT)
    } else {
        (VERDICT_ALLOW, 0, 0, 0)
    };
    emit(
        key,
        verdict,
        d.stage,
        alert | ev_snat,
        d.rule_index,
        nat_addr,
        nat_port,
        generation,
    );
    if rewrite(ctx, pkt, &rw).is_err() {
        return xdp_action::XDP_DROP;
    }
    fwd::forward(ctx)
}

#[inline(always)]
fn rule_stat(rule_index: u32, bytes: u64, hits: u64) {
    if rule_index == NO_RULE {
        return;
    }
    if let Some(s) = RULE_STATS.get_ptr_mut(rule_index) {
        // SAFETY: this CPU's slot; an XDP program is not preempted on its CPU.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).hits += hits;
        }
    }
}

/// Writes a flow event; a full ring buffer never blocks the packet: the loss is counted.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(k: &CtKey, verdict: u8, stage: u8, flags: u8, rule_index: u32, nat_addr: u32, nat_port: u16, generation: u32) {
    match EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            entry.write(FlowEvent {
                src: k.src,
                dst: k.dst,
                sport: k.sport,
                dport: k.dport,
                proto: k.proto,
                verdict,
                stage,
                flags,
                rule_index,
                nat_addr,
                nat_port,
                _pad: 0,
                generation,
            });
            entry.submit(0);
        }
        None => count(Counter::EventsLost),
    }
}

// ICMP echo replies are matched through conntrack only (their key has `dport` = id).
const _: u8 = ICMP_ECHO_REPLY;
const _: u8 = IPPROTO_UDP;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Host builds only (see the crate documentation): the programs run as BPF, never here.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

// The kernel only lets GPL-compatible programs call GPL-only helpers; "Dual MIT/GPL" is one of the
// license strings it recognises (aya-template's choice).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
