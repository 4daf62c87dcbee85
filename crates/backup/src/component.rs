//! [`Backups`], the daemon component: one task per `[[backups]]` entry takes points on
//! its schedule (`every` after the last point started, or cron times; a run missed
//! while the daemon was down is taken at once), applies retention at most hourly,
//! and keeps the status and gauges the API and `/metrics` show. A failed run is retried
//! with backoff up to the schedule's interval, never in a tight loop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use georep_api::{BackupStatus, PointReport};
use georep_component::{changed_fields, BoxFuture, Change, ChangeAction, Component, Context};
use georep_core::{Backup, StoreUrl, Topology};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::BackupError;
use crate::repo::{source_store, RepoSpec};

const SECTION: &str = "backups";

/// Retention is applied after a point at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl From<BackupError> for georep_component::Error {
    fn from(e: BackupError) -> Self {
        use georep_component::ErrorKind as K;
        let kind = match &e {
            BackupError::NoSuchPoint { .. } => K::NotFound,
            BackupError::AppendOnly { .. } => K::Refused,
            _ => match e.exit_class() {
                2 => K::Invalid,
                3 => K::Unavailable,
                _ => K::Upstream,
            },
        };
        Self::new(kind, e)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Label {
    backup: String,
}

type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

struct BackupMetrics {
    last_point: Family<Label, Gauge>,
    rpo: Family<Label, FGauge>,
    breached: Family<Label, Gauge>,
    points: Family<Label, Gauge>,
    repo_bytes: Family<Label, Gauge>,
    dedup: Family<Label, FGauge>,
    next_run: Family<Label, Gauge>,
    duration: Family<Label, FGauge>,
    failures: Family<Label, Counter>,
    running: Family<Label, Gauge>,
}

impl BackupMetrics {
    fn register(m: &georep_component::Metrics) -> Self {
        let d = Self {
            last_point: Default::default(),
            rpo: Default::default(),
            breached: Default::default(),
            points: Default::default(),
            repo_bytes: Default::default(),
            dedup: Default::default(),
            next_run: Default::default(),
            duration: Default::default(),
            failures: Default::default(),
            running: Default::default(),
        };
        m.register(
            "backup_last_point_timestamp_seconds",
            "When the last point of a backup was taken (Unix time)",
            d.last_point.clone(),
        );
        m.register(
            "backup_rpo_seconds",
            "Age of a backup's last point: the recovery point achieved now",
            d.rpo.clone(),
        );
        m.register(
            "backup_rpo_breached",
            "1 while a backup's last point is older than twice its interval",
            d.breached.clone(),
        );
        m.register(
            "backup_points",
            "Points in a backup's repository",
            d.points.clone(),
        );
        m.register(
            "backup_repository_bytes",
            "Bytes held by a backup repository's packs",
            d.repo_bytes.clone(),
        );
        m.register(
            "backup_dedup_ratio",
            "Content bytes over all points divided by repository bytes",
            d.dedup.clone(),
        );
        m.register(
            "backup_next_run_timestamp_seconds",
            "When a backup's next point is due (Unix time)",
            d.next_run.clone(),
        );
        m.register(
            "backup_last_duration_seconds",
            "How long a backup's last run took",
            d.duration.clone(),
        );
        m.register(
            "backup_failures",
            "Backup runs that failed",
            d.failures.clone(),
        );
        m.register(
            "backup_running",
            "1 while a point is being taken",
            d.running.clone(),
        );
        d
    }

    fn forget(&self, name: &str) {
        let l = Label {
            backup: name.to_string(),
        };
        for f in [
            &self.last_point,
            &self.breached,
            &self.points,
            &self.repo_bytes,
            &self.next_run,
            &self.running,
        ] {
            f.remove(&l);
        }
        for f in [&self.rpo, &self.dedup, &self.duration] {
            f.remove(&l);
        }
        self.failures.remove(&l);
    }
}

/// What a backup runs with: the entry and the URLs of its two stores (a store's URL
/// changed in `[stores]` restarts the backup).
type Settings = (Backup, Option<StoreUrl>, Option<StoreUrl>);

fn settings(topo: &Topology, b: &Backup) -> Settings {
    (
        b.clone(),
        topo.store(&b.source).map(|s| s.url.clone()),
        topo.store(&b.repository).map(|s| s.url.clone()),
    )
}

fn differences(o: &Settings, n: &Settings) -> Vec<String> {
    let (a, b) = (&o.0, &n.0);
    let mut f = changed_fields!(a, b; source, repository, schedule, include, exclude,
        retention, append_only);
    if a.password != b.password {
        f.push("password".into());
    }
    if o.1 != n.1 {
        f.push("source store url".into());
    }
    if o.2 != n.2 {
        f.push("repository store url".into());
    }
    f
}

type RunReply = oneshot::Sender<Result<PointReport, georep_component::Error>>;

struct Running {
    started: Settings,
    stop: watch::Sender<bool>,
    trigger: mpsc::Sender<RunReply>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Every backup of the topology, on its schedule.
pub struct Backups {
    metrics: Arc<BackupMetrics>,
    running: RwLock<BTreeMap<String, Arc<Running>>>,
    statuses: Arc<Mutex<BTreeMap<String, BackupStatus>>>,
    applying: tokio::sync::Mutex<()>,
}

impl Backups {
    /// Built empty; [`Component::apply`] starts the topology's backups.
    pub fn new(ctx: &Context) -> Self {
        Self {
            metrics: Arc::new(BackupMetrics::register(&ctx.metrics)),
            running: RwLock::new(BTreeMap::new()),
            statuses: Arc::new(Mutex::new(BTreeMap::new())),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    fn running(&self) -> Vec<(String, Arc<Running>)> {
        self.running
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Every backup's status, with the RPO measured now.
    pub fn statuses(&self) -> Vec<BackupStatus> {
        let now = Utc::now();
        self.statuses
            .lock()
            .map(|m| m.values().map(|s| measured(s.clone(), now)).collect())
            .unwrap_or_default()
    }

    /// One backup's status; `Err` names a backup the topology lacks.
    pub fn status(&self, name: &str) -> georep_component::Result<BackupStatus> {
        self.statuses
            .lock()
            .ok()
            .and_then(|m| m.get(name).cloned())
            .map(|s| measured(s, Utc::now()))
            .ok_or_else(|| {
                georep_component::Error::not_found(format!(
                    "no backup named '{name}' in the topology"
                ))
            })
    }

    /// Takes a point now (or waits for the one being taken to end, then takes one).
    pub async fn run_now(&self, name: &str) -> georep_component::Result<PointReport> {
        let r = self
            .running
            .read()
            .ok()
            .and_then(|m| m.get(name).cloned())
            .ok_or_else(|| {
                georep_component::Error::not_found(format!(
                    "no backup named '{name}' in the topology"
                ))
            })?;
        let (tx, rx) = oneshot::channel();
        r.trigger
            .send(tx)
            .await
            .map_err(|_| georep_component::Error::refused("the backup is stopping"))?;
        rx.await
            .map_err(|_| georep_component::Error::refused("the backup stopped before the point"))?
    }

    async fn stop_one(&self, name: &str, r: &Running) {
        let _ = r.stop.send(true);
        let task = r.task.lock().ok().and_then(|mut t| t.take());
        if let Some(mut t) = task {
            // The task is cut off; rustic's blocking thread may still finish the point
            // it was taking (each repository file appears whole or not at all, and
            // points share the repository lock, so an overlap with the next start is
            // harmless).
            if tokio::time::timeout(Duration::from_secs(10), &mut t)
                .await
                .is_err()
            {
                t.abort();
                let _ = t.await;
            }
        }
        self.metrics.forget(name);
        if let Ok(mut s) = self.statuses.lock() {
            s.remove(name);
        }
    }

    async fn apply_inner(&self, topo: &Topology) -> Vec<Change> {
        let _one = self.applying.lock().await;
        let mut changes = self.plan(topo);
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
        for c in &mut changes {
            if !matches!(c.action, ChangeAction::Add | ChangeAction::Change) {
                continue;
            }
            let Some(b) = topo.backup(&c.name) else {
                continue;
            };
            let started = settings(topo, b);
            let job = match (RepoSpec::from_topology(topo, b), source_store(topo, b)) {
                (Ok(spec), Ok(src)) => Job {
                    backup: b.clone(),
                    spec,
                    source: Arc::new(src),
                },
                (Err(e), _) | (_, Err(e)) => {
                    c.error = Some(e.to_string());
                    continue;
                }
            };
            let status = BackupStatus {
                name: b.name.clone(),
                source: b.source.clone(),
                repository: b.repository.clone(),
                schedule: b.schedule.to_string(),
                append_only: b.append_only,
                last_point: None,
                rpo_seconds: None,
                target_seconds: b.schedule.interval(Utc::now()).as_secs_f64(),
                rpo_breached: false,
                points: 0,
                repository_bytes: 0,
                dedup_ratio: None,
                next_run: None,
                running: false,
                failures: 0,
                last_error: None,
            };
            if let Ok(mut s) = self.statuses.lock() {
                s.insert(b.name.clone(), status);
            }
            let (stop, stop_rx) = watch::channel(false);
            let (trigger, trigger_rx) = mpsc::channel(8);
            let task = tokio::spawn(run(
                job,
                self.statuses.clone(),
                self.metrics.clone(),
                stop_rx,
                trigger_rx,
            ));
            let r = Arc::new(Running {
                started,
                stop,
                trigger,
                task: Mutex::new(Some(task)),
            });
            if let Ok(mut m) = self.running.write() {
                m.insert(c.name.clone(), r);
            }
        }
        changes
    }
}

/// The status with its RPO measured at `now`: the age of the last point, breached past
/// twice the interval (a point that is merely running late is not a breach).
fn measured(mut s: BackupStatus, now: DateTime<Utc>) -> BackupStatus {
    s.rpo_seconds = s
        .last_point
        .as_ref()
        .map(|p| (now.timestamp() - p.unix).max(0) as f64);
    s.rpo_breached = match s.rpo_seconds {
        Some(age) => age > 2.0 * s.target_seconds,
        None => s.failures > 0,
    };
    s
}

impl Component for Backups {
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
            .backups
            .iter()
            .map(|b| (b.name.clone(), settings(topo, b)))
            .collect();
        georep_component::diff(SECTION, &old, &new, differences)
    }

    fn apply<'a>(&'a self, topo: &'a Topology) -> BoxFuture<'a, Vec<Change>> {
        Box::pin(self.apply_inner(topo))
    }

    fn refresh(&self) {
        for s in self.statuses() {
            let l = Label { backup: s.name };
            self.metrics
                .rpo
                .get_or_create(&l)
                .set(s.rpo_seconds.unwrap_or(0.0));
            self.metrics
                .breached
                .get_or_create(&l)
                .set(s.rpo_breached as i64);
        }
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

/// One backup's work.
struct Job {
    backup: Backup,
    spec: RepoSpec,
    source: Arc<georep_storage::Store>,
}

fn edit(
    shared: &Mutex<BTreeMap<String, BackupStatus>>,
    name: &str,
    f: impl FnOnce(&mut BackupStatus),
) {
    if let Ok(mut m) = shared.lock() {
        if let Some(s) = m.get_mut(name) {
            f(s);
        }
    }
}

/// Reads the repository's points and size into the status; returns the last point's
/// time.
async fn refresh_stats(
    job: &Job,
    shared: &Mutex<BTreeMap<String, BackupStatus>>,
    metrics: &BackupMetrics,
) -> Result<Option<DateTime<Utc>>, BackupError> {
    let (points, bytes) = match crate::ops::stats(&job.spec).await {
        Ok(s) => s,
        Err(BackupError::NoRepository { .. }) => (Vec::new(), 0),
        Err(e) => return Err(e),
    };
    let content: u64 = points.iter().map(|p| p.size).sum();
    let dedup = (bytes > 0).then(|| content as f64 / bytes as f64);
    let last = points.last().cloned();
    let l = Label {
        backup: job.backup.name.clone(),
    };
    metrics.points.get_or_create(&l).set(points.len() as i64);
    metrics.repo_bytes.get_or_create(&l).set(bytes as i64);
    metrics.dedup.get_or_create(&l).set(dedup.unwrap_or(0.0));
    if let Some(p) = &last {
        metrics.last_point.get_or_create(&l).set(p.unix);
    }
    let when = last
        .as_ref()
        .and_then(|p| DateTime::<Utc>::from_timestamp(p.unix, 0));
    edit(shared, &job.backup.name, |s| {
        s.points = points.len() as u64;
        s.repository_bytes = bytes;
        s.dedup_ratio = dedup;
        s.last_point = last;
    });
    Ok(when)
}

async fn run(
    job: Job,
    shared: Arc<Mutex<BTreeMap<String, BackupStatus>>>,
    metrics: Arc<BackupMetrics>,
    mut stop: watch::Receiver<bool>,
    mut trigger: mpsc::Receiver<RunReply>,
) {
    let name = job.backup.name.clone();
    let l = Label {
        backup: name.clone(),
    };
    let mut last = match refresh_stats(&job, &shared, &metrics).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(backup = %name, error = %e, "cannot read the repository's points; taking a point now");
            edit(&shared, &name, |s| s.last_error = Some(e.to_string()));
            None
        }
    };
    let mut retry_after: Option<DateTime<Utc>> = None;
    let mut failures_in_row = 0u32;
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        let now = Utc::now();
        let mut next = job.backup.schedule.next(last, now);
        if let Some(r) = retry_after {
            next = next.max(r);
        }
        metrics.next_run.get_or_create(&l).set(next.timestamp());
        edit(&shared, &name, |s| {
            s.next_run = Some(next.timestamp());
            s.running = false;
        });
        let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
        let reply = tokio::select! {
            _ = tokio::time::sleep(wait) => None,
            Some(tx) = trigger.recv() => Some(tx),
            _ = stop.changed() => break,
        };
        let started = Utc::now();
        edit(&shared, &name, |s| s.running = true);
        metrics.running.get_or_create(&l).set(1);
        let t = std::time::Instant::now();
        let result = tokio::select! {
            r = crate::ops::run_point(&job.spec, job.source.clone(), &job.backup.filter, None) => r,
            _ = stop.changed() => break,
        };
        metrics.running.get_or_create(&l).set(0);
        metrics
            .duration
            .get_or_create(&l)
            .set(t.elapsed().as_secs_f64());
        // A point kept without some objects still ends the run: retention goes on (or
        // a source with an ever-changing object would grow the repository forever).
        let took_point = matches!(result, Ok(_) | Err(BackupError::Partial { .. }));
        let outcome = match result {
            Ok(r) => {
                tracing::info!(backup = %name, point = %&r.point.id[..8], files = r.point.files, read = r.files_read, "point taken");
                last = Some(started);
                retry_after = None;
                failures_in_row = 0;
                edit(&shared, &name, |s| {
                    s.last_error = None;
                    s.last_point = Some(r.point.clone());
                });
                Ok(r)
            }
            Err(e) => {
                // A point taken without some objects still counts for the schedule;
                // anything else is retried with backoff, capped by the interval.
                if matches!(e, BackupError::Partial { .. }) {
                    last = Some(started);
                } else {
                    failures_in_row += 1;
                    let interval = job.backup.schedule.interval(Utc::now());
                    let backoff = Duration::from_secs(15)
                        .saturating_mul(2u32.saturating_pow(failures_in_row.min(10) - 1))
                        .min(interval);
                    retry_after = chrono::Duration::from_std(backoff)
                        .ok()
                        .map(|b| Utc::now() + b);
                }
                tracing::warn!(backup = %name, error = %e, "backup run failed");
                metrics.failures.get_or_create(&l).inc();
                edit(&shared, &name, |s| {
                    s.failures += 1;
                    s.last_error = Some(e.to_string());
                });
                Err(georep_component::Error::from(e))
            }
        };
        let pruning = job.backup.retention != georep_core::Retention::default()
            && !job.backup.append_only
            && took_point
            && last_prune.is_none_or(|p| p.elapsed() >= PRUNE_EVERY);
        if let Err(e) = refresh_stats(&job, &shared, &metrics).await {
            tracing::warn!(backup = %name, error = %e, "cannot read the repository's points");
        }
        if let Some(tx) = reply {
            let _ = tx.send(outcome);
        }
        if pruning {
            last_prune = Some(std::time::Instant::now());
            let pruned = tokio::select! {
                r = crate::ops::prune(&job.spec, &job.backup.retention, false, None) => r,
                _ = stop.changed() => break,
            };
            match pruned {
                Ok(p) => {
                    let gone = p.points.iter().filter(|d| !d.keep).count();
                    tracing::info!(backup = %name, forgotten = gone, packs_removed = p.packs_removed, "retention applied");
                    if let Err(e) = refresh_stats(&job, &shared, &metrics).await {
                        tracing::warn!(backup = %name, error = %e, "cannot read the repository's points");
                    }
                }
                Err(e) => {
                    tracing::warn!(backup = %name, error = %e, "retention could not be applied; trying again after the next point");
                    edit(&shared, &name, |s| {
                        s.last_error = Some(format!("prune: {e}"))
                    });
                }
            }
        }
    }
}
