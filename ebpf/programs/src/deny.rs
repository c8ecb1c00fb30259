//! IPv4 destination deny list (`DENY_V4`): longest-prefix match on the destination address.

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use portcullis_common::{DENY_V4_MAX_ENTRIES, Ipv4Key, RuleId};

// aya-ebpf adds the BPF_F_NO_PREALLOC flag the kernel requires for LPM tries.
#[map]
static DENY_V4: LpmTrie<Ipv4Key, RuleId> = LpmTrie::with_max_entries(DENY_V4_MAX_ENTRIES, 0);

/// The rule id of the longest deny prefix containing `daddr` (network byte order), if any.
#[inline(always)]
pub fn lookup(daddr: Ipv4Key) -> Option<RuleId> {
    DENY_V4.get(Key::new(32, daddr)).copied()
}
