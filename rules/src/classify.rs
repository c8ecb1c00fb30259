//! The tables the eBPF data plane loads for the DNAT and network stages, compiled once per policy
//! generation, plus a Rust lookup over the same tables (used by [`Policy::decide_fast`] and the tests).
//!
//! # Network rules: Linear Bit Vector Search (bpf-iptables, Miano et al. 2019)
//!
//! The network stage's rules are numbered `0..N` in evaluation order, Allow and Deny interleaved as the
//! order dictates ([`NetworkTables::rules`] maps a number back to [`Policy::rules`] and its action). A rule
//! with [`Rule::skipped`](crate::policy::Rule::skipped) gets no number at all, so it can never be set.
//! Each dimension maps one packet field to a bitmap of the rules that match on that field:
//!
//! | dimension | key | table |
//! |---|---|---|
//! | source | IPv4 source | [`NetworkTables::src_prefixes`]: disjoint CIDR prefixes → bitmap id (LPM trie) |
//! | destination | IPv4 destination | [`NetworkTables::dst_prefixes`], ORed with the pin bitmap of the address |
//! | protocol + port | (IP protocol, destination port) | [`NetworkTables::port_intervals`] for TCP/UDP, one id for ICMP, one for every other protocol |
//!
//! The data plane ANDs the three bitmaps word by word; the lowest set bit is the deciding rule; no bit set
//! means no network rule matched. Identical bitmaps are stored once ([`NetworkTables::bitmap`], by `u32`
//! id, for an array map of `words() * 8`-byte values). Bit `i` is bit `i % 64` of word `i / 64`.
//!
//! **Misses are zero.** Bitmap id 0 is always the all-zero bitmap. Address intervals that no rule covers
//! are *not* emitted as prefixes: an LPM miss means "id 0" (no rule matches on that field). The prefixes of
//! one dimension are pairwise disjoint; together with the misses they cover 0.0.0.0/0. Port tables cover
//! 0–65535 completely (id 0 where no rule matches).
//!
//! **FQDN network rules** (`destinationFqdns`) add destination bits through [`NetworkTables::names`]:
//! name → bitmap of the rules that list the name. The DNS proxy writes, per resolved address, the OR of
//! the bitmaps of the names that resolved to it ([`NetworkTables::pin_bitmap_for`]); the data plane ORs that
//! pin bitmap into the destination bitmap. The Rust lookup gets the same answer from a [`Resolutions`].
//!
//! # DNAT rules
//!
//! [`NatTable`]: exact match on (protocol, destination address, destination port) → the NAT rules listing
//! that key, in evaluation order; the first whose sources contain the client (and whose `translatedFqdn`,
//! if any, resolves) decides. DNAT is evaluated before network rules.

use crate::addr::{AddrSet, Ipv4Range};
use crate::appindex::AppIndex;
use crate::decode::{Action, AppProtocol, NatTarget};
use crate::eval::{Decision, Env, Flow, NoTrace, Resolutions, Stages, Tracer, Translation};
use crate::fqdn::Name;
use crate::policy::{Policy, RuleKind};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Bitmap id of the all-zero bitmap (and the value of every lookup miss).
pub const ZERO: u32 = 0;

/// A set of network-rule numbers: bit `i` of word `i / 64` (little-endian bit order) is rule `i`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Bitmap {
    words: Vec<u64>,
}

impl Bitmap {
    pub fn zeros(words: usize) -> Self {
        Self { words: vec![0; words] }
    }

    pub fn from_words(words: Vec<u64>) -> Self {
        Self { words }
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    pub fn into_words(self) -> Vec<u64> {
        self.words
    }

    pub fn set(&mut self, bit: usize) {
        self.words[bit / 64] |= 1 << (bit % 64);
    }

    pub fn contains(&self, bit: usize) -> bool {
        self.words.get(bit / 64).is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }

    pub fn or_assign(&mut self, other: &[u64]) {
        for (a, b) in self.words.iter_mut().zip(other) {
            *a |= b;
        }
    }

    pub fn is_zero(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The lowest set bit: the deciding rule.
    pub fn first_set(&self) -> Option<usize> {
        first_common(&[&self.words])
    }

    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words
            .iter()
            .enumerate()
            .flat_map(|(wi, &w)| (0..64).filter(move |b| w & (1 << b) != 0).map(move |b| wi * 64 + b))
    }
}

/// The lowest bit set in every one of `maps` (all of the same length): what the data plane computes.
pub fn first_common(maps: &[&[u64]]) -> Option<usize> {
    let (first, rest) = maps.split_first()?;
    for (wi, &w) in first.iter().enumerate() {
        let x = rest.iter().fold(w, |acc, m| acc & m[wi]);
        if x != 0 {
            return Some(wi * 64 + x.trailing_zeros() as usize);
        }
    }
    None
}

/// What the data plane needs per network-rule number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetRule {
    /// Index into [`Policy::rules`].
    pub rule_index: usize,
    /// Allow or Deny (whether an allowed flow SNATs depends on the destination: [`Policy::network_snat`]).
    pub action: Action,
}

/// An elementary address interval: `start` up to the next interval's start − 1 (or 255.255.255.255).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrInterval {
    pub start: u32,
    pub bitmap: u32,
}

/// One LPM-trie entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Prefix {
    /// Network address, host order, host bits zero.
    pub addr: u32,
    pub len: u8,
    pub bitmap: u32,
}

impl Prefix {
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    pub fn range(&self) -> Ipv4Range {
        Ipv4Range::prefix(self.addr, self.len)
    }
}

/// An elementary destination-port interval (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortInterval {
    pub lo: u16,
    pub hi: u16,
    pub bitmap: u32,
}

/// Sizes of the compiled network tables (what the data plane will hold).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub rules: usize,
    pub words: usize,
    pub unique_bitmaps: usize,
    pub src_intervals: usize,
    pub dst_intervals: usize,
    pub src_prefixes: usize,
    pub dst_prefixes: usize,
    pub tcp_intervals: usize,
    pub udp_intervals: usize,
    pub names: usize,
    /// Unique bitmaps × words × 8.
    pub bitmap_bytes: usize,
    /// LPM entries (8-byte key: prefix length + address; 4-byte value: bitmap id) of both address dimensions.
    pub lpm_bytes: usize,
    /// Two 65,536-entry arrays of `u32` ids (TCP, UDP) — the O(1) form of the port dimension.
    pub port_array_bytes: usize,
    pub total_bytes: usize,
}

/// Deduplicates bitmaps; id 0 is the all-zero bitmap.
struct Interner {
    words: usize,
    ids: HashMap<Vec<u64>, u32>,
    flat: Vec<u64>,
}

impl Interner {
    fn new(words: usize) -> Self {
        let mut s = Self {
            words,
            ids: HashMap::new(),
            flat: Vec::new(),
        };
        let zero = s.intern(&vec![0; words]);
        debug_assert_eq!(zero, ZERO);
        s
    }

    fn intern(&mut self, bits: &[u64]) -> u32 {
        debug_assert_eq!(bits.len(), self.words);
        if let Some(&id) = self.ids.get(bits) {
            return id;
        }
        let id = u32::try_from(self.ids.len()).expect("fewer than 2^32 unique bitmaps");
        self.ids.insert(bits.to_vec(), id);
        self.flat.extend_from_slice(bits);
        id
    }
}

/// A boundary of a sweep: at `point`, rule `bit` starts (`add`) or stops matching.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    point: u64,
    add: bool,
    bit: u32,
}

/// Sweep-line over sorted interval boundaries: the elementary intervals of `[0, end)` with the bitmap
/// of the rules covering each, adjacent equal intervals merged. Returns (start, bitmap id), starting at 0.
fn sweep(mut events: Vec<Event>, end: u64, interner: &mut Interner) -> Vec<(u64, u32)> {
    // Removals sort before additions at one point, so a rule leaving and re-entering there stays set.
    events.sort_unstable();
    let mut cur = vec![0u64; interner.words];
    let mut out: Vec<(u64, u32)> = Vec::new();
    let mut push = |start: u64, cur: &[u64], out: &mut Vec<(u64, u32)>| {
        let id = interner.intern(cur);
        if out.last().is_none_or(|&(_, last)| last != id) {
            out.push((start, id));
        }
    };
    let mut start = 0u64;
    let mut i = 0;
    while i < events.len() {
        let p = events[i].point;
        if p >= end {
            break;
        }
        if p > start {
            push(start, &cur, &mut out);
        }
        while i < events.len() && events[i].point == p {
            let e = events[i];
            let (w, b) = (e.bit as usize / 64, e.bit % 64);
            if e.add {
                cur[w] |= 1 << b;
            } else {
                cur[w] &= !(1 << b);
            }
            i += 1;
        }
        start = p;
    }
    push(start, &cur, &mut out);
    out
}

fn addr_events(sets: &[(u32, &AddrSet)]) -> Vec<Event> {
    let mut ev = Vec::new();
    for &(bit, set) in sets {
        for r in set.ranges() {
            ev.push(Event {
                point: u64::from(r.start),
                add: true,
                bit,
            });
            ev.push(Event {
                point: u64::from(r.end) + 1,
                add: false,
                bit,
            });
        }
    }
    ev
}

fn lookup_interval(v: &[AddrInterval], ip: u32) -> u32 {
    // v[0].start == 0, so the partition point is at least 1.
    v[v.partition_point(|iv| iv.start <= ip) - 1].bitmap
}

fn prefixes_of(v: &[AddrInterval]) -> Vec<Prefix> {
    let mut out = Vec::new();
    for (i, iv) in v.iter().enumerate() {
        if iv.bitmap == ZERO {
            continue;
        }
        let end = v.get(i + 1).map_or(u32::MAX, |n| n.start - 1);
        for (addr, len) in (Ipv4Range { start: iv.start, end }).to_prefixes() {
            out.push(Prefix {
                addr,
                len,
                bitmap: iv.bitmap,
            });
        }
    }
    out
}

/// The compiled network stage (see the module documentation).
#[derive(Clone, Debug)]
pub struct NetworkTables {
    words: usize,
    rules: Vec<NetRule>,
    /// Unique bitmaps, `words` words each, id = position.
    bitmaps: Vec<u64>,
    src: Vec<AddrInterval>,
    dst: Vec<AddrInterval>,
    src_prefixes: Vec<Prefix>,
    dst_prefixes: Vec<Prefix>,
    tcp: Vec<PortInterval>,
    udp: Vec<PortInterval>,
    icmp: u32,
    other: u32,
    any_destination: u32,
    /// Sorted by name.
    names: Vec<(Name, u32)>,
    /// Per rule number: positions in `names` of the rule's destination FQDNs.
    rule_names: Vec<Vec<u32>>,
    /// Rules with at least one destination FQDN.
    fqdn_rules: u32,
}

impl NetworkTables {
    pub fn build(policy: &Policy) -> Self {
        let mut rules = Vec::new();
        let mut nets = Vec::new();
        for i in policy.network_rules.clone() {
            let r = &policy.rules[i];
            let RuleKind::Network(n) = &r.kind else {
                continue;
            };
            if r.skipped.is_some() {
                continue;
            }
            rules.push(NetRule {
                rule_index: i,
                action: policy.collection_of(r).action,
            });
            nets.push(n);
        }
        let n_rules = u32::try_from(rules.len()).expect("fewer than 2^32 network rules");
        // At least one word: an array map cannot have zero-sized values.
        let words = rules.len().div_ceil(64).max(1);
        let mut interner = Interner::new(words);
        let bits = 0..n_rules;

        let to_addr = |v: Vec<(u64, u32)>| -> Vec<AddrInterval> {
            v.into_iter()
                .map(|(start, bitmap)| AddrInterval {
                    start: start as u32,
                    bitmap,
                })
                .collect()
        };
        let srcs: Vec<(u32, &AddrSet)> = bits.clone().zip(nets.iter().map(|n| &n.sources)).collect();
        let src = to_addr(sweep(addr_events(&srcs), 1 << 32, &mut interner));
        let dsts: Vec<(u32, &AddrSet)> = bits.clone().zip(nets.iter().map(|n| &n.destinations)).collect();
        let dst = to_addr(sweep(addr_events(&dsts), 1 << 32, &mut interner));

        let ports = |proto: u8, interner: &mut Interner| -> Vec<PortInterval> {
            let mut ev = Vec::new();
            for (bit, n) in bits.clone().zip(&nets) {
                if !n.protocols.matches_number(proto) {
                    continue;
                }
                for r in n.ports.ranges() {
                    ev.push(Event {
                        point: u64::from(r.lo),
                        add: true,
                        bit,
                    });
                    ev.push(Event {
                        point: u64::from(r.hi) + 1,
                        add: false,
                        bit,
                    });
                }
            }
            let v = sweep(ev, 1 << 16, interner);
            (0..v.len())
                .map(|i| PortInterval {
                    lo: v[i].0 as u16,
                    hi: v.get(i + 1).map_or(u16::MAX, |n| (n.0 - 1) as u16),
                    bitmap: v[i].1,
                })
                .collect()
        };
        let tcp = ports(PROTO_TCP, &mut interner);
        let udp = ports(PROTO_UDP, &mut interner);

        let single = |pred: &dyn Fn(usize) -> bool, interner: &mut Interner| -> u32 {
            let mut b = Bitmap::zeros(words);
            for i in (0..rules.len()).filter(|&i| pred(i)) {
                b.set(i);
            }
            interner.intern(b.words())
        };
        // Ports don't apply to ICMP; a protocol other than TCP/UDP/ICMP matches only `Any` with ports `*`.
        let icmp = single(&|i| nets[i].protocols.matches_number(PROTO_ICMP), &mut interner);
        let other = single(&|i| nets[i].protocols.all, &mut interner);
        let any_destination = single(&|i| nets[i].destinations.is_any(), &mut interner);
        let fqdn_rules = single(&|i| !nets[i].fqdns.is_empty(), &mut interner);

        let mut by_name: BTreeMap<&Name, Bitmap> = BTreeMap::new();
        for (i, n) in nets.iter().enumerate() {
            for f in &n.fqdns {
                by_name.entry(f).or_insert_with(|| Bitmap::zeros(words)).set(i);
            }
        }
        let names: Vec<(Name, u32)> = by_name
            .into_iter()
            .map(|(n, b)| (n.clone(), interner.intern(b.words())))
            .collect();
        let rule_names = nets
            .iter()
            .map(|n| {
                let mut v: Vec<u32> = n
                    .fqdns
                    .iter()
                    .filter_map(|f| names.binary_search_by(|(m, _)| m.cmp(f)).ok())
                    .map(|i| i as u32)
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();

        let src_prefixes = prefixes_of(&src);
        let dst_prefixes = prefixes_of(&dst);
        Self {
            words,
            rules,
            bitmaps: interner.flat,
            src,
            dst,
            src_prefixes,
            dst_prefixes,
            tcp,
            udp,
            icmp,
            other,
            any_destination,
            names,
            rule_names,
            fqdn_rules,
        }
    }

    /// Words (`u64`) per bitmap.
    pub fn words(&self) -> usize {
        self.words
    }

    /// Per rule number: the rule in [`Policy::rules`] and its action.
    pub fn rules(&self) -> &[NetRule] {
        &self.rules
    }

    pub fn bitmap_count(&self) -> usize {
        self.bitmaps.len() / self.words
    }

    /// The unique bitmap with this id (`0..bitmap_count()`).
    pub fn bitmap(&self, id: u32) -> &[u64] {
        let at = id as usize * self.words;
        &self.bitmaps[at..at + self.words]
    }

    /// All unique bitmaps back to back (`bitmap_count() * words()` words): the array map's contents.
    pub fn bitmaps_flat(&self) -> &[u64] {
        &self.bitmaps
    }

    /// Elementary source intervals (first starts at 0.0.0.0), including those with bitmap 0.
    pub fn src_intervals(&self) -> &[AddrInterval] {
        &self.src
    }

    pub fn dst_intervals(&self) -> &[AddrInterval] {
        &self.dst
    }

    /// Disjoint prefixes of the source intervals with a non-zero bitmap, sorted by address.
    pub fn src_prefixes(&self) -> &[Prefix] {
        &self.src_prefixes
    }

    /// Disjoint prefixes of the destination intervals with a non-zero bitmap, sorted by address.
    pub fn dst_prefixes(&self) -> &[Prefix] {
        &self.dst_prefixes
    }

    /// TCP (6) or UDP (17) port intervals covering 0–65535; `None` for other protocols.
    pub fn port_intervals(&self, proto: u8) -> Option<&[PortInterval]> {
        match proto {
            PROTO_TCP => Some(&self.tcp),
            PROTO_UDP => Some(&self.udp),
            _ => None,
        }
    }

    /// The port dimension of TCP or UDP as a 65,536-entry array of bitmap ids (for a BPF array map).
    pub fn port_array(&self, proto: u8) -> Vec<u32> {
        let mut out = vec![ZERO; 1 << 16];
        for iv in self.port_intervals(proto).unwrap_or_default() {
            out[iv.lo as usize..=iv.hi as usize].fill(iv.bitmap);
        }
        out
    }

    /// The bitmap id for ICMP (rules with ICMP or `Any` with ports `*`).
    pub fn icmp_bitmap(&self) -> u32 {
        self.icmp
    }

    /// The bitmap id for every protocol but TCP, UDP and ICMP (rules with `Any` and ports `*`).
    pub fn other_protocol_bitmap(&self) -> u32 {
        self.other
    }

    /// Rules whose destination is every address (used when the destination address is unknown).
    pub fn any_destination_bitmap(&self) -> u32 {
        self.any_destination
    }

    /// Destination FQDNs of network rules → bitmap id of the rules listing them, sorted by name.
    pub fn names(&self) -> &[(Name, u32)] {
        &self.names
    }

    pub fn name_bitmap(&self, name: &Name) -> Option<u32> {
        self.names
            .binary_search_by(|(n, _)| n.cmp(name))
            .ok()
            .map(|i| self.names[i].1)
    }

    /// What the DNS proxy writes for an address that `names` resolved to: the OR of their bitmaps.
    /// Names no network rule lists add nothing.
    pub fn pin_bitmap_for(&self, names: &[Name]) -> Bitmap {
        let mut b = Bitmap::zeros(self.words);
        for n in names {
            if let Some(id) = self.name_bitmap(n) {
                b.or_assign(self.bitmap(id));
            }
        }
        b
    }

    pub fn src_bitmap_id(&self, src: Ipv4Addr) -> u32 {
        lookup_interval(&self.src, src.into())
    }

    /// The destination bitmap from addresses only (pins not included).
    pub fn dst_bitmap_id(&self, dst: Ipv4Addr) -> u32 {
        lookup_interval(&self.dst, dst.into())
    }

    pub fn port_bitmap_id(&self, proto: u8, port: u16) -> u32 {
        match self.port_intervals(proto) {
            Some(v) => v[v.partition_point(|iv| iv.lo <= port) - 1].bitmap,
            None if proto == PROTO_ICMP => self.icmp,
            None => self.other,
        }
    }

    /// The deciding network rule (index into [`Policy::rules`]) for a packet, as the data plane decides
    /// it: a destination listed by name matches when the name resolves to `dst`.
    pub fn lookup(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16, res: &dyn Resolutions) -> Option<usize> {
        self.lookup_flow(src, Some(dst), None, proto, port, res)
    }

    /// [`lookup`](Self::lookup) for what [`Flow`] can describe: the destination address may be unknown
    /// (only `*` destinations match then) and a destination name matches FQDN rules listing it, as in
    /// `eval`.
    pub fn lookup_flow(
        &self,
        src: Ipv4Addr,
        dst: Option<Ipv4Addr>,
        name: Option<&Name>,
        proto: u8,
        port: u16,
        res: &dyn Resolutions,
    ) -> Option<usize> {
        self.classify(src, dst, name, proto, port, res)
            .map(|bit| self.rules[bit].rule_index)
    }

    /// Like [`lookup_flow`](Self::lookup_flow) but returns the rule number (bit), for per-rule counters.
    pub fn classify(
        &self,
        src: Ipv4Addr,
        dst: Option<Ipv4Addr>,
        name: Option<&Name>,
        proto: u8,
        port: u16,
        res: &dyn Resolutions,
    ) -> Option<usize> {
        let s = self.bitmap(self.src_bitmap_id(src));
        let p = self.bitmap(self.port_bitmap_id(proto, port));
        let d = self.bitmap(match dst {
            Some(ip) => self.dst_bitmap_id(ip),
            None => self.any_destination,
        });
        let best = first_common(&[s, p, d]);
        if self.names.is_empty() {
            return best;
        }
        // Only an FQDN rule before the address-decided one can change the answer: walk those in order
        // (the data plane gets the same from the pin bitmap in one OR), asking each name at most once.
        let limit = best.unwrap_or(self.rules.len());
        if limit == 0 {
            return best;
        }
        let f = self.bitmap(self.fqdn_rules);
        let mut memo: Vec<Option<bool>> = Vec::new();
        for wi in 0..=(limit - 1) / 64 {
            let mut x = s[wi] & p[wi] & f[wi];
            while x != 0 {
                let bit = wi * 64 + x.trailing_zeros() as usize;
                if bit >= limit {
                    return best;
                }
                x &= x - 1;
                for &ni in &self.rule_names[bit] {
                    if memo.is_empty() {
                        memo = vec![None; self.names.len()];
                    }
                    let hit = *memo[ni as usize].get_or_insert_with(|| {
                        let n = &self.names[ni as usize].0;
                        name == Some(n) || dst.is_some_and(|ip| res.addresses(n).contains(&ip))
                    });
                    if hit {
                        return Some(bit);
                    }
                }
            }
        }
        best
    }

    /// [`lookup`](Self::lookup) with the destination's pin bitmap given directly, as the data plane has
    /// it (the DNS proxy's address → [`pin_bitmap_for`](Self::pin_bitmap_for) map); `None` = no pin.
    pub fn lookup_pinned(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        port: u16,
        pin: Option<&[u64]>,
    ) -> Option<usize> {
        let s = self.bitmap(self.src_bitmap_id(src));
        let p = self.bitmap(self.port_bitmap_id(proto, port));
        let d = self.bitmap(self.dst_bitmap_id(dst));
        let bit = match pin {
            None => first_common(&[s, p, d]),
            Some(pin) => (0..self.words).find_map(|wi| {
                let x = s[wi] & p[wi] & (d[wi] | pin.get(wi).copied().unwrap_or(0));
                (x != 0).then(|| wi * 64 + x.trailing_zeros() as usize)
            }),
        };
        bit.map(|b| self.rules[b].rule_index)
    }

    pub fn stats(&self) -> TableStats {
        let unique = self.bitmap_count();
        let bitmap_bytes = unique * self.words * 8;
        let lpm_bytes = (self.src_prefixes.len() + self.dst_prefixes.len()) * (8 + 4);
        let port_array_bytes = 2 * (1 << 16) * 4;
        TableStats {
            rules: self.rules.len(),
            words: self.words,
            unique_bitmaps: unique,
            src_intervals: self.src.len(),
            dst_intervals: self.dst.len(),
            src_prefixes: self.src_prefixes.len(),
            dst_prefixes: self.dst_prefixes.len(),
            tcp_intervals: self.tcp.len(),
            udp_intervals: self.udp.len(),
            names: self.names.len(),
            bitmap_bytes,
            lpm_bytes,
            port_array_bytes,
            total_bytes: bitmap_bytes + lpm_bytes + port_array_bytes,
        }
    }
}

/// Exact-match key of the DNAT table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NatKey {
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// The appliance address the rule listens on.
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// One NAT rule as the DNAT stage needs it.
#[derive(Clone, Debug)]
pub struct NatCandidate {
    /// Index into [`Policy::rules`].
    pub rule_index: usize,
    pub sources: AddrSet,
    pub translated: NatTarget,
    pub translated_port: u16,
}

impl NatCandidate {
    /// The translated destination; `None` when a `translatedFqdn` does not resolve (the rule then does
    /// not match, §2.1). Azure uses the first address.
    pub fn translation(&self, res: &dyn Resolutions) -> Option<Translation> {
        let address = match &self.translated {
            NatTarget::Address(a) => *a,
            NatTarget::Fqdn(name) => *res.addresses(name).first()?,
        };
        Some(Translation {
            address,
            port: self.translated_port,
        })
    }
}

/// The compiled DNAT stage: (protocol, destination, port) → candidate rules in evaluation order.
#[derive(Clone, Debug, Default)]
pub struct NatTable {
    /// One per (non-skipped) NAT rule, in evaluation order.
    candidates: Vec<NatCandidate>,
    /// Positions into `candidates`, ascending.
    entries: BTreeMap<NatKey, Vec<u32>>,
}

impl NatTable {
    pub fn build(policy: &Policy) -> Self {
        let mut t = Self::default();
        for i in policy.nat_rules.clone() {
            let r = &policy.rules[i];
            let RuleKind::Nat(n) = &r.kind else { continue };
            if r.skipped.is_some() {
                continue;
            }
            let pos = u32::try_from(t.candidates.len()).expect("fewer than 2^32 NAT rules");
            t.candidates.push(NatCandidate {
                rule_index: i,
                sources: n.sources.clone(),
                translated: n.translated.clone(),
                translated_port: n.translated_port,
            });
            let protos = [(n.tcp, PROTO_TCP), (n.udp, PROTO_UDP)];
            for proto in protos.iter().filter(|p| p.0).map(|p| p.1) {
                for &addr in &n.destinations {
                    let v = t
                        .entries
                        .entry(NatKey {
                            proto,
                            addr,
                            port: n.port,
                        })
                        .or_default();
                    if v.last() != Some(&pos) {
                        v.push(pos);
                    }
                }
            }
        }
        t
    }

    /// Every key with its candidates in evaluation order (what the data plane's hash map holds).
    pub fn entries(&self) -> impl Iterator<Item = (&NatKey, Vec<&NatCandidate>)> + '_ {
        self.entries
            .iter()
            .map(|(k, v)| (k, v.iter().map(|&p| &self.candidates[p as usize]).collect()))
    }

    pub fn candidates(&self, key: &NatKey) -> impl Iterator<Item = &NatCandidate> + '_ {
        self.entries
            .get(key)
            .into_iter()
            .flatten()
            .map(|&p| &self.candidates[p as usize])
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The deciding NAT rule (index into [`Policy::rules`]).
    pub fn lookup(&self, proto: u8, src: Ipv4Addr, dst: Ipv4Addr, port: u16, res: &dyn Resolutions) -> Option<usize> {
        self.lookup_translated(proto, src, dst, port, res).map(|(i, _)| i)
    }

    /// The deciding NAT rule and where it translates to.
    pub fn lookup_translated(
        &self,
        proto: u8,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        port: u16,
        res: &dyn Resolutions,
    ) -> Option<(usize, Translation)> {
        let key = NatKey { proto, addr: dst, port };
        self.candidates(&key)
            .filter(|c| c.sources.contains(src))
            .find_map(|c| c.translation(res).map(|t| (c.rule_index, t)))
    }
}

/// Every compiled per-flow structure of one policy generation: what enforcement asks instead of the
/// linear evaluator.
#[derive(Clone, Debug)]
pub struct FastPath {
    pub nat: NatTable,
    pub network: NetworkTables,
    pub application: AppIndex,
}

impl FastPath {
    pub fn build(policy: &Policy) -> Self {
        Self {
            nat: NatTable::build(policy),
            network: NetworkTables::build(policy),
            application: AppIndex::build(policy),
        }
    }
}

impl Policy {
    /// Compiles the tables [`decide_fast`](Self::decide_fast) uses (and the data plane loads).
    pub fn fast_path(&self) -> FastPath {
        FastPath::build(self)
    }

    /// The same [`Decision`] as [`decide`](Self::decide) (the linear reference, which `explain` keeps
    /// using), answered from the compiled tables. `fast` must be built from this policy.
    pub fn decide_fast(&self, fast: &FastPath, flow: &Flow, env: &Env<'_>) -> Decision {
        self.run(fast, flow, env, &mut NoTrace)
    }
}

impl Stages for FastPath {
    fn nat<T: Tracer>(&self, _: &Policy, flow: &Flow, env: &Env<'_>, _: &mut T) -> Option<(usize, Translation)> {
        let proto = flow.protocol.ip_number();
        match (flow.destination_ip, proto) {
            (Some(dst), PROTO_TCP | PROTO_UDP) => {
                self.nat
                    .lookup_translated(proto, flow.source, dst, flow.port, env.resolutions)
            }
            _ => None,
        }
    }

    fn network<T: Tracer>(&self, _: &Policy, flow: &Flow, env: &Env<'_>, _: &mut T) -> Option<usize> {
        self.network.lookup_flow(
            flow.source,
            flow.destination_ip,
            flow.destination_name.as_ref(),
            flow.protocol.ip_number(),
            flow.port,
            env.resolutions,
        )
    }

    fn application<T: Tracer>(
        &self,
        _: &Policy,
        proto: AppProtocol,
        flow: &Flow,
        name: &Name,
        _: &mut T,
    ) -> Option<usize> {
        self.application.lookup(proto, flow.port, flow.source, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{MemLoader, load_str};

    /// One network collection per `(action, rules)`, in the given order.
    fn policy(collections: &[(&str, &[&str])], extra: &str) -> Policy {
        let mut y = format!(
            "policy:\n{extra}  ruleCollectionGroups:\n    - name: g\n      priority: 100\n      ruleCollections:\n"
        );
        for (ci, (action, rules)) in collections.iter().enumerate() {
            let kind = if *action == "DNAT" {
                "FirewallPolicyNatRuleCollection"
            } else {
                "FirewallPolicyFilterRuleCollection"
            };
            y.push_str(&format!(
                "        - ruleCollectionType: {kind}\n          name: c{ci}\n          priority: {}\n          action: {{type: {action}}}\n          rules:\n",
                100 + ci * 10
            ));
            for r in *rules {
                y.push_str(&format!("            - {r}\n"));
            }
        }
        match load_str("p.yaml", &y, &MemLoader::default()) {
            Ok(l) => l.config.policy,
            Err(e) => panic!("{e}\n{y}"),
        }
    }

    fn net(name: &str, protos: &str, src: &str, dst: &str, ports: &str) -> String {
        format!(
            "{{ruleType: NetworkRule, name: {name}, ipProtocols: [{protos}], sourceAddresses: [{src}], destinationAddresses: [{dst}], destinationPorts: [{ports}]}}"
        )
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn name_of(p: &Policy, i: Option<usize>) -> Option<&str> {
        i.map(|i| p.rules[i].name.as_str())
    }

    fn hit<'a>(p: &'a Policy, t: &NetworkTables, src: &str, dst: &str, proto: u8, port: u16) -> Option<&'a str> {
        name_of(p, t.lookup(ip(src), ip(dst), proto, port, &crate::eval::NoResolutions))
    }

    /// Prefixes are disjoint, sorted, carry the interval's id and cover exactly the non-zero intervals.
    fn check_prefixes(iv: &[AddrInterval], px: &[Prefix]) {
        let mut covered: u64 = 0;
        let mut prev_end: Option<u32> = None;
        for p in px {
            let r = p.range();
            assert_eq!(r.start, p.addr, "host bits set in {p:?}");
            assert!(prev_end.is_none_or(|e| e < r.start), "overlap at {p:?}");
            prev_end = Some(r.end);
            assert_eq!(lookup_interval(iv, r.start), p.bitmap);
            assert_eq!(lookup_interval(iv, r.end), p.bitmap);
            assert_ne!(p.bitmap, ZERO);
            covered += u64::from(r.end - r.start) + 1;
        }
        let mut nonzero: u64 = 0;
        for (i, v) in iv.iter().enumerate() {
            let end = iv.get(i + 1).map_or(1u64 << 32, |n| u64::from(n.start));
            if v.bitmap != ZERO {
                nonzero += end - u64::from(v.start);
            }
            if i > 0 {
                assert_ne!(iv[i - 1].bitmap, v.bitmap, "adjacent equal intervals are merged");
            }
        }
        assert_eq!(iv[0].start, 0);
        assert_eq!(covered, nonzero);
    }

    #[test]
    fn address_edges_first_and_last() {
        let r = net("r", "TCP", "10.0.0.0/24", "192.0.2.0-192.0.2.9", "\"80\"");
        let p = policy(&[("Allow", &[&r])], "");
        let t = NetworkTables::build(&p);
        for (src, ok) in [
            ("10.0.0.0", true),
            ("10.0.0.255", true),
            ("9.255.255.255", false),
            ("10.0.1.0", false),
        ] {
            assert_eq!(hit(&p, &t, src, "192.0.2.5", 6, 80).is_some(), ok, "src {src}");
        }
        for (dst, ok) in [
            ("192.0.2.0", true),
            ("192.0.2.9", true),
            ("192.0.1.255", false),
            ("192.0.2.10", false),
        ] {
            assert_eq!(hit(&p, &t, "10.0.0.7", dst, 6, 80).is_some(), ok, "dst {dst}");
        }
        check_prefixes(t.src_intervals(), t.src_prefixes());
        check_prefixes(t.dst_intervals(), t.dst_prefixes());
        assert_eq!(
            t.src_prefixes(),
            &[Prefix {
                addr: u32::from(ip("10.0.0.0")),
                len: 24,
                bitmap: t.src_bitmap_id(ip("10.0.0.1"))
            }]
        );
        // 192.0.2.0/29 + 192.0.2.8/31: the range as disjoint prefixes; misses are not emitted.
        let dst: Vec<(Ipv4Addr, u8)> = t.dst_prefixes().iter().map(|p| (p.network(), p.len)).collect();
        assert_eq!(dst, vec![(ip("192.0.2.0"), 29), (ip("192.0.2.8"), 31)]);
        assert_eq!(t.src_bitmap_id(ip("0.0.0.0")), ZERO);
        assert!(t.bitmap(ZERO).iter().all(|w| *w == 0));
    }

    #[test]
    fn whole_space_edges() {
        let a = net("all", "UDP", "\"*\"", "\"*\"", "\"*\"");
        let b = net("top", "TCP", "255.255.255.255", "0.0.0.0", "\"65535\"");
        let p = policy(&[("Deny", &[&b]), ("Allow", &[&a])], "");
        let t = NetworkTables::build(&p);
        assert_eq!(hit(&p, &t, "255.255.255.255", "0.0.0.0", 6, 65535), Some("top"));
        assert_eq!(hit(&p, &t, "255.255.255.254", "0.0.0.0", 6, 65535), None);
        assert_eq!(hit(&p, &t, "255.255.255.255", "0.0.0.1", 6, 65535), None);
        assert_eq!(hit(&p, &t, "255.255.255.255", "0.0.0.0", 6, 65534), None);
        assert_eq!(hit(&p, &t, "0.0.0.0", "255.255.255.255", 17, 0), Some("all"));
        assert_eq!(hit(&p, &t, "0.0.0.0", "255.255.255.255", 17, 65535), Some("all"));
        check_prefixes(t.src_intervals(), t.src_prefixes());
        check_prefixes(t.dst_intervals(), t.dst_prefixes());
        // `*` covers everything: the source prefixes are 0.0.0.0/1 … 255.255.255.254/32 and 255.255.255.255/32.
        assert_eq!(t.src_prefixes().last().map(|p| (p.addr, p.len)), Some((u32::MAX, 32)));
        assert_eq!(t.src_prefixes().first().map(|p| (p.addr, p.len)), Some((0, 1)));
    }

    #[test]
    fn port_range_edges() {
        let r = net("r", "TCP", "\"*\"", "\"*\"", "\"1000-2000\", \"443\"");
        let p = policy(&[("Allow", &[&r])], "");
        let t = NetworkTables::build(&p);
        for (port, ok) in [
            (999, false),
            (1000, true),
            (2000, true),
            (2001, false),
            (442, false),
            (443, true),
            (444, false),
            (0, false),
            (65535, false),
        ] {
            assert_eq!(
                hit(&p, &t, "10.0.0.1", "192.0.2.1", 6, port).is_some(),
                ok,
                "port {port}"
            );
            assert_eq!(hit(&p, &t, "10.0.0.1", "192.0.2.1", 17, port), None, "UDP {port}");
        }
        let tcp = t.port_intervals(6).unwrap();
        assert_eq!((tcp[0].lo, tcp.last().unwrap().hi), (0, 65535));
        assert!(tcp.windows(2).all(|w| w[0].hi + 1 == w[1].lo));
        let arr = t.port_array(6);
        assert_eq!(
            (arr[999], arr[1000], arr[2000], arr[2001]),
            (ZERO, t.port_bitmap_id(6, 1500), t.port_bitmap_id(6, 1500), ZERO)
        );
    }

    #[test]
    fn icmp_vs_any_and_any_with_ports_is_tcp_udp() {
        let icmp = net("icmp", "ICMP", "\"*\"", "\"*\"", "\"*\"");
        let any53 = net("any53", "Any", "\"*\"", "\"*\"", "\"53\"");
        let any = net("any", "Any", "\"*\"", "\"*\"", "\"*\"");
        let p = policy(&[("Deny", &[&any53, &icmp]), ("Allow", &[&any])], "");
        let t = NetworkTables::build(&p);
        let h = |proto, port| hit(&p, &t, "10.0.0.1", "192.0.2.1", proto, port);
        assert_eq!(
            h(1, 53),
            Some("icmp"),
            "ports don't apply to ICMP; Any+port is not ICMP"
        );
        assert_eq!(h(6, 53), Some("any53"));
        assert_eq!(h(17, 53), Some("any53"));
        assert_eq!(h(6, 54), Some("any"));
        assert_eq!(h(47, 53), Some("any"), "GRE: only Any with ports *");
        assert_eq!(h(0, 0), Some("any"));

        let p = policy(&[("Allow", &[&any53])], "");
        let t = NetworkTables::build(&p);
        let h = |proto, port| hit(&p, &t, "10.0.0.1", "192.0.2.1", proto, port);
        assert_eq!(
            (h(6, 53), h(17, 53), h(1, 53), h(47, 53)),
            (Some("any53"), Some("any53"), None, None)
        );
        assert_eq!(t.icmp_bitmap(), ZERO);
        assert_eq!(t.other_protocol_bitmap(), ZERO);
    }

    #[test]
    fn evaluation_order_interleaves_and_skipped_rules_get_no_bit() {
        let empty = "{ruleType: NetworkRule, name: empty, ipProtocols: [Any], sourceIpGroups: [none], destinationAddresses: [\"*\"], destinationPorts: [\"*\"]}";
        let deny = net("deny-ssh", "TCP", "10.0.0.0/8", "\"*\"", "\"22\"");
        let allow = net("allow-all", "TCP", "\"*\"", "\"*\"", "\"*\"");
        let p = policy(
            &[("Deny", &[empty, &deny]), ("Allow", &[&allow])],
            "  ipGroups:\n    none: []\n",
        );
        let t = NetworkTables::build(&p);
        assert_eq!(t.rules().len(), 2);
        assert_eq!(
            t.rules()[0],
            NetRule {
                rule_index: p.network_rules.start + 1,
                action: Action::Deny
            }
        );
        assert_eq!(t.rules()[1].action, Action::Allow);
        assert_eq!(hit(&p, &t, "10.1.1.1", "192.0.2.1", 6, 22), Some("deny-ssh"));
        assert_eq!(hit(&p, &t, "11.1.1.1", "192.0.2.1", 6, 22), Some("allow-all"));
        assert_eq!(
            hit(&p, &t, "10.1.1.1", "192.0.2.1", 17, 22),
            None,
            "the skipped Any rule never matches"
        );
    }

    #[test]
    fn more_than_64_rules_use_several_words() {
        let rules: Vec<String> = (0..130)
            .map(|i| net(&format!("r{i}"), "TCP", "\"*\"", &format!("10.0.{i}.0/24"), "\"443\""))
            .collect();
        let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
        let p = policy(&[("Allow", &refs)], "");
        let t = NetworkTables::build(&p);
        assert_eq!(t.words(), 3);
        assert_eq!(t.bitmaps_flat().len(), t.bitmap_count() * 3);
        for i in [0u16, 63, 64, 127, 128, 129] {
            assert_eq!(
                hit(&p, &t, "1.2.3.4", &format!("10.0.{i}.255"), 6, 443),
                Some(format!("r{i}").as_str())
            );
        }
        // Every destination /24 has its own bitmap; the port and source dimensions share one.
        let s = t.stats();
        assert_eq!(
            (s.dst_prefixes, s.src_prefixes, s.unique_bitmaps),
            (130, 1, 1 + 1 + 130)
        );
    }

    #[test]
    fn fqdn_rules_match_through_pins() {
        let dns = "  dnsSettings: {enableProxy: true}\n";
        let f = "{ruleType: NetworkRule, name: ntp, ipProtocols: [UDP], sourceAddresses: [\"*\"], destinationFqdns: [time.example, ntp.example], destinationPorts: [\"123\"]}";
        let g = "{ruleType: NetworkRule, name: ntp2, ipProtocols: [UDP], sourceAddresses: [\"*\"], destinationFqdns: [ntp.example], destinationPorts: [\"123\"]}";
        let all = net("deny-udp", "UDP", "\"*\"", "203.0.113.0/24", "\"*\"");
        let p = policy(&[("Allow", &[f]), ("Deny", &[&all]), ("Allow", &[g])], dns);
        let t = NetworkTables::build(&p);
        let ntp = Name::parse("ntp.example").unwrap();
        let time = Name::parse("time.example").unwrap();
        assert_eq!(t.names().len(), 2);
        let pin = t.pin_bitmap_for(std::slice::from_ref(&ntp));
        assert_eq!(pin.ones().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(
            t.pin_bitmap_for(&[time.clone(), Name::parse("other.example").unwrap()])
                .ones()
                .collect::<Vec<_>>(),
            vec![0]
        );
        let mut res: BTreeMap<Name, Vec<Ipv4Addr>> = BTreeMap::new();
        res.insert(ntp.clone(), vec![ip("203.0.113.7"), ip("198.51.100.7")]);
        let l = |dst: &str, res: &BTreeMap<Name, Vec<Ipv4Addr>>| {
            name_of(&p, t.lookup(ip("10.0.0.1"), ip(dst), 17, 123, res))
        };
        assert_eq!(l("203.0.113.7", &res), Some("ntp"));
        assert_eq!(l("198.51.100.7", &res), Some("ntp"));
        assert_eq!(l("203.0.113.8", &res), Some("deny-udp"));
        assert_eq!(l("198.51.100.8", &res), None);
        assert_eq!(l("203.0.113.7", &BTreeMap::new()), Some("deny-udp"));
        // By name (explain-style flows without an address).
        let by_name = t.lookup_flow(ip("10.0.0.1"), None, Some(&time), 17, 123, &crate::eval::NoResolutions);
        assert_eq!(name_of(&p, by_name), Some("ntp"));
    }

    #[test]
    fn nat_table_candidates_in_order_and_unresolved_fqdn_does_not_match() {
        let dns = "  dnsSettings: {enableProxy: true}\n";
        let a = "{ruleType: NatRule, name: by-name, ipProtocols: [TCP], sourceAddresses: [198.51.100.0/24], destinationAddresses: [203.0.113.1], destinationPorts: [\"443\"], translatedFqdn: web.internal, translatedPort: \"8443\"}";
        let b = "{ruleType: NatRule, name: by-addr, ipProtocols: [Any], sourceAddresses: [\"*\"], destinationAddresses: [203.0.113.1, 203.0.113.2], destinationPorts: [\"443\"], translatedAddress: 10.0.0.5, translatedPort: \"443\"}";
        let p = policy(&[("DNAT", &[a, b])], dns);
        let t = NatTable::build(&p);
        assert_eq!(t.entries().count(), 4);
        let none = crate::eval::NoResolutions;
        let mut res: BTreeMap<Name, Vec<Ipv4Addr>> = BTreeMap::new();
        res.insert(
            Name::parse("web.internal").unwrap(),
            vec![ip("10.0.0.9"), ip("10.0.0.10")],
        );
        let l = |proto, src: &str, dst: &str, port, r: &dyn Resolutions| {
            name_of(&p, t.lookup(proto, ip(src), ip(dst), port, r))
        };
        assert_eq!(l(6, "198.51.100.1", "203.0.113.1", 443, &none), Some("by-addr"));
        assert_eq!(l(6, "198.51.100.1", "203.0.113.1", 443, &res), Some("by-name"));
        assert_eq!(l(6, "192.0.2.1", "203.0.113.1", 443, &res), Some("by-addr"));
        assert_eq!(l(17, "198.51.100.1", "203.0.113.1", 443, &res), Some("by-addr"));
        assert_eq!(l(17, "198.51.100.1", "203.0.113.2", 443, &res), Some("by-addr"));
        assert_eq!(l(6, "198.51.100.1", "203.0.113.3", 443, &res), None);
        assert_eq!(l(6, "198.51.100.1", "203.0.113.1", 444, &res), None);
        let (_, tr) = t
            .lookup_translated(6, ip("198.51.100.1"), ip("203.0.113.1"), 443, &res)
            .unwrap();
        assert_eq!(
            (tr.address, tr.port),
            (ip("10.0.0.9"), 8443),
            "the first resolved address"
        );
    }

    #[test]
    fn no_rules_still_one_word() {
        let p = policy(&[], "");
        let t = NetworkTables::build(&p);
        assert_eq!((t.words(), t.bitmap_count(), t.rules().len()), (1, 1, 0));
        assert_eq!(
            t.lookup(ip("1.1.1.1"), ip("2.2.2.2"), 6, 80, &crate::eval::NoResolutions),
            None
        );
        assert!(t.src_prefixes().is_empty() && t.dst_prefixes().is_empty());
    }
}
