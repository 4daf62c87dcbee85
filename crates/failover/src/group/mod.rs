//! One failover group at run time: listeners, health probes, the recorded epoch, and
//! planned failover.
//!
//! This module holds [`Group`], starting it and what every part reads (the current
//! roles, member health, where read-only connections go); the probe loop, planned and
//! forced failover, settling a role change, reseed and status each have a child module.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use georep_core::{Database, FailoverGroup};
use georep_state::State;
use tokio::sync::watch;

use crate::proxy::{self, Kind, Route};
use crate::{FailoverError, Result};

mod failover;
mod forced;
mod probe;
mod reseed;
mod settle;
mod status;

pub use georep_api::{
    FailoverEvent, FailoverKind, FailoverReport, GroupState, GroupStatus, Lag, MemberHealth,
};

pub struct Group {
    pub cfg: FailoverGroup,
    db: Database,
    state: Arc<State>,
    route: watch::Sender<Route>,
    primary: Mutex<String>,
    health: Mutex<BTreeMap<String, MemberHealth>>,
    op: tokio::sync::Mutex<()>,
    last: Mutex<Option<FailoverReport>>,
    fenced: Mutex<BTreeSet<String>>,
    lag: Mutex<BTreeMap<String, Lag>>,
    primary_down_since: Mutex<Option<Instant>>,
    automatic: Mutex<Option<String>>,
    /// A role change was interrupted and is not settled yet: new connections are held.
    unsettled: AtomicBool,
    /// Members whose read-only default matches their role (cleared at each role change).
    fences_set: Mutex<BTreeSet<String>>,
    /// A reload is replacing or removing this group: no role change may start any more
    /// (the group that replaces it reads the recorded epoch when it starts).
    retired: AtomicBool,
    /// The probe loop, awaited when the group is retired.
    probe_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Binds a listener. When `rebinding` (the same group restarted by a reload), an address
/// still held by the listener being closed is tried again for a few seconds; otherwise a
/// taken address fails at once.
async fn bind_when_free(
    addr: std::net::SocketAddr,
    rebinding: bool,
) -> std::io::Result<std::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(addr) {
            Err(e)
                if rebinding
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
}

/// `host:port` of a member's URL, read as connections read it (`host=`/`port=` too).
fn address(db: &Database, url: &str) -> Option<String> {
    db.address(url)
}

impl Group {
    /// Binds the listeners and starts routing by the recorded epoch (the topology's
    /// primary the first time).
    pub async fn start(
        cfg: FailoverGroup,
        db: Database,
        state: Arc<State>,
        stop: watch::Receiver<bool>,
        rebinding: bool,
    ) -> Result<Arc<Self>> {
        let rec = state.failover_init(&cfg.name, &db.primary.name)?;
        let unsettled = rec.state != GroupState::Stable;
        if unsettled {
            tracing::warn!(group = %cfg.name, epoch = rec.epoch, "a role change was interrupted: new connections are held until it is rolled back or finished");
        }
        let current = georep_db::rotated(&db, &rec.primary);
        let route = Route {
            epoch: rec.epoch,
            read_write: address(&current, &current.primary.url),
            read_only: if cfg.read_only_to_primary {
                address(&current, &current.primary.url)
                    .into_iter()
                    .collect()
            } else {
                Vec::new()
            },
            held: unsettled,
        };
        let (tx, _) = watch::channel(route);
        let group = Arc::new(Self {
            cfg: cfg.clone(),
            db,
            state,
            route: tx,
            primary: Mutex::new(rec.primary.clone()),
            health: Mutex::new(BTreeMap::new()),
            op: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
            fenced: Mutex::new(rec.fenced.clone()),
            lag: Mutex::new(BTreeMap::new()),
            primary_down_since: Mutex::new(None),
            automatic: Mutex::new(None),
            unsettled: AtomicBool::new(unsettled),
            fences_set: Mutex::new(BTreeSet::new()),
            retired: AtomicBool::new(false),
            probe_task: Mutex::new(None),
        });
        let mut listeners = vec![(cfg.read_write_listener, Kind::ReadWrite)];
        listeners.extend(cfg.read_only_listener.map(|ro| (ro, Kind::ReadOnly)));
        for (addr, kind) in listeners {
            // A listener already serving stops when the caller drops the stop sender.
            let bound = bind_when_free(addr, rebinding)
                .await
                .map_err(|source| FailoverError::Bind { addr, source })?;
            proxy::spawn(
                bound,
                kind,
                cfg.max_connections as usize,
                group.route.subscribe(),
                stop.clone(),
            )
            .map_err(|source| FailoverError::Bind { addr, source })?;
        }
        let probe = tokio::spawn(group.clone().probe_loop(stop));
        if let Ok(mut t) = group.probe_task.lock() {
            *t = Some(probe);
        }
        Ok(group)
    }

    /// Takes the right to change roles; refused once the group is retired.
    pub(super) async fn op(&self) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        let guard = self.op.lock().await;
        if self.retired.load(Ordering::SeqCst) {
            return Err(FailoverError::Refused(format!(
                "failover group '{}' is being restarted or removed by a reload; ask again once it is back",
                self.cfg.name
            )));
        }
        Ok(guard)
    }

    /// Retires the group for a reload: waits up to `wait` for a role change in progress
    /// to end (false if it did not: the group stays as it is), then lets no new one
    /// start. The caller then stops the listeners and awaits [`Group::join`].
    pub async fn retire(&self, wait: Duration) -> bool {
        let Ok(_guard) = tokio::time::timeout(wait, self.op.lock()).await else {
            return false;
        };
        self.retired.store(true, Ordering::SeqCst);
        true
    }

    /// Waits for the probe loop of a retired group to end (it is stopped if it takes
    /// longer than a few seconds), so nothing of it acts after the group is replaced.
    pub async fn join(&self) {
        let task = self.probe_task.lock().ok().and_then(|mut t| t.take());
        if let Some(mut t) = task {
            if tokio::time::timeout(Duration::from_secs(10), &mut t)
                .await
                .is_err()
            {
                t.abort();
                let _ = t.await;
            }
        }
    }

    /// The database with the current roles.
    pub(crate) fn current_db(&self) -> Database {
        let p = self.primary.lock().map(|p| p.clone()).unwrap_or_default();
        georep_db::rotated(&self.db, &p)
    }

    fn healthy(&self, name: &str) -> bool {
        let fenced = self.fenced.lock().map(|f| f.contains(name)).unwrap_or(true);
        !fenced
            && self
                .health
                .lock()
                .ok()
                .and_then(|h| h.get(name).map(|m| m.healthy))
                .unwrap_or(false)
    }

    /// Points the read-only listener at [`Self::read_only_targets`].
    fn update_read_only(&self) {
        let ro = self.read_only_targets();
        self.route.send_if_modified(|r| {
            if r.read_only != ro {
                r.read_only = ro.clone();
                true
            } else {
                false
            }
        });
    }

    /// The healthy replicas whose last known lag is within the database's RPO; failing
    /// that, every healthy replica; failing that, the primary if allowed.
    fn read_only_targets(&self) -> Vec<String> {
        let db = self.current_db();
        let lags = self.lag.lock().map(|l| l.clone()).unwrap_or_default();
        let rpo = db.rpo.as_secs_f64();
        let fresh = |name: &str| {
            lags.get(name)
                .and_then(|l| l.seconds)
                .is_some_and(|s| s <= rpo)
        };
        let healthy: Vec<_> = db
            .replicas
            .iter()
            .filter(|r| self.healthy(&r.name))
            .collect();
        let within: Vec<_> = healthy.iter().filter(|r| fresh(&r.name)).collect();
        let mut ro: Vec<String> = if within.is_empty() {
            healthy
                .iter()
                .filter_map(|r| address(&db, &r.url))
                .collect()
        } else {
            within.iter().filter_map(|r| address(&db, &r.url)).collect()
        };
        if ro.is_empty() && self.cfg.read_only_to_primary {
            ro.extend(address(&db, &db.primary.url));
        }
        ro
    }
}
