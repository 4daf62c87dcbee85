//! Reading TOML tables field by field, so that every unknown key and every bad value in
//! the file is reported in one pass with its line, instead of stopping at the first.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::ConfigError;

pub(super) type Span = Range<usize>;

/// Collects errors while the sections are read and checked.
pub(super) struct Ctx<'t> {
    text: &'t str,
    pub(super) errors: Vec<ConfigError>,
}

impl<'t> Ctx<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        Self {
            text,
            errors: Vec::new(),
        }
    }

    pub(super) fn error(&mut self, span: Option<Span>, what: &str, message: impl Into<String>) {
        self.errors
            .push(ConfigError::at(self.text, span, what, message));
    }

    /// The 1-based line of a span, for messages that point at another place.
    pub(super) fn line_of(&self, span: &Span) -> usize {
        super::error::line_column(self.text, span.start).0
    }
}

/// One TOML table and the name of the thing it describes, for messages.
pub(super) struct Section<'a, 'i> {
    pub(super) table: &'a DeTable<'i>,
    pub(super) span: Span,
    pub(super) what: String,
}

impl<'a, 'i> Section<'a, 'i> {
    /// `value` as a table, or an error that shows the expected shape.
    pub(super) fn new(
        ctx: &mut Ctx<'_>,
        value: &'a Spanned<DeValue<'i>>,
        what: String,
        shape: &str,
    ) -> Option<Self> {
        match value.get_ref() {
            DeValue::Table(table) => Some(Self {
                table,
                span: value.span(),
                what,
            }),
            other => {
                ctx.error(
                    Some(value.span()),
                    &what,
                    format!(
                        "expected a table, found {}; write it as {shape}",
                        kind(other)
                    ),
                );
                None
            }
        }
    }

    /// Reports every key not in `allowed`, each at its own place, with a suggestion.
    pub(super) fn check_keys(&self, ctx: &mut Ctx<'_>, noun: &str, allowed: &[&str]) {
        for key in self.table.keys() {
            let name: &str = key.get_ref();
            if allowed.contains(&name) {
                continue;
            }
            let hint = match closest(name, allowed) {
                Some(near) => format!(" (did you mean `{near}`?)"),
                None => String::new(),
            };
            ctx.error(
                Some(key.span()),
                &self.what,
                format!(
                    "unknown {noun} `{name}`{hint}; the {noun}s allowed here are: {}",
                    allowed.join(", ")
                ),
            );
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.table.get(key)
    }

    /// A string field; `example` shows a valid value in the error.
    pub(super) fn string(
        &self,
        ctx: &mut Ctx<'_>,
        key: &str,
        example: &str,
    ) -> Option<Spanned<String>> {
        let value = self.get(key)?;
        self.as_string(ctx, key, value, example)
    }

    fn as_string(
        &self,
        ctx: &mut Ctx<'_>,
        key: &str,
        value: &Spanned<DeValue<'_>>,
        example: &str,
    ) -> Option<Spanned<String>> {
        match value.get_ref() {
            DeValue::String(s) => Some(Spanned::new(value.span(), s.to_string())),
            other => {
                ctx.error(
                    Some(value.span()),
                    &self.what,
                    format!(
                        "`{key}` must be a string, not {}; e.g. {key} = {example}",
                        kind(other)
                    ),
                );
                None
            }
        }
    }

    /// A list of strings; the outer span is the whole array.
    pub(super) fn strings(
        &self,
        ctx: &mut Ctx<'_>,
        key: &str,
        example: &str,
    ) -> Option<Spanned<Vec<Spanned<String>>>> {
        let value = self.get(key)?;
        let DeValue::Array(items) = value.get_ref() else {
            ctx.error(
                Some(value.span()),
                &self.what,
                format!(
                    "`{key}` must be a list of strings, not {}; e.g. {key} = {example}",
                    kind(value.get_ref())
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        for item in items.iter() {
            if let Some(s) = self.as_string(ctx, key, item, example) {
                out.push(s);
            }
        }
        Some(Spanned::new(value.span(), out))
    }

    /// An integer field (any TOML integer syntax).
    pub(super) fn integer(
        &self,
        ctx: &mut Ctx<'_>,
        key: &str,
        example: &str,
    ) -> Option<Spanned<i64>> {
        let value = self.get(key)?;
        match integer(value.get_ref()) {
            Some(n) => Some(Spanned::new(value.span(), n)),
            None => {
                ctx.error(
                    Some(value.span()),
                    &self.what,
                    format!(
                        "`{key}` must be a whole number, not {}; e.g. {key} = {example}",
                        kind(value.get_ref())
                    ),
                );
                None
            }
        }
    }
}

/// The value of a TOML integer, if `value` is one that fits an i64.
pub(super) fn integer(value: &DeValue<'_>) -> Option<i64> {
    match value {
        DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix()).ok(),
        _ => None,
    }
}

/// A TOML type in words, for "found ..." messages.
pub(super) fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

/// The allowed word nearest to a misspelt one, when it is near enough to be a typo.
fn closest<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(word, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4) && *d < a.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Names of regions, stores and policies appear in URLs and metric labels, so they are
/// kept to a safe alphabet.
pub(super) fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(super) const NAME_RULE: &str = "a name starts with a letter or digit and has only letters, digits, '.', '_' and '-' (names appear in URLs and metric labels)";

/// A problem with one `${...}` reference.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ExpandError {
    Missing(String),
    BadName(String),
    Unterminated,
}

/// Replaces `${NAME}` with `env(NAME)`; `$${` is a literal `${`. Runs on parsed TOML
/// strings, so an environment value can never change the file's structure. All problems
/// are returned, not just the first.
pub(super) fn expand(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<ExpandError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                errors.push(ExpandError::Unterminated);
                rest = "";
                break;
            };
            let name = &after[..end];
            if !valid_var(name) {
                errors.push(ExpandError::BadName(name.to_string()));
            } else {
                match env(name) {
                    Some(value) => out.push_str(&value),
                    None => errors.push(ExpandError::Missing(name.to_string())),
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn valid_var(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Expands a field's `${...}` references, reporting each problem at the field.
pub(super) fn expand_field(
    ctx: &mut Ctx<'_>,
    what: &str,
    field: &str,
    value: &Spanned<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    match expand(value.get_ref(), env) {
        Ok(s) => Some(s),
        Err(errors) => {
            for e in errors {
                let message = match e {
                    ExpandError::Missing(name) => format!(
                        "{field} uses ${{{name}}}, which is not set in the environment; export it or remove the reference"
                    ),
                    ExpandError::BadName(name) => format!(
                        "{field} has ${{{name}}}, which is not a variable name: use letters, digits and '_' (not starting with a digit), or write $${{ for a literal ${{"
                    ),
                    ExpandError::Unterminated => format!(
                        "{field} has a '${{' without a closing '}}'; close it, or write $${{ for a literal ${{"
                    ),
                };
                ctx.error(Some(value.span()), what, message);
            }
            None
        }
    }
}

/// The tables of a `[[key]]` list, each as a section named for errors (`NOUN #N`,
/// then `NOUN 'NAME'` once its name is read) with that name; anything but a list of
/// tables is reported.
pub(super) fn named_tables<'a, 'i>(
    ctx: &mut Ctx<'_>,
    top: &Section<'a, 'i>,
    key: &str,
    noun: &str,
    name_example: &str,
) -> Vec<(Section<'a, 'i>, Option<Spanned<String>>)> {
    let Some(value) = top.get(key) else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        ctx.error(
            Some(value.span()),
            &format!("[[{key}]]"),
            format!(
                "expected a list of {noun}s, found {}; write each {noun} as a [[{key}]] table (double brackets)",
                kind(value.get_ref())
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("{noun} #{}", i + 1);
        if let Some(mut sec) = Section::new(ctx, item, what, &format!("[[{key}]]")) {
            let name = sec.string(ctx, "name", name_example);
            if let Some(n) = &name {
                sec.what = format!("{noun} '{}'", n.get_ref());
            }
            out.push((sec, name));
        }
    }
    out
}
