//! `[[failover_groups]]`: a listener pair in front of one `[[databases]]` entry that
//! routes clients to its primary (and read-only clients to its replicas), and when to
//! fail over. The model, and reading it field by field like the other sections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use toml::de::DeValue;
use toml::Spanned;

use super::databases::DraftDatabase;
use super::policies::duration;
use super::read::{kind, valid_name, Ctx, Section, Span, NAME_RULE};

/// Client listeners for one database, and the failover rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailoverGroup {
    pub name: String,
    /// The `[[databases]]` entry it fronts; at most one group per database.
    pub database: String,
    /// Clients connecting here reach the current primary.
    pub read_write_listener: SocketAddr,
    /// Clients connecting here reach a healthy replica.
    pub read_only_listener: Option<SocketAddr>,
    /// Route read-only clients to the primary when no replica is healthy.
    pub read_only_to_primary: bool,
    pub policy: FailoverPolicy,
    /// How long the primary must be unreachable before an automatic failover.
    #[serde(serialize_with = "super::duration")]
    pub grace_period: Duration,
    /// Automatic failover happens only while the last known lag is within this.
    #[serde(serialize_with = "super::duration")]
    pub max_data_loss: Duration,
    #[serde(serialize_with = "super::duration")]
    pub probe_interval: Duration,
    #[serde(serialize_with = "super::duration")]
    pub probe_timeout: Duration,
    /// Probes failed in a row before a member counts as down (`1..=100`).
    pub probe_failures: u32,
    /// Client connections each listener carries at once; beyond it new ones are closed
    /// at once, so a flood cannot take the file descriptors the API and probes need.
    pub max_connections: u32,
}

impl FailoverGroup {
    pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
    pub const MIN_GRACE_PERIOD: Duration = Duration::from_secs(1);
    pub const DEFAULT_MAX_DATA_LOSS: Duration = Duration::ZERO;
    pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
    pub const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(100);
    pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
    pub const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(100);
    pub const DEFAULT_PROBE_FAILURES: u32 = 3;
    pub const MAX_PROBE_FAILURES: u32 = 100;
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 1000;
    pub const MAX_MAX_CONNECTIONS: u32 = 1_000_000;
}

/// Who decides to fail over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverPolicy {
    /// Only an operator fails over (the default).
    #[default]
    Manual,
    /// georep fails over after `grace_period`, within `max_data_loss`.
    Automatic,
}

impl FailoverPolicy {
    /// The word used for it in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverPolicy::Manual => "manual",
            FailoverPolicy::Automatic => "automatic",
        }
    }
}

impl std::fmt::Display for FailoverPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const GROUP_FIELDS: &[&str] = &[
    "name",
    "database",
    "read_write_listener",
    "read_only_listener",
    "read_only_to_primary",
    "policy",
    "grace_period",
    "max_data_loss",
    "probe_interval",
    "probe_timeout",
    "probe_failures",
    "max_connections",
];

pub(super) struct DraftGroup {
    what: String,
    span: Span,
    name: Option<Spanned<String>>,
    database: Option<Spanned<String>>,
    read_write_listener: Option<Spanned<SocketAddr>>,
    read_only_listener: Option<Spanned<SocketAddr>>,
    read_only_to_primary: bool,
    policy: FailoverPolicy,
    grace_period: Duration,
    max_data_loss: Duration,
    probe_interval: Duration,
    probe_timeout: Duration,
    probe_failures: u32,
    max_connections: u32,
}

impl DraftGroup {
    /// `None` only when a required piece is missing, which has been reported.
    pub(super) fn finish(self) -> Option<FailoverGroup> {
        Some(FailoverGroup {
            name: self.name?.into_inner(),
            database: self.database?.into_inner(),
            read_write_listener: self.read_write_listener?.into_inner(),
            read_only_listener: self.read_only_listener.map(Spanned::into_inner),
            read_only_to_primary: self.read_only_to_primary,
            policy: self.policy,
            grace_period: self.grace_period,
            max_data_loss: self.max_data_loss,
            probe_interval: self.probe_interval,
            probe_timeout: self.probe_timeout,
            probe_failures: self.probe_failures,
            max_connections: self.max_connections,
        })
    }
}

pub(super) fn read(ctx: &mut Ctx<'_>, top: &Section<'_, '_>) -> Vec<DraftGroup> {
    let Some(value) = top.get("failover_groups") else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        ctx.error(
            Some(value.span()),
            "[[failover_groups]]",
            format!(
                "expected a list of failover groups, found {}; write each group as a [[failover_groups]] table (double brackets)",
                kind(value.get_ref())
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("failover group #{}", i + 1);
        if let Some(mut sec) = Section::new(ctx, item, what, "[[failover_groups]]") {
            let name = sec.string(ctx, "name", "\"orders-fg\"");
            if let Some(name) = &name {
                sec.what = format!("failover group '{}'", name.get_ref());
            }
            out.push(group(ctx, &sec, name));
        }
    }
    out
}

fn group(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, name: Option<Spanned<String>>) -> DraftGroup {
    let what = sec.what.clone();
    sec.check_keys(ctx, "field", GROUP_FIELDS);
    match &name {
        Some(n) if !valid_name(n.get_ref()) => ctx.error(
            Some(n.span()),
            &what,
            format!("invalid failover group name: {NAME_RULE}"),
        ),
        Some(_) => {}
        None if sec.get("name").is_none() => ctx.error(
            Some(sec.span.clone()),
            &what,
            "missing `name`; add name = \"NAME\" (it names the failover group in the CLI, API and metrics)",
        ),
        None => {}
    }
    let database = sec.string(ctx, "database", "\"orders\"");
    if database.is_none() && sec.get("database").is_none() {
        ctx.error(
            Some(sec.span.clone()),
            &what,
            "missing `database`; add database = \"NAME\" naming one of the [[databases]] entries",
        );
    }
    let read_write_listener = listener(ctx, sec, "read_write_listener", "\"127.0.0.1:6432\"");
    if read_write_listener.is_none() && sec.get("read_write_listener").is_none() {
        ctx.error(
            Some(sec.span.clone()),
            &what,
            "missing `read_write_listener`; add read_write_listener = \"IP:PORT\" (where clients connect to reach the primary)",
        );
    }
    let read_only_listener = listener(ctx, sec, "read_only_listener", "\"127.0.0.1:6433\"");
    let mut g = DraftGroup {
        what: what.clone(),
        span: sec.span.clone(),
        name,
        database,
        read_write_listener,
        read_only_listener,
        read_only_to_primary: false,
        policy: FailoverPolicy::default(),
        grace_period: FailoverGroup::DEFAULT_GRACE_PERIOD,
        max_data_loss: FailoverGroup::DEFAULT_MAX_DATA_LOSS,
        probe_interval: FailoverGroup::DEFAULT_PROBE_INTERVAL,
        probe_timeout: FailoverGroup::DEFAULT_PROBE_TIMEOUT,
        probe_failures: FailoverGroup::DEFAULT_PROBE_FAILURES,
        max_connections: FailoverGroup::DEFAULT_MAX_CONNECTIONS,
    };
    if let Some(value) = sec.get("read_only_to_primary") {
        match value.get_ref() {
            DeValue::Boolean(b) => {
                g.read_only_to_primary = *b;
                if *b && sec.get("read_only_listener").is_none() {
                    ctx.error(
                        Some(value.span()),
                        &what,
                        "read_only_to_primary = true has no effect without a read_only_listener; add read_only_listener = \"IP:PORT\" or remove the line",
                    );
                }
            }
            other => ctx.error(
                Some(value.span()),
                &what,
                format!(
                    "`read_only_to_primary` must be true or false, not {}",
                    kind(other)
                ),
            ),
        }
    }
    if let Some(policy) = sec.string(ctx, "policy", "\"manual\"") {
        match policy.get_ref().as_str() {
            "manual" => g.policy = FailoverPolicy::Manual,
            "automatic" => g.policy = FailoverPolicy::Automatic,
            other => ctx.error(
                Some(policy.span()),
                &what,
                format!("policy = \"{other}\" is not a failover policy; use \"manual\" (the default) or \"automatic\""),
            ),
        }
    }
    let min = FailoverGroup::MIN_GRACE_PERIOD;
    if let Some(d) = duration(ctx, sec, "grace_period", "\"30s\"", min) {
        g.grace_period = d;
    }
    if let Some(d) = duration(ctx, sec, "max_data_loss", "\"5s\"", Duration::ZERO) {
        g.max_data_loss = d;
    }
    let min = FailoverGroup::MIN_PROBE_INTERVAL;
    if let Some(d) = duration(ctx, sec, "probe_interval", "\"1s\"", min) {
        g.probe_interval = d;
    }
    let min = FailoverGroup::MIN_PROBE_TIMEOUT;
    if let Some(d) = duration(ctx, sec, "probe_timeout", "\"2s\"", min) {
        g.probe_timeout = d;
    }
    if let Some(n) = sec.integer(ctx, "probe_failures", "3") {
        match u32::try_from(*n.get_ref()) {
            Ok(f) if (1..=FailoverGroup::MAX_PROBE_FAILURES).contains(&f) => g.probe_failures = f,
            _ => ctx.error(
                Some(n.span()),
                &what,
                format!(
                    "probe_failures = {} is out of range; use 1 to {} (default {})",
                    n.get_ref(),
                    FailoverGroup::MAX_PROBE_FAILURES,
                    FailoverGroup::DEFAULT_PROBE_FAILURES
                ),
            ),
        }
    }
    if let Some(n) = sec.integer(ctx, "max_connections", "1000") {
        match u32::try_from(*n.get_ref()) {
            Ok(m) if (1..=FailoverGroup::MAX_MAX_CONNECTIONS).contains(&m) => g.max_connections = m,
            _ => ctx.error(
                Some(n.span()),
                &what,
                format!(
                    "max_connections = {} is out of range; use 1 to {} (default {})",
                    n.get_ref(),
                    FailoverGroup::MAX_MAX_CONNECTIONS,
                    FailoverGroup::DEFAULT_MAX_CONNECTIONS
                ),
            ),
        }
    }
    g
}

/// An `IP:PORT` listen address with a fixed port.
pub(super) fn listener(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    key: &str,
    example: &str,
) -> Option<Spanned<SocketAddr>> {
    let raw = sec.string(ctx, key, example)?;
    match raw.get_ref().trim().parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => {
            ctx.error(
                Some(raw.span()),
                &sec.what,
                format!(
                    "{key} '{}' has port 0; clients need a fixed port, e.g. {key} = {example}",
                    raw.get_ref()
                ),
            );
            None
        }
        Ok(addr) => Some(Spanned::new(raw.span(), addr)),
        Err(_) => {
            ctx.error(
                Some(raw.span()),
                &sec.what,
                format!(
                    "{key} '{}' is not IP:PORT; write e.g. {key} = {example}, \"0.0.0.0:6432\" or \"[::1]:6432\"",
                    raw.get_ref()
                ),
            );
            None
        }
    }
}

/// Two listen addresses clash when one socket could not bind after the other: the same
/// port on the same IP, or on any IP when one of them is the unspecified address.
pub(super) fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Every group listener with what it is and its line, for other sections' clash checks.
pub(super) fn listen_addresses(
    ctx: &Ctx<'_>,
    groups: &[DraftGroup],
) -> Vec<(SocketAddr, String, usize)> {
    let mut out = Vec::new();
    for g in groups {
        for (key, addr) in [
            ("read_write_listener", &g.read_write_listener),
            ("read_only_listener", &g.read_only_listener),
        ] {
            if let Some(addr) = addr {
                out.push((
                    *addr.get_ref(),
                    format!("the {key} of {}", g.what),
                    ctx.line_of(&addr.span()),
                ));
            }
        }
    }
    out
}

/// Checks across sections: names are unique, each group names a declared database and
/// no database has two groups, and no two listeners (nor the API's) share an address.
pub(super) fn check(
    ctx: &mut Ctx<'_>,
    server_listen: SocketAddr,
    databases: &[DraftDatabase],
    groups: &[DraftGroup],
) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut fronted: HashMap<&str, (&str, usize)> = HashMap::new();
    for g in groups {
        if let Some(name) = &g.name {
            match names.get(name.get_ref().as_str()) {
                Some(line) => ctx.error(
                    Some(name.span()),
                    &g.what,
                    format!(
                        "the name '{}' is already used by the failover group at line {line}; failover group names must be unique",
                        name.get_ref()
                    ),
                ),
                None => {
                    let line = ctx.line_of(&g.span);
                    names.insert(name.get_ref(), line);
                }
            }
        }
        let Some(db) = &g.database else { continue };
        let d = db.get_ref().as_str();
        if !databases.iter().any(|x| x.name() == Some(d)) {
            ctx.error(
                Some(db.span()),
                &g.what,
                format!("database '{d}' is not declared; add a [[databases]] entry with name = \"{d}\" or fix the name"),
            );
        } else if let Some((other, line)) = fronted.get(d) {
            ctx.error(
                Some(db.span()),
                &g.what,
                format!("database '{d}' already has the failover group '{other}' (line {line}); a database has at most one failover group"),
            );
        } else {
            let name = g.name.as_ref().map_or("?", |n| n.get_ref().as_str());
            let line = ctx.line_of(&g.span);
            fronted.insert(d, (name, line));
            for x in databases.iter().filter(|x| x.name() == Some(d)) {
                for (member, span, why) in x.unroutable_members() {
                    ctx.error(
                        Some(span),
                        member,
                        format!("in the failover group '{name}': {why}"),
                    );
                }
            }
        }
    }
    let mut seen: Vec<(SocketAddr, String, usize)> = Vec::new();
    for g in groups {
        let listeners = [
            ("read_write_listener", &g.read_write_listener),
            ("read_only_listener", &g.read_only_listener),
        ];
        for (key, addr) in listeners {
            let Some(addr) = addr else { continue };
            let a = *addr.get_ref();
            if clash(a, server_listen) {
                ctx.error(
                    Some(addr.span()),
                    &g.what,
                    format!("{key} {a} clashes with the API's [server] listen address {server_listen}; give it another port"),
                );
            } else if let Some((b, other, line)) = seen.iter().find(|(b, _, _)| clash(a, *b)) {
                ctx.error(
                    Some(addr.span()),
                    &g.what,
                    format!("{key} {a} clashes with {other} {b} (line {line}); every listener needs its own address"),
                );
            } else {
                let line = ctx.line_of(&addr.span());
                seen.push((a, format!("the {} of {}", key, g.what), line));
            }
        }
    }
}
