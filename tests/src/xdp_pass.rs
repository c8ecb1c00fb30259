//! A two-instruction XDP program (`return XDP_PASS`) attached through a bpf_link, for veth peers.
//!
//! Why: when the appliance's XDP program returns XDP_TX on a veth, the kernel queues the frame on the peer's
//! XDP ring but only kicks the peer's NAPI if the *peer* has an XDP program (`veth_xdp_flush` checks the peer's
//! `xdp_prog`; GRO alone is enough for XDP_REDIRECT, whose `ndo_xdp_xmit` flushes unconditionally). Without it
//! hairpinned frames (one-arm, and east-west on the internal interface) sit in the ring and never arrive.
//!
//! Loaded with the raw `bpf(2)` syscall so the harness needs neither an ELF object nor a BPF toolchain.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// `bpf(2)` commands and constants (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_PASS: i32 = 2;

/// `r0 = XDP_PASS; exit`.
fn program() -> [u64; 2] {
    let mov_r0_imm = 0xb7u64 | ((XDP_PASS as u32 as u64) << 32);
    let exit = 0x95u64;
    [mov_r0_imm, exit]
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-initialised buffer at least as large as every `union bpf_attr` member the two
    // commands read, passed with its size; the kernel only reads it (and the pointers in it, which point to
    // live buffers of the caller) and returns a new file descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a non-negative return of these commands is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn put_u32(attr: &mut [u8; 128], offset: usize, v: u32) {
    attr[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; 128], offset: usize, v: u64) {
    attr[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Loads the program and attaches it to interface `ifindex` of the calling thread's network namespace. The
/// attachment lasts as long as the returned link descriptor is open.
pub fn attach(ifindex: u32) -> io::Result<OwnedFd> {
    let insns = program();
    let license = c"GPL";
    let mut attr = [0u8; 128];
    // struct { u32 prog_type; u32 insn_cnt; u64 insns; u64 license; … }
    put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    let prog = bpf(BPF_PROG_LOAD, &mut attr)?;
    let mut attr = [0u8; 128];
    // struct { u32 prog_fd; u32 target_ifindex; u32 attach_type; u32 flags; … }
    use std::os::fd::AsRawFd;
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 4, ifindex);
    put_u32(&mut attr, 8, BPF_XDP);
    bpf(BPF_LINK_CREATE, &mut attr)
}
