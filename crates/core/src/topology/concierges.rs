//! Reads `[[concierges]]`: an HTTP(S) endpoint that devices ask which MQTT hub to use
//! (the concierge pattern for IoT in regions without a pair), over hubs in several
//! regions whose health it probes, with device identities kept on every hub. Checked
//! field by field, so every bad value is reported.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use toml::de::DeValue;
use toml::Spanned;

use super::read::{kind, valid_name, Ctx, Section, NAME_RULE};
use super::relays::{missing, secret, RelayTls};

const FIELDS: &[&str] = &[
    "name",
    "listen",
    "tls_cert",
    "tls_key",
    "signing_key",
    "hubs",
    "identities",
    "failover_after",
    "failback_after",
    "probe_interval",
    "probe_timeout",
    "ttl",
    "bridge",
    "max_delete",
];
const HUB_FIELDS: &[&str] = &["name", "region", "url", "username", "password"];
const IDENTITY_FIELDS: &[&str] = &["store", "object", "poll"];

/// One MQTT hub (broker) in a region.
#[derive(Clone, PartialEq, Serialize)]
pub struct Hub {
    pub name: String,
    pub region: String,
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    pub url: String,
    /// The account georep probes with and manages identities with (Mosquitto's
    /// dynamic security admin).
    pub username: Option<String>,
    /// Its password, after `${NAME}` expansion. Never serialized.
    #[serde(skip)]
    pub password: Option<String>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Where device identities come from: a JSON object in a store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdentitySource {
    pub store: String,
    pub object: String,
    /// How often the object's properties are read to see whether it changed.
    #[serde(serialize_with = "super::duration")]
    pub poll: Duration,
}

/// A concierge.
#[derive(Clone, PartialEq, Serialize)]
pub struct Concierge {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: Option<RelayTls>,
    /// The Ed25519 seed assignments are signed with (32 bytes), after `${NAME}`
    /// expansion and base64 decoding. Never serialized.
    #[serde(skip)]
    pub signing_key: Vec<u8>,
    /// In order of preference.
    pub hubs: Vec<Hub>,
    pub identities: IdentitySource,
    pub failover_after: u32,
    #[serde(serialize_with = "super::duration")]
    pub failback_after: Duration,
    #[serde(serialize_with = "super::duration")]
    pub probe_interval: Duration,
    #[serde(serialize_with = "super::duration")]
    pub probe_timeout: Duration,
    /// How long a device may keep an assignment before asking again.
    #[serde(serialize_with = "super::duration")]
    pub ttl: Duration,
    /// MQTT topic filters whose messages are carried from every hub to every other.
    pub bridge: Vec<String>,
    /// At most this many (or this share) of the clients georep manages on a hub are
    /// deleted in one pass; more, and nothing is done until the limit is raised.
    #[serde(serialize_with = "super::display")]
    pub max_delete: crate::MaxDelete,
}

impl std::fmt::Debug for Concierge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Concierge")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field("signing_key", &"***")
            .field("hubs", &self.hubs)
            .field("identities", &self.identities)
            .field("failover_after", &self.failover_after)
            .field("failback_after", &self.failback_after)
            .field("probe_interval", &self.probe_interval)
            .field("probe_timeout", &self.probe_timeout)
            .field("ttl", &self.ttl)
            .field("bridge", &self.bridge)
            .field("max_delete", &self.max_delete)
            .finish()
    }
}

impl Concierge {
    pub const DEFAULT_FAILOVER_AFTER: u32 = 3;
    pub const DEFAULT_FAILBACK_AFTER: Duration = Duration::from_secs(60);
    pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);
    pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
    pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
    pub const DEFAULT_MAX_DELETE: crate::MaxDelete = crate::MaxDelete::Percent(50.0);
}

pub(super) struct DraftConcierge {
    pub(super) what: String,
    pub(super) name: Option<Spanned<String>>,
    pub(super) listen: Option<Spanned<SocketAddr>>,
    tls: Option<RelayTls>,
    signing_key: Option<Vec<u8>>,
    hubs: Vec<DraftHub>,
    hubs_ok: bool,
    pub(super) identities: Option<(Spanned<String>, String, Duration)>,
    failover_after: u32,
    failback_after: Duration,
    probe_interval: Duration,
    probe_timeout: Duration,
    ttl: Duration,
    bridge: Vec<String>,
    max_delete: crate::MaxDelete,
}

struct DraftHub {
    what: String,
    name: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    url: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl DraftConcierge {
    pub(super) fn finish(self) -> Option<Concierge> {
        if !self.hubs_ok {
            return None;
        }
        let hubs = self
            .hubs
            .into_iter()
            .map(|h| {
                Some(Hub {
                    name: h.name?.into_inner(),
                    region: h.region?.into_inner(),
                    url: h.url?,
                    username: h.username,
                    password: h.password,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let (store, object, poll) = self.identities?;
        Some(Concierge {
            name: self.name?.into_inner(),
            listen: self.listen?.into_inner(),
            tls: self.tls,
            signing_key: self.signing_key?,
            hubs,
            identities: IdentitySource {
                store: store.into_inner(),
                object,
                poll,
            },
            failover_after: self.failover_after,
            failback_after: self.failback_after,
            probe_interval: self.probe_interval,
            probe_timeout: self.probe_timeout,
            ttl: self.ttl,
            bridge: self.bridge,
            max_delete: self.max_delete,
        })
    }
}

pub(super) fn read(
    ctx: &mut Ctx<'_>,
    top: &Section<'_, '_>,
    base_dir: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<DraftConcierge> {
    super::read::named_tables(ctx, top, "concierges", "concierge", "\"devices\"")
        .into_iter()
        .map(|(sec, name)| concierge(ctx, &sec, name, base_dir, env))
        .collect()
}

fn concierge(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    name: Option<Spanned<String>>,
    base_dir: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> DraftConcierge {
    use base64::Engine as _;
    let what = sec.what.clone();
    sec.check_keys(ctx, "field", FIELDS);
    if let Some(n) = &name {
        if !valid_name(n.get_ref()) {
            ctx.error(
                Some(n.span()),
                &what,
                format!("invalid concierge name: {NAME_RULE}"),
            );
        }
    }
    missing(
        ctx,
        sec,
        "name",
        "add name = \"NAME\" (it names the concierge in the CLI, API and metrics)",
    );
    let listen = super::failover::listener(ctx, sec, "listen", "\"127.0.0.1:7450\"");
    missing(
        ctx,
        sec,
        "listen",
        "add listen = \"IP:PORT\", where devices ask for their hub",
    );
    let tls = super::relays::tls(ctx, sec, base_dir, listen.as_ref());
    let signing_key = secret(ctx, sec, "signing_key", env).and_then(|k| {
        match base64::engine::general_purpose::STANDARD.decode(k.trim()) {
            Ok(seed) if seed.len() == 32 => Some(seed),
            _ => {
                ctx.error(
                    Some(sec.span.clone()),
                    &what,
                    "signing_key is not 32 bytes in base64 (an Ed25519 seed); make one with `openssl rand -base64 32`",
                );
                None
            }
        }
    });
    missing(ctx, sec, "signing_key", "add signing_key = \"${NAME}\" and export NAME = $(openssl rand -base64 32): assignments are signed with it, and devices check the signature");
    let (hubs, hubs_ok) = hubs(ctx, sec, env);
    let identities = identities(ctx, sec);
    let (failover_after, failback_after, probe_interval) = super::relays::hysteresis(
        ctx,
        sec,
        (
            Concierge::DEFAULT_FAILOVER_AFTER,
            Concierge::DEFAULT_FAILBACK_AFTER,
            Concierge::DEFAULT_PROBE_INTERVAL,
        ),
    );
    let dur = |ctx: &mut Ctx<'_>, key: &str, example: &str, min: Duration, default: Duration| {
        super::policies::duration(ctx, sec, key, example, min).unwrap_or(default)
    };
    let probe_timeout = dur(
        ctx,
        "probe_timeout",
        "\"5s\"",
        Duration::from_millis(100),
        Concierge::DEFAULT_PROBE_TIMEOUT,
    );
    let ttl = dur(
        ctx,
        "ttl",
        "\"5m\"",
        Duration::from_secs(5),
        Concierge::DEFAULT_TTL,
    );
    let bridge = bridge_filters(ctx, sec);
    let max_delete =
        super::policies::max_delete(ctx, sec, &what).unwrap_or(Concierge::DEFAULT_MAX_DELETE);
    DraftConcierge {
        what,
        name,
        listen,
        tls,
        signing_key,
        hubs,
        hubs_ok,
        identities,
        failover_after,
        failback_after,
        probe_interval,
        probe_timeout,
        ttl,
        bridge,
        max_delete,
    }
}

/// Why `f` is not an MQTT topic filter georep may bridge, if it is not.
fn bridge_filter_problem(f: &str) -> Option<String> {
    if f.is_empty() || f.len() > 65_535 || f.contains('\0') {
        return Some("a topic filter is 1 to 65,535 bytes without NUL".into());
    }
    if f.starts_with('$') {
        return Some(
            "topics starting with '$' belong to the hub ($SYS, $CONTROL) and are not bridged"
                .into(),
        );
    }
    if f == "#" || f.starts_with("georep/") || f == "georep" || f.starts_with("+/") {
        return Some("the filter would take in georep's own topics (georep/...), which each hub keeps for itself; name the topics to bridge, e.g. \"commands/#\"".into());
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Some("'#' must be a whole level, and the last".into());
        }
        if l.contains('+') && *l != "+" {
            return Some("'+' must be a whole level".into());
        }
    }
    None
}

/// `bridge = ["commands/#", ...]`: filters checked one by one, listed once each.
fn bridge_filters(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Vec<String> {
    let Some(list) = sec.strings(ctx, "bridge", "[\"commands/#\"]") else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for f in list.into_inner() {
        let span = f.span();
        let f = f.into_inner();
        if let Some(p) = bridge_filter_problem(&f) {
            ctx.error(Some(span), &sec.what, format!("bridge filter '{f}': {p}"));
        } else if out.contains(&f) {
            ctx.error(
                Some(span),
                &sec.what,
                format!("bridge filter '{f}' is listed twice"),
            );
        } else {
            out.push(f);
        }
    }
    out
}

/// `identities = { store = "NAME", object = "devices.json" }`.
fn identities(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
) -> Option<(Spanned<String>, String, Duration)> {
    let example = "identities = { store = \"fleet-we\", object = \"devices.json\" }";
    let Some(value) = sec.get("identities") else {
        ctx.error(
            Some(sec.span.clone()),
            &sec.what,
            format!("missing `identities`; add {example}: the devices, their keys and whether they are enabled"),
        );
        return None;
    };
    let what = format!("{} identities", sec.what);
    let t = Section::new(ctx, value, what, "{ store = ..., object = ... }")?;
    t.check_keys(ctx, "field", IDENTITY_FIELDS);
    let store = t.string(ctx, "store", "\"fleet-we\"");
    missing(ctx, &t, "store", &format!("add {example}"));
    let object = t.string(ctx, "object", "\"devices.json\"");
    missing(ctx, &t, "object", &format!("add {example}"));
    let poll = super::policies::duration(ctx, &t, "poll", "\"1s\"", Duration::from_millis(100))
        .unwrap_or(Concierge::DEFAULT_POLL);
    // The store is checked across sections even when `object` is missing.
    Some((
        store?,
        object.map(Spanned::into_inner).unwrap_or_default(),
        poll,
    ))
}

fn hubs(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Vec<DraftHub>, bool) {
    let example = "hubs = [{ name = \"qc\", region = \"qatar-central\", url = \"mqtts://hub-qc.example:8883\", username = \"georep\", password = \"${HUB_QC_PASSWORD}\" }, { name = \"we\", ... }]";
    let Some(value) = sec.get("hubs") else {
        ctx.error(
            Some(sec.span.clone()),
            &sec.what,
            format!("missing `hubs`; add {example}"),
        );
        return (Vec::new(), false);
    };
    let DeValue::Array(items) = value.get_ref() else {
        ctx.error(
            Some(value.span()),
            &sec.what,
            format!(
                "`hubs` must be a list of tables, not {}; write {example}",
                kind(value.get_ref())
            ),
        );
        return (Vec::new(), false);
    };
    if items.len() < 2 {
        ctx.error(
            Some(value.span()),
            &sec.what,
            format!("`hubs` needs at least two hubs (the preferred one first, then where devices go when it fails); write {example}"),
        );
    }
    let mut out = Vec::new();
    let mut ok = items.len() >= 2;
    for (i, item) in items.iter().enumerate() {
        let what = format!("{} hub #{}", sec.what, i + 1);
        let Some(mut h) = Section::new(ctx, item, what, "{ name = ..., region = ..., url = ... }")
        else {
            ok = false;
            continue;
        };
        let name = h.string(ctx, "name", "\"qc\"");
        if let Some(n) = &name {
            h.what = format!("{} hub '{}'", sec.what, n.get_ref());
            if !valid_name(n.get_ref()) {
                ctx.error(
                    Some(n.span()),
                    &h.what,
                    format!("invalid hub name: {NAME_RULE}"),
                );
            }
        }
        h.check_keys(ctx, "field", HUB_FIELDS);
        missing(ctx, &h, "name", "add name = \"NAME\"");
        let region = h.string(ctx, "region", "\"qatar-central\"");
        missing(
            ctx,
            &h,
            "region",
            "add region = \"REGION\", where the hub is",
        );
        let url = h.string(ctx, "url", "\"mqtts://hub-qc.example:8883\"").and_then(|raw| {
            let text = raw.get_ref().trim();
            match url::Url::parse(text) {
                Ok(u) if matches!(u.scheme(), "mqtt" | "mqtts") && u.host_str().is_some() => {
                    if !u.username().is_empty() || u.password().is_some() {
                        ctx.error(
                            Some(raw.span()),
                            &h.what,
                            "url holds credentials; use username = \"...\" and password = \"${NAME}\" instead",
                        );
                        return None;
                    }
                    Some(text.to_string())
                }
                _ => {
                    ctx.error(
                        Some(raw.span()),
                        &h.what,
                        "url is not an mqtt:// or mqtts:// URL; write e.g. url = \"mqtts://hub-qc.example:8883\"",
                    );
                    None
                }
            }
        });
        missing(
            ctx,
            &h,
            "url",
            "add url = \"mqtts://HOST:8883\" (or mqtt://HOST:1883)",
        );
        let username = h
            .string(ctx, "username", "\"georep\"")
            .map(Spanned::into_inner);
        let password = if h.get("password").is_some() {
            secret(ctx, &h, "password", env)
        } else {
            None
        };
        if password.is_some() != username.is_some() {
            ctx.error(
                Some(h.span.clone()),
                &h.what,
                "give username and password together (the account georep probes with and keeps identities with), or neither",
            );
        }
        // The admin password must not cross the network in the clear.
        if password.is_some() {
            if let Some(u) = url.as_deref().and_then(|u| u.strip_prefix("mqtt://")) {
                let host = u.split(['/', '?']).next().unwrap_or_default();
                let host = match host.rsplit_once(':') {
                    Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
                    _ => host,
                };
                let host = host.trim_matches(['[', ']']);
                let loopback = host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    ctx.error(
                        Some(h.span.clone()),
                        &h.what,
                        "the admin password would cross the network in the clear: use mqtts:// (TLS) for a hub off this machine",
                    );
                }
            }
        }
        out.push(DraftHub {
            what: h.what.clone(),
            name,
            region,
            url,
            username,
            password,
        });
    }
    (out, ok)
}

/// Checks across sections: concierge names unique, hub names unique within one, hub
/// regions and the identities store declared, and no listen address taken twice.
pub(super) fn check(ctx: &mut Ctx<'_>, draft: &super::sections::Draft) {
    let mut taken = super::failover::listen_addresses(ctx, &draft.failover_groups);
    for r in &draft.relays {
        if let Some(a) = &r.listen {
            taken.push((
                *a.get_ref(),
                format!("the listen address of {}", r.what),
                ctx.line_of(&a.span()),
            ));
        }
    }
    let server = draft.server.listen;
    let mut names: Vec<&str> = Vec::new();
    for c in &draft.concierges {
        if let Some(n) = &c.name {
            if names.contains(&n.get_ref().as_str()) {
                ctx.error(
                    Some(n.span()),
                    &c.what,
                    format!(
                        "the name '{}' is used by another concierge; names must be unique",
                        n.get_ref()
                    ),
                );
            }
            names.push(n.get_ref());
        }
        let mut seen: Vec<&str> = Vec::new();
        for h in &c.hubs {
            if let Some(n) = &h.name {
                if seen.contains(&n.get_ref().as_str()) {
                    ctx.error(
                        Some(n.span()),
                        &h.what,
                        format!(
                            "the hub name '{}' is used twice in this concierge",
                            n.get_ref()
                        ),
                    );
                }
                seen.push(n.get_ref());
            }
            if let Some(region) = &h.region {
                if !draft.regions.contains_key(region.get_ref()) {
                    ctx.error(
                        Some(region.span()),
                        &h.what,
                        format!(
                            "region '{}' is not declared; add [regions.{}] or fix the name",
                            region.get_ref(),
                            region.get_ref()
                        ),
                    );
                }
            }
        }
        if let Some((store, _, _)) = &c.identities {
            if !draft.stores.contains_key(store.get_ref()) {
                ctx.error(
                    Some(store.span()),
                    &c.what,
                    format!("identities store '{}' is not declared; declare it under [stores.{}] or fix the name", store.get_ref(), store.get_ref()),
                );
            }
        }
        if let Some(addr) = &c.listen {
            super::relays::claim_listen(ctx, &c.what, addr, server, &mut taken);
        }
    }
}
