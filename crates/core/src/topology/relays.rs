//! Reads `[[relays]]`: an HTTP endpoint that accepts events from publishers, keeps
//! them in a durable outbox and delivers them to targets in one region or several —
//! client-side failover for Event Grid publishers, and workspace-style replication.
//! Checked field by field, so every bad value is reported.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use toml::de::DeValue;
use toml::Spanned;

use super::read::{expand_field, kind, valid_name, Ctx, Section, Span, NAME_RULE};
use crate::parse_size;

const RELAY_FIELDS: &[&str] = &[
    "name",
    "listen",
    "accept",
    "key",
    "mode",
    "targets",
    "failover_after",
    "failback_after",
    "probe_interval",
    "max_outbox",
    "batch",
    "rpo",
    "dead_letters",
];
const TARGET_FIELDS: &[&str] = &["name", "region", "kind", "url", "key", "health", "timeout"];

/// The API publishers speak to a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Accept {
    /// Event Grid's publish API (`POST /api/events`): Event Grid schema or CloudEvents
    /// 1.0 (structured, single or batch), authenticated by `aeg-sas-key` or a bearer
    /// token.
    EventGrid,
}

impl Accept {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EventGrid => "eventgrid",
        }
    }
}

/// How a relay uses its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayMode {
    /// Every event to the first healthy target, in order.
    Failover,
    /// Every event to every target, each at its own pace.
    Replicate,
}

/// What a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// An Event Grid topic's publish endpoint (`aeg-sas-key`).
    EventGrid,
    /// Any HTTP endpoint, sent CloudEvents in structured batch mode (or the events as
    /// they were published), with an optional bearer token.
    Webhook,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EventGrid => "eventgrid",
            Self::Webhook => "webhook",
        }
    }
}

/// One place a relay delivers to.
#[derive(Clone, PartialEq, Serialize)]
pub struct RelayTarget {
    pub name: String,
    pub region: String,
    pub kind: TargetKind,
    /// Serialized redacted (a query may hold a signature).
    #[serde(serialize_with = "redacted")]
    pub url: String,
    /// The target's key or token, after `${NAME}` expansion. Never serialized.
    #[serde(skip)]
    pub key: Option<String>,
    /// Probed for health while the relay has failed over from this target (a GET that
    /// must answer 2xx); without it, a GET on `url`.
    #[serde(serialize_with = "option_redacted")]
    pub health: Option<String>,
    #[serde(serialize_with = "super::duration")]
    pub timeout: Duration,
}

fn redacted<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::redact_url(url))
}

fn option_redacted<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_some(&crate::redact_url(u)),
        None => s.serialize_none(),
    }
}

impl std::fmt::Debug for RelayTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTarget")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("kind", &self.kind)
            .field("url", &crate::redact_url(&self.url))
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("health", &self.health.as_deref().map(crate::redact_url))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A relay: accepted events are durable before the publisher hears 2xx, and then
/// delivered at least once, in order, with the publisher's ids.
#[derive(Clone, PartialEq, Serialize)]
pub struct Relay {
    pub name: String,
    pub listen: SocketAddr,
    pub accept: Accept,
    /// What publishers must send (`aeg-sas-key` or `Authorization: Bearer`), after
    /// `${NAME}` expansion. Never serialized.
    #[serde(skip)]
    pub key: String,
    pub mode: RelayMode,
    pub targets: Vec<RelayTarget>,
    /// Consecutive failed deliveries (or probes) before failing over.
    pub failover_after: u32,
    /// How long the preferred target must stay healthy before failing back.
    #[serde(serialize_with = "super::duration")]
    pub failback_after: Duration,
    #[serde(serialize_with = "super::duration")]
    pub probe_interval: Duration,
    /// Bytes of undelivered events the outbox holds before publishers get 503.
    pub max_outbox: u64,
    /// Events per delivery.
    pub batch: u32,
    /// The oldest undelivered event may be this old before status reports a breach.
    #[serde(serialize_with = "super::duration")]
    pub rpo: Duration,
    /// A store that receives batches a target refused as bad data; without it they
    /// are kept in the outbox (`georep relay replay` sends them again either way).
    pub dead_letters: Option<String>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("accept", &self.accept)
            .field("key", &"***")
            .field("mode", &self.mode)
            .field("targets", &self.targets)
            .field("failover_after", &self.failover_after)
            .field("failback_after", &self.failback_after)
            .field("probe_interval", &self.probe_interval)
            .field("max_outbox", &self.max_outbox)
            .field("batch", &self.batch)
            .field("rpo", &self.rpo)
            .field("dead_letters", &self.dead_letters)
            .finish()
    }
}

impl Relay {
    pub const DEFAULT_FAILOVER_AFTER: u32 = 3;
    pub const DEFAULT_FAILBACK_AFTER: Duration = Duration::from_secs(60);
    pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);
    pub const DEFAULT_MAX_OUTBOX: u64 = 1 << 30;
    pub const DEFAULT_BATCH: u32 = 100;
    pub const DEFAULT_RPO: Duration = Duration::from_secs(300);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
}

pub(super) struct DraftRelay {
    pub(super) what: String,
    pub(super) span: Span,
    pub(super) name: Option<Spanned<String>>,
    pub(super) listen: Option<Spanned<SocketAddr>>,
    accept: Option<Accept>,
    key: Option<String>,
    mode: Option<RelayMode>,
    targets: Vec<DraftTarget>,
    targets_ok: bool,
    failover_after: u32,
    failback_after: Duration,
    probe_interval: Duration,
    max_outbox: u64,
    batch: u32,
    rpo: Duration,
    pub(super) dead_letters: Option<Spanned<String>>,
}

struct DraftTarget {
    what: String,
    name: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    kind: Option<TargetKind>,
    url: Option<String>,
    key: Option<String>,
    health: Option<String>,
    timeout: Duration,
}

impl DraftRelay {
    /// `None` only when a required piece is missing, which has been reported.
    pub(super) fn finish(self) -> Option<Relay> {
        if !self.targets_ok {
            return None;
        }
        let targets = self
            .targets
            .into_iter()
            .map(|t| {
                Some(RelayTarget {
                    name: t.name?.into_inner(),
                    region: t.region?.into_inner(),
                    kind: t.kind?,
                    url: t.url?,
                    key: t.key,
                    health: t.health,
                    timeout: t.timeout,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Relay {
            name: self.name?.into_inner(),
            listen: self.listen?.into_inner(),
            accept: self.accept?,
            key: self.key?,
            mode: self.mode?,
            targets,
            failover_after: self.failover_after,
            failback_after: self.failback_after,
            probe_interval: self.probe_interval,
            max_outbox: self.max_outbox,
            batch: self.batch,
            rpo: self.rpo,
            dead_letters: self.dead_letters.map(Spanned::into_inner),
        })
    }
}

pub(super) fn read(
    ctx: &mut Ctx<'_>,
    top: &Section<'_, '_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<DraftRelay> {
    let Some(value) = top.get("relays") else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        ctx.error(
            Some(value.span()),
            "[[relays]]",
            format!(
                "expected a list of relays, found {}; write each relay as a [[relays]] table (double brackets)",
                kind(value.get_ref())
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("relay #{}", i + 1);
        if let Some(mut sec) = Section::new(ctx, item, what, "[[relays]]") {
            let name = sec.string(ctx, "name", "\"orders-events\"");
            if let Some(name) = &name {
                sec.what = format!("relay '{}'", name.get_ref());
            }
            out.push(relay(ctx, &sec, name, env));
        }
    }
    out
}

fn missing(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, key: &str, fix: &str) {
    if sec.get(key).is_none() {
        ctx.error(
            Some(sec.span.clone()),
            &sec.what,
            format!("missing `{key}`; {fix}"),
        );
    }
}

/// A secret field: it must come from the environment (`${NAME}`), never the file.
fn secret(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let raw = sec.string(ctx, key, "\"${RELAY_KEY}\"")?;
    if !raw.get_ref().contains("${") {
        ctx.error(
            Some(raw.span()),
            &sec.what,
            format!("the {key} is written in the file; write {key} = \"${{NAME}}\" and export NAME, so the file holds no secret"),
        );
        return None;
    }
    let text = expand_field(ctx, &sec.what, key, &raw, env)?;
    if text.is_empty() {
        ctx.error(
            Some(raw.span()),
            &sec.what,
            format!("the {key} is empty once expanded; set the variable"),
        );
        return None;
    }
    Some(text)
}

/// One of `words` (lower case), or an error listing them.
fn word<T: Copy>(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    key: &str,
    words: &[(&str, T)],
) -> Option<T> {
    let raw = sec.string(ctx, key, &format!("\"{}\"", words[0].0))?;
    let found = words.iter().find(|(w, _)| *w == raw.get_ref().as_str());
    if found.is_none() {
        let list: Vec<String> = words.iter().map(|(w, _)| format!("\"{w}\"")).collect();
        ctx.error(
            Some(raw.span()),
            &sec.what,
            format!(
                "{key} \"{}\" is not one georep knows; write {key} = {}",
                raw.get_ref(),
                list.join(" or ")
            ),
        );
    }
    found.map(|(_, v)| *v)
}

/// An `http://` or `https://` URL without credentials in it (they go in `key`).
fn http_url(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, key: &str, example: &str) -> Option<String> {
    let raw = sec.string(ctx, key, example)?;
    let text = raw.get_ref().trim();
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                ctx.error(
                    Some(raw.span()),
                    &sec.what,
                    format!("{key} holds credentials; put the key or token in `key = \"${{NAME}}\"` instead"),
                );
                return None;
            }
            Some(text.to_string())
        }
        _ => {
            // Echo only the scheme: the rest may hold a secret.
            let scheme = text.split_once("://").map_or("", |(s, _)| s);
            ctx.error(
                Some(raw.span()),
                &sec.what,
                format!(
                    "{key} is not an http:// or https:// URL{}; write e.g. {key} = {example}",
                    if scheme.is_empty() {
                        String::new()
                    } else {
                        format!(" (it starts with '{scheme}://')")
                    }
                ),
            );
            None
        }
    }
}

/// A whole number within `range` (`default` when absent or out of range, which is
/// reported with `unit`).
fn bounded(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    (key, example, unit): (&str, &str, &str),
    range: std::ops::RangeInclusive<u32>,
    default: u32,
) -> u32 {
    let Some(n) = sec.integer(ctx, key, example) else {
        return default;
    };
    match u32::try_from(*n.get_ref()) {
        Ok(v) if range.contains(&v) => v,
        _ => {
            ctx.error(
                Some(n.span()),
                &sec.what,
                format!(
                    "{key} must be between {} and {} ({unit})",
                    range.start(),
                    range.end()
                ),
            );
            default
        }
    }
}

fn relay(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    name: Option<Spanned<String>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> DraftRelay {
    let what = sec.what.clone();
    sec.check_keys(ctx, "field", RELAY_FIELDS);
    if let Some(n) = &name {
        if !valid_name(n.get_ref()) {
            ctx.error(
                Some(n.span()),
                &what,
                format!("invalid relay name: {NAME_RULE}"),
            );
        }
    }
    missing(
        ctx,
        sec,
        "name",
        "add name = \"NAME\" (it names the relay in the CLI, API and metrics)",
    );
    let listen = super::failover::listener(ctx, sec, "listen", "\"127.0.0.1:7443\"");
    missing(
        ctx,
        sec,
        "listen",
        "add listen = \"IP:PORT\", where publishers send their events",
    );
    let accept = word(ctx, sec, "accept", &[("eventgrid", Accept::EventGrid)]);
    missing(
        ctx,
        sec,
        "accept",
        "add accept = \"eventgrid\" (the API publishers speak: Event Grid schema or CloudEvents 1.0)",
    );
    let key = secret(ctx, sec, "key", env).filter(|k| {
        let long = k.len() >= 16;
        if !long {
            ctx.error(
                Some(sec.span.clone()),
                &what,
                "the key is shorter than 16 characters once expanded; publishers authenticate with it: use a long random value (e.g. openssl rand -hex 32)",
            );
        }
        long
    });
    missing(ctx, sec, "key", "add key = \"${NAME}\" and export NAME: publishers send it as aeg-sas-key or a bearer token, and nothing is accepted without it");
    let mode = word(
        ctx,
        sec,
        "mode",
        &[
            ("failover", RelayMode::Failover),
            ("replicate", RelayMode::Replicate),
        ],
    );
    missing(
        ctx,
        sec,
        "mode",
        "add mode = \"failover\" (the first healthy target) or mode = \"replicate\" (every target)",
    );
    let (targets, targets_ok) = targets(ctx, sec, env);
    if let (Some(RelayMode::Failover), true, 1) = (mode, targets_ok, targets.len()) {
        ctx.error(
            Some(sec.span.clone()),
            &what,
            "mode = \"failover\" needs at least two targets (the primary first, then where to fail over to)",
        );
    }
    let failover_after = bounded(
        ctx,
        sec,
        ("failover_after", "3", "consecutive failures"),
        1..=100,
        Relay::DEFAULT_FAILOVER_AFTER,
    );
    // Event Grid takes at most 1 MB per request.
    let batch = bounded(
        ctx,
        sec,
        ("batch", "100", "events per delivery"),
        1..=5000,
        Relay::DEFAULT_BATCH,
    );
    let dur = |ctx: &mut Ctx<'_>, key: &str, example: &str, min: Duration, default: Duration| {
        super::policies::duration(ctx, sec, key, example, min).unwrap_or(default)
    };
    let failback_after = dur(
        ctx,
        "failback_after",
        "\"60s\"",
        Duration::from_secs(1),
        Relay::DEFAULT_FAILBACK_AFTER,
    );
    let probe_interval = dur(
        ctx,
        "probe_interval",
        "\"5s\"",
        Duration::from_millis(100),
        Relay::DEFAULT_PROBE_INTERVAL,
    );
    let rpo = dur(
        ctx,
        "rpo",
        "\"5m\"",
        Duration::from_secs(1),
        Relay::DEFAULT_RPO,
    );
    let max_outbox = match sec.string(ctx, "max_outbox", "\"1GiB\"") {
        None => Relay::DEFAULT_MAX_OUTBOX,
        Some(raw) => match parse_size(raw.get_ref()) {
            Ok(n) if n >= 1 << 20 => n,
            Ok(_) => {
                ctx.error(
                    Some(raw.span()),
                    &what,
                    "max_outbox is smaller than 1MiB; give room for at least a few batches",
                );
                Relay::DEFAULT_MAX_OUTBOX
            }
            Err(e) => {
                ctx.error(Some(raw.span()), &what, format!("max_outbox: {e}"));
                Relay::DEFAULT_MAX_OUTBOX
            }
        },
    };
    let dead_letters = sec.string(ctx, "dead_letters", "\"dead-letters-we\"");
    DraftRelay {
        what,
        span: sec.span.clone(),
        name,
        listen,
        accept,
        key,
        mode,
        targets,
        targets_ok,
        failover_after,
        failback_after,
        probe_interval,
        max_outbox,
        batch,
        rpo,
        dead_letters,
    }
}

fn targets(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Vec<DraftTarget>, bool) {
    let example = "targets = [{ name = \"qc\", region = \"qatar-central\", kind = \"eventgrid\", url = \"https://TOPIC.REGION-1.eventgrid.azure.net/api/events\", key = \"${EG_KEY_QC}\" }]";
    let Some(value) = sec.get("targets") else {
        ctx.error(
            Some(sec.span.clone()),
            &sec.what,
            format!("missing `targets`; add {example}"),
        );
        return (Vec::new(), false);
    };
    let DeValue::Array(items) = value.get_ref() else {
        ctx.error(
            Some(value.span()),
            &sec.what,
            format!(
                "`targets` must be a list of tables, not {}; write {example}",
                kind(value.get_ref())
            ),
        );
        return (Vec::new(), false);
    };
    if items.is_empty() {
        ctx.error(
            Some(value.span()),
            &sec.what,
            format!("`targets` is empty; add {example}"),
        );
        return (Vec::new(), false);
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let what = format!("{} target #{}", sec.what, i + 1);
        let Some(mut t) = Section::new(
            ctx,
            item,
            what,
            "{ name = ..., region = ..., kind = ..., url = ... }",
        ) else {
            ok = false;
            continue;
        };
        let name = t.string(ctx, "name", "\"qc\"");
        if let Some(n) = &name {
            t.what = format!("{} target '{}'", sec.what, n.get_ref());
            if !valid_name(n.get_ref()) {
                ctx.error(
                    Some(n.span()),
                    &t.what,
                    format!("invalid target name: {NAME_RULE}"),
                );
            }
        }
        t.check_keys(ctx, "field", TARGET_FIELDS);
        missing(
            ctx,
            &t,
            "name",
            "add name = \"NAME\" (it names the target in status and metrics)",
        );
        let region = t.string(ctx, "region", "\"west-europe\"");
        missing(
            ctx,
            &t,
            "region",
            "add region = \"REGION\", where the target is",
        );
        let kind = word(
            ctx,
            &t,
            "kind",
            &[
                ("eventgrid", TargetKind::EventGrid),
                ("webhook", TargetKind::Webhook),
            ],
        );
        missing(ctx, &t, "kind", "add kind = \"eventgrid\" or \"webhook\"");
        let url = http_url(
            ctx,
            &t,
            "url",
            "\"https://TOPIC.REGION-1.eventgrid.azure.net/api/events\"",
        );
        missing(
            ctx,
            &t,
            "url",
            "add url = \"https://...\", where events are delivered",
        );
        let key = if t.get("key").is_some() {
            secret(ctx, &t, "key", env)
        } else {
            if kind == Some(TargetKind::EventGrid) {
                ctx.error(
                    Some(t.span.clone()),
                    &t.what,
                    "missing `key`; an Event Grid topic takes events only with its access key: add key = \"${NAME}\" and export NAME",
                );
            }
            None
        };
        let health = if t.get("health").is_some() {
            http_url(ctx, &t, "health", "\"https://HOST/healthz\"")
        } else {
            None
        };
        let timeout =
            super::policies::duration(ctx, &t, "timeout", "\"10s\"", Duration::from_millis(100))
                .unwrap_or(Relay::DEFAULT_TIMEOUT);
        out.push(DraftTarget {
            what: t.what.clone(),
            name,
            region,
            kind,
            url,
            key,
            health,
            timeout,
        });
    }
    (out, ok)
}

/// Checks across sections: relay names are unique, target names unique within a relay,
/// target regions declared, a dead-letter store declared, and no listen address clashes
/// with the API's, a failover group's or another relay's.
pub(super) fn check(ctx: &mut Ctx<'_>, draft: &super::sections::Draft) {
    let mut names: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut taken = super::failover::listen_addresses(ctx, &draft.failover_groups);
    let server = draft.server.listen;
    for r in &draft.relays {
        if let Some(name) = &r.name {
            match names.get(name.get_ref().as_str()) {
                Some(line) => ctx.error(
                    Some(name.span()),
                    &r.what,
                    format!(
                        "the name '{}' is already used by the relay at line {line}; relay names must be unique",
                        name.get_ref()
                    ),
                ),
                None => {
                    let line = ctx.line_of(&r.span);
                    names.insert(name.get_ref(), line);
                }
            }
        }
        let mut seen: Vec<&str> = Vec::new();
        for t in &r.targets {
            if let Some(n) = &t.name {
                if seen.contains(&n.get_ref().as_str()) {
                    ctx.error(
                        Some(n.span()),
                        &t.what,
                        format!("the target name '{}' is used twice in this relay; give each target its own name", n.get_ref()),
                    );
                }
                seen.push(n.get_ref());
            }
            if let Some(region) = &t.region {
                if !draft.regions.contains_key(region.get_ref()) {
                    ctx.error(
                        Some(region.span()),
                        &t.what,
                        format!(
                            "region '{}' is not declared; add [regions.{}] or fix the name",
                            region.get_ref(),
                            region.get_ref()
                        ),
                    );
                }
            }
        }
        if let Some(store) = &r.dead_letters {
            if !draft.stores.contains_key(store.get_ref()) {
                ctx.error(
                    Some(store.span()),
                    &r.what,
                    format!(
                        "dead_letters '{}' is not a store; declare it under [stores.{}] or fix the name",
                        store.get_ref(),
                        store.get_ref()
                    ),
                );
            }
        }
        if let Some(addr) = &r.listen {
            let a = *addr.get_ref();
            if super::failover::clash(a, server) {
                ctx.error(
                    Some(addr.span()),
                    &r.what,
                    format!("listen {a} clashes with the API's [server] listen address {server}; give it another port"),
                );
            } else if let Some((b, other, line)) =
                taken.iter().find(|(b, _, _)| super::failover::clash(a, *b))
            {
                ctx.error(
                    Some(addr.span()),
                    &r.what,
                    format!("listen {a} clashes with {other} {b} (line {line}); every listener needs its own address"),
                );
            } else {
                let line = ctx.line_of(&addr.span());
                taken.push((a, format!("the listen address of {}", r.what), line));
            }
        }
    }
}
