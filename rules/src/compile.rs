//! Loading (config file + base-policy chain) and linking into a [`Policy`]: IP groups resolved, inheritance
//! applied, rules put in Azure's processing order (§1.2).

use crate::addr::{AddrSet, IANA_PRIVATE_RANGES, Ipv4Range, parse_addr};
use crate::decode::{
    self, Action, ApplianceDoc, CollectionType, ConfigDoc, Endpoints, IpProtocol, PolicyDoc, RuleBody, Spanned,
    ThreatIntelMode,
};
use crate::diag::{Diagnostic, Diags, FileId, Loc, Pos, SourceMap};
use crate::policy::{
    Appliance, ApplicationRule, Collection, Config, DnsSettings, NatRule, NetworkRule, Policy, Protocols, Rule,
    RuleKind, RuleType, Target, ThreatIntel,
};
use crate::port::PortSet;
use crate::source;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where policy files come from; the engine itself does no I/O.
pub trait Loader {
    fn read(&self, path: &Path) -> Result<String, String>;
}

/// Reads files from the filesystem.
pub struct FsLoader;

impl Loader for FsLoader {
    fn read(&self, path: &Path) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| e.to_string())
    }
}

/// Files held in memory (tests, `import` round trips).
#[derive(Default)]
pub struct MemLoader {
    pub files: BTreeMap<PathBuf, String>,
}

impl MemLoader {
    pub fn with(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        self.files.insert(path.into(), text.into());
        self
    }
}

impl Loader for MemLoader {
    fn read(&self, path: &Path) -> Result<String, String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| "No such file or directory".to_string())
    }
}

/// A valid configuration and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
}

/// Errors first, then warnings, each `FILE:LINE:COL: message`.
#[derive(Debug)]
pub struct Invalid {
    pub diagnostics: Vec<Diagnostic>,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for d in &self.diagnostics {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

const MAX_BASE_DEPTH: usize = 8;
const START: Pos = Pos { line: 1, col: 1 };

pub fn load(path: &Path, loader: &dyn Loader) -> Result<Loaded, Invalid> {
    let mut sources = SourceMap::default();
    let mut d = Diags::default();
    let result = load_inner(path, loader, &mut sources, &mut d);
    let failed = d.has_errors();
    let diagnostics = d.resolve(&sources);
    let sources = sources.clone();
    match result {
        Some(mut config) if !failed => {
            config.policy.sources = sources;
            Ok(Loaded {
                config,
                warnings: diagnostics,
            })
        }
        _ => {
            let (mut errors, warnings): (Vec<_>, Vec<_>) = diagnostics.into_iter().partition(Diagnostic::is_error);
            errors.extend(warnings);
            Err(Invalid { diagnostics: errors })
        }
    }
}

/// Loads a config from text (the base-policy chain, if any, through `loader`).
pub fn load_str(name: &str, text: &str, loader: &dyn Loader) -> Result<Loaded, Invalid> {
    let mem = Overlay {
        name: PathBuf::from(name),
        text,
        inner: loader,
    };
    load(Path::new(name), &mem)
}

struct Overlay<'a> {
    name: PathBuf,
    text: &'a str,
    inner: &'a dyn Loader,
}

impl Loader for Overlay<'_> {
    fn read(&self, path: &Path) -> Result<String, String> {
        if path == self.name {
            Ok(self.text.to_string())
        } else {
            self.inner.read(path)
        }
    }
}

fn read_doc(
    path: &Path,
    loader: &dyn Loader,
    sources: &mut SourceMap,
    d: &mut Diags,
    from: Option<Loc>,
) -> Option<(FileId, ConfigDoc)> {
    let file = sources.add(path.display().to_string());
    let text = match loader.read(path) {
        Ok(t) => t,
        Err(e) => {
            match from {
                Some(loc) => d.error(loc, format!("cannot read base policy {}: {e}", path.display())),
                None => d.error(Loc { file, pos: START }, format!("cannot read: {e}")),
            }
            return None;
        }
    };
    let root = match source::parse(file, &text) {
        Ok(n) => n,
        Err(e) => {
            d.error(e.loc, e.message);
            return None;
        }
    };
    Some((file, decode::decode(d, &root)))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

fn load_inner(path: &Path, loader: &dyn Loader, sources: &mut SourceMap, d: &mut Diags) -> Option<Config> {
    let (root_file, root) = read_doc(path, loader, sources, d, None)?;
    let appliance = root.appliance.as_ref().and_then(|a| appliance(d, a));
    let mut chain: Vec<(PathBuf, PolicyDoc)> = Vec::new();
    let mut next = root.policy.map(|p| (path.to_path_buf(), p));
    let _ = root_file;
    while let Some((p, doc)) = next.take() {
        if let Some(base) = doc.base_policy.clone() {
            let base_path = p.parent().unwrap_or(Path::new("")).join(&base.value);
            if chain.iter().any(|(seen, _)| *seen == base_path) || base_path == p {
                d.error(
                    base.loc,
                    format!("basePolicy {} makes a cycle of base policies", base.value),
                );
            } else if chain.len() + 1 >= MAX_BASE_DEPTH {
                d.error(base.loc, format!("base policies nest deeper than {MAX_BASE_DEPTH}"));
            } else if let Some((_, parent)) = read_doc(&base_path, loader, sources, d, Some(base.loc)) {
                if let Some(a) = &parent.appliance {
                    d.error(
                        a.loc,
                        "a base policy file holds only a `policy` section; `appliance` belongs to the config that runs",
                    );
                }
                next = parent.policy.map(|pp| (base_path, pp));
            }
        }
        chain.push((p, doc));
    }
    if chain.is_empty() {
        return None;
    }
    // Ancestors first: parent rule collection groups are processed before the child's (§1.2.4).
    chain.reverse();
    let policy = link(d, &chain, sources, appliance.as_ref());
    Some(Config { appliance, policy })
}

fn appliance(d: &mut Diags, a: &ApplianceDoc) -> Option<Appliance> {
    let internal = a.internal.clone()?;
    if a.external.as_deref() == Some(internal.as_str()) {
        d.error(
            a.loc,
            "interfaces.external names the internal interface; omit `external` for a one-arm appliance",
        );
    }
    Some(Appliance {
        internal,
        external: a.external.clone(),
        snat_addresses: a.snat_addresses.iter().map(|s| s.value).collect(),
        management: a.management,
        dns_proxy_listen: a.dns_proxy_listen.clone(),
        flow_log: a.flow_log.clone(),
        threat_intel_feed: a.threat_intel_feed.clone(),
    })
}

fn link(d: &mut Diags, chain: &[(PathBuf, PolicyDoc)], sources: &SourceMap, appliance: Option<&Appliance>) -> Policy {
    let _ = sources;
    let name = chain.last().map(|(p, _)| stem(p)).unwrap_or_default();

    // Threat intelligence: a child may keep or tighten the mode, never loosen it (§6).
    let mut mode = ThreatIntelMode::Alert;
    let mut inherited: Option<(ThreatIntelMode, String)> = None;
    let mut allow_ips: Vec<Ipv4Range> = Vec::new();
    let mut allow_fqdns = Vec::new();
    for (path, doc) in chain {
        if let Some(m) = &doc.threat_intel_mode {
            if let Some((parent_mode, parent)) = &inherited
                && m.value < *parent_mode
            {
                d.error(m.loc, format!("threatIntelMode {:?} is weaker than {:?} in base policy {parent}; a child policy may only keep or tighten it", m.value, parent_mode));
            }
            mode = m.value;
            inherited = Some((m.value, stem(path)));
        }
        allow_ips.extend(doc.ti_allow_ips.iter().copied());
        allow_fqdns.extend(doc.ti_allow_fqdns.iter().cloned());
    }

    // DNS settings: a child inherits the parent's and may override each field.
    let mut dns = DnsSettings {
        enable_proxy: false,
        servers: Vec::new(),
        require_proxy_for_network_rules: true,
    };
    let mut dns_loc: Option<Loc> = None;
    for (_, doc) in chain {
        if let Some(s) = &doc.dns {
            dns_loc = Some(s.loc);
            if let Some(v) = s.enable_proxy {
                dns.enable_proxy = v;
            }
            if let Some(v) = &s.servers {
                dns.servers = v.clone();
            }
            if let Some(v) = s.require_proxy_for_network_rules {
                dns.require_proxy_for_network_rules = v;
            }
        }
    }

    let mut private: Option<Vec<Ipv4Range>> = None;
    for (_, doc) in chain {
        if let Some(r) = doc.snat.as_ref().and_then(|s| s.private_ranges.clone()) {
            private = Some(r);
        }
    }
    let private = private.unwrap_or_else(|| {
        IANA_PRIVATE_RANGES
            .iter()
            .filter_map(|r| parse_addr(r).ok())
            .map(|e| e.range)
            .collect()
    });

    // IP groups are policy-independent resources: merge, but one name means one set.
    let mut groups: BTreeMap<String, (AddrSet, Loc)> = BTreeMap::new();
    for (_, doc) in chain {
        for g in &doc.ip_groups {
            let set = AddrSet::from_ranges(g.ranges.clone());
            if let Some((prev, at)) = groups.get(&g.name.value) {
                if *prev != set {
                    d.error(
                        g.name.loc,
                        format!(
                            "IP group `{}` is defined differently in a base policy (line {})",
                            g.name.value, at.pos.line
                        ),
                    );
                } else if at.file == g.name.loc.file {
                    d.error(g.name.loc, format!("IP group `{}` is defined twice", g.name.value));
                }
                continue;
            }
            groups.insert(g.name.value.clone(), (set, g.name.loc));
        }
    }

    let mut collections = Vec::new();
    let mut by_type: [Vec<Rule>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let depth_of = |i: usize| u8::try_from(chain.len() - 1 - i).unwrap_or(u8::MAX);
    for (ci, (path, doc)) in chain.iter().enumerate() {
        check_unique_groups(d, doc);
        let mut rcgs: Vec<_> = doc.groups.iter().collect();
        rcgs.sort_by_key(|g| g.priority.value);
        for g in rcgs {
            let mut rcs: Vec<_> = g.collections.iter().collect();
            rcs.sort_by_key(|c| c.priority.value);
            for rc in rcs {
                let rule_type = match (rc.kind, rc.rules.first().map(|r| &r.body)) {
                    (CollectionType::Nat, _) => RuleType::Nat,
                    (CollectionType::Filter, Some(RuleBody::Application { .. })) => RuleType::Application,
                    (CollectionType::Filter, _) => RuleType::Network,
                };
                let cidx = collections.len();
                collections.push(Collection {
                    policy: stem(path),
                    inheritance_depth: depth_of(ci),
                    group: g.name.value.clone(),
                    group_priority: g.priority.value,
                    name: rc.name.value.clone(),
                    priority: rc.priority.value,
                    action: rc.action,
                    rule_type,
                });
                for r in &rc.rules {
                    let mut skipped = None;
                    let kind = rule_kind(d, r.loc, &r.body, &groups, &mut skipped, &dns, dns_loc, appliance);
                    let slot = match rule_type {
                        RuleType::Nat => 0,
                        RuleType::Network => 1,
                        RuleType::Application => 2,
                    };
                    if let Some(why) = &skipped {
                        d.warn(r.name.loc, format!("rule `{}` is skipped: {why}", r.name.value));
                    }
                    by_type[slot].push(Rule {
                        name: r.name.value.clone(),
                        collection: cidx,
                        kind,
                        skipped,
                        loc: r.loc,
                    });
                }
            }
        }
    }
    let [nat, net, app] = by_type;
    let nat_rules = 0..nat.len();
    let network_rules = nat.len()..nat.len() + net.len();
    let application_rules = network_rules.end..network_rules.end + app.len();
    let rules: Vec<Rule> = nat.into_iter().chain(net).chain(app).collect();
    let mut policy = Policy {
        name,
        sources: SourceMap::default(),
        threat_intel: ThreatIntel {
            mode,
            allow_ips: AddrSet::from_ranges(allow_ips),
            allow_fqdns,
        },
        dns,
        snat_private_ranges: AddrSet::from_ranges(private),
        ip_groups: groups.into_iter().map(|(k, (v, _))| (k, v)).collect(),
        collections,
        rules,
        nat_rules,
        network_rules,
        application_rules,
        app_ports: BTreeMap::new(),
    };
    policy.app_ports = policy.compute_application_ports();
    policy
}

fn check_unique_groups(d: &mut Diags, doc: &PolicyDoc) {
    let mut seen: Vec<&Spanned<String>> = Vec::new();
    let mut prios: Vec<&Spanned<u32>> = Vec::new();
    for g in &doc.groups {
        if let Some(prev) = seen.iter().find(|n| n.value.eq_ignore_ascii_case(&g.name.value)) {
            d.error(
                g.name.loc,
                format!(
                    "rule collection group `{}` is defined twice (first at line {})",
                    g.name.value, prev.loc.pos.line
                ),
            );
        }
        seen.push(&g.name);
        if let Some(prev) = prios.iter().find(|p| p.value == g.priority.value) {
            d.warn(
                g.priority.loc,
                format!(
                    "two rule collection groups share priority {} (first at line {}); they run in file order",
                    g.priority.value, prev.loc.pos.line
                ),
            );
        }
        prios.push(&g.priority);
        let mut rc_names: Vec<&Spanned<String>> = Vec::new();
        let mut rc_prios: Vec<&Spanned<u32>> = Vec::new();
        for c in &g.collections {
            if let Some(prev) = rc_names.iter().find(|n| n.value.eq_ignore_ascii_case(&c.name.value)) {
                d.error(
                    c.name.loc,
                    format!(
                        "rule collection `{}` is defined twice in group `{}` (first at line {})",
                        c.name.value, g.name.value, prev.loc.pos.line
                    ),
                );
            }
            rc_names.push(&c.name);
            if let Some(prev) = rc_prios.iter().find(|p| p.value == c.priority.value) {
                d.warn(c.priority.loc, format!("two rule collections in group `{}` share priority {} (first at line {}); they run in file order", g.name.value, c.priority.value, prev.loc.pos.line));
            }
            rc_prios.push(&c.priority);
        }
    }
}

fn endpoints(
    d: &mut Diags,
    e: &Endpoints,
    groups: &BTreeMap<String, (AddrSet, Loc)>,
    skipped: &mut Option<String>,
) -> AddrSet {
    let mut set = AddrSet::from_ranges(e.addresses.clone());
    for g in &e.groups {
        match groups.get(&g.value) {
            None => {
                let known: Vec<&str> = groups.keys().map(String::as_str).collect();
                let hint = if known.is_empty() {
                    "no ipGroups are defined".to_string()
                } else {
                    format!("defined: {}", known.join(", "))
                };
                d.error(g.loc, format!("unknown IP group `{}` ({hint})", g.value));
            }
            Some((s, _)) if s.is_empty() => {
                // Azure skips a rule that references an IP group with no addresses (§2.5).
                *skipped = Some(format!("IP group `{}` has no addresses", g.value));
            }
            Some((s, _)) => set = set.union(s),
        }
    }
    set
}

#[allow(clippy::too_many_arguments)]
fn rule_kind(
    d: &mut Diags,
    at: Loc,
    body: &RuleBody,
    groups: &BTreeMap<String, (AddrSet, Loc)>,
    skipped: &mut Option<String>,
    dns: &DnsSettings,
    dns_loc: Option<Loc>,
    appliance: Option<&Appliance>,
) -> RuleKind {
    match body {
        RuleBody::Network {
            protocols,
            protocols_loc,
            source,
            destination,
            fqdns,
            ports,
            ports_loc,
        } => {
            let ports = PortSet::from_ranges(ports.clone());
            let mut p = Protocols {
                tcp: false,
                udp: false,
                icmp: false,
                all: false,
            };
            for proto in protocols {
                match proto {
                    IpProtocol::Tcp => p.tcp = true,
                    IpProtocol::Udp => p.udp = true,
                    IpProtocol::Icmp => p.icmp = true,
                    // `Any` is every IP protocol; with a destination port it means TCP and UDP (§1.5).
                    IpProtocol::Any if ports.is_all() => p.all = true,
                    IpProtocol::Any => {
                        p.tcp = true;
                        p.udp = true;
                    }
                }
            }
            if p.icmp && !p.tcp && !p.udp && !p.all && !ports.is_all() && !ports.ranges().is_empty() {
                d.warn(
                    *ports_loc,
                    "ICMP has no ports: destinationPorts are ignored for ICMP; write \"*\"",
                );
            }
            let _ = protocols_loc;
            if !fqdns.is_empty() && !dns.enable_proxy {
                let at = fqdns[0].loc;
                let why = match dns_loc {
                    Some(l) => format!(" (dnsSettings at line {})", l.pos.line),
                    None => String::new(),
                };
                d.error(at, format!("destinationFqdns in network rules need the DNS proxy: set dnsSettings.enableProxy: true{why} and point clients' DNS at the appliance"));
            }
            RuleKind::Network(NetworkRule {
                protocols: p,
                sources: endpoints(d, source, groups, skipped),
                destinations: endpoints(d, destination, groups, skipped),
                fqdns: fqdns.iter().map(|f| f.value.clone()).collect(),
                ports,
            })
        }
        RuleBody::Application {
            source,
            protocols,
            targets,
            tags,
            headers,
        } => {
            let mut t: Vec<Target> = targets
                .iter()
                .map(|p| Target {
                    pattern: p.clone(),
                    tag: None,
                })
                .collect();
            for tag in tags {
                for f in tag.fqdns {
                    if let Ok(pattern) = crate::fqdn::FqdnPattern::parse(f) {
                        t.push(Target {
                            pattern,
                            tag: Some(format!("{}@{}", tag.name, tag.version)),
                        });
                    }
                }
            }
            RuleKind::Application(ApplicationRule {
                sources: endpoints(d, source, groups, skipped),
                protocols: protocols.clone(),
                targets: t,
                headers: headers.clone(),
            })
        }
        RuleBody::Nat {
            protocols,
            source,
            destinations,
            port,
            translated,
            translated_port,
        } => {
            let any = protocols.contains(&IpProtocol::Any);
            if let Some(a) = appliance
                && !a.snat_addresses.is_empty()
            {
                for dst in destinations {
                    if !a.snat_addresses.contains(dst) {
                        d.warn(at, format!("NAT rule destination {dst} is not one of appliance.snatAddresses; inbound traffic to it will not reach the rule"));
                    }
                }
            }
            RuleKind::Nat(NatRule {
                tcp: any || protocols.contains(&IpProtocol::Tcp),
                udp: any || protocols.contains(&IpProtocol::Udp),
                sources: endpoints(d, source, groups, skipped),
                destinations: destinations.clone(),
                port: port.unwrap_or(0),
                translated: translated
                    .clone()
                    .unwrap_or(decode::NatTarget::Address(std::net::Ipv4Addr::UNSPECIFIED)),
                translated_port: translated_port.unwrap_or(0),
            })
        }
    }
}

/// Compiled policies hold actions per collection; convenience for callers.
pub fn action_of(policy: &Policy, rule: &Rule) -> Action {
    policy.collection_of(rule).action
}
