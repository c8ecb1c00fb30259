//! A YAML (and therefore JSON) document as a tree of nodes that remember where they are, so every later
//! error can point at `line:col`. Anchors, aliases and tags are refused: a policy file has no use for them
//! and they would let one node appear in several places.

use crate::diag::{FileId, Loc, Pos};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A scalar as written; `quoted` is true for '…' and "…" (never null, never a number).
    Scalar {
        text: String,
        quoted: bool,
    },
    Null,
    Seq(Vec<Node>),
    /// Keys in file order; keys are scalars.
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub loc: Loc,
    pub value: Value,
}

impl Node {
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Scalar { .. } => "a scalar",
            Value::Null => "null",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub loc: Loc,
    pub message: String,
}

/// Parses one YAML/JSON document. An empty document is `Null`.
pub fn parse(file: FileId, text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder {
        file,
        stack: Vec::new(),
        root: None,
        error: None,
        docs: 0,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, true) {
        return Err(SyntaxError {
            loc: loc_of(file, e.marker()),
            message: format!("syntax error: {}", e.info()),
        });
    }
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.root.unwrap_or(Node {
        loc: Loc {
            file,
            pos: Pos { line: 1, col: 1 },
        },
        value: Value::Null,
    }))
}

fn loc_of(file: FileId, m: &Marker) -> Loc {
    let clamp = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    // yaml-rust2 reports 1-based lines and 0-based columns.
    Loc {
        file,
        pos: Pos {
            line: clamp(m.line()).max(1),
            col: clamp(m.col()).saturating_add(1),
        },
    }
}

enum Frame {
    Seq(Loc, Vec<Node>),
    Map(Loc, Vec<(Node, Node)>, Option<Node>),
}

struct Builder {
    file: FileId,
    stack: Vec<Frame>,
    root: Option<Node>,
    error: Option<SyntaxError>,
    docs: usize,
}

impl Builder {
    fn fail(&mut self, loc: Loc, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                loc,
                message: message.into(),
            });
        }
    }

    fn push_node(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending_key)) => match pending_key.take() {
                None => {
                    if !matches!(node.value, Value::Scalar { .. }) {
                        let loc = node.loc;
                        self.fail(loc, "mapping keys must be plain strings");
                        return;
                    }
                    let dup = entries
                        .iter()
                        .find(|(k, _)| k.as_scalar() == node.as_scalar())
                        .map(|(k, _)| k.loc);
                    if let Some(first) = dup {
                        let msg = format!(
                            "duplicate key `{}` (first at line {})",
                            node.as_scalar().unwrap_or_default(),
                            first.pos.line
                        );
                        self.fail(node.loc, msg);
                        return;
                    }
                    *pending_key = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let loc = loc_of(self.file, &mark);
        match ev {
            Event::DocumentStart => {
                self.docs += 1;
                if self.docs > 1 {
                    self.fail(loc, "a policy file holds one YAML document; found a second `---`");
                }
            }
            Event::Alias(_) => self.fail(loc, "YAML aliases (*name) are not supported in policy files"),
            Event::Scalar(text, style, anchor, tag) => {
                if anchor != 0 {
                    self.fail(loc, "YAML anchors (&name) are not supported in policy files");
                    return;
                }
                if tag.is_some() {
                    self.fail(loc, "YAML tags (!tag) are not supported in policy files");
                    return;
                }
                let quoted = !matches!(style, TScalarStyle::Plain);
                let value = if !quoted && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar { text, quoted }
                };
                self.push_node(Node { loc, value });
            }
            Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag) if anchor != 0 || tag.is_some() => {
                self.fail(loc, "YAML anchors and tags are not supported in policy files");
            }
            Event::SequenceStart(..) => self.stack.push(Frame::Seq(loc, Vec::new())),
            Event::MappingStart(..) => self.stack.push(Frame::Map(loc, Vec::new(), None)),
            Event::SequenceEnd => {
                if let Some(Frame::Seq(l, items)) = self.stack.pop() {
                    self.push_node(Node {
                        loc: l,
                        value: Value::Seq(items),
                    });
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(l, entries, _)) = self.stack.pop() {
                    self.push_node(Node {
                        loc: l,
                        value: Value::Map(entries),
                    });
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Node, SyntaxError> {
        parse(FileId(0), s)
    }

    #[test]
    fn positions_are_one_based() {
        let n = p("a:\n  b: [1, x]\n").unwrap();
        let Value::Map(m) = &n.value else { panic!() };
        assert_eq!(m[0].0.loc.pos, Pos { line: 1, col: 1 });
        let Value::Map(inner) = &m[0].1.value else { panic!() };
        assert_eq!(inner[0].0.loc.pos, Pos { line: 2, col: 3 });
        let Value::Seq(items) = &inner[0].1.value else { panic!() };
        assert_eq!(items[1].loc.pos, Pos { line: 2, col: 10 });
    }

    #[test]
    fn json_parses_with_positions() {
        let n = p("{\n  \"policy\": {\"x\": \"443\"}\n}").unwrap();
        let Value::Map(m) = &n.value else { panic!() };
        assert_eq!(m[0].0.as_scalar(), Some("policy"));
        assert_eq!(m[0].0.loc.pos.line, 2);
        let Value::Map(inner) = &m[0].1.value else { panic!() };
        assert!(matches!(&inner[0].1.value, Value::Scalar { text, quoted: true } if text == "443"));
    }

    #[test]
    fn rejects_duplicates_aliases_and_syntax() {
        let e = p("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.loc.pos.line, 3);
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
        assert!(p("a: &x 1\nb: *x\n").is_err());
        let e = p("a: [1, 2\nb: 3").unwrap_err();
        assert!(e.message.starts_with("syntax error"), "{}", e.message);
        assert!(p("a: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn null_forms() {
        let n = p("a:\nb: ~\nc: ''\n").unwrap();
        let Value::Map(m) = &n.value else { panic!() };
        assert_eq!(m[0].1.value, Value::Null);
        assert_eq!(m[1].1.value, Value::Null);
        assert!(matches!(&m[2].1.value, Value::Scalar { quoted: true, .. }));
        assert_eq!(p("").unwrap().value, Value::Null);
    }
}
