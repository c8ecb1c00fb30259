//! Per-CPU class counters (`COUNTERS`, indexed by [`Counter`]). Userspace sums the per-CPU slots.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use portcullis_common::Counter;

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Adds one to `counter` on the current CPU. Per-CPU slots need no atomics: an XDP program is not
/// preempted on its CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: the kernel returned a valid pointer to this CPU's `u64` slot of the array element.
        unsafe { *slot += 1 };
    }
}
