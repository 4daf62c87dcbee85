//! The merge of two key-ordered listings into one stream of items (source only,
//! destination only, both), and the listing health that decides whether deletes may run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::{self, BoxStream, StreamExt};
use georep_core::Filter;

use super::Progress;
use crate::entry::Entry;
use crate::error::{Result, StorageError};

/// One step of the merge.
pub(super) enum Item {
    SrcOnly(Entry),
    DstOnly(Entry),
    Both(Entry, Entry),
    /// A listing error that affects one path, not the whole store.
    ListError(StorageError),
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
pub(super) struct MergeHealth {
    pub(super) out_of_order: AtomicBool,
    pub(super) incomplete: AtomicBool,
    pub(super) src_count: AtomicU64,
    pub(super) dst_count: AtomicU64,
    /// Why part of the source was not listed (links not followed).
    pub(super) unlisted: Mutex<Option<String>>,
    /// Source entries skipped by name: how many, and the first with why.
    pub(super) skipped_source: Mutex<(u64, Option<String>)>,
    /// Their keys: a delete of one of them (or of a key below one) is held back.
    pub(super) protected: Mutex<Vec<String>>,
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
pub(super) fn merge(
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
