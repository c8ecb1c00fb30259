//! Evaluation of one flow against a compiled policy, in Azure's order (§1.2): threat intelligence, then
//! every DNAT rule, then every network rule, then every application rule; the first match decides;
//! otherwise deny. With a [`Trace`] it also records what was evaluated (for `explain`); with [`NoTrace`]
//! the recording compiles away.

use crate::addr::AddrSet;
use crate::decode::{Action, AppProtocol, NatTarget, ThreatIntelMode};
use crate::fqdn::Name;
use crate::policy::{Policy, Rule, RuleKind, RuleType, Target};
use crate::threat::ThreatFeed;
use serde::Serialize;
use std::net::Ipv4Addr;

/// What the client sent, as far as the appliance can see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    /// TCP carrying an HTTP request (decided by the Host header).
    Http,
    /// TCP carrying a TLS ClientHello (decided by SNI).
    Https,
}

impl Protocol {
    pub fn ip_number(self) -> u8 {
        match self {
            Self::Tcp | Self::Http | Self::Https => 6,
            Self::Udp => 17,
            Self::Icmp => 1,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Icmp => "ICMP",
            Self::Http => "HTTP",
            Self::Https => "HTTPS",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "icmp" => Self::Icmp,
            "http" => Self::Http,
            "https" => Self::Https,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub source: Ipv4Addr,
    /// The address the client sent packets to (unknown when only a name is given to `explain`).
    pub destination_ip: Option<Ipv4Addr>,
    /// The name in TLS SNI or HTTP Host (application rules), or the name the client resolved.
    pub destination_name: Option<Name>,
    pub port: u16,
    pub protocol: Protocol,
    /// HTTP only: the port written in the Host header (`None` = no port written).
    pub host_port: Option<u16>,
}

/// Addresses resolved for names: the DNS proxy's pins for FQDN network rules and `translatedFqdn`.
pub trait Resolutions {
    fn addresses(&self, name: &Name) -> Vec<Ipv4Addr>;
}

/// Nothing resolved (e.g. `explain` without a running DNS proxy).
pub struct NoResolutions;

impl Resolutions for NoResolutions {
    fn addresses(&self, _: &Name) -> Vec<Ipv4Addr> {
        Vec::new()
    }
}

impl Resolutions for std::collections::BTreeMap<Name, Vec<Ipv4Addr>> {
    fn addresses(&self, name: &Name) -> Vec<Ipv4Addr> {
        self.get(name).cloned().unwrap_or_default()
    }
}

/// Inputs besides the policy that a decision depends on.
pub struct Env<'a> {
    pub resolutions: &'a dyn Resolutions,
    pub threat_feed: Option<&'a ThreatFeed>,
}

impl Default for Env<'_> {
    fn default() -> Self {
        Self {
            resolutions: &NoResolutions,
            threat_feed: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Allow,
    Deny,
    #[serde(rename = "DNAT")]
    Dnat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Stage {
    ThreatIntel,
    Dnat,
    Network,
    Application,
    Default,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Translation {
    pub address: Ipv4Addr,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceEntry {
    pub stage: Stage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_collection_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_collection: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// "match", "no match", "skipped" or "note".
    pub result: &'static str,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub verdict: Verdict,
    pub stage: Stage,
    pub policy: Option<String>,
    pub rule_collection_group: Option<String>,
    pub rule_collection: Option<String>,
    pub rule: Option<String>,
    /// Index of the deciding rule in [`Policy::rules`].
    #[serde(skip)]
    pub rule_index: Option<usize>,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub translated: Option<Translation>,
    /// Whether the flow leaves with the appliance's address (allowed and DNAT flows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<String>,
    pub trace: Vec<TraceEntry>,
}

/// Records evaluation steps; `NoTrace` makes every call free.
pub trait Tracer {
    const ENABLED: bool;
    fn push(&mut self, entry: TraceEntry);
}

pub struct NoTrace;

impl Tracer for NoTrace {
    const ENABLED: bool = false;
    fn push(&mut self, _: TraceEntry) {}
}

#[derive(Default)]
pub struct Trace(pub Vec<TraceEntry>);

impl Tracer for Trace {
    const ENABLED: bool = true;
    fn push(&mut self, entry: TraceEntry) {
        self.0.push(entry);
    }
}

/// Finds the deciding rule of each stage; implemented by the linear reference (with trace) and by the
/// compiled tables (`classify::FastPath`).
pub(crate) trait Stages {
    fn nat<T: Tracer>(&self, p: &Policy, flow: &Flow, env: &Env<'_>, t: &mut T) -> Option<(usize, Translation)>;
    fn network<T: Tracer>(&self, p: &Policy, flow: &Flow, env: &Env<'_>, t: &mut T) -> Option<usize>;
    fn application<T: Tracer>(
        &self,
        p: &Policy,
        proto: AppProtocol,
        flow: &Flow,
        name: &Name,
        t: &mut T,
    ) -> Option<usize>;
}

/// Rule by rule, in order, recording every rule it looks at.
pub(crate) struct Linear;

impl Stages for Linear {
    fn nat<T: Tracer>(&self, p: &Policy, flow: &Flow, env: &Env<'_>, t: &mut T) -> Option<(usize, Translation)> {
        p.linear_nat(flow, env, t)
    }

    fn network<T: Tracer>(&self, p: &Policy, flow: &Flow, env: &Env<'_>, t: &mut T) -> Option<usize> {
        p.linear_network(flow, env, t)
    }

    fn application<T: Tracer>(
        &self,
        p: &Policy,
        proto: AppProtocol,
        flow: &Flow,
        name: &Name,
        t: &mut T,
    ) -> Option<usize> {
        p.linear_application(proto, flow, name, t)
    }
}

/// Why one rule did not match (turned into text only when tracing).
enum Miss {
    Protocol,
    Source(Ipv4Addr),
    Destination,
    DestinationUnknown,
    Port,
    Name,
    Unresolved(Name),
}

pub const DEFAULT_DENY_REASON: &str = "No rule matched. Proceeding with default action.";

impl Policy {
    /// The decision enforcement uses: no trace recorded.
    pub fn decide(&self, flow: &Flow, env: &Env<'_>) -> Decision {
        self.evaluate(flow, env, &mut NoTrace)
    }

    /// The decision with the trace of everything evaluated (for `explain`).
    pub fn explain(&self, flow: &Flow, env: &Env<'_>) -> Decision {
        let mut t = Trace::default();
        let mut d = self.evaluate(flow, env, &mut t);
        d.trace = t.0;
        d
    }

    /// A denial by the application stage for a reason found before any rule could be asked (bytes the
    /// proxy cannot read as a ClientHello or request head), in the shape of the pipeline's own denials.
    pub fn application_denial(&self, reason: String) -> Decision {
        self.application_deny(&mut NoTrace, reason, Vec::new())
    }

    pub fn evaluate<T: Tracer>(&self, flow: &Flow, env: &Env<'_>, t: &mut T) -> Decision {
        self.run(&Linear, flow, env, t)
    }

    /// Azure's pipeline, written once: `stages` finds the deciding rule of each stage (the linear
    /// reference with its trace, or the compiled tables), everything else — threat intelligence, the
    /// order of stages, reasons, the decision itself — is shared, so `explain` and enforcement agree.
    pub(crate) fn run<S: Stages, T: Tracer>(&self, stages: &S, flow: &Flow, env: &Env<'_>, t: &mut T) -> Decision {
        let mut alerts = Vec::new();
        if let Some(d) = self.threat_intel(flow, env, t, &mut alerts) {
            return d;
        }
        if let Some((i, tr)) = stages.nat(self, flow, env, t) {
            let detail = format!(
                "translated to {}:{}; source rewritten to the appliance's internal address",
                tr.address, tr.port
            );
            let reason = format!("DNAT rule {} matched: {detail}", self.rules[i].name);
            let mut d = self.decided(Verdict::Dnat, Stage::Dnat, i, reason, alerts);
            d.translated = Some(tr);
            d.snat = Some(true);
            return d;
        }
        if let Some(i) = stages.network(self, flow, env, t) {
            let rule = &self.rules[i];
            let action = self.collection_of(rule).action;
            let verdict = if action == Action::Allow {
                Verdict::Allow
            } else {
                Verdict::Deny
            };
            let mut d = self.decided(
                verdict,
                Stage::Network,
                i,
                format!("Network rule {} matched: {action:?}", rule.name),
                alerts,
            );
            if verdict == Verdict::Allow {
                d.snat = flow.destination_ip.map(|ip| self.network_snat(ip));
            }
            return d;
        }
        let app_proto = match flow.protocol {
            Protocol::Http => AppProtocol::Http,
            Protocol::Https => AppProtocol::Https,
            _ => {
                if flow.protocol == Protocol::Tcp && self.app_ports.contains_key(&flow.port) {
                    let reason = format!(
                        "No rule matched. TCP port {} is intercepted for application rules: only HTTP (by Host) or TLS (by SNI) can be allowed there; other bytes are denied",
                        flow.port
                    );
                    return self.default_deny(t, reason, alerts);
                }
                return self.default_deny(t, DEFAULT_DENY_REASON.to_string(), alerts);
            }
        };
        let Some(name) = flow.destination_name.as_ref() else {
            let reason = match app_proto {
                AppProtocol::Https => "SNI TLS extension was missing.",
                AppProtocol::Http => "HTTP request without a Host header.",
            };
            return self.application_deny(t, reason.to_string(), alerts);
        };
        if app_proto == AppProtocol::Http {
            // Azure assumes port 80 when the Host header names none, and drops a mismatch (§3).
            let host_port = flow.host_port.unwrap_or(80);
            if host_port != flow.port {
                let reason = format!(
                    "Host header port {host_port} does not match the TCP port {}; dropped",
                    flow.port
                );
                return self.application_deny(t, reason, alerts);
            }
        }
        let Some(i) = stages.application(self, app_proto, flow, name, t) else {
            return self.application_deny(t, DEFAULT_DENY_REASON.to_string(), alerts);
        };
        let rule = &self.rules[i];
        let target = match &rule.kind {
            RuleKind::Application(a) => a.targets.iter().find(|tg| tg.pattern.matches(name)),
            _ => None,
        };
        let via = match target {
            Some(Target {
                pattern,
                tag: Some(tag),
            }) => format!("{pattern} (FQDN tag {tag})"),
            Some(Target { pattern, tag: None }) => pattern.to_string(),
            None => name.to_string(),
        };
        let action = self.collection_of(rule).action;
        let verdict = if action == Action::Allow {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        let reason = format!("Application rule {} matched: {name} matches {via}", rule.name);
        let mut d = self.decided(verdict, Stage::Application, i, reason, alerts);
        if verdict == Verdict::Allow {
            d.snat = Some(true);
        }
        d
    }

    fn linear_nat<T: Tracer>(&self, flow: &Flow, env: &Env<'_>, t: &mut T) -> Option<(usize, Translation)> {
        for i in self.nat_rules.clone() {
            let rule = &self.rules[i];
            let RuleKind::Nat(n) = &rule.kind else { continue };
            if let Some(why) = &rule.skipped {
                self.note(t, Stage::Dnat, rule, "skipped", why);
                continue;
            }
            let res = (|| {
                let tcpish = flow.protocol.ip_number() == 6;
                if !((tcpish && n.tcp) || (flow.protocol == Protocol::Udp && n.udp)) {
                    return Err(Miss::Protocol);
                }
                let Some(dst) = flow.destination_ip else {
                    return Err(Miss::DestinationUnknown);
                };
                if !n.destinations.contains(&dst) {
                    return Err(Miss::Destination);
                }
                if flow.port != n.port {
                    return Err(Miss::Port);
                }
                if !n.sources.contains(flow.source) {
                    return Err(Miss::Source(flow.source));
                }
                match &n.translated {
                    NatTarget::Address(a) => Ok(*a),
                    // Azure uses the first address; an unresolvable name makes the rule not match.
                    NatTarget::Fqdn(name) => env
                        .resolutions
                        .addresses(name)
                        .first()
                        .copied()
                        .ok_or_else(|| Miss::Unresolved(name.clone())),
                }
            })();
            match res {
                Ok(address) => {
                    let tr = Translation {
                        address,
                        port: n.translated_port,
                    };
                    self.note(
                        t,
                        Stage::Dnat,
                        rule,
                        "match",
                        &format!("translated to {}:{}", tr.address, tr.port),
                    );
                    return Some((i, tr));
                }
                Err(m) => self.miss(t, Stage::Dnat, rule, flow, &m),
            }
        }
        None
    }

    fn linear_network<T: Tracer>(&self, flow: &Flow, env: &Env<'_>, t: &mut T) -> Option<usize> {
        for i in self.network_rules.clone() {
            let rule = &self.rules[i];
            let RuleKind::Network(n) = &rule.kind else { continue };
            if let Some(why) = &rule.skipped {
                self.note(t, Stage::Network, rule, "skipped", why);
                continue;
            }
            let res = (|| {
                if !n.protocols.matches_number(flow.protocol.ip_number()) {
                    return Err(Miss::Protocol);
                }
                if !n.sources.contains(flow.source) {
                    return Err(Miss::Source(flow.source));
                }
                let port_proto = matches!(flow.protocol.ip_number(), 6 | 17);
                if port_proto && !n.ports.contains(flow.port) {
                    return Err(Miss::Port);
                }
                let by_ip = flow.destination_ip.is_some_and(|ip| n.destinations.contains(ip));
                let by_any = n.destinations.is_any();
                let by_fqdn = n.fqdns.iter().any(|f| {
                    flow.destination_name.as_ref() == Some(f)
                        || flow
                            .destination_ip
                            .is_some_and(|ip| env.resolutions.addresses(f).contains(&ip))
                });
                if by_ip || by_any || by_fqdn {
                    Ok(())
                } else if flow.destination_ip.is_none() && !n.destinations.is_empty() {
                    Err(Miss::DestinationUnknown)
                } else {
                    Err(Miss::Destination)
                }
            })();
            match res {
                Ok(()) => {
                    let action = self.collection_of(rule).action;
                    self.note(t, Stage::Network, rule, "match", &format!("{action:?}"));
                    return Some(i);
                }
                Err(m) => self.miss(t, Stage::Network, rule, flow, &m),
            }
        }
        None
    }

    fn linear_application<T: Tracer>(
        &self,
        app_proto: AppProtocol,
        flow: &Flow,
        name: &Name,
        t: &mut T,
    ) -> Option<usize> {
        for i in self.application_rules.clone() {
            let rule = &self.rules[i];
            let RuleKind::Application(a) = &rule.kind else { continue };
            if let Some(why) = &rule.skipped {
                self.note(t, Stage::Application, rule, "skipped", why);
                continue;
            }
            if !a
                .protocols
                .iter()
                .any(|(p, port)| *p == app_proto && *port == flow.port)
            {
                self.miss(t, Stage::Application, rule, flow, &Miss::Protocol);
                continue;
            }
            if !a.sources.contains(flow.source) {
                self.miss(t, Stage::Application, rule, flow, &Miss::Source(flow.source));
                continue;
            }
            let Some(target) = a.targets.iter().find(|tg| tg.pattern.matches(name)) else {
                self.miss(t, Stage::Application, rule, flow, &Miss::Name);
                continue;
            };
            if T::ENABLED {
                let action = self.collection_of(rule).action;
                let via = match &target.tag {
                    Some(tag) => format!("{} (FQDN tag {tag})", target.pattern),
                    None => target.pattern.to_string(),
                };
                self.note(
                    t,
                    Stage::Application,
                    rule,
                    "match",
                    &format!("{action:?}: {name} matches {via}"),
                );
            }
            return Some(i);
        }
        None
    }

    fn threat_intel<T: Tracer>(
        &self,
        flow: &Flow,
        env: &Env<'_>,
        t: &mut T,
        alerts: &mut Vec<String>,
    ) -> Option<Decision> {
        let ti = &self.threat_intel;
        if ti.mode == ThreatIntelMode::Off {
            return None;
        }
        let feed = env.threat_feed?;
        let ip_hit = flow
            .destination_ip
            .filter(|ip| feed.contains_ip(*ip) && !ti.allow_ips.contains(*ip));
        let name_hit = flow
            .destination_name
            .as_ref()
            .filter(|n| feed.contains_name(n) && !ti.allow_fqdns.iter().any(|p| p.matches(n)));
        let what = match (ip_hit, name_hit) {
            (Some(ip), _) => ip.to_string(),
            (None, Some(n)) => n.to_string(),
            (None, None) => return None,
        };
        let msg = format!("Threat intelligence: {what} is on the threat-intel feed");
        if T::ENABLED {
            t.push(TraceEntry {
                stage: Stage::ThreatIntel,
                rule_collection_group: None,
                rule_collection: None,
                rule: None,
                result: "match",
                detail: format!("{msg} (mode {:?})", ti.mode),
            });
        }
        if ti.mode == ThreatIntelMode::Deny {
            return Some(Decision {
                verdict: Verdict::Deny,
                stage: Stage::ThreatIntel,
                policy: Some(self.name.clone()),
                rule_collection_group: None,
                rule_collection: None,
                rule: None,
                rule_index: None,
                reason: msg,
                translated: None,
                snat: None,
                alerts: Vec::new(),
                trace: Vec::new(),
            });
        }
        alerts.push(msg);
        None
    }

    fn decided(&self, verdict: Verdict, stage: Stage, i: usize, reason: String, alerts: Vec<String>) -> Decision {
        let rule = &self.rules[i];
        let c = self.collection_of(rule);
        Decision {
            verdict,
            stage,
            policy: Some(c.policy.clone()),
            rule_collection_group: Some(c.group.clone()),
            rule_collection: Some(c.name.clone()),
            rule: Some(rule.name.clone()),
            rule_index: Some(i),
            reason,
            translated: None,
            snat: None,
            alerts,
            trace: Vec::new(),
        }
    }

    fn default_deny<T: Tracer>(&self, t: &mut T, reason: String, alerts: Vec<String>) -> Decision {
        if T::ENABLED {
            t.push(TraceEntry {
                stage: Stage::Default,
                rule_collection_group: None,
                rule_collection: None,
                rule: None,
                result: "match",
                detail: "default action: Deny".into(),
            });
        }
        Decision {
            verdict: Verdict::Deny,
            stage: Stage::Default,
            policy: Some(self.name.clone()),
            rule_collection_group: None,
            rule_collection: None,
            rule: None,
            rule_index: None,
            reason,
            translated: None,
            snat: None,
            alerts,
            trace: Vec::new(),
        }
    }

    fn application_deny<T: Tracer>(&self, t: &mut T, reason: String, alerts: Vec<String>) -> Decision {
        let mut d = self.default_deny(t, reason, alerts);
        d.stage = if d.reason == DEFAULT_DENY_REASON {
            Stage::Default
        } else {
            Stage::Application
        };
        d
    }

    fn note<T: Tracer>(&self, t: &mut T, stage: Stage, rule: &Rule, result: &'static str, detail: &str) {
        if T::ENABLED {
            let c = self.collection_of(rule);
            t.push(TraceEntry {
                stage,
                rule_collection_group: Some(c.group.clone()),
                rule_collection: Some(c.name.clone()),
                rule: Some(rule.name.clone()),
                result,
                detail: detail.to_string(),
            });
        }
    }

    fn miss<T: Tracer>(&self, t: &mut T, stage: Stage, rule: &Rule, flow: &Flow, m: &Miss) {
        if T::ENABLED {
            let detail = self.miss_text(m, rule, flow);
            self.note(t, stage, rule, "no match", &detail);
        }
    }

    fn miss_text(&self, m: &Miss, rule: &Rule, flow: &Flow) -> String {
        let dst = match (&flow.destination_ip, &flow.destination_name) {
            (Some(ip), _) => ip.to_string(),
            (None, Some(n)) => n.to_string(),
            (None, None) => "?".into(),
        };
        match (&rule.kind, m) {
            (_, Miss::Unresolved(n)) => format!("translatedFqdn {n} did not resolve; the rule does not apply"),
            (RuleKind::Network(n), Miss::Protocol) => {
                format!("protocol {:?} not in {}", flow.protocol, protocols_text(n.protocols))
            }
            (RuleKind::Nat(n), Miss::Protocol) => {
                format!(
                    "protocol {:?} not in {}",
                    flow.protocol,
                    match (n.tcp, n.udp) {
                        (true, true) => "TCP,UDP",
                        (true, false) => "TCP",
                        _ => "UDP",
                    }
                )
            }
            (RuleKind::Application(a), Miss::Protocol) => {
                let list: Vec<String> = a.protocols.iter().map(|(p, port)| format!("{p:?}:{port}")).collect();
                format!("{:?}:{} not in {}", flow.protocol, flow.port, list.join(","))
            }
            (kind, Miss::Source(ip)) => format!("source {ip} not in {}", sources_of(kind)),
            (RuleKind::Network(n), Miss::Port) => format!("port {} not in {}", flow.port, n.ports),
            (RuleKind::Nat(n), Miss::Port) => format!("port {} is not {}", flow.port, n.port),
            (RuleKind::Network(n), Miss::Destination) => {
                let mut s = format!("destination {dst} not in {}", n.destinations);
                if !n.fqdns.is_empty() {
                    let names: Vec<&str> = n.fqdns.iter().map(Name::as_str).collect();
                    s.push_str(&format!(" nor among the resolved addresses of {}", names.join(", ")));
                }
                s
            }
            (RuleKind::Network(n), Miss::DestinationUnknown) => {
                format!(
                    "destination address unknown (only the name {dst} was given); the rule needs one of {}",
                    n.destinations
                )
            }
            (RuleKind::Nat(n), Miss::Destination | Miss::DestinationUnknown) => {
                let list: Vec<String> = n.destinations.iter().map(ToString::to_string).collect();
                format!("destination {dst} is not {}", list.join(", "))
            }
            (RuleKind::Application(a), Miss::Name) => {
                let mut list: Vec<String> = a.targets.iter().take(6).map(|t| t.pattern.to_string()).collect();
                if a.targets.len() > 6 {
                    list.push(format!("… {} more", a.targets.len() - 6));
                }
                format!("{dst} matches none of {}", list.join(", "))
            }
            _ => "no match".into(),
        }
    }
}

fn protocols_text(p: crate::policy::Protocols) -> String {
    if p.all {
        return "Any".into();
    }
    let mut v = Vec::new();
    if p.tcp {
        v.push("TCP");
    }
    if p.udp {
        v.push("UDP");
    }
    if p.icmp {
        v.push("ICMP");
    }
    v.join(",")
}

fn sources_of(kind: &RuleKind) -> &AddrSet {
    match kind {
        RuleKind::Nat(n) => &n.sources,
        RuleKind::Network(n) => &n.sources,
        RuleKind::Application(a) => &a.sources,
    }
}

impl RuleType {
    pub fn label(self) -> &'static str {
        match self {
            Self::Nat => "DNAT",
            Self::Network => "Network",
            Self::Application => "Application",
        }
    }
}
