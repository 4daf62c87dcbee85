//! The topology file (`georep.toml`): regions, stores and replication policies, declared
//! in one file that lives in git.
//!
//! Parsing is pure: the caller reads the file and passes its text, the folder it came
//! from (relative local paths are resolved against it, so the daemon does not depend on
//! its working directory) and an environment lookup for `${NAME}` references. Every
//! problem in the file is reported at once ([`ConfigErrors`]), each with its line, the
//! thing it concerns and the fix. `docs/config.md` documents every field.

mod backups;
mod concierges;
mod databases;
mod error;
mod failover;
mod policies;
mod read;
mod relays;
mod secrets;
mod sections;
mod validate;

#[cfg(test)]
mod backup_tests;
#[cfg(test)]
mod concierge_tests;
#[cfg(test)]
mod database_tests;
#[cfg(test)]
mod failover_tests;
#[cfg(test)]
mod relay_tests;
#[cfg(test)]
mod secret_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::{Filter, MaxDelete, StoreUrl};

pub use backups::{Backup, CalendarSpan, Retention};
pub use concierges::{Concierge, Hub, IdentitySource};
pub use databases::{table_name, Database, DbEngine, DbMember};
pub use error::{ConfigError, ConfigErrors};
pub use failover::{FailoverGroup, FailoverPolicy};
pub use relays::{Accept, Relay, RelayMode, RelayTarget, RelayTls, TargetKind};
pub use secrets::{Escrow, OnDrift, SecretDeletes, SecretSync, Vault};

/// The state database when `[state] url` is not given: an embedded SQLite file beside
/// the topology file.
pub const DEFAULT_STATE_URL: &str = "sqlite://./georep-state/georep.db";
/// Where `georep serve` listens when `[server] listen` is not given: loopback only, so
/// exposing the API is a deliberate choice.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7607";

/// A whole topology file, validated: every name a policy uses is a declared store, every
/// store's and database member's region is declared, and no two policies fight over the
/// same keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    pub state: StateConfig,
    pub server: ServerConfig,
    pub regions: BTreeMap<String, Region>,
    pub stores: BTreeMap<String, StoreDef>,
    /// In file order.
    pub policies: Vec<Policy>,
    /// `[[databases]]`, in file order.
    pub databases: Vec<Database>,
    /// `[[failover_groups]]`, in file order.
    pub failover_groups: Vec<FailoverGroup>,
    /// `[[backups]]`, in file order.
    pub backups: Vec<Backup>,
    /// `[[relays]]`, in file order.
    pub relays: Vec<Relay>,
    /// `[[concierges]]`, in file order.
    pub concierges: Vec<Concierge>,
    /// `[vaults.NAME]`.
    pub vaults: BTreeMap<String, Vault>,
    /// `[[secret_syncs]]`, in file order.
    pub secret_syncs: Vec<SecretSync>,
}

/// Where georep keeps its durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// `sqlite://PATH` (a relative path already resolved against the config folder) or
    /// `postgres://...` exactly as written, after `${NAME}` expansion.
    pub url: String,
}

impl StateConfig {
    /// The database file, when the state is an embedded SQLite file.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let rest = self.url.strip_prefix("sqlite://")?;
        let path = rest.split_once('?').map_or(rest, |(p, _)| p);
        Some(PathBuf::from(path))
    }

    /// The URL with any password replaced by `***`, for output and logs.
    pub fn redacted_url(&self) -> String {
        crate::redact_url(&self.url)
    }
}

/// Serialized redacted: plans and the HTTP API must never show a database password.
impl Serialize for StateConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("StateConfig", 1)?;
        st.serialize_field("url", &self.redacted_url())?;
        st.end()
    }
}

/// The daemon's HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Bearer token the API requires, after `${NAME}` expansion. Never serialized.
    #[serde(skip)]
    pub token: Option<String>,
    /// The token storage-event webhooks present (`?token=` in the URL given to Event
    /// Grid or SNS): good for the webhook only. Never serialized.
    #[serde(skip)]
    pub events_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Region {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A named store: where it is and which region it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreDef {
    pub name: String,
    pub region: String,
    /// Relative local paths are already joined to the config folder.
    #[serde(serialize_with = "display")]
    pub url: StoreUrl,
}

/// What a policy does when an object disappears from its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    /// Destinations keep objects deleted at the source: the safe default for DR.
    #[default]
    Keep,
    /// Destinations delete them too, within the `max_delete` guard.
    Propagate,
}

/// Continuous replication from one source store to one or more destination stores.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub name: String,
    pub source: String,
    pub destinations: Vec<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Compiled from `include` and `exclude`.
    #[serde(skip)]
    pub filter: Filter,
    /// Only objects modified at or after this instant are copied; `None` copies the
    /// objects that already exist too.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub deletes: DeleteMode,
    /// The most of a destination that one pass may delete (mass-delete guard).
    #[serde(serialize_with = "display")]
    pub max_delete: MaxDelete,
    /// The recovery point objective: how stale a destination may get before the policy
    /// is reported as behind.
    #[serde(serialize_with = "duration")]
    pub rpo: Duration,
    /// How often the source is listed in full to find changes.
    #[serde(serialize_with = "duration")]
    pub scan_interval: Duration,
    /// A scheduled policy (`every` or `schedule`): no continuous detection; at each tick
    /// the source is listed and every change is copied (the App Service and NetApp
    /// pattern). `None`: continuous.
    pub schedule: Option<crate::Schedule>,
    /// Objects copied at the same time.
    pub transfers: usize,
    /// A local source's symbolic links are read (when their target stays inside the
    /// source folder) instead of skipped.
    pub follow_symlinks: bool,
}

/// `filter` is left out: it is compiled from `include` and `exclude`.
impl PartialEq for Policy {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name
            && self.source == o.source
            && self.destinations == o.destinations
            && self.include == o.include
            && self.exclude == o.exclude
            && self.since == o.since
            && self.deletes == o.deletes
            && self.max_delete == o.max_delete
            && self.rpo == o.rpo
            && self.scan_interval == o.scan_interval
            && self.schedule == o.schedule
            && self.transfers == o.transfers
            && self.follow_symlinks == o.follow_symlinks
    }
}

impl Policy {
    pub const DEFAULT_MAX_DELETE: MaxDelete = MaxDelete::Percent(10.0);
    pub const DEFAULT_RPO: Duration = Duration::from_secs(15 * 60);
    pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(5 * 60);
    pub const DEFAULT_TRANSFERS: usize = 8;
    pub const MAX_TRANSFERS: usize = 256;
}

impl Topology {
    /// Parses and validates a topology file.
    ///
    /// `base_dir`: the config file's folder; relative local store paths (and a relative
    /// sqlite path in `state.url`) are resolved against it so the daemon does not depend
    /// on its cwd. Pass an absolute folder.
    /// `env`: lookup for `${NAME}` expansion (the CLI passes `std::env::var`).
    pub fn parse(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Topology, ConfigErrors> {
        Self::parse_resolving(text, base_dir, env, &|_| None)
    }

    /// Like [`Topology::parse`], and compares store locations as `resolve` gives them
    /// (the caller resolves symbolic links on disk; this crate does no IO), so a
    /// destination `bk -> data/backup` is seen inside the source `data`.
    pub fn parse_resolving(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        resolve: &dyn Fn(&StoreUrl) -> Option<StoreUrl>,
    ) -> Result<Topology, ConfigErrors> {
        let root = toml::de::DeTable::parse(text).map_err(|e| {
            ConfigErrors(vec![ConfigError::at(
                text,
                e.span(),
                "invalid TOML",
                e.message().to_string(),
            )])
        })?;
        let mut ctx = read::Ctx::new(text);
        let mut draft = sections::read(&mut ctx, root.get_ref(), root.span(), base_dir, env);
        for store in draft.stores.values_mut() {
            store.real = store.url.as_ref().and_then(resolve);
        }
        validate::check(&mut ctx, base_dir, &draft);
        if !ctx.errors.is_empty() {
            return Err(ConfigErrors::sorted(ctx.errors));
        }
        draft.finish().ok_or_else(|| {
            // Unreachable in practice: every missing piece reported an error above.
            ConfigErrors(vec![ConfigError {
                line: None,
                column: None,
                what: String::new(),
                message: "incomplete topology".to_string(),
            }])
        })
    }

    pub fn store(&self, name: &str) -> Option<&StoreDef> {
        self.stores.get(name)
    }

    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    pub fn database(&self, name: &str) -> Option<&Database> {
        self.databases.iter().find(|d| d.name == name)
    }

    pub fn backup(&self, name: &str) -> Option<&Backup> {
        self.backups.iter().find(|b| b.name == name)
    }

    pub fn relay(&self, name: &str) -> Option<&Relay> {
        self.relays.iter().find(|r| r.name == name)
    }

    pub fn concierge(&self, name: &str) -> Option<&Concierge> {
        self.concierges.iter().find(|c| c.name == name)
    }

    pub fn secret_sync(&self, name: &str) -> Option<&SecretSync> {
        self.secret_syncs.iter().find(|s| s.name == name)
    }

    pub fn failover_group(&self, name: &str) -> Option<&FailoverGroup> {
        self.failover_groups.iter().find(|g| g.name == name)
    }
}

fn display<T: std::fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

pub(crate) fn duration<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*value))
}

/// `base/path` with `.` and `..` removed lexically: the folder may not exist yet, so it
/// cannot be canonicalized. A `..` that climbs above a relative base is kept.
fn resolve(base: &Path, path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(path).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}
