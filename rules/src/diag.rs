//! Diagnostics that point at the offending node: `FILE:LINE:COL: message`.

use std::fmt;

/// Index of a source file in a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FileId(pub u16);

/// 1-based line and column of a node in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

/// A position in one of the loaded files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Loc {
    pub file: FileId,
    pub pos: Pos,
}

/// Names of the files a policy was loaded from (the config and its base policies).
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<String>,
}

impl SourceMap {
    pub fn add(&mut self, name: impl Into<String>) -> FileId {
        self.files.push(name.into());
        FileId(u16::try_from(self.files.len() - 1).unwrap_or(u16::MAX))
    }

    pub fn name(&self, id: FileId) -> &str {
        self.files.get(usize::from(id.0)).map_or("<unknown>", String::as_str)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a policy file, resolved to a file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    pub pos: Pos,
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(
            f,
            "{}:{}:{}: {sev}{}",
            self.file, self.pos.line, self.pos.col, self.message
        )
    }
}

/// Collects findings while decoding and linking; locations stay unresolved until the end.
#[derive(Debug, Default)]
pub struct Diags {
    items: Vec<(Severity, Loc, String)>,
}

impl Diags {
    pub fn error(&mut self, loc: Loc, msg: impl Into<String>) {
        self.items.push((Severity::Error, loc, msg.into()));
    }

    pub fn warn(&mut self, loc: Loc, msg: impl Into<String>) {
        self.items.push((Severity::Warning, loc, msg.into()));
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|(s, _, _)| *s == Severity::Error)
    }

    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|(s, _, _)| *s == Severity::Error).count()
    }

    /// Resolves file names; sorted by file, then position, errors before warnings at one spot.
    pub fn resolve(self, sources: &SourceMap) -> Vec<Diagnostic> {
        let mut items = self.items;
        items.sort_by_key(|a| (a.1.file.0, a.1.pos, a.0));
        items.dedup();
        items
            .into_iter()
            .map(|(severity, loc, message)| Diagnostic {
                severity,
                file: sources.name(loc.file).to_string(),
                pos: loc.pos,
                message,
            })
            .collect()
    }
}
