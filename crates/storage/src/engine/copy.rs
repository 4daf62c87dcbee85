//! Copying one object: a single verified attempt (`copy_once`, also offered to the
//! daemon as [`copy_object`]) and the engine's retries around it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::verify::{hex, md5_of_etag, verify_stream};
use super::{failed, Ctx, JobOptions, Outcome, Planned, Progress};
use crate::entry::Entry;
use crate::error::{Result, StorageError};
use crate::limiter::RateLimiter;
use crate::store::{ObjectReader, Store};

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

/// Copies one object with retries, or plans it in a dry run.
pub(super) async fn transfer(ctx: &Arc<Ctx>, entry: Entry) -> Outcome {
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
