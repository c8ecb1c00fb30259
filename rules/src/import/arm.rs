//! ARM templates: find the firewall resources and evaluate the template expressions they use.
//!
//! A JSON string `"[...]"` in an ARM template is an expression; `"[[..."` is the literal `"[..."`.
//! Supported: string literals (`'it''s'`), integers, `true`/`false`/`null`, property access
//! (`.name`, `['name']`, `[0]`) and the functions
//! `parameters`, `variables` (from `defaultValue` / the `variables` section; parameter files are
//! not read), `concat`, `format`, `resourceId`, `subscriptionResourceId`, `tenantResourceId`,
//! `subscription`, `resourceGroup` (placeholder ids: only the last id segment matters to import),
//! `toLower`, `toUpper`, `string`, `int`, `bool`, `length`, `empty`, `first`, `last`, `split`,
//! `replace`, `trim`, `substring`, `contains`, `startsWith`, `endsWith`, `if`, `equals`, `not`,
//! `and`, `or`, `coalesce`, `createArray`, `createObject`, `json`.
//! Anything else (`reference`, `uniqueString`, user-defined functions, …) is a clear error.
//! Only `name`, `type`, `condition` and `properties` of resources are evaluated; `dependsOn`,
//! `location`, `tags`, `apiVersion` etc. are ignored.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{Envelope, Gathered, ImportError, JPath, gather_resource, get_ci, invalid, lower};

/// Longest string or list an expression may produce (guards against exponential templates).
const MAX_STRING: usize = 1 << 20;
const MAX_LIST: usize = 100_000;
/// Deepest expression nesting and parameter/variable reference chain.
const MAX_DEPTH: usize = 64;
/// Deepest evaluation overall (an expression in a variable used by an expression in …).
const MAX_EVAL_DEPTH: usize = 100;

const RG_PLACEHOLDER: &str = "{resourceGroupName}";
const SUB_PLACEHOLDER: &str = "{subscriptionId}";

/// Finds the firewall resources of one ARM template.
pub(super) fn gather_template(
    file: &str,
    path: &JPath,
    tmpl: &Map<String, Value>,
    out: &mut Gathered,
) -> Result<(), ImportError> {
    let section = |key: &str| -> Result<Option<&Map<String, Value>>, ImportError> {
        match get_ci(tmpl, key) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((_, Value::Object(m))) => Ok(Some(m)),
            Some((k, _)) => Err(invalid(file, &path.key(k), format!("{k} must be an object"))),
        }
    };
    let mut ev = Evaluator::new(section("parameters")?, section("variables")?);
    match get_ci(tmpl, "resources") {
        None | Some((_, Value::Null)) => Ok(()),
        Some((k, Value::Array(items))) => {
            let rpath = path.key(k);
            for (i, r) in items.iter().enumerate() {
                process_resource(file, &rpath.idx(i), r, None, &mut ev, out)?;
            }
            Ok(())
        }
        // languageVersion 2.0: symbolic names.
        Some((k, Value::Object(items))) => {
            let rpath = path.key(k);
            for (sym, r) in items {
                process_resource(file, &rpath.key(sym), r, None, &mut ev, out)?;
            }
            Ok(())
        }
        Some((k, _)) => Err(invalid(file, &path.key(k), "resources must be a list")),
    }
}

fn process_resource(
    file: &str,
    path: &JPath,
    r: &Value,
    parent: Option<(&str, &str)>,
    ev: &mut Evaluator<'_>,
    out: &mut Gathered,
) -> Result<(), ImportError> {
    let Value::Object(obj) = r else {
        return Err(invalid(file, path, "a resource must be an object"));
    };
    if let Some((k, v)) = get_ci(obj, "copy")
        && !v.is_null()
    {
        return Err(invalid(
            file,
            &path.key(k),
            "ARM copy loops are not supported by portcullis import (deploy the template and \
             export the deployed policy instead)",
        ));
    }
    if let Some((_, Value::Bool(true))) = get_ci(obj, "existing") {
        return Ok(());
    }
    if let Some((k, cond)) = get_ci(obj, "condition") {
        match ev.resolve(file, &path.key(k), cond)? {
            Value::Bool(true) => {}
            Value::Bool(false) => return Ok(()),
            _ => {
                return Err(invalid(file, &path.key(k), "condition must evaluate to true or false"));
            }
        }
    }
    let mut eval_string_field = |key: &str| -> Result<Option<String>, ImportError> {
        match get_ci(obj, key) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((k, v)) => match ev.resolve(file, &path.key(k), v)? {
                Value::String(s) => Ok(Some(s)),
                _ => Err(invalid(file, &path.key(k), format!("{k} must evaluate to a string"))),
            },
        }
    };
    let mut type_ = eval_string_field("type")?;
    let mut name = eval_string_field("name")?;
    if let Some((ptype, pname)) = parent {
        // Child resources: relative type ("ruleCollectionGroups") and name ("rcg").
        if let Some(t) = &type_
            && !t.split('/').next().is_some_and(|ns| ns.contains('.'))
        {
            type_ = Some(format!("{ptype}/{t}"));
        }
        if let Some(n) = &name
            && !n.contains('/')
        {
            name = Some(format!("{pname}/{n}"));
        }
    }

    let mut resolved = Map::new();
    if let Some((k, props)) = get_ci(obj, "properties") {
        resolved.insert("properties".into(), ev.resolve(file, &path.key(k), props)?);
    }
    let env = Envelope {
        type_: type_.clone(),
        name: name.clone(),
        id: None,
    };
    gather_resource(file, path, env, &resolved, None, true, out)?;

    if let Some((k, children)) = get_ci(obj, "resources") {
        let cpath = path.key(k);
        let (Some(t), Some(n)) = (&type_, &name) else {
            return Err(invalid(
                file,
                path,
                "a resource with child resources needs a type and a name",
            ));
        };
        match children {
            Value::Null => {}
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    process_resource(file, &cpath.idx(i), child, Some((t, n)), ev, out)?;
                }
            }
            _ => return Err(invalid(file, &cpath, "resources must be a list")),
        }
    }
    Ok(())
}

/// An expression evaluation failure (the caller adds file, path and expression text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExprError(pub(crate) String);

fn err<T>(message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError(message.into()))
}

/// Evaluates ARM expressions against one template's parameters and variables.
pub(crate) struct Evaluator<'t> {
    params: Option<&'t Map<String, Value>>,
    vars: Option<&'t Map<String, Value>>,
    cache: HashMap<String, Value>,
    active: Vec<String>,
    /// Current evaluation nesting, across parameters and variables (bounds stack use).
    depth: usize,
}

impl<'t> Evaluator<'t> {
    pub(crate) fn new(params: Option<&'t Map<String, Value>>, vars: Option<&'t Map<String, Value>>) -> Self {
        Evaluator {
            params,
            vars,
            cache: HashMap::new(),
            active: Vec::new(),
            depth: 0,
        }
    }

    /// Evaluates every expression string in `v` (deeply).
    pub(crate) fn resolve(&mut self, file: &str, path: &JPath, v: &Value) -> Result<Value, ImportError> {
        match v {
            Value::String(s) => self.eval_json_string(s).map_err(|e| ImportError::Expression {
                file: file.to_owned(),
                path: path.to_string(),
                expression: shorten(s),
                message: e.0,
            }),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.resolve(file, &path.idx(i), item))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(m) => {
                if let Some((k, Value::Array(loops))) = get_ci(m, "copy")
                    && loops.iter().any(|l| {
                        l.as_object()
                            .is_some_and(|o| get_ci(o, "input").is_some() && get_ci(o, "count").is_some())
                    })
                {
                    return Err(invalid(
                        file,
                        &path.key(k),
                        "ARM property copy loops are not supported by portcullis import (deploy \
                         the template and export the deployed policy instead)",
                    ));
                }
                let mut out = Map::new();
                for (k, item) in m {
                    out.insert(k.clone(), self.resolve(file, &path.key(k), item)?);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    /// A JSON string as ARM reads it: `[expr]` is evaluated, `[[…` is a literal `[…`.
    pub(crate) fn eval_json_string(&mut self, s: &str) -> Result<Value, ExprError> {
        if let Some(rest) = s.strip_prefix("[[") {
            return Ok(Value::String(format!("[{rest}")));
        }
        match s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            Some(src) => {
                // Offsets in messages count from the start of the JSON string (its '[' is 0).
                let expr = parse(src, 1)?;
                self.eval(&expr)
            }
            None => Ok(Value::String(s.to_owned())),
        }
    }

    /// Deep evaluation inside parameter defaults and variables (no paths: messages say which).
    fn resolve_plain(&mut self, v: &Value) -> Result<Value, ExprError> {
        if self.depth >= MAX_EVAL_DEPTH {
            return err("value nested too deeply (through parameters and variables)");
        }
        self.depth += 1;
        let result = self.resolve_plain_inner(v);
        self.depth -= 1;
        result
    }

    fn resolve_plain_inner(&mut self, v: &Value) -> Result<Value, ExprError> {
        match v {
            Value::String(s) => self.eval_json_string(s),
            Value::Array(items) => items
                .iter()
                .map(|i| self.resolve_plain(i))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, item) in m {
                    out.insert(k.clone(), self.resolve_plain(item)?);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn lookup(&mut self, section: &str, name: &str) -> Result<Value, ExprError> {
        let key = format!("{section}:{}", lower(name));
        if let Some(v) = self.cache.get(&key) {
            return Ok(v.clone());
        }
        if self.active.contains(&key) {
            return err(format!("{section}('{name}') refers to itself"));
        }
        if self.active.len() >= MAX_DEPTH {
            return err("parameters/variables nested too deeply");
        }
        let raw: &Value = if section == "parameters" {
            let Some((_, decl)) = self.params.and_then(|p| get_ci(p, name)) else {
                return err(format!("unknown parameter '{name}'"));
            };
            match decl.as_object().and_then(|d| get_ci(d, "defaultValue")) {
                Some((_, v)) => v,
                None => {
                    return err(format!(
                        "parameter '{name}' has no defaultValue (portcullis import does not \
                         read parameter files; add a defaultValue to the template)"
                    ));
                }
            }
        } else {
            if name.eq_ignore_ascii_case("copy") {
                return err("variable copy loops are not supported by portcullis import");
            }
            let Some((_, v)) = self.vars.and_then(|p| get_ci(p, name)) else {
                return err(format!("unknown variable '{name}'"));
            };
            v
        };
        self.active.push(key.clone());
        let result = self.resolve_plain(raw);
        self.active.pop();
        let value = result.map_err(|e| ExprError(format!("in {section}('{name}'): {}", e.0)))?;
        self.cache.insert(key, value.clone());
        Ok(value)
    }

    fn eval(&mut self, e: &Expr) -> Result<Value, ExprError> {
        if self.depth >= MAX_EVAL_DEPTH {
            return err("expression nested too deeply (through parameters and variables)");
        }
        self.depth += 1;
        let result = self.eval_inner(e);
        self.depth -= 1;
        result
    }

    fn eval_inner(&mut self, e: &Expr) -> Result<Value, ExprError> {
        match e {
            Expr::Str(s) => Ok(Value::String(s.clone())),
            Expr::Int(i) => Ok(Value::from(*i)),
            Expr::Bool(b) => Ok(Value::Bool(*b)),
            Expr::Null => Ok(Value::Null),
            Expr::Member(base, name) => match self.eval(base)? {
                Value::Object(m) => match get_ci(&m, name) {
                    Some((_, v)) => Ok(v.clone()),
                    None => err(format!("property '{name}' not found")),
                },
                other => err(format!("cannot read property '{name}' of {}", type_name(&other))),
            },
            Expr::Index(base, index) => {
                let base = self.eval(base)?;
                let index = self.eval(index)?;
                match (&base, &index) {
                    (Value::Array(items), Value::Number(n)) => {
                        match n
                            .as_u64()
                            .and_then(|i| usize::try_from(i).ok())
                            .and_then(|i| items.get(i))
                        {
                            Some(v) => Ok(v.clone()),
                            None => err(format!("index {n} out of range (length {})", items.len())),
                        }
                    }
                    (Value::Object(m), Value::String(k)) => match get_ci(m, k) {
                        Some((_, v)) => Ok(v.clone()),
                        None => err(format!("property '{k}' not found")),
                    },
                    _ => err(format!("cannot index {} with {}", type_name(&base), type_name(&index))),
                }
            }
            Expr::Call(name, args) => self.call(name, args),
        }
    }

    fn call(&mut self, name: &str, args: &[Expr]) -> Result<Value, ExprError> {
        let lname = name.to_ascii_lowercase();
        if lname == "if" {
            let [cond, yes, no] = args else {
                return err("if() takes 3 arguments");
            };
            return match self.eval(cond)? {
                Value::Bool(true) => self.eval(yes),
                Value::Bool(false) => self.eval(no),
                other => err(format!("if() condition is {}, not a bool", type_name(&other))),
            };
        }
        let mut vals = Vec::with_capacity(args.len());
        for a in args {
            vals.push(self.eval(a)?);
        }
        let result = match lname.as_str() {
            "parameters" | "variables" => {
                let n = one_str(name, &vals)?.to_owned();
                self.lookup(&lname, &n)?
            }
            // A separate function: its large frame is not on the recursion path.
            _ => builtin(&lname, name, vals)?,
        };
        check_size(&result)?;
        Ok(result)
    }
}

/// The functions that do not refer back into the template.
fn builtin(lname: &str, f: &str, vals: Vec<Value>) -> Result<Value, ExprError> {
    Ok(match lname {
        "concat" => concat(&vals)?,
        "format" => format_fn(&vals)?,
        "resourceid" => resource_id(f, &vals, 2)?,
        "subscriptionresourceid" => resource_id(f, &vals, 1)?,
        "tenantresourceid" => resource_id(f, &vals, 0)?,
        "subscription" => {
            fixed::<0>(f, &vals)?;
            serde_json::json!({
                "id": format!("/subscriptions/{SUB_PLACEHOLDER}"),
                "subscriptionId": SUB_PLACEHOLDER,
                "tenantId": "{tenantId}",
                "displayName": "{subscriptionName}",
            })
        }
        "resourcegroup" => {
            fixed::<0>(f, &vals)?;
            serde_json::json!({
                "id": format!("/subscriptions/{SUB_PLACEHOLDER}/resourceGroups/{RG_PLACEHOLDER}"),
                "name": RG_PLACEHOLDER,
                "type": "Microsoft.Resources/resourceGroups",
                "location": "{location}",
                "properties": {"provisioningState": "Succeeded"},
            })
        }
        "tolower" => Value::String(one_str(f, &vals)?.to_lowercase()),
        "toupper" => Value::String(one_str(f, &vals)?.to_uppercase()),
        "trim" => Value::String(one_str(f, &vals)?.trim().to_owned()),
        "string" => {
            let [a] = fixed(f, &vals)?;
            Value::String(arm_string(a))
        }
        "int" => {
            let [a] = fixed(f, &vals)?;
            match a {
                Value::Number(n) if n.is_i64() || n.is_u64() => Value::Number(n.clone()),
                Value::String(s) => match s.trim().parse::<i64>() {
                    Ok(i) => Value::from(i),
                    Err(_) => return err(format!("int(): {s:?} is not an integer")),
                },
                other => return err(format!("int() of {}", type_name(other))),
            }
        }
        "bool" => {
            let [a] = fixed(f, &vals)?;
            match a {
                Value::Bool(b) => Value::Bool(*b),
                Value::String(s) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
                Value::String(s) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
                Value::Number(n) => Value::Bool(n.as_f64() != Some(0.0)),
                other => return err(format!("bool() of {}", type_name(other))),
            }
        }
        "length" => {
            let [a] = fixed(f, &vals)?;
            Value::from(match a {
                Value::String(s) => s.chars().count(),
                Value::Array(a) => a.len(),
                Value::Object(m) => m.len(),
                other => return err(format!("length() of {}", type_name(other))),
            })
        }
        "empty" => {
            let [a] = fixed(f, &vals)?;
            Value::Bool(match a {
                Value::Null => true,
                Value::String(s) => s.is_empty(),
                Value::Array(a) => a.is_empty(),
                Value::Object(m) => m.is_empty(),
                other => return err(format!("empty() of {}", type_name(other))),
            })
        }
        "first" | "last" => {
            let [a] = fixed(f, &vals)?;
            let first = lname == "first";
            match a {
                Value::Array(a) => {
                    let item = if first { a.first() } else { a.last() };
                    item.cloned().unwrap_or(Value::Null)
                }
                Value::String(s) => {
                    let c = if first { s.chars().next() } else { s.chars().last() };
                    Value::String(c.map(String::from).unwrap_or_default())
                }
                other => return err(format!("{f}() of {}", type_name(other))),
            }
        }
        "split" => {
            let [a, b] = fixed(f, &vals)?;
            let s = str_arg(f, a)?;
            let delims: Vec<String> = match b {
                Value::String(d) => vec![d.clone()],
                Value::Array(ds) => ds
                    .iter()
                    .map(|d| str_arg(f, d).map(str::to_owned))
                    .collect::<Result<_, _>>()?,
                other => return err(format!("split() delimiter is {}", type_name(other))),
            };
            if delims.iter().any(String::is_empty) {
                return err("split() delimiter is empty");
            }
            let mut parts = vec![s.to_owned()];
            for d in &delims {
                parts = parts
                    .iter()
                    .flat_map(|p| p.split(d.as_str()).map(str::to_owned).collect::<Vec<_>>())
                    .collect();
            }
            Value::Array(parts.into_iter().map(Value::String).collect())
        }
        "replace" => {
            let [a, b, c] = fixed(f, &vals)?;
            let s = str_arg(f, a)?;
            let old = str_arg(f, b)?;
            let new = str_arg(f, c)?;
            if old.is_empty() {
                return err("replace(): the string to replace is empty");
            }
            let count = s.matches(old).count();
            if s.len() + count.saturating_mul(new.len()) > MAX_STRING {
                return err("replace(): result too long");
            }
            Value::String(s.replace(old, new))
        }
        "substring" => {
            let (a, b, len) = match vals.as_slice() {
                [a, b] => (a, b, None),
                [a, b, c] => (a, b, Some(c)),
                _ => return err(format!("{f}() takes 2 or 3 arguments, got {}", vals.len())),
            };
            let s: Vec<char> = str_arg(f, a)?.chars().collect();
            let start = index_arg(f, b)?;
            let len = match len {
                Some(v) => index_arg(f, v)?,
                None => s.len().saturating_sub(start),
            };
            match start.checked_add(len) {
                Some(end) if end <= s.len() => Value::String(s.get(start..end).unwrap_or_default().iter().collect()),
                _ => return err("substring(): out of range"),
            }
        }
        "contains" => {
            let [a, b] = fixed(f, &vals)?;
            Value::Bool(match (a, b) {
                (Value::String(s), item) => s.contains(&arm_string(item)),
                (Value::Array(a), item) => a.contains(item),
                (Value::Object(m), Value::String(k)) => get_ci(m, k).is_some(),
                (c, _) => return err(format!("contains() on {}", type_name(c))),
            })
        }
        "startswith" | "endswith" => {
            let [a, b] = fixed(f, &vals)?;
            let s = str_arg(f, a)?.to_lowercase();
            let p = str_arg(f, b)?.to_lowercase();
            Value::Bool(if lname == "startswith" {
                s.starts_with(&p)
            } else {
                s.ends_with(&p)
            })
        }
        "equals" => {
            let [a, b] = fixed(f, &vals)?;
            Value::Bool(a == b)
        }
        "not" => {
            let [a] = fixed(f, &vals)?;
            match a {
                Value::Bool(b) => Value::Bool(!b),
                other => return err(format!("not() of {}", type_name(other))),
            }
        }
        "and" | "or" => {
            if vals.len() < 2 {
                return err(format!("{f}() takes at least 2 arguments"));
            }
            let mut bools = Vec::new();
            for v in &vals {
                match v {
                    Value::Bool(b) => bools.push(*b),
                    other => return err(format!("{f}() of {}", type_name(other))),
                }
            }
            Value::Bool(if lname == "and" {
                bools.iter().all(|b| *b)
            } else {
                bools.iter().any(|b| *b)
            })
        }
        "true" | "false" => {
            fixed::<0>(f, &vals)?;
            Value::Bool(lname == "true")
        }
        "null" => {
            fixed::<0>(f, &vals)?;
            Value::Null
        }
        "coalesce" => vals.into_iter().find(|v| !v.is_null()).unwrap_or(Value::Null),
        "createarray" => Value::Array(vals),
        "createobject" => {
            if !vals.len().is_multiple_of(2) {
                return err("createObject() takes key/value pairs");
            }
            let mut m = Map::new();
            for pair in vals.chunks(2) {
                if let [k, v] = pair {
                    m.insert(str_arg(f, k)?.to_owned(), v.clone());
                }
            }
            Value::Object(m)
        }
        "json" => {
            let s = one_str(f, &vals)?;
            match serde_json::from_str::<Value>(s) {
                Ok(v) => v,
                Err(e) => return err(format!("json(): {e}")),
            }
        }
        "reference" | "list" | "listkeys" | "listsecrets" | "uniquestring" | "newguid" | "utcnow" | "deployment"
        | "environment" | "pickzones" | "managementgroup" | "tenant" | "guid" | "base64" | "datetimeadd" => {
            return err(format!(
                "ARM function '{f}' needs a live deployment or is not supported by \
                     portcullis import"
            ));
        }
        _ if lname.starts_with("list") => {
            return err(format!("ARM function '{f}' needs a live deployment"));
        }
        _ => {
            return err(format!(
                "unknown or unsupported ARM function '{f}' (portcullis import evaluates \
                     parameters, variables, concat, format, resourceId and a few string \
                     functions)"
            ));
        }
    })
}

fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}…")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_size(v: &Value) -> Result<(), ExprError> {
    match v {
        Value::String(s) if s.len() > MAX_STRING => err("result string too long"),
        Value::Array(a) if a.len() > MAX_LIST => err("result list too long"),
        _ => Ok(()),
    }
}

/// Exactly `N` arguments, as an array (so callers destructure instead of indexing).
fn fixed<'v, const N: usize>(f: &str, vals: &'v [Value]) -> Result<&'v [Value; N], ExprError> {
    vals.try_into()
        .map_err(|_| ExprError(format!("{f}() takes {N} argument(s), got {}", vals.len())))
}

fn str_arg<'v>(f: &str, v: &'v Value) -> Result<&'v str, ExprError> {
    match v {
        Value::String(s) => Ok(s),
        other => err(format!("{f}() expects a string, got {}", type_name(other))),
    }
}

fn one_str<'v>(f: &str, vals: &'v [Value]) -> Result<&'v str, ExprError> {
    let [a] = fixed(f, vals)?;
    str_arg(f, a)
}

fn index_arg(f: &str, v: &Value) -> Result<usize, ExprError> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .map_or_else(|| err(format!("{f}() expects a non-negative integer")), Ok)
}

/// `string()` semantics: strings as they are, .NET-style booleans, JSON for the rest.
fn arm_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn concat(vals: &[Value]) -> Result<Value, ExprError> {
    if vals.is_empty() {
        return err("concat() takes at least 1 argument");
    }
    if vals.iter().all(Value::is_array) {
        let mut out = Vec::new();
        for v in vals {
            if let Value::Array(a) = v {
                if out.len() + a.len() > MAX_LIST {
                    return err("concat(): result list too long");
                }
                out.extend(a.iter().cloned());
            }
        }
        return Ok(Value::Array(out));
    }
    let mut out = String::new();
    for v in vals {
        match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => {
                let s = arm_string(v);
                if out.len() + s.len() > MAX_STRING {
                    return err("concat(): result string too long");
                }
                out.push_str(&s);
            }
            other => {
                return err(format!("concat() cannot mix strings and {}", type_name(other)));
            }
        }
    }
    Ok(Value::String(out))
}

/// .NET composite formatting: `{0}`, `{{`, `}}`. Format specifiers are not supported.
fn format_fn(vals: &[Value]) -> Result<Value, ExprError> {
    let Some((fmt, args)) = vals.split_first() else {
        return err("format() takes at least 1 argument");
    };
    let fmt = str_arg("format", fmt)?;
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '{' => {
                let mut spec = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(ch) => spec.push(ch),
                        None => return err("format(): unclosed '{'"),
                    }
                }
                let index: usize = match spec.trim().parse() {
                    Ok(i) => i,
                    Err(_) => {
                        return err(format!(
                            "format(): placeholder {{{spec}}} is not supported (only {{0}}, {{1}}, …)"
                        ));
                    }
                };
                let Some(arg) = args.get(index) else {
                    return err(format!("format(): no argument for {{{index}}}"));
                };
                out.push_str(&arm_string(arg));
                if out.len() > MAX_STRING {
                    return err("format(): result string too long");
                }
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '}' => return err("format(): unmatched '}'"),
            c => out.push(c),
        }
    }
    Ok(Value::String(out))
}

/// `resourceId([subscriptionId], [resourceGroupName], type, name1, name2, …)`.
/// `scope_args` is how many leading scope arguments the function allows (2, 1 or 0).
fn resource_id(f: &str, vals: &[Value], scope_args: usize) -> Result<Value, ExprError> {
    let strs: Vec<&str> = vals.iter().map(|v| str_arg(f, v)).collect::<Result<_, _>>()?;
    let Some(t) = strs.iter().position(|s| s.contains('/')) else {
        return err(format!(
            "{f}(): missing resource type (like 'Microsoft.Network/ipGroups')"
        ));
    };
    if t > scope_args {
        return err(format!("{f}(): too many arguments before the resource type"));
    }
    let (scope, rest) = strs.split_at(t);
    let Some((rtype, names)) = rest.split_first() else {
        return err(format!("{f}(): missing resource type"));
    };
    let mut type_segs = rtype.split('/').filter(|s| !s.is_empty());
    let Some(namespace) = type_segs.next() else {
        return err(format!("{f}(): bad resource type {rtype:?}"));
    };
    let types: Vec<&str> = type_segs.collect();
    let names: Vec<&str> = names
        .iter()
        .flat_map(|n| n.split('/'))
        .filter(|s| !s.is_empty())
        .collect();
    if types.is_empty() || types.len() != names.len() {
        return err(format!(
            "{f}(): resource type {rtype:?} needs {} name(s), got {}",
            types.len(),
            names.len()
        ));
    }
    let mut id = match (scope_args, scope) {
        (0, _) => String::new(),
        (1, []) => format!("/subscriptions/{SUB_PLACEHOLDER}"),
        (1, [sub]) => format!("/subscriptions/{sub}"),
        (_, []) => format!("/subscriptions/{SUB_PLACEHOLDER}/resourceGroups/{RG_PLACEHOLDER}"),
        (_, [rg]) => format!("/subscriptions/{SUB_PLACEHOLDER}/resourceGroups/{rg}"),
        (_, [sub, rg]) => format!("/subscriptions/{sub}/resourceGroups/{rg}"),
        _ => {
            return err(format!("{f}(): too many arguments before the resource type"));
        }
    };
    id.push_str("/providers/");
    id.push_str(namespace);
    for (t, n) in types.iter().zip(&names) {
        id.push('/');
        id.push_str(t);
        id.push('/');
        id.push_str(n);
    }
    Ok(Value::String(id))
}

// ---------------------------------------------------------------------------------------------
// Expression syntax

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Str(String),
    Int(i64),
    Bool(bool),
    Null,
    Call(String, Vec<Expr>),
    Member(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    LParen,
    RParen,
    Comma,
    Dot,
    LBrack,
    RBrack,
}

fn lex(src: &str, base: usize) -> Result<Vec<(usize, Tok)>, ExprError> {
    let mut toks = Vec::new();
    let mut it = src.char_indices().map(|(i, c)| (i + base, c)).peekable();
    while let Some(&(pos, c)) = it.peek() {
        match c {
            c if c.is_whitespace() => {
                it.next();
            }
            '(' | ')' | ',' | '.' | '[' | ']' => {
                it.next();
                toks.push((
                    pos,
                    match c {
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        ',' => Tok::Comma,
                        '.' => Tok::Dot,
                        '[' => Tok::LBrack,
                        _ => Tok::RBrack,
                    },
                ));
            }
            '\'' => {
                it.next();
                let mut s = String::new();
                loop {
                    match it.next() {
                        Some((_, '\'')) => {
                            if matches!(it.peek(), Some((_, '\''))) {
                                it.next();
                                s.push('\'');
                            } else {
                                break;
                            }
                        }
                        Some((_, ch)) => s.push(ch),
                        None => {
                            return err(format!("unterminated string starting at offset {pos}"));
                        }
                    }
                }
                toks.push((pos, Tok::Str(s)));
            }
            c if c.is_ascii_digit() || c == '-' => {
                let mut s = String::new();
                s.push(c);
                it.next();
                while let Some(&(_, d)) = it.peek() {
                    if d.is_ascii_digit() {
                        s.push(d);
                        it.next();
                    } else {
                        break;
                    }
                }
                match s.parse::<i64>() {
                    Ok(n) => toks.push((pos, Tok::Int(n))),
                    Err(_) => return err(format!("bad number {s:?} at offset {pos}")),
                }
            }
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                let mut s = String::new();
                while let Some(&(_, d)) = it.peek() {
                    if d.is_alphanumeric() || d == '_' || d == '$' {
                        s.push(d);
                        it.next();
                    } else {
                        break;
                    }
                }
                toks.push((pos, Tok::Ident(s)));
            }
            other => return err(format!("unexpected character {other:?} at offset {pos}")),
        }
    }
    Ok(toks)
}

/// Parses an expression (the text between the brackets); `base` is added to message offsets.
pub(crate) fn parse(src: &str, base: usize) -> Result<Expr, ExprError> {
    let toks = lex(src, base)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
        len: src.len() + base,
    };
    let e = p.expr()?;
    if let Some((pos, t)) = p.toks.get(p.pos) {
        return err(format!("unexpected {} at offset {pos}", tok_text(t)));
    }
    Ok(e)
}

fn tok_text(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("'{s}'"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Int(i) => format!("number {i}"),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::Comma => "','".into(),
        Tok::Dot => "'.'".into(),
        Tok::LBrack => "'['".into(),
        Tok::RBrack => "']'".into(),
    }
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    depth: usize,
    len: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(self.len, |(p, _)| *p)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|(_, t)| t.clone());
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn expect(&mut self, want: &Tok) -> Result<(), ExprError> {
        let at = self.offset();
        match self.next() {
            Some(t) if t == *want => Ok(()),
            Some(t) => err(format!(
                "expected {} but found {} at offset {at}",
                tok_text(want),
                tok_text(&t)
            )),
            None => err(format!("expected {} but the expression ended", tok_text(want))),
        }
    }

    fn expr(&mut self) -> Result<Expr, ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err("expression nested too deeply");
        }
        let mut e = self.primary()?;
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.next();
                    let at = self.offset();
                    match self.next() {
                        Some(Tok::Ident(name)) => e = Expr::Member(Box::new(e), name),
                        _ => return err(format!("expected a property name at offset {at}")),
                    }
                }
                Some(Tok::LBrack) => {
                    self.next();
                    let index = self.expr()?;
                    self.expect(&Tok::RBrack)?;
                    e = Expr::Index(Box::new(e), Box::new(index));
                }
                _ => break,
            }
        }
        self.depth -= 1;
        Ok(e)
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let at = self.offset();
        match self.next() {
            Some(Tok::Str(s)) => Ok(Expr::Str(s)),
            Some(Tok::Int(i)) => Ok(Expr::Int(i)),
            Some(Tok::Ident(name)) => match self.peek() {
                Some(Tok::LParen) => {
                    self.next();
                    let mut args = Vec::new();
                    if self.peek() == Some(&Tok::RParen) {
                        self.next();
                    } else {
                        loop {
                            args.push(self.expr()?);
                            let at = self.offset();
                            match self.next() {
                                Some(Tok::Comma) => {}
                                Some(Tok::RParen) => break,
                                Some(t) => {
                                    return err(format!(
                                        "expected ',' or ')' but found {} at offset {at}",
                                        tok_text(&t)
                                    ));
                                }
                                None => return err("missing ')' at the end of the expression"),
                            }
                        }
                    }
                    Ok(Expr::Call(name, args))
                }
                Some(Tok::Dot)
                    if matches!(self.toks.get(self.pos + 1), Some((_, Tok::Ident(_))))
                        && matches!(self.toks.get(self.pos + 2), Some((_, Tok::LParen))) =>
                {
                    let func = match self.toks.get(self.pos + 1) {
                        Some((_, Tok::Ident(f))) => f.clone(),
                        _ => String::new(),
                    };
                    err(format!(
                        "user-defined function '{name}.{func}' is not supported by portcullis \
                         import"
                    ))
                }
                _ if name.eq_ignore_ascii_case("true") => Ok(Expr::Bool(true)),
                _ if name.eq_ignore_ascii_case("false") => Ok(Expr::Bool(false)),
                _ if name.eq_ignore_ascii_case("null") => Ok(Expr::Null),
                _ => err(format!("expected '(' after function name '{name}' at offset {at}")),
            },
            Some(t) => err(format!("unexpected {} at offset {at}", tok_text(&t))),
            None => err("empty expression"),
        }
    }
}
