//! The matcher the application proxy asks once per connection: which application rule decides
//! (protocol, port, client address, SNI/Host name)?
//!
//! The answer is the one of `eval`'s linear loop — the first application rule in evaluation order whose
//! protocols contain (protocol, port), whose sources contain the client and one of whose targets matches
//! the name (§2.4) — found without visiting every rule:
//!
//! * rules are partitioned by (protocol, port) — the only values a rule's `protocols` can hold — so the
//!   protocol test is one hash lookup;
//! * per partition, the targets are indexed by form: `www.contoso.com` in a hash map of exact names;
//!   `*.contoso.com` in a hash map of suffixes, probed with each label suffix of the name
//!   (`a.b.contoso.com` → `b.contoso.com`, `contoso.com`, `com`); `*contoso.com` in a trie of reversed
//!   suffixes, walked along the reversed name (so `xcontoso.com` reaches `contoso.com`); `*` in a list;
//! * every index lists rule positions in ascending order; each list is scanned only up to the best
//!   candidate so far, testing the client's address, and the smallest position that passes wins.
//!
//! Rules with [`Rule::skipped`](crate::policy::Rule::skipped) are not indexed (they never match).

use crate::addr::AddrSet;
use crate::decode::AppProtocol;
use crate::fqdn::{FqdnPattern, Name};
use crate::policy::{Policy, RuleKind};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

/// Reversed-suffix trie for `*suffix` targets.
#[derive(Clone, Debug, Default)]
struct SuffixTrie {
    /// Node 0 is the root.
    nodes: Vec<TrieNode>,
}

#[derive(Clone, Debug, Default)]
struct TrieNode {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    /// Rule positions whose suffix ends here, ascending.
    rules: Vec<u32>,
}

impl SuffixTrie {
    fn insert(&mut self, suffix: &str, pos: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut node = 0usize;
        for b in suffix.bytes().rev() {
            node = match self.nodes[node].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[node].children[i].1 as usize,
                Err(i) => {
                    let next = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    let id = u32::try_from(next).expect("trie fits u32");
                    self.nodes[node].children.insert(i, (b, id));
                    next
                }
            };
        }
        push_pos(&mut self.nodes[node].rules, pos);
    }

    /// Calls `f` with the rule list of every suffix of `name` in the trie.
    fn for_each_match(&self, name: &str, mut f: impl FnMut(&[u32])) {
        if self.nodes.is_empty() {
            return;
        }
        let mut node = 0usize;
        for b in name.bytes().rev() {
            let n = &self.nodes[node];
            match n.children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => node = n.children[i].1 as usize,
                Err(_) => return,
            }
            let rules = &self.nodes[node].rules;
            if !rules.is_empty() {
                f(rules);
            }
        }
    }
}

/// Positions are pushed in ascending order; a rule listing a pattern twice is kept once.
fn push_pos(v: &mut Vec<u32>, pos: u32) {
    if v.last() != Some(&pos) {
        v.push(pos);
    }
}

/// The targets of the rules that allow one (protocol, port).
#[derive(Clone, Debug, Default)]
struct NameIndex {
    exact: HashMap<String, Vec<u32>>,
    subdomains: HashMap<String, Vec<u32>>,
    ends_with: SuffixTrie,
    any: Vec<u32>,
}

impl NameIndex {
    fn insert(&mut self, pattern: &FqdnPattern, pos: u32) {
        match pattern {
            FqdnPattern::Any => push_pos(&mut self.any, pos),
            FqdnPattern::Exact(s) => push_pos(self.exact.entry(s.clone()).or_default(), pos),
            FqdnPattern::Subdomains(s) => push_pos(self.subdomains.entry(s.clone()).or_default(), pos),
            FqdnPattern::EndsWith(s) => self.ends_with.insert(s, pos),
        }
    }

    /// Calls `f` with every list of rule positions holding a target that matches `name`.
    fn for_each_candidates(&self, name: &Name, mut f: impl FnMut(&[u32])) {
        let n = name.as_str();
        if let Some(v) = self.exact.get(n) {
            f(v);
        }
        if !self.subdomains.is_empty() {
            // Strictly below the suffix: probe what follows each dot (a name never starts with one).
            for (i, _) in n.match_indices('.') {
                if let Some(v) = self.subdomains.get(&n[i + 1..]) {
                    f(v);
                }
            }
        }
        self.ends_with.for_each_match(n, &mut f);
        if !self.any.is_empty() {
            f(&self.any);
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    rule_index: usize,
    sources: AddrSet,
}

/// The compiled application stage (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct AppIndex {
    /// Non-skipped application rules in evaluation order; a position is an index here.
    entries: Vec<Entry>,
    by_port: HashMap<(AppProtocol, u16), NameIndex>,
    ports: BTreeMap<u16, Vec<AppProtocol>>,
}

impl AppIndex {
    pub fn build(policy: &Policy) -> Self {
        let mut idx = Self {
            ports: policy.application_ports().clone(),
            ..Self::default()
        };
        for i in policy.application_rules.clone() {
            let r = &policy.rules[i];
            let RuleKind::Application(a) = &r.kind else {
                continue;
            };
            if r.skipped.is_some() {
                continue;
            }
            let pos = u32::try_from(idx.entries.len()).expect("fewer than 2^32 application rules");
            idx.entries.push(Entry {
                rule_index: i,
                sources: a.sources.clone(),
            });
            for key in &a.protocols {
                let names = idx.by_port.entry(*key).or_default();
                for t in &a.targets {
                    names.insert(&t.pattern, pos);
                }
            }
        }
        idx
    }

    /// The deciding application rule (index into [`Policy::rules`]), or `None` (no application rule
    /// matched: default deny, §1.2).
    pub fn lookup(&self, proto: AppProtocol, port: u16, src: Ipv4Addr, name: &Name) -> Option<usize> {
        let names = self.by_port.get(&(proto, port))?;
        let mut best = u32::MAX;
        names.for_each_candidates(name, |list| {
            for &pos in list {
                if pos >= best {
                    break;
                }
                if self.entries[pos as usize].sources.contains(src) {
                    best = pos;
                    break;
                }
            }
        });
        self.entries.get(best as usize).map(|e| e.rule_index)
    }

    /// TCP ports the proxy intercepts, with the protocols expected there: equal to
    /// [`Policy::application_ports`] (which also counts skipped rules, so interception does not change
    /// when an IP group empties).
    pub fn intercepted_ports(&self) -> &BTreeMap<u16, Vec<AppProtocol>> {
        &self.ports
    }

    pub fn intercepts(&self, port: u16) -> bool {
        self.ports.contains_key(&port)
    }

    /// Indexed (non-skipped) application rules.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{MemLoader, load_str};

    /// `(action, source, protocols, targets)` per rule, one collection each, in order.
    fn policy(rules: &[(&str, &str, &str, &str)]) -> Policy {
        let mut y = String::from(
            "policy:\n  ipGroups:\n    none: []\n  ruleCollectionGroups:\n    - name: g\n      priority: 100\n      ruleCollections:\n",
        );
        for (i, (action, src, protos, targets)) in rules.iter().enumerate() {
            y.push_str(&format!(
                "        - {{ruleCollectionType: FirewallPolicyFilterRuleCollection, name: c{i}, priority: {}, action: {{type: {action}}}, rules: [{{ruleType: ApplicationRule, name: r{i}, {src}, protocols: [{protos}], {targets}}}]}}\n",
                100 + i
            ));
        }
        match load_str("p.yaml", &y, &MemLoader::default()) {
            Ok(l) => l.config.policy,
            Err(e) => panic!("{e}\n{y}"),
        }
    }

    const ANY: &str = "sourceAddresses: [\"*\"]";
    const HTTPS: &str = "{protocolType: Https, port: 443}";

    fn at(p: &Policy, idx: &AppIndex, src: &str, name: &str) -> Option<String> {
        let n = Name::parse(name).unwrap();
        idx.lookup(AppProtocol::Https, 443, src.parse().unwrap(), &n)
            .map(|i| p.rules[i].name.clone())
    }

    #[test]
    fn wildcard_forms_at_their_boundaries() {
        let p = policy(&[
            ("Deny", ANY, HTTPS, "targetFqdns: [\"*.contoso.com\"]"),
            ("Allow", ANY, HTTPS, "targetFqdns: [\"*contoso.com\"]"),
            ("Allow", ANY, HTTPS, "targetFqdns: [contoso.com, \"*.fabrikam.net\"]"),
            ("Deny", ANY, HTTPS, "targetFqdns: [\"*\"]"),
        ]);
        let idx = AppIndex::build(&p);
        let s = "10.0.0.1";
        assert_eq!(at(&p, &idx, s, "x.contoso.com").as_deref(), Some("r0"));
        assert_eq!(at(&p, &idx, s, "a.b.contoso.com").as_deref(), Some("r0"));
        assert_eq!(
            at(&p, &idx, s, "contoso.com").as_deref(),
            Some("r1"),
            "*.contoso.com does not match contoso.com"
        );
        assert_eq!(at(&p, &idx, s, "xcontoso.com").as_deref(), Some("r1"));
        assert_eq!(at(&p, &idx, s, "a.xcontoso.com").as_deref(), Some("r1"));
        assert_eq!(at(&p, &idx, s, "ontoso.com").as_deref(), Some("r3"));
        assert_eq!(at(&p, &idx, s, "fabrikam.net").as_deref(), Some("r3"));
        assert_eq!(at(&p, &idx, s, "www.fabrikam.net").as_deref(), Some("r2"));
        assert_eq!(at(&p, &idx, s, "contoso.com.evil.net").as_deref(), Some("r3"));
        assert_eq!(
            idx.lookup(
                AppProtocol::Http,
                443,
                s.parse().unwrap(),
                &Name::parse("contoso.com").unwrap()
            ),
            None
        );
        assert_eq!(
            idx.lookup(
                AppProtocol::Https,
                8443,
                s.parse().unwrap(),
                &Name::parse("contoso.com").unwrap()
            ),
            None
        );
    }

    #[test]
    fn sources_protocols_and_skipped_rules() {
        let p = policy(&[
            ("Deny", "sourceIpGroups: [none]", HTTPS, "targetFqdns: [\"*\"]"),
            (
                "Deny",
                "sourceAddresses: [10.0.0.0/24]",
                HTTPS,
                "targetFqdns: [a.example]",
            ),
            (
                "Allow",
                ANY,
                "{protocolType: Http, port: 8080}, {protocolType: Https, port: 443}",
                "targetFqdns: [\"*example\"]",
            ),
        ]);
        let idx = AppIndex::build(&p);
        assert_eq!(idx.len(), 2, "the skipped rule is not indexed");
        assert_eq!(at(&p, &idx, "10.0.0.255", "a.example").as_deref(), Some("r1"));
        assert_eq!(at(&p, &idx, "10.0.1.0", "a.example").as_deref(), Some("r2"));
        assert_eq!(at(&p, &idx, "10.0.0.0", "b.example").as_deref(), Some("r2"));
        let n = Name::parse("a.example").unwrap();
        assert_eq!(
            idx.lookup(AppProtocol::Http, 8080, "10.0.0.1".parse().unwrap(), &n)
                .map(|i| p.rules[i].name.as_str()),
            Some("r2")
        );
        assert_eq!(idx.intercepted_ports(), p.application_ports());
        assert!(idx.intercepts(8080) && idx.intercepts(443) && !idx.intercepts(80));
    }

    #[test]
    fn fqdn_tags_are_indexed() {
        let p = policy(&[("Allow", ANY, HTTPS, "fqdnTags: [AzureKubernetesService]")]);
        let idx = AppIndex::build(&p);
        assert_eq!(at(&p, &idx, "10.0.0.1", "mcr.microsoft.com").as_deref(), Some("r0"));
        assert_eq!(
            at(&p, &idx, "10.0.0.1", "x.hcp.westeurope.azmk8s.io").as_deref(),
            Some("r0")
        );
        assert_eq!(at(&p, &idx, "10.0.0.1", "azmk8s.io"), None);
    }
}
