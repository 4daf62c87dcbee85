//! The replication daemon: one runtime per policy (scanner, dispatcher, notifications)
//! over one state store, plus the operations the API offers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use georep_core::{StoreUrl, Topology};
use georep_state::State;
use georep_storage::{JobOptions, Mode, Progress};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{ReplicateError, Result};
use crate::events::{self, Parsed};
use crate::metrics::{self, Metrics};
use crate::policy::{PolicyRuntime, Via};
use crate::status::{self, ObjectStatus, PolicyStatus};

/// The running daemon.
pub struct Daemon {
    topo: Topology,
    state: Arc<State>,
    metrics: Arc<Metrics>,
    policies: BTreeMap<String, Arc<PolicyRuntime>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    watchers: Mutex<Vec<notify::RecommendedWatcher>>,
    breached: Mutex<HashMap<(String, String), bool>>,
    databases: Arc<Mutex<BTreeMap<String, crate::databases::DatabaseStatus>>>,
    groups: BTreeMap<String, Arc<georep_failover::Group>>,
    group_metrics: Option<crate::databases::GroupMetrics>,
}

/// What a webhook delivery did.
#[derive(Debug, Clone, Serialize)]
pub struct Ingested {
    /// Changes that named an object of this policy's source.
    pub accepted: usize,
    /// Changes for other containers, buckets or prefixes.
    pub outside: usize,
    /// Events of other types, or malformed.
    pub ignored: usize,
    /// Changes that needed replication and were queued.
    pub queued: usize,
}

pub use georep_api::Resynced;

/// The JSON recorded for a policy, to tell when its configuration changed.
pub fn policy_record(topo: &Topology, p: &georep_core::Policy) -> serde_json::Value {
    let url = |s: &str| topo.store(s).map(|d| d.url.to_string()).unwrap_or_default();
    serde_json::json!({
        "source": { "store": p.source, "url": url(&p.source) },
        "destinations": p.destinations.iter().map(|d| serde_json::json!({"store": d, "url": url(d)})).collect::<Vec<_>>(),
        "include": p.include,
        "exclude": p.exclude,
        "since": p.since.map(|s| s.to_rfc3339()),
        "deletes": format!("{:?}", p.deletes).to_lowercase(),
        "max_delete": p.max_delete.to_string(),
        "rpo": humantime::format_duration(p.rpo).to_string(),
        "scan_interval": humantime::format_duration(p.scan_interval).to_string(),
        "transfers": p.transfers,
    })
}

impl Daemon {
    /// Records the topology's policies and starts replicating. Stores are not contacted
    /// here: an unreachable region shows up as scan and item errors, never stops the
    /// other policies.
    pub async fn start(topo: Topology, state: Arc<State>) -> Result<Arc<Self>> {
        let dropped = state.clear_leases()?;
        if dropped > 0 {
            tracing::info!(items = dropped, "resuming work left by a previous run");
        }
        let metrics = Arc::new(Metrics::default());
        let mut policies = BTreeMap::new();
        for p in &topo.policies {
            let source_url = topo
                .store(&p.source)
                .map(|d| d.url.to_string())
                .unwrap_or_default();
            let dests: Vec<(String, String)> = p
                .destinations
                .iter()
                .map(|d| {
                    let url = topo.store(d).map(|s| s.url.to_string()).unwrap_or_default();
                    (d.clone(), url)
                })
                .collect();
            let change =
                state.upsert_policy(&p.name, &policy_record(&topo, p), &source_url, &dests)?;
            tracing::info!(policy = %p.name, ?change, "policy");
            let created = state
                .policy(&p.name)?
                .map(|r| r.created_at)
                .unwrap_or_else(georep_state::now_ms);
            let rt = PolicyRuntime::new(&topo, p, state.clone(), metrics.clone(), created)?;
            // An operator's pause outlives a restart.
            if let Some(note) = state.policy(&p.name)?.and_then(|r| r.held) {
                tracing::warn!(policy = %p.name, %note, "policy paused by an operator: nothing is copied or deleted until `georep resume`");
                rt.held.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            metrics
                .rpo_target
                .get_or_create(&metrics::pol(&p.name))
                .set(p.rpo.as_secs_f64());
            policies.insert(p.name.clone(), Arc::new(rt));
        }
        let (stop, _) = watch::channel(false);
        let group_metrics = (!topo.failover_groups.is_empty())
            .then(|| crate::databases::GroupMetrics::register(&metrics));
        // Failover groups bind their listeners now: a taken address stops start-up.
        let mut groups = BTreeMap::new();
        for g in &topo.failover_groups {
            let db = topo.database(&g.database).cloned().ok_or_else(|| {
                ReplicateError::Config(format!(
                    "failover group '{}': no database '{}'",
                    g.name, g.database
                ))
            })?;
            let group =
                georep_failover::Group::start(g.clone(), db, state.clone(), stop.subscribe())
                    .await
                    .map_err(|e| ReplicateError::Config(e.to_string()))?;
            groups.insert(g.name.clone(), group);
        }
        let daemon = Arc::new(Self {
            topo,
            state,
            metrics,
            policies,
            stop,
            tasks: Mutex::new(Vec::new()),
            watchers: Mutex::new(Vec::new()),
            breached: Mutex::new(HashMap::new()),
            databases: Arc::new(Mutex::new(BTreeMap::new())),
            group_metrics,
            groups,
        });
        daemon.spawn_all();
        Ok(daemon)
    }

    fn spawn_all(self: &Arc<Self>) {
        let mut tasks = Vec::new();
        for rt in self.policies.values() {
            // Notifications first, so nothing written during the first scan is missed.
            match &self.topo.store(&rt.policy.source).map(|d| &d.url) {
                Some(StoreUrl::Local { .. }) => {
                    let root = rt.src.local_root().map(|p| p.to_path_buf());
                    let started = root
                        .ok_or_else(|| notify::Error::generic("no local root"))
                        .and_then(|r| crate::watch::start(rt.clone(), r, self.stop.subscribe()));
                    let mode = match started {
                        Ok(w) => {
                            if let Ok(mut ws) = self.watchers.lock() {
                                ws.push(w);
                            }
                            "fsnotify".to_string()
                        }
                        Err(e) => {
                            tracing::warn!(policy = rt.name(), error = %e, "filesystem notifications unavailable; relying on scans");
                            format!("scan only (filesystem notifications failed: {e})")
                        }
                    };
                    if let Ok(mut n) = rt.notifications.lock() {
                        *n = mode;
                    }
                }
                _ => {
                    if let Ok(mut n) = rt.notifications.lock() {
                        *n = format!("webhook POST /api/v1/events/{}", rt.name());
                    }
                }
            }
            for (_, dst) in &rt.dests {
                if dst.local_root().is_some() {
                    // Listing a local destination removes temp files left by a killed run.
                    let dst = dst.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut l = dst.list(georep_storage::ListRole::Destination);
                        while let Some(r) = futures::StreamExt::next(&mut l).await {
                            if r.is_err() {
                                break;
                            }
                        }
                    }));
                }
            }
            let (r, mut stop) = (rt.clone(), self.stop.subscribe());
            tasks.push(tokio::spawn(async move {
                loop {
                    let _ = r.scan().await;
                    tokio::select! {
                        _ = tokio::time::sleep(r.policy.scan_interval) => {}
                        _ = r.scan_now.notified() => {}
                        _ = stop.changed() => break,
                    }
                    if *stop.borrow() {
                        break;
                    }
                }
            }));
            tasks.push(tokio::spawn(rt.clone().dispatch(self.stop.subscribe())));
        }
        if !self.topo.databases.is_empty() {
            let dbm = Arc::new(crate::databases::DbMetrics::register(&self.metrics));
            for db in &self.topo.databases {
                let group = self
                    .groups
                    .values()
                    .find(|g| g.cfg.database == db.name)
                    .cloned();
                tasks.push(tokio::spawn(crate::databases::run(
                    db.clone(),
                    group,
                    self.databases.clone(),
                    dbm.clone(),
                    self.stop.subscribe(),
                )));
            }
        }
        let (me, mut stop) = (self.clone(), self.stop.subscribe());
        tasks.push(tokio::spawn(async move {
            loop {
                // Back off when the queue is so large that reading it is costly.
                let t = std::time::Instant::now();
                me.refresh();
                let pause = Duration::from_secs(1).max(t.elapsed() * 20);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => break,
                }
            }
        }));
        if let Ok(mut t) = self.tasks.lock() {
            t.extend(tasks);
        }
    }

    /// Updates the gauges from the state store and logs RPO breaches as they start and end.
    fn refresh(&self) {
        if let Some(gm) = &self.group_metrics {
            for g in self.groups.values() {
                if let Ok(s) = g.status() {
                    gm.update(&s);
                }
            }
        }
        let now = georep_state::now_ms();
        for rt in self.policies.values() {
            let name = rt.name();
            let lag = match self.state.open_lag(name) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(policy = name, error = %e, "cannot read the work queue");
                    continue;
                }
            };
            for d in &rt.policy.destinations {
                let l = lag
                    .iter()
                    .find(|l| &l.dest == d)
                    .cloned()
                    .unwrap_or_default();
                let labels = metrics::dest(name, d);
                let rpo = match l.oldest_change {
                    Some(t) if l.pending > 0 => (now - t).max(0) as f64 / 1000.0,
                    _ => 0.0,
                };
                let breached = rpo > rt.policy.rpo.as_secs_f64();
                self.metrics
                    .pending
                    .get_or_create(&labels)
                    .set(l.pending as i64);
                self.metrics
                    .pending_bytes
                    .get_or_create(&labels)
                    .set(l.pending_bytes as i64);
                self.metrics
                    .failed
                    .get_or_create(&labels)
                    .set(l.failed as i64);
                self.metrics.rpo.get_or_create(&labels).set(rpo);
                self.metrics
                    .rpo_breached
                    .get_or_create(&labels)
                    .set(breached as i64);
                if let Ok(mut b) = self.breached.lock() {
                    let was = b.insert((name.to_string(), d.clone()), breached);
                    if breached && was != Some(true) {
                        tracing::warn!(policy = name, destination = %d, rpo_seconds = rpo, target_seconds = rt.policy.rpo.as_secs_f64(), pending = l.pending, "RPO breached: the oldest unreplicated change is older than the target");
                    } else if !breached && was == Some(true) {
                        tracing::info!(policy = name, destination = %d, "RPO back within target");
                    }
                }
            }
            let paused = self
                .state
                .policy(name)
                .ok()
                .flatten()
                .is_some_and(|r| r.paused.is_some() || r.held.is_some());
            self.metrics
                .paused
                .get_or_create(&metrics::pol(name))
                .set(paused as i64);
        }
    }

    /// The last status read of every database (empty until the first poll).
    pub fn databases(&self) -> Vec<crate::databases::DatabaseStatus> {
        self.databases
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One database's last status; `Err` for a name not in the topology.
    pub fn database(&self, name: &str) -> Result<Option<crate::databases::DatabaseStatus>> {
        if self.topo.database(name).is_none() {
            return Err(ReplicateError::Config(format!(
                "no database named '{name}' in the topology"
            )));
        }
        Ok(self
            .databases
            .lock()
            .ok()
            .and_then(|m| m.get(name).cloned()))
    }

    /// Every failover group's status.
    pub fn failover_groups(&self) -> Result<Vec<georep_failover::GroupStatus>> {
        self.groups
            .values()
            .map(|g| {
                g.status()
                    .map_err(|e| ReplicateError::Config(e.to_string()))
            })
            .collect()
    }

    fn group(&self, name: &str) -> Result<&Arc<georep_failover::Group>> {
        self.groups.get(name).ok_or_else(|| {
            ReplicateError::NotFound(format!("no failover group named '{name}' in the topology"))
        })
    }

    pub fn failover_group(&self, name: &str) -> Result<georep_failover::GroupStatus> {
        self.group(name)?
            .status()
            .map_err(|e| ReplicateError::Config(e.to_string()))
    }

    /// Planned failover of a group to `to` (member name or region; default: a healthy replica).
    pub async fn failover(
        &self,
        name: &str,
        to: Option<&str>,
        force: bool,
    ) -> Result<serde_json::Value> {
        let g = self.group(name)?.clone();
        let r = if force {
            g.force(to, "forced", None).await
        } else {
            g.failover(to).await
        };
        r.map(|r| serde_json::to_value(r).unwrap_or_default())
            .map_err(group_error)
    }

    /// Rebuilds a fenced member of a group as a replica.
    pub async fn reseed(&self, name: &str, member: &str) -> Result<serde_json::Value> {
        let g = self.group(name)?.clone();
        g.reseed(member)
            .await
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .map_err(group_error)
    }

    pub fn has_policy(&self, name: &str) -> bool {
        self.policies.contains_key(name)
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    fn runtime(&self, name: &str) -> Result<&Arc<PolicyRuntime>> {
        self.policies
            .get(name)
            .ok_or_else(|| ReplicateError::UnknownPolicy(name.to_string()))
    }

    pub fn status(&self, name: &str) -> Result<PolicyStatus> {
        let rt = self.runtime(name)?;
        let mut s = status::policy_status(&self.state, &self.topo, &rt.policy, true)?;
        s.notifications = Some(rt.notifications());
        Ok(s)
    }

    pub fn statuses(&self) -> Result<Vec<PolicyStatus>> {
        self.policies.keys().map(|n| self.status(n)).collect()
    }

    pub fn object(&self, name: &str, key: &str) -> Result<ObjectStatus> {
        let rt = self.runtime(name)?;
        status::object_status(&self.state, &rt.policy, key)
    }

    /// Rescans the source, retries every open item now, and compares each destination
    /// with the source, queueing whatever is missing or different there.
    pub async fn resync(&self, name: &str) -> Result<Resynced> {
        let rt = self.runtime(name)?.clone();
        let scan = rt.scan().await?;
        let retried = self.state.retry_now(name)?;
        let mut repaired = 0;
        for (dname, dst) in &rt.dests {
            let opts = JobOptions {
                mode: Mode::Copy,
                dry_run: true,
                filter: rt.policy.filter.clone(),
                ..JobOptions::default()
            };
            let report = georep_storage::run(
                rt.src.clone(),
                dst.clone(),
                opts,
                Arc::new(Progress::default()),
            )
            .await
            .map_err(|e| ReplicateError::Store {
                store: dname.clone(),
                source: e,
            })?;
            let mut batch = Vec::new();
            for p in report.planned.unwrap_or_default() {
                // Only what the policy replicates (the manifest applies `since`).
                if let Some(m) = self.state.manifest_get(name, &p.key)? {
                    batch.push((p.key, m.size));
                    repaired += 1;
                }
                if batch.len() >= 2000 {
                    self.state.enqueue_copies(name, dname, &batch)?;
                    batch.clear();
                }
            }
            self.state.enqueue_copies(name, dname, &batch)?;
        }
        rt.wake.notify_one();
        Ok(Resynced {
            scan,
            retried,
            repaired,
        })
    }

    /// An operator's pause: nothing more is copied or deleted (transfers in flight
    /// finish) until [`Daemon::resume`]; changes are still recorded, so the lag and the
    /// RPO show what waits. Survives restarts. Pausing a paused policy changes nothing.
    pub fn pause(&self, name: &str, note: Option<&str>) -> Result<String> {
        let rt = self.runtime(name)?;
        if let Some(held) = self.state.policy(name)?.and_then(|r| r.held) {
            return Ok(held);
        }
        let note = format!(
            "paused by an operator at {}{}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            note.map(|n| format!(": {}", n.escape_debug()))
                .unwrap_or_default()
        );
        self.state.set_held(name, Some(&note))?;
        rt.held.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::warn!(policy = name, %note, "policy paused: nothing is copied or deleted until `georep resume`");
        Ok(note)
    }

    /// Ends an operator's pause (copies and deletes go on), or, for a policy the
    /// mass-delete guard paused, lets the next pass delete past the guard (the operator
    /// confirmed). Returns what was done.
    pub fn resume(&self, name: &str) -> Result<&'static str> {
        let rt = self.runtime(name)?;
        let rec = self.state.policy(name)?;
        if rec.as_ref().is_some_and(|r| r.held.is_some()) {
            self.state.set_held(name, None)?;
            rt.held.store(false, std::sync::atomic::Ordering::SeqCst);
            rt.wake.notify_one();
            tracing::info!(policy = name, "policy resumed by an operator");
            return Ok("copies and deletes go on from where they stopped");
        }
        if rec.and_then(|r| r.paused).is_none() {
            return Err(ReplicateError::Conflict(format!(
                "policy '{name}' is not paused; there is nothing to resume"
            )));
        }
        self.state.set_allow_mass_delete(name, true)?;
        rt.scan_now.notify_one();
        Ok("the next scan may delete past the mass-delete guard once")
    }

    /// Queues the objects named by a webhook delivery.
    pub async fn ingest(&self, name: &str, parsed: Parsed) -> Result<Ingested> {
        let rt = self.runtime(name)?.clone();
        let Parsed::Changes { changes, ignored } = parsed else {
            return Ok(Ingested {
                accepted: 0,
                outside: 0,
                ignored: 0,
                queued: 0,
            });
        };
        let (container, prefix) = match self.topo.store(&rt.policy.source).map(|d| &d.url) {
            Some(StoreUrl::Azure {
                container, prefix, ..
            }) => (container.clone(), prefix.clone()),
            Some(StoreUrl::S3 { bucket, prefix }) | Some(StoreUrl::Gcs { bucket, prefix }) => {
                (bucket.clone(), prefix.clone())
            }
            Some(StoreUrl::Memory { name, prefix }) => (name.clone(), prefix.clone()),
            _ => {
                return Err(ReplicateError::Config(format!(
                    "policy '{name}' has a local-folder source, which is watched directly; \
                     storage events are for Azure, S3 and GCS sources"
                )))
            }
        };
        let total = changes.len();
        let keys: Vec<(String, Option<i64>)> = changes
            .iter()
            .filter_map(|c| {
                events::relative_key(c, &container, &prefix)
                    .map(|k| (k, c.time.map(|t| t.timestamp_millis())))
            })
            .collect();
        let accepted = keys.len();
        let queued = rt.observe(keys, Via::Webhook).await?;
        Ok(Ingested {
            accepted,
            outside: total - accepted,
            ignored,
            queued,
        })
    }

    /// The metrics in Prometheus text format, with gauges refreshed first.
    pub fn metrics_text(&self) -> String {
        self.refresh();
        self.metrics.encode()
    }

    /// Stops scanning and claiming work, lets transfers in flight finish (briefly), and
    /// returns. Unfinished work is resumed by the next start.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
        if let Ok(mut w) = self.watchers.lock() {
            w.clear();
        }
    }
}

/// A failover-group error as the API reports it: refusals are conflicts, members that
/// cannot be reached (or time out, or fail a statement) make the service unavailable.
fn group_error(e: georep_failover::FailoverError) -> ReplicateError {
    use georep_db::DbError;
    use georep_failover::FailoverError;
    match e {
        FailoverError::Refused(m) => ReplicateError::Conflict(m),
        FailoverError::Db(
            e @ (DbError::Unreachable { .. }
            | DbError::Busy { .. }
            | DbError::Auth { .. }
            | DbError::Timeout(_)
            | DbError::Sql { .. }),
        ) => ReplicateError::Unavailable(e.to_string()),
        e => ReplicateError::Config(e.to_string()),
    }
}
