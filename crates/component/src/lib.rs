//! georep-component: the contract between the daemon and each capability it runs.
//!
//! API boundary: [`Component`] (plan and apply a topology, refresh metrics, shut down),
//! [`Context`] (what every component is built from), [`Error`] with an [`ErrorKind`]
//! that says whose fault a failure is (the HTTP layer maps it to a status, the CLI to an
//! exit code), and [`Metrics`], the one registry `/metrics` encodes.
//!
//! A component starts empty and is brought to a topology by [`Component::apply`]: the
//! first apply starts everything, a reload applies only the difference. One code path
//! for both means every start exercises the reload logic.

use std::any::Any;
use std::sync::{Arc, Mutex};

pub use futures::future::BoxFuture;
pub use georep_api::{Change, ChangeAction};
use georep_core::Topology;
use georep_state::State;

/// Whose fault a failure is; the HTTP status and the CLI's exit code follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request or the configuration is wrong (HTTP 400).
    Invalid,
    /// A named thing does not exist (HTTP 404).
    NotFound,
    /// The request does not fit the current state: refused, nothing changed (HTTP 409).
    Refused,
    /// A member, store or region could not be reached in time (HTTP 503).
    Unavailable,
    /// A store answered with an error (HTTP 502).
    Upstream,
    /// georep itself failed (state store, a bug) (HTTP 500).
    Internal,
}

impl ErrorKind {
    /// The HTTP status for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Invalid => 400,
            Self::NotFound => 404,
            Self::Refused => 409,
            Self::Unavailable => 503,
            Self::Upstream => 502,
            Self::Internal => 500,
        }
    }
}

/// A failure with its kind and its cause. It reads as its cause, and its `source()` is
/// the cause's own, so `{:#}` shows the chain once.
#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.source()
    }
}

impl Error {
    pub fn new(
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            kind,
            source: source.into(),
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, msg.into())
    }

    pub fn refused(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Refused, msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, msg.into())
    }
}

impl From<georep_state::StateError> for Error {
    fn from(e: georep_state::StateError) -> Self {
        Self::new(ErrorKind::Internal, e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The daemon's one metrics registry. Components register their families when they are
/// built; `/metrics` encodes them all.
pub struct Metrics {
    registry: Mutex<prometheus_client::registry::Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            registry: Mutex::new(prometheus_client::registry::Registry::with_prefix("georep")),
        }
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, prometheus_client::registry::Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a metric family (its name gets the `georep_` prefix).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.lock().register(name, help, metric);
    }

    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.lock());
        out
    }
}

/// What every component is built from.
#[derive(Clone)]
pub struct Context {
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
}

/// One capability running in the daemon (object policies, database replicas, failover
/// groups, ...). Built empty by its crate's `new(&Context)`, then brought to a topology
/// by [`Component::apply`].
pub trait Component: Any + Send + Sync {
    /// The topology section it runs (`policies`, `databases`, `failover_groups`), as
    /// plans and reload reports name it.
    fn section(&self) -> &'static str;

    /// What applying `topo` would change: items added, changed (with the fields) or
    /// removed. Items that stay as they are are left out.
    fn plan(&self, topo: &Topology) -> Vec<Change>;

    /// Starts what `topo` adds, restarts what it changes, stops what it removes, and
    /// leaves everything else running untouched. Returns what it did; a change that
    /// failed carries its error and the rest still apply.
    fn apply<'a>(&'a self, topo: &'a Topology) -> BoxFuture<'a, Vec<Change>>;

    /// What would stop `topo` from starting at all (e.g. a listener address another
    /// process holds), checked by the daemon before any component starts anything.
    fn preflight(&self, _topo: &Topology) -> Vec<String> {
        Vec::new()
    }

    /// Brings gauges up to date before `/metrics` is read (and once a second).
    fn refresh(&self) {}

    /// Stops everything it runs; work in flight finishes briefly or is resumed by the
    /// next start.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// Why `wanted` listen addresses (item name, address) cannot be bound now, as
/// preflight reports it; addresses in `held` are already ours (a running item keeps
/// its listener) and are left out.
pub fn unbindable(
    kind: &str,
    wanted: impl IntoIterator<Item = (String, std::net::SocketAddr)>,
    held: &[std::net::SocketAddr],
) -> Vec<String> {
    wanted
        .into_iter()
        .filter(|(_, a)| !held.contains(a))
        .filter_map(|(name, a)| {
            std::net::TcpListener::bind(a).err().map(|e| {
                format!(
                    "{kind} '{name}': cannot listen on {a}: {e}; free the address or change listen"
                )
            })
        })
        .collect()
}

/// The names of `old` and `new` items compared by a key: added, changed (with the
/// fields `fields` reports) and removed, in that order.
pub fn diff<T>(
    section: &str,
    old: &[(String, T)],
    new: &[(String, T)],
    fields: impl Fn(&T, &T) -> Vec<String>,
) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, n) in new {
        match old.iter().find(|(o, _)| o == name) {
            None => out.push(Change::new(section, name, ChangeAction::Add, Vec::new())),
            Some((_, o)) => {
                let f = fields(o, n);
                if !f.is_empty() {
                    out.push(Change::new(section, name, ChangeAction::Change, f));
                }
            }
        }
    }
    for (name, _) in old {
        if !new.iter().any(|(n, _)| n == name) {
            out.push(Change::new(section, name, ChangeAction::Remove, Vec::new()));
        }
    }
    out
}

/// The names of the fields that differ between two values of one type:
/// `changed_fields!(old, new; source, destinations, rpo)`.
#[macro_export]
macro_rules! changed_fields {
    ($old:expr, $new:expr; $($field:ident),+ $(,)?) => {{
        let mut changed: Vec<String> = Vec::new();
        $( if $old.$field != $new.$field { changed.push(stringify!($field).to_string()); } )+
        changed
    }};
}
