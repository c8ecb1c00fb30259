//! Host names and Azure Firewall's target-FQDN wildcard forms (reference: azure-firewall.md §2.4).
//!
//! | rule            | matches                                                   |
//! |-----------------|-----------------------------------------------------------|
//! | `www.contoso.com` | exactly that name                                       |
//! | `*.contoso.com` | any name below contoso.com, at any depth; not contoso.com |
//! | `*contoso.com`  | any name ending in "contoso.com" (also `foocontoso.com`)  |
//! | `*`             | every name                                                |
//!
//! Matching is case-insensitive and tolerates one trailing dot. An asterisk anywhere but the left-most
//! position (`www.contoso.*`, `a.*.b`, `ab*.c`) is rejected, as Azure rejects it.

use std::fmt;

/// A host name, lower-cased, without trailing dot, syntax-checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn parse(text: &str) -> Result<Self, String> {
        let s = normalize(text);
        check_host(&s, text)?;
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn normalize(text: &str) -> String {
    let t = text.trim();
    t.strip_suffix('.').unwrap_or(t).to_ascii_lowercase()
}

/// Letters, digits, `-` and `_` in labels of 1–63 bytes, 253 bytes in all; a label neither starts nor
/// ends with `-`. Unicode names must be given in their punycode (xn--) form.
fn check_host(s: &str, original: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty host name".into());
    }
    if !s.is_ascii() {
        return Err(format!(
            "`{original}` has non-ASCII characters; write internationalised names in punycode (xn--…)"
        ));
    }
    if s.contains("://") || s.contains('/') {
        return Err(format!(
            "`{original}` is a URL; give the host name only (URL rules need TLS inspection)"
        ));
    }
    if s.contains(':') {
        return Err(format!(
            "`{original}` has a port; ports belong in the rule's protocols/ports, not the name"
        ));
    }
    if s.len() > 253 {
        return Err(format!("`{original}` is longer than 253 characters"));
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err(format!("`{original}` has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("`{original}` has a label longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("`{original}`: a label cannot start or end with `-`"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "`{original}` contains `{c}`, which is not allowed in a host name"
            ));
        }
    }
    Ok(())
}

/// A compiled target-FQDN entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FqdnPattern {
    /// `*`
    Any,
    /// `www.contoso.com`
    Exact(String),
    /// `*.contoso.com`: strictly below the suffix.
    Subdomains(String),
    /// `*contoso.com`: the name ends with the text (not only at a label boundary).
    EndsWith(String),
}

impl FqdnPattern {
    /// Parses a `targetFqdns` (or threat-intel allow-list) entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let s = normalize(text);
        if s == "*" {
            return Ok(Self::Any);
        }
        let stars = s.matches('*').count();
        if stars > 1 {
            return Err(format!(
                "`{text}`: only one asterisk is allowed, at the left-most position"
            ));
        }
        if stars == 1 && !s.starts_with('*') {
            return Err(format!(
                "`{text}`: the asterisk is only allowed at the left-most position (e.g. `*.contoso.com` or `*contoso.com`)"
            ));
        }
        if let Some(rest) = s.strip_prefix("*.") {
            check_host(rest, text)?;
            return Ok(Self::Subdomains(rest.to_string()));
        }
        if let Some(rest) = s.strip_prefix('*') {
            if rest.starts_with('-') {
                // `*-contoso.com` is a valid suffix of a label; check the rest as if it had a letter before it.
                check_host(&format!("a{rest}"), text)?;
            } else {
                check_host(rest, text)?;
            }
            return Ok(Self::EndsWith(rest.to_string()));
        }
        check_host(&s, text)?;
        Ok(Self::Exact(s))
    }

    pub fn matches(&self, name: &Name) -> bool {
        let n = name.as_str();
        match self {
            Self::Any => true,
            Self::Exact(e) => n == e,
            Self::Subdomains(suffix) => {
                n.len() > suffix.len() + 1
                    && n.ends_with(suffix.as_str())
                    && n.as_bytes()[n.len() - suffix.len() - 1] == b'.'
            }
            Self::EndsWith(suffix) => n.ends_with(suffix.as_str()),
        }
    }
}

impl fmt::Display for FqdnPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(s) => f.write_str(s),
            Self::Subdomains(s) => write!(f, "*.{s}"),
            Self::EndsWith(s) => write!(f, "*{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        FqdnPattern::parse(pattern)
            .unwrap()
            .matches(&Name::parse(name).unwrap())
    }

    // The §2.4 table, row by row.
    #[test]
    fn row_exact() {
        assert!(m("www.contoso.com", "www.contoso.com"));
        assert!(m("www.contoso.com", "WWW.Contoso.COM."));
        assert!(!m("www.contoso.com", "contoso.com"));
        assert!(!m("www.contoso.com", "a.www.contoso.com"));
    }

    #[test]
    fn row_star_dot() {
        assert!(m("*.contoso.com", "any.contoso.com"));
        assert!(m("*.contoso.com", "a.b.contoso.com"));
        assert!(!m("*.contoso.com", "contoso.com"));
        assert!(!m("*.contoso.com", "anycontoso.com"));
        assert!(m("*.Contoso.com.", "x.CONTOSO.com"));
    }

    #[test]
    fn row_star_prefix() {
        assert!(m("*contoso.com", "example.anycontoso.com"));
        assert!(m("*contoso.com", "contoso.com"));
        assert!(m("*contoso.com", "th3re4lcontoso.com"));
        assert!(m("*google.com", "foogoogle.com"));
        assert!(!m("*contoso.com", "contoso.com.evil.net"));
    }

    #[test]
    fn row_any() {
        assert!(m("*", "anything.example"));
    }

    #[test]
    fn rejected_forms() {
        for bad in [
            "www.contoso.*",
            "*.contoso.*",
            "test.*.testcom.com",
            "aabbcc*.test.local",
            "*.*.test.local",
            "www.contoso.com:8080",
            "www.contoso.com/test",
            "https://www.contoso.com",
            "",
            "a..b",
            "-a.com",
            "bücher.de",
        ] {
            assert!(FqdnPattern::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(FqdnPattern::parse("xn--bcher-kva.de").is_ok());
    }
}
