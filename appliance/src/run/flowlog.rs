//! The flow log: one JSON line per flow event from the data plane (the first packet of an allowed or denied
//! flow). Column names follow Azure Firewall's resource-specific tables (`AZFWNetworkRule`, `AZFWNatRule`,
//! `AZFWThreatIntel`), so the queries Azure users have carry over; the operations work will complete the
//! columns. Everything about the record's shape lives in this module.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_rules::policy::RuleKind;
use portcullis_rules::{Policy, Stage, Verdict};
use serde::Serialize;

use super::settings::FlowLogTarget;

/// A flow event as the flow log needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub protocol: u8,
    pub source: Ipv4Addr,
    pub source_port: u16,
    pub destination: Ipv4Addr,
    pub destination_port: u16,
    pub action: Verdict,
    pub stage: Stage,
    /// Index into [`Policy::rules`] of the deciding rule.
    pub rule_index: Option<u32>,
    /// Whether the flow leaves with an appliance address (SNAT, or DNAT's source rewrite).
    pub snat: bool,
    /// DNAT: the translated destination; SNAT: the source address and port chosen.
    pub nat: Option<(Ipv4Addr, u16)>,
    /// The destination is on the threat-intelligence feed (mode Alert: the rules decided).
    pub threat_intel_alert: bool,
    /// An established flow re-classified after a policy change.
    pub reclassified: bool,
}

/// One line of the flow log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Record {
    pub time_generated: String,
    /// The Azure table the record belongs to.
    pub category: &'static str,
    pub protocol: String,
    pub source_ip: Ipv4Addr,
    pub source_port: u16,
    pub destination_ip: Ipv4Addr,
    pub destination_port: u16,
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub translated_ip: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub translated_port: Option<u16>,
    pub policy: String,
    pub rule_collection_group: String,
    pub rule_collection: String,
    pub rule: String,
    pub action_reason: String,
    /// portcullis: whether the source was rewritten to an appliance address.
    pub snat: bool,
    /// portcullis: the SNAT source address and port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_ip: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_port: Option<u16>,
    /// portcullis: the destination is on the threat-intelligence feed (mode Alert).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub threat_intel_alert: bool,
    /// portcullis: an established flow decided again after a policy reload.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reclassified: bool,
}

pub fn protocol_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        n => format!("IP{n}"),
    }
}

impl Record {
    /// The record for `e`, naming the rule from `policy` (the generation the event was classified under).
    pub fn new(e: &Event, policy: &Policy, now: SystemTime) -> Self {
        let rule = e.rule_index.and_then(|i| policy.rules.get(i as usize));
        let collection = rule.map(|r| policy.collection_of(r));
        let dnat = e.action == Verdict::Dnat;
        let (translated_ip, translated_port) = match (dnat, e.nat, rule.map(|r| &r.kind)) {
            (true, Some((ip, port)), _) => (Some(ip), Some(port)),
            (true, None, Some(RuleKind::Nat(n))) => match &n.translated {
                portcullis_rules::NatTarget::Address(ip) => (Some(*ip), Some(n.translated_port)),
                _ => (None, Some(n.translated_port)),
            },
            _ => (None, None),
        };
        let (snat_ip, snat_port) = match (dnat, e.nat) {
            (false, Some((ip, port))) if e.snat => (Some(ip), Some(port)),
            _ => (None, None),
        };
        let category = match e.stage {
            Stage::ThreatIntel => "AZFWThreatIntel",
            Stage::Dnat => "AZFWNatRule",
            Stage::Application => "AZFWApplicationRule",
            Stage::Network | Stage::Default => "AZFWNetworkRule",
        };
        let action_reason = match e.stage {
            Stage::ThreatIntel => "Threat intelligence feed",
            _ if rule.is_none() => "Default Action",
            _ => "",
        }
        .to_owned();
        Record {
            time_generated: rfc3339(now),
            category,
            protocol: protocol_name(e.protocol),
            source_ip: e.source,
            source_port: e.source_port,
            destination_ip: e.destination,
            destination_port: e.destination_port,
            action: match e.action {
                Verdict::Allow => "Allow",
                Verdict::Deny => "Deny",
                Verdict::Dnat => "DNAT",
            },
            translated_ip,
            translated_port,
            policy: collection.map(|c| c.policy.clone()).unwrap_or_default(),
            rule_collection_group: collection.map(|c| c.group.clone()).unwrap_or_default(),
            rule_collection: collection.map(|c| c.name.clone()).unwrap_or_default(),
            rule: rule.map(|r| r.name.clone()).unwrap_or_default(),
            action_reason,
            snat: e.snat,
            snat_ip,
            snat_port,
            threat_intel_alert: e.threat_intel_alert,
            reclassified: e.reclassified,
        }
    }
}

/// One application-rule decision of the proxy (`AZFWApplicationRule`; every HTTP request is one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AppRecord {
    pub time_generated: String,
    pub category: &'static str,
    /// `HTTP` or `HTTPS`.
    pub protocol: &'static str,
    pub source_ip: Ipv4Addr,
    pub source_port: u16,
    pub destination_port: u16,
    pub fqdn: String,
    pub target_url: String,
    pub action: &'static str,
    pub policy: String,
    pub rule_collection_group: String,
    pub rule_collection: String,
    pub rule: String,
    /// Empty when a rule decided (as Azure writes it), else why.
    pub action_reason: String,
    pub is_tls_inspected: bool,
    pub web_category: String,
    pub is_explicit_proxy_request: bool,
    /// portcullis: the address the client connected to (ignored: the appliance dials by name).
    pub destination_ip: Ipv4Addr,
    /// portcullis: where the appliance connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ip: Option<Ipv4Addr>,
    /// portcullis: the decision's full reason.
    pub reason: String,
}

impl AppRecord {
    pub fn new(e: &crate::proxy::AppEvent, now: SystemTime) -> Self {
        let d = &e.decision;
        AppRecord {
            time_generated: rfc3339(now),
            category: match d.stage {
                Stage::Network => "AZFWNetworkRule",
                Stage::ThreatIntel => "AZFWThreatIntel",
                _ => "AZFWApplicationRule",
            },
            protocol: e.protocol,
            source_ip: *e.source.ip(),
            source_port: e.source.port(),
            destination_port: e.destination.port(),
            fqdn: e.fqdn.clone().unwrap_or_default(),
            target_url: e.target_url.clone().unwrap_or_default(),
            action: match d.verdict {
                Verdict::Allow => "Allow",
                Verdict::Deny => "Deny",
                Verdict::Dnat => "DNAT",
            },
            policy: d.policy.clone().unwrap_or_default(),
            rule_collection_group: d.rule_collection_group.clone().unwrap_or_default(),
            rule_collection: d.rule_collection.clone().unwrap_or_default(),
            rule: d.rule.clone().unwrap_or_default(),
            action_reason: if d.rule.is_some() {
                String::new()
            } else {
                d.reason.clone()
            },
            is_tls_inspected: false,
            web_category: String::new(),
            is_explicit_proxy_request: false,
            destination_ip: *e.destination.ip(),
            upstream_ip: e.upstream.map(|a| *a.ip()),
            reason: d.reason.clone(),
        }
    }
}

/// `2026-12-01T19:44:34.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Where records are written: stdout or a file opened for appending. Each record is one line, flushed.
pub struct FlowLog {
    out: Box<dyn Write + Send>,
    pub written: u64,
}

impl FlowLog {
    pub fn open(target: &FlowLogTarget) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            FlowLogTarget::Stdout => Box::new(io::stdout()),
            FlowLogTarget::File(p) => Box::new(BufWriter::new(append(p)?)),
        };
        Ok(FlowLog { out, written: 0 })
    }

    /// A flow log writing into `out` (tests).
    pub fn to_writer(out: Box<dyn Write + Send>) -> Self {
        FlowLog { out, written: 0 }
    }

    pub fn write<R: Serialize>(&mut self, record: &R) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.out.flush()?;
        self.written += 1;
        Ok(())
    }
}

fn append(p: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    const POLICY: &str = r#"
policy:
  ruleCollectionGroups:
    - name: rcg-net
      priority: 200
      ruleCollections:
        - ruleCollectionType: FirewallPolicyFilterRuleCollection
          name: allow-web
          priority: 100
          action: {type: Allow}
          rules:
            - ruleType: NetworkRule
              name: web
              ipProtocols: [TCP]
              sourceAddresses: ["*"]
              destinationAddresses: [203.0.113.10]
              destinationPorts: ["80"]
"#;

    fn policy() -> Policy {
        portcullis_rules::load_str("flows.yaml", POLICY, &portcullis_rules::MemLoader::default())
            .unwrap()
            .config
            .policy
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_154_274_123);
        assert_eq!(rfc3339(t), "2026-12-01T19:44:34.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn records_name_the_rule_and_default_action() {
        let p = policy();
        let idx = p.network_rules.start as u32;
        let e = Event {
            protocol: 6,
            source: Ipv4Addr::new(198, 18, 1, 10),
            source_port: 40_001,
            destination: Ipv4Addr::new(203, 0, 113, 10),
            destination_port: 80,
            action: Verdict::Allow,
            stage: Stage::Network,
            rule_index: Some(idx),
            snat: true,
            nat: Some((Ipv4Addr::new(192, 0, 2, 1), 40_123)),
            threat_intel_alert: false,
            reclassified: false,
        };
        let r = Record::new(&e, &p, UNIX_EPOCH);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["Category"], "AZFWNetworkRule");
        assert_eq!(v["Protocol"], "TCP");
        assert_eq!(v["Rule"], "web");
        assert_eq!(v["RuleCollection"], "allow-web");
        assert_eq!(v["RuleCollectionGroup"], "rcg-net");
        assert_eq!(v["Action"], "Allow");
        assert_eq!(v["ActionReason"], "");
        assert_eq!(v["Snat"], true);
        assert!(v.get("TranslatedIp").is_none());
        assert_eq!(v["SnatIp"], "192.0.2.1");
        assert_eq!(v["SnatPort"], 40_123);
        assert!(v.get("Reclassified").is_none());

        let d = Event {
            action: Verdict::Deny,
            stage: Stage::Default,
            rule_index: None,
            destination_port: 81,
            snat: false,
            nat: None,
            reclassified: true,
            ..e
        };
        let v = serde_json::to_value(Record::new(&d, &p, UNIX_EPOCH)).unwrap();
        assert_eq!(v["Action"], "Deny");
        assert_eq!(v["Rule"], "");
        assert_eq!(v["ActionReason"], "Default Action");
        assert_eq!(v["Reclassified"], true);
        assert!(v.get("SnatIp").is_none());
    }

    #[test]
    fn writes_one_line_per_record() {
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Shared::default();
        let mut log = FlowLog::to_writer(Box::new(buf.clone()));
        let e = Event {
            protocol: 17,
            source: Ipv4Addr::new(198, 18, 1, 10),
            source_port: 5000,
            destination: Ipv4Addr::new(203, 0, 113, 10),
            destination_port: 7,
            action: Verdict::Deny,
            stage: Stage::ThreatIntel,
            rule_index: None,
            snat: false,
            nat: None,
            threat_intel_alert: false,
            reclassified: false,
        };
        let p = policy();
        log.write(&Record::new(&e, &p, UNIX_EPOCH)).unwrap();
        log.write(&Record::new(&e, &p, UNIX_EPOCH)).unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["Category"], "AZFWThreatIntel");
        assert_eq!(v["Protocol"], "UDP");
        assert_eq!(v["ActionReason"], "Threat intelligence feed");
        assert_eq!(log.written, 2);
    }
}
