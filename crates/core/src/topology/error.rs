//! Config errors: every problem in a topology file, with where it is and how to fix it.

use std::fmt;
use std::ops::Range;

/// One problem in a topology file. `what` names the thing (`policy 'photos-dr'`,
/// `store 'photos-qc'`, `[server]`), `message` says what is wrong and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render_in(None))]
pub struct ConfigError {
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column in characters.
    pub column: Option<usize>,
    pub what: String,
    pub message: String,
}

impl ConfigError {
    /// An error located at byte `span` of `text` (the start of the span counts).
    pub(crate) fn at(
        text: &str,
        span: Option<Range<usize>>,
        what: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = match span.map(|s| line_column(text, s.start)) {
            Some((l, c)) => (Some(l), Some(c)),
            None => (None, None),
        };
        Self {
            line,
            column,
            what: what.into(),
            message: message.into(),
        }
    }

    /// `file:line:column: what: message`, leaving out what is unknown.
    fn render_in(&self, file: Option<&str>) -> String {
        let mut place: Vec<String> = Vec::new();
        if let Some(f) = file {
            place.push(f.to_string());
        }
        if let Some(l) = self.line {
            place.push(l.to_string());
            if let Some(c) = self.column {
                place.push(c.to_string());
            }
        }
        let mut out = place.join(":");
        if !out.is_empty() {
            out.push_str(": ");
        }
        if !self.what.is_empty() {
            out.push_str(&self.what);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

/// Every problem found in one topology file, in file order; never empty when returned
/// as an error. Reporting them all at once saves an edit-run round trip per mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// One line per error, prefixed with `file:line:column:` like a compiler, so editors
    /// can jump to it.
    pub fn render(&self, file: &str) -> String {
        self.0
            .iter()
            .map(|e| e.render_in(Some(file)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Puts errors in file order; errors without a place go last, in the order found.
    pub(crate) fn sorted(mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
        errors.dedup();
        Self(errors)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// 1-based line and character column of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
