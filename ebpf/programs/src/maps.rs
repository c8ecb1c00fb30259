//! Maps of the policy data plane (layout in `portcullis-common`). Per-policy maps hold both
//! table sets; keys carry the set the packet's snapshot of `ACTIVE` names.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use portcullis_common::*;

/// `[SLOW_PATH]` = `xdp_new_flow` (userspace inserts it).
#[map]
pub static JUMP: ProgramArray = ProgramArray::with_max_entries(JUMP_ENTRIES, 0);
#[map]
pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);
#[map]
pub static GLOBALS: Array<Globals> = Array::with_max_entries(1, 0);
#[map]
pub static LOCAL: HashMap<u32, u32> = HashMap::with_max_entries(LOCAL_MAX_ENTRIES, 0);
// Userspace sets max_entries (settings) and the pin path (`ct_v1` under the pin directory).
#[map]
pub static CT: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(CT_DEFAULT_MAX_ENTRIES, 0);
#[map]
pub static RULE_STATS: PerCpuArray<RuleStat> = PerCpuArray::with_max_entries(MAX_RULE_INDEX, 0);
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map]
pub static NEIGH: LruHashMap<u32, u64> = LruHashMap::with_max_entries(NEIGH_MAX_ENTRIES, 0);
#[map]
pub static HOST: LruHashMap<CtKey, u64> = LruHashMap::with_max_entries(HOST_MAX_ENTRIES, 0);

#[map]
pub static SETCFG: Array<SetConfig> = Array::with_max_entries(2, 0);

#[map]
pub static SRC: LpmTrie<[u8; 8], u32> = LpmTrie::with_max_entries(2 * SRC_MAX_ENTRIES, 0);
#[map]
pub static DST: LpmTrie<[u8; 8], u32> = LpmTrie::with_max_entries(2 * DST_MAX_ENTRIES, 0);
#[map]
pub static PORTS: Array<u32> = Array::with_max_entries(2 * PORTS_ENTRIES, 0);
// Userspace sets max_entries to 2 × `bitmap_chunks`.
#[map]
pub static BITMAPS: Array<Chunk> = Array::with_max_entries(2 * BITMAP_CHUNKS_DEFAULT, 0);
#[map]
pub static RULES: Array<RuleInfo> = Array::with_max_entries(2 * MAX_NETWORK_RULES, 0);
#[map]
pub static PINS: HashMap<u64, u32> = HashMap::with_max_entries(2 * PINS_MAX_ENTRIES, 0);
#[map]
pub static NAT: HashMap<NatKey, NatValue> = HashMap::with_max_entries(2 * NAT_MAX_ENTRIES, 0);
#[map]
pub static NATSRC: LpmTrie<[u8; 8], u32> = LpmTrie::with_max_entries(2 * NAT_SRC_MAX_ENTRIES, 0);
#[map]
pub static TI: LpmTrie<[u8; 8], u32> = LpmTrie::with_max_entries(2 * TI_MAX_ENTRIES, 0);
#[map]
pub static PRIVATE: LpmTrie<[u8; 8], u32> = LpmTrie::with_max_entries(2 * PRIVATE_MAX_ENTRIES, 0);

/// The LPM key of `addr` in `set`: the set (big-endian u32) then the address; full length.
#[inline(always)]
pub fn set_key(set: u32, addr: u32) -> aya_ebpf::maps::lpm_trie::Key<[u8; 8]> {
    let s = set.to_be_bytes();
    let a = addr.to_ne_bytes();
    aya_ebpf::maps::lpm_trie::Key::new(64, [s[0], s[1], s[2], s[3], a[0], a[1], a[2], a[3]])
}
