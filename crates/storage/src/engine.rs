//! The transfer engine: a streaming merge of two key-ordered listings, and the copies,
//! checks and deletes that make the destination match.
//!
//! Memory stays bounded whatever the object count: listings are consumed page by page,
//! at most `transfers + checkers` objects are in flight, and deletions wait in a spill
//! file until both listings are complete (so a partial or failed listing never deletes).

use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{self, Either, FutureExt};
use futures::stream::{self, BoxStream, StreamExt};
use georep_core::{Filter, MaxDelete};
use md5::{Digest, Md5};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::error::{Result, StorageError};
use crate::limiter::RateLimiter;
use crate::store::{Entry, ListRole, ObjectReader, Store};

/// Which command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Copy,
    Sync,
    Check,
}

/// When an object that exists at both ends is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// When size differs, the source is newer, or (with `checksum`) content differs.
    #[default]
    Different,
    Always,
    Never,
    IfNewer,
}

/// Everything a run needs besides its two stores.
#[derive(Debug, Clone)]
pub struct JobOptions {
    pub mode: Mode,
    pub filter: Filter,
    pub checksum: bool,
    pub overwrite: Overwrite,
    /// `sync` only: remove destination objects the source lacks.
    pub delete: bool,
    pub max_delete: Option<MaxDelete>,
    pub dry_run: bool,
    pub transfers: usize,
    pub checkers: usize,
    pub bwlimit: Option<u64>,
    /// Objects above this size go up in parts of this size.
    pub part_size: usize,
    /// Parts in flight per object.
    pub part_concurrency: usize,
    /// Tries per object for retryable failures (verification, transient IO).
    pub attempts: u32,
    /// Compare the MD5 of the bytes sent with the destination's ETag (S3, GCS). Off for
    /// buckets with SSE-KMS or SSE-C encryption, whose ETags are not MD5s.
    pub verify_dest_etag: bool,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Copy,
            filter: Filter::default(),
            checksum: false,
            overwrite: Overwrite::Different,
            delete: false,
            max_delete: None,
            dry_run: false,
            transfers: 16,
            checkers: 16,
            bwlimit: None,
            part_size: 8 << 20,
            part_concurrency: 2,
            attempts: 3,
            verify_dest_etag: true,
        }
    }
}

/// Live counters for a progress display; updated as the run goes.
#[derive(Debug, Default)]
pub struct Progress {
    pub listed: AtomicU64,
    pub checked: AtomicU64,
    pub to_copy: AtomicU64,
    pub bytes_to_copy: AtomicU64,
    pub copied: AtomicU64,
    pub bytes_done: AtomicU64,
    pub failed: AtomicU64,
    pub deleted: AtomicU64,
    pub listing_done: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffKind {
    Missing,
    Extra,
    Differs,
}

#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub key: String,
    pub kind: DiffKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub key: String,
    pub error: String,
}

/// A change a `--dry-run` would have made.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub key: String,
    pub action: &'static str,
    pub size: u64,
}

/// What a run did; the CLI prints it as text or JSON.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checked: u64,
    pub copied: u64,
    pub skipped: u64,
    pub deleted: u64,
    pub failed: u64,
    pub bytes_copied: u64,
    pub elapsed_secs: f64,
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differences: Option<Vec<Difference>>,
    pub failures: Vec<Failure>,
    /// Keys left alone because this side cannot hold or reach them (a name with a
    /// control character, a symbolic link on the path, keys `a` and `a/b` on a folder).
    /// Each is reported once per run; they do not hold back deletes of other keys.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_keys: Vec<Failure>,
    /// Objects listed but gone when read (deleted meanwhile, or an empty folder marker).
    pub vanished: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned: Option<Vec<Planned>>,
    /// Why deletions were refused (mass-delete guard, incomplete listing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_refused: Option<String>,
    /// Deletes not done because the key is (or lies below) a source name that was
    /// skipped: what that name holds is unknown. Other deletes go ahead.
    #[serde(skip_serializing_if = "is_zero")]
    pub deletes_held: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Report {
    /// True when the run found nothing wrong: no failures, no differences (check), no
    /// refused deletes.
    pub fn is_clean(&self) -> bool {
        self.failed == 0
            && self.skipped_keys.is_empty()
            && self.delete_refused.is_none()
            && self.differences.as_ref().is_none_or(|d| d.is_empty())
    }
}

/// One step of the merge.
enum Item {
    SrcOnly(Entry),
    DstOnly(Entry),
    Both(Entry, Entry),
    /// A listing error that affects one path, not the whole store.
    ListError(StorageError),
}

/// What processing one item produced.
enum Outcome {
    Copied {
        bytes: u64,
    },
    Skipped,
    Failed(Failure),
    Differs(Difference),
    Planned(Planned),
    Delete(Entry),
    Nothing,
    /// Listed, but gone from the source when read.
    Vanished,
    ListFailure(StorageError),
    /// The whole store became unusable (credentials revoked, endpoint down): stop.
    Fatal(StorageError),
}

struct Side {
    stream: BoxStream<'static, Result<Entry>>,
    source: bool,
    head: Option<Entry>,
    /// The previous key, for the order check (reused buffer).
    last: String,
    done: bool,
    count: u64,
}

/// Shared state of a merge: listing health that gates deletion.
#[derive(Default)]
struct MergeHealth {
    out_of_order: AtomicBool,
    incomplete: AtomicBool,
    src_count: AtomicU64,
    dst_count: AtomicU64,
    /// Why part of the source was not listed (links not followed).
    unlisted: Mutex<Option<String>>,
    /// Source entries skipped by name: how many, and the first with why.
    skipped_source: Mutex<(u64, Option<String>)>,
    /// Their keys: a delete of one of them (or of a key below one) is held back.
    protected: Mutex<Vec<String>>,
}

/// How many skipped source names are remembered one by one; past that, every delete
/// of the run is held.
const MAX_PROTECTED: usize = 10_000;

impl Side {
    fn new(stream: BoxStream<'static, Result<Entry>>, source: bool) -> Self {
        Self {
            stream,
            source,
            head: None,
            last: String::new(),
            done: false,
            count: 0,
        }
    }

    /// Fills `head` with the next entry that passes the filter. A non-fatal listing
    /// error is returned as `Ok(Some(err))` for the caller to record.
    async fn fill(
        &mut self,
        filter: &Filter,
        health: &MergeHealth,
    ) -> Result<Option<StorageError>> {
        while self.head.is_none() && !self.done {
            match self.stream.next().await {
                None => self.done = true,
                Some(Err(e)) if e.is_fatal_for_store() => return Err(e),
                // Part of the source unseen on purpose: hold deletes, report it once.
                Some(Err(StorageError::Unlisted { detail, .. })) => {
                    health.incomplete.store(true, Ordering::Relaxed);
                    if let Ok(mut why) = health.unlisted.lock() {
                        why.get_or_insert(detail);
                    }
                }
                // One destination entry no store can hold: reported; deletes go on. A
                // source entry skipped may exist at an object-store destination under
                // the same key, so it holds deletes back.
                Some(Err(e @ StorageError::Skipped { .. })) => {
                    if self.source {
                        if let (Ok(mut sk), StorageError::Skipped { key, detail, .. }) =
                            (health.skipped_source.lock(), &e)
                        {
                            sk.0 += 1;
                            sk.1.get_or_insert_with(|| format!("'{key}': {detail}"));
                        }
                        let kept = match (health.protected.lock(), &e) {
                            (Ok(mut p), StorageError::Skipped { key, .. })
                                if p.len() < MAX_PROTECTED =>
                            {
                                p.push(key.clone());
                                true
                            }
                            _ => false,
                        };
                        if !kept {
                            health.incomplete.store(true, Ordering::Relaxed);
                        }
                    }
                    return Ok(Some(e));
                }
                Some(Err(e)) => {
                    health.incomplete.store(true, Ordering::Relaxed);
                    return Ok(Some(e));
                }
                Some(Ok(entry)) => {
                    if !filter.matches(&entry.key) {
                        continue;
                    }
                    if self.count > 0 && entry.key <= self.last {
                        health.out_of_order.store(true, Ordering::Relaxed);
                    }
                    self.last.clear();
                    self.last.push_str(&entry.key);
                    self.count += 1;
                    self.head = Some(entry);
                }
            }
        }
        Ok(None)
    }
}

/// The merge of two ordered listings as a stream of items; a fatal listing error ends it.
fn merge(
    src: BoxStream<'static, Result<Entry>>,
    dst: BoxStream<'static, Result<Entry>>,
    filter: Filter,
    health: Arc<MergeHealth>,
    progress: Arc<Progress>,
) -> BoxStream<'static, Result<Item>> {
    let state = (
        Side::new(src, true),
        Side::new(dst, false),
        filter,
        health,
        progress,
        false,
    );
    stream::unfold(
        state,
        |(mut s, mut d, filter, health, progress, stop)| async move {
            if stop {
                return None;
            }
            for from_src in [true, false] {
                let side = if from_src { &mut s } else { &mut d };
                let filled = side.fill(&filter, &health).await;
                match filled {
                    Ok(None) => {}
                    Ok(Some(e)) => {
                        return Some((
                            Ok(Item::ListError(e)),
                            (s, d, filter, health, progress, false),
                        ))
                    }
                    Err(e) => return Some((Err(e), (s, d, filter, health, progress, true))),
                }
            }
            let item = match (s.head.take(), d.head.take()) {
                (None, None) => {
                    health.src_count.store(s.count, Ordering::Relaxed);
                    health.dst_count.store(d.count, Ordering::Relaxed);
                    progress.listing_done.store(true, Ordering::Relaxed);
                    return None;
                }
                (Some(a), None) => Item::SrcOnly(a),
                (None, Some(b)) => Item::DstOnly(b),
                (Some(a), Some(b)) => match a.key.cmp(&b.key) {
                    std::cmp::Ordering::Less => {
                        d.head = Some(b);
                        Item::SrcOnly(a)
                    }
                    std::cmp::Ordering::Greater => {
                        s.head = Some(a);
                        Item::DstOnly(b)
                    }
                    std::cmp::Ordering::Equal => Item::Both(a, b),
                },
            };
            progress.listed.fetch_add(1, Ordering::Relaxed);
            Some((Ok(item), (s, d, filter, health, progress, false)))
        },
    )
    .boxed()
}

/// Everything a spawned per-object task needs.
struct Ctx {
    src: Arc<Store>,
    dst: Arc<Store>,
    opts: JobOptions,
    limiter: Option<Arc<RateLimiter>>,
    transfers: Semaphore,
    checkers: Semaphore,
    progress: Arc<Progress>,
}

/// Copies one object, once, with the same verification as a run: nothing becomes
/// visible at `dst` unless size (and MD5, where a store gives one) match. The caller
/// owns retries (the replication queue backs off between attempts).
pub async fn copy_object(
    src: &Arc<Store>,
    dst: &Arc<Store>,
    entry: &Entry,
    opts: &JobOptions,
) -> Result<u64> {
    let ctx = Ctx {
        limiter: opts.bwlimit.map(|r| Arc::new(RateLimiter::new(r))),
        transfers: Semaphore::new(1),
        checkers: Semaphore::new(1),
        src: src.clone(),
        dst: dst.clone(),
        opts: opts.clone(),
        progress: Arc::new(Progress::default()),
    };
    copy_once(&ctx, entry).await
}

/// Runs `copy`, `sync` or `check` from `src` to `dst`.
///
/// Returns `Err` only when a whole store is unusable (unreachable, credentials refused,
/// container missing); per-object problems are listed in the report.
pub async fn run(
    src: Arc<Store>,
    dst: Arc<Store>,
    opts: JobOptions,
    progress: Arc<Progress>,
) -> Result<Report> {
    let started = Instant::now();
    if opts.mode != Mode::Check && !opts.dry_run {
        dst.prepare_destination(Some(&src))?;
    }
    let health = Arc::new(MergeHealth::default());
    let items = merge(
        src.list(ListRole::Source),
        dst.list(ListRole::Destination),
        opts.filter.clone(),
        health.clone(),
        progress.clone(),
    );
    let width = opts.transfers.max(1) + opts.checkers.max(1);
    let ctx = Arc::new(Ctx {
        limiter: opts.bwlimit.map(|r| Arc::new(RateLimiter::new(r))),
        transfers: Semaphore::new(opts.transfers.max(1)),
        checkers: Semaphore::new(opts.checkers.max(1)),
        src,
        dst,
        opts,
        progress,
    });
    let mut report = Report {
        dry_run: ctx.opts.dry_run,
        differences: (ctx.opts.mode == Mode::Check).then(Vec::new),
        planned: ctx.opts.dry_run.then(Vec::new),
        ..Default::default()
    };
    let mut deletes = DeleteSpill::new()?;
    let mut outcomes = items
        .map(|item| {
            let step = item.map(|item| plan(&ctx.opts, &ctx.progress, item));
            match step {
                Err(e) => Either::Left(future::ready(Err(e))),
                Ok(Step::Done(o)) => Either::Left(future::ready(Ok(o))),
                Ok(step) => {
                    let task = tokio::spawn(execute(ctx.clone(), step));
                    Either::Right(task.map(|r| {
                        r.map_err(|e| StorageError::Backend {
                            store: "georep".into(),
                            detail: format!("worker task failed: {e}"),
                            retryable: false,
                        })
                    }))
                }
            }
        })
        .buffer_unordered(width);
    while let Some(outcome) = outcomes.next().await {
        match outcome? {
            Outcome::Copied { bytes } => {
                report.copied += 1;
                report.bytes_copied += bytes;
                report.checked += 1;
            }
            Outcome::Skipped => {
                report.skipped += 1;
                report.checked += 1;
            }
            Outcome::Failed(f) => {
                report.failed += 1;
                report.checked += 1;
                ctx.progress.failed.fetch_add(1, Ordering::Relaxed);
                report.failures.push(f);
            }
            Outcome::Differs(d) => {
                report.checked += 1;
                if let Some(list) = report.differences.as_mut() {
                    list.push(d);
                }
            }
            Outcome::Planned(p) => {
                report.checked += 1;
                if let Some(list) = report.planned.as_mut() {
                    list.push(p);
                }
            }
            Outcome::Delete(e) => deletes.push(&e.key)?,
            Outcome::Nothing => report.checked += 1,
            Outcome::Vanished => {
                report.vanished += 1;
                report.checked += 1;
            }
            Outcome::Fatal(e) => return Err(e),
            Outcome::ListFailure(StorageError::Skipped { key, detail, store }) => {
                tracing::warn!(%store, %key, "{detail}");
                report.skipped_keys.push(Failure { key, error: detail });
            }
            Outcome::ListFailure(e) => {
                report.failed += 1;
                ctx.progress.failed.fetch_add(1, Ordering::Relaxed);
                report.failures.push(Failure {
                    key: String::new(),
                    error: e.to_string(),
                });
            }
        }
    }
    drop(outcomes);
    if deletes.count > 0 {
        run_deletes(&ctx, &health, deletes, &mut report).await?;
    }
    if let Some(list) = report.differences.as_mut() {
        list.sort_by(|a, b| a.key.cmp(&b.key));
    }
    if let Some(list) = report.planned.as_mut() {
        list.sort_by(|a, b| a.key.cmp(&b.key).then(a.action.cmp(b.action)));
    }
    report.failures.sort_by(|a, b| a.key.cmp(&b.key));
    report.skipped_keys.sort_by(|a, b| a.key.cmp(&b.key));
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// What one merged key needs: most keys are decided from the listings alone, and only
/// copies and content comparisons go to a task.
enum Step {
    Done(Outcome),
    Transfer(Entry),
    /// Copy when the content differs (`--checksum`).
    CopyIfDifferent(Entry),
    /// `check --checksum` of two same-size objects.
    Compare(Entry),
}

/// Decides a key from the listings alone (no IO).
fn plan(opts: &JobOptions, progress: &Progress, item: Item) -> Step {
    match (opts.mode, item) {
        (_, Item::ListError(e)) => Step::Done(Outcome::ListFailure(e)),
        (Mode::Check, Item::SrcOnly(s)) => {
            Step::Done(Outcome::Differs(diff(s.key, DiffKind::Missing, None)))
        }
        (Mode::Check, Item::DstOnly(d)) => {
            Step::Done(Outcome::Differs(diff(d.key, DiffKind::Extra, None)))
        }
        (Mode::Check, Item::Both(s, d)) => {
            if s.size != d.size {
                let detail = format!("size {} at source, {} at destination", s.size, d.size);
                Step::Done(Outcome::Differs(diff(
                    s.key,
                    DiffKind::Differs,
                    Some(detail),
                )))
            } else if opts.checksum {
                Step::Compare(s)
            } else {
                Step::Done(Outcome::Nothing)
            }
        }
        (_, Item::DstOnly(d)) => Step::Done(if opts.mode == Mode::Sync && opts.delete {
            Outcome::Delete(d)
        } else {
            Outcome::Nothing
        }),
        (_, Item::SrcOnly(s)) => Step::Transfer(s),
        (_, Item::Both(s, d)) => {
            let copy = match opts.overwrite {
                Overwrite::Always => true,
                Overwrite::Never => false,
                Overwrite::IfNewer => newer(&s, &d),
                Overwrite::Different if s.size != d.size => true,
                Overwrite::Different if opts.checksum => return Step::CopyIfDifferent(s),
                Overwrite::Different => newer(&s, &d),
            };
            if copy {
                Step::Transfer(s)
            } else {
                progress.checked.fetch_add(1, Ordering::Relaxed);
                Step::Done(Outcome::Skipped)
            }
        }
    }
}

/// Carries out a step that needs IO.
async fn execute(ctx: Arc<Ctx>, step: Step) -> Outcome {
    match step {
        Step::Done(o) => o,
        Step::Transfer(s) => transfer(&ctx, s).await,
        Step::CopyIfDifferent(s) => match same_content(&ctx, &s.key).await {
            Ok(true) => {
                ctx.progress.checked.fetch_add(1, Ordering::Relaxed);
                Outcome::Skipped
            }
            Ok(false) => transfer(&ctx, s).await,
            Err(e) if e.is_fatal_for_store() => Outcome::Fatal(e),
            Err(e) => failed(s.key, e),
        },
        Step::Compare(s) => match same_content(&ctx, &s.key).await {
            Ok(true) => Outcome::Nothing,
            Ok(false) => Outcome::Differs(diff(
                s.key,
                DiffKind::Differs,
                Some("content differs".into()),
            )),
            Err(e) if e.is_fatal_for_store() => Outcome::Fatal(e),
            Err(e) => failed(s.key, e),
        },
    }
}

/// Whether the source is newer than the destination, to the second: Azure and S3 keep
/// last-modified in whole seconds, local disks in nanoseconds.
fn newer(src: &Entry, dst: &Entry) -> bool {
    src.last_modified.timestamp() > dst.last_modified.timestamp()
}

fn diff(key: String, kind: DiffKind, detail: Option<String>) -> Difference {
    Difference { key, kind, detail }
}

fn failed(key: String, e: StorageError) -> Outcome {
    Outcome::Failed(Failure {
        key,
        error: e.to_string(),
    })
}

/// Copies one object with retries, or plans it in a dry run.
async fn transfer(ctx: &Arc<Ctx>, entry: Entry) -> Outcome {
    let p = &ctx.progress;
    p.checked.fetch_add(1, Ordering::Relaxed);
    if ctx.opts.dry_run {
        return Outcome::Planned(Planned {
            key: entry.key,
            action: "copy",
            size: entry.size,
        });
    }
    p.to_copy.fetch_add(1, Ordering::Relaxed);
    p.bytes_to_copy.fetch_add(entry.size, Ordering::Relaxed);
    let Ok(_permit) = ctx.transfers.acquire().await else {
        return failed(entry.key, StorageError::Verify("engine shut down".into()));
    };
    let mut attempt = 1;
    loop {
        match copy_once(ctx, &entry).await {
            Ok(bytes) => {
                p.copied.fetch_add(1, Ordering::Relaxed);
                return Outcome::Copied { bytes };
            }
            Err(e) if e.is_retryable() && attempt < ctx.opts.attempts => {
                tracing::warn!(key = %entry.key, attempt, error = %e, "copy failed, retrying");
                let base = 200u64 << attempt.min(6);
                let jitter = rand::random::<u64>() % base;
                tokio::time::sleep(Duration::from_millis(base + jitter)).await;
                attempt += 1;
            }
            Err(e) if e.is_fatal_for_store() => return Outcome::Fatal(e),
            Err(e @ StorageError::Skipped { .. }) => return Outcome::ListFailure(e),
            Err(StorageError::NotFound { .. })
                if matches!(
                    ctx.src.head(&entry.key).await,
                    Err(StorageError::NotFound { .. })
                ) =>
            {
                tracing::debug!(key = %entry.key, "gone from the source since it was listed");
                return Outcome::Vanished;
            }
            Err(e) => {
                tracing::warn!(key = %entry.key, error = %e, "copy failed");
                return failed(entry.key, e);
            }
        }
    }
}

/// One attempt: stream from source to destination, verifying size and (where a store
/// gives an MD5 ETag) content before the object becomes visible.
async fn copy_once(ctx: &Ctx, entry: &Entry) -> Result<u64> {
    let (src, dst) = (&ctx.src, &ctx.dst);
    if src.local_root().is_some() && dst.local_root().is_some() {
        if let Some(l) = &ctx.limiter {
            l.acquire(entry.size).await;
        }
        let n = src.copy_local(&entry.key, dst, entry.last_modified).await?;
        ctx.progress.bytes_done.fetch_add(n, Ordering::Relaxed);
        return Ok(n);
    }
    let reader = src.get(&entry.key, 1 << 20).await?;
    let size = reader.size;
    let want_md5 = src.etag_is_md5() || dst.etag_is_md5();
    let src_md5 = if src.etag_is_md5() {
        reader.e_tag.as_deref().and_then(md5_of_etag)
    } else {
        None
    };
    let computed = Arc::new(Mutex::new(None));
    let stream = verify_stream(
        reader.stream,
        entry.key.clone(),
        size,
        src_md5,
        want_md5,
        computed.clone(),
        ctx,
    );
    let reader = ObjectReader {
        stream,
        attributes: if dst.carries_attributes() {
            reader.attributes
        } else {
            Default::default()
        },
        ..reader
    };
    // S3 allows 10,000 parts: grow the part size for very large objects.
    let part_size = ctx.opts.part_size.max(size.div_ceil(9_000) as usize);
    let etag = dst
        .put(&entry.key, reader, part_size, ctx.opts.part_concurrency)
        .await?;
    if dst.etag_is_md5() && ctx.opts.verify_dest_etag {
        let ours = computed.lock().ok().and_then(|g| *g);
        if let (Some(ours), Some(theirs)) = (ours, etag.as_deref().and_then(md5_of_etag)) {
            if ours != theirs {
                // The store holds something other than what was sent: remove it, so that
                // no later run mistakes it for a good copy; the retry sends it again.
                let _ = dst.delete(&entry.key).await;
                return Err(StorageError::Verify(format!(
                    "{}: destination MD5 {} differs from the bytes sent {}",
                    entry.key,
                    hex(&theirs),
                    hex(&ours)
                )));
            }
        }
    }
    Ok(size)
}

/// Wraps a source stream: counts and hashes bytes, applies `--bwlimit`, and ends with an
/// error (so the write is abandoned, never committed) if size or MD5 do not match.
fn verify_stream(
    inner: BoxStream<'static, Result<Bytes>>,
    key: String,
    size: u64,
    src_md5: Option<[u8; 16]>,
    want_md5: bool,
    computed: Arc<Mutex<Option<[u8; 16]>>>,
    ctx: &Ctx,
) -> BoxStream<'static, Result<Bytes>> {
    struct St {
        inner: BoxStream<'static, Result<Bytes>>,
        seen: u64,
        md5: Option<Md5>,
        done: bool,
    }
    let progress = ctx.progress.clone();
    let limiter = ctx.limiter.clone();
    let st = St {
        inner,
        seen: 0,
        md5: want_md5.then(Md5::new),
        done: false,
    };
    stream::unfold(st, move |mut st| {
        let key = key.clone();
        let computed = computed.clone();
        let progress = progress.clone();
        let limiter = limiter.clone();
        async move {
            if st.done {
                return None;
            }
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    st.seen += chunk.len() as u64;
                    if let Some(h) = st.md5.as_mut() {
                        h.update(&chunk);
                    }
                    if let Some(l) = &limiter {
                        l.acquire(chunk.len() as u64).await;
                    }
                    progress.bytes_done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    Some((Ok(chunk), st))
                }
                Some(Err(e)) => {
                    st.done = true;
                    Some((Err(e), st))
                }
                None => {
                    st.done = true;
                    if st.seen != size {
                        let e = StorageError::Verify(format!(
                            "{key}: read {} bytes, expected {size}; the source changed during the copy",
                            st.seen
                        ));
                        return Some((Err(e), st));
                    }
                    let digest: Option<[u8; 16]> = st.md5.take().map(|h| h.finalize().into());
                    if let (Some(d), Some(want)) = (digest, src_md5) {
                        if d != want {
                            let e = StorageError::Verify(format!(
                                "{key}: MD5 of the bytes read {} differs from the source ETag {}",
                                hex(&d),
                                hex(&want)
                            ));
                            return Some((Err(e), st));
                        }
                    }
                    if let Ok(mut g) = computed.lock() {
                        *g = digest;
                    }
                    None
                }
            }
        }
    })
    .boxed()
}

/// Whether an object has the same bytes at both ends (BLAKE3 of each, streamed).
async fn same_content(ctx: &Ctx, key: &str) -> Result<bool> {
    let Ok(_permit) = ctx.checkers.acquire().await else {
        return Err(StorageError::Verify("engine shut down".into()));
    };
    let (a, b) = tokio::join!(hash_object(&ctx.src, key), hash_object(&ctx.dst, key));
    Ok(a? == b?)
}

async fn hash_object(store: &Store, key: &str) -> Result<blake3::Hash> {
    let mut reader = store.get(key, 1 << 20).await?;
    let mut hasher = blake3::Hasher::new();
    while let Some(chunk) = reader.stream.next().await {
        hasher.update(&chunk?);
    }
    Ok(hasher.finalize())
}

fn md5_of_etag(etag: &str) -> Option<[u8; 16]> {
    let t = etag.trim_matches('"');
    if t.len() != 32 {
        return None; // multipart or opaque ETag
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(t.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Destination keys to delete, kept on disk until the listings are known complete.
struct DeleteSpill {
    file: BufWriter<std::fs::File>,
    count: u64,
}

impl DeleteSpill {
    fn new() -> Result<Self> {
        let file = tempfile::tempfile().map_err(|e| {
            StorageError::io("georep", "cannot create a temp file for the delete list", e)
        })?;
        Ok(Self {
            file: BufWriter::new(file),
            count: 0,
        })
    }

    fn push(&mut self, key: &str) -> Result<()> {
        // Keys cannot hold control characters (object_store rejects them), so a newline
        // separates them safely.
        writeln!(self.file, "{key}")
            .map_err(|e| StorageError::io("georep", "cannot write the delete list", e))?;
        self.count += 1;
        Ok(())
    }

    fn into_keys(self) -> Result<impl Iterator<Item = String>> {
        let mut file = self.file.into_inner().map_err(|e| {
            StorageError::io("georep", "cannot flush the delete list", e.into_error())
        })?;
        file.rewind()
            .map_err(|e| StorageError::io("georep", "cannot read the delete list", e))?;
        Ok(BufReader::new(file).lines().map_while(|l| l.ok()))
    }
}

async fn run_deletes(
    ctx: &Arc<Ctx>,
    health: &MergeHealth,
    deletes: DeleteSpill,
    report: &mut Report,
) -> Result<()> {
    let n = deletes.count;
    let dst_total = health.dst_count.load(Ordering::Relaxed);
    let src_empty = health.src_count.load(Ordering::Relaxed) == 0;
    let empties_on_purpose =
        matches!(ctx.opts.max_delete, Some(MaxDelete::Percent(p)) if p >= 100.0);
    let refuse = if report.failed > 0 {
        Some(format!("refusing to delete {n} objects: {} objects failed (see failures), so the destination would lose data it has no replacement for; fix them and run again", report.failed))
    } else if let Some(why) = health.unlisted.lock().ok().and_then(|w| w.clone()) {
        Some(format!("refusing to delete {n} objects: {why}"))
    } else if health.incomplete.load(Ordering::Relaxed) {
        Some(format!("refusing to delete {n} objects: a listing was incomplete (see failures); fix it and run again"))
    } else if health.out_of_order.load(Ordering::Relaxed) {
        Some(format!("refusing to delete {n} objects: a store listed keys out of order, so the difference is not trustworthy"))
    } else if src_empty && !empties_on_purpose {
        Some(format!("refusing to delete {n} objects: the source listed no objects (wrong path or prefix?); pass --max-delete 100% if you mean to empty the destination"))
    } else if let Some(max) = ctx.opts.max_delete {
        (!max.allows(n, dst_total)).then(|| {
            format!("refusing to delete {n} of {dst_total} objects at the destination: more than --max-delete {max}; nothing was deleted")
        })
    } else {
        None
    };
    if let Some(why) = refuse {
        report.delete_refused = Some(why);
        return Ok(());
    }
    let protected = health
        .protected
        .lock()
        .map(|p| p.clone())
        .unwrap_or_default();
    // The delete list stays on disk: held keys are counted as it streams past.
    let held_n = Arc::new(AtomicU64::new(0));
    let counter = held_n.clone();
    let keys = deletes.into_keys()?.filter(move |key| {
        let held = protected.iter().any(|p| crate::store::key_within(key, p));
        if held {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        !held
    });
    let note_held = |report: &mut Report| {
        let n = held_n.load(Ordering::Relaxed);
        if n > 0 {
            report.deletes_held = n;
            if let Ok(sk) = health.skipped_source.lock() {
                tracing::warn!(held = n, first = sk.1.as_deref().unwrap_or(""), "deletes held: their keys are source names that were skipped, so what the source holds there is unknown");
            }
        }
    };
    if ctx.opts.dry_run {
        if let Some(list) = report.planned.as_mut() {
            list.extend(keys.map(|key| Planned {
                key,
                action: "delete",
                size: 0,
            }));
        }
        note_held(report);
        return Ok(());
    }
    let mut results = stream::iter(keys)
        .map(|key| {
            let ctx = ctx.clone();
            async move {
                let r = ctx.dst.delete(&key).await;
                if r.is_ok() {
                    ctx.progress.deleted.fetch_add(1, Ordering::Relaxed);
                }
                (key, r)
            }
        })
        .buffer_unordered(ctx.opts.transfers.max(1));
    while let Some((key, r)) = results.next().await {
        match r {
            Ok(()) => report.deleted += 1,
            Err(e) if e.is_fatal_for_store() => return Err(e),
            Err(StorageError::Skipped { key, detail, store }) => {
                tracing::warn!(%store, %key, "{detail}");
                report.skipped_keys.push(Failure { key, error: detail });
            }
            Err(e) => {
                report.failed += 1;
                report.failures.push(Failure {
                    key,
                    error: e.to_string(),
                });
            }
        }
    }
    note_held(report);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use georep_core::StoreUrl;

    fn ctx() -> Ctx {
        let open = |u: &str| {
            Arc::new(
                Store::open(&StoreUrl::parse(u).expect("url"), &Default::default())
                    .expect("memory store"),
            )
        };
        Ctx {
            src: open("memory://verify-src"),
            dst: open("memory://verify-dst"),
            opts: JobOptions::default(),
            limiter: None,
            transfers: Semaphore::new(1),
            checkers: Semaphore::new(1),
            progress: Arc::new(Progress::default()),
        }
    }

    async fn drain(s: BoxStream<'static, Result<Bytes>>) -> Vec<Result<Bytes>> {
        s.collect().await
    }

    fn chunks(parts: &[&'static [u8]]) -> BoxStream<'static, Result<Bytes>> {
        let v: Vec<Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        stream::iter(v).boxed()
    }

    #[tokio::test]
    async fn verify_stream_fails_on_short_or_long_reads() {
        let ctx = ctx();
        for (parts, size) in [
            (&[b"abc" as &[u8]][..], 4u64),
            (&[b"abc" as &[u8], b"de"][..], 4),
        ] {
            let slot = Arc::new(Mutex::new(None));
            let out = drain(verify_stream(
                chunks(parts),
                "k".into(),
                size,
                None,
                false,
                slot,
                &ctx,
            ))
            .await;
            let last = out.last().expect("some item");
            assert!(
                matches!(last, Err(StorageError::Verify(_))),
                "size {size}: {out:?}"
            );
        }
    }

    #[tokio::test]
    async fn verify_stream_checks_md5_against_the_source_etag() {
        let ctx = ctx();
        let good: [u8; 16] = Md5::digest(b"hello").into();
        let slot = Arc::new(Mutex::new(None));
        let out = drain(verify_stream(
            chunks(&[b"hel", b"lo"]),
            "k".into(),
            5,
            Some(good),
            true,
            slot.clone(),
            &ctx,
        ))
        .await;
        assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
        assert_eq!(
            *slot.lock().expect("lock"),
            Some(good),
            "digest handed to the put check"
        );
        let bad: [u8; 16] = Md5::digest(b"HELLO").into();
        let out = drain(verify_stream(
            chunks(&[b"hello"]),
            "k".into(),
            5,
            Some(bad),
            true,
            Arc::new(Mutex::new(None)),
            &ctx,
        ))
        .await;
        assert!(
            matches!(out.last(), Some(Err(StorageError::Verify(m))) if m.contains("MD5")),
            "{out:?}"
        );
    }

    #[test]
    fn etag_parsing() {
        assert!(md5_of_etag("\"5d41402abc4b2a76b9719d911017c592\"").is_some());
        assert!(md5_of_etag("\"5d41402abc4b2a76b9719d911017c592-3\"").is_none());
        assert!(md5_of_etag("0x8DC1234").is_none());
    }
}
