//! One policy at run time: its stores, change detection (scan and point observations)
//! and the workers that drain its queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use georep_core::{DeleteMode, MaxDelete, Policy, Topology};
use georep_state::{Item, ManifestEntry, Observed, ObservedKind, Op, State};
use georep_storage::{copy_object, Entry, JobOptions, ListRole, StorageError, Store, StoreOptions};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::error::{ReplicateError, Result};
use crate::metrics::{self, Metrics};

/// Passes that delete at most this many objects are never held by a percentage guard: on
/// a small store one delete is already a large share.
pub const GUARD_FLOOR: u64 = 10;
/// Attempts after which an item reads `failed` (it is still retried).
pub const FAILED_AFTER: u32 = 5;
/// Longest wait between attempts of one item.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a claimed item stays out of the queue. One daemon owns a state file (`serve`
/// locks it) and drops all leases at start-up, so a lease only marks "in flight here" and
/// must outlast the longest transfer.
const LEASE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Manifest rows read per page during a scan.
const PAGE: usize = 5000;
/// Changes written per transaction during a scan.
const BATCH: usize = 2000;

/// Where a change was detected; a metric label.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    Scan,
    FsNotify,
    Webhook,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Scan => "scan",
            Via::FsNotify => "fsnotify",
            Via::Webhook => "webhook",
        }
    }
}

pub use georep_api::ScanSummary;

/// A policy's stores, state and signals.
pub(crate) struct PolicyRuntime {
    pub(crate) policy: Policy,
    pub(crate) src: Arc<Store>,
    pub(crate) dests: Vec<(String, Arc<Store>)>,
    dest_names: Vec<String>,
    pub(crate) state: Arc<State>,
    metrics: Arc<Metrics>,
    /// Wakes the dispatcher: new work was queued.
    pub(crate) wake: Notify,
    /// Asks the scanner for a scan now.
    pub(crate) scan_now: Notify,
    /// Serialises point observations (webhook batches and notifications).
    observe_lock: tokio::sync::Mutex<()>,
    /// One scan at a time (periodic, on demand, resync).
    scan_lock: tokio::sync::Mutex<()>,
    /// Manifest size as of the last scan, for the event-path delete guard (counting a
    /// large manifest per event would be too slow).
    manifest_total: AtomicU64,
    /// When the policy was first recorded: backfilled objects count their lag from here.
    created_at: i64,
    /// Deletes queued by notifications since the last scan (for the mass-delete guard).
    event_deletes: AtomicU64,
    job: JobOptions,
    /// How changes are detected besides scans (shown in status).
    pub(crate) notifications: std::sync::Mutex<String>,
    /// Source entries already reported as unusable (bad names, link loops), so a scan
    /// every few seconds reports each once, not every pass.
    reported: std::sync::Mutex<std::collections::HashSet<String>>,
    /// An operator paused the policy: the dispatcher claims nothing (what is in flight
    /// finishes); scans and events still record changes. Mirrors the state's `held`.
    pub(crate) held: std::sync::atomic::AtomicBool,
    /// A reload is stopping this runtime (its settings changed or it was removed): the
    /// scan ends at its next entry and nothing more is recorded or queued through it.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
}

impl PolicyRuntime {
    pub(crate) fn new(
        topo: &Topology,
        policy: &Policy,
        state: Arc<State>,
        metrics: Arc<Metrics>,
        created_at: i64,
    ) -> Result<Self> {
        let src_opts = StoreOptions {
            follow_symlinks: policy.follow_symlinks,
            ..StoreOptions::default()
        };
        let dst_opts = StoreOptions::default();
        let open = |name: &str, opts: &StoreOptions| -> Result<Arc<Store>> {
            let def = topo
                .store(name)
                .ok_or_else(|| ReplicateError::Config(format!("store '{name}' is not defined")))?;
            Store::open(&def.url, opts)
                .map(Arc::new)
                .map_err(|e| ReplicateError::Store {
                    store: name.to_string(),
                    source: e,
                })
        };
        let src = open(&policy.source, &src_opts)?;
        let mut dests = Vec::new();
        for d in &policy.destinations {
            dests.push((d.clone(), open(d, &dst_opts)?));
        }
        let job = JobOptions {
            transfers: 1,
            ..JobOptions::default()
        };
        Ok(Self {
            policy: policy.clone(),
            src,
            dest_names: policy.destinations.clone(),
            dests,
            state,
            metrics,
            wake: Notify::new(),
            scan_now: Notify::new(),
            observe_lock: tokio::sync::Mutex::new(()),
            scan_lock: tokio::sync::Mutex::new(()),
            manifest_total: AtomicU64::new(0),
            created_at,
            event_deletes: AtomicU64::new(0),
            job,
            notifications: std::sync::Mutex::new("scan only".into()),
            reported: Default::default(),
            held: std::sync::atomic::AtomicBool::new(false),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.policy.name
    }

    pub(crate) fn notifications(&self) -> String {
        self.notifications
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Whether a key belongs to this policy (filters); `since` is checked on its time.
    fn wanted(&self, key: &str, modified: i64) -> bool {
        key_wanted(&self.policy, key, modified)
    }

    /// When a change's lag starts: its modification time, but never before the policy
    /// existed (a backfill is not late) nor in the future (clock skew).
    fn change_time(&self, modified: i64) -> i64 {
        modified.max(self.created_at).min(georep_state::now_ms())
    }

    fn upsert(&self, e: &Entry) -> Observed {
        let mtime = e.last_modified.timestamp_millis();
        Observed {
            key: e.key.clone(),
            kind: ObservedKind::Upsert {
                size: e.size,
                etag: e.e_tag.clone(),
                mtime,
            },
            change_time: self.change_time(mtime),
        }
    }

    fn remove(&self, key: String, propagate: bool) -> Observed {
        Observed {
            key,
            kind: ObservedKind::Remove { propagate },
            change_time: georep_state::now_ms(),
        }
    }

    fn apply(&self, changes: &[Observed], via: Via) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.state.apply(self.name(), &self.dest_names, changes)?;
        self.metrics
            .changes
            .get_or_create(&metrics::Source {
                policy: self.name().to_string(),
                via: via.label().to_string(),
            })
            .inc_by(changes.len() as u64);
        self.wake.notify_one();
        Ok(())
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn stopped_error(&self) -> ReplicateError {
        ReplicateError::Unavailable(format!(
            "policy '{}' is being restarted or removed by a reload; retry in a moment",
            self.name()
        ))
    }

    /// Lists the source and diffs it against the manifest: new and changed objects are
    /// queued for every destination; vanished ones are forgotten (and, with
    /// `deletes = propagate`, deleted at destinations) only after the listing completed
    /// and the mass-delete guard passed.
    pub(crate) async fn scan(&self) -> Result<ScanSummary> {
        let _one = self.scan_lock.lock().await;
        let started = Instant::now();
        let at = georep_state::now_ms();
        let result = self.scan_inner().await;
        if self.is_stopping() {
            // Cut short by a reload: not a failure of the source, nothing to record.
            return Err(self.stopped_error());
        }
        let ms = started.elapsed().as_millis() as i64;
        let err = result.as_ref().err().map(|e| e.to_string());
        self.state
            .record_scan(self.name(), at, ms, err.as_deref())?;
        let p = metrics::pol(self.name());
        self.metrics
            .scan_seconds
            .get_or_create(&p)
            .set(ms as f64 / 1000.0);
        self.metrics
            .last_scan
            .get_or_create(&p)
            .set(georep_state::now_ms() as f64 / 1000.0);
        match &result {
            Ok(s) => tracing::debug!(policy = self.name(), ?s, "scan done"),
            Err(e) => {
                self.metrics.scan_errors.get_or_create(&p).inc();
                tracing::warn!(policy = self.name(), error = %e, "scan failed; will retry at the next interval");
            }
        }
        result.map(|mut s| {
            s.millis = ms as u64;
            s
        })
    }

    /// Runs without the observation lock, so notifications keep flowing during long
    /// scans; the races that allows only ever cause redundant (idempotent) work: a stale
    /// listing entry is skipped by its mtime, and a key missing from the listing is
    /// confirmed gone by a HEAD before anything is forgotten.
    async fn scan_inner(&self) -> Result<ScanSummary> {
        let name = self.name().to_string();
        let mut sum = ScanSummary::default();
        let mut listing = self.src.list(ListRole::Source);
        // The manifest is read page by page on a blocking thread, ahead of the merge, so
        // reading it overlaps with listing the source.
        let (tx, mut pages) =
            tokio::sync::mpsc::channel::<georep_state::Result<Vec<ManifestEntry>>>(2);
        let (state, pname) = (self.state.clone(), name.clone());
        tokio::task::spawn_blocking(move || {
            let mut after: Option<String> = None;
            loop {
                let page = state.manifest_page(&pname, after.as_deref(), PAGE);
                let last = match &page {
                    Ok(p) if p.len() == PAGE => p.last().map(|m| m.key.clone()),
                    _ => None,
                };
                if tx.blocking_send(page).is_err() || last.is_none() {
                    break;
                }
                after = last;
            }
        });
        let mut manifest: VecDeque<ManifestEntry> = VecDeque::new();
        let mut manifest_done = false;
        let mut changes = Vec::new();
        let mut gone: Vec<String> = Vec::new();
        // Part of the source went unseen: keys missing from the listing may still exist.
        let mut partial = false;
        // Source names skipped this pass: a vanished key that is one of them, or lies
        // below one, is not acted on; other vanished keys are.
        let mut protected: Vec<String> = Vec::new();
        // Pulls the next manifest page when the buffer runs dry.
        macro_rules! refill {
            () => {
                if manifest.is_empty() && !manifest_done {
                    match pages.recv().await {
                        Some(page) => {
                            let page = page?;
                            manifest_done = page.len() < PAGE;
                            manifest.extend(page);
                        }
                        None => manifest_done = true,
                    }
                }
            };
        }
        loop {
            if self.is_stopping() {
                return Err(self.stopped_error());
            }
            let entry = match listing.try_next().await {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(StorageError::Skipped { key, detail, .. }) => {
                    // One entry no store can hold never stops the others, but what it
                    // is cannot be told: its key (and what lies below it) is kept.
                    sum.skipped += 1;
                    if protected.len() < 10_000 {
                        protected.push(key.clone());
                    } else {
                        partial = true;
                    }
                    self.report_once(&key, &detail);
                    continue;
                }
                Err(StorageError::Unlisted { detail, .. }) => {
                    partial = true;
                    self.report_once("(symbolic links)", &detail);
                    continue;
                }
                Err(e) => {
                    // Record what was found so far; never act on vanished keys after an
                    // incomplete listing.
                    self.apply(&changes, Via::Scan)?;
                    return Err(ReplicateError::Store {
                        store: self.policy.source.clone(),
                        source: e,
                    });
                }
            };
            sum.listed += 1;
            let modified = entry.last_modified.timestamp_millis();
            loop {
                refill!();
                match manifest.front() {
                    Some(m) if m.key.as_str() < entry.key.as_str() => {
                        if let Some(m) = manifest.pop_front() {
                            gone.push(m.key);
                        }
                    }
                    _ => break,
                }
            }
            let known = match manifest.front() {
                Some(m) if m.key == entry.key => manifest.pop_front(),
                _ => None,
            };
            if !self.wanted(&entry.key, modified) {
                continue;
            }
            let changed = match &known {
                None => true,
                // A listing older than what a notification already recorded is stale,
                // unless it differs in content too (a restore with an older mtime).
                Some(m)
                    if modified < m.mtime
                        && m.size == entry.size
                        && (m.etag.is_none() || entry.e_tag.is_none() || m.etag == entry.e_tag) =>
                {
                    false
                }
                Some(m) => {
                    m.size != entry.size
                        || m.mtime != modified
                        || (m.etag.is_some() && entry.e_tag.is_some() && m.etag != entry.e_tag)
                }
            };
            if changed {
                sum.changed += 1;
                changes.push(self.upsert(&entry));
                if changes.len() >= BATCH {
                    self.apply(&changes, Via::Scan)?;
                    changes.clear();
                }
            }
        }
        self.apply(&changes, Via::Scan)?;
        loop {
            refill!();
            match manifest.pop_front() {
                Some(m) => gone.push(m.key),
                None => break,
            }
        }
        if partial {
            gone.clear();
        }
        gone.retain(|k| !protected.iter().any(|p| georep_storage::key_within(k, p)));
        if self.is_stopping() {
            return Err(self.stopped_error());
        }
        let forgot = self.forget(gone, sum.listed).await;
        // An operator's override covers one pass only, whatever that pass found.
        self.state.set_allow_mass_delete(&name, false)?;
        let (removed, held) = forgot?;
        sum.removed = removed;
        sum.held = held;
        self.event_deletes.store(0, Ordering::Relaxed);
        self.manifest_total
            .store(self.state.manifest_count(&name)?, Ordering::Relaxed);
        Ok(sum)
    }

    /// Acts on keys missing from a complete listing: confirms each is really gone (it may
    /// have been created after the listing passed its place), then applies the guard.
    async fn forget(&self, candidates: Vec<String>, listed: u64) -> Result<(u64, u64)> {
        let name = self.name().to_string();
        let src = self.src.clone();
        let gone: Vec<String> = futures::stream::iter(candidates)
            .map(|k| {
                let src = src.clone();
                async move {
                    match src.head(&k).await {
                        Err(StorageError::NotFound { .. }) => Ok(Some(k)),
                        Ok(_) => Ok(None),
                        // There, but not readable here (a link now on its path): keep
                        // its replicas.
                        Err(StorageError::Skipped { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffer_unordered(16)
            .try_filter_map(|k| async move { Ok(k) })
            .try_collect()
            .await
            .map_err(|e| ReplicateError::Store {
                store: self.policy.source.clone(),
                source: e,
            })?;
        if gone.is_empty() {
            self.clear_guard_pause()?;
            return Ok((0, 0));
        }
        let propagate = self.policy.deletes == DeleteMode::Propagate;
        if propagate {
            let total = self.state.manifest_count(&name)?;
            let rec = self.state.policy(&name)?;
            let overridden = rec.as_ref().is_some_and(|r| r.allow_mass_delete);
            let empties_on_purpose =
                matches!(self.policy.max_delete, MaxDelete::Percent(p) if p >= 100.0);
            // A source that lists nothing is far more often unmounted, or the wrong
            // prefix, than emptied on purpose: whatever the count, hold the deletes.
            let empty_source = listed == 0 && !empties_on_purpose;
            let allowed = overridden
                || (!empty_source
                    && guard_allows(&self.policy.max_delete, gone.len() as u64, total));
            if !allowed {
                let reason = if empty_source {
                    format!(
                        "empty-source guard: source '{}' listed no objects, so all {} would be deleted at \
                         the destinations; deletes are held. Check that the source is mounted and the \
                         prefix is right; if it is meant to be empty, run `georep resume {name}` \
                         (POST /api/v1/policies/{name}/resume) or set max_delete = \"100%\"",
                        self.policy.source,
                        gone.len(),
                    )
                } else {
                    format!(
                    "mass-delete guard: {} of {} objects vanished from source '{}' in one pass, \
                     more than max_delete = {}; deletes are held. If this is intended, run \
                     `georep resume {}`; otherwise restore the source",
                    gone.len(),
                    total,
                    self.policy.source,
                    self.policy.max_delete,
                    name
                )
                };
                if rec.and_then(|r| r.paused).as_deref() != Some(reason.as_str()) {
                    tracing::error!(policy = %name, "{reason}");
                }
                self.state.set_paused(&name, Some(&reason))?;
                self.metrics
                    .paused
                    .get_or_create(&metrics::pol(&name))
                    .set(1);
                return Ok((0, gone.len() as u64));
            }
        }
        let n = gone.len() as u64;
        let changes: Vec<Observed> = gone
            .into_iter()
            .map(|k| self.remove(k, propagate))
            .collect();
        for chunk in changes.chunks(BATCH) {
            self.apply(chunk, Via::Scan)?;
        }
        self.clear_guard_pause()?;
        Ok((n, 0))
    }

    fn clear_guard_pause(&self) -> Result<()> {
        let name = self.name();
        if self.state.policy(name)?.and_then(|r| r.paused).is_some() {
            tracing::info!(policy = name, "mass-delete guard released");
            self.state.set_paused(name, None)?;
        }
        self.metrics
            .paused
            .get_or_create(&metrics::pol(name))
            .set(0);
        Ok(())
    }

    /// Looks at single keys named by a notification or webhook event and queues what
    /// changed. Returns how many changes were queued.
    /// `keys` carry the change time an event reported, if any (more precise than a
    /// store's Last-Modified, which Azure gives in whole seconds).
    pub(crate) async fn observe(
        &self,
        keys: Vec<(String, Option<i64>)>,
        via: Via,
    ) -> Result<usize> {
        let _guard = self.observe_lock.lock().await;
        if self.is_stopping() {
            return Err(self.stopped_error());
        }
        let name = self.name().to_string();
        let mut changes = Vec::new();
        // HEAD the keys concurrently: a webhook batch names up to hundreds of objects.
        let src = self.src.clone();
        type Head = (
            String,
            Option<i64>,
            std::result::Result<Entry, StorageError>,
        );
        let heads: Vec<Head> = futures::stream::iter(
            keys.into_iter()
                .filter(|(k, _)| self.policy.filter.matches(k)),
        )
        .map(|(key, at)| {
            let src = src.clone();
            async move {
                let r = src.head(&key).await;
                (key, at, r)
            }
        })
        .buffered(16)
        .collect()
        .await;
        for (key, at, head) in heads {
            let known = self.state.manifest_get(&name, &key)?;
            match head {
                Ok(e) => {
                    let modified = e.last_modified.timestamp_millis();
                    if !self.wanted(&key, modified) {
                        continue;
                    }
                    let same = known.as_ref().is_some_and(|m| {
                        m.size == e.size
                            && m.mtime == modified
                            && (m.etag.is_none() || e.e_tag.is_none() || m.etag == e.e_tag)
                    });
                    if !same {
                        let mut change = self.upsert(&e);
                        if let Some(at) = at {
                            change.change_time = self.change_time(at);
                        }
                        changes.push(change);
                    }
                }
                Err(StorageError::NotFound { .. }) => {
                    if known.is_none() {
                        continue;
                    }
                    let propagate = self.policy.deletes == DeleteMode::Propagate;
                    if propagate {
                        let rec = self.state.policy(&name)?;
                        if rec.as_ref().and_then(|r| r.paused.as_ref()).is_some() {
                            // The guard holds deletes; the next scan decides.
                            continue;
                        }
                        let n = self.event_deletes.fetch_add(1, Ordering::Relaxed) + 1;
                        let total = self.manifest_total.load(Ordering::Relaxed);
                        if !guard_allows(&self.policy.max_delete, n, total) {
                            self.scan_now.notify_one();
                            continue;
                        }
                    }
                    changes.push(self.remove(key, propagate));
                }
                Err(e) => {
                    // Unreadable now: the scan (or a later event) will pick it up.
                    tracing::warn!(policy = %name, key = %key, error = %e, "cannot read a notified object; leaving it to the next scan");
                }
            }
        }
        let n = changes.len();
        self.apply(&changes, via)?;
        Ok(n)
    }

    /// Drains the queue until `stop` turns true, `transfers` items at a time.
    pub(crate) async fn dispatch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.policy.transfers.max(1)));
        let mut tasks = JoinSet::new();
        loop {
            if *stop.borrow() {
                break;
            }
            let free = slots.available_permits();
            let mut claimed = 0;
            let held = self.held.load(Ordering::SeqCst);
            if free > 0 && !held {
                match self.state.claim(self.name(), free, LEASE) {
                    Ok(items) => {
                        claimed = items.len();
                        for item in items {
                            let Ok(permit) = slots.clone().acquire_owned().await else {
                                break;
                            };
                            let me = self.clone();
                            tasks.spawn(async move {
                                me.process(item).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => {
                        tracing::error!(policy = self.name(), error = %e, "cannot read the work queue")
                    }
                }
            }
            if claimed > 0 && claimed == free {
                continue;
            }
            if free == 0 {
                tokio::select! {
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let wait = match self.state.next_due(self.name()) {
                Ok(Some(t)) => {
                    Duration::from_millis((t - georep_state::now_ms()).clamp(5, 1000) as u64)
                }
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        // Let transfers in flight finish briefly; anything cut off is retried at start-up.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    }

    /// Does one item once and records the outcome.
    async fn process(&self, item: Item) {
        // Work queued under earlier settings that these no longer allow is done with,
        // never carried out.
        let moot = if !self.policy.filter.matches(&item.key) {
            Some("no longer selected by the policy's include/exclude")
        } else if item.op == Op::Delete && self.policy.deletes == DeleteMode::Keep {
            Some("deletes are kept by this policy (deletes = \"keep\")")
        } else {
            None
        };
        if let Some(note) = moot {
            let _ = self.state.complete(&item, Some(note));
            return;
        }
        let Some(dst) = self
            .dests
            .iter()
            .find(|(n, _)| *n == item.dest)
            .map(|(_, s)| s.clone())
        else {
            // The destination left the topology; the work is moot.
            let _ = self
                .state
                .complete(&item, Some("destination no longer in this policy"));
            return;
        };
        let labels = metrics::dest(self.name(), &item.dest);
        let outcome = match item.op {
            Op::Copy => match self.src.head(&item.key).await {
                Ok(entry) => self.copy_if_needed(&dst, &entry).await,
                Err(StorageError::NotFound { .. }) => Ok((
                    None,
                    Some("source object no longer exists; nothing to copy"),
                )),
                Err(e) => Err(e),
            },
            Op::Delete => match self.src.head(&item.key).await {
                // Re-created since: never delete what the source has; bring the replica
                // up to date and put the object back in the manifest.
                Ok(entry) => {
                    let r = self.copy_if_needed(&dst, &entry).await;
                    if r.is_ok() {
                        let _ = self.state.apply(self.name(), &[], &[self.upsert(&entry)]);
                    }
                    r.map(|(n, _)| (n, Some("source has the object again; copied, not deleted")))
                }
                Err(StorageError::NotFound { .. }) => match dst.delete(&item.key).await {
                    Ok(()) | Err(StorageError::NotFound { .. }) => Ok((None, None)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok((bytes, note)) => match self.state.complete(&item, note) {
                Ok(true) => {
                    let now = georep_state::now_ms();
                    let lag = (now - item.change_time).max(0) as f64 / 1000.0;
                    match (item.op, bytes) {
                        (Op::Copy, Some(n)) => {
                            self.metrics.latency.get_or_create(&labels).observe(lag);
                            self.metrics.replicated.get_or_create(&labels).inc();
                            self.metrics
                                .replicated_bytes
                                .get_or_create(&labels)
                                .inc_by(n);
                        }
                        (Op::Delete, _) => {
                            self.metrics.latency.get_or_create(&labels).observe(lag);
                            self.metrics.deleted.get_or_create(&labels).inc();
                        }
                        _ => {}
                    }
                }
                Ok(false) => self.wake.notify_one(),
                Err(e) => {
                    tracing::error!(policy = self.name(), error = %e, "cannot record a completed item; it will be redone")
                }
            },
            Err(e) => {
                self.metrics.failures.get_or_create(&labels).inc();
                let backoff = backoff(item.attempts + 1);
                tracing::warn!(policy = self.name(), dest = %item.dest, key = %item.key, attempt = item.attempts + 1, retry_in = ?backoff, error = %e, "replication failed");
                let at = georep_state::now_ms() + backoff.as_millis() as i64;
                if let Err(e) = self.state.fail(&item, &e.to_string(), at, FAILED_AFTER) {
                    tracing::error!(policy = self.name(), error = %e, "cannot record a failed item");
                }
            }
        }
    }
}

impl PolicyRuntime {
    /// Logs an unusable source entry the first time it is seen in this process.
    fn report_once(&self, key: &str, detail: &str) {
        let first = self
            .reported
            .lock()
            .map(|mut seen| seen.len() < 100_000 && seen.insert(key.to_string()))
            .unwrap_or(false);
        if first {
            tracing::warn!(policy = self.name(), key = %key, "{detail}");
        }
    }

    /// Copies unless the destination provably holds these bytes already: a local replica
    /// with the same size and the source's mtime (georep sets it), or equal MD5 ETags.
    /// Anything less certain is copied again (a copy is idempotent; a skip is not undoable).
    async fn copy_if_needed(
        &self,
        dst: &Arc<Store>,
        entry: &Entry,
    ) -> std::result::Result<(Option<u64>, Option<&'static str>), StorageError> {
        if let Ok(d) = dst.head(&entry.key).await {
            let same_local = dst.local_root().is_some()
                && d.size == entry.size
                && d.last_modified.timestamp_millis() == entry.last_modified.timestamp_millis();
            let same_md5 = self.src.etag_is_md5()
                && dst.etag_is_md5()
                && d.size == entry.size
                && d.e_tag.is_some()
                && d.e_tag == entry.e_tag
                && !d.e_tag.as_deref().unwrap_or_default().contains('-');
            if same_local || same_md5 {
                return Ok((Some(0), None));
            }
        }
        copy_object(&self.src, dst, entry, &self.job)
            .await
            .map(|n| (Some(n), None))
    }
}

/// Whether a key passes a policy's filters and `since`.
pub(crate) fn key_wanted(policy: &Policy, key: &str, modified_ms: i64) -> bool {
    policy.filter.matches(key)
        && policy
            .since
            .is_none_or(|s| modified_ms >= s.timestamp_millis())
}

/// The mass-delete guard: a percentage never holds a pass of [`GUARD_FLOOR`] deletes or
/// fewer; a count is exact.
pub(crate) fn guard_allows(max: &MaxDelete, deletes: u64, total: u64) -> bool {
    match max {
        MaxDelete::Percent(_) if deletes <= GUARD_FLOOR => true,
        m => m.allows(deletes, total),
    }
}

/// 1 s, 2 s, 4 s … up to five minutes, with up to 25 % jitter so retries spread out.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(1u64 << attempt.saturating_sub(1).min(9)).min(MAX_BACKOFF);
    let jitter = rand::random::<u64>() % (base.as_millis() as u64 / 4 + 1);
    base + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_floor_and_counts() {
        let pct = MaxDelete::Percent(10.0);
        assert!(guard_allows(&pct, 1, 5), "small stores may lose one object");
        assert!(guard_allows(&pct, 10, 20));
        assert!(!guard_allows(&pct, 11, 20));
        assert!(guard_allows(&pct, 11, 200));
        assert!(!guard_allows(&MaxDelete::Count(3), 4, 1000));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(1) >= Duration::from_secs(1) && backoff(1) < Duration::from_secs(2));
        assert!(backoff(4) >= Duration::from_secs(8));
        assert!(backoff(40) <= MAX_BACKOFF + MAX_BACKOFF / 4);
    }
}
