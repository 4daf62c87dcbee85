//! `--include` / `--exclude` globs, matched against keys relative to a store's prefix.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// A glob that does not compile; names the pattern.
#[derive(Debug, thiserror::Error)]
#[error("invalid glob {pattern:?}: {reason}")]
pub struct FilterError {
    pub pattern: String,
    pub reason: String,
}

/// Selects keys: a key passes when it matches some include (or there are none) and no
/// exclude. `*` stays within one path segment, `**` crosses `/`, as in gitignore.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, FilterError> {
        Ok(Self {
            include: build(include)?,
            exclude: build(exclude)?,
        })
    }

    /// True when no pattern is set, so every key passes.
    pub fn is_empty(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }

    pub fn matches(&self, key: &str) -> bool {
        if let Some(ex) = &self.exclude {
            if ex.is_match(key) {
                return false;
            }
        }
        match &self.include {
            Some(inc) => inc.is_match(key),
            None => true,
        }
    }
}

fn build(patterns: &[String]) -> Result<Option<GlobSet>, FilterError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        set.add(compile(p)?);
    }
    set.build().map(Some).map_err(|e| FilterError {
        pattern: patterns.join(", "),
        reason: e.to_string(),
    })
}

fn compile(pattern: &str) -> Result<Glob, FilterError> {
    let trimmed = pattern.trim_start_matches('/');
    GlobBuilder::new(trimmed)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| FilterError {
            pattern: pattern.to_string(),
            reason: e.kind().to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(inc: &[&str], exc: &[&str]) -> Filter {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(&s(inc), &s(exc)).expect("valid globs")
    }

    #[test]
    fn matching() {
        let cases: &[(&[&str], &[&str], &str, bool)] = &[
            (&[], &[], "a/b/c.txt", true),
            (&["*.txt"], &[], "c.txt", true),
            (&["*.txt"], &[], "a/c.txt", false),
            (&["**/*.txt"], &[], "a/b/c.txt", true),
            (&["**/*.txt"], &[], "c.txt", true),
            (&["images/**"], &[], "images/x/y.png", true),
            (&["images/**"], &[], "docs/y.png", false),
            (&[], &["**/*.tmp"], "a/b.tmp", false),
            (&[], &["**/*.tmp"], "a/b.txt", true),
            (&["images/**"], &["**/*.tmp"], "images/a.tmp", false),
            (&["/top.txt"], &[], "top.txt", true),
        ];
        for (inc, exc, key, want) in cases {
            assert_eq!(f(inc, exc).matches(key), *want, "{inc:?} {exc:?} {key}");
        }
    }

    #[test]
    fn bad_glob_names_pattern() {
        let err = Filter::new(&["a[".to_string()], &[]).expect_err("unclosed class");
        assert!(err.to_string().contains("a["), "{err}");
    }
}
