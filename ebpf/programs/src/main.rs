//! portcullis eBPF programs (one object, `portcullis`, embedded by the appliance).
//!
//! `xdp_ingress`: classifies each frame (Ethernet → IPv4 → TCP/UDP/ICMP, with strict bounds and
//! length checks), counts it into `COUNTERS`, drops malformed IPv4 and IPv4 whose destination
//! matches `DENY_V4`, and passes everything else (IPv6 is counted and passed for now).
//!
//! Only the `bpfel-unknown-none` build (appliance/build.rs, via aya-build, with feature `bpf`)
//! produces the object. On the host the same code compiles into a stub binary, so that
//! `cargo clippy -p portcullis-ebpf --features bpf` lints it with the host toolchain.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod counters;
mod deny;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use portcullis_common::Counter;

use crate::{counters::count, parse::Parsed};

#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    match parse::parse(ctx.data(), ctx.data_end()) {
        Parsed::Ipv4 { class, daddr } => {
            count(class);
            if deny::lookup(daddr).is_some() {
                count(Counter::DenyV4);
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            }
        }
        Parsed::Pass(class) => {
            count(class);
            xdp_action::XDP_PASS
        }
        Parsed::Drop(class) => {
            count(class);
            xdp_action::XDP_DROP
        }
    }
}

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
