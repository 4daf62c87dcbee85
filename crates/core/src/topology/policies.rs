//! Reads `[[policies]]`: each policy's fields, with defaults, checked one by one so that
//! every bad value is reported.

use std::time::Duration;

use toml::de::DeValue;
use toml::Spanned;

use super::read::{integer, kind, valid_name, Ctx, Section, Span, NAME_RULE};
use super::{DeleteMode, Policy};
use crate::{parse_duration, Filter, MaxDelete};

const POLICY_FIELDS: &[&str] = &[
    "name",
    "source",
    "destinations",
    "include",
    "exclude",
    "since",
    "deletes",
    "max_delete",
    "rpo",
    "scan_interval",
    "every",
    "schedule",
    "transfers",
    "follow_symlinks",
];

pub(super) struct DraftPolicy {
    pub(super) what: String,
    pub(super) span: Span,
    pub(super) name: Option<Spanned<String>>,
    pub(super) source: Option<Spanned<String>>,
    pub(super) destinations: Vec<Spanned<String>>,
    pub(super) include: Vec<String>,
    pub(super) exclude: Vec<String>,
    pub(super) filter: Option<Filter>,
    pub(super) since: Option<chrono::DateTime<chrono::Utc>>,
    pub(super) deletes: DeleteMode,
    pub(super) max_delete: MaxDelete,
    pub(super) rpo: Duration,
    pub(super) scan_interval: Duration,
    pub(super) schedule: Option<crate::Schedule>,
    pub(super) transfers: usize,
    pub(super) follow_symlinks: bool,
}

pub(super) fn read(ctx: &mut Ctx<'_>, top: &Section<'_, '_>) -> Vec<DraftPolicy> {
    let Some(value) = top.get("policies") else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        ctx.error(
            Some(value.span()),
            "[[policies]]",
            format!(
                "expected a list of policies, found {}; write each policy as a [[policies]] table (double brackets)",
                kind(value.get_ref())
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("policy #{}", i + 1);
        if let Some(mut sec) = Section::new(ctx, item, what, "[[policies]]") {
            let name = sec.string(ctx, "name", "\"photos-dr\"");
            if let Some(name) = &name {
                sec.what = format!("policy '{}'", name.get_ref());
            }
            out.push(policy(ctx, &sec, name));
        }
    }
    out
}

fn policy(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, name: Option<Spanned<String>>) -> DraftPolicy {
    let what = sec.what.clone();
    sec.check_keys(ctx, "field", POLICY_FIELDS);
    let mut p = DraftPolicy {
        what: what.clone(),
        span: sec.span.clone(),
        name,
        source: sec.string(ctx, "source", "\"photos-qc\""),
        destinations: Vec::new(),
        include: Vec::new(),
        exclude: Vec::new(),
        filter: None,
        since: None,
        deletes: DeleteMode::Keep,
        max_delete: Policy::DEFAULT_MAX_DELETE,
        rpo: Policy::DEFAULT_RPO,
        scan_interval: Policy::DEFAULT_SCAN_INTERVAL,
        schedule: None,
        transfers: Policy::DEFAULT_TRANSFERS,
        follow_symlinks: false,
    };
    if let Some(value) = sec.get("follow_symlinks") {
        match value.get_ref() {
            DeValue::Boolean(b) => p.follow_symlinks = *b,
            other => ctx.error(
                Some(value.span()),
                &what,
                format!(
                    "`follow_symlinks` must be true or false, not {}",
                    kind(other)
                ),
            ),
        }
    }
    match &p.name {
        Some(n) if !valid_name(n.get_ref()) => {
            ctx.error(
                Some(n.span()),
                &what,
                format!("invalid policy name: {NAME_RULE}"),
            );
        }
        Some(_) => {}
        None if sec.get("name").is_none() => ctx.error(
            Some(sec.span.clone()),
            &what,
            "missing `name`; add name = \"NAME\" (it names the policy in the CLI, API and metrics)",
        ),
        None => {}
    }
    if p.source.is_none() && sec.get("source").is_none() {
        ctx.error(
            Some(sec.span.clone()),
            &what,
            "missing `source`; add source = \"STORE\" naming one of the [stores.NAME] tables",
        );
    }
    match sec.strings(ctx, "destinations", "[\"photos-we\"]") {
        Some(list) if list.get_ref().is_empty() => ctx.error(
            Some(list.span()),
            &what,
            "has no destinations; list at least one store, e.g. destinations = [\"photos-we\"]",
        ),
        Some(list) => p.destinations = list.into_inner(),
        None if sec.get("destinations").is_none() => ctx.error(
            Some(sec.span.clone()),
            &what,
            "has no destinations; add destinations = [\"STORE\", ...] naming [stores.NAME] tables",
        ),
        None => {}
    }
    p.filter = filter(ctx, sec, &mut p);
    if let Some(since) = sec.get("since") {
        p.since = parse_since(since.get_ref()).map_or_else(
            |message| {
                ctx.error(Some(since.span()), &what, message);
                None
            },
            Some,
        );
    }
    if let Some(deletes) = sec.string(ctx, "deletes", "\"keep\"") {
        match deletes.get_ref().as_str() {
            "keep" => p.deletes = DeleteMode::Keep,
            "propagate" => p.deletes = DeleteMode::Propagate,
            other => ctx.error(
                Some(deletes.span()),
                &what,
                format!("deletes = \"{other}\" is not a delete mode; use \"keep\" (the default) or \"propagate\""),
            ),
        }
    }
    if let Some(m) = max_delete(ctx, sec, &what) {
        p.max_delete = m;
    }
    if let Some(d) = duration(ctx, sec, "rpo", "\"15m\"", Duration::from_secs(1)) {
        p.rpo = d;
    }
    if let Some(d) = duration(ctx, sec, "scan_interval", "\"5m\"", Duration::from_secs(1)) {
        p.scan_interval = d;
    }
    if sec.get("every").is_some() || sec.get("schedule").is_some() {
        p.schedule = super::backups::schedule(ctx, sec);
        if let Some(sched) = &p.schedule {
            let interval = sched.interval(chrono::Utc::now());
            if let Some(v) = sec.get("scan_interval") {
                ctx.error(
                    Some(v.span()),
                    &what,
                    "`scan_interval` does not apply to a scheduled policy: it syncs at each tick of `every`/`schedule`; remove one of them",
                );
            }
            match sec.get("rpo") {
                // Changes wait for the next tick: the RPO cannot be under the interval.
                Some(v) if p.rpo < interval => ctx.error(
                    Some(v.span()),
                    &what,
                    format!(
                        "rpo = \"{}\" is shorter than the schedule's interval ({}): a change made just after one sync waits for the next; raise the rpo or sync more often",
                        humantime::format_duration(p.rpo),
                        humantime::format_duration(interval)
                    ),
                ),
                Some(_) => {}
                // One missed tick breaches it.
                None => p.rpo = interval.saturating_mul(2),
            }
        }
    }
    if let Some(n) = sec.integer(ctx, "transfers", "8") {
        match usize::try_from(*n.get_ref()) {
            Ok(t) if (1..=Policy::MAX_TRANSFERS).contains(&t) => p.transfers = t,
            _ => ctx.error(
                Some(n.span()),
                &what,
                format!(
                    "transfers = {} is out of range; use 1 to {} (default {})",
                    n.get_ref(),
                    Policy::MAX_TRANSFERS,
                    Policy::DEFAULT_TRANSFERS
                ),
            ),
        }
    }
    p
}

/// Checks every glob on its own, so each bad one is reported at its place.
fn filter(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, p: &mut DraftPolicy) -> Option<Filter> {
    let (include, exclude, filter) = globs(ctx, sec, &p.what);
    p.include = include;
    p.exclude = exclude;
    filter
}

/// `include` and `exclude` of a section, each glob checked on its own (each bad one is
/// reported at its place), and the filter they make (`None` when one was bad).
pub(super) fn globs(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    what: &str,
) -> (Vec<String>, Vec<String>, Option<Filter>) {
    let mut ok = true;
    let (mut include, mut exclude) = (Vec::new(), Vec::new());
    for key in ["include", "exclude"] {
        let Some(list) = sec.strings(ctx, key, "[\"images/**\"]") else {
            ok &= sec.get(key).is_none();
            continue;
        };
        let mut patterns = Vec::new();
        for pattern in list.into_inner() {
            if let Err(e) = Filter::new(std::slice::from_ref(pattern.get_ref()), &[]) {
                ok = false;
                ctx.error(
                    Some(pattern.span()),
                    what,
                    format!("{key}: {e}; `*` matches within one folder, `**` across folders, `?` one character, `[abc]` a set"),
                );
            }
            patterns.push(pattern.into_inner());
        }
        if key == "include" {
            include = patterns;
        } else {
            exclude = patterns;
        }
    }
    if !ok {
        return (include, exclude, None);
    }
    match Filter::new(&include, &exclude) {
        Ok(f) => (include, exclude, Some(f)),
        Err(e) => {
            ctx.error(Some(sec.span.clone()), what, e.to_string());
            (include, exclude, None)
        }
    }
}

/// `since` as an RFC 3339 string or a TOML date-time, which must carry an offset so the
/// instant does not depend on the machine's time zone.
fn parse_since(value: &DeValue<'_>) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let text = match value {
        DeValue::String(s) => s.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        other => {
            return Err(format!(
                "`since` must be an RFC 3339 time such as \"2024-06-01T00:00:00Z\", not {}",
                kind(other)
            ))
        }
    };
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            format!(
                "since '{text}' is not an RFC 3339 time with a time zone ({e}); write e.g. \"2024-06-01T00:00:00Z\""
            )
        })
}

pub(super) fn duration(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    key: &str,
    example: &str,
    min: Duration,
) -> Option<Duration> {
    let raw = sec.string(ctx, key, example)?;
    match parse_duration(raw.get_ref()) {
        Ok(d) if d >= min => Some(d),
        Ok(_) => {
            ctx.error(
                Some(raw.span()),
                &sec.what,
                format!(
                    "{key} = \"{}\" is too short; the minimum is {}",
                    raw.get_ref(),
                    humantime::format_duration(min)
                ),
            );
            None
        }
        Err(e) => {
            ctx.error(Some(raw.span()), &sec.what, format!("{key}: {e}"));
            None
        }
    }
}

/// `max_delete = 500` or `"10%"`, when given and valid.
pub(super) fn max_delete(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    what: &str,
) -> Option<MaxDelete> {
    let value = sec.get("max_delete")?;
    let parsed = match value.get_ref() {
        DeValue::String(s) => MaxDelete::parse(s).map_err(|e| e.to_string()),
        v => match integer(v) {
            Some(n) => u64::try_from(n)
                .map(MaxDelete::Count)
                .map_err(|_| "max_delete cannot be negative".to_string()),
            None => Err(format!(
                "`max_delete` must be a count or a percentage string, not {}",
                kind(v)
            )),
        },
    };
    match parsed {
        Ok(m) => Some(m),
        Err(e) => {
            ctx.error(
                Some(value.span()),
                what,
                format!("max_delete: {e}; e.g. max_delete = \"10%\" or max_delete = 500"),
            );
            None
        }
    }
}
