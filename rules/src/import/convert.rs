//! From the gathered Azure objects to portcullis' config tree (then YAML).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::{Gathered, ImportError, ImportOptions, Imported, JPath, PolicyIn, RcgIn, get_ci, id_pairs, invalid, lower};
use crate::yaml_emit;

/// Builds the output from everything gathered from all documents.
pub(super) fn build(g: Gathered, files: &[&str], opts: &ImportOptions) -> Result<Imported, ImportError> {
    let Gathered {
        policies,
        rcgs,
        ip_groups,
        warnings,
    } = g;

    // --- exactly one policy (or none, with rule collection groups) ---
    if policies.len() > 1 {
        let list: Vec<String> = policies
            .iter()
            .map(|p| {
                format!(
                    "{}: {} ({})",
                    p.origin.file,
                    p.origin.path,
                    p.name.as_deref().unwrap_or("unnamed")
                )
            })
            .collect();
        return Err(ImportError::Input {
            message: format!(
                "found {} firewall policies ({}); import exactly one policy per run (a base \
                 policy is imported into its own file)",
                policies.len(),
                list.join("; ")
            ),
        });
    }
    let policy = policies.into_iter().next();
    if policy.is_none() && rcgs.is_empty() {
        return Err(ImportError::Input {
            message: format!(
                "no firewall policy or rule collection group found in {}",
                files.join(", ")
            ),
        });
    }

    // --- every rule collection group belongs to that policy ---
    let mut owner: Option<(String, String)> = policy.as_ref().and_then(|p| {
        p.name
            .clone()
            .map(|n| (n, format!("the policy at {}: {}", p.origin.file, p.origin.path)))
    });
    for r in &rcgs {
        let Some(p) = &r.policy else { continue };
        match &owner {
            Some((name, what)) if !name.eq_ignore_ascii_case(p) => {
                return Err(invalid(
                    &r.origin.file,
                    &r.origin.path,
                    format!(
                        "rule collection group {:?} belongs to firewall policy {p:?}, not to \
                         {name:?} ({what})",
                        r.name
                    ),
                ));
            }
            Some(_) => {}
            None => {
                owner = Some((
                    p.clone(),
                    format!(
                        "named by rule collection group {:?} at {}: {}",
                        r.name, r.origin.file, r.origin.path
                    ),
                ));
            }
        }
    }

    // --- duplicates ---
    let mut seen_rcg: HashMap<String, &RcgIn> = HashMap::new();
    for r in &rcgs {
        if let Some(first) = seen_rcg.insert(lower(&r.name), r) {
            return Err(invalid(
                &r.origin.file,
                &r.origin.path,
                format!(
                    "rule collection group {:?} is defined twice (also at {}: {})",
                    r.name, first.origin.file, first.origin.path
                ),
            ));
        }
    }
    let mut ipg_out: Vec<(String, Vec<String>)> = Vec::new();
    let mut ipg_names: HashMap<String, (String, usize)> = HashMap::new();
    for g in &ip_groups {
        match ipg_names.get(&lower(&g.name)) {
            Some((_, idx)) => {
                let same = ipg_out.get(*idx).is_some_and(|(_, addrs)| *addrs == g.addresses);
                if !same {
                    return Err(invalid(
                        &g.origin.file,
                        &g.origin.path,
                        format!("IP group {:?} is defined twice with different addresses", g.name),
                    ));
                }
            }
            None => {
                ipg_names.insert(lower(&g.name), (g.name.clone(), ipg_out.len()));
                ipg_out.push((g.name.clone(), g.addresses.clone()));
            }
        }
    }

    let mut conv = Conv {
        opts,
        warnings,
        ip_groups: ipg_names
            .iter()
            .map(|(k, (name, _))| (k.clone(), name.clone()))
            .collect(),
        warned_missing_ipg: HashSet::new(),
    };

    // --- policy settings ---
    let mut out_policy = Map::new();
    if let Some(p) = &policy {
        conv.policy_settings(p, &mut out_policy)?;
    } else {
        let first = rcgs.first();
        conv.warnings.push(format!(
            "{}: no firewall policy in the input: policy settings (threat intelligence, DNS, \
             SNAT) are left at portcullis defaults",
            first.map_or("input", |r| r.origin.file.as_str())
        ));
    }

    // --- rule collection groups ---
    let mut groups: Vec<(i64, Value)> = Vec::new();
    for r in &rcgs {
        groups.push(conv.rcg(r)?);
    }
    groups.sort_by_key(|(prio, _)| *prio);

    if let Some(p) = &policy {
        for (name, path) in &p.rcg_refs {
            if !seen_rcg.contains_key(&lower(name)) {
                conv.warn(
                    &p.origin.file,
                    path,
                    format!(
                        "the policy references rule collection group {name:?}, which is not in \
                         the input: its rules are missing from the output (export it with `az \
                         network firewall policy rule-collection-group show`)"
                    ),
                );
            }
        }
    }

    if !ipg_out.is_empty() {
        ipg_out.sort_by_key(|(name, _)| lower(name));
        let mut m = Map::new();
        for (name, addrs) in ipg_out {
            m.insert(name, strings(addrs));
        }
        out_policy.insert("ipGroups".into(), Value::Object(m));
    }
    out_policy.insert(
        "ruleCollectionGroups".into(),
        Value::Array(groups.into_iter().map(|(_, v)| v).collect()),
    );

    let mut root = Map::new();
    root.insert("policy".into(), Value::Object(out_policy));

    let mut comments = vec![format!("Imported from {} by portcullis import", files.join(", "))];
    match policy.as_ref().and_then(|p| p.name.as_deref()) {
        Some(name) => comments.push(format!("Firewall policy: {name}")),
        None if policy.is_some() => comments.push("Firewall policy: (unnamed)".into()),
        None => comments.push("No firewall policy in the input: only rule collection groups were imported".into()),
    }
    Ok(Imported {
        yaml: yaml_emit::to_yaml_with_comments(&comments, &Value::Object(root)),
        warnings: conv.warnings,
    })
}

fn strings(v: Vec<String>) -> Value {
    Value::Array(v.into_iter().map(Value::String).collect())
}

/// A list of strings (numbers are accepted and written as strings, e.g. ports).
pub(super) fn string_list(file: &str, path: &JPath, v: &Value) -> Result<Vec<String>, ImportError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(invalid(file, &path.idx(i), "expected a string")),
            })
            .collect(),
        _ => Err(invalid(file, path, "expected a list of strings")),
    }
}

fn int_value(file: &str, path: &JPath, what: &str, v: &Value) -> Result<i64, ImportError> {
    let n = match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    n.ok_or_else(|| invalid(file, path, format!("{what} must be an integer")))
}

fn canon(
    file: &str,
    path: &JPath,
    field: &str,
    value: &str,
    allowed: &[&'static str],
) -> Result<&'static str, ImportError> {
    allowed
        .iter()
        .copied()
        .find(|a| a.eq_ignore_ascii_case(value.trim()))
        .ok_or_else(|| {
            invalid(
                file,
                path,
                format!("unknown {field} {value:?} (expected {})", allowed.join(", ")),
            )
        })
}

/// Is this value "nothing" (so an unknown key holding it can be ignored silently)?
fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Bool(true) | Value::Number(_) => false,
    }
}

/// The fields of one object, looked up case-insensitively and consumed as they are handled,
/// so whatever is left at the end is unknown.
struct Fields<'v> {
    file: &'v str,
    path: JPath,
    entries: Vec<(&'v str, &'v Value)>,
}

impl<'v> Fields<'v> {
    fn new(file: &'v str, path: &JPath, obj: &'v Map<String, Value>) -> Result<Self, ImportError> {
        let mut seen: HashSet<String> = HashSet::new();
        for k in obj.keys() {
            if !seen.insert(lower(k)) {
                return Err(invalid(
                    file,
                    &path.key(k),
                    format!("field {k:?} appears twice (with different letter case)"),
                ));
            }
        }
        Ok(Fields {
            file,
            path: path.clone(),
            entries: obj.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        })
    }

    fn of(file: &'v str, path: &JPath, what: &str, v: &'v Value) -> Result<Self, ImportError> {
        match v {
            Value::Object(m) => Fields::new(file, path, m),
            _ => Err(invalid(file, path, format!("{what} must be an object"))),
        }
    }

    /// Removes and returns a field; `null` counts as absent.
    fn take(&mut self, key: &str) -> Option<(JPath, &'v Value)> {
        let pos = self.entries.iter().position(|(k, _)| k.eq_ignore_ascii_case(key))?;
        let (k, v) = self.entries.remove(pos);
        (!v.is_null()).then(|| (self.path.key(k), v))
    }

    fn discard(&mut self, keys: &[&str]) {
        self.entries
            .retain(|(k, _)| !keys.iter().any(|d| d.eq_ignore_ascii_case(k)));
    }

    fn take_str(&mut self, key: &str) -> Result<Option<(JPath, String)>, ImportError> {
        match self.take(key) {
            None => Ok(None),
            Some((p, Value::String(s))) => Ok(Some((p, s.clone()))),
            Some((p, Value::Number(n))) => Ok(Some((p, n.to_string()))),
            Some((p, _)) => Err(invalid(self.file, &p, format!("{key} must be a string"))),
        }
    }

    fn take_list(&mut self, key: &str) -> Result<(JPath, Vec<String>), ImportError> {
        match self.take(key) {
            None => Ok((self.path.key(key), Vec::new())),
            Some((p, v)) => {
                let list = string_list(self.file, &p, v)?;
                Ok((p, list))
            }
        }
    }

    fn take_bool(&mut self, key: &str) -> Result<Option<bool>, ImportError> {
        match self.take(key) {
            None => Ok(None),
            Some((_, Value::Bool(b))) => Ok(Some(*b)),
            Some((_, Value::String(s))) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some((_, Value::String(s))) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some((p, _)) => Err(invalid(self.file, &p, format!("{key} must be true or false"))),
        }
    }

    fn take_int(&mut self, key: &str) -> Result<Option<i64>, ImportError> {
        match self.take(key) {
            None => Ok(None),
            Some((p, v)) => int_value(self.file, &p, key, v).map(Some),
        }
    }

    /// Unknown fields that hold something (null, false, "", [] and {} are ignored).
    fn rest(self) -> Vec<(String, JPath)> {
        self.entries
            .into_iter()
            .filter(|(_, v)| !is_empty_value(v))
            .map(|(k, _)| (k.to_owned(), self.path.key(k)))
            .collect()
    }
}

struct Conv<'a> {
    opts: &'a ImportOptions,
    warnings: Vec<String>,
    /// lowercase name → name as spelled by the IP group resource.
    ip_groups: HashMap<String, String>,
    warned_missing_ipg: HashSet<String>,
}

/// What rule conversion decided.
enum RuleOutcome {
    Keep(Value),
    Drop(String),
}

impl Conv<'_> {
    fn warn(&mut self, file: &str, path: &JPath, message: impl std::fmt::Display) {
        self.warnings.push(format!("{file}: {path}: {message}"));
    }

    /// An unsupported feature: an error, or (skip_unsupported) a warning saying what was dropped.
    fn unsupported(&mut self, file: &str, path: &JPath, what: &str, dropped: &str) -> Result<(), ImportError> {
        if self.opts.skip_unsupported {
            self.warn(
                file,
                path,
                format!("dropped {dropped}: {what}, which portcullis does not support"),
            );
            Ok(())
        } else {
            Err(ImportError::Unsupported {
                file: file.to_owned(),
                path: path.to_string(),
                what: what.to_owned(),
            })
        }
    }

    fn unknown_fields(&mut self, file: &str, rest: Vec<(String, JPath)>, what: &str) -> Result<bool, ImportError> {
        let any = !rest.is_empty();
        for (key, path) in rest {
            self.unsupported(
                file,
                &path,
                &format!("unknown {what} field `{key}`"),
                &format!("`{key}`"),
            )?;
        }
        Ok(any)
    }

    // ----------------------------------------------------------------------------- policy

    fn policy_settings(&mut self, p: &PolicyIn, out: &mut Map<String, Value>) -> Result<(), ImportError> {
        let file = p.origin.file.as_str();
        let mut f = Fields::new(file, &p.props_path, &p.props)?;
        f.discard(&["provisioningState", "size", "firewalls", "childPolicies", "insights"]);

        if let Some((path, v)) = f.take("sku") {
            let mut sku = Fields::of(file, &path, "sku", v)?;
            if let Some((tpath, tier)) = sku.take_str("tier")?
                && tier.eq_ignore_ascii_case("premium")
            {
                self.warn(
                    file,
                    &tpath,
                    "the policy tier is Premium; portcullis implements the Standard feature \
                     set (each Premium feature in use is reported separately)",
                );
            }
        }

        if let Some((path, v)) = f.take("basePolicy") {
            let mut base = Fields::of(file, &path, "basePolicy", v)?;
            if let Some((_, id)) = base.take_str("id")? {
                let name = id.split('/').rfind(|s| !s.is_empty()).unwrap_or_default().to_owned();
                if name.is_empty() {
                    return Err(invalid(file, &path, "basePolicy.id is empty"));
                }
                let target = format!("{name}.yaml");
                self.warn(
                    file,
                    &path,
                    format!(
                        "the policy inherits from base policy {name:?}: import the parent policy \
                         ({id}) into {target}"
                    ),
                );
                out.insert("basePolicy".into(), Value::String(target));
            }
        }

        if let Some((path, mode)) = f.take_str("threatIntelMode")?
            && !mode.is_empty()
        {
            let mode = canon(file, &path, "threatIntelMode", &mode, &["Off", "Alert", "Deny"])?;
            out.insert("threatIntelMode".into(), Value::String(mode.into()));
        }

        if let Some((path, v)) = f.take("threatIntelWhitelist") {
            let mut w = Fields::of(file, &path, "threatIntelWhitelist", v)?;
            let (_, ips) = w.take_list("ipAddresses")?;
            let (_, fqdns) = w.take_list("fqdns")?;
            self.unknown_fields(file, w.rest(), "threatIntelWhitelist")?;
            let mut m = Map::new();
            if !ips.is_empty() {
                m.insert("ipAddresses".into(), strings(ips));
            }
            if !fqdns.is_empty() {
                m.insert("fqdns".into(), strings(fqdns));
            }
            if !m.is_empty() {
                out.insert("threatIntelWhitelist".into(), Value::Object(m));
            }
        }

        if let Some((path, v)) = f.take("dnsSettings") {
            let mut d = Fields::of(file, &path, "dnsSettings", v)?;
            let enable = d.take_bool("enableProxy")?;
            let (_, servers) = d.take_list("servers")?;
            let require = d.take_bool("requireProxyForNetworkRules")?;
            self.unknown_fields(file, d.rest(), "dnsSettings")?;
            let mut m = Map::new();
            if let Some(b) = enable {
                m.insert("enableProxy".into(), Value::Bool(b));
            }
            if !servers.is_empty() {
                m.insert("servers".into(), strings(servers));
            }
            if let Some(b) = require {
                m.insert("requireProxyForNetworkRules".into(), Value::Bool(b));
            }
            if !m.is_empty() {
                out.insert("dnsSettings".into(), Value::Object(m));
            }
        }

        if let Some((path, v)) = f.take("snat") {
            let mut s = Fields::of(file, &path, "snat", v)?;
            let (_, ranges) = s.take_list("privateRanges")?;
            let auto = match s.take_str("autoLearnPrivateRanges")? {
                Some((apath, a)) if !a.is_empty() => {
                    match canon(file, &apath, "autoLearnPrivateRanges", &a, &["Enabled", "Disabled"])? {
                        "Enabled" => {
                            self.unsupported(
                                file,
                                &apath,
                                "autoLearnPrivateRanges Enabled (learning SNAT ranges from Azure \
                                 Route Server)",
                                "autoLearnPrivateRanges",
                            )?;
                            None
                        }
                        other => Some(other),
                    }
                }
                _ => None,
            };
            self.unknown_fields(file, s.rest(), "snat")?;
            let mut m = Map::new();
            if !ranges.is_empty() {
                m.insert("privateRanges".into(), strings(ranges));
            }
            if let Some(a) = auto {
                m.insert("autoLearnPrivateRanges".into(), Value::String(a.into()));
            }
            if !m.is_empty() {
                out.insert("snat".into(), Value::Object(m));
            }
        }

        if let Some((path, v)) = f.take("sql") {
            let mut s = Fields::of(file, &path, "sql", v)?;
            if s.take_bool("allowSqlRedirect")? == Some(true) {
                self.unsupported(
                    file,
                    &path,
                    "sql.allowSqlRedirect true (SQL redirect mode)",
                    "sql.allowSqlRedirect",
                )?;
            }
            self.unknown_fields(file, s.rest(), "sql")?;
        }

        if let Some((path, v)) = f.take("explicitProxy") {
            let mut e = Fields::of(file, &path, "explicitProxy", v)?;
            if e.take_bool("enableExplicitProxy")? == Some(true) {
                self.unsupported(
                    file,
                    &path,
                    "explicitProxy enabled (explicit proxy mode)",
                    "explicitProxy",
                )?;
            }
            // Ports and PAC settings of a disabled explicit proxy mean nothing.
        }

        if let Some((path, v)) = f.take("intrusionDetection") {
            let mut i = Fields::of(file, &path, "intrusionDetection", v)?;
            if let Some((mpath, mode)) = i.take_str("mode")?
                && !mode.is_empty()
            {
                let mode = canon(
                    file,
                    &mpath,
                    "intrusionDetection mode",
                    &mode,
                    &["Off", "Alert", "Deny"],
                )?;
                if mode != "Off" {
                    self.unsupported(
                        file,
                        &path,
                        &format!("intrusionDetection mode {mode} (IDPS, Premium)"),
                        "intrusionDetection",
                    )?;
                }
            }
            // Signature overrides, bypass lists and profiles of IDPS that is off mean nothing.
        }

        if let Some((path, v)) = f.take("transportSecurity") {
            let set = match v {
                Value::Object(m) => m.values().any(|x| !is_empty_value(x)),
                other => !is_empty_value(other),
            };
            if set {
                self.unsupported(
                    file,
                    &path,
                    "transportSecurity (the TLS inspection CA certificate, Premium)",
                    "transportSecurity",
                )?;
            }
        }

        self.unknown_fields(file, f.rest(), "policy")?;
        Ok(())
    }

    // -------------------------------------------------------------------- rule collection groups

    fn rcg(&mut self, r: &RcgIn) -> Result<(i64, Value), ImportError> {
        let file = r.origin.file.as_str();
        let mut f = Fields::new(file, &r.props_path, &r.props)?;
        f.discard(&["provisioningState", "size"]);
        let priority = f.take_int("priority")?.ok_or_else(|| {
            invalid(
                file,
                &r.origin.path,
                format!("rule collection group {:?} has no priority", r.name),
            )
        })?;
        let collections = match f.take("ruleCollections") {
            None => Vec::new(),
            Some((path, Value::Array(items))) => {
                let mut out: Vec<(i64, Value)> = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    if let Some(rc) = self.rule_collection(file, &path.idx(i), item)? {
                        out.push(rc);
                    }
                }
                out.sort_by_key(|(prio, _)| *prio);
                out.into_iter().map(|(_, v)| v).collect()
            }
            Some((path, _)) => return Err(invalid(file, &path, "ruleCollections must be a list")),
        };
        // Unknown group-level fields: nothing to drop but the field itself.
        self.unknown_fields(file, f.rest(), "rule collection group")?;

        let mut m = Map::new();
        m.insert("name".into(), Value::String(r.name.clone()));
        m.insert("priority".into(), Value::from(priority));
        m.insert("ruleCollections".into(), Value::Array(collections));
        Ok((priority, Value::Object(m)))
    }

    fn rule_collection(&mut self, file: &str, path: &JPath, v: &Value) -> Result<Option<(i64, Value)>, ImportError> {
        let mut f = Fields::of(file, path, "a rule collection", v)?;
        let Some((tpath, rc_type)) = f.take_str("ruleCollectionType")? else {
            return Err(invalid(file, path, "rule collection has no ruleCollectionType"));
        };
        let rc_type = canon(
            file,
            &tpath,
            "ruleCollectionType",
            &rc_type,
            &["FirewallPolicyFilterRuleCollection", "FirewallPolicyNatRuleCollection"],
        )?;
        let name = f.take_str("name")?.map(|(_, n)| n);
        let Some(priority) = f.take_int("priority")? else {
            return Err(invalid(file, path, "rule collection has no priority"));
        };
        let Some((apath, action)) = f.take("action") else {
            return Err(invalid(file, path, "rule collection has no action"));
        };
        let mut a = Fields::of(file, &apath, "action", action)?;
        let Some((atpath, atype)) = a.take_str("type")? else {
            return Err(invalid(file, &apath, "action has no type"));
        };
        let action = canon(file, &atpath, "action type", &atype, &["Allow", "Deny", "DNAT"])?;
        let rules = f.take("rules");
        let mut unknown = a.rest();
        unknown.extend(f.rest());
        if self.unknown_fields(file, unknown, "rule collection")? {
            self.warn(
                file,
                path,
                format!(
                    "dropped rule collection {:?} as a whole: it has fields portcullis does not \
                     know{}",
                    name.as_deref().unwrap_or("(unnamed)"),
                    deny_note(action, "collection")
                ),
            );
            return Ok(None);
        }

        let mut out_rules = Vec::new();
        match rules {
            None => {}
            Some((rpath, Value::Array(items))) => {
                for (i, item) in items.iter().enumerate() {
                    let rule_path = rpath.idx(i);
                    match self.rule(file, &rule_path, item, action)? {
                        RuleOutcome::Keep(v) => out_rules.push(v),
                        RuleOutcome::Drop(why) => {
                            let rule_name = item
                                .as_object()
                                .and_then(|o| get_ci(o, "name"))
                                .and_then(|(_, n)| n.as_str())
                                .unwrap_or("(unnamed)");
                            self.warn(
                                file,
                                &rule_path,
                                format!("dropped rule {rule_name:?}: {why}{}", deny_note(action, "rule")),
                            );
                        }
                    }
                }
            }
            Some((rpath, _)) => return Err(invalid(file, &rpath, "rules must be a list")),
        }

        let mut m = Map::new();
        m.insert("ruleCollectionType".into(), Value::String(rc_type.into()));
        if let Some(n) = name {
            m.insert("name".into(), Value::String(n));
        }
        m.insert("priority".into(), Value::from(priority));
        let mut am = Map::new();
        am.insert("type".into(), Value::String(action.into()));
        m.insert("action".into(), Value::Object(am));
        m.insert("rules".into(), Value::Array(out_rules));
        Ok(Some((priority, Value::Object(m))))
    }

    // ------------------------------------------------------------------------------- rules

    fn rule(&mut self, file: &str, path: &JPath, v: &Value, action: &str) -> Result<RuleOutcome, ImportError> {
        let mut f = Fields::of(file, path, "a rule", v)?;
        let Some((tpath, rule_type)) = f.take_str("ruleType")? else {
            return Err(invalid(file, path, "rule has no ruleType"));
        };
        let rule_type = canon(
            file,
            &tpath,
            "ruleType",
            &rule_type,
            &["NetworkRule", "ApplicationRule", "NatRule"],
        )?;
        let mut out = Map::new();
        out.insert("ruleType".into(), Value::String(rule_type.into()));
        if let Some((_, n)) = f.take_str("name")? {
            out.insert("name".into(), Value::String(n));
        }
        if let Some((_, d)) = f.take_str("description")?
            && !d.is_empty()
        {
            out.insert("description".into(), Value::String(d));
        }
        let outcome = match rule_type {
            "NetworkRule" => self.network_rule(file, path, &mut f, &mut out)?,
            "ApplicationRule" => self.application_rule(file, path, &mut f, &mut out, action)?,
            _ => self.nat_rule(file, &mut f, &mut out)?,
        };
        if let Some(why) = outcome {
            return Ok(RuleOutcome::Drop(why));
        }
        if self.unknown_fields(file, f.rest(), "rule")? {
            return Ok(RuleOutcome::Drop(
                "it has fields portcullis does not know, so it could match more than in Azure".into(),
            ));
        }
        Ok(RuleOutcome::Keep(Value::Object(out)))
    }

    fn list_field(&mut self, f: &mut Fields<'_>, out: &mut Map<String, Value>, key: &str) -> Result<(), ImportError> {
        let (_, list) = f.take_list(key)?;
        if !list.is_empty() {
            out.insert(key.into(), strings(list));
        }
        Ok(())
    }

    fn ip_protocols(
        &mut self,
        file: &str,
        f: &mut Fields<'_>,
        out: &mut Map<String, Value>,
    ) -> Result<(), ImportError> {
        let (path, list) = f.take_list("ipProtocols")?;
        let mut canon_list = Vec::new();
        for (i, p) in list.iter().enumerate() {
            canon_list.push(
                canon(
                    file,
                    &path.idx(i),
                    "ipProtocols value",
                    p,
                    &["TCP", "UDP", "ICMP", "Any"],
                )?
                .to_owned(),
            );
        }
        if !canon_list.is_empty() {
            out.insert("ipProtocols".into(), strings(canon_list));
        }
        Ok(())
    }

    fn ip_groups_field(
        &mut self,
        file: &str,
        f: &mut Fields<'_>,
        out: &mut Map<String, Value>,
        key: &str,
    ) -> Result<(), ImportError> {
        let (path, list) = f.take_list(key)?;
        let mut names = Vec::new();
        for (i, entry) in list.iter().enumerate() {
            let epath = path.idx(i);
            let name = if entry.contains('/') {
                match id_pairs(entry).last() {
                    Some((t, n)) if t.eq_ignore_ascii_case("ipGroups") && !n.is_empty() => n.clone(),
                    _ => {
                        return Err(invalid(
                            file,
                            &epath,
                            format!("{entry:?} is not an IP group resource id"),
                        ));
                    }
                }
            } else {
                entry.trim().to_owned()
            };
            if name.is_empty() {
                return Err(invalid(file, &epath, "empty IP group reference"));
            }
            let key_lower = lower(&name);
            match self.ip_groups.get(&key_lower) {
                Some(canonical) => names.push(canonical.clone()),
                None => {
                    if self.warned_missing_ipg.insert(key_lower) {
                        self.warn(
                            file,
                            &epath,
                            format!(
                                "IP group {name:?} is referenced but not in the input: add it \
                                 under policy.ipGroups (`az network ip-group show -n {name}` \
                                 prints its addresses)"
                            ),
                        );
                    }
                    names.push(name);
                }
            }
        }
        if !names.is_empty() {
            out.insert(key.into(), strings(names));
        }
        Ok(())
    }

    /// Returns `Some(reason)` to drop the rule.
    fn network_rule(
        &mut self,
        file: &str,
        _path: &JPath,
        f: &mut Fields<'_>,
        out: &mut Map<String, Value>,
    ) -> Result<Option<String>, ImportError> {
        self.ip_protocols(file, f, out)?;
        self.list_field(f, out, "sourceAddresses")?;
        self.ip_groups_field(file, f, out, "sourceIpGroups")?;
        self.list_field(f, out, "destinationAddresses")?;
        self.ip_groups_field(file, f, out, "destinationIpGroups")?;
        self.list_field(f, out, "destinationFqdns")?;
        self.list_field(f, out, "destinationPorts")?;
        Ok(None)
    }

    fn nat_rule(
        &mut self,
        file: &str,
        f: &mut Fields<'_>,
        out: &mut Map<String, Value>,
    ) -> Result<Option<String>, ImportError> {
        self.ip_protocols(file, f, out)?;
        self.list_field(f, out, "sourceAddresses")?;
        self.ip_groups_field(file, f, out, "sourceIpGroups")?;
        self.list_field(f, out, "destinationAddresses")?;
        self.list_field(f, out, "destinationPorts")?;
        for key in ["translatedAddress", "translatedFqdn", "translatedPort"] {
            if let Some((_, s)) = f.take_str(key)?
                && !s.is_empty()
            {
                out.insert(key.into(), Value::String(s));
            }
        }
        Ok(None)
    }

    fn application_rule(
        &mut self,
        file: &str,
        path: &JPath,
        f: &mut Fields<'_>,
        out: &mut Map<String, Value>,
        action: &str,
    ) -> Result<Option<String>, ImportError> {
        self.list_field(f, out, "sourceAddresses")?;
        self.ip_groups_field(file, f, out, "sourceIpGroups")?;

        // protocols
        let mut had_protocols = false;
        let mut protocols = Vec::new();
        if let Some((ppath, v)) = f.take("protocols") {
            let Value::Array(items) = v else {
                return Err(invalid(file, &ppath, "protocols must be a list"));
            };
            had_protocols = !items.is_empty();
            for (i, item) in items.iter().enumerate() {
                let ipath = ppath.idx(i);
                let mut p = Fields::of(file, &ipath, "a protocol", item)?;
                let Some((tpath, ptype)) = p.take_str("protocolType")? else {
                    return Err(invalid(file, &ipath, "protocol has no protocolType"));
                };
                let port = p.take_int("port")?;
                if ptype.trim().eq_ignore_ascii_case("mssql") {
                    self.unsupported(
                        file,
                        path,
                        "protocol Mssql (SQL FQDN filtering)",
                        &format!("protocol Mssql:{}", port.unwrap_or_default()),
                    )?;
                    continue;
                }
                let ptype = canon(file, &tpath, "protocolType", &ptype, &["Http", "Https"])?;
                let unknown = p.rest();
                if !unknown.is_empty() {
                    let mut dropped = false;
                    for (key, kpath) in unknown {
                        self.unsupported(
                            file,
                            &kpath,
                            &format!("unknown protocol field `{key}`"),
                            &format!("protocol {ptype}"),
                        )?;
                        dropped = true;
                    }
                    if dropped {
                        continue;
                    }
                }
                let mut m = Map::new();
                m.insert("protocolType".into(), Value::String(ptype.into()));
                if let Some(port) = port {
                    m.insert("port".into(), Value::from(port));
                }
                protocols.push(Value::Object(m));
            }
        }
        let protocols_dropped = had_protocols && protocols.is_empty();
        if !protocols.is_empty() {
            out.insert("protocols".into(), Value::Array(protocols));
        }

        // targets
        let (_, fqdns) = f.take_list("targetFqdns")?;
        let (_, urls) = f.take_list("targetUrls")?;
        let (_, tags) = f.take_list("fqdnTags")?;
        let (_, categories) = f.take_list("webCategories")?;
        let had_targets = !fqdns.is_empty() || !urls.is_empty() || !tags.is_empty() || !categories.is_empty();
        let mut partial = false;
        if !urls.is_empty() {
            self.unsupported(
                file,
                path,
                "targetUrls need TLS inspection (Premium)",
                &format!("targetUrls {}", list_text(&urls)),
            )?;
            partial = true;
        }
        if !categories.is_empty() {
            self.unsupported(
                file,
                path,
                "webCategories need Azure's web category service",
                &format!("webCategories {}", list_text(&categories)),
            )?;
            partial = true;
        }
        if f.take_bool("terminateTLS")? == Some(true) {
            self.unsupported(
                file,
                path,
                "terminateTLS true (TLS inspection, Premium)",
                "terminateTLS (HTTPS is matched on SNI only)",
            )?;
        }
        let targets_dropped = had_targets && fqdns.is_empty() && tags.is_empty();
        if !fqdns.is_empty() {
            out.insert("targetFqdns".into(), strings(fqdns));
        }
        if !tags.is_empty() {
            out.insert("fqdnTags".into(), strings(tags));
        }
        self.list_field(f, out, "destinationAddresses")?;

        // httpHeadersToInsert
        if let Some((hpath, v)) = f.take("httpHeadersToInsert") {
            let Value::Array(items) = v else {
                return Err(invalid(file, &hpath, "httpHeadersToInsert must be a list"));
            };
            let mut headers = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let ipath = hpath.idx(i);
                let mut h = Fields::of(file, &ipath, "an HTTP header", item)?;
                let name = h.take_str("headerName")?.map(|(_, s)| s);
                let value = h.take_str("headerValue")?.map(|(_, s)| s);
                if !h.rest().is_empty() {
                    return Err(invalid(
                        file,
                        &ipath,
                        "an HTTP header has only headerName and headerValue",
                    ));
                }
                let mut m = Map::new();
                if let Some(n) = name {
                    m.insert("headerName".into(), Value::String(n));
                }
                if let Some(v) = value {
                    m.insert("headerValue".into(), Value::String(v));
                }
                headers.push(Value::Object(m));
            }
            if !headers.is_empty() {
                out.insert("httpHeadersToInsert".into(), Value::Array(headers));
            }
        }

        if targets_dropped {
            return Ok(Some(
                "its only targets were unsupported; it is not imported as a broader rule".into(),
            ));
        }
        if protocols_dropped {
            return Ok(Some(
                "its only protocols were unsupported; it is not imported as a broader rule".into(),
            ));
        }
        if partial && action == "Deny" {
            self.warn(
                file,
                path,
                "this Deny rule lost some of its targets, so it blocks less than in Azure",
            );
        }
        Ok(None)
    }
}

fn deny_note(action: &str, what: &str) -> String {
    if action == "Deny" {
        format!("; it was a Deny {what}, so the imported policy allows more than the Azure one")
    } else {
        String::new()
    }
}

fn list_text(items: &[String]) -> String {
    const MAX: usize = 3;
    let shown: Vec<&str> = items.iter().take(MAX).map(String::as_str).collect();
    let more = items.len().saturating_sub(MAX);
    if more > 0 {
        format!("[{}, … {more} more]", shown.join(", "))
    } else {
        format!("[{}]", shown.join(", "))
    }
}
