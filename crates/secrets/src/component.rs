//! [`SecretSyncs`], the daemon component: one task per `[[secret_syncs]]` entry runs a
//! pass at start and then every `interval` (a failed pass is retried sooner, with
//! backoff, never in a tight loop), answers `run_now`, and keeps the status and gauges
//! the API and `/metrics` show: lag (time since the last pass that reached every
//! vault), secrets in sync, pending, drifted and failed. Passes share the ledger's lock
//! with `georep secrets` commands, so the two never interleave.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use georep_api::{SecretPass, SecretSyncStatus};
use georep_component::{changed_fields, BoxFuture, Change, ChangeAction, Component, Context};
use georep_core::{SecretSync, Topology};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::SecretsError;
use crate::ledger::MacKey;
use crate::sync::RunOptions;

const SECTION: &str = "secret_syncs";

impl From<SecretsError> for georep_component::Error {
    fn from(e: SecretsError) -> Self {
        use georep_component::ErrorKind as K;
        let kind = match e.exit_code() {
            2 => K::Invalid,
            3 => K::Unavailable,
            _ => match &e {
                SecretsError::Ledger { detail, .. } if detail.contains("another pass") => {
                    K::Refused
                }
                _ => K::Upstream,
            },
        };
        Self::new(kind, e)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Label {
    sync: String,
}

type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Default)]
struct Metrics {
    last_pass: Family<Label, Gauge>,
    lag: Family<Label, FGauge>,
    breached: Family<Label, Gauge>,
    in_sync: Family<Label, Gauge>,
    pending: Family<Label, Gauge>,
    drifted: Family<Label, Gauge>,
    failed: Family<Label, Gauge>,
    written: Family<Label, Counter>,
    failures: Family<Label, Counter>,
    duration: Family<Label, FGauge>,
}

impl Metrics {
    fn register(r: &georep_component::Metrics) -> Self {
        let m = Self::default();
        r.register(
            "secret_sync_last_pass_timestamp_seconds",
            "When a secret sync's last complete pass ended (Unix time)",
            m.last_pass.clone(),
        );
        r.register(
            "secret_sync_lag_seconds",
            "Seconds since a secret sync's last complete pass: how stale its destinations may be",
            m.lag.clone(),
        );
        r.register(
            "secret_sync_lag_breached",
            "1 while a secret sync's lag is past twice its interval",
            m.breached.clone(),
        );
        r.register(
            "secret_sync_in_sync",
            "Secret x destination pairs in step",
            m.in_sync.clone(),
        );
        r.register(
            "secret_sync_pending",
            "Secret x destination pairs with versions still to write",
            m.pending.clone(),
        );
        r.register(
            "secret_sync_drifted",
            "Secret x destination pairs changed at the destination by someone else (reported, left alone)",
            m.drifted.clone(),
        );
        r.register(
            "secret_sync_failed",
            "Secret x destination pairs whose last attempt failed",
            m.failed.clone(),
        );
        r.register(
            "secret_sync_versions_written",
            "Secret versions written to destinations",
            m.written.clone(),
        );
        r.register(
            "secret_sync_failures",
            "Passes that could not reach every vault",
            m.failures.clone(),
        );
        r.register(
            "secret_sync_last_duration_seconds",
            "How long a secret sync's last pass took",
            m.duration.clone(),
        );
        m
    }

    fn forget(&self, name: &str) {
        let l = Label {
            sync: name.to_string(),
        };
        for f in [
            &self.last_pass,
            &self.breached,
            &self.in_sync,
            &self.pending,
            &self.drifted,
            &self.failed,
        ] {
            f.remove(&l);
        }
        self.lag.remove(&l);
        self.duration.remove(&l);
        self.written.remove(&l);
        self.failures.remove(&l);
    }
}

/// What the daemon knows beyond the ledger.
#[derive(Default, Clone)]
struct Live {
    interval: Duration,
    last_ok: Option<Instant>,
    running: bool,
    failures: u64,
    last_errors: Vec<String>,
}

/// A sync and the vaults and escrow store it uses (a changed vault, its token
/// included, restarts it).
type Settings = (SecretSync, Vec<Option<georep_core::Vault>>, Option<String>);

fn settings(topo: &Topology, s: &SecretSync) -> Settings {
    let vaults: Vec<Option<georep_core::Vault>> = std::iter::once(&s.source)
        .chain(&s.destinations)
        .map(|v| topo.vaults.get(v).cloned())
        .collect();
    let escrow = s
        .escrow
        .as_ref()
        .and_then(|e| topo.store(&e.store))
        .map(|st| st.url.to_string());
    (s.clone(), vaults, escrow)
}

fn differences(o: &Settings, n: &Settings) -> Vec<String> {
    let (a, b) = (&o.0, &n.0);
    let mut f = changed_fields!(a, b; source, destinations, include, exclude, versions,
        deletes, on_drift, interval, max_delete, escrow);
    if o.1 != n.1 {
        f.push("vaults".into());
    }
    if o.2 != n.2 {
        f.push("escrow store url".into());
    }
    f
}

type Reply = oneshot::Sender<Result<SecretPass, georep_component::Error>>;

struct Running {
    started: Settings,
    stop: watch::Sender<bool>,
    trigger: mpsc::Sender<Reply>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Every secret sync of the topology, on its interval.
pub struct SecretSyncs {
    /// Beside the state file; ledgers are in `secrets/` under it.
    dir: PathBuf,
    metrics: Arc<Metrics>,
    running: RwLock<BTreeMap<String, Arc<Running>>>,
    live: Arc<Mutex<BTreeMap<String, Live>>>,
    applying: tokio::sync::Mutex<()>,
}

impl SecretSyncs {
    pub fn new(ctx: &Context) -> Self {
        let dir = ctx
            .state
            .path()
            .parent()
            .map_or_else(|| PathBuf::from("."), |p| p.to_path_buf());
        Self {
            dir,
            metrics: Arc::new(Metrics::register(&ctx.metrics)),
            running: RwLock::new(BTreeMap::new()),
            live: Arc::new(Mutex::new(BTreeMap::new())),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    fn names(&self) -> Vec<String> {
        self.running
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// One sync's status: the ledger's per-secret view and the daemon's lag.
    pub fn status(&self, name: &str) -> georep_component::Result<SecretSyncStatus> {
        let live = self
            .live
            .lock()
            .ok()
            .and_then(|m| m.get(name).cloned())
            .ok_or_else(|| {
                georep_component::Error::not_found(format!(
                    "no secret sync named '{name}' in the topology"
                ))
            })?;
        let mut s = crate::status::status(&self.dir.join("secrets"), name)?;
        s.interval_seconds = Some(live.interval.as_secs_f64());
        s.lag_seconds = live.last_ok.map(|t| t.elapsed().as_secs_f64());
        s.lag_breached = match s.lag_seconds {
            Some(l) => l > 2.0 * live.interval.as_secs_f64(),
            None => live.failures > 0,
        };
        s.running = live.running;
        s.failures = live.failures;
        s.last_errors = live.last_errors;
        Ok(s)
    }

    pub fn statuses(&self) -> Vec<SecretSyncStatus> {
        self.names()
            .iter()
            .filter_map(|n| self.status(n).ok())
            .collect()
    }

    /// Runs a pass now (after the one running, if any).
    pub async fn run_now(&self, name: &str) -> georep_component::Result<SecretPass> {
        let r = self
            .running
            .read()
            .ok()
            .and_then(|m| m.get(name).cloned())
            .ok_or_else(|| {
                georep_component::Error::not_found(format!(
                    "no secret sync named '{name}' in the topology"
                ))
            })?;
        let (tx, rx) = oneshot::channel();
        r.trigger
            .send(tx)
            .await
            .map_err(|_| georep_component::Error::refused("the secret sync is stopping"))?;
        rx.await.map_err(|_| {
            georep_component::Error::refused("the secret sync stopped before the pass")
        })?
    }

    async fn stop_one(&self, name: &str, r: &Running) {
        let _ = r.stop.send(true);
        let task = r.task.lock().ok().and_then(|mut t| t.take());
        if let Some(mut t) = task {
            // A write in flight is recorded or adopted by the next pass.
            if tokio::time::timeout(Duration::from_secs(10), &mut t)
                .await
                .is_err()
            {
                t.abort();
                let _ = t.await;
            }
        }
        self.metrics.forget(name);
        if let Ok(mut l) = self.live.lock() {
            l.remove(name);
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
            let Some(s) = topo.secret_sync(&c.name) else {
                continue;
            };
            let key = match MacKey::from_env() {
                Ok(k) => Arc::new(k),
                Err(e) => {
                    c.error = Some(e.to_string());
                    continue;
                }
            };
            if let Ok(mut l) = self.live.lock() {
                l.insert(
                    s.name.clone(),
                    Live {
                        interval: s.interval,
                        ..Live::default()
                    },
                );
            }
            let (stop, stop_rx) = watch::channel(false);
            let (trigger, trigger_rx) = mpsc::channel(8);
            let job = Job {
                topo: Arc::new(topo.clone()),
                sync: s.clone(),
                key,
                opts: RunOptions {
                    state_dir: self.dir.clone(),
                    dry_run: false,
                    rekey: false,
                    parallel: 16,
                },
            };
            let task = tokio::spawn(run(
                job,
                self.live.clone(),
                self.metrics.clone(),
                stop_rx,
                trigger_rx,
            ));
            let r = Arc::new(Running {
                started: settings(topo, s),
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

impl Component for SecretSyncs {
    fn section(&self) -> &'static str {
        SECTION
    }

    fn plan(&self, topo: &Topology) -> Vec<Change> {
        let old: Vec<_> = self
            .running
            .read()
            .map(|m| {
                m.iter()
                    .map(|(n, r)| (n.clone(), r.started.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let new: Vec<_> = topo
            .secret_syncs
            .iter()
            .map(|s| (s.name.clone(), settings(topo, s)))
            .collect();
        georep_component::diff(SECTION, &old, &new, differences)
    }

    fn apply<'a>(&'a self, topo: &'a Topology) -> BoxFuture<'a, Vec<Change>> {
        Box::pin(self.apply_inner(topo))
    }

    fn refresh(&self) {
        let live: Vec<(String, Live)> = self
            .live
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (name, l) in live {
            let lag = l.last_ok.map(|t| t.elapsed().as_secs_f64());
            let label = Label { sync: name };
            self.metrics
                .lag
                .get_or_create(&label)
                .set(lag.unwrap_or(0.0));
            let breached = match lag {
                Some(s) => s > 2.0 * l.interval.as_secs_f64(),
                None => l.failures > 0,
            };
            self.metrics
                .breached
                .get_or_create(&label)
                .set(breached as i64);
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

struct Job {
    topo: Arc<Topology>,
    sync: SecretSync,
    key: Arc<MacKey>,
    opts: RunOptions,
}

fn edit(live: &Mutex<BTreeMap<String, Live>>, name: &str, f: impl FnOnce(&mut Live)) {
    if let Ok(mut m) = live.lock() {
        if let Some(l) = m.get_mut(name) {
            f(l);
        }
    }
}

/// One pass, its status and gauges recorded.
async fn pass(
    job: &Job,
    live: &Mutex<BTreeMap<String, Live>>,
    metrics: &Metrics,
) -> Result<SecretPass, SecretsError> {
    let name = &job.sync.name;
    let l = Label { sync: name.clone() };
    edit(live, name, |x| x.running = true);
    let t = Instant::now();
    let result = crate::run(&job.topo, &job.sync, &job.key, &job.opts).await;
    metrics
        .duration
        .get_or_create(&l)
        .set(t.elapsed().as_secs_f64());
    let complete = matches!(&result, Ok(r) if r.errors.is_empty() && r.exit_code != 3);
    match &result {
        Ok(r) => {
            let written: u64 = r.items.iter().map(|i| u64::from(i.written)).sum();
            metrics.written.get_or_create(&l).inc_by(written);
            if !r.errors.is_empty() {
                metrics.failures.get_or_create(&l).inc();
                tracing::warn!(sync = %name, errors = ?r.errors, "secret sync pass could not reach every vault");
            }
            let problems = r.items.iter().filter(|i| i.outcome.is_problem()).count();
            if problems > 0 {
                tracing::warn!(sync = %name, problems, "secret sync: drift, failures or unexportable items (georep secrets status)");
            }
            edit(live, name, |x| {
                x.running = false;
                x.last_errors = r.errors.clone();
                if complete {
                    x.last_ok = Some(Instant::now());
                } else {
                    x.failures += 1;
                }
            });
        }
        Err(e) => {
            metrics.failures.get_or_create(&l).inc();
            tracing::warn!(sync = %name, error = %e, "secret sync pass failed");
            edit(live, name, |x| {
                x.running = false;
                x.failures += 1;
                x.last_errors = vec![e.to_string()];
            });
        }
    }
    if complete {
        metrics
            .last_pass
            .get_or_create(&l)
            .set(chrono::Utc::now().timestamp());
    }
    if let Ok(s) = crate::status::status(&job.opts.state_dir.join("secrets"), name) {
        metrics.in_sync.get_or_create(&l).set(s.in_sync as i64);
        metrics.pending.get_or_create(&l).set(s.pending as i64);
        metrics.drifted.get_or_create(&l).set(s.drifted as i64);
        metrics.failed.get_or_create(&l).set(s.failed as i64);
    }
    result
}

async fn run(
    job: Job,
    live: Arc<Mutex<BTreeMap<String, Live>>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    mut trigger: mpsc::Receiver<Reply>,
) {
    let mut failures_in_row = 0u32;
    let mut wait = Duration::ZERO;
    loop {
        let reply = tokio::select! {
            _ = tokio::time::sleep(wait) => None,
            Some(tx) = trigger.recv() => Some(tx),
            _ = stop.changed() => break,
        };
        let result = tokio::select! {
            r = pass(&job, &live, &metrics) => r,
            _ = stop.changed() => break,
        };
        let ok = matches!(&result, Ok(r) if r.errors.is_empty() && r.exit_code != 3);
        if ok {
            failures_in_row = 0;
            wait = job.sync.interval;
        } else {
            failures_in_row += 1;
            let backoff = Duration::from_secs(5)
                .saturating_mul(2u32.saturating_pow(failures_in_row.min(10) - 1));
            wait = backoff.min(job.sync.interval);
        }
        if let Some(tx) = reply {
            let _ = tx.send(result.map_err(georep_component::Error::from));
        }
    }
}
