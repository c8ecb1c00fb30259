//! Policy → the contents of one rule-table set (pure: no maps, testable without privileges).

use std::collections::HashSet;

use portcullis_common::{
    ACTION_ALLOW, ACTION_DENY, APP_PORT_FLAG, CHUNK_WORDS, Chunk, DST_MAX_ENTRIES, MAX_NAT_CANDIDATES, MAX_RULE_INDEX,
    MAX_WORDS, NAT_MAX_ENTRIES, NAT_SRC_MAX_ENTRIES, NatCand, NatKey, NatValue, PRIVATE_MAX_ENTRIES, RuleInfo,
    SRC_MAX_ENTRIES, SetConfig, TI_ALERT, TI_DENY, TI_MAX_ENTRIES, TI_OFF, nat_candidate_id,
};
use portcullis_rules::{
    Action, Policy, Resolutions, ThreatFeed, ThreatIntelMode,
    addr::Ipv4Range,
    classify::{NatTable, NetworkTables},
};

use super::BpfError;

/// An LPM entry of a per-set trie: prefix length (32 + the address prefix) and the key data (set
/// as a big-endian u32, then the address in network order).
pub(crate) type Lpm8 = (u8, [u8; 8]);

/// Everything one set of maps holds for a policy.
pub(crate) struct SetImage {
    pub cfg: SetConfig,
    pub src: Vec<(Lpm8, u32)>,
    pub dst: Vec<(Lpm8, u32)>,
    /// `PORTS` contents: TCP 0..65536, UDP 65536..131072.
    pub ports: Vec<u32>,
    /// `BITMAPS` contents: bitmap id × chunks + chunk.
    pub bitmaps: Vec<Chunk>,
    pub rules: Vec<RuleInfo>,
    pub nat: Vec<(NatKey, NatValue)>,
    /// (prefix length 32 + source prefix, candidate id (BE) ++ source address).
    pub nat_src: Vec<(u8, [u8; 8])>,
    pub ti: Vec<Lpm8>,
    pub private: Vec<Lpm8>,
}

/// The key data of `addr` (host order) under the 4-byte big-endian `tag` (a set or candidate id).
pub(crate) fn tagged(tag: u32, addr: u32) -> [u8; 8] {
    let (t, a) = (tag.to_be_bytes(), addr.to_be_bytes());
    [t[0], t[1], t[2], t[3], a[0], a[1], a[2], a[3]]
}

/// `ranges` as LPM entries tagged with `tag`.
pub(crate) fn prefixes(tag: u32, ranges: &[Ipv4Range]) -> Vec<Lpm8> {
    ranges
        .iter()
        .flat_map(|r| r.to_prefixes())
        .map(|(addr, len)| (32 + len, tagged(tag, addr)))
        .collect()
}

/// `a` minus `b` (both sorted, disjoint, merged as `AddrSet` keeps them).
pub(crate) fn subtract(a: &[Ipv4Range], b: &[Ipv4Range]) -> Vec<Ipv4Range> {
    let mut out = Vec::new();
    for r in a {
        let mut start = u64::from(r.start);
        let end = u64::from(r.end);
        for cut in b {
            let (cs, ce) = (u64::from(cut.start), u64::from(cut.end));
            if ce < start || cs > end {
                continue;
            }
            if cs > start {
                out.push(Ipv4Range {
                    start: start as u32,
                    end: (cs - 1) as u32,
                });
            }
            start = ce + 1;
            if start > end {
                break;
            }
        }
        if start <= end {
            out.push(Ipv4Range {
                start: start as u32,
                end: end as u32,
            });
        }
    }
    out
}

/// Pads a `words`-word bitmap to whole chunks.
pub(crate) fn to_chunks(words: &[u64], chunks: usize) -> Vec<Chunk> {
    let mut out = vec![[0u64; CHUNK_WORDS]; chunks];
    for (i, w) in words.iter().enumerate() {
        out[i / CHUNK_WORDS][i % CHUNK_WORDS] = *w;
    }
    out
}

fn too_big(what: &str, have: usize, max: u64) -> BpfError {
    BpfError::PolicyTooLarge(format!("{what}: {have} (the data plane holds at most {max})"))
}

pub(crate) fn build(
    policy: &Policy,
    threat_feed: Option<&ThreatFeed>,
    resolutions: &dyn Resolutions,
    bitmap_chunks: u32,
    set: u32,
) -> Result<(SetImage, NetworkTables), BpfError> {
    let tables = NetworkTables::build(policy);
    let words = tables.words();
    if words > MAX_WORDS as usize {
        return Err(too_big(
            "network rules",
            tables.rules().len(),
            u64::from(MAX_WORDS) * 64,
        ));
    }
    if policy.rules.len() > MAX_RULE_INDEX as usize {
        return Err(too_big(
            "rules in the policy",
            policy.rules.len(),
            u64::from(MAX_RULE_INDEX),
        ));
    }
    let chunks = words.div_ceil(CHUNK_WORDS);
    let count = tables.bitmap_count();
    // Keep a quarter of the table (at least 1,024 bitmaps' worth) for DNS pins.
    let needed = (count * chunks) as u64;
    if needed + (needed / 4).max(1024 * chunks as u64) > u64::from(bitmap_chunks) {
        return Err(BpfError::PolicyTooLarge(format!(
            "{count} unique rule bitmaps × {chunks} chunks (plus room for pins) exceed bitmap_chunks = {bitmap_chunks}; \
             raise DataPlaneSettings::bitmap_chunks"
        )));
    }
    if tables.src_prefixes().len() > SRC_MAX_ENTRIES as usize {
        return Err(too_big(
            "source prefixes",
            tables.src_prefixes().len(),
            u64::from(SRC_MAX_ENTRIES),
        ));
    }
    if tables.dst_prefixes().len() > DST_MAX_ENTRIES as usize {
        return Err(too_big(
            "destination prefixes",
            tables.dst_prefixes().len(),
            u64::from(DST_MAX_ENTRIES),
        ));
    }
    let mut bitmaps = Vec::with_capacity(count * chunks);
    for id in 0..count {
        bitmaps.extend(to_chunks(tables.bitmap(id as u32), chunks));
    }
    let lpm = |v: &[portcullis_rules::classify::Prefix]| -> Vec<(Lpm8, u32)> {
        v.iter()
            .map(|p| ((32 + p.len, tagged(set, p.addr)), p.bitmap))
            .collect()
    };

    let mut ports = tables.port_array(6);
    for &port in policy.application_ports().keys() {
        ports[usize::from(port)] |= APP_PORT_FLAG;
    }
    ports.extend(tables.port_array(17));

    let rules = tables
        .rules()
        .iter()
        .map(|r| RuleInfo {
            rule_index: r.rule_index as u32,
            action: if r.action == Action::Allow {
                ACTION_ALLOW
            } else {
                ACTION_DENY
            },
        })
        .collect();

    let nat_table = NatTable::build(policy);
    let mut nat = Vec::new();
    let mut nat_src = Vec::new();
    let mut with_sources: HashSet<usize> = HashSet::new();
    for (key, cands) in nat_table.entries() {
        let mut value = NatValue::default();
        for c in cands {
            // An unresolved translatedFqdn: the rule is absent (§2.1).
            let Some(tr) = c.translation(resolutions) else { continue };
            if value.count as usize == MAX_NAT_CANDIDATES {
                return Err(BpfError::PolicyTooLarge(format!(
                    "more than {MAX_NAT_CANDIDATES} DNAT rules for {:?} {}:{}",
                    key.proto, key.addr, key.port
                )));
            }
            let id = nat_candidate_id(set, c.rule_index as u32);
            value.cands[value.count as usize] = NatCand {
                id,
                rule_index: c.rule_index as u32,
                addr: u32::from_ne_bytes(tr.address.octets()),
                port: tr.port,
                _pad: 0,
            };
            value.count += 1;
            if with_sources.insert(c.rule_index) {
                nat_src.extend(prefixes(id, c.sources.ranges()));
            }
        }
        if value.count > 0 {
            let k = NatKey {
                addr: u32::from_ne_bytes(key.addr.octets()),
                port: key.port,
                proto: key.proto,
                set: set as u8,
            };
            nat.push((k, value));
        }
    }
    if nat.len() > NAT_MAX_ENTRIES as usize {
        return Err(too_big("DNAT keys", nat.len(), u64::from(NAT_MAX_ENTRIES)));
    }
    if nat_src.len() > NAT_SRC_MAX_ENTRIES as usize {
        return Err(too_big(
            "DNAT source prefixes",
            nat_src.len(),
            u64::from(NAT_SRC_MAX_ENTRIES),
        ));
    }

    let ti_mode = match policy.threat_intel.mode {
        ThreatIntelMode::Off => TI_OFF,
        ThreatIntelMode::Alert => TI_ALERT,
        ThreatIntelMode::Deny => TI_DENY,
    };
    // The engine checks `feed.contains(dst) && !allow.contains(dst)`: one LPM of the difference.
    let ti = match threat_feed {
        Some(feed) if ti_mode != TI_OFF => prefixes(
            set,
            &subtract(feed.ips().ranges(), policy.threat_intel.allow_ips.ranges()),
        ),
        _ => Vec::new(),
    };
    if ti.len() > TI_MAX_ENTRIES as usize {
        return Err(too_big("threat-intel prefixes", ti.len(), u64::from(TI_MAX_ENTRIES)));
    }
    let private = prefixes(set, policy.snat_private_ranges.ranges());
    if private.len() > PRIVATE_MAX_ENTRIES as usize {
        return Err(too_big(
            "SNAT private-range prefixes",
            private.len(),
            u64::from(PRIVATE_MAX_ENTRIES),
        ));
    }

    let cfg = SetConfig {
        bitmap_base: set * bitmap_chunks,
        words: words as u32,
        chunks: chunks as u32,
        rules: tables.rules().len() as u32,
        icmp_bitmap: tables.icmp_bitmap(),
        other_bitmap: tables.other_protocol_bitmap(),
        ti_mode,
    };
    let image = SetImage {
        cfg,
        src: lpm(tables.src_prefixes()),
        dst: lpm(tables.dst_prefixes()),
        ports,
        bitmaps,
        rules,
        nat,
        nat_src,
        ti,
        private,
    };
    Ok((image, tables))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: u32, b: u32) -> Ipv4Range {
        Ipv4Range { start: a, end: b }
    }

    #[test]
    fn subtract_ranges() {
        assert_eq!(
            subtract(&[r(10, 20)], &[r(12, 13), r(15, 15)]),
            vec![r(10, 11), r(14, 14), r(16, 20)]
        );
        assert_eq!(subtract(&[r(10, 20)], &[r(0, 30)]), vec![]);
        assert_eq!(subtract(&[r(10, 20)], &[r(0, 10), r(20, 25)]), vec![r(11, 19)]);
        assert_eq!(subtract(&[r(0, u32::MAX)], &[r(5, u32::MAX)]), vec![r(0, 4)]);
        assert_eq!(subtract(&[r(1, 2), r(8, 9)], &[]), vec![r(1, 2), r(8, 9)]);
    }

    #[test]
    fn chunks_pad() {
        let c = to_chunks(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 2);
        assert_eq!(c[0], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(c[1], [9, 0, 0, 0, 0, 0, 0, 0]);
    }
}
