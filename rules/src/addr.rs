//! IPv4 address forms of Azure Firewall rules: `*`, `10.0.0.1`, `10.0.0.0/8`, `10.0.0.0-10.0.0.31`.

use std::fmt;
use std::net::Ipv4Addr;

/// Inclusive range of IPv4 addresses as host-order integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Range {
    pub start: u32,
    pub end: u32,
}

impl Ipv4Range {
    pub const ALL: Self = Self {
        start: 0,
        end: u32::MAX,
    };

    pub fn single(ip: Ipv4Addr) -> Self {
        let v = u32::from(ip);
        Self { start: v, end: v }
    }

    pub fn prefix(addr: u32, len: u8) -> Self {
        let mask = prefix_mask(len);
        Self {
            start: addr & mask,
            end: (addr & mask) | !mask,
        }
    }

    pub fn contains(&self, ip: u32) -> bool {
        self.start <= ip && ip <= self.end
    }

    /// The smallest set of CIDR prefixes covering exactly this range (what an LPM table needs).
    pub fn to_prefixes(self) -> Vec<(u32, u8)> {
        let mut out = Vec::new();
        let mut start = u64::from(self.start);
        let end = u64::from(self.end);
        while start <= end {
            // Largest block aligned at `start` that does not run past `end`.
            let mut size: u64 = if start == 0 {
                1 << 32
            } else {
                1 << start.trailing_zeros().min(32)
            };
            while start + size - 1 > end {
                size >>= 1;
            }
            let len = 32 - size.trailing_zeros() as u8;
            out.push((start as u32, len));
            start += size;
        }
        out
    }
}

impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", Ipv4Addr::from(self.start))
        } else if *self == Self::ALL {
            f.write_str("*")
        } else {
            let p = self.to_prefixes();
            if let [(a, l)] = p.as_slice() {
                write!(f, "{}/{l}", Ipv4Addr::from(*a))
            } else {
                write!(f, "{}-{}", Ipv4Addr::from(self.start), Ipv4Addr::from(self.end))
            }
        }
    }
}

pub fn prefix_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// What went wrong with an address string; the caller adds the location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error(
        "`{0}` is an IPv6 address; portcullis enforces IPv4 rules (IPv6 rules are not supported, as in Azure Firewall GA)"
    )]
    Ipv6(String),
    #[error(
        "`{0}` looks like an Azure service tag; service tags need a tag source (the ServiceTags JSON), which portcullis does not have yet: list the prefixes instead"
    )]
    ServiceTag(String),
    #[error("`{0}` is not an IPv4 address, CIDR prefix (a.b.c.d/n), range (a.b.c.d-e.f.g.h) or `*`")]
    Invalid(String),
    #[error("prefix length in `{0}` must be 0..=32")]
    PrefixLen(String),
    #[error("range `{0}` ends before it starts")]
    Reversed(String),
}

/// A parsed address entry; `host_bits` warns about `10.1.2.3/16` (means 10.1.0.0/16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrEntry {
    pub range: Ipv4Range,
    pub host_bits_set: bool,
}

pub fn parse_addr(text: &str) -> Result<AddrEntry, AddrError> {
    let s = text.trim();
    let ok = |range| {
        Ok(AddrEntry {
            range,
            host_bits_set: false,
        })
    };
    if s == "*" {
        return ok(Ipv4Range::ALL);
    }
    if s.contains(':') {
        return Err(AddrError::Ipv6(s.to_string()));
    }
    if let Some((a, len)) = s.split_once('/') {
        let ip: Ipv4Addr = a.parse().map_err(|_| AddrError::Invalid(s.to_string()))?;
        let len: u8 = len.parse().map_err(|_| AddrError::PrefixLen(s.to_string()))?;
        if len > 32 {
            return Err(AddrError::PrefixLen(s.to_string()));
        }
        let v = u32::from(ip);
        return Ok(AddrEntry {
            range: Ipv4Range::prefix(v, len),
            host_bits_set: v & !prefix_mask(len) != 0,
        });
    }
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (Ipv4Addr, Ipv4Addr) = match (a.trim().parse(), b.trim().parse()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return Err(AddrError::Invalid(s.to_string())),
        };
        if u32::from(a) > u32::from(b) {
            return Err(AddrError::Reversed(s.to_string()));
        }
        return ok(Ipv4Range {
            start: a.into(),
            end: b.into(),
        });
    }
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return ok(Ipv4Range::single(ip));
    }
    if looks_like_service_tag(s) {
        return Err(AddrError::ServiceTag(s.to_string()));
    }
    Err(AddrError::Invalid(s.to_string()))
}

/// `AzureCloud`, `AzureCloud.westeurope`, `Storage.EastUS2`, `AzureKubernetesService` …
fn looks_like_service_tag(s: &str) -> bool {
    let mut parts = s.split('.');
    let head = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    head.len() >= 2
        && head.starts_with(|c: char| c.is_ascii_uppercase())
        && head.chars().all(|c| c.is_ascii_alphanumeric())
        && rest.len() <= 1
        && rest
            .iter()
            .all(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// A set of IPv4 addresses: sorted, non-overlapping, non-adjacent ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrSet {
    ranges: Vec<Ipv4Range>,
}

impl AddrSet {
    pub fn any() -> Self {
        Self {
            ranges: vec![Ipv4Range::ALL],
        }
    }

    pub fn from_ranges(mut ranges: Vec<Ipv4Range>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<Ipv4Range> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if u64::from(r.start) <= u64::from(last.end) + 1 => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        Self { ranges: merged }
    }

    pub fn union(&self, other: &Self) -> Self {
        Self::from_ranges(self.ranges.iter().chain(&other.ranges).copied().collect())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        let i = self.ranges.partition_point(|r| r.end < v);
        self.ranges.get(i).is_some_and(|r| r.contains(v))
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn is_any(&self) -> bool {
        self.ranges.first() == Some(&Ipv4Range::ALL)
    }

    pub fn ranges(&self) -> &[Ipv4Range] {
        &self.ranges
    }
}

impl fmt::Display for AddrSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges.is_empty() {
            return f.write_str("(none)");
        }
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if i == 8 {
                return write!(f, "… ({} ranges)", self.ranges.len());
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// The default `snat.privateRanges`: IANA RFC 1918 plus RFC 6598 shared space (§5).
pub const IANA_PRIVATE_RANGES: [&str; 4] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"];

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Ipv4Range {
        parse_addr(s).unwrap().range
    }

    #[test]
    fn forms() {
        assert_eq!(r("*"), Ipv4Range::ALL);
        assert_eq!(r("10.0.0.1"), Ipv4Range::single(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(r("10.1.0.0/16").to_string(), "10.1.0.0/16");
        assert_eq!(r("10.2.0.0-10.2.0.31").to_string(), "10.2.0.0/27");
        assert_eq!(r("0.0.0.0/0"), Ipv4Range::ALL);
        assert!(parse_addr("10.1.2.3/16").unwrap().host_bits_set);
        assert_eq!(
            parse_addr("10.1.0.0/33"),
            Err(AddrError::PrefixLen("10.1.0.0/33".into()))
        );
        assert_eq!(
            parse_addr("10.0.0.9-10.0.0.1"),
            Err(AddrError::Reversed("10.0.0.9-10.0.0.1".into()))
        );
        assert!(matches!(parse_addr("2001:db8::/32"), Err(AddrError::Ipv6(_))));
        assert!(matches!(
            parse_addr("AzureCloud.westeurope"),
            Err(AddrError::ServiceTag(_))
        ));
        assert!(matches!(parse_addr("AzureMonitor"), Err(AddrError::ServiceTag(_))));
        assert!(matches!(parse_addr("10.0.0"), Err(AddrError::Invalid(_))));
        assert!(matches!(parse_addr("example.com"), Err(AddrError::Invalid(_))));
    }

    #[test]
    fn prefixes_cover_range_exactly() {
        let rg = Ipv4Range {
            start: u32::from(Ipv4Addr::new(10, 0, 0, 3)),
            end: u32::from(Ipv4Addr::new(10, 0, 1, 4)),
        };
        let p = rg.to_prefixes();
        let total: u64 = p.iter().map(|(_, l)| 1u64 << (32 - l)).sum();
        assert_eq!(total, u64::from(rg.end - rg.start) + 1);
        assert_eq!(Ipv4Range::ALL.to_prefixes(), vec![(0, 0)]);
        assert_eq!(
            Ipv4Range::single(Ipv4Addr::BROADCAST).to_prefixes(),
            vec![(u32::MAX, 32)]
        );
    }

    #[test]
    fn set_merges_and_contains() {
        let s = AddrSet::from_ranges(vec![r("10.0.0.0/24"), r("10.0.1.0/24"), r("192.0.2.7")]);
        assert_eq!(s.ranges().len(), 2);
        assert!(s.contains(Ipv4Addr::new(10, 0, 1, 255)));
        assert!(!s.contains(Ipv4Addr::new(10, 0, 2, 0)));
        assert!(s.contains(Ipv4Addr::new(192, 0, 2, 7)));
        assert!(!s.contains(Ipv4Addr::new(192, 0, 2, 8)));
    }
}
