//! The compiled policy: one object that every enforcer (data-plane tables, application proxy, DNS pinning)
//! and `explain` read, so they cannot disagree.

use crate::addr::AddrSet;
use crate::decode::{Action, AppProtocol, NatTarget, ThreatIntelMode};
use crate::diag::{Loc, SourceMap};
use crate::fqdn::{FqdnPattern, Name};
use crate::port::PortSet;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The `appliance` section: only `portcullis run` needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Appliance {
    pub internal: String,
    /// `None` = one-arm (one interface both ways).
    pub external: Option<String>,
    pub snat_addresses: Vec<Ipv4Addr>,
    pub management: Option<SocketAddrV4>,
    pub dns_proxy_listen: Vec<SocketAddrV4>,
    /// `-` means stdout.
    pub flow_log: Option<String>,
    pub threat_intel_feed: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub appliance: Option<Appliance>,
    pub policy: Policy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    pub enable_proxy: bool,
    /// Empty = the platform resolver (Azure DNS); the appliance must be told one.
    pub servers: Vec<Ipv4Addr>,
    pub require_proxy_for_network_rules: bool,
}

#[derive(Clone, Debug)]
pub struct ThreatIntel {
    pub mode: ThreatIntelMode,
    pub allow_ips: AddrSet,
    pub allow_fqdns: Vec<FqdnPattern>,
}

/// Which of the three rule types a stage of processing handles, in Azure's fixed order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum RuleType {
    Nat,
    Network,
    Application,
}

#[derive(Clone, Debug)]
pub struct Collection {
    /// The policy file the collection came from (file stem), as Azure logs name the policy.
    pub policy: String,
    /// 0 = the config's own policy, 1 = its base policy, 2 = the base's base …
    pub inheritance_depth: u8,
    pub group: String,
    pub group_priority: u32,
    pub name: String,
    pub priority: u32,
    pub action: Action,
    pub rule_type: RuleType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Protocols {
    pub tcp: bool,
    pub udp: bool,
    pub icmp: bool,
    /// Every IP protocol (Azure's `Any` with ports `*`).
    pub all: bool,
}

impl Protocols {
    pub fn matches_number(&self, proto: u8) -> bool {
        self.all
            || match proto {
                6 => self.tcp,
                17 => self.udp,
                1 => self.icmp,
                _ => false,
            }
    }
}

#[derive(Clone, Debug)]
pub struct NetworkRule {
    pub protocols: Protocols,
    pub sources: AddrSet,
    pub destinations: AddrSet,
    /// Matched by the addresses the DNS proxy resolves for them (pins), or by name in `explain`.
    pub fqdns: Vec<Name>,
    pub ports: PortSet,
}

/// A target of an application rule and where it came from.
#[derive(Clone, Debug)]
pub struct Target {
    pub pattern: FqdnPattern,
    /// `Some("AzureKubernetesService@2026-06")` when expanded from an FQDN tag.
    pub tag: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ApplicationRule {
    pub sources: AddrSet,
    pub protocols: Vec<(AppProtocol, u16)>,
    pub targets: Vec<Target>,
    pub headers: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
pub struct NatRule {
    pub tcp: bool,
    pub udp: bool,
    pub sources: AddrSet,
    pub destinations: Vec<Ipv4Addr>,
    pub port: u16,
    pub translated: NatTarget,
    pub translated_port: u16,
}

#[derive(Clone, Debug)]
pub enum RuleKind {
    Nat(NatRule),
    Network(NetworkRule),
    Application(ApplicationRule),
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    /// Index into [`Policy::collections`].
    pub collection: usize,
    pub kind: RuleKind,
    /// Why the rule never matches (Azure skips a rule whose IP group is empty).
    pub skipped: Option<String>,
    pub loc: Loc,
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub sources: SourceMap,
    pub threat_intel: ThreatIntel,
    pub dns: DnsSettings,
    /// Destinations that are not SNATed by network rules (application rules always SNAT).
    pub snat_private_ranges: AddrSet,
    pub ip_groups: BTreeMap<String, AddrSet>,
    pub collections: Vec<Collection>,
    /// Every rule in evaluation order: all NAT rules, then all network rules, then all application rules.
    pub rules: Vec<Rule>,
    pub nat_rules: std::ops::Range<usize>,
    pub network_rules: std::ops::Range<usize>,
    pub application_rules: std::ops::Range<usize>,
    /// TCP ports of application rules, computed once (the data plane passes them to the proxy).
    pub(crate) app_ports: BTreeMap<u16, Vec<AppProtocol>>,
}

impl Policy {
    pub fn collection_of(&self, rule: &Rule) -> &Collection {
        &self.collections[rule.collection]
    }

    /// Whether a network-rule flow to `dst` leaves with the appliance's address (§5).
    pub fn network_snat(&self, dst: Ipv4Addr) -> bool {
        !self.snat_private_ranges.contains(dst)
    }

    /// TCP ports the application proxy must intercept, with the protocol expected on each.
    pub fn application_ports(&self) -> &BTreeMap<u16, Vec<AppProtocol>> {
        &self.app_ports
    }

    pub(crate) fn compute_application_ports(&self) -> BTreeMap<u16, Vec<AppProtocol>> {
        let mut out: BTreeMap<u16, Vec<AppProtocol>> = BTreeMap::new();
        for r in &self.rules[self.application_rules.clone()] {
            if let RuleKind::Application(a) = &r.kind {
                for (proto, port) in &a.protocols {
                    let e = out.entry(*port).or_default();
                    if !e.contains(proto) {
                        e.push(*proto);
                        e.sort();
                    }
                }
            }
        }
        out
    }

    /// Names whose resolved addresses the DNS proxy must pin into the data plane, with the indexes of the
    /// network rules that use them.
    pub fn pinned_names(&self) -> BTreeMap<Name, Vec<usize>> {
        let mut out: BTreeMap<Name, Vec<usize>> = BTreeMap::new();
        for (i, r) in self
            .rules
            .iter()
            .enumerate()
            .take(self.network_rules.end)
            .skip(self.network_rules.start)
        {
            if let RuleKind::Network(n) = &r.kind {
                for f in &n.fqdns {
                    out.entry(f.clone()).or_default().push(i);
                }
            }
        }
        out
    }
}
