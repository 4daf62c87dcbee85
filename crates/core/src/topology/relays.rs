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
    "tls_cert",
    "tls_key",
];
const TARGET_FIELDS: &[&str] = &[
    "name",
    "region",
    "kind",
    "url",
    "key",
    "health",
    "timeout",
    "store",
    "subject",
    "bus",
    "aws_region",
    "cloudevents",
];

/// The API publishers speak to a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Accept {
    /// Event Grid's publish API (`POST /api/events`): Event Grid schema or CloudEvents
    /// 1.0 (structured, single or batch), authenticated by `aeg-sas-key` or a bearer
    /// token.
    EventGrid,
    /// Azure Monitor's Logs Ingestion API (`POST /dataCollectionRules/{id}/streams/
    /// {stream}`): a JSON array of records, gzip or not, with a bearer token.
    Logs,
    /// Loki's push API (`POST /loki/api/v1/push`), JSON.
    Loki,
    /// Elasticsearch's bulk API (`POST /_bulk`, `POST /{index}/_bulk`), `index` and
    /// `create` actions.
    Elasticsearch,
}

impl Accept {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EventGrid => "eventgrid",
            Self::Logs => "logs",
            Self::Loki => "loki",
            Self::Elasticsearch => "elasticsearch",
        }
    }

    /// Whether it takes log records (rather than events).
    pub fn is_logs(self) -> bool {
        !matches!(self, Self::EventGrid)
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
    /// AWS EventBridge `PutEvents` on a bus (SigV4 with the `AWS_*` environment).
    EventBridge,
    /// A NATS JetStream subject (each event acknowledged by the stream, with its id as
    /// `Nats-Msg-Id` so the stream drops duplicates).
    Nats,
    /// Azure Monitor's Logs Ingestion API (a data collection rule's stream; bearer).
    Logs,
    /// Loki's push API.
    Loki,
    /// Elasticsearch's bulk API (`create` with the event's id, so a redelivery is a
    /// no-op).
    Elasticsearch,
    /// Gzip-compressed NDJSON objects in a georep store.
    Archive,
}

impl TargetKind {
    pub const ALL: &[(&str, TargetKind)] = &[
        ("eventgrid", Self::EventGrid),
        ("webhook", Self::Webhook),
        ("eventbridge", Self::EventBridge),
        ("nats", Self::Nats),
        ("logs", Self::Logs),
        ("loki", Self::Loki),
        ("elasticsearch", Self::Elasticsearch),
        ("archive", Self::Archive),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("", |(w, _)| w)
    }

    /// Whether it can take what `accept` brings: events (Event Grid, EventBridge) or
    /// log records (Logs Ingestion, Loki, Elasticsearch); webhooks, NATS and archives
    /// take either.
    pub fn takes(self, accept: Accept) -> bool {
        match self {
            Self::EventGrid | Self::EventBridge => !accept.is_logs(),
            Self::Logs | Self::Loki | Self::Elasticsearch => accept.is_logs(),
            Self::Webhook | Self::Nats | Self::Archive => true,
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
    /// `archive`: the store the objects go to.
    pub store: Option<String>,
    /// `nats`: the subject published to.
    pub subject: Option<String>,
    /// `eventbridge`: the event bus (`default` when not given).
    pub bus: Option<String>,
    /// `eventbridge`: the AWS region signed for (from the URL's host when it is
    /// `events.REGION.amazonaws.com`).
    pub aws_region: Option<String>,
    /// `webhook`: CloudEvents in binary mode (one request per event, attributes as
    /// `ce-` headers, the data as the body) rather than structured batches.
    pub binary: bool,
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
            .field("store", &self.store)
            .field("subject", &self.subject)
            .field("bus", &self.bus)
            .field("aws_region", &self.aws_region)
            .field("binary", &self.binary)
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
    /// The certificate chain and private key (PEM files) publishers are served HTTPS
    /// with; required when `listen` is not a loopback address, so keys and data never
    /// cross a network in clear.
    pub tls: Option<RelayTls>,
}

/// PEM files for a relay's HTTPS endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelayTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
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
            .field("tls", &self.tls)
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
    tls: Option<RelayTls>,
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
    store: Option<Spanned<String>>,
    subject: Option<String>,
    bus: Option<String>,
    aws_region: Option<String>,
    binary: bool,
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
                    url: t.url.unwrap_or_default(),
                    key: t.key,
                    health: t.health,
                    timeout: t.timeout,
                    store: t.store.map(Spanned::into_inner),
                    subject: t.subject,
                    bus: t.bus,
                    aws_region: t.aws_region,
                    binary: t.binary,
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
            tls: self.tls,
        })
    }
}

pub(super) fn read(
    ctx: &mut Ctx<'_>,
    top: &Section<'_, '_>,
    base_dir: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<DraftRelay> {
    super::read::named_tables(ctx, top, "relays", "relay", "\"orders-events\"")
        .into_iter()
        .map(|(sec, name)| {
            let mut r = relay(ctx, &sec, name, env);
            r.tls = tls(ctx, &sec, base_dir, r.listen.as_ref());
            r
        })
        .collect()
}

pub(super) fn missing(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, key: &str, fix: &str) {
    if sec.get(key).is_none() {
        ctx.error(
            Some(sec.span.clone()),
            &sec.what,
            format!("missing `{key}`; {fix}"),
        );
    }
}

/// A secret field: it must come from the environment (`${NAME}`), never the file.
pub(super) fn secret(
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
pub(super) fn word<T: Copy>(
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

/// `failover_after`, `failback_after` and `probe_interval`: the hysteresis relays and
/// concierges share (`defaults` in that order).
pub(super) fn hysteresis(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    (after, back, every): (u32, Duration, Duration),
) -> (u32, Duration, Duration) {
    let failover_after = bounded(
        ctx,
        sec,
        ("failover_after", "3", "failures in a row"),
        1..=100,
        after,
    );
    let failback_after = super::policies::duration(
        ctx,
        sec,
        "failback_after",
        "\"60s\"",
        Duration::from_secs(1),
    )
    .unwrap_or(back);
    let probe_interval = super::policies::duration(
        ctx,
        sec,
        "probe_interval",
        "\"5s\"",
        Duration::from_millis(100),
    )
    .unwrap_or(every);
    (failover_after, failback_after, probe_interval)
}

/// A whole number within `range` (`default` when absent or out of range, which is
/// reported with `unit`).
pub(super) fn bounded(
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
    let accept = word(
        ctx,
        sec,
        "accept",
        &[
            ("eventgrid", Accept::EventGrid),
            ("logs", Accept::Logs),
            ("loki", Accept::Loki),
            ("elasticsearch", Accept::Elasticsearch),
        ],
    );
    missing(
        ctx,
        sec,
        "accept",
        "add accept = \"eventgrid\" (Event Grid schema or CloudEvents 1.0), \"logs\" (Azure Monitor Logs Ingestion), \"loki\" or \"elasticsearch\": the API publishers speak",
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
    let (targets, targets_ok) = targets(ctx, sec, env, accept);
    if let (Some(RelayMode::Failover), true, 1) = (mode, targets_ok, targets.len()) {
        ctx.error(
            Some(sec.span.clone()),
            &what,
            "mode = \"failover\" needs at least two targets (the primary first, then where to fail over to)",
        );
    }
    let (failover_after, failback_after, probe_interval) = hysteresis(
        ctx,
        sec,
        (
            Relay::DEFAULT_FAILOVER_AFTER,
            Relay::DEFAULT_FAILBACK_AFTER,
            Relay::DEFAULT_PROBE_INTERVAL,
        ),
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
        tls: None,
    }
}

/// `tls_cert` and `tls_key` (both or neither, relative to the config's folder);
/// without them, `listen` must be a loopback address.
pub(super) fn tls(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    base_dir: &std::path::Path,
    listen: Option<&Spanned<SocketAddr>>,
) -> Option<RelayTls> {
    let what = sec.what.clone();
    let cert = sec.string(ctx, "tls_cert", "\"/etc/georep/relay.crt\"");
    let tls_key = sec.string(ctx, "tls_key", "\"/etc/georep/relay.key\"");
    let tls = match (cert, tls_key) {
        (Some(c), Some(k)) => Some(RelayTls {
            cert: super::resolve(base_dir, std::path::Path::new(c.get_ref())),
            key: super::resolve(base_dir, std::path::Path::new(k.get_ref())),
        }),
        (None, None) => None,
        (c, _) => {
            ctx.error(
                Some(sec.span.clone()),
                &what,
                format!(
                    "{} is set without {}; give both tls_cert and tls_key (PEM files), or neither",
                    if c.is_some() { "tls_cert" } else { "tls_key" },
                    if c.is_some() { "tls_key" } else { "tls_cert" }
                ),
            );
            None
        }
    };
    if let (Some(addr), None, false) = (
        &listen,
        &tls,
        sec.get("tls_cert").is_some() || sec.get("tls_key").is_some(),
    ) {
        if !addr.get_ref().ip().is_loopback() {
            ctx.error(
                Some(addr.span()),
                &what,
                format!(
                    "listen {} is not a loopback address, and keys and data would cross the network in clear; add tls_cert and tls_key (PEM files), or listen on 127.0.0.1 behind a TLS proxy",
                    addr.get_ref()
                ),
            );
        }
    }
    tls
}

fn targets(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    env: &dyn Fn(&str) -> Option<String>,
    accept: Option<Accept>,
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
        let kind = word(ctx, &t, "kind", TargetKind::ALL);
        let kinds: Vec<String> = TargetKind::ALL
            .iter()
            .map(|(w, _)| format!("\"{w}\""))
            .collect();
        missing(
            ctx,
            &t,
            "kind",
            &format!("add kind = one of {}", kinds.join(", ")),
        );
        if let (Some(k), Some(a)) = (kind, accept) {
            if !k.takes(a) {
                ctx.error(
                    Some(t.span.clone()),
                    &t.what,
                    format!(
                        "a target of kind \"{}\" cannot take what accept = \"{}\" brings ({}); use {}",
                        k.as_str(),
                        a.as_str(),
                        if a.is_logs() { "log records" } else { "events" },
                        if a.is_logs() {
                            "kind = \"logs\", \"loki\", \"elasticsearch\", \"webhook\", \"nats\" or \"archive\""
                        } else {
                            "kind = \"eventgrid\", \"eventbridge\", \"webhook\", \"nats\" or \"archive\""
                        }
                    ),
                );
            }
        }
        let only = |ctx: &mut Ctx<'_>, field: &str, for_kind: TargetKind| {
            if t.get(field).is_some() && kind.is_some_and(|k| k != for_kind) {
                ctx.error(
                    Some(t.span.clone()),
                    &t.what,
                    format!(
                        "`{field}` applies only to kind = \"{}\"; remove it",
                        for_kind.as_str()
                    ),
                );
            }
        };
        only(ctx, "store", TargetKind::Archive);
        only(ctx, "subject", TargetKind::Nats);
        only(ctx, "bus", TargetKind::EventBridge);
        only(ctx, "aws_region", TargetKind::EventBridge);
        only(ctx, "cloudevents", TargetKind::Webhook);
        let binary = word(
            ctx,
            &t,
            "cloudevents",
            &[("structured", false), ("binary", true)],
        )
        .unwrap_or(false);
        let url = match kind {
            Some(TargetKind::Archive) => {
                if t.get("url").is_some() {
                    ctx.error(
                        Some(t.span.clone()),
                        &t.what,
                        "an archive target writes to a store: remove `url` and name the store with store = \"NAME\"",
                    );
                }
                None
            }
            Some(TargetKind::Nats) => nats_url(ctx, &t),
            _ => http_url(ctx, &t, "url", url_example(kind)),
        };
        if kind != Some(TargetKind::Archive) {
            missing(
                ctx,
                &t,
                "url",
                &format!(
                    "add url = {}, where events are delivered",
                    url_example(kind)
                ),
            );
        }
        if let (Some(k), Some(u)) = (kind, url.as_deref()) {
            let path = url::Url::parse(u)
                .map(|u| u.path().to_string())
                .unwrap_or_default();
            let wrong = match k {
                TargetKind::Logs => {
                    !(path.contains("/dataCollectionRules/") && path.contains("/streams/"))
                }
                TargetKind::Loki => !path.ends_with("/loki/api/v1/push"),
                // Records that are not Elasticsearch documents carry no index.
                TargetKind::Elasticsearch => {
                    accept != Some(Accept::Elasticsearch) && path.trim_matches('/').is_empty()
                }
                _ => false,
            };
            if wrong {
                ctx.error(
                    Some(t.span.clone()),
                    &t.what,
                    format!(
                        "the url's path '{path}' is not a {} endpoint (an elasticsearch url names the index records go to); write e.g. url = {}",
                        k.as_str(),
                        url_example(kind)
                    ),
                );
            }
        }
        let key = if t.get("key").is_some() {
            if kind == Some(TargetKind::EventBridge) {
                ctx.error(
                    Some(t.span.clone()),
                    &t.what,
                    "an eventbridge target signs with the AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) environment; remove `key`",
                );
            }
            secret(ctx, &t, "key", env)
        } else {
            let need = match kind {
                Some(TargetKind::EventGrid) => {
                    Some("an Event Grid topic takes events only with its access key")
                }
                // Without a key, georep gets Microsoft Entra tokens itself (client
                // credentials from the AZURE_* environment, checked at start).
                _ => None,
            };
            if let Some(why) = need {
                ctx.error(
                    Some(t.span.clone()),
                    &t.what,
                    format!("missing `key`; {why}: add key = \"${{NAME}}\" and export NAME"),
                );
            }
            None
        };
        let store = t.string(ctx, "store", "\"archive-qc\"");
        if kind == Some(TargetKind::Archive) {
            missing(
                ctx,
                &t,
                "store",
                "add store = \"NAME\", a store declared under [stores.NAME] (in another region)",
            );
        }
        let subject = t.string(ctx, "subject", "\"orders.events\"").and_then(|s| {
            let v = s.get_ref().trim();
            let ok = !v.is_empty()
                && !v.contains(['*', '>', ' '])
                && !v.starts_with('.')
                && !v.ends_with('.')
                && !v.contains("..");
            if !ok {
                ctx.error(
                    Some(s.span()),
                    &t.what,
                    format!("subject '{v}' is not a NATS subject to publish to (tokens separated by dots, no wildcards or spaces); write e.g. subject = \"orders.events\""),
                );
            }
            ok.then(|| v.to_string())
        });
        if kind == Some(TargetKind::Nats) {
            missing(
                ctx,
                &t,
                "subject",
                "add subject = \"SUBJECT\", a subject a JetStream stream takes",
            );
        }
        let bus = t.string(ctx, "bus", "\"orders\"").map(|b| b.into_inner());
        let aws_region = t
            .string(ctx, "aws_region", "\"eu-west-1\"")
            .map(|r| r.into_inner())
            .or_else(|| {
                let host = url::Url::parse(url.as_deref()?)
                    .ok()?
                    .host_str()?
                    .to_string();
                let r = host
                    .strip_prefix("events.")?
                    .strip_suffix(".amazonaws.com")?;
                Some(r.to_string())
            });
        if kind == Some(TargetKind::EventBridge) && url.is_some() && aws_region.is_none() {
            ctx.error(
                Some(t.span.clone()),
                &t.what,
                "the AWS region cannot be read from the url (not events.REGION.amazonaws.com); add aws_region = \"REGION\"",
            );
        }
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
            store,
            subject,
            bus,
            aws_region,
            binary,
        });
    }
    (out, ok)
}

/// An example `url` for a target kind.
fn url_example(kind: Option<TargetKind>) -> &'static str {
    match kind {
        Some(TargetKind::EventBridge) => "\"https://events.eu-west-1.amazonaws.com\"",
        Some(TargetKind::Nats) => "\"nats://10.0.0.5:4222\"",
        Some(TargetKind::Logs) => "\"https://DCE.REGION-1.ingest.monitor.azure.com/dataCollectionRules/dcr-ID/streams/Custom-Table_CL\"",
        Some(TargetKind::Loki) => "\"https://LOKI:3100/loki/api/v1/push\"",
        Some(TargetKind::Elasticsearch) => "\"https://ES:9200/logs-georep\"",
        Some(TargetKind::Webhook) => "\"https://HOST/events\"",
        _ => "\"https://TOPIC.REGION-1.eventgrid.azure.net/api/events\"",
    }
}

/// A `nats://` or `tls://` URL of a NATS server (credentials go in `key`, a token).
fn nats_url(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Option<String> {
    let raw = sec.string(ctx, "url", "\"nats://10.0.0.5:4222\"")?;
    let text = raw.get_ref().trim();
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "nats" | "tls") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                ctx.error(
                    Some(raw.span()),
                    &sec.what,
                    "url holds credentials; put the token in `key = \"${NAME}\"` instead",
                );
                return None;
            }
            Some(text.to_string())
        }
        _ => {
            ctx.error(
                Some(raw.span()),
                &sec.what,
                "url is not a nats:// or tls:// URL; write e.g. url = \"nats://10.0.0.5:4222\"",
            );
            None
        }
    }
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
        for t in &r.targets {
            if let Some(store) = &t.store {
                if !draft.stores.contains_key(store.get_ref()) {
                    ctx.error(
                        Some(store.span()),
                        &t.what,
                        format!(
                            "store '{}' is not declared; declare it under [stores.{}] or fix the name",
                            store.get_ref(),
                            store.get_ref()
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
            claim_listen(ctx, &r.what, addr, server, &mut taken);
        }
    }
}

/// Takes `addr` for `what`, or reports whom it clashes with: the API's address or one
/// already `taken` (a failover group's listeners, a relay's, a concierge's).
pub(super) fn claim_listen(
    ctx: &mut Ctx<'_>,
    what: &str,
    addr: &Spanned<SocketAddr>,
    server: SocketAddr,
    taken: &mut Vec<(SocketAddr, String, usize)>,
) {
    let a = *addr.get_ref();
    if super::failover::clash(a, server) {
        ctx.error(
            Some(addr.span()),
            what,
            format!("listen {a} clashes with the API's [server] listen address {server}; give it another port"),
        );
    } else if let Some((b, other, line)) =
        taken.iter().find(|(b, _, _)| super::failover::clash(a, *b))
    {
        ctx.error(
            Some(addr.span()),
            what,
            format!("listen {a} clashes with {other} {b} (line {line}); every listener needs its own address"),
        );
    } else {
        let line = ctx.line_of(&addr.span());
        taken.push((a, format!("the listen address of {what}"), line));
    }
}
