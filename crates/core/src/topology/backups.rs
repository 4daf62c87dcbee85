//! Reads `[[backups]]`: recovery points of a store kept in a repository in another
//! region, on a schedule, with retention bands in the style of Site Recovery and restic
//! `forget`. Checked field by field, so every bad value is reported.

use std::time::Duration;

use serde::Serialize;
use toml::de::DeValue;
use toml::Spanned;

use super::read::{expand_field, kind, valid_name, Ctx, Section, Span, NAME_RULE};
use crate::{parse_duration, Filter, Schedule};

const BACKUP_FIELDS: &[&str] = &[
    "name",
    "source",
    "repository",
    "password",
    "every",
    "schedule",
    "include",
    "exclude",
    "retention",
    "append_only",
];
const RETENTION_FIELDS: &[&str] = &["within", "hourly", "daily", "weekly", "monthly", "yearly"];

/// A calendar span as restic's `forget --keep-within*` reads it: `2h`, `15d`, `12w`,
/// `12m` (months), `1y6m`. Months and years are calendar units, so they are kept apart
/// from hours and days instead of being turned into seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CalendarSpan {
    pub years: u32,
    pub months: u32,
    pub weeks: u32,
    pub days: u32,
    pub hours: u32,
}

impl CalendarSpan {
    /// Parses `<n><unit>...` with units `y`, `m` (month), `w`, `d`, `h`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let help = "write a span such as \"2h\", \"15d\", \"12w\", \"12m\" (months) or \"1y6m\"; units y, m (month), w, d, h";
        let t = text.trim();
        if t.is_empty() {
            return Err(format!("an empty span; {help}"));
        }
        let mut span = Self::default();
        let mut digits = String::new();
        for c in t.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let n: u32 = digits
                .parse()
                .map_err(|_| format!("'{text}' is not a span; {help}"))?;
            digits.clear();
            let slot = match c {
                'y' => &mut span.years,
                'm' => &mut span.months,
                'w' => &mut span.weeks,
                'd' => &mut span.days,
                'h' => &mut span.hours,
                _ => return Err(format!("'{text}' has the unit '{c}'; {help}")),
            };
            *slot = slot.saturating_add(n);
        }
        if !digits.is_empty() {
            return Err(format!(
                "'{text}' ends with a number without a unit; {help}"
            ));
        }
        if span.years > 1000
            || span.months > 12_000
            || span.weeks > 52_000
            || span.days > 365_000
            || span.hours > 8_760_000
        {
            return Err(format!("'{text}' is longer than 1000 years; {help}"));
        }
        if span == Self::default() {
            return Err(format!("'{text}' keeps nothing; {help}"));
        }
        Ok(span)
    }
}

/// Written back as restic writes it (`1y6m2w3d4h`).
impl std::fmt::Display for CalendarSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.weeks, 'w'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for CalendarSpan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which points a prune keeps, counted back from the newest point: every point within
/// `within`, then the last point of each hour within `hourly`, of each day within
/// `daily`, and so on. A point any band keeps is kept. No band at all keeps every point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub within: Option<CalendarSpan>,
    pub hourly: Option<CalendarSpan>,
    pub daily: Option<CalendarSpan>,
    pub weekly: Option<CalendarSpan>,
    pub monthly: Option<CalendarSpan>,
    pub yearly: Option<CalendarSpan>,
}

/// Points in time of a store, kept in a repository in another region.
#[derive(Clone, Serialize)]
pub struct Backup {
    pub name: String,
    /// The store whose objects are backed up.
    pub source: String,
    /// The store that holds the repository; in another region than the source.
    pub repository: String,
    /// The repository's password, after `${NAME}` expansion. Never serialized.
    #[serde(skip)]
    pub password: String,
    pub schedule: Schedule,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    #[serde(skip)]
    pub filter: Filter,
    pub retention: Retention,
    /// Nothing in the repository is ever deleted or rewritten (object lock, immutable
    /// containers): prune is refused and says so.
    pub append_only: bool,
}

/// `filter` is compiled from `include` and `exclude`, and the password is compared too
/// (a changed password is a changed backup).
impl PartialEq for Backup {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name
            && self.source == o.source
            && self.repository == o.repository
            && self.password == o.password
            && self.schedule == o.schedule
            && self.include == o.include
            && self.exclude == o.exclude
            && self.retention == o.retention
            && self.append_only == o.append_only
    }
}

/// Written by hand so that `{:?}` of a topology never shows the password.
impl std::fmt::Debug for Backup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backup")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("repository", &self.repository)
            .field("password", &"***")
            .field("schedule", &self.schedule)
            .field("include", &self.include)
            .field("exclude", &self.exclude)
            .field("retention", &self.retention)
            .field("append_only", &self.append_only)
            .finish()
    }
}

impl Backup {
    /// The shortest `every`: a point a minute (Site Recovery's is fixed at 5).
    pub const MIN_EVERY: Duration = Duration::from_secs(60);
}

pub(super) struct DraftBackup {
    pub(super) what: String,
    pub(super) span: Span,
    pub(super) name: Option<Spanned<String>>,
    pub(super) source: Option<Spanned<String>>,
    pub(super) repository: Option<Spanned<String>>,
    password: Option<String>,
    schedule: Option<Schedule>,
    include: Vec<String>,
    exclude: Vec<String>,
    filter: Option<Filter>,
    retention: Retention,
    append_only: bool,
}

impl DraftBackup {
    /// `None` only when a required piece is missing, which has been reported.
    pub(super) fn finish(self) -> Option<Backup> {
        Some(Backup {
            name: self.name?.into_inner(),
            source: self.source?.into_inner(),
            repository: self.repository?.into_inner(),
            password: self.password?,
            schedule: self.schedule?,
            include: self.include,
            exclude: self.exclude,
            filter: self.filter?,
            retention: self.retention,
            append_only: self.append_only,
        })
    }
}

pub(super) fn read(
    ctx: &mut Ctx<'_>,
    top: &Section<'_, '_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<DraftBackup> {
    let Some(value) = top.get("backups") else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        ctx.error(
            Some(value.span()),
            "[[backups]]",
            format!(
                "expected a list of backups, found {}; write each backup as a [[backups]] table (double brackets)",
                kind(value.get_ref())
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("backup #{}", i + 1);
        if let Some(mut sec) = Section::new(ctx, item, what, "[[backups]]") {
            let name = sec.string(ctx, "name", "\"photos-points\"");
            if let Some(name) = &name {
                sec.what = format!("backup '{}'", name.get_ref());
            }
            out.push(backup(ctx, &sec, name, env));
        }
    }
    out
}

fn required(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, key: &str, fix: &str) {
    if sec.get(key).is_none() {
        ctx.error(
            Some(sec.span.clone()),
            &sec.what,
            format!("missing `{key}`; {fix}"),
        );
    }
}

fn backup(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    name: Option<Spanned<String>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> DraftBackup {
    let what = sec.what.clone();
    sec.check_keys(ctx, "field", BACKUP_FIELDS);
    if let Some(n) = &name {
        if !valid_name(n.get_ref()) {
            ctx.error(
                Some(n.span()),
                &what,
                format!("invalid backup name: {NAME_RULE}"),
            );
        }
    }
    required(
        ctx,
        sec,
        "name",
        "add name = \"NAME\" (it names the backup in the CLI, API and metrics)",
    );
    let source = sec.string(ctx, "source", "\"photos-qc\"");
    required(
        ctx,
        sec,
        "source",
        "add source = \"STORE\" naming the store whose objects are backed up",
    );
    let repository = sec.string(ctx, "repository", "\"points-we\"");
    required(
        ctx,
        sec,
        "repository",
        "add repository = \"STORE\" naming a store in another region that holds the repository",
    );
    let password = sec.string(ctx, "password", "\"${GEOREP_BACKUP_PASSWORD}\"");
    required(ctx, sec, "password", "add password = \"${NAME}\" and export NAME (the repository is encrypted with it; keep it somewhere safe: without it no point can be restored)");
    let password = password.and_then(|raw| {
        if !raw.get_ref().contains("${") {
            ctx.error(
                Some(raw.span()),
                &what,
                "the password is written in the file; write password = \"${NAME}\" and export NAME, so the file holds no secret",
            );
            return None;
        }
        let text = expand_field(ctx, &what, "password", &raw, env)?;
        if text.is_empty() {
            ctx.error(
                Some(raw.span()),
                &what,
                "the password is empty once expanded; set the variable to the repository's password",
            );
            return None;
        }
        Some(text)
    });
    let schedule = schedule(ctx, sec);
    let (include, exclude, filter) = super::policies::globs(ctx, sec, &what);
    let retention = retention(ctx, sec);
    let mut append_only = false;
    if let Some(value) = sec.get("append_only") {
        match value.get_ref() {
            DeValue::Boolean(b) => append_only = *b,
            other => ctx.error(
                Some(value.span()),
                &what,
                format!("`append_only` must be true or false, not {}", kind(other)),
            ),
        }
    }
    DraftBackup {
        what,
        span: sec.span.clone(),
        name,
        source,
        repository,
        password,
        schedule,
        include,
        exclude,
        filter,
        retention,
        append_only,
    }
}

/// Exactly one of `every` and `schedule` (backups and scheduled policies).
pub(super) fn schedule(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Option<Schedule> {
    let every = sec.string(ctx, "every", "\"5m\"");
    let cron = sec.string(ctx, "schedule", "\"*/15 * * * *\"");
    match (every, cron) {
        (Some(e), Some(_)) => {
            ctx.error(
                Some(e.span()),
                &sec.what,
                "both `every` and `schedule` are set; keep one: every = \"5m\" (every 5 minutes) or schedule = \"0 * * * *\" (cron, UTC)",
            );
            None
        }
        (Some(e), None) => match parse_duration(e.get_ref()) {
            Ok(d) if d >= Backup::MIN_EVERY => Some(Schedule::Every(d)),
            Ok(_) => {
                ctx.error(
                    Some(e.span()),
                    &sec.what,
                    format!(
                        "every = \"{}\" is shorter than the shortest interval, 1m",
                        e.get_ref()
                    ),
                );
                None
            }
            Err(err) => {
                ctx.error(Some(e.span()), &sec.what, format!("every: {err}"));
                None
            }
        },
        (None, Some(c)) => match Schedule::cron(c.get_ref()) {
            Ok(s) => Some(s),
            Err(err) => {
                ctx.error(Some(c.span()), &sec.what, format!("schedule: {err}"));
                None
            }
        },
        (None, None) => {
            if sec.get("every").is_none() && sec.get("schedule").is_none() {
                ctx.error(
                    Some(sec.span.clone()),
                    &sec.what,
                    "missing `every` or `schedule`; add every = \"5m\" (every 5 minutes) or schedule = \"0 * * * *\" (cron, UTC)",
                );
            }
            None
        }
    }
}

fn retention(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Retention {
    let mut r = Retention::default();
    let Some(value) = sec.get("retention") else {
        return r;
    };
    let DeValue::Table(table) = value.get_ref() else {
        ctx.error(
            Some(value.span()),
            &sec.what,
            format!(
                "`retention` must be a table, not {}; e.g. retention = {{ within = \"2h\", hourly = \"24h\", daily = \"15d\", weekly = \"12w\", monthly = \"12m\" }}",
                kind(value.get_ref())
            ),
        );
        return r;
    };
    let bands = Section {
        table,
        span: value.span(),
        what: format!("{} retention", sec.what),
    };
    bands.check_keys(ctx, "band", RETENTION_FIELDS);
    for (key, slot) in [
        ("within", &mut r.within),
        ("hourly", &mut r.hourly),
        ("daily", &mut r.daily),
        ("weekly", &mut r.weekly),
        ("monthly", &mut r.monthly),
        ("yearly", &mut r.yearly),
    ] {
        let Some(raw) = bands.string(ctx, key, "\"15d\"") else {
            continue;
        };
        match CalendarSpan::parse(raw.get_ref()) {
            Ok(s) => *slot = Some(s),
            Err(e) => ctx.error(Some(raw.span()), &bands.what, format!("{key}: {e}")),
        }
    }
    r
}

/// Checks across sections: names are unique, `source` and `repository` are declared
/// stores, and the repository is a different store in another region than the source
/// (a point kept in the source's region does not survive the loss of that region).
pub(super) fn check(
    ctx: &mut Ctx<'_>,
    stores: &std::collections::BTreeMap<String, super::sections::DraftStore>,
    backups: &[DraftBackup],
) {
    let mut names: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for b in backups {
        if let Some(name) = &b.name {
            match names.get(name.get_ref().as_str()) {
                Some(line) => ctx.error(
                    Some(name.span()),
                    &b.what,
                    format!(
                        "the name '{}' is already used by the backup at line {line}; backup names must be unique",
                        name.get_ref()
                    ),
                ),
                None => {
                    let line = ctx.line_of(&b.span);
                    names.insert(name.get_ref(), line);
                }
            }
        }
        let mut region = |field: &Option<Spanned<String>>, key: &str| -> Option<String> {
            let f = field.as_ref()?;
            match stores.get(f.get_ref()) {
                None => {
                    ctx.error(
                        Some(f.span()),
                        &b.what,
                        format!(
                            "{key} '{}' is not a store; declare it under [stores.{}] or fix the name",
                            f.get_ref(),
                            f.get_ref()
                        ),
                    );
                    None
                }
                Some(s) => s.region.as_ref().map(|r| r.get_ref().clone()),
            }
        };
        let src = region(&b.source, "source");
        let repo = region(&b.repository, "repository");
        if let (Some(s), Some(r), Some(rs)) = (&b.source, &b.repository, &b.repository) {
            if s.get_ref() == r.get_ref() {
                ctx.error(
                    Some(rs.span()),
                    &b.what,
                    "the repository is the source itself; name a store in another region",
                );
            } else if src.is_some() && src == repo {
                ctx.error(
                    Some(rs.span()),
                    &b.what,
                    format!(
                        "repository '{}' is in region '{}', like the source: a point kept there does not survive the loss of that region; use a store in another region",
                        r.get_ref(),
                        repo.unwrap_or_default()
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_spans_read_like_restic() {
        let s = CalendarSpan::parse("1y6m2w3d4h").expect("span");
        assert_eq!(
            (s.years, s.months, s.weeks, s.days, s.hours),
            (1, 6, 2, 3, 4)
        );
        assert_eq!(s.to_string(), "1y6m2w3d4h");
        assert_eq!(CalendarSpan::parse("12m").expect("months").months, 12);
        for bad in ["", "12", "3x", "0h", "h", "1.5d"] {
            assert!(CalendarSpan::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
