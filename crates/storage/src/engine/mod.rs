//! The transfer engine: a streaming merge of two key-ordered listings, and the copies,
//! checks and deletes that make the destination match.
//!
//! Memory stays bounded whatever the object count: listings are consumed page by page,
//! at most `transfers + checkers` objects are in flight, and deletions wait in a spill
//! file until both listings are complete (so a partial or failed listing never deletes).
//!
//! This module holds the run itself ([`run`]), its options and its [`Report`]; the merge,
//! the per-key plan, copies, verification and deletes each have a child module.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::future::{self, Either, FutureExt};
use futures::stream::StreamExt;
use georep_core::{Filter, MaxDelete};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::entry::{Entry, ListRole};
use crate::error::{Result, StorageError};
use crate::limiter::RateLimiter;
use crate::store::Store;

mod copy;
mod deletes;
mod merge;
mod plan;
mod verify;

pub use self::copy::copy_object;
use self::deletes::{run_deletes, DeleteSpill};
use self::merge::{merge, MergeHealth};
use self::plan::{execute, plan, Step};

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

fn failed(key: String, e: StorageError) -> Outcome {
    Outcome::Failed(Failure {
        key,
        error: e.to_string(),
    })
}
