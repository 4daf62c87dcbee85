//! [`Databases`], the database-replica component: every replica's status is polled
//! (lag, WAL kept, drift) for the API and `/metrics`, RPO breaches are logged as they
//! start and end, and replicas' sequences are pushed ahead of the primary on the
//! configured interval. After a failover the roles are read from the state store (the
//! epoch the failover group recorded), so the poller follows the primary.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use georep_component::{changed_fields, BoxFuture, Change, ChangeAction, Component, Context};
use georep_core::{Database, Topology};
use georep_db::postgres as pg;
use georep_state::State;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The section of the topology this component runs.
const SECTION: &str = "databases";

pub use georep_api::DatabaseStatus;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Replica {
    database: String,
    replica: String,
}

type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Gauges for database replicas, registered once.
struct DbMetrics {
    lag_bytes: Family<Replica, Gauge>,
    lag_seconds: Family<Replica, FGauge>,
    wal_kept: Family<Replica, Gauge>,
    up: Family<Replica, Gauge>,
    breached: Family<Replica, Gauge>,
    seq_behind: Family<Replica, Gauge>,
    drift: Family<Replica, Gauge>,
}

impl DbMetrics {
    fn register(m: &georep_component::Metrics) -> Self {
        let d = Self {
            lag_bytes: Default::default(),
            lag_seconds: Default::default(),
            wal_kept: Default::default(),
            up: Default::default(),
            breached: Default::default(),
            seq_behind: Default::default(),
            drift: Default::default(),
        };
        m.register(
            "db_replica_lag_bytes",
            "WAL a database replica has not confirmed",
            d.lag_bytes.clone(),
        );
        m.register(
            "db_replica_lag_seconds",
            "Replay lag of a database replica",
            d.lag_seconds.clone(),
        );
        m.register(
            "db_replica_wal_retained_bytes",
            "WAL the primary keeps for a replica's slot",
            d.wal_kept.clone(),
        );
        m.register(
            "db_replica_streaming",
            "1 while a replica is streaming changes",
            d.up.clone(),
        );
        m.register(
            "db_replica_rpo_breached",
            "1 while a replica's lag exceeds the database's RPO (or is unknown)",
            d.breached.clone(),
        );
        m.register(
            "db_replica_sequences_behind",
            "Sequences on a replica behind the primary",
            d.seq_behind.clone(),
        );
        m.register(
            "db_replica_schema_drift",
            "Schema differences between a replica and the primary",
            d.drift.clone(),
        );
        d
    }

    /// Drops a replica's series (its database was removed or changed by a reload).
    fn forget(&self, database: &str, replica: &str) {
        let l = Replica {
            database: database.to_string(),
            replica: replica.to_string(),
        };
        for f in [
            &self.lag_bytes,
            &self.wal_kept,
            &self.up,
            &self.breached,
            &self.seq_behind,
            &self.drift,
        ] {
            f.remove(&l);
        }
        self.lag_seconds.remove(&l);
    }
}

/// One database being polled, with the settings it was started with.
struct Running {
    /// The database and the failover group that moves its primary, if any.
    started: (Database, Option<String>),
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Every database of the topology, polled.
pub struct Databases {
    state: Arc<State>,
    metrics: Arc<DbMetrics>,
    running: RwLock<BTreeMap<String, Arc<Running>>>,
    statuses: Arc<Mutex<BTreeMap<String, DatabaseStatus>>>,
    applying: tokio::sync::Mutex<()>,
}

/// A database with the failover group (if any) that owns it.
fn settings(topo: &Topology, db: &Database) -> (Database, Option<String>) {
    let group = topo
        .failover_groups
        .iter()
        .find(|g| g.database == db.name)
        .map(|g| g.name.clone());
    (db.clone(), group)
}

fn differences(o: &(Database, Option<String>), n: &(Database, Option<String>)) -> Vec<String> {
    let (a, b) = (&o.0, &n.0);
    let mut f = changed_fields!(a, b; engine, primary, replicas, schemas, tables, rpo,
        sequence_margin, sequence_sync_interval);
    if a != b && f.is_empty() {
        f.push("settings".into());
    }
    if o.1 != n.1 {
        f.push("failover_group".into());
    }
    f
}

impl Databases {
    /// Built empty; [`Component::apply`] starts polling the topology's databases.
    pub fn new(ctx: &Context) -> Self {
        Self {
            state: ctx.state.clone(),
            metrics: Arc::new(DbMetrics::register(&ctx.metrics)),
            running: RwLock::new(BTreeMap::new()),
            statuses: Arc::new(Mutex::new(BTreeMap::new())),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    /// The last status read of every database (empty until the first poll).
    pub fn statuses(&self) -> Vec<DatabaseStatus> {
        let running: Vec<String> = self.running().into_iter().map(|(n, _)| n).collect();
        self.statuses
            .lock()
            .map(|m| {
                m.values()
                    .filter(|s| running.contains(&s.name))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One database's last status: `Err` names a database the topology lacks, `Ok(None)`
    /// one not polled yet.
    pub fn status(&self, name: &str) -> georep_component::Result<Option<DatabaseStatus>> {
        let known = self.running.read().is_ok_and(|m| m.contains_key(name));
        if !known {
            return Err(georep_component::Error::not_found(format!(
                "no database named '{name}' in the topology"
            )));
        }
        Ok(self.statuses.lock().ok().and_then(|m| m.get(name).cloned()))
    }

    fn running(&self) -> Vec<(String, Arc<Running>)> {
        self.running
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    async fn stop_one(&self, name: &str, r: &Running) {
        let _ = r.stop.send(true);
        let task = r.task.lock().ok().and_then(|mut t| t.take());
        if let Some(mut t) = task {
            // A poll stuck on a member that does not answer is cut off, so it never
            // writes a status after its database was removed.
            if tokio::time::timeout(Duration::from_secs(15), &mut t)
                .await
                .is_err()
            {
                t.abort();
                let _ = t.await;
            }
        }
        for m in &r.started.0.replicas {
            self.metrics.forget(name, &m.name);
        }
        if let Ok(mut s) = self.statuses.lock() {
            s.remove(name);
        }
    }

    async fn apply_inner(&self, topo: &Topology) -> Vec<Change> {
        let _one = self.applying.lock().await;
        let changes = self.plan(topo);
        for c in &changes {
            if matches!(c.action, ChangeAction::Change | ChangeAction::Remove) {
                let old = self
                    .running
                    .write()
                    .ok()
                    .and_then(|mut m| m.remove(&c.name));
                if let Some(old) = old {
                    self.stop_one(&c.name, &old).await;
                }
            }
        }
        for c in &changes {
            if matches!(c.action, ChangeAction::Add | ChangeAction::Change) {
                let Some(db) = topo.database(&c.name) else {
                    continue;
                };
                let started = settings(topo, db);
                let (stop, rx) = watch::channel(false);
                let task = tokio::spawn(run(
                    started.clone(),
                    self.state.clone(),
                    self.statuses.clone(),
                    self.metrics.clone(),
                    rx,
                ));
                let r = Arc::new(Running {
                    started,
                    stop,
                    task: Mutex::new(Some(task)),
                });
                if let Ok(mut m) = self.running.write() {
                    m.insert(c.name.clone(), r);
                }
            }
        }
        changes
    }
}

impl Component for Databases {
    fn section(&self) -> &'static str {
        SECTION
    }

    fn plan(&self, topo: &Topology) -> Vec<Change> {
        let old: Vec<_> = self
            .running()
            .into_iter()
            .map(|(n, r)| (n, r.started.clone()))
            .collect();
        let new: Vec<_> = topo
            .databases
            .iter()
            .map(|d| (d.name.clone(), settings(topo, d)))
            .collect();
        georep_component::diff(SECTION, &old, &new, differences)
    }

    fn apply<'a>(&'a self, topo: &'a Topology) -> BoxFuture<'a, Vec<Change>> {
        Box::pin(self.apply_inner(topo))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let all: Vec<(String, Arc<Running>)> = self
                .running
                .write()
                .map(|mut m| std::mem::take(&mut *m).into_iter().collect())
                .unwrap_or_default();
            for (_, r) in &all {
                let _ = r.stop.send(true);
            }
            for (n, r) in &all {
                self.stop_one(n, r).await;
            }
        })
    }
}

/// The database with the roles its failover group recorded last (the topology's roles
/// when there is no group or nothing recorded yet).
fn current(db: &Database, group: Option<&str>, state: &State) -> Database {
    match group.map(|g| state.failover(g)) {
        Some(Ok(Some(rec))) => pg::rotated(db, &rec.primary),
        Some(Err(e)) => {
            tracing::warn!(database = %db.name, error = %e, "cannot read the failover group's epoch; polling with the topology's roles");
            db.clone()
        }
        _ => db.clone(),
    }
}

/// Polls and syncs one database until `stop`.
async fn run(
    (db, group): (Database, Option<String>),
    state: Arc<State>,
    shared: Arc<Mutex<BTreeMap<String, DatabaseStatus>>>,
    metrics: Arc<DbMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let poll = db.rpo.min(Duration::from_secs(20)) / 2;
    let poll = poll.max(Duration::from_secs(2));
    let mut next_seq = tokio::time::Instant::now();
    let mut was_breached: BTreeMap<String, bool> = BTreeMap::new();
    let mut last_seq: Option<String> = None;
    loop {
        // After a failover the roles differ from the topology's.
        let db = current(&db, group.as_deref(), &state);
        // AUTO_INCREMENT values travel with MariaDB's rows: no sequences to sync.
        if db.engine == georep_core::DbEngine::Postgres && tokio::time::Instant::now() >= next_seq {
            let synced =
                tokio::time::timeout(Duration::from_secs(60), pg::sync_sequences(&db, None))
                    .await
                    .unwrap_or_else(|_| {
                        Err(georep_db::DbError::Timeout(
                            "the sequence sync did not finish within 60 s".into(),
                        ))
                    });
            match synced {
                Ok(_) => last_seq = Some(chrono::Utc::now().to_rfc3339()),
                Err(e) => {
                    tracing::warn!(database = %db.name, error = %e, "sequence sync failed; retrying at the next interval")
                }
            }
            // Checked: an interval past what the clock holds means "not again".
            let now = tokio::time::Instant::now();
            next_seq = now
                .checked_add(db.sequence_sync_interval)
                .or_else(|| now.checked_add(georep_core::MAX_DURATION))
                .unwrap_or(now);
        }
        let now = chrono::Utc::now().to_rfc3339();
        // A member that accepts a connection and then never answers must not stall
        // the poller: the status reads as failed, and the next poll tries again.
        let limit = Duration::from_secs(30).max(poll * 2);
        let read = tokio::time::timeout(limit, georep_db::engine::status(&db))
            .await
            .unwrap_or_else(|_| {
                Err(georep_db::DbError::Timeout(format!(
                    "the replication status of '{}' was not read within {limit:?}",
                    db.name
                )))
            });
        let st = match read {
            Ok(replicas) => {
                for r in &replicas {
                    let l = Replica {
                        database: db.name.clone(),
                        replica: r.name.clone(),
                    };
                    metrics
                        .lag_bytes
                        .get_or_create(&l)
                        .set(r.lag_bytes.unwrap_or(0));
                    metrics
                        .lag_seconds
                        .get_or_create(&l)
                        .set(r.lag_seconds.unwrap_or(0.0));
                    metrics
                        .wal_kept
                        .get_or_create(&l)
                        .set(r.wal_retained_bytes.unwrap_or(0));
                    metrics
                        .up
                        .get_or_create(&l)
                        .set((r.state == georep_api::ReplicaState::Streaming) as i64);
                    metrics
                        .breached
                        .get_or_create(&l)
                        .set(r.rpo_breached as i64);
                    metrics
                        .seq_behind
                        .get_or_create(&l)
                        .set(r.sequences_behind as i64);
                    metrics
                        .drift
                        .get_or_create(&l)
                        .set(r.schema_drift.len() as i64);
                    let was = was_breached.insert(r.name.clone(), r.rpo_breached);
                    if r.rpo_breached && was != Some(true) {
                        tracing::warn!(database = %db.name, replica = %r.name, state = %r.state, lag_seconds = ?r.lag_seconds, lag_bytes = ?r.lag_bytes, "database replica RPO breached");
                    } else if !r.rpo_breached && was == Some(true) {
                        tracing::info!(database = %db.name, replica = %r.name, "database replica back within its RPO");
                    }
                    if let Some(w) = &r.wal_warning {
                        tracing::warn!(database = %db.name, replica = %r.name, "{w}");
                    }
                }
                DatabaseStatus {
                    name: db.name.clone(),
                    primary: db.primary.name.clone(),
                    primary_region: db.primary.region.clone(),
                    rpo_target_seconds: db.rpo.as_secs_f64(),
                    checked_at: Some(now),
                    error: None,
                    rpo_breached: replicas.iter().any(|r| r.rpo_breached),
                    replicas,
                    last_sequence_sync: last_seq.clone(),
                }
            }
            Err(e) => {
                tracing::warn!(database = %db.name, error = %e, "cannot read the database's replication status");
                DatabaseStatus {
                    name: db.name.clone(),
                    primary: db.primary.name.clone(),
                    primary_region: db.primary.region.clone(),
                    rpo_target_seconds: db.rpo.as_secs_f64(),
                    checked_at: Some(now),
                    error: Some(e.to_string()),
                    replicas: Vec::new(),
                    rpo_breached: true,
                    last_sequence_sync: last_seq.clone(),
                }
            }
        };
        if *stop.borrow() {
            break;
        }
        if let Ok(mut m) = shared.lock() {
            m.insert(db.name.clone(), st);
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => break,
        }
    }
}
