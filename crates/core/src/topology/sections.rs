//! Reads each section of the file into drafts. A draft keeps what was valid and the
//! places of things, so the cross checks can still run (and point at lines) when some
//! fields were wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::databases::DraftDatabase;
use super::failover::DraftGroup;
use super::policies::DraftPolicy;
use super::read::{expand_field, kind, valid_name, Ctx, Section, Span, NAME_RULE};
use super::{
    resolve, Policy, Region, ServerConfig, StateConfig, StoreDef, Topology, DEFAULT_LISTEN,
    DEFAULT_STATE_URL,
};
use crate::StoreUrl;

const SECTIONS: &[&str] = &[
    "state",
    "server",
    "regions",
    "stores",
    "policies",
    "databases",
    "failover_groups",
    "backups",
    "relays",
    "concierges",
    "vaults",
    "secret_syncs",
];
const STATE_FIELDS: &[&str] = &["url"];
const SERVER_FIELDS: &[&str] = &["listen", "token", "events_token"];
const REGION_FIELDS: &[&str] = &["description"];
const STORE_FIELDS: &[&str] = &["region", "url"];

pub(super) struct Draft {
    pub(super) state: StateConfig,
    pub(super) server: ServerConfig,
    pub(super) regions: BTreeMap<String, Region>,
    pub(super) stores: BTreeMap<String, DraftStore>,
    pub(super) policies: Vec<DraftPolicy>,
    pub(super) databases: Vec<DraftDatabase>,
    pub(super) failover_groups: Vec<DraftGroup>,
    pub(super) backups: Vec<super::backups::DraftBackup>,
    pub(super) relays: Vec<super::relays::DraftRelay>,
    pub(super) concierges: Vec<super::concierges::DraftConcierge>,
    pub(super) vaults: BTreeMap<String, super::secrets::DraftVault>,
    pub(super) secret_syncs: Vec<super::secrets::DraftSync>,
}

pub(super) struct DraftStore {
    pub(super) name: String,
    pub(super) region: Option<Spanned<String>>,
    /// `None` when missing or invalid (already reported).
    pub(super) url: Option<StoreUrl>,
    /// Where a local folder really is (links resolved by the caller), for overlap and
    /// cycle checks; `None` when no resolver was given.
    pub(super) real: Option<StoreUrl>,
}

impl Draft {
    /// The validated model; `None` only if a required piece is missing, which has
    /// always been reported as an error by then.
    pub(super) fn finish(self) -> Option<Topology> {
        let mut stores = BTreeMap::new();
        for (name, s) in self.stores {
            let def = StoreDef {
                name: s.name,
                region: s.region?.into_inner(),
                url: s.url?,
            };
            stores.insert(name, def);
        }
        let mut policies = Vec::new();
        for p in self.policies {
            policies.push(Policy {
                name: p.name?.into_inner(),
                source: p.source?.into_inner(),
                destinations: p
                    .destinations
                    .into_iter()
                    .map(Spanned::into_inner)
                    .collect(),
                include: p.include,
                exclude: p.exclude,
                filter: p.filter?,
                since: p.since,
                deletes: p.deletes,
                max_delete: p.max_delete,
                rpo: p.rpo,
                scan_interval: p.scan_interval,
                schedule: p.schedule.clone(),
                transfers: p.transfers,
                follow_symlinks: p.follow_symlinks,
            });
        }
        let databases = self
            .databases
            .into_iter()
            .map(DraftDatabase::finish)
            .collect::<Option<Vec<_>>>()?;
        let failover_groups = self
            .failover_groups
            .into_iter()
            .map(DraftGroup::finish)
            .collect::<Option<Vec<_>>>()?;
        let backups = self
            .backups
            .into_iter()
            .map(super::backups::DraftBackup::finish)
            .collect::<Option<Vec<_>>>()?;
        let relays = self
            .relays
            .into_iter()
            .map(super::relays::DraftRelay::finish)
            .collect::<Option<Vec<_>>>()?;
        let concierges = self
            .concierges
            .into_iter()
            .map(super::concierges::DraftConcierge::finish)
            .collect::<Option<Vec<_>>>()?;
        let mut vaults = BTreeMap::new();
        for (name, v) in self.vaults {
            vaults.insert(name.clone(), v.finish(name)?);
        }
        let secret_syncs = self
            .secret_syncs
            .into_iter()
            .map(super::secrets::DraftSync::finish)
            .collect::<Option<Vec<_>>>()?;
        Some(Topology {
            state: self.state,
            server: self.server,
            regions: self.regions,
            stores,
            policies,
            databases,
            failover_groups,
            backups,
            relays,
            concierges,
            vaults,
            secret_syncs,
        })
    }
}

pub(super) fn read(
    ctx: &mut Ctx<'_>,
    root: &DeTable<'_>,
    span: Span,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Draft {
    let top = Section {
        table: root,
        span,
        what: String::new(),
    };
    top.check_keys(ctx, "section", SECTIONS);
    Draft {
        state: state(ctx, &top, base_dir, env),
        server: server(ctx, &top, env),
        regions: regions(ctx, &top),
        stores: stores(ctx, &top, base_dir, env),
        policies: super::policies::read(ctx, &top),
        databases: super::databases::read(ctx, &top, env),
        failover_groups: super::failover::read(ctx, &top),
        backups: super::backups::read(ctx, &top, env),
        relays: super::relays::read(ctx, &top, base_dir, env),
        concierges: super::concierges::read(ctx, &top, base_dir, env),
        vaults: super::secrets::vaults(ctx, &top, base_dir, env),
        secret_syncs: super::secrets::syncs(ctx, &top),
    }
}

fn state(
    ctx: &mut Ctx<'_>,
    top: &Section<'_, '_>,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> StateConfig {
    let default = || StateConfig {
        url: resolve_state_url(DEFAULT_STATE_URL, base_dir).unwrap_or_default(),
    };
    let Some(value) = top.get("state") else {
        return default();
    };
    let example = "[state]\nurl = \"sqlite://./georep-state/georep.db\"";
    let Some(sec) = Section::new(ctx, value, "[state]".into(), example) else {
        return default();
    };
    sec.check_keys(ctx, "field", STATE_FIELDS);
    let Some(raw) = sec.string(ctx, "url", "\"sqlite://./georep-state/georep.db\"") else {
        return default();
    };
    let Some(url) = expand_field(ctx, &sec.what, "url", &raw, env) else {
        return default();
    };
    match resolve_state_url(&url, base_dir) {
        Ok(url) => StateConfig { url },
        Err(message) => {
            ctx.error(Some(raw.span()), &sec.what, message);
            default()
        }
    }
}

/// Checks the scheme and makes a relative SQLite path absolute.
fn resolve_state_url(url: &str, base_dir: &Path) -> Result<String, String> {
    const HELP: &str = "use sqlite://PATH (embedded, the default) or postgres://USER@HOST/DB (shared by many workers)";
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, format!("?{q}")),
            None => (rest, String::new()),
        };
        if path.is_empty() {
            return Err(format!("url names no database file; {HELP}"));
        }
        let path = resolve(base_dir, Path::new(path));
        return Ok(format!("sqlite://{}{query}", path.display()));
    }
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        return Ok(url.to_string());
    }
    // Echo only the scheme: the rest may hold a password.
    match url.split_once("://") {
        Some((scheme, _)) => Err(format!(
            "unsupported state URL scheme '{scheme}://'; {HELP}"
        )),
        None => Err(format!("url is not a URL; {HELP}")),
    }
}

fn server(
    ctx: &mut Ctx<'_>,
    top: &Section<'_, '_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> ServerConfig {
    let default_listen = || SocketAddr::from(([127, 0, 0, 1], 7607));
    let mut out = ServerConfig {
        listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| default_listen()),
        token: None,
        events_token: None,
    };
    let Some(value) = top.get("server") else {
        return out;
    };
    let example = "[server]\nlisten = \"127.0.0.1:7607\"";
    let Some(sec) = Section::new(ctx, value, "[server]".into(), example) else {
        return out;
    };
    sec.check_keys(ctx, "field", SERVER_FIELDS);
    if let Some(listen) = sec.string(ctx, "listen", "\"127.0.0.1:7607\"") {
        match listen.get_ref().trim().parse::<SocketAddr>() {
            Ok(addr) => out.listen = addr,
            Err(_) => ctx.error(
                Some(listen.span()),
                &sec.what,
                format!(
                    "listen address '{}' is not IP:PORT; write e.g. \"127.0.0.1:7607\", \"0.0.0.0:7607\" or \"[::1]:7607\"",
                    listen.get_ref()
                ),
            ),
        }
    }
    for (field, example) in [
        ("token", "${GEOREP_TOKEN}"),
        ("events_token", "${GEOREP_EVENTS_TOKEN}"),
    ] {
        let Some(raw) = sec.string(ctx, field, &format!("\"{example}\"")) else {
            continue;
        };
        let Some(token) = expand_field(ctx, &sec.what, field, &raw, env) else {
            continue;
        };
        if token.trim().is_empty() {
            ctx.error(
                Some(raw.span()),
                &sec.what,
                format!("{field} is empty; set it to a secret (e.g. {field} = \"{example}\") or remove the line"),
            );
        } else if field == "token" {
            out.token = Some(token);
        } else {
            out.events_token = Some(token);
        }
    }
    if out.token.is_some() && out.token == out.events_token {
        ctx.error(
            Some(sec.span.clone()),
            &sec.what,
            "events_token equals token; give the webhook its own secret, since it travels in the URL given to Event Grid or SNS",
        );
    }
    out
}

/// The entries of a `[NAME.*]` table of tables, each with its name checked.
pub(super) fn named_tables<'a, 'i>(
    ctx: &mut Ctx<'_>,
    top: &Section<'a, 'i>,
    section: &str,
    noun: &str,
    example: &str,
) -> Vec<(Spanned<String>, Option<Section<'a, 'i>>)> {
    let Some(value) = top.get(section) else {
        return Vec::new();
    };
    let DeValue::Table(table) = value.get_ref() else {
        ctx.error(
            Some(value.span()),
            &format!("[{section}]"),
            format!(
                "expected a table of {noun}s, found {}; declare each one as {example}",
                kind(value.get_ref())
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        let what = format!("{noun} '{name}'");
        if !valid_name(name) {
            ctx.error(
                Some(key.span()),
                &what,
                format!("invalid {noun} name: {NAME_RULE}"),
            );
        }
        let sec = Section::new(ctx, value, what, example);
        out.push((Spanned::new(key.span(), name.to_string()), sec));
    }
    out
}

fn regions(ctx: &mut Ctx<'_>, top: &Section<'_, '_>) -> BTreeMap<String, Region> {
    let mut out = BTreeMap::new();
    for (name, sec) in named_tables(ctx, top, "regions", "region", "[regions.NAME]") {
        let mut region = Region { description: None };
        if let Some(sec) = sec {
            sec.check_keys(ctx, "field", REGION_FIELDS);
            region.description = sec
                .string(ctx, "description", "\"Azure Qatar Central\"")
                .map(Spanned::into_inner);
        }
        out.insert(name.into_inner(), region);
    }
    out
}

fn stores(
    ctx: &mut Ctx<'_>,
    top: &Section<'_, '_>,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<String, DraftStore> {
    let example = "[stores.NAME] with region = \"REGION\" and url = \"az://container/prefix\"";
    let mut out = BTreeMap::new();
    for (name, sec) in named_tables(ctx, top, "stores", "store", example) {
        let mut store = DraftStore {
            name: name.get_ref().clone(),
            region: None,
            url: None,
            real: None,
        };
        if let Some(sec) = sec {
            sec.check_keys(ctx, "field", STORE_FIELDS);
            store.region = sec.string(ctx, "region", "\"west-europe\"");
            if store.region.is_none() && sec.get("region").is_none() {
                ctx.error(
                    Some(sec.span.clone()),
                    &sec.what,
                    "missing `region`; add region = \"NAME\" naming one of the [regions.NAME] tables",
                );
            }
            match sec.string(ctx, "url", "\"az://container/prefix\"") {
                Some(raw) => {
                    if let Some(text) = expand_field(ctx, &sec.what, "url", &raw, env) {
                        match StoreUrl::parse(&text) {
                            Ok(StoreUrl::Local { path }) => {
                                store.url = Some(StoreUrl::Local {
                                    path: resolve(base_dir, &path),
                                });
                            }
                            Ok(url) => store.url = Some(url),
                            Err(e) => ctx.error(Some(raw.span()), &sec.what, format!("url: {e}")),
                        }
                    }
                }
                None if sec.get("url").is_none() => ctx.error(
                    Some(sec.span.clone()),
                    &sec.what,
                    "missing `url`; add url = \"...\" (a local path, az://, https://ACCOUNT.blob.core.windows.net/, s3://, gs://)",
                ),
                None => {}
            }
        }
        out.insert(name.into_inner(), store);
    }
    out
}
