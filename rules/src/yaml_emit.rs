//! A small, dependency-free YAML writer for [`serde_json::Value`] trees.
//!
//! It exists so `portcullis import` (and anything else that produces configs) can print
//! human-friendly YAML that our own parser (yaml-rust2) reads back to exactly the same tree.
//!
//! Layout:
//! - maps are written in block style, in the map's own key order (serde_json's `preserve_order`);
//! - sequences whose items are all scalars are written in flow style (`[a, b]`) when the line stays
//!   within [`MAX_WIDTH`] columns, otherwise in block style (`- a`); sequences containing maps or
//!   sequences are always block style;
//! - empty maps and sequences are `{}` and `[]`.
//!
//! Strings are written plain when that is unambiguous for YAML 1.2 *and* for YAML 1.1 readers
//! (so `yes`, `on`, `0777`, `1_000`, `12:30` and dates are quoted too), otherwise double-quoted
//! with escapes for everything that is not printable. Numbers, booleans and null are written as
//! YAML scalars. Integers above `i64::MAX` are written as-is; yaml-rust2 reads them back as floats.

use serde_json::{Map, Value};
use yaml_rust2::Yaml;

/// Flow-style sequences are used only when the whole line fits in this many columns.
pub const MAX_WIDTH: usize = 100;

const INDENT: usize = 2;

/// Serialises `value` as a YAML document (no `---` marker, trailing newline).
pub fn to_yaml(value: &Value) -> String {
    to_yaml_with_comments::<&str>(&[], value)
}

/// Like [`to_yaml`], preceded by one `# ...` comment line per line of `comments`.
///
/// Control characters in comments are replaced by spaces so a comment can never end early.
pub fn to_yaml_with_comments<S: AsRef<str>>(comments: &[S], value: &Value) -> String {
    let mut out = String::new();
    for comment in comments {
        for line in comment.as_ref().lines() {
            let clean: String = line.chars().map(|c| if needs_escape(c) { ' ' } else { c }).collect();
            let clean = clean.trim_end();
            if clean.is_empty() {
                out.push_str("#\n");
            } else {
                out.push_str("# ");
                out.push_str(clean);
                out.push('\n');
            }
        }
    }
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0, false),
        Value::Array(items) if !items.is_empty() => match flow_seq(items, 0) {
            Some(flow) => {
                out.push_str(&flow);
                out.push('\n');
            }
            None => write_seq(&mut out, items, 0, false),
        },
        other => {
            out.push_str(&inline_node(other, false));
            out.push('\n');
        }
    }
    out
}

/// The YAML text of a scalar string: plain when safe, double-quoted otherwise.
/// `flow` selects the stricter rules for items inside `[...]` / `{...}`.
pub fn scalar_string(s: &str, flow: bool) -> String {
    if plain_ok(s, flow) {
        s.to_owned()
    } else {
        double_quoted(s)
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

/// Scalars and empty collections, in one piece.
fn inline_node(v: &Value, flow: bool) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_string(s, flow),
        Value::Array(a) if a.is_empty() => "[]".to_owned(),
        Value::Object(m) if m.is_empty() => "{}".to_owned(),
        // Not reached: callers only pass scalars and empty collections.
        Value::Array(_) | Value::Object(_) => "null".to_owned(),
    }
}

/// `[a, b]` if every item is a scalar and the text fits after `column` columns.
fn flow_seq(items: &[Value], column: usize) -> Option<String> {
    if !items.iter().all(is_scalar) {
        return None;
    }
    let parts: Vec<String> = items.iter().map(|v| inline_node(v, true)).collect();
    let text = format!("[{}]", parts.join(", "));
    (column + text.chars().count() <= MAX_WIDTH).then_some(text)
}

fn write_map(out: &mut String, map: &Map<String, Value>, indent: usize, first_inline: bool) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 || !first_inline {
            pad(out, indent);
        }
        let key_text = scalar_string(key, false);
        out.push_str(&key_text);
        out.push(':');
        let column = indent + key_text.chars().count() + 2;
        match value {
            Value::Object(m) if !m.is_empty() => {
                out.push('\n');
                write_map(out, m, indent + INDENT, false);
            }
            Value::Array(a) if !a.is_empty() => match flow_seq(a, column) {
                Some(flow) => {
                    out.push(' ');
                    out.push_str(&flow);
                    out.push('\n');
                }
                None => {
                    out.push('\n');
                    write_seq(out, a, indent + INDENT, false);
                }
            },
            other => {
                out.push(' ');
                out.push_str(&inline_node(other, false));
                out.push('\n');
            }
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize, first_inline: bool) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !first_inline {
            pad(out, indent);
        }
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => write_map(out, m, indent + INDENT, true),
            Value::Array(a) if !a.is_empty() => match flow_seq(a, indent + INDENT) {
                Some(flow) => {
                    out.push_str(&flow);
                    out.push('\n');
                }
                None => write_seq(out, a, indent + INDENT, true),
            },
            other => {
                out.push_str(&inline_node(other, false));
                out.push('\n');
            }
        }
    }
}

/// Characters that are not YAML-printable, or are line breaks in some YAML version, or would be
/// invisible trouble (BOM): always escaped inside double quotes.
fn needs_escape(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}'
        | '\u{fffe}' | '\u{ffff}')
}

fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\0' => out.push_str("\\0"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x100 && needs_escape(c) => {
                out.push_str(&format!("\\x{:02X}", c as u32));
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Can `s` be written as a plain (unquoted) scalar and be read back as this exact string?
fn plain_ok(s: &str, flow: bool) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) {
        return false;
    }
    if first.is_whitespace() || s.chars().last().is_some_and(char::is_whitespace) {
        return false;
    }
    if s.starts_with("<<") || s.starts_with("...") || s.starts_with("---") {
        return false;
    }
    if s.contains(": ") || s.contains(" #") || s.ends_with(':') {
        return false;
    }
    if s.chars().any(needs_escape) {
        return false;
    }
    // In flow context, indicators end a plain scalar; `:` is also risky for YAML 1.1 readers,
    // and yaml-rust2 rejects a word `-` right before the closing `]` or `,`.
    if flow && (s.chars().any(|c| ",[]{}:#".contains(c)) || s.ends_with('-')) {
        return false;
    }
    !looks_like_non_string(s)
}

/// Would some YAML reader (yaml-rust2's core schema, or a YAML 1.1 reader) resolve this plain
/// scalar to something other than a string?
fn looks_like_non_string(s: &str) -> bool {
    if !matches!(Yaml::from_str(s), Yaml::String(_)) {
        return true;
    }
    let lower = s.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null" | "nil" | "none" | "~" | "=" // YAML 1.1 "value" key
    ) {
        return true;
    }
    let unsigned = lower
        .strip_prefix('+')
        .or_else(|| lower.strip_prefix('-'))
        .unwrap_or(&lower);
    let no_underscores: String = unsigned.chars().filter(|&c| c != '_').collect();
    if !no_underscores.is_empty() {
        if no_underscores.parse::<f64>().is_ok() || no_underscores.parse::<u128>().is_ok() {
            return true;
        }
        for prefix in ["0x", "0o", "0b"] {
            if let Some(digits) = no_underscores.strip_prefix(prefix)
                && !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_hexdigit())
            {
                return true;
            }
        }
    }
    is_sexagesimal(unsigned) || is_timestamp_like(s)
}

/// YAML 1.1 base-60 numbers: `[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?`.
fn is_sexagesimal(s: &str) -> bool {
    let (main, frac) = match s.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (s, None),
    };
    if frac.is_some_and(|f| !f.chars().all(|c| c.is_ascii_digit() || c == '_')) {
        return false;
    }
    let mut parts = main.split(':');
    let Some(head) = parts.next() else {
        return false;
    };
    if head.is_empty()
        || !head.starts_with(|c: char| c.is_ascii_digit())
        || !head.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return false;
    }
    let mut tails = 0;
    for part in parts {
        tails += 1;
        let ok = match part.as_bytes() {
            [d] => d.is_ascii_digit(),
            [a, b] => (b'0'..=b'5').contains(a) && b.is_ascii_digit(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    tails > 0
}

/// YAML 1.1 timestamps start with `YYYY-M-D`.
fn is_timestamp_like(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 8 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return false;
    }
    let rest = &b[5..];
    let month = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if !(1..=2).contains(&month) || rest.get(month) != Some(&b'-') {
        return false;
    }
    rest.get(month + 1).is_some_and(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use yaml_rust2::YamlLoader;

    fn yaml_to_json(y: &Yaml) -> Value {
        match y {
            Yaml::Real(r) => {
                let f: f64 = r.parse().expect("real");
                serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
            }
            Yaml::Integer(i) => Value::from(*i),
            Yaml::String(s) => Value::String(s.clone()),
            Yaml::Boolean(b) => Value::Bool(*b),
            Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
            Yaml::Hash(h) => {
                let mut m = Map::new();
                for (k, v) in h {
                    let Yaml::String(k) = k else {
                        panic!("non-string key {k:?}");
                    };
                    m.insert(k.clone(), yaml_to_json(v));
                }
                Value::Object(m)
            }
            Yaml::Null => Value::Null,
            other => panic!("unexpected node {other:?}"),
        }
    }

    fn obj(k: &str, v: Value) -> Value {
        let mut m = Map::new();
        m.insert(k.to_owned(), v);
        Value::Object(m)
    }

    #[track_caller]
    fn round_trip(v: &Value) -> String {
        let text = to_yaml(v);
        let docs =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("emitted YAML does not parse: {e}\n{text}"));
        assert_eq!(docs.len(), 1, "{text}");
        let back = yaml_to_json(&docs[0]);
        // Compare serialisations, so key order counts too.
        assert_eq!(
            serde_json::to_string(&back).expect("json"),
            serde_json::to_string(v).expect("json"),
            "round trip changed the value; YAML was:\n{text}"
        );
        text
    }

    const NASTY: &[&str] = &[
        "",
        " ",
        " leading",
        "trailing ",
        "*",
        "*.hcp.westeurope.azmk8s.io",
        "&anchor",
        "!tag",
        "-",
        "-1",
        "- item",
        "?",
        "? key",
        ":",
        "::1",
        "2001:db8::/32",
        "fe80::1%eth0",
        "{a: b}",
        "[a]",
        "#comment",
        "a #b",
        "a#b",
        "a: b",
        "a:b",
        "a:",
        "|",
        ">",
        "'",
        "\"",
        "it's",
        "say \"hi\"",
        "%TAG",
        "@at",
        "`tick",
        "true",
        "True",
        "FALSE",
        "yes",
        "No",
        "on",
        "OFF",
        "y",
        "n",
        "null",
        "Null",
        "~",
        "443",
        "0443",
        "+443",
        "1e3",
        "1E3",
        ".5",
        "5.",
        "1_000",
        "0x1F",
        "0o17",
        "0b101",
        ".inf",
        "-.inf",
        ".nan",
        "NaN",
        "inf",
        "12:30",
        "1:20:30.5",
        "2024-05-01",
        "2024-5-1T10:00:00Z",
        "1000-2000",
        "10.42.1.0/24",
        "10.42.2.0-10.42.2.31",
        "20.1.2.3",
        "AzureCloud.westeurope",
        "line\nbreak",
        "tab\there",
        "cr\rlf",
        "nul\0byte",
        "bell\u{7}",
        "del\u{7f}",
        "nel\u{85}",
        "ls\u{2028}ps\u{2029}",
        "\u{feff}bom",
        "back\\slash",
        "unicodé ✓ 中文",
        "emoji 🦀",
        "<<",
        "---",
        "...",
        "a, b",
        "a,b",
        "x]",
        "x}",
        "=",
    ];

    #[test]
    fn nasty_strings_round_trip_as_values_keys_and_list_items() {
        for s in NASTY {
            round_trip(&json!({ "k": s }));
            round_trip(&obj(s, json!("v")));
            round_trip(&json!({ "list": [s, "x"] }));
            round_trip(&json!({ "list": [s] }));
            round_trip(&json!([s]));
            round_trip(&json!([{ "a": s, "b": [s, s] }]));
            round_trip(&json!(s));
        }
    }

    #[test]
    fn ports_stay_strings_and_numbers_stay_numbers() {
        let v = json!({"destinationPorts": ["443", "1194", "1000-2000", "*"], "port": 443,
                        "f": 1.5, "neg": -3, "big": 9_007_199_254_740_993_i64, "t": true, "z": null});
        let text = round_trip(&v);
        assert!(
            text.contains(r#"destinationPorts: ["443", "1194", 1000-2000, "*"]"#),
            "{text}"
        );
        assert!(text.contains("port: 443\n"), "{text}");
    }

    #[test]
    fn layout() {
        let v = json!({
            "policy": {
                "threatIntelMode": "Alert",
                "ipGroups": {"aks-nodes": ["10.42.1.0/24"], "empty": []},
                "ruleCollectionGroups": [
                    {"name": "rcg", "priority": 200, "ruleCollections": [
                        {"name": "rc", "action": {"type": "Allow"}, "rules": [
                            {"ruleType": "NetworkRule", "destinationPorts": ["123"]}
                        ]}
                    ]}
                ],
                "nested": [[1, 2], [{"a": 1}], []],
                "emptyMap": {}
            }
        });
        let text = round_trip(&v);
        let expected = "\
policy:
  threatIntelMode: Alert
  ipGroups:
    aks-nodes: [10.42.1.0/24]
    empty: []
  ruleCollectionGroups:
    - name: rcg
      priority: 200
      ruleCollections:
        - name: rc
          action:
            type: Allow
          rules:
            - ruleType: NetworkRule
              destinationPorts: [\"123\"]
  nested:
    - [1, 2]
    - - a: 1
    - []
  emptyMap: {}
";
        assert_eq!(text, expected);
    }

    #[test]
    fn long_scalar_lists_fall_back_to_block_style() {
        let items: Vec<String> = (0..20).map(|i| format!("host{i}.example.com")).collect();
        let v = json!({ "targetFqdns": items });
        let text = round_trip(&v);
        assert!(text.starts_with("targetFqdns:\n  - host0.example.com\n"), "{text}");
        for line in text.lines() {
            assert!(line.chars().count() <= MAX_WIDTH, "{line}");
        }
    }

    #[test]
    fn comments_are_sanitised() {
        let text = to_yaml_with_comments(&["one\ntwo", "evil\r: x", ""], &json!({"a": 1}));
        assert_eq!(text, "# one\n# two\n# evil : x\na: 1\n");
        assert!(YamlLoader::load_from_str(&text).is_ok());
    }

    #[test]
    fn top_level_scalars_and_empties() {
        round_trip(&json!({}));
        round_trip(&json!([]));
        round_trip(&json!(null));
        round_trip(&json!(42));
        round_trip(&json!([[["deep"]]]));
        round_trip(&json!([{"a": {"b": {"c": [{"d": []}]}}}]));
    }

    #[test]
    fn deterministic_pseudo_random_strings_round_trip() {
        // A tiny LCG over an alphabet of YAML-significant characters.
        let alphabet: Vec<char> = " -?:,[]{}#&*!|>'\"%@`\\\t\n.0123456789eE+_xyzTtrue~\u{85}\u{2028}é"
            .chars()
            .collect();
        let mut state: u64 = 0x5eed;
        for _ in 0..3000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let len = (state >> 59) as usize;
            let mut s = String::new();
            for _ in 0..len {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                s.push(alphabet[(state >> 33) as usize % alphabet.len()]);
            }
            let mut v = obj("k", json!(s));
            if let Value::Object(m) = &mut v {
                m.insert("l".into(), json!([s]));
                m.insert(s.clone(), json!([s, 1]));
            }
            round_trip(&v);
        }
    }
}
