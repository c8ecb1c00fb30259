//! Node tree → per-file document model. Every field is checked here for its own syntax (addresses, ports,
//! names, wildcards); cross-references (IP groups, base policy, ordering) are linked in `compile`.
//! Unknown fields are errors, pointing at the key.

use crate::addr::{AddrEntry, AddrError, Ipv4Range, parse_addr};
use crate::diag::{Diags, Loc};
use crate::fqdn::{FqdnPattern, Name};
use crate::fqdn_tags::{self, FqdnTag};
use crate::port::{PortRange, parse_port_range};
use crate::source::{Node, Value};
use std::net::{Ipv4Addr, SocketAddrV4};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spanned<T> {
    pub value: T,
    pub loc: Loc,
}

#[derive(Debug, Default)]
pub struct ConfigDoc {
    pub appliance: Option<ApplianceDoc>,
    pub policy: Option<PolicyDoc>,
}

#[derive(Debug, Default, Clone)]
pub struct ApplianceDoc {
    pub loc: Loc,
    pub internal: Option<String>,
    pub external: Option<String>,
    pub snat_addresses: Vec<Spanned<Ipv4Addr>>,
    pub management: Option<SocketAddrV4>,
    pub dns_proxy_listen: Vec<SocketAddrV4>,
    pub flow_log: Option<String>,
    pub threat_intel_feed: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum ThreatIntelMode {
    Off,
    Alert,
    Deny,
}

#[derive(Debug, Default)]
pub struct PolicyDoc {
    pub loc: Loc,
    pub base_policy: Option<Spanned<String>>,
    pub threat_intel_mode: Option<Spanned<ThreatIntelMode>>,
    pub ti_allow_ips: Vec<Ipv4Range>,
    pub ti_allow_fqdns: Vec<FqdnPattern>,
    pub dns: Option<DnsDoc>,
    pub snat: Option<SnatDoc>,
    pub ip_groups: Vec<IpGroupDoc>,
    pub groups: Vec<RcgDoc>,
}

#[derive(Debug, Default, Clone)]
pub struct DnsDoc {
    pub loc: Loc,
    pub enable_proxy: Option<bool>,
    pub servers: Option<Vec<Ipv4Addr>>,
    pub require_proxy_for_network_rules: Option<bool>,
}

#[derive(Debug, Default, Clone)]
pub struct SnatDoc {
    pub loc: Loc,
    pub private_ranges: Option<Vec<Ipv4Range>>,
}

#[derive(Debug, Clone)]
pub struct IpGroupDoc {
    pub name: Spanned<String>,
    pub ranges: Vec<Ipv4Range>,
}

#[derive(Debug)]
pub struct RcgDoc {
    pub loc: Loc,
    pub name: Spanned<String>,
    pub priority: Spanned<u32>,
    pub collections: Vec<RcDoc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Action {
    Allow,
    Deny,
    #[serde(rename = "DNAT")]
    Dnat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectionType {
    Filter,
    Nat,
}

#[derive(Debug)]
pub struct RcDoc {
    pub loc: Loc,
    pub kind: CollectionType,
    pub name: Spanned<String>,
    pub priority: Spanned<u32>,
    pub action: Action,
    pub rules: Vec<RuleDoc>,
}

#[derive(Debug)]
pub struct RuleDoc {
    pub loc: Loc,
    pub name: Spanned<String>,
    pub body: RuleBody,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum IpProtocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "ICMP")]
    Icmp,
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum AppProtocol {
    Http,
    Https,
}

#[derive(Debug, Default)]
pub struct Endpoints {
    pub addresses: Vec<Ipv4Range>,
    pub groups: Vec<Spanned<String>>,
    /// Location of the first of the two fields, for "needs a source" errors.
    pub present: bool,
}

#[derive(Debug)]
pub enum RuleBody {
    Network {
        protocols: Vec<IpProtocol>,
        protocols_loc: Loc,
        source: Endpoints,
        destination: Endpoints,
        fqdns: Vec<Spanned<Name>>,
        ports: Vec<PortRange>,
        ports_loc: Loc,
    },
    Application {
        source: Endpoints,
        protocols: Vec<(AppProtocol, u16)>,
        targets: Vec<FqdnPattern>,
        tags: Vec<&'static FqdnTag>,
        headers: Vec<(String, String)>,
    },
    Nat {
        protocols: Vec<IpProtocol>,
        source: Endpoints,
        destinations: Vec<Ipv4Addr>,
        port: Option<u16>,
        translated: Option<NatTarget>,
        translated_port: Option<u16>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum NatTarget {
    Address(Ipv4Addr),
    Fqdn(Name),
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Generic field access.

/// The keys of one mapping, handed out one by one; whatever is left over is an unknown field.
struct Fields<'a> {
    node: &'a Node,
    what: &'static str,
    entries: &'a [(Node, Node)],
    used: Vec<bool>,
    asked: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn of(d: &mut Diags, node: &'a Node, what: &'static str) -> Option<Self> {
        match &node.value {
            Value::Map(entries) => Some(Self {
                node,
                what,
                entries,
                used: vec![false; entries.len()],
                asked: Vec::new(),
            }),
            Value::Null => Some(Self {
                node,
                what,
                entries: &[],
                used: Vec::new(),
                asked: Vec::new(),
            }),
            _ => {
                d.error(node.loc, format!("{what} must be a mapping, found {}", node.kind()));
                None
            }
        }
    }

    /// The value of `key`, or `None` when absent or null.
    fn get(&mut self, key: &'static str) -> Option<&'a Node> {
        self.asked.push(key);
        let i = self.entries.iter().position(|(k, _)| k.as_scalar() == Some(key))?;
        self.used[i] = true;
        let v = &self.entries[i].1;
        (v.value != Value::Null).then_some(v)
    }

    fn require(&mut self, d: &mut Diags, key: &'static str) -> Option<&'a Node> {
        let v = self.get(key);
        if v.is_none() {
            d.error(self.node.loc, format!("{} is missing `{key}`", self.what));
        }
        v
    }

    fn finish(self, d: &mut Diags, unsupported: &[(&str, &str)]) {
        for (i, (k, _)) in self.entries.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            let key = k.as_scalar().unwrap_or_default();
            if let Some((_, why)) = unsupported.iter().find(|(u, _)| *u == key) {
                d.error(k.loc, format!("`{key}` is not supported by portcullis: {why}"));
                continue;
            }
            let mut msg = format!("unknown field `{key}` in {}", self.what);
            if let Some(best) = closest(key, &self.asked) {
                msg.push_str(&format!("; did you mean `{best}`?"));
            } else if !self.asked.is_empty() {
                msg.push_str(&format!("; expected one of: {}", self.asked.join(", ")));
            }
            d.error(k.loc, msg);
        }
    }
}

fn closest<'k>(key: &str, candidates: &[&'k str]) -> Option<&'k str> {
    let lower = key.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), *c))
        .filter(|(dist, c)| *dist <= 2.max(c.len() / 4))
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn string(d: &mut Diags, node: &Node, what: &str) -> Option<String> {
    match &node.value {
        Value::Scalar { text, .. } => Some(text.clone()),
        _ => {
            d.error(node.loc, format!("{what} must be a string, found {}", node.kind()));
            None
        }
    }
}

fn spanned_string(d: &mut Diags, node: &Node, what: &str) -> Option<Spanned<String>> {
    string(d, node, what).map(|value| Spanned { value, loc: node.loc })
}

fn boolean(d: &mut Diags, node: &Node, what: &str) -> Option<bool> {
    match node.as_scalar().map(str::to_ascii_lowercase).as_deref() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => {
            d.error(node.loc, format!("{what} must be true or false"));
            None
        }
    }
}

fn integer(d: &mut Diags, node: &Node, what: &str) -> Option<i64> {
    match node.as_scalar().and_then(|s| s.trim().parse::<i64>().ok()) {
        Some(v) => Some(v),
        None => {
            d.error(node.loc, format!("{what} must be an integer"));
            None
        }
    }
}

/// Items of a list field; a null field is an empty list.
fn list<'a>(d: &mut Diags, node: Option<&'a Node>, what: &str) -> &'a [Node] {
    match node.map(|n| (n, &n.value)) {
        None => &[],
        Some((_, Value::Seq(items))) => items,
        Some((n, _)) => {
            d.error(n.loc, format!("{what} must be a list, found {}; write [ … ]", n.kind()));
            &[]
        }
    }
}

fn string_list(d: &mut Diags, node: Option<&Node>, what: &str) -> Vec<Spanned<String>> {
    let items = list(d, node, what);
    items.iter().filter_map(|n| spanned_string(d, n, what)).collect()
}

/// Case-insensitive enum value (Azure accepts `Tcp`, `TCP`, `tcp`).
fn one_of<T: Copy>(d: &mut Diags, node: &Node, what: &str, options: &[(&str, T)]) -> Option<T> {
    let s = string(d, node, what)?;
    if let Some((_, v)) = options.iter().find(|(name, _)| name.eq_ignore_ascii_case(s.trim())) {
        return Some(*v);
    }
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    d.error(node.loc, format!("{what} `{s}` is not one of: {}", names.join(", ")));
    None
}

/// Azure resource names (policies, groups, collections, rules, IP groups):
/// `^[^_\W][\w-._]{0,79}(?<![-.])$`.
fn check_name(d: &mut Diags, name: &Spanned<String>, what: &str) {
    let s = name.value.as_str();
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    let problem = if s.is_empty() {
        Some("must not be empty".to_string())
    } else if s.chars().count() > 80 {
        Some("must be at most 80 characters".to_string())
    } else if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("must start with a letter or digit".to_string())
    } else if s.ends_with(['-', '.']) {
        Some("must end with a letter, digit or `_`".to_string())
    } else {
        s.chars()
            .find(|c| !ok_char(*c))
            .map(|c| format!("may only contain letters, digits, `_`, `.` and `-` (found `{c}`)"))
    };
    if let Some(p) = problem {
        d.error(name.loc, format!("{what} `{s}` {p}"));
    }
}

fn priority(d: &mut Diags, node: &Node, what: &str) -> Option<u32> {
    let v = integer(d, node, what)?;
    if !(100..=65000).contains(&v) {
        d.error(
            node.loc,
            format!("{what} {v} is out of range: priorities run from 100 (first) to 65000 (last)"),
        );
        return None;
    }
    Some(v as u32)
}

fn address_entry(d: &mut Diags, node: &Node, what: &str) -> Option<Ipv4Range> {
    let s = string(d, node, what)?;
    match parse_addr(&s) {
        Ok(AddrEntry { range, host_bits_set }) => {
            if host_bits_set {
                d.warn(node.loc, format!("`{s}` has host bits set; it means {range}"));
            }
            Some(range)
        }
        Err(e) => {
            d.error(node.loc, e.to_string());
            None
        }
    }
}

fn addresses(d: &mut Diags, node: Option<&Node>, what: &str) -> Vec<Ipv4Range> {
    let items = list(d, node, what);
    items.iter().filter_map(|n| address_entry(d, n, what)).collect()
}

fn ipv4(d: &mut Diags, node: &Node, what: &str) -> Option<Ipv4Addr> {
    let s = string(d, node, what)?;
    match s.trim().parse::<Ipv4Addr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            let msg = match parse_addr(&s) {
                Err(e @ (AddrError::Ipv6(_) | AddrError::ServiceTag(_))) => e.to_string(),
                _ => format!("{what} must be a single IPv4 address, found `{s}`"),
            };
            d.error(node.loc, msg);
            None
        }
    }
}

fn socket(d: &mut Diags, node: &Node, what: &str) -> Option<SocketAddrV4> {
    let s = string(d, node, what)?;
    match s.trim().parse::<SocketAddrV4>() {
        Ok(a) => Some(a),
        Err(_) => {
            d.error(node.loc, format!("{what} must be IPv4:port, found `{s}`"));
            None
        }
    }
}

/// IP group references: a name, or an Azure resource id ending in `/ipGroups/<name>`.
fn group_refs(d: &mut Diags, node: Option<&Node>, what: &str) -> Vec<Spanned<String>> {
    string_list(d, node, what)
        .into_iter()
        .map(|s| {
            let name = s.value.rsplit('/').next().unwrap_or_default().to_string();
            Spanned {
                value: name,
                loc: s.loc,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The document.

const UNSUPPORTED_POLICY: &[(&str, &str)] = &[
    (
        "intrusionDetection",
        "IDPS (Premium) is not implemented; remove the section",
    ),
    ("transportSecurity", "TLS inspection (Premium) is not implemented"),
    (
        "explicitProxy",
        "explicit proxy mode is not implemented; portcullis is a transparent next hop",
    ),
    ("sql", "SQL redirect settings are not implemented"),
];

const UNSUPPORTED_APP_RULE: &[(&str, &str)] = &[
    (
        "targetUrls",
        "URL rules need TLS inspection (Premium), which portcullis does not do; use targetFqdns",
    ),
    (
        "webCategories",
        "web categories need Microsoft's categorisation service; use targetFqdns",
    ),
    ("terminateTLS", "TLS inspection (Premium) is not implemented"),
];

pub fn decode(d: &mut Diags, root: &Node) -> ConfigDoc {
    let mut doc = ConfigDoc::default();
    let Some(mut f) = Fields::of(d, root, "the config file") else {
        return doc;
    };
    if let Some(n) = f.get("appliance") {
        doc.appliance = appliance(d, n);
    }
    if let Some(n) = f.get("policy") {
        doc.policy = policy(d, n);
    } else {
        d.error(root.loc, "the config file has no `policy` section");
    }
    f.finish(d, &[]);
    doc
}

fn interface_name(d: &mut Diags, node: &Node, what: &str) -> Option<String> {
    let s = string(d, node, what)?;
    if s.is_empty() || s.len() > 15 || s.contains(['/', ' ', ':']) {
        d.error(
            node.loc,
            format!("{what} `{s}` is not a Linux interface name (1–15 characters, no `/`, `:` or spaces)"),
        );
        return None;
    }
    Some(s)
}

fn appliance(d: &mut Diags, node: &Node) -> Option<ApplianceDoc> {
    let mut f = Fields::of(d, node, "`appliance`")?;
    let mut a = ApplianceDoc {
        loc: node.loc,
        ..Default::default()
    };
    if let Some(n) = f.require(d, "interfaces")
        && let Some(mut i) = Fields::of(d, n, "`appliance.interfaces`")
    {
        a.internal = i
            .require(d, "internal")
            .and_then(|n| interface_name(d, n, "interfaces.internal"));
        a.external = i
            .get("external")
            .and_then(|n| interface_name(d, n, "interfaces.external"));
        i.finish(d, &[]);
    }
    for n in list(d, f.get("snatAddresses"), "snatAddresses") {
        if let Some(ip) = ipv4(d, n, "each snatAddresses entry") {
            a.snat_addresses.push(Spanned { value: ip, loc: n.loc });
        }
    }
    a.management = f.get("management").and_then(|n| socket(d, n, "management"));
    for n in list(d, f.get("dnsProxyListen"), "dnsProxyListen") {
        if let Some(s) = socket(d, n, "each dnsProxyListen entry") {
            a.dns_proxy_listen.push(s);
        }
    }
    a.flow_log = f.get("flowLog").and_then(|n| string(d, n, "flowLog"));
    a.threat_intel_feed = f.get("threatIntelFeed").and_then(|n| string(d, n, "threatIntelFeed"));
    f.finish(d, &[]);
    Some(a)
}

fn policy(d: &mut Diags, node: &Node) -> Option<PolicyDoc> {
    let mut f = Fields::of(d, node, "`policy`")?;
    let mut p = PolicyDoc {
        loc: node.loc,
        ..Default::default()
    };
    p.base_policy = f.get("basePolicy").and_then(|n| spanned_string(d, n, "basePolicy"));
    p.threat_intel_mode = f.get("threatIntelMode").and_then(|n| {
        let modes = [
            ("Off", ThreatIntelMode::Off),
            ("Alert", ThreatIntelMode::Alert),
            ("Deny", ThreatIntelMode::Deny),
        ];
        one_of(d, n, "threatIntelMode", &modes).map(|value| Spanned { value, loc: n.loc })
    });
    if let Some(n) = f.get("threatIntelWhitelist")
        && let Some(mut w) = Fields::of(d, n, "`threatIntelWhitelist`")
    {
        p.ti_allow_ips = addresses(d, w.get("ipAddresses"), "threatIntelWhitelist.ipAddresses");
        for s in string_list(d, w.get("fqdns"), "threatIntelWhitelist.fqdns") {
            match FqdnPattern::parse(&s.value) {
                Ok(pat) => p.ti_allow_fqdns.push(pat),
                Err(e) => d.error(s.loc, e),
            }
        }
        w.finish(d, &[]);
    }
    if let Some(n) = f.get("dnsSettings")
        && let Some(mut s) = Fields::of(d, n, "`dnsSettings`")
    {
        let mut dns = DnsDoc {
            loc: n.loc,
            ..Default::default()
        };
        dns.enable_proxy = s.get("enableProxy").and_then(|n| boolean(d, n, "enableProxy"));
        if let Some(list_node) = s.get("servers") {
            let items = list(d, Some(list_node), "dnsSettings.servers");
            if items.len() > 15 {
                d.error(list_node.loc, "dnsSettings.servers allows at most 15 servers");
            }
            dns.servers = Some(items.iter().filter_map(|n| ipv4(d, n, "each DNS server")).collect());
        }
        dns.require_proxy_for_network_rules = s
            .get("requireProxyForNetworkRules")
            .and_then(|n| boolean(d, n, "requireProxyForNetworkRules"));
        s.finish(d, &[]);
        p.dns = Some(dns);
    }
    if let Some(n) = f.get("snat")
        && let Some(mut s) = Fields::of(d, n, "`snat`")
    {
        let mut snat = SnatDoc {
            loc: n.loc,
            ..Default::default()
        };
        if let Some(ranges) = s.get("privateRanges") {
            let mut out = Vec::new();
            for item in list(d, Some(ranges), "snat.privateRanges") {
                if item
                    .as_scalar()
                    .is_some_and(|t| t.eq_ignore_ascii_case("IANAPrivateRanges"))
                {
                    out.extend(
                        crate::addr::IANA_PRIVATE_RANGES
                            .iter()
                            .filter_map(|r| parse_addr(r).ok())
                            .map(|e| e.range),
                    );
                } else if let Some(r) = address_entry(d, item, "each snat.privateRanges entry") {
                    out.push(r);
                }
            }
            snat.private_ranges = Some(out);
        }
        if let Some(n) = s.get("autoLearnPrivateRanges") {
            let opts = [("Enabled", true), ("Disabled", false)];
            if one_of(d, n, "autoLearnPrivateRanges", &opts) == Some(true) {
                d.error(n.loc, "autoLearnPrivateRanges: Enabled needs Azure Route Server, which portcullis cannot query; list privateRanges instead");
            }
        }
        s.finish(d, &[]);
        p.snat = Some(snat);
    }
    if let Some(n) = f.get("ipGroups") {
        match &n.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    let name = Spanned {
                        value: k.as_scalar().unwrap_or_default().to_string(),
                        loc: k.loc,
                    };
                    check_name(d, &name, "IP group name");
                    let items = list(d, Some(v), "an IP group");
                    if items.len() > 5000 {
                        d.error(v.loc, "an IP group holds at most 5,000 addresses or prefixes");
                    }
                    let ranges = items
                        .iter()
                        .filter_map(|n| address_entry(d, n, "an IP group entry"))
                        .collect();
                    p.ip_groups.push(IpGroupDoc { name, ranges });
                }
            }
            _ => d.error(n.loc, "ipGroups must be a mapping of group name to a list of addresses"),
        }
    }
    if let Some(n) = f.get("ruleCollectionGroups") {
        for g in list(d, Some(n), "ruleCollectionGroups") {
            if let Some(g) = group(d, g) {
                p.groups.push(g);
            }
        }
    }
    f.finish(d, UNSUPPORTED_POLICY);
    Some(p)
}

fn group(d: &mut Diags, node: &Node) -> Option<RcgDoc> {
    let mut f = Fields::of(d, node, "a rule collection group")?;
    let name = f.require(d, "name").and_then(|n| spanned_string(d, n, "name"));
    let prio = f
        .require(d, "priority")
        .and_then(|n| priority(d, n, "priority").map(|v| Spanned { value: v, loc: n.loc }));
    let mut collections = Vec::new();
    for c in list(d, f.get("ruleCollections"), "ruleCollections") {
        if let Some(c) = collection(d, c) {
            collections.push(c);
        }
    }
    f.finish(d, &[]);
    let name = name?;
    check_name(d, &name, "rule collection group name");
    Some(RcgDoc {
        loc: node.loc,
        name,
        priority: prio?,
        collections,
    })
}

fn collection(d: &mut Diags, node: &Node) -> Option<RcDoc> {
    let mut f = Fields::of(d, node, "a rule collection")?;
    let kinds = [
        ("FirewallPolicyFilterRuleCollection", CollectionType::Filter),
        ("FirewallPolicyNatRuleCollection", CollectionType::Nat),
    ];
    let kind = f
        .require(d, "ruleCollectionType")
        .and_then(|n| one_of(d, n, "ruleCollectionType", &kinds));
    let name = f.require(d, "name").and_then(|n| spanned_string(d, n, "name"));
    let prio = f
        .require(d, "priority")
        .and_then(|n| priority(d, n, "priority").map(|v| Spanned { value: v, loc: n.loc }));
    let action = f.require(d, "action").and_then(|n| {
        let mut a = Fields::of(d, n, "`action`")?;
        let opts = [("Allow", Action::Allow), ("Deny", Action::Deny), ("DNAT", Action::Dnat)];
        let act = a.require(d, "type").map(|t| (t, one_of(d, t, "action type", &opts)));
        a.finish(d, &[]);
        let (t, act) = act?;
        match (kind, act?) {
            (Some(CollectionType::Filter), Action::Dnat) => {
                d.error(t.loc, "a FirewallPolicyFilterRuleCollection takes action Allow or Deny; DNAT belongs to a FirewallPolicyNatRuleCollection");
                None
            }
            (Some(CollectionType::Nat), a @ (Action::Allow | Action::Deny)) => {
                d.error(t.loc, format!("a FirewallPolicyNatRuleCollection takes action DNAT, not {a:?}"));
                None
            }
            (_, a) => Some(a),
        }
    });
    let mut rules = Vec::new();
    let mut first_type: Option<(&str, Loc)> = None;
    for r in list(d, f.get("rules"), "rules") {
        let Some(rule) = rule(d, r, kind) else { continue };
        let t = match rule.body {
            RuleBody::Network { .. } => "NetworkRule",
            RuleBody::Application { .. } => "ApplicationRule",
            RuleBody::Nat { .. } => "NatRule",
        };
        match first_type {
            None => first_type = Some((t, rule.loc)),
            Some((first, at)) if first != t => {
                d.error(
                    rule.loc,
                    format!("all rules of a collection must be of one type: this is a {t}, the first rule (line {}) is a {first}", at.pos.line),
                );
                continue;
            }
            Some(_) => {}
        }
        rules.push(rule);
    }
    let mut names: Vec<&Spanned<String>> = Vec::new();
    for r in &rules {
        if let Some(prev) = names.iter().find(|n| n.value.eq_ignore_ascii_case(&r.name.value)) {
            d.error(
                r.name.loc,
                format!(
                    "rule name `{}` is used twice in this collection (first at line {})",
                    r.name.value, prev.loc.pos.line
                ),
            );
        }
        names.push(&r.name);
    }
    f.finish(d, &[]);
    let name = name?;
    check_name(d, &name, "rule collection name");
    Some(RcDoc {
        loc: node.loc,
        kind: kind?,
        name,
        priority: prio?,
        action: action?,
        rules,
    })
}

fn ip_protocols(d: &mut Diags, node: Option<&Node>, allowed: &[(&str, IpProtocol)], what: &str) -> Vec<IpProtocol> {
    let items = list(d, node, what);
    items
        .iter()
        .filter_map(|n| one_of(d, n, "ipProtocols entry", allowed))
        .collect()
}

fn endpoints(d: &mut Diags, f: &mut Fields<'_>, addr_key: &'static str, group_key: &'static str) -> Endpoints {
    let a = f.get(addr_key);
    let g = f.get(group_key);
    Endpoints {
        present: a.is_some() || g.is_some(),
        addresses: addresses(d, a, addr_key),
        groups: group_refs(d, g, group_key),
    }
}

fn rule(d: &mut Diags, node: &Node, kind: Option<CollectionType>) -> Option<RuleDoc> {
    let mut f = Fields::of(d, node, "a rule")?;
    let types = [("NetworkRule", 0u8), ("ApplicationRule", 1), ("NatRule", 2)];
    let type_node = f.require(d, "ruleType");
    let rtype = type_node.and_then(|n| one_of(d, n, "ruleType", &types));
    let name = f.require(d, "name").and_then(|n| spanned_string(d, n, "name"));
    let _ = f.get("description").and_then(|n| string(d, n, "description"));
    if let (Some(t), Some(k), Some(tn)) = (rtype, kind, type_node) {
        let fits = matches!((t, k), (0 | 1, CollectionType::Filter) | (2, CollectionType::Nat));
        if !fits {
            let (rt, ct) = if t == 2 {
                (
                    "NatRule",
                    "a FirewallPolicyFilterRuleCollection (NatRules go in a FirewallPolicyNatRuleCollection)",
                )
            } else {
                (
                    if t == 0 { "NetworkRule" } else { "ApplicationRule" },
                    "a FirewallPolicyNatRuleCollection (only NatRules)",
                )
            };
            d.error(tn.loc, format!("a {rt} cannot be in {ct}"));
            return None;
        }
    }
    let body = match rtype? {
        0 => network_rule(d, &mut f, node),
        1 => application_rule(d, &mut f, node),
        _ => nat_rule(d, &mut f, node),
    };
    let unsupported: &[(&str, &str)] = if rtype == Some(1) { UNSUPPORTED_APP_RULE } else { &[] };
    f.finish(d, unsupported);
    let name = name?;
    check_name(d, &name, "rule name");
    Some(RuleDoc {
        loc: node.loc,
        name,
        body: body?,
    })
}

fn network_rule(d: &mut Diags, f: &mut Fields<'_>, node: &Node) -> Option<RuleBody> {
    let protos = [
        ("TCP", IpProtocol::Tcp),
        ("UDP", IpProtocol::Udp),
        ("ICMP", IpProtocol::Icmp),
        ("Any", IpProtocol::Any),
    ];
    let pnode = f.require(d, "ipProtocols");
    let protocols = ip_protocols(d, pnode, &protos, "ipProtocols");
    if let Some(pn) = pnode.filter(|n| matches!(&n.value, Value::Seq(items) if items.is_empty())) {
        d.error(pn.loc, "ipProtocols must list at least one of TCP, UDP, ICMP, Any");
    }
    let source = endpoints(d, f, "sourceAddresses", "sourceIpGroups");
    let destination = endpoints(d, f, "destinationAddresses", "destinationIpGroups");
    let mut fqdns = Vec::new();
    for s in string_list(d, f.get("destinationFqdns"), "destinationFqdns") {
        if s.value.contains('*') {
            d.error(s.loc, format!("`{}`: destinationFqdns take exact names; wildcards are only allowed in application rules' targetFqdns", s.value));
            continue;
        }
        match Name::parse(&s.value) {
            Ok(n) => fqdns.push(Spanned { value: n, loc: s.loc }),
            Err(e) => d.error(s.loc, e),
        }
    }
    let pnode_ports = f.require(d, "destinationPorts");
    let mut ports = Vec::new();
    for p in string_list(d, pnode_ports, "destinationPorts") {
        match parse_port_range(&p.value, 1, 65535) {
            Ok(r) => ports.push(r),
            Err(e) => d.error(p.loc, e),
        }
    }
    if !source.present {
        d.error(node.loc, "a network rule needs sourceAddresses or sourceIpGroups");
    }
    if !destination.present && fqdns.is_empty() {
        d.error(
            node.loc,
            "a network rule needs destinationAddresses, destinationIpGroups or destinationFqdns",
        );
    }
    Some(RuleBody::Network {
        protocols,
        protocols_loc: pnode.map_or(node.loc, |n| n.loc),
        source,
        destination,
        fqdns,
        ports,
        ports_loc: pnode_ports.map_or(node.loc, |n| n.loc),
    })
}

const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "upgrade",
    "via",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
    "authorization",
    "cookie",
    "set-cookie",
    "content-security-policy",
    "strict-transport-security",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "forwarded",
    "metadata",
];

fn application_rule(d: &mut Diags, f: &mut Fields<'_>, node: &Node) -> Option<RuleBody> {
    let source = endpoints(d, f, "sourceAddresses", "sourceIpGroups");
    if !source.present {
        d.error(node.loc, "an application rule needs sourceAddresses or sourceIpGroups");
    }
    let mut protocols = Vec::new();
    let pnode = f.require(d, "protocols");
    for p in list(d, pnode, "protocols") {
        let Some(mut pf) = Fields::of(d, p, "a protocol entry") else {
            continue;
        };
        let kinds = [("Http", AppProtocol::Http), ("Https", AppProtocol::Https)];
        let t = pf.require(d, "protocolType").and_then(|n| {
            if n.as_scalar().is_some_and(|s| s.eq_ignore_ascii_case("mssql")) {
                d.error(
                    n.loc,
                    "protocolType Mssql (SQL FQDN filtering) is not supported; use a network rule for TCP 1433",
                );
                return None;
            }
            one_of(d, n, "protocolType", &kinds)
        });
        let port = pf.require(d, "port").and_then(|n| {
            let v = integer(d, n, "port")?;
            if !(0..=64000).contains(&v) {
                d.error(n.loc, format!("application rule port {v} is out of range 0-64000"));
                return None;
            }
            Some(v as u16)
        });
        pf.finish(d, &[]);
        if let (Some(t), Some(port)) = (t, port) {
            protocols.push((t, port));
        }
    }
    if let Some(pn) = pnode.filter(|n| matches!(&n.value, Value::Seq(items) if items.is_empty())) {
        d.error(pn.loc, "protocols must list at least one {protocolType, port}");
    }
    let mut targets = Vec::new();
    let target_node = f.get("targetFqdns");
    let tag_node = f.get("fqdnTags");
    let given = |n: Option<&Node>| matches!(n.map(|n| &n.value), Some(Value::Seq(items)) if !items.is_empty());
    if !given(target_node) && !given(tag_node) {
        d.error(node.loc, "an application rule needs targetFqdns or fqdnTags");
    }
    for s in string_list(d, target_node, "targetFqdns") {
        match FqdnPattern::parse(&s.value) {
            Ok(p) => targets.push(p),
            Err(e) => d.error(s.loc, e),
        }
    }
    let mut tags = Vec::new();
    for s in string_list(d, tag_node, "fqdnTags") {
        match fqdn_tags::lookup(&s.value) {
            Some(t) => tags.push(t),
            None => {
                let known: Vec<&str> = fqdn_tags::ALL.iter().map(|t| t.name).collect();
                d.error(
                    s.loc,
                    format!("unknown FQDN tag `{}`; built-in tags: {}", s.value, known.join(", ")),
                );
            }
        }
    }
    if let Some(n) = f.get("destinationAddresses") {
        let ignored = addresses(d, Some(n), "destinationAddresses");
        if !ignored.is_empty() {
            d.warn(n.loc, "destinationAddresses has no effect in application rules (Azure ignores it too): the destination is the name in SNI/Host, resolved by the appliance");
        }
    }
    let mut headers = Vec::new();
    for h in list(d, f.get("httpHeadersToInsert"), "httpHeadersToInsert") {
        let Some(mut hf) = Fields::of(d, h, "an httpHeadersToInsert entry") else {
            continue;
        };
        let name = hf
            .require(d, "headerName")
            .and_then(|n| spanned_string(d, n, "headerName"));
        let value = hf.require(d, "headerValue").and_then(|n| string(d, n, "headerValue"));
        hf.finish(d, &[]);
        let (Some(name), Some(value)) = (name, value) else {
            continue;
        };
        let lower = name.value.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            d.error(
                name.loc,
                format!("header `{}` is reserved and cannot be inserted", name.value),
            );
        } else if name.value.is_empty()
            || name.value.len() > 100
            || !name.value.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        {
            d.error(
                name.loc,
                "headerName must be 1–100 visible ASCII characters without `:`",
            );
        } else if value.len() > 16000 || value.contains(['\r', '\n']) {
            d.error(name.loc, "headerValue must be at most 16,000 characters on one line");
        } else {
            headers.push((name.value, value));
        }
    }
    if headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() > 16 * 1024 {
        d.error(node.loc, "httpHeadersToInsert may add at most 16 KB per rule");
    }
    Some(RuleBody::Application {
        source,
        protocols,
        targets,
        tags,
        headers,
    })
}

fn nat_rule(d: &mut Diags, f: &mut Fields<'_>, node: &Node) -> Option<RuleBody> {
    let protos = [
        ("TCP", IpProtocol::Tcp),
        ("UDP", IpProtocol::Udp),
        ("Any", IpProtocol::Any),
        ("ICMP", IpProtocol::Icmp),
    ];
    let pnode = f.require(d, "ipProtocols");
    let protocols = ip_protocols(d, pnode, &protos, "ipProtocols");
    if protocols.contains(&IpProtocol::Icmp) {
        d.error(
            pnode.map_or(node.loc, |n| n.loc),
            "DNAT translates ports: a NAT rule takes TCP, UDP or Any, not ICMP",
        );
    }
    let source = endpoints(d, f, "sourceAddresses", "sourceIpGroups");
    if !source.present {
        d.error(node.loc, "a NAT rule needs sourceAddresses or sourceIpGroups");
    }
    let dnode = f.require(d, "destinationAddresses");
    let dest_items = list(d, dnode, "destinationAddresses");
    if let (Some(dn), true) = (dnode, dest_items.is_empty()) {
        d.error(
            dn.loc,
            "a NAT rule needs the appliance address it listens on in destinationAddresses",
        );
    }
    let destinations: Vec<Ipv4Addr> = dest_items
        .iter()
        .filter_map(|n| ipv4(d, n, "a NAT rule destination (the appliance's address)"))
        .collect();
    let port_node = f.require(d, "destinationPorts");
    let ports = string_list(d, port_node, "destinationPorts");
    let mut port = None;
    match ports.as_slice() {
        [p] => match parse_port_range(&p.value, 1, 63999) {
            Ok(r) if r.lo == r.hi => port = Some(r.lo),
            Ok(_) => d.error(
                p.loc,
                "a NAT rule translates one port: give a single destination port, not a range",
            ),
            Err(e) => d.error(
                p.loc,
                format!("{e} (DNAT ports 64000-65535 are not supported, as in Azure)"),
            ),
        },
        [] if port_node.is_some() => d.error(
            port_node.map_or(node.loc, |n| n.loc),
            "a NAT rule needs one destination port",
        ),
        [] => {}
        [_, second, ..] => d.error(
            second.loc,
            "a NAT rule translates one port: give exactly one destinationPorts entry",
        ),
    }
    let addr = f.get("translatedAddress");
    let fqdn = f.get("translatedFqdn");
    let translated = match (addr, fqdn) {
        (Some(a), None) => ipv4(d, a, "translatedAddress").map(NatTarget::Address),
        (None, Some(n)) => string(d, n, "translatedFqdn").and_then(|s| match Name::parse(&s) {
            Ok(name) => Some(NatTarget::Fqdn(name)),
            Err(e) => {
                d.error(n.loc, e);
                None
            }
        }),
        (Some(_), Some(n)) => {
            d.error(
                n.loc,
                "give exactly one of translatedAddress and translatedFqdn, not both",
            );
            None
        }
        (None, None) => {
            d.error(node.loc, "a NAT rule needs translatedAddress or translatedFqdn");
            None
        }
    };
    let translated_port = f.require(d, "translatedPort").and_then(|n| {
        let s = string(d, n, "translatedPort")?;
        match parse_port_range(&s, 1, 65535) {
            Ok(r) if r.lo == r.hi => Some(r.lo),
            Ok(_) => {
                d.error(n.loc, "translatedPort must be a single port");
                None
            }
            Err(e) => {
                d.error(n.loc, e);
                None
            }
        }
    });
    Some(RuleBody::Nat {
        protocols,
        source,
        destinations,
        port,
        translated,
        translated_port,
    })
}
