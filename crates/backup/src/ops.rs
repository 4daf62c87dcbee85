//! The backup operations: take a point, list points, restore, verify, prune, drill.
//! Each lists or checks what it can asynchronously, then runs rustic_core on a
//! blocking thread.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use georep_api::{
    BackupDrillReport, Point, PointReport, PruneDecision, PruneReport, RestoreReport, VerifyReport,
};
use georep_core::{Filter, Retention};
use georep_storage::{ListRole, ObjectReader, StorageError, Store};
use rustic_core::jiff::{tz::TimeZone, Span, Timestamp, Zoned};
use rustic_core::repofile::{Node, SnapshotFile};
use rustic_core::{
    BackupOptions, CheckOptions, IndexedFull, KeepOptions, LsOptions, PruneOptions, Repository,
    SnapshotOptions,
};

use crate::error::{BackupError, Result};
use crate::repo::RepoSpec;
use crate::source::StoreSource;

/// The host every georep point is recorded under; with the backup's name as label and
/// `/` as path it makes the snapshot group that finds the parent point.
pub const HOST: &str = "georep";

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackupError::Task(e.to_string()))?
}

fn zoned(t: DateTime<Utc>) -> Result<Zoned> {
    Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32)
        .map(|ts| ts.to_zoned(TimeZone::UTC))
        .map_err(|e| BackupError::Invalid(format!("time {t} is out of range: {e}")))
}

fn rfc3339(unix: i64) -> String {
    DateTime::<Utc>::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// A snapshot as the API shows it.
pub(crate) fn point_of(s: &SnapshotFile) -> Point {
    let unix = s.time.timestamp().as_second();
    let sum = s.summary.as_ref();
    Point {
        id: s.id.to_hex().to_string(),
        time: rfc3339(unix),
        unix,
        files: sum.map_or(0, |m| m.total_files_processed),
        size: sum.map_or(0, |m| m.total_bytes_processed),
        data_added: sum.map_or(0, |m| m.data_added),
        files_new: sum.map_or(0, |m| m.files_new),
        files_changed: sum.map_or(0, |m| m.files_changed),
    }
}

fn ms(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

/// Lists a store (filtered), keeping what cannot be listed as skipped keys.
async fn list_source(
    name: &str,
    store: &Store,
    filter: &Filter,
) -> Result<(Vec<georep_storage::Entry>, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let mut list = store.list(ListRole::Source);
    while let Some(e) = list.next().await {
        match e {
            Ok(e) if filter.matches(&e.key) => out.push(e),
            Ok(_) => {}
            Err(StorageError::Skipped { key, detail, .. }) => skipped.push((key, detail)),
            Err(StorageError::Unlisted { detail, .. }) => {
                tracing::warn!(backup = name, "{detail}");
            }
            Err(source) => {
                return Err(BackupError::Store {
                    what: format!("backup '{name}': cannot list the source"),
                    source,
                })
            }
        }
    }
    Ok((out, skipped))
}

/// Takes one point of `source` now (or at `time`, for tests of retention); creates the
/// repository on the first point. Only objects that differ from the last point (size,
/// mtime, ETag) are read.
///
/// An object that changes while it is read is left out by rustic; a second and third
/// point follow at once (reading only what is still missing, the parent has the rest),
/// and a partial point superseded by a complete one is forgotten. What is still missing
/// after that, and keys that cannot be a path in a point, make the run
/// [`BackupError::Partial`] (the point is kept).
pub async fn run_point(
    spec: &RepoSpec,
    source: Arc<Store>,
    filter: &Filter,
    time: Option<DateTime<Utc>>,
) -> Result<PointReport> {
    const ATTEMPTS: u32 = 3;
    let started = Instant::now();
    let s = spec.clone();
    let lock = Arc::new(blocking(move || s.lock(false)).await?);
    let mut exists = spec.probe().await?;
    let rt = tokio::runtime::Handle::current();
    let (mut files_read, mut bytes_read, mut initialized) = (0, 0, false);
    let mut superseded: Option<rustic_core::repofile::SnapshotId> = None;
    for attempt in 0..ATTEMPTS {
        let (listed, mut skipped) = list_source(&spec.name, &source, filter).await?;
        let (src, bad_keys) = StoreSource::new(listed, source.clone(), rt.clone());
        skipped.extend(bad_keys.into_iter().map(|(k, w)| (k, w.to_string())));
        for (key, why) in &skipped {
            tracing::warn!(backup = %spec.name, key, why, "object not in the point");
        }
        let stats = src.stats.clone();
        let when = match time {
            Some(t) => zoned(t + chrono::Duration::seconds(i64::from(attempt)))?,
            None => Timestamp::now().to_zoned(TimeZone::UTC),
        };
        let (s, rt2, lock2, replace) = (spec.clone(), rt.clone(), lock.clone(), superseded);
        let stats2 = stats.clone();
        let (snap, created) = blocking(move || {
            let _held = lock2;
            let shown = s.shown();
            let err = |what: &'static str| {
                let shown = shown.clone();
                move |e| BackupError::from_rustic(&shown, what, e)
            };
            let (repo, created) = s.open(&rt2, exists, true)?;
            let repo = repo.to_indexed_ids().map_err(err("read the index"))?;
            let snap = SnapshotOptions::default()
                .host(Some(HOST.to_string()))
                .label(Some(s.name.clone()))
                .time(Some(when))
                .to_snapshot()
                .map_err(err("start the point"))?;
            let snap = repo
                .archive(&BackupOptions::default(), &src, snap, &[PathBuf::from("/")])
                .map_err(err("take the point"))?;
            // The partial point before this complete one only adds clutter.
            if let Some(old) = replace.filter(|_| !s.append_only) {
                if stats2.failed.load(Ordering::Relaxed) == 0 {
                    repo.delete_snapshots(&[old])
                        .map_err(err("forget the partial point"))?;
                }
            }
            Ok((snap, created))
        })
        .await?;
        exists = true;
        initialized |= created;
        files_read += stats.files.load(Ordering::Relaxed);
        bytes_read += stats.bytes.load(Ordering::Relaxed);
        let failed = stats.failed.load(Ordering::Relaxed);
        if failed > 0 && attempt + 1 < ATTEMPTS {
            tracing::info!(backup = %spec.name, failed, "objects changed while the point was taken; taking them again");
            superseded = Some(snap.id);
            continue;
        }
        if failed > 0 || !skipped.is_empty() {
            let first = stats
                .first_failure
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .or_else(|| skipped.first().map(|(k, w)| format!("{k}: {w}")))
                .unwrap_or_default();
            return Err(BackupError::Partial {
                failed,
                skipped: skipped.len() as u64,
                first,
                point: snap.id.to_hex().to_string(),
            });
        }
        return Ok(PointReport {
            backup: spec.name.clone(),
            point: point_of(&snap),
            files_read,
            bytes_read,
            duration_ms: ms(started),
            initialized,
        });
    }
    Err(BackupError::Task("no attempt was made".into()))
}

/// The backup's points, oldest first.
pub async fn points(spec: &RepoSpec) -> Result<Vec<Point>> {
    Ok(snapshots(spec).await?.iter().map(point_of).collect())
}

async fn snapshots(spec: &RepoSpec) -> Result<Vec<SnapshotFile>> {
    let exists = spec.probe().await?;
    let rt = tokio::runtime::Handle::current();
    let s = spec.clone();
    blocking(move || {
        let (repo, _) = s.open(&rt, exists, false)?;
        let mut all = repo
            .get_all_snapshots()
            .map_err(|e| BackupError::from_rustic(&s.shown(), "list the points", e))?;
        all.retain(|p| p.label == s.name);
        all.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(all)
    })
    .await
}

/// Which point to restore.
#[derive(Debug, Clone)]
pub enum PointSel {
    Latest,
    /// A snapshot id or a unique prefix of one.
    Id(String),
    /// The newest point taken at or before this time.
    At(DateTime<Utc>),
}

fn select(spec: &RepoSpec, all: &[SnapshotFile], sel: &PointSel) -> Result<SnapshotFile> {
    let none = |point: String| BackupError::NoSuchPoint {
        repo: spec.shown(),
        point,
    };
    match sel {
        PointSel::Latest => all.last().cloned().ok_or_else(|| none("latest".into())),
        PointSel::Id(id) => {
            let hits: Vec<_> = all
                .iter()
                .filter(|s| s.id.to_hex().to_string().starts_with(id.as_str()))
                .collect();
            match hits.as_slice() {
                [one] => Ok((*one).clone()),
                [] => Err(none(id.clone())),
                _ => Err(BackupError::Invalid(format!(
                    "point '{id}' is ambiguous ({} points start with it); give more digits",
                    hits.len()
                ))),
            }
        }
        PointSel::At(t) => all
            .iter()
            .rev()
            .find(|s| s.time.timestamp().as_second() <= t.timestamp())
            .cloned()
            .ok_or_else(|| none(format!("at or before {}", t.to_rfc3339()))),
    }
}

/// Writes into a channel that feeds one object's upload.
struct ChanWriter {
    tx: tokio::sync::mpsc::Sender<georep_storage::Result<Bytes>>,
    buf: BytesMut,
    /// Only drills compare hashes; a plain restore does not pay for one.
    hash: Option<blake3::Hasher>,
}

impl ChanWriter {
    const CHUNK: usize = 1 << 20;

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the upload stopped"))
    }
}

impl std::io::Write for ChanWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Some(h) = self.hash.as_mut() {
            h.update(b);
        }
        self.buf.extend_from_slice(b);
        if self.buf.len() >= Self::CHUNK {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A local writer that counts (and for drills hashes) what passes through it.
struct Counted {
    inner: georep_storage::LocalWriter,
    n: u64,
    hash: Option<blake3::Hasher>,
}

impl std::io::Write for Counted {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.n += n as u64;
        if let Some(h) = self.hash.as_mut() {
            h.update(&b[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One restored object: its key, size and (for drills) content hash.
type Restored = (String, u64, Option<blake3::Hash>);

/// Streams one file of the point into `to`: the object appears whole or not at all.
fn restore_one<S: IndexedFull + Sync>(
    repo: &Repository<S>,
    shown: &str,
    rt: &tokio::runtime::Handle,
    to: &Arc<Store>,
    (key, node): (&str, &Node),
    hashed: bool,
) -> Result<Restored> {
    let size = node.meta.size;
    let last_modified = node
        .meta
        .mtime
        .and_then(|t| {
            DateTime::<Utc>::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
        })
        .unwrap_or_else(Utc::now);
    // A local folder is written here, on this thread, without the runtime in between.
    if let Some(writer) = to.local_writer(key) {
        let store_err = |source| BackupError::Store {
            what: format!("cannot write '{key}' to {}", to.name()),
            source,
        };
        let mut w = Counted {
            inner: writer.map_err(store_err)?,
            n: 0,
            hash: hashed.then(blake3::Hasher::new),
        };
        repo.dump(node, &mut w)
            .map_err(|e| BackupError::from_rustic(shown, "read the point", e))?;
        // Dropping the writer removes the temp file: nothing short becomes the object.
        if w.n != size {
            return Err(BackupError::Store {
                what: format!("restore of '{key}'"),
                source: StorageError::Verify(format!(
                    "{} of the point's {size} bytes came out of the repository",
                    w.n
                )),
            });
        }
        let hash = w.hash.as_ref().map(blake3::Hasher::finalize);
        w.inner.commit(Some(last_modified)).map_err(store_err)?;
        return Ok((key.to_string(), size, hash));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<georep_storage::Result<Bytes>>(4);
    // The upload commits only if exactly the point's size came through: a dump that
    // failed, panicked or ended early fails it instead of leaving a short object.
    let stream =
        futures::stream::unfold((rx, 0u64, false), move |(mut rx, seen, done)| async move {
            if done {
                return None;
            }
            match rx.recv().await {
                Some(Ok(b)) => {
                    let seen = seen + b.len() as u64;
                    Some((Ok(b), (rx, seen, false)))
                }
                Some(Err(e)) => Some((Err(e), (rx, seen, true))),
                None if seen != size => Some((
                    Err(StorageError::Verify(format!(
                        "{seen} of the point's {size} bytes came out of the repository"
                    ))),
                    (rx, seen, true),
                )),
                None => None,
            }
        })
        .boxed();
    let reader = ObjectReader {
        size,
        last_modified,
        e_tag: None,
        attributes: Default::default(),
        stream,
    };
    let (store, k) = (to.clone(), key.to_string());
    let put = rt.spawn(async move { store.put(&k, reader, 8 << 20, 4).await });
    let mut w = ChanWriter {
        tx,
        buf: BytesMut::with_capacity(ChanWriter::CHUNK),
        hash: hashed.then(blake3::Hasher::new),
    };
    let dumped = repo
        .dump(node, &mut w)
        .map_err(|e| BackupError::from_rustic(shown, "read the point", e))
        .and_then(|()| {
            std::io::Write::flush(&mut w)
                .map_err(|e| BackupError::Invalid(format!("restore of '{key}': {e}")))
        });
    let hash = w.hash.as_ref().map(blake3::Hasher::finalize);
    // A failed read must not commit a short object: the upload is failed on purpose.
    if let Err(e) = &dumped {
        let _ = w.tx.blocking_send(Err(StorageError::Verify(format!(
            "restore of '{key}' stopped: {e}"
        ))));
    }
    drop(w);
    let put = rt
        .block_on(put)
        .map_err(|e| BackupError::Task(e.to_string()))?;
    dumped?;
    put.map_err(|source| BackupError::Store {
        what: format!("cannot write '{key}' to {}", to.name()),
        source,
    })?;
    Ok((key.to_string(), size, hash))
}

/// Restores `files` with `workers` threads; the first failure stops the rest.
fn restore_all<S: IndexedFull + Sync>(
    repo: &Repository<S>,
    shown: &str,
    rt: &tokio::runtime::Handle,
    to: &Arc<Store>,
    files: Vec<(String, Node)>,
    (workers, hashed): (usize, bool),
) -> Result<Vec<Restored>> {
    let queue = Mutex::new(files.into_iter());
    let done = Mutex::new(Vec::new());
    let failed: Mutex<Option<BackupError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                if failed.lock().map(|f| f.is_some()).unwrap_or(true) {
                    return;
                }
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some((key, node)) = next else { return };
                match restore_one(repo, shown, rt, to, (&key, &node), hashed) {
                    Ok(r) => {
                        if let Ok(mut d) = done.lock() {
                            d.push(r);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok(done.into_inner().unwrap_or_default())
}

/// The files of a point (keys relative to the point's root), filtered.
fn files_of<S: IndexedFull>(
    repo: &Repository<S>,
    shown: &str,
    snap: &SnapshotFile,
    include: &Filter,
) -> Result<Vec<(String, Node)>> {
    let err = |what: &'static str| move |e| BackupError::from_rustic(shown, what, e);
    let root = repo
        .node_from_snapshot_and_path(snap, "")
        .map_err(err("read the point"))?;
    let mut out = Vec::new();
    for item in repo
        .ls(&root, &LsOptions::default())
        .map_err(err("list the point"))?
    {
        let (path, node) = item.map_err(err("list the point"))?;
        if !node.is_file() {
            continue;
        }
        let key = path
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("/");
        if include.matches(&key) {
            out.push((key, node));
        }
    }
    Ok(out)
}

/// Restores a point into any store.
pub async fn restore(
    spec: &RepoSpec,
    sel: &PointSel,
    to: Arc<Store>,
    include: &Filter,
    workers: usize,
) -> Result<RestoreReport> {
    Ok(restore_inner(spec, sel, to, include, workers, false)
        .await?
        .0)
}

async fn restore_inner(
    spec: &RepoSpec,
    sel: &PointSel,
    to: Arc<Store>,
    include: &Filter,
    workers: usize,
    hashed: bool,
) -> Result<(RestoreReport, Vec<Restored>, Point)> {
    let started = Instant::now();
    let exists = spec.probe().await?;
    let rt = tokio::runtime::Handle::current();
    let (s, sel, include, target) = (spec.clone(), sel.clone(), include.clone(), to.clone());
    let (restored, point) = blocking(move || {
        let _lock = s.lock(false)?;
        let shown = s.shown();
        let (repo, _) = s.open(&rt, exists, false)?;
        let mut all = repo
            .get_all_snapshots()
            .map_err(|e| BackupError::from_rustic(&shown, "list the points", e))?;
        all.retain(|p| p.label == s.name);
        all.sort_by(|a, b| a.time.cmp(&b.time));
        let snap = select(&s, &all, &sel)?;
        let repo = repo
            .to_indexed()
            .map_err(|e| BackupError::from_rustic(&shown, "read the index", e))?;
        let files = files_of(&repo, &shown, &snap, &include)?;
        let restored = restore_all(&repo, &shown, &rt, &target, files, (workers, hashed))?;
        Ok((restored, point_of(&snap)))
    })
    .await?;
    let report = RestoreReport {
        backup: spec.name.clone(),
        point: point.id.clone(),
        to: to.url().to_string(),
        files: restored.len() as u64,
        bytes: restored.iter().map(|r| r.1).sum(),
        duration_ms: ms(started),
    };
    Ok((report, restored, point))
}

/// Checks the repository's structure and, with `read_data`, every pack's content.
pub async fn verify(spec: &RepoSpec, read_data: bool) -> Result<VerifyReport> {
    let started = Instant::now();
    let exists = spec.probe().await?;
    let rt = tokio::runtime::Handle::current();
    let s = spec.clone();
    let (points, errors, warnings) = blocking(move || {
        let _lock = s.lock(false)?;
        let shown = s.shown();
        let (repo, _) = s.open(&rt, exists, false)?;
        let points = repo
            .get_all_snapshots()
            .map_err(|e| BackupError::from_rustic(&shown, "list the points", e))?
            .iter()
            .filter(|p| p.label == s.name)
            .count() as u64;
        let results = repo
            .check(CheckOptions::default().read_data(read_data))
            .map_err(|e| BackupError::from_rustic(&shown, "check", e))?;
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        for (level, finding) in &results.0 {
            // rustic_core does not export the level's type; its name is stable.
            if format!("{level:?}") == "Error" {
                errors.push(finding.to_string());
            } else {
                warnings.push(finding.to_string());
            }
        }
        Ok((points, errors, warnings))
    })
    .await?;
    Ok(VerifyReport {
        backup: spec.name.clone(),
        points,
        read_data,
        errors,
        warnings,
        duration_ms: ms(started),
    })
}

fn span(c: &georep_core::CalendarSpan) -> Result<Span> {
    Span::new()
        .try_years(i64::from(c.years))
        .and_then(|s| s.try_months(i64::from(c.months)))
        .and_then(|s| s.try_weeks(i64::from(c.weeks)))
        .and_then(|s| s.try_days(i64::from(c.days)))
        .and_then(|s| s.try_hours(i64::from(c.hours)))
        .map_err(|e| BackupError::Invalid(format!("retention span {c} is too long: {e}")))
}

/// The retention bands as restic's `forget --keep-within*`; `None` keeps every point.
pub(crate) fn keep_options(r: &Retention) -> Result<Option<KeepOptions>> {
    if *r == Retention::default() {
        return Ok(None);
    }
    let band = |b: &Option<georep_core::CalendarSpan>| b.as_ref().map(span).transpose();
    let mut k = KeepOptions::default();
    k.keep_within = band(&r.within)?;
    k.keep_within_hourly = band(&r.hourly)?;
    k.keep_within_daily = band(&r.daily)?;
    k.keep_within_weekly = band(&r.weekly)?;
    k.keep_within_monthly = band(&r.monthly)?;
    k.keep_within_yearly = band(&r.yearly)?;
    Ok(Some(k))
}

/// Which points `retention` keeps at `now`, newest first.
pub(crate) fn decide(
    all: Vec<SnapshotFile>,
    retention: &Retention,
    now: &Zoned,
) -> Result<Vec<(SnapshotFile, bool, Vec<String>)>> {
    let Some(keep) = keep_options(retention)? else {
        let mut all = all;
        all.reverse();
        return Ok(all
            .into_iter()
            .map(|s| (s, true, vec!["no retention".to_string()]))
            .collect());
    };
    let decided = keep
        .apply(all, now)
        .map_err(|e| BackupError::Invalid(format!("retention: {e}")))?;
    Ok(decided
        .into_iter()
        .map(|f| (f.snapshot, f.keep, f.reasons))
        .collect())
}

/// Applies retention: forgets the points no band keeps, then deletes the data only they
/// referenced. A point any band keeps keeps all its data.
pub async fn prune(
    spec: &RepoSpec,
    retention: &Retention,
    dry_run: bool,
    now: Option<DateTime<Utc>>,
) -> Result<PruneReport> {
    let started = Instant::now();
    let exists = spec.probe().await?;
    let now = now
        .map(zoned)
        .transpose()?
        .unwrap_or_else(|| Timestamp::now().to_zoned(TimeZone::UTC));
    let rt = tokio::runtime::Handle::current();
    let (s, retention) = (spec.clone(), *retention);
    blocking(move || {
        let shown = s.shown();
        let err = |what: &'static str| {
            let shown = shown.clone();
            move |e| BackupError::from_rustic(&shown, what, e)
        };
        let _lock = s.lock(!dry_run)?;
        let (repo, _) = s.open(&rt, exists, false)?;
        let mut all = repo.get_all_snapshots().map_err(err("list the points"))?;
        all.retain(|p| p.label == s.name);
        // Bands count back from the newest point: one dated in the future (a wrong
        // clock) would make every real point look old.
        let limit = now.timestamp().as_second() + 3600;
        if let Some(f) = all.iter().find(|p| p.time.timestamp().as_second() > limit) {
            return Err(BackupError::Invalid(format!(
                "point {} is dated {}, in the future: retention would count from it and forget real points; fix the clock of the machine that took it, or forget it with restic",
                &*f.id.to_hex(),
                rfc3339(f.time.timestamp().as_second())
            )));
        }
        let decided = decide(all, &retention, &now)?;
        let gone: Vec<_> = decided.iter().filter(|d| !d.1).map(|d| d.0.id).collect();
        let points = decided
            .iter()
            .map(|(snap, keep, reasons)| PruneDecision {
                id: snap.id.to_hex().to_string(),
                time: rfc3339(snap.time.timestamp().as_second()),
                keep: *keep,
                reasons: reasons.clone(),
            })
            .collect();
        if s.append_only && !dry_run {
            return Err(BackupError::AppendOnly {
                repo: shown.clone(),
                what: "prune",
            });
        }
        // rustic's two-phase delete: unreferenced packs are marked and removed by a
        // prune at least 23 h later, so a point written from another machine (which
        // the local lock does not see) never loses its packs.
        let mut opts = PruneOptions::default();
        if dry_run {
            opts = opts.ignore_snaps(gone.clone());
        } else if !gone.is_empty() {
            repo.delete_snapshots(&gone).map_err(err("forget points"))?;
        }
        let plan = repo.prune_plan(&opts).map_err(err("plan the prune"))?;
        let st = &plan.stats;
        let (packs_removed, bytes_removed, packs_repacked) = (
            st.packs_to_delete.remove,
            st.size_to_delete.remove,
            st.packs.repack,
        );
        if !dry_run {
            repo.prune(&opts, plan).map_err(err("prune"))?;
        }
        Ok(PruneReport {
            backup: s.name.clone(),
            dry_run,
            points,
            packs_removed,
            bytes_removed,
            packs_repacked,
            duration_ms: ms(started),
        })
    })
    .await
}

/// Restores a point into an empty scratch store, reads every object back and compares
/// it with what the point holds; reports the time it took (RTO) and the point's age
/// (RPO).
pub async fn drill(
    spec: &RepoSpec,
    sel: &PointSel,
    to: Arc<Store>,
    workers: usize,
) -> Result<BackupDrillReport> {
    let began = Utc::now();
    let started = Instant::now();
    let mut probe = to.list(ListRole::Destination);
    if let Some(Ok(e)) = probe.next().await {
        return Err(BackupError::Invalid(format!(
            "the drill's scratch store {} is not empty (it holds '{}'); give an empty folder, container or prefix",
            to.url(),
            e.key
        )));
    }
    drop(probe);
    let (restore, restored, point) =
        restore_inner(spec, sel, to.clone(), &Filter::default(), workers, true).await?;
    let mut mismatches = Vec::new();
    let checks = futures::stream::iter(restored.into_iter().map(|(key, size, hash)| {
        let to = to.clone();
        async move {
            let got = async {
                let r = to.get(&key, 1 << 20).await?;
                let mut h = blake3::Hasher::new();
                let mut n = 0u64;
                let mut s = r.stream;
                while let Some(b) = s.next().await {
                    let b = b?;
                    n += b.len() as u64;
                    h.update(&b);
                }
                Ok::<_, StorageError>((n, h.finalize()))
            }
            .await;
            match got {
                Ok((n, h)) if n == size && Some(h) == hash => None,
                Ok((n, _)) => Some(format!(
                    "{key}: differs from the point ({n} bytes read back, {size} in the point)"
                )),
                Err(e) => Some(format!("{key}: cannot read it back: {e}")),
            }
        }
    }))
    .buffer_unordered(workers.max(1))
    .collect::<Vec<_>>()
    .await;
    let mut verified = 0;
    for c in checks {
        match c {
            None => verified += 1,
            Some(m) => mismatches.push(m),
        }
    }
    mismatches.sort();
    let rpo = (began.timestamp() - point.unix).max(0) as f64;
    Ok(BackupDrillReport {
        backup: spec.name.clone(),
        passed: mismatches.is_empty() && verified == point.files,
        point,
        restore,
        verified_files: verified,
        mismatches,
        rto_seconds: started.elapsed().as_secs_f64(),
        rpo_seconds: rpo,
    })
}

/// Points, content bytes over all points and bytes held by the repository's packs.
pub async fn stats(spec: &RepoSpec) -> Result<(Vec<Point>, u64)> {
    let points = points(spec).await?;
    let data = spec
        .url
        .join("data")
        .map_err(|e| BackupError::Invalid(e.to_string()))?;
    let store = Store::open(&data, &spec.opts).map_err(|source| BackupError::Store {
        what: format!("backup '{}': cannot open the repository", spec.name),
        source,
    })?;
    let mut bytes = 0;
    let mut list = store.list(ListRole::Destination);
    while let Some(e) = list.next().await {
        match e {
            Ok(e) => bytes += e.size,
            Err(StorageError::NotFound { .. }) | Err(StorageError::ContainerNotFound { .. }) => {
                break
            }
            Err(_) => {}
        }
    }
    Ok((points, bytes))
}
