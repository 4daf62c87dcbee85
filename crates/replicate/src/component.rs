//! [`Policies`], the object-replication component: one runtime per policy (scanner,
//! dispatcher, notifications) over the daemon's state store, brought to each topology
//! the daemon applies, plus the operations the API offers on policies.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use georep_component::{changed_fields, BoxFuture, Change, ChangeAction, Component, Context};
use georep_core::{Policy, StoreDef, StoreUrl, Topology};
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

/// The section of the topology this component runs.
const SECTION: &str = "policies";

/// One running policy: its runtime, its tasks and the settings it was started with.
struct Running {
    rt: Arc<PolicyRuntime>,
    /// The topology it was started from (its stores' names, regions and URLs).
    topo: Arc<Topology>,
    /// The policy and the stores it names, as started: a reload that changes either
    /// restarts the policy.
    started: (Policy, Vec<StoreDef>),
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

/// Every policy of the topology, replicating.
pub struct Policies {
    state: Arc<State>,
    metrics: Arc<Metrics>,
    running: RwLock<BTreeMap<String, Arc<Running>>>,
    /// One apply at a time.
    applying: tokio::sync::Mutex<()>,
    breached: Mutex<HashMap<(String, String), bool>>,
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

/// A policy and the definitions of the stores it names, for comparing two topologies.
fn settings(topo: &Topology, p: &Policy) -> (Policy, Vec<StoreDef>) {
    let stores = std::iter::once(&p.source)
        .chain(&p.destinations)
        .filter_map(|s| topo.store(s).cloned())
        .collect();
    (p.clone(), stores)
}

/// The settings that differ between two starts of a policy.
fn differences(old: &(Policy, Vec<StoreDef>), new: &(Policy, Vec<StoreDef>)) -> Vec<String> {
    let (o, n) = (&old.0, &new.0);
    let mut f = changed_fields!(o, n; source, destinations, include, exclude, since, deletes,
        max_delete, rpo, scan_interval, schedule, transfers, follow_symlinks);
    if old.1 != new.1 {
        f.push("stores".into());
    }
    f
}

impl Policies {
    /// Built empty; [`Component::apply`] starts the topology's policies. Work left
    /// leased by a previous run (killed mid-transfer) is released first.
    pub fn new(ctx: &Context) -> Result<Self> {
        let dropped = ctx.state.clear_leases()?;
        if dropped > 0 {
            tracing::info!(items = dropped, "resuming work left by a previous run");
        }
        Ok(Self {
            state: ctx.state.clone(),
            metrics: Arc::new(Metrics::register(&ctx.metrics)),
            running: RwLock::new(BTreeMap::new()),
            applying: tokio::sync::Mutex::new(()),
            breached: Mutex::new(HashMap::new()),
        })
    }

    fn entry(&self, name: &str) -> Result<Arc<Running>> {
        self.running
            .read()
            .ok()
            .and_then(|m| m.get(name).cloned())
            .ok_or_else(|| ReplicateError::UnknownPolicy(name.to_string()))
    }

    fn running(&self) -> Vec<Arc<Running>> {
        self.running
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn runtime(&self, name: &str) -> Result<Arc<PolicyRuntime>> {
        self.running
            .read()
            .ok()
            .and_then(|m| m.get(name).map(|r| r.rt.clone()))
            .ok_or_else(|| ReplicateError::UnknownPolicy(name.to_string()))
    }

    /// Builds a policy's runtime (its stores opened from their URLs and the
    /// environment) without recording or starting anything, so a policy that cannot be
    /// built leaves what runs now as it is. Stores are not contacted here: an unreachable
    /// region shows up as scan and item errors, never stops the others.
    fn prepare(&self, topo: &Topology, p: &Policy) -> Result<Arc<PolicyRuntime>> {
        let created = self
            .state
            .policy(&p.name)?
            .map(|r| r.created_at)
            .unwrap_or_else(georep_state::now_ms);
        Ok(Arc::new(PolicyRuntime::new(
            topo,
            p,
            self.state.clone(),
            self.metrics.clone(),
            created,
        )?))
    }

    /// Records a prepared policy (backfilling added destinations) and starts its
    /// notifications, scanner and dispatcher.
    async fn launch(
        &self,
        topo: &Arc<Topology>,
        p: &Policy,
        rt: Arc<PolicyRuntime>,
    ) -> Result<Arc<Running>> {
        let state = &self.state;
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
        let change = state.upsert_policy(&p.name, &policy_record(topo, p), &source_url, &dests)?;
        tracing::info!(policy = %p.name, ?change, "policy");
        // An operator's pause outlives a restart.
        if let Some(note) = state.policy(&p.name)?.and_then(|r| r.held) {
            tracing::warn!(policy = %p.name, %note, "policy paused by an operator: nothing is copied or deleted until `georep resume`");
            rt.held.store(true, Ordering::SeqCst);
        }
        self.metrics
            .rpo_target
            .get_or_create(&metrics::pol(&p.name))
            .set(p.rpo.as_secs_f64());
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut watcher = None;
        // Notifications first, so nothing written during the first scan is missed.
        let mode = match topo.store(&p.source).map(|d| &d.url) {
            // A scheduled policy detects changes only at its ticks.
            _ if p.schedule.is_some() => format!(
                "none: scheduled ({}), the source is listed and synced at each tick",
                p.schedule
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
            Some(StoreUrl::Local { .. }) => {
                // A recursive watch walks the whole tree: off the async workers.
                let (w_rt, w_stop) = (rt.clone(), stop.subscribe());
                let started = tokio::task::spawn_blocking(move || {
                    w_rt.src
                        .local_root()
                        .map(|p| p.to_path_buf())
                        .ok_or_else(|| notify::Error::generic("no local root"))
                        .and_then(|r| crate::watch::start(w_rt.clone(), r, w_stop))
                })
                .await
                .unwrap_or_else(|e| Err(notify::Error::generic(&e.to_string())));
                match started {
                    Ok(w) => {
                        watcher = Some(w);
                        "fsnotify".to_string()
                    }
                    Err(e) => {
                        tracing::warn!(policy = rt.name(), error = %e, "filesystem notifications unavailable; relying on scans");
                        format!("scan only (filesystem notifications failed: {e})")
                    }
                }
            }
            _ => format!(
                "webhook POST {}",
                georep_api::paths::fill(georep_api::paths::EVENTS, rt.name())
            ),
        };
        if let Ok(mut n) = rt.notifications.lock() {
            *n = mode;
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
        let (r, mut stopped) = (rt.clone(), stop.subscribe());
        tasks.push(tokio::spawn(async move {
            match r.policy.schedule.clone() {
                Some(schedule) => scheduled(r, schedule, stopped).await,
                None => loop {
                    let _ = r.scan().await;
                    tokio::select! {
                        _ = tokio::time::sleep(r.policy.scan_interval) => {}
                        _ = r.scan_now.notified() => {}
                        _ = stopped.changed() => break,
                    }
                    if *stopped.borrow() {
                        break;
                    }
                },
            }
        }));
        tasks.push(tokio::spawn(rt.clone().dispatch(stop.subscribe())));
        Ok(Arc::new(Running {
            rt,
            topo: topo.clone(),
            started: settings(topo, p),
            stop,
            tasks: Mutex::new(tasks),
            watcher: Mutex::new(watcher),
        }))
    }

    /// Stops a policy's scanner, notifications and dispatcher (transfers in flight
    /// finish briefly; anything still running after that is aborted, so nothing of it
    /// acts later), releases its leases, and drops its per-destination series.
    async fn stop_one(&self, r: &Running) {
        r.rt.stopping.store(true, Ordering::SeqCst);
        let _ = r.stop.send(true);
        if let Ok(mut w) = r.watcher.lock() {
            w.take();
        }
        let tasks = r
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for mut t in tasks {
            if tokio::time::timeout(Duration::from_secs(15), &mut t)
                .await
                .is_err()
            {
                t.abort();
                let _ = t.await;
            }
        }
        let name = r.rt.name();
        if let Err(e) = self.state.clear_policy_leases(name) {
            tracing::warn!(policy = name, error = %e, "cannot release the policy's work; it is taken again at the next start");
        }
        for d in &r.rt.policy.destinations {
            self.metrics.forget(name, d);
        }
        self.metrics.forget_policy(name);
        if let Ok(mut b) = self.breached.lock() {
            b.retain(|(p, _), _| p != name);
        }
    }

    /// Stops a running policy and takes it out of the map (stopped first: once the API
    /// no longer shows it, nothing of it runs).
    async fn take_out(&self, name: &str) {
        let old = self.running.read().ok().and_then(|m| m.get(name).cloned());
        if let Some(old) = old {
            tracing::info!(policy = %name, "stopping policy");
            self.stop_one(&old).await;
        }
        if let Ok(mut m) = self.running.write() {
            m.remove(name);
        }
    }

    async fn apply_inner(&self, topo: &Topology) -> Vec<Change> {
        let _one = self.applying.lock().await;
        let topo = Arc::new(topo.clone());
        let mut done = Vec::new();
        for mut c in self.plan(&topo) {
            let result = match (c.action, topo.policy(&c.name)) {
                (ChangeAction::Remove, _) => {
                    self.take_out(&c.name).await;
                    Ok(())
                }
                (_, None) => Ok(()),
                (action, Some(p)) => match self.prepare(&topo, p) {
                    // The old runtime (if any) keeps running as it was.
                    Err(e) => Err(if action == ChangeAction::Change {
                        format!("{e}; the policy keeps running with its previous settings")
                    } else {
                        e.to_string()
                    }),
                    Ok(rt) => {
                        self.take_out(&c.name).await;
                        match self.launch(&topo, p, rt).await {
                            Ok(r) => {
                                if let Ok(mut m) = self.running.write() {
                                    m.insert(c.name.clone(), r);
                                }
                                Ok(())
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                },
            };
            if let Err(e) = result {
                tracing::error!(policy = %c.name, error = %e, "policy change not applied");
                c.error = Some(e);
            }
            done.push(c);
        }
        done
    }

    /// Updates the gauges from the state store and logs RPO breaches as they start and end.
    fn refresh_gauges(&self) {
        let now = georep_state::now_ms();
        for r in self.running() {
            let rt = &r.rt;
            let name = rt.name();
            // Stopped since the snapshot: its series were dropped and must stay so.
            if rt.is_stopping() {
                continue;
            }
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
                let m = &self.metrics;
                m.pending.get_or_create(&labels).set(l.pending as i64);
                m.pending_bytes
                    .get_or_create(&labels)
                    .set(l.pending_bytes as i64);
                m.failed.get_or_create(&labels).set(l.failed as i64);
                m.rpo.get_or_create(&labels).set(rpo);
                m.rpo_breached.get_or_create(&labels).set(breached as i64);
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

    pub fn has_policy(&self, name: &str) -> bool {
        self.runtime(name).is_ok()
    }

    pub fn status(&self, name: &str) -> Result<PolicyStatus> {
        let r = self.entry(name)?;
        let mut s = status::policy_status(&self.state, &r.topo, &r.rt.policy, true)?;
        s.notifications = Some(r.rt.notifications());
        Ok(s)
    }

    pub fn statuses(&self) -> Result<Vec<PolicyStatus>> {
        let names: Vec<String> = self
            .running()
            .iter()
            .map(|r| r.rt.name().to_string())
            .collect();
        names.iter().map(|n| self.status(n)).collect()
    }

    pub fn object(&self, name: &str, key: &str) -> Result<ObjectStatus> {
        let rt = self.runtime(name)?;
        status::object_status(&self.state, &rt.policy, key)
    }

    /// Rescans the source, retries every open item now, and compares each destination
    /// with the source, queueing whatever is missing or different there.
    pub async fn resync(&self, name: &str) -> Result<Resynced> {
        let rt = self.runtime(name)?;
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
    /// finish) until [`Policies::resume`]; changes are still recorded, so the lag and
    /// the RPO show what waits. Survives restarts and reloads. Pausing a paused policy
    /// changes nothing.
    pub async fn pause(&self, name: &str, note: Option<&str>) -> Result<String> {
        // Not while a reload restarts policies: the new runtime reads the pause.
        let _one = self.applying.lock().await;
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
        rt.held.store(true, Ordering::SeqCst);
        tracing::warn!(policy = name, %note, "policy paused: nothing is copied or deleted until `georep resume`");
        Ok(note)
    }

    /// Ends an operator's pause (copies and deletes go on), or, for a policy the
    /// mass-delete guard paused, lets the next pass delete past the guard (the operator
    /// confirmed). Returns what was done.
    pub async fn resume(&self, name: &str) -> Result<&'static str> {
        let _one = self.applying.lock().await;
        let rt = self.runtime(name)?;
        let rec = self.state.policy(name)?;
        if rec.as_ref().is_some_and(|r| r.held.is_some()) {
            self.state.set_held(name, None)?;
            rt.held.store(false, Ordering::SeqCst);
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
        let r = self.entry(name)?;
        let rt = r.rt.clone();
        if let Some(s) = &rt.policy.schedule {
            return Err(ReplicateError::Conflict(format!(
                "policy '{name}' is scheduled ({s}): it takes no change events and syncs at each tick; remove the event subscription or make the policy continuous"
            )));
        }
        let Parsed::Changes { changes, ignored } = parsed else {
            return Ok(Ingested {
                accepted: 0,
                outside: 0,
                ignored: 0,
                queued: 0,
            });
        };
        let (container, prefix) = match r.topo.store(&rt.policy.source).map(|d| &d.url) {
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
}

impl Component for Policies {
    fn section(&self) -> &'static str {
        SECTION
    }

    fn plan(&self, topo: &Topology) -> Vec<Change> {
        let old: Vec<(String, (Policy, Vec<StoreDef>))> = self
            .running()
            .iter()
            .map(|r| (r.rt.name().to_string(), r.started.clone()))
            .collect();
        let new: Vec<_> = topo
            .policies
            .iter()
            .map(|p| (p.name.clone(), settings(topo, p)))
            .collect();
        georep_component::diff(SECTION, &old, &new, differences)
    }

    fn apply<'a>(&'a self, topo: &'a Topology) -> BoxFuture<'a, Vec<Change>> {
        Box::pin(self.apply_inner(topo))
    }

    fn refresh(&self) {
        self.refresh_gauges();
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let all: Vec<Arc<Running>> = self
                .running
                .write()
                .map(|mut m| std::mem::take(&mut *m).into_values().collect())
                .unwrap_or_default();
            // Stop signals first, so every policy winds down at once.
            for r in &all {
                let _ = r.stop.send(true);
            }
            for r in &all {
                self.stop_one(r).await;
            }
        })
    }
}

/// A scheduled policy's loop: a full scan (which queues every change for copying) at
/// each tick of its schedule, counted from the last good scan recorded in the state (so
/// a tick missed while the daemon was down runs at once); a failed scan is tried again
/// after a minute or the interval, whichever is shorter.
async fn scheduled(
    r: Arc<PolicyRuntime>,
    schedule: georep_core::Schedule,
    mut stopped: watch::Receiver<bool>,
) {
    let mut retry_at: Option<chrono::DateTime<chrono::Utc>> = None;
    loop {
        let last = r
            .state
            .policy(r.name())
            .ok()
            .flatten()
            .and_then(|rec| rec.last_ok_scan_at)
            .and_then(chrono::DateTime::from_timestamp_millis);
        let now = chrono::Utc::now();
        let mut next = schedule.next(last, now);
        if let Some(t) = retry_at {
            next = next.max(t);
        }
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = r.scan_now.notified() => {}
            _ = stopped.changed() => break,
        }
        if *stopped.borrow() {
            break;
        }
        retry_at = match r.scan().await {
            Ok(_) => None,
            Err(_) => {
                let pause = schedule
                    .interval(chrono::Utc::now())
                    .min(Duration::from_secs(60));
                chrono::Duration::from_std(pause)
                    .ok()
                    .map(|p| chrono::Utc::now() + p)
            }
        };
    }
}
