//! `portcullis import`: turn an exported Azure Firewall Policy into portcullis' YAML config.
//!
//! Accepted documents (several may be given; they are merged):
//! - ARM templates (portal "Export template", hand-written, or Bicep output): resources of type
//!   `Microsoft.Network/firewallPolicies`, `…/firewallPolicies/ruleCollectionGroups` (top-level
//!   `policy/rcg` names or child resources nested under the policy) and `Microsoft.Network/ipGroups`.
//!   The template expressions needed for names and references are evaluated (`arm.rs` lists the
//!   supported functions).
//! - REST / az CLI JSON: a policy, rule collection group or IP group object, with or without the
//!   `properties` wrapper (az CLI flattens it), a JSON array of those (arrays may nest, as
//!   `jq -s` produces), or a list response `{"value": [...]}`.
//! - A policy with inline `ruleCollectionGroups` objects (the readable shape of the behaviour spec).
//!
//! Exactly one firewall policy is allowed overall; zero is accepted when rule collection groups are
//! present (the output then has only those). Unsupported (Premium) features are errors unless
//! [`ImportOptions::skip_unsupported`] is set; then they are dropped with a warning, and a rule
//! whose only targets were dropped is dropped as a whole, never widened.

mod arm;
mod convert;
#[cfg(test)]
mod tests;

use std::fmt;

use serde_json::{Map, Value};

/// How to treat what portcullis can't enforce.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Drop unsupported features (with a warning each) instead of failing.
    pub skip_unsupported: bool,
}

/// The result of a successful import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// portcullis' YAML config text, starting with `#` comment lines naming the sources.
    pub yaml: String,
    /// Things the user should know (dropped features, missing referenced objects, …),
    /// each prefixed with `file: path:`.
    pub warnings: Vec<String>,
}

/// Why an import failed. Every variant tied to one input names the file and the JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The file is not JSON.
    #[error("{file}:{line}:{column}: invalid JSON: {message}")]
    Json {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// An enforcement-relevant feature portcullis does not implement (Premium and the like).
    /// `skip_unsupported` turns these into warnings.
    #[error("{file}: {path}: {what}, which portcullis does not support")]
    Unsupported { file: String, path: String, what: String },
    /// An ARM template expression could not be evaluated.
    #[error("{file}: {path}: ARM expression `{expression}`: {message}")]
    Expression {
        file: String,
        path: String,
        expression: String,
        message: String,
    },
    /// The input is not a policy export we understand, or has a bad value.
    #[error("{file}: {path}: {message}")]
    Invalid {
        file: String,
        path: String,
        message: String,
    },
    /// A problem with the set of documents as a whole (no policy, two policies, …).
    #[error("{message}")]
    Input { message: String },
}

impl ImportError {
    /// True for errors that `skip_unsupported` would have turned into warnings
    /// (the CLI can suggest its flag).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, ImportError::Unsupported { .. })
    }
}

/// Imports the given `(file name, contents)` documents. See the module docs.
pub fn import_documents(docs: &[(String, String)], opts: &ImportOptions) -> Result<Imported, ImportError> {
    let mut gathered = Gathered::default();
    for (file, text) in docs {
        let value = parse_json(file, text)?;
        gather_json(file, &JPath::root(), &value, &mut gathered)?;
    }
    let files: Vec<&str> = docs.iter().map(|(f, _)| f.as_str()).collect();
    convert::build(gathered, &files, opts)
}

fn parse_json(file: &str, text: &str) -> Result<Value, ImportError> {
    // Windows tools (and some portal downloads) write a UTF-8 BOM.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str(text).map_err(|e| {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        ImportError::Json {
            file: file.to_owned(),
            line: e.line(),
            column: e.column(),
            message,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// JSON paths

/// A JSON path such as `resources[2].properties.ruleCollections[0]`, for messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct JPath(String);

impl JPath {
    pub(crate) fn root() -> Self {
        JPath(String::new())
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        let simple = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '@')
            && !key.starts_with(|c: char| c.is_ascii_digit());
        let mut s = self.0.clone();
        if simple {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(key);
        } else {
            s.push('[');
            s.push_str(&Value::String(key.to_owned()).to_string());
            s.push(']');
        }
        JPath(s)
    }

    pub(crate) fn idx(&self, i: usize) -> Self {
        JPath(format!("{}[{i}]", self.0))
    }
}

impl fmt::Display for JPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(top level)")
        } else {
            f.write_str(&self.0)
        }
    }
}

pub(crate) fn invalid(file: &str, path: &JPath, message: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        file: file.to_owned(),
        path: path.to_string(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Gathering: find policies, rule collection groups and IP groups in every document shape.

/// Where an object came from.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) file: String,
    /// Path of the resource object.
    pub(crate) path: JPath,
}

#[derive(Debug)]
pub(crate) struct PolicyIn {
    pub(crate) origin: Origin,
    pub(crate) name: Option<String>,
    /// The policy settings (the `properties` object, or the flattened object).
    pub(crate) props: Map<String, Value>,
    pub(crate) props_path: JPath,
    /// `ruleCollectionGroups: [{"id": ...}]` references (last id segment, path).
    pub(crate) rcg_refs: Vec<(String, JPath)>,
}

#[derive(Debug)]
pub(crate) struct RcgIn {
    pub(crate) origin: Origin,
    pub(crate) name: String,
    /// The policy this group belongs to, when the name or id says so.
    pub(crate) policy: Option<String>,
    pub(crate) props: Map<String, Value>,
    pub(crate) props_path: JPath,
}

#[derive(Debug)]
pub(crate) struct IpGroupIn {
    pub(crate) origin: Origin,
    pub(crate) name: String,
    pub(crate) addresses: Vec<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Gathered {
    pub(crate) policies: Vec<PolicyIn>,
    pub(crate) rcgs: Vec<RcgIn>,
    pub(crate) ip_groups: Vec<IpGroupIn>,
    pub(crate) warnings: Vec<String>,
}

impl Gathered {
    pub(crate) fn warn(&mut self, file: &str, path: &JPath, message: impl fmt::Display) {
        self.warnings.push(format!("{file}: {path}: {message}"));
    }
}

/// Top-level keys of a resource that are never policy content (ARM/REST envelope, az CLI extras).
const ENVELOPE_KEYS: &[&str] = &[
    "id",
    "name",
    "type",
    "etag",
    "location",
    "tags",
    "identity",
    "properties",
    "dependson",
    "apiversion",
    "resourcegroup",
    "systemdata",
    "comments",
    "condition",
    "scope",
    "kind",
    "zones",
    "resources",
    "metadata",
    "managedby",
    "plan",
    "extendedlocation",
    "existing",
];

/// Looks a key up case-insensitively (ARM and az CLI differ in casing, e.g. `terminateTls`).
pub(crate) fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<(&'a str, &'a Value)> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(k, v)| (k.as_str(), v))
}

fn get_str<'a>(
    file: &str,
    path: &JPath,
    obj: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, ImportError> {
    match get_ci(obj, key) {
        None | Some((_, Value::Null)) => Ok(None),
        Some((_, Value::String(s))) => Ok(Some(s)),
        Some((k, _)) => Err(invalid(file, &path.key(k), format!("{k} must be a string"))),
    }
}

fn is_arm_template(obj: &Map<String, Value>) -> bool {
    let schema = get_ci(obj, "$schema").and_then(|(_, v)| v.as_str());
    if let Some(schema) = schema {
        return schema.to_ascii_lowercase().contains("deploymenttemplate");
    }
    get_ci(obj, "resources").is_some() && get_ci(obj, "contentVersion").is_some()
}

fn gather_json(file: &str, path: &JPath, value: &Value, out: &mut Gathered) -> Result<(), ImportError> {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                gather_json(file, &path.idx(i), item, out)?;
            }
            Ok(())
        }
        Value::Object(obj) => {
            if is_arm_template(obj) {
                return arm::gather_template(file, path, obj, out);
            }
            if let Some(schema) = get_ci(obj, "$schema").and_then(|(_, v)| v.as_str())
                && schema.to_ascii_lowercase().contains("deploymentparameters")
            {
                return Err(invalid(
                    file,
                    path,
                    "this is an ARM parameters file; portcullis import reads the template's \
                     parameter defaultValues only (export the template with parameters included)",
                ));
            }
            if let Some((key, Value::Array(items))) = get_ci(obj, "value")
                && get_ci(obj, "type").is_none()
                && get_ci(obj, "properties").is_none()
            {
                let list_path = path.key(key);
                if let Some((_, Value::String(next))) = get_ci(obj, "nextLink") {
                    out.warn(
                        file,
                        path,
                        format!(
                            "the list response is paged (nextLink {next}); only this page is \
                             imported — fetch the remaining pages too"
                        ),
                    );
                }
                for (i, item) in items.iter().enumerate() {
                    gather_json(file, &list_path.idx(i), item, out)?;
                }
                return Ok(());
            }
            let env = Envelope::read(file, path, obj)?;
            gather_resource(file, path, env, obj, None, false, out)
        }
        _ => Err(invalid(
            file,
            path,
            "expected a JSON object or array (a firewall policy, rule collection group, IP group \
             or ARM template)",
        )),
    }
}

/// The identifying parts of a resource object.
#[derive(Debug, Default)]
pub(crate) struct Envelope {
    pub(crate) type_: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) id: Option<String>,
}

impl Envelope {
    fn read(file: &str, path: &JPath, obj: &Map<String, Value>) -> Result<Self, ImportError> {
        Ok(Envelope {
            type_: get_str(file, path, obj, "type")?.map(str::to_owned),
            name: get_str(file, path, obj, "name")?.map(str::to_owned),
            id: get_str(file, path, obj, "id")?.map(str::to_owned),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Policy,
    Rcg,
    IpGroup,
}

const POLICY_TYPE: &str = "microsoft.network/firewallpolicies";
const RCG_TYPE: &str = "microsoft.network/firewallpolicies/rulecollectiongroups";
const IPG_TYPE: &str = "microsoft.network/ipgroups";

/// Policy setting keys, to recognise a policy object that has no `type`.
const POLICY_HINT_KEYS: &[&str] = &[
    "threatintelmode",
    "threatintelwhitelist",
    "dnssettings",
    "snat",
    "sku",
    "basepolicy",
    "rulecollectiongroups",
    "intrusiondetection",
    "explicitproxy",
    "transportsecurity",
    "sql",
    "insights",
    "childpolicies",
];

/// Splits a resource id into `(type segment, name segment)` pairs after `/providers/<ns>/`.
pub(crate) fn id_pairs(id: &str) -> Vec<(String, String)> {
    let segs: Vec<&str> = id.split('/').filter(|s| !s.is_empty()).collect();
    let start = segs
        .iter()
        .rposition(|s| s.eq_ignore_ascii_case("providers"))
        .map_or(segs.len(), |p| p + 2);
    segs.get(start..)
        .unwrap_or_default()
        .chunks(2)
        .filter_map(|c| match c {
            [t, n] => Some(((*t).to_owned(), (*n).to_owned())),
            _ => None,
        })
        .collect()
}

fn kind_from_id(id: &str) -> Option<Kind> {
    let pairs = id_pairs(id);
    let types: Vec<String> = pairs.iter().map(|(t, _)| t.to_ascii_lowercase()).collect();
    match types.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["firewallpolicies"] => Some(Kind::Policy),
        ["firewallpolicies", "rulecollectiongroups"] => Some(Kind::Rcg),
        ["ipgroups"] => Some(Kind::IpGroup),
        _ => None,
    }
}

/// Handles one resource object. `obj` is the whole object (for flattened az CLI shapes and
/// inline `ruleCollectionGroups`); `parent_policy` is set for children of a policy.
/// `from_arm` objects of unrelated types are skipped with a warning.
pub(crate) fn gather_resource(
    file: &str,
    path: &JPath,
    env: Envelope,
    obj: &Map<String, Value>,
    parent_policy: Option<&str>,
    from_arm: bool,
    out: &mut Gathered,
) -> Result<(), ImportError> {
    // The settings: `properties`, or the object itself minus the envelope (az CLI).
    let (props, props_path) = match get_ci(obj, "properties") {
        Some((k, Value::Object(p))) => (p.clone(), path.key(k)),
        Some((_, Value::Null)) | None => {
            let flat: Map<String, Value> = obj
                .iter()
                .filter(|(k, _)| !ENVELOPE_KEYS.contains(&k.to_ascii_lowercase().as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (flat, path.clone())
        }
        Some((k, _)) => {
            return Err(invalid(file, &path.key(k), "properties must be an object"));
        }
    };

    let kind = match env.type_.as_deref().map(str::to_ascii_lowercase) {
        Some(t) if t == POLICY_TYPE => Kind::Policy,
        Some(t) if t == RCG_TYPE => Kind::Rcg,
        Some(t) if t == "rulecollectiongroups" && parent_policy.is_some() => Kind::Rcg,
        Some(t) if t == IPG_TYPE => Kind::IpGroup,
        Some(_) if from_arm || env.name.is_some() || env.id.is_some() => {
            let t = env.type_.as_deref().unwrap_or_default();
            let what = if t.to_ascii_lowercase().contains("draft") {
                " (drafts are not imported; deploy the draft or export the policy itself)"
            } else {
                ""
            };
            out.warn(
                file,
                path,
                format!(
                    "ignored resource {} of type {t}{what}",
                    env.name.as_deref().unwrap_or("(unnamed)")
                ),
            );
            return Ok(());
        }
        _ => {
            let by_id = env.id.as_deref().and_then(kind_from_id);
            let has = |k: &str| get_ci(&props, k).is_some();
            match by_id {
                Some(k) => k,
                None if parent_policy.is_some() => Kind::Rcg,
                None if has("ruleCollections") || has("priority") => Kind::Rcg,
                None if has("ipAddresses") => Kind::IpGroup,
                None if props
                    .keys()
                    .any(|k| POLICY_HINT_KEYS.contains(&k.to_ascii_lowercase().as_str())) =>
                {
                    Kind::Policy
                }
                None => {
                    return Err(invalid(
                        file,
                        path,
                        "cannot tell what this object is: expected a firewall policy, a rule \
                         collection group, an IP group, an ARM template, an array of those, or a \
                         {\"value\": [...]} list",
                    ));
                }
            }
        }
    };

    let origin = Origin {
        file: file.to_owned(),
        path: path.clone(),
    };
    let id_name = env
        .id
        .as_deref()
        .and_then(|id| id_pairs(id).last().map(|(_, n)| n.clone()));

    match kind {
        Kind::Policy => {
            let name = env.name.clone().or(id_name);
            if let Some(n) = &name
                && n.contains('/')
            {
                return Err(invalid(
                    file,
                    path,
                    format!("firewall policy name {n:?} must not contain '/'"),
                ));
            }
            let mut policy = PolicyIn {
                origin,
                name,
                props: Map::new(),
                props_path: props_path.clone(),
                rcg_refs: Vec::new(),
            };
            // Inline or referenced rule collection groups: under properties, or (as in the spec's
            // readable form) next to them.
            let mut rcg_lists: Vec<(JPath, &Value)> = Vec::new();
            if let Some((k, v)) = get_ci(&props, "ruleCollectionGroups") {
                rcg_lists.push((props_path.key(k), v));
            }
            if props_path != *path
                && let Some((k, v)) = get_ci(obj, "ruleCollectionGroups")
            {
                rcg_lists.push((path.key(k), v));
            }
            let mut inline = Vec::new();
            for (list_path, list) in rcg_lists {
                match list {
                    Value::Null => {}
                    Value::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            let item_path = list_path.idx(i);
                            let Value::Object(item_obj) = item else {
                                return Err(invalid(file, &item_path, "a rule collection group must be an object"));
                            };
                            let is_ref = item_obj
                                .keys()
                                .all(|k| k.eq_ignore_ascii_case("id") || k.eq_ignore_ascii_case("resourceGroup"));
                            if is_ref {
                                if let Some(id) = get_str(file, &item_path, item_obj, "id")? {
                                    let name = id_pairs(id).last().map_or_else(|| id.to_owned(), |(_, n)| n.clone());
                                    policy.rcg_refs.push((name, item_path));
                                }
                            } else {
                                inline.push((item_path, item_obj.clone()));
                            }
                        }
                    }
                    _ => {
                        return Err(invalid(file, &list_path, "ruleCollectionGroups must be a list"));
                    }
                }
            }
            policy.props = props
                .into_iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("ruleCollectionGroups"))
                .collect();
            let policy_name = policy.name.clone();
            out.policies.push(policy);
            for (item_path, item_obj) in inline {
                let env = Envelope::read(file, &item_path, &item_obj)?;
                let parent = policy_name.as_deref().unwrap_or("");
                gather_resource(file, &item_path, env, &item_obj, Some(parent), from_arm, out)?;
            }
        }
        Kind::Rcg => {
            let mut policy: Option<String> = parent_policy.filter(|p| !p.is_empty()).map(str::to_owned);
            let mut name = None;
            if let Some(full) = &env.name {
                let parts: Vec<&str> = full.split('/').collect();
                match parts.as_slice() {
                    [n] => name = Some((*n).to_owned()),
                    [p, n] => {
                        if let Some(parent) = &policy
                            && !parent.eq_ignore_ascii_case(p)
                        {
                            return Err(invalid(
                                file,
                                path,
                                format!(
                                    "rule collection group name {full:?} names policy {p:?}, but \
                                     it is nested in policy {parent:?}"
                                ),
                            ));
                        }
                        policy = Some((*p).to_owned());
                        name = Some((*n).to_owned());
                    }
                    _ => {
                        return Err(invalid(
                            file,
                            path,
                            format!(
                                "rule collection group name {full:?} must be \"<rcg>\" or \
                                 \"<policy>/<rcg>\""
                            ),
                        ));
                    }
                }
            }
            if let Some(id) = &env.id {
                let pairs = id_pairs(id);
                if let [(_, p), (_, n)] = pairs.as_slice() {
                    if let Some(known) = &policy
                        && !known.eq_ignore_ascii_case(p)
                    {
                        return Err(invalid(
                            file,
                            path,
                            format!("id {id:?} names policy {p:?}, but the name says {known:?}"),
                        ));
                    }
                    policy = Some(p.clone());
                    name = name.or_else(|| Some(n.clone()));
                }
            }
            let Some(name) = name.filter(|n| !n.is_empty()) else {
                return Err(invalid(file, path, "rule collection group has no name"));
            };
            out.rcgs.push(RcgIn {
                origin,
                name,
                policy,
                props,
                props_path,
            });
        }
        Kind::IpGroup => {
            let Some(name) = env.name.clone().or(id_name).filter(|n| !n.is_empty()) else {
                return Err(invalid(file, path, "IP group has no name"));
            };
            let addresses = match get_ci(&props, "ipAddresses") {
                None | Some((_, Value::Null)) => Vec::new(),
                Some((k, v)) => convert::string_list(file, &props_path.key(k), v)?,
            };
            out.ip_groups.push(IpGroupIn {
                origin,
                name,
                addresses,
            });
        }
    }
    Ok(())
}

/// Case-insensitive name map helper.
pub(crate) fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}
