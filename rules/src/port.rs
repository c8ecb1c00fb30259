//! Port forms: `"443"`, `"8000-8999"`, `"*"`.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ALL: Self = Self { lo: 0, hi: u16::MAX };

    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::ALL {
            f.write_str("*")
        } else if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Parses one port entry; `min..=max` is the range the rule type allows.
pub fn parse_port_range(text: &str, min: u16, max: u16) -> Result<PortRange, String> {
    let s = text.trim();
    if s == "*" {
        return Ok(PortRange::ALL);
    }
    let one = |p: &str| -> Result<u16, String> {
        let v: u32 = p
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a port, a port range (a-b) or `*`"))?;
        if v < u32::from(min) || v > u32::from(max) {
            return Err(format!("port {v} is out of range {min}-{max}"));
        }
        Ok(v as u16)
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (lo, hi) = (one(a)?, one(b)?);
            if lo > hi {
                return Err(format!("port range `{s}` ends before it starts"));
            }
            Ok(PortRange { lo, hi })
        }
        None => one(s).map(|p| PortRange { lo: p, hi: p }),
    }
}

/// Sorted, merged port ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortSet {
    ranges: Vec<PortRange>,
}

impl PortSet {
    pub fn from_ranges(mut ranges: Vec<PortRange>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(r.lo) <= u32::from(last.hi) + 1 => last.hi = last.hi.max(r.hi),
                _ => merged.push(r),
            }
        }
        Self { ranges: merged }
    }

    pub fn contains(&self, p: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(p))
    }

    pub fn is_all(&self) -> bool {
        self.ranges.first() == Some(&PortRange::ALL)
    }

    pub fn ranges(&self) -> &[PortRange] {
        &self.ranges
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_bounds() {
        assert_eq!(parse_port_range("*", 1, 65535), Ok(PortRange::ALL));
        assert_eq!(parse_port_range("443", 1, 65535), Ok(PortRange { lo: 443, hi: 443 }));
        assert_eq!(
            parse_port_range("1000-2000", 1, 65535),
            Ok(PortRange { lo: 1000, hi: 2000 })
        );
        assert!(parse_port_range("0", 1, 65535).is_err());
        assert!(
            parse_port_range("64000", 1, 63999)
                .unwrap_err()
                .contains("out of range 1-63999")
        );
        assert!(parse_port_range("2000-1000", 1, 65535).is_err());
        assert!(parse_port_range("http", 1, 65535).is_err());
        assert!(parse_port_range("70000", 1, 65535).is_err());
    }

    #[test]
    fn set() {
        let s = PortSet::from_ranges(vec![PortRange { lo: 80, hi: 80 }, PortRange { lo: 81, hi: 90 }]);
        assert_eq!(s.to_string(), "80-90");
        assert!(s.contains(85) && !s.contains(91));
    }
}
