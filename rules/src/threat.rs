//! The threat-intelligence feed: IPv4 addresses/CIDRs/ranges and host names, one per line, `#` comments.

use crate::addr::{AddrSet, parse_addr};
use crate::fqdn::{FqdnPattern, Name};
use std::net::Ipv4Addr;

#[derive(Clone, Debug, Default)]
pub struct ThreatFeed {
    ips: AddrSet,
    names: Vec<FqdnPattern>,
}

/// A line of the feed that could not be read: (line number, message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct FeedError {
    pub line: usize,
    pub message: String,
}

impl ThreatFeed {
    pub fn parse(text: &str) -> Result<Self, Vec<FeedError>> {
        let mut ranges = Vec::new();
        let mut names = Vec::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            if line.starts_with(|c: char| c.is_ascii_digit()) && !line.contains(|c: char| c.is_ascii_alphabetic()) {
                match parse_addr(line) {
                    Ok(e) => ranges.push(e.range),
                    Err(e) => errors.push(FeedError {
                        line: i + 1,
                        message: e.to_string(),
                    }),
                }
            } else {
                match FqdnPattern::parse(line) {
                    Ok(p) => names.push(p),
                    Err(e) => errors.push(FeedError {
                        line: i + 1,
                        message: e,
                    }),
                }
            }
        }
        if errors.is_empty() {
            Ok(Self {
                ips: AddrSet::from_ranges(ranges),
                names,
            })
        } else {
            Err(errors)
        }
    }

    pub fn contains_ip(&self, ip: Ipv4Addr) -> bool {
        self.ips.contains(ip)
    }

    pub fn contains_name(&self, name: &Name) -> bool {
        self.names.iter().any(|p| p.matches(name))
    }

    pub fn ips(&self) -> &AddrSet {
        &self.ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_reports_lines() {
        let f = ThreatFeed::parse("# feed\n203.0.113.0/24\n198.51.100.7 # c2\nbad.example\n").unwrap();
        assert!(f.contains_ip(Ipv4Addr::new(203, 0, 113, 9)));
        assert!(f.contains_ip(Ipv4Addr::new(198, 51, 100, 7)));
        assert!(!f.contains_ip(Ipv4Addr::new(198, 51, 100, 8)));
        assert!(f.contains_name(&Name::parse("BAD.example.").unwrap()));
        let e = ThreatFeed::parse("1.2.3.4\n1.2.3.999\n").unwrap_err();
        assert_eq!(e[0].line, 2);
    }
}
