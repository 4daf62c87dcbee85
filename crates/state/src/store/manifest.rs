//! The source manifest: what was last seen at each policy's source, and `apply`, which
//! records a change there and queues its replication in the same transaction.

use rusqlite::{params, OptionalExtension};

use super::queue::enqueue;
use super::{ManifestEntry, Op, State};
use crate::error::Result;

/// A change seen at a source, by a scan, a notification or a webhook event.
#[derive(Debug, Clone)]
pub struct Observed {
    pub key: String,
    pub kind: ObservedKind,
    /// When the change happened, ms since the epoch: the start of its replication lag.
    pub change_time: i64,
}

#[derive(Debug, Clone)]
pub enum ObservedKind {
    /// Created or modified: record it and copy it to every destination.
    Upsert {
        size: u64,
        etag: Option<String>,
        mtime: i64,
    },
    /// Gone at the source: forget it, and delete it at destinations if `propagate`.
    Remove { propagate: bool },
}

impl State {
    /// Up to `limit` manifest entries with keys after `after`, in key (byte) order.
    pub fn manifest_page(
        &self,
        policy: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ManifestEntry>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT key, size, etag, mtime FROM manifest WHERE policy = ?1 AND key > ?2 \
             ORDER BY key LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![policy, after.unwrap_or(""), limit as i64], |r| {
            Ok(ManifestEntry {
                key: r.get(0)?,
                size: r.get::<_, i64>(1)?.max(0) as u64,
                etag: r.get(2)?,
                mtime: r.get(3)?,
            })
        })?;
        let mut out = Vec::with_capacity(limit.min(4096));
        for r in rows {
            out.push(r?);
        }
        // The empty key sorts first and `key > ''` skips it; keys are never empty.
        Ok(out)
    }

    pub fn manifest_get(&self, policy: &str, key: &str) -> Result<Option<ManifestEntry>> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                "SELECT key, size, etag, mtime FROM manifest WHERE policy = ?1 AND key = ?2",
                params![policy, key],
                |r| {
                    Ok(ManifestEntry {
                        key: r.get(0)?,
                        size: r.get::<_, i64>(1)?.max(0) as u64,
                        etag: r.get(2)?,
                        mtime: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn manifest_count(&self, policy: &str) -> Result<u64> {
        let conn = self.lock();
        let n: i64 = conn.query_row(
            "SELECT count(*) FROM manifest WHERE policy = ?1",
            [policy],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// Records changes seen at a policy's source and queues their replication to every
    /// destination, in one transaction.
    pub fn apply(&self, policy: &str, dests: &[String], changes: &[Observed]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let now = crate::now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for c in changes {
            match &c.kind {
                ObservedKind::Upsert { size, etag, mtime } => {
                    tx.prepare_cached(
                        "INSERT INTO manifest (policy, key, size, etag, mtime) VALUES (?1, ?2, ?3, ?4, ?5) \
                         ON CONFLICT (policy, key) DO UPDATE SET size = ?3, etag = ?4, mtime = ?5",
                    )?
                    .execute(params![policy, c.key, *size as i64, etag, mtime])?;
                    for d in dests {
                        enqueue(&tx, policy, d, &c.key, Op::Copy, *size, c.change_time, now)?;
                    }
                }
                ObservedKind::Remove { propagate } => {
                    tx.prepare_cached("DELETE FROM manifest WHERE policy = ?1 AND key = ?2")?
                        .execute(params![policy, c.key])?;
                    if *propagate {
                        for d in dests {
                            enqueue(&tx, policy, d, &c.key, Op::Delete, 0, c.change_time, now)?;
                        }
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Queues copies to one destination without touching the manifest (resync repairs).
    pub fn enqueue_copies(&self, policy: &str, dest: &str, keys: &[(String, u64)]) -> Result<()> {
        let now = crate::now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for (key, size) in keys {
            enqueue(&tx, policy, dest, key, Op::Copy, *size, now, now)?;
        }
        tx.commit()?;
        Ok(())
    }
}
