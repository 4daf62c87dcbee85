//! Deletes: destination keys to remove wait in a spill file until both listings are
//! known complete, then pass the guards (failures, incomplete or unordered listings, an
//! empty source, `--max-delete`, skipped source names) before any is deleted.

use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use georep_core::MaxDelete;

use super::merge::MergeHealth;
use super::{Ctx, Failure, Planned, Report};
use crate::error::{Result, StorageError};

/// Destination keys to delete, kept on disk until the listings are known complete.
pub(super) struct DeleteSpill {
    file: BufWriter<std::fs::File>,
    pub(super) count: u64,
}

impl DeleteSpill {
    pub(super) fn new() -> Result<Self> {
        let file = tempfile::tempfile().map_err(|e| {
            StorageError::io("georep", "cannot create a temp file for the delete list", e)
        })?;
        Ok(Self {
            file: BufWriter::new(file),
            count: 0,
        })
    }

    pub(super) fn push(&mut self, key: &str) -> Result<()> {
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

pub(super) async fn run_deletes(
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
