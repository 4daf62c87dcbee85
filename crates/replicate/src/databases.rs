//! Database geo-replicas inside the daemon: every replica's status is polled (lag, WAL
//! kept, drift) for the API and `/metrics`, RPO breaches are logged as they start and end,
//! and replicas' sequences are pushed ahead of the primary on the configured interval.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use georep_core::Database;
use georep_db::postgres::{self as pg, ReplicaStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// The last status read of one database.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseStatus {
    pub name: String,
    /// The member that is primary now (it changes with failovers).
    pub primary: String,
    pub primary_region: String,
    pub rpo_target_seconds: f64,
    /// When this status was read (RFC 3339).
    pub checked_at: Option<String>,
    /// Why the last read failed (the primary unreachable, ...).
    pub error: Option<String>,
    pub replicas: Vec<ReplicaStatus>,
    pub rpo_breached: bool,
    pub last_sequence_sync: Option<String>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Replica {
    database: String,
    replica: String,
}

type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Gauges for database replicas, registered once.
pub(crate) struct DbMetrics {
    lag_bytes: Family<Replica, Gauge>,
    lag_seconds: Family<Replica, FGauge>,
    wal_kept: Family<Replica, Gauge>,
    up: Family<Replica, Gauge>,
    breached: Family<Replica, Gauge>,
    seq_behind: Family<Replica, Gauge>,
    drift: Family<Replica, Gauge>,
}

impl DbMetrics {
    pub(crate) fn register(m: &Metrics) -> Self {
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
}

/// Polls and syncs one database until `stop`.
pub(crate) async fn run(
    db: Database,
    group: Option<Arc<georep_failover::Group>>,
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
        let db = group
            .as_ref()
            .map(|g| g.current_db())
            .unwrap_or_else(|| db.clone());
        if tokio::time::Instant::now() >= next_seq {
            match pg::sync_sequences(&db, None).await {
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
        let st = match pg::status(&db).await {
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
                        .set((r.state == "streaming") as i64);
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
        if let Ok(mut m) = shared.lock() {
            m.insert(db.name.clone(), st);
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => break,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupLabel {
    group: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MemberLabel {
    group: String,
    member: String,
    region: String,
}

/// Gauges for failover groups.
pub(crate) struct GroupMetrics {
    epoch: Family<GroupLabel, Gauge>,
    healthy: Family<MemberLabel, Gauge>,
    primary: Family<MemberLabel, Gauge>,
    fenced: Family<MemberLabel, Gauge>,
    held: Family<GroupLabel, Gauge>,
    unsettled: Family<GroupLabel, Gauge>,
}

impl GroupMetrics {
    pub(crate) fn register(m: &Metrics) -> Self {
        let g = Self {
            epoch: Default::default(),
            healthy: Default::default(),
            primary: Default::default(),
            fenced: Default::default(),
            held: Default::default(),
            unsettled: Default::default(),
        };
        m.register(
            "failover_epoch",
            "A failover group's current epoch (one per role change)",
            g.epoch.clone(),
        );
        m.register(
            "failover_member_healthy",
            "1 while a member passes its health probes",
            g.healthy.clone(),
        );
        m.register(
            "failover_member_primary",
            "1 for the member the read-write listener routes to",
            g.primary.clone(),
        );
        m.register(
            "failover_member_fenced",
            "1 for a member never routed to again until reseeded",
            g.fenced.clone(),
        );
        m.register(
            "failover_connections_held",
            "1 while a role change holds new connections",
            g.held.clone(),
        );
        m.register(
            "failover_unsettled",
            "1 while a role change interrupted by a crash or an error is being rolled back or finished",
            g.unsettled.clone(),
        );
        g
    }

    pub(crate) fn update(&self, s: &georep_failover::GroupStatus) {
        let gl = GroupLabel {
            group: s.name.clone(),
        };
        self.epoch.get_or_create(&gl).set(s.epoch);
        self.held.get_or_create(&gl).set(s.route.held as i64);
        self.unsettled.get_or_create(&gl).set(s.unsettled as i64);
        for m in &s.members {
            let l = MemberLabel {
                group: s.name.clone(),
                member: m.member.clone(),
                region: m.region.clone(),
            };
            self.healthy.get_or_create(&l).set(m.healthy as i64);
            self.primary
                .get_or_create(&l)
                .set((m.member == s.primary) as i64);
            self.fenced
                .get_or_create(&l)
                .set(s.fenced.contains(&m.member) as i64);
        }
    }
}
