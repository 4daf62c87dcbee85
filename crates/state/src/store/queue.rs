//! The work queue: one item per policy, destination and key, claimed under a lease,
//! completed or failed with a back-off, and read back as lag and per-object status.

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use super::{Item, Op, State, Status};
use crate::error::Result;

/// Open work for one destination of a policy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestLag {
    pub dest: String,
    pub pending: u64,
    pub pending_bytes: u64,
    pub failed: u64,
    /// Change time of the oldest unreplicated change, ms since the epoch.
    pub oldest_change: Option<i64>,
    pub complete: u64,
}

const ITEM_COLS: &str = "policy, dest, key, op, status, generation, size, change_time, \
     enqueued_at, attempts, last_error, next_attempt_at, replicated_at";

fn item_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    Ok(Item {
        policy: r.get(0)?,
        dest: r.get(1)?,
        key: r.get(2)?,
        op: Op::parse(&r.get::<_, String>(3)?),
        status: Status::parse(&r.get::<_, String>(4)?),
        generation: r.get(5)?,
        size: r.get::<_, i64>(6)?.max(0) as u64,
        change_time: r.get(7)?,
        enqueued_at: r.get(8)?,
        attempts: r.get::<_, i64>(9)?.clamp(0, u32::MAX as i64) as u32,
        last_error: r.get(10)?,
        next_attempt_at: r.get(11)?,
        replicated_at: r.get(12)?,
    })
}

impl State {
    /// Takes up to `limit` due items of a policy under a lease of `lease`.
    pub fn claim(&self, policy: &str, limit: usize, lease: Duration) -> Result<Vec<Item>> {
        let now = crate::now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let items = {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {ITEM_COLS} FROM items INDEXED BY items_due \
                 WHERE policy = ?1 AND status != 'complete' AND lease_until = 0 \
                 AND next_attempt_at <= ?2 ORDER BY next_attempt_at LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![policy, now, limit as i64], item_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let until = now + lease.as_millis() as i64;
        for it in &items {
            tx.prepare_cached(
                "UPDATE items SET lease_until = ?4 WHERE policy = ?1 AND dest = ?2 AND key = ?3",
            )?
            .execute(params![it.policy, it.dest, it.key, until])?;
        }
        tx.commit()?;
        Ok(items)
    }

    /// When the earliest not-yet-due item of a policy becomes due.
    pub fn next_due(&self, policy: &str) -> Result<Option<i64>> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                "SELECT next_attempt_at FROM items INDEXED BY items_due \
             WHERE policy = ?1 AND status != 'complete' AND lease_until = 0 \
             ORDER BY next_attempt_at LIMIT 1",
                [policy],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Marks an item done, unless it was re-queued meanwhile (then it stays pending).
    /// Returns whether this call completed it.
    pub fn complete(&self, item: &Item, note: Option<&str>) -> Result<bool> {
        let now = crate::now_ms();
        let conn = self.lock();
        release_if_requeued(&conn, item)?;
        let n = conn.execute(
            "UPDATE items SET status = 'complete', replicated_at = ?5, lease_until = 0, \
             last_error = ?6, attempts = attempts + 1 \
             WHERE policy = ?1 AND dest = ?2 AND key = ?3 AND generation = ?4",
            params![item.policy, item.dest, item.key, item.generation, now, note],
        )?;
        Ok(n == 1)
    }

    /// Records a failed attempt and when to try again. After `failed_after` attempts the
    /// status reads `failed`; it is still retried.
    pub fn fail(&self, item: &Item, error: &str, retry_at: i64, failed_after: u32) -> Result<()> {
        let conn = self.lock();
        release_if_requeued(&conn, item)?;
        conn.execute(
            "UPDATE items SET attempts = attempts + 1, last_error = ?5, next_attempt_at = ?6, \
             lease_until = 0, \
             status = CASE WHEN attempts + 1 >= ?7 THEN 'failed' ELSE 'pending' END \
             WHERE policy = ?1 AND dest = ?2 AND key = ?3 AND generation = ?4",
            params![
                item.policy,
                item.dest,
                item.key,
                item.generation,
                error,
                retry_at,
                failed_after as i64
            ],
        )?;
        Ok(())
    }

    /// Drops every lease: called at start-up, when no worker of this state can be alive.
    pub fn clear_leases(&self) -> Result<u64> {
        let n = self.lock().execute(
            "UPDATE items SET lease_until = 0 WHERE lease_until != 0",
            [],
        )?;
        Ok(n as u64)
    }

    /// Drops the leases of one policy: called when its workers were stopped (a reload
    /// changed or removed it), so the next ones take its unfinished items at once.
    pub fn clear_policy_leases(&self, policy: &str) -> Result<u64> {
        let n = self.lock().execute(
            "UPDATE items SET lease_until = 0 WHERE policy = ?1 AND lease_until != 0",
            [policy],
        )?;
        Ok(n as u64)
    }

    /// Makes every failed or waiting item of a policy due now.
    pub fn retry_now(&self, policy: &str) -> Result<u64> {
        let n = self.lock().execute(
            "UPDATE items SET next_attempt_at = 0 WHERE policy = ?1 AND status != 'complete'",
            [policy],
        )?;
        Ok(n as u64)
    }

    // ---- status ---------------------------------------------------------------------

    /// Open work per destination of a policy, with completed counts (which read every
    /// completed row: for status pages, not for once-a-second refreshes).
    pub fn lag(&self, policy: &str) -> Result<Vec<DestLag>> {
        self.lag_inner(policy, true)
    }

    /// Open work per destination only (destinations with none are absent); cheap.
    pub fn open_lag(&self, policy: &str) -> Result<Vec<DestLag>> {
        self.lag_inner(policy, false)
    }

    fn lag_inner(&self, policy: &str, with_complete: bool) -> Result<Vec<DestLag>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT dest, count(*), coalesce(sum(size), 0), \
             sum(status = 'failed'), min(change_time) \
             FROM items WHERE policy = ?1 AND status != 'complete' GROUP BY dest",
        )?;
        let rows = stmt.query_map([policy], |r| {
            Ok(DestLag {
                dest: r.get(0)?,
                pending: r.get::<_, i64>(1)?.max(0) as u64,
                pending_bytes: r.get::<_, i64>(2)?.max(0) as u64,
                failed: r.get::<_, i64>(3)?.max(0) as u64,
                oldest_change: r.get(4)?,
                complete: 0,
            })
        })?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        drop(stmt);
        if !with_complete {
            return Ok(out);
        }
        let mut stmt = conn.prepare_cached(
            "SELECT dest, count(*) FROM items WHERE policy = ?1 AND status = 'complete' GROUP BY dest",
        )?;
        let done = stmt
            .query_map([policy], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (dest, n) in done {
            match out.iter_mut().find(|d| d.dest == dest) {
                Some(d) => d.complete = n.max(0) as u64,
                None => out.push(DestLag {
                    dest,
                    complete: n.max(0) as u64,
                    ..Default::default()
                }),
            }
        }
        out.sort_by(|a, b| a.dest.cmp(&b.dest));
        Ok(out)
    }

    /// Every destination's status for one object.
    pub fn object_status(&self, policy: &str, key: &str) -> Result<Vec<Item>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ITEM_COLS} FROM items INDEXED BY items_key WHERE policy = ?1 AND key = ?2 \
             ORDER BY dest"
        ))?;
        let rows = stmt.query_map(params![policy, key], item_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Items that are not complete, oldest change first (for status listings).
    pub fn open_items(&self, policy: &str, limit: usize) -> Result<Vec<Item>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ITEM_COLS} FROM items WHERE policy = ?1 AND status != 'complete' \
             ORDER BY change_time LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![policy, limit as i64], item_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Replication latencies (ms, change → replicated) of copies completed since `since`,
    /// sorted ascending.
    pub fn latencies_since(&self, policy: &str, dest: &str, since: i64) -> Result<Vec<i64>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT replicated_at - change_time FROM items WHERE policy = ?1 AND dest = ?2 \
             AND status = 'complete' AND replicated_at >= ?3 AND op = 'copy' \
             AND last_error IS NULL ORDER BY 1",
        )?;
        let rows = stmt.query_map(params![policy, dest, since], |r| r.get::<_, i64>(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Objects and bytes replicated to a destination since `since`.
    pub fn replicated_since(&self, policy: &str, dest: &str, since: i64) -> Result<(u64, u64)> {
        let conn = self.lock();
        let (n, b): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM items WHERE policy = ?1 AND dest = ?2 \
             AND status = 'complete' AND replicated_at >= ?3 AND op = 'copy' \
             AND last_error IS NULL",
            params![policy, dest, since],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((n.max(0) as u64, b.max(0) as u64))
    }
}

/// A row re-queued while a worker held it: the worker is done with it now, so the newer
/// generation may be claimed at once instead of waiting out the lease.
fn release_if_requeued(conn: &Connection, item: &Item) -> Result<()> {
    conn.prepare_cached(
        "UPDATE items SET lease_until = 0 WHERE policy = ?1 AND dest = ?2 AND key = ?3 \
         AND generation != ?4",
    )?
    .execute(params![item.policy, item.dest, item.key, item.generation])?;
    Ok(())
}

/// Queues `op` for one destination. A row that is still open keeps its oldest change
/// time (so the RPO counts from the first unreplicated change) and gets a new
/// generation, so a worker still busy with the old version cannot complete this one.
#[allow(clippy::too_many_arguments)]
pub(super) fn enqueue(
    tx: &Transaction<'_>,
    policy: &str,
    dest: &str,
    key: &str,
    op: Op,
    size: u64,
    change_time: i64,
    now: i64,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO items (policy, dest, key, op, status, generation, size, change_time, \
         enqueued_at, attempts, next_attempt_at) \
         VALUES (?1, ?2, ?3, ?4, 'pending', 1, ?5, ?6, ?7, 0, ?7) \
         ON CONFLICT (policy, dest, key) DO UPDATE SET \
           op = ?4, size = ?5, generation = generation + 1, \
           change_time = CASE WHEN status = 'complete' THEN ?6 ELSE min(change_time, ?6) END, \
           enqueued_at = CASE WHEN status = 'complete' THEN ?7 ELSE enqueued_at END, \
           status = 'pending', attempts = 0, last_error = NULL, next_attempt_at = ?7",
    )?
    .execute(params![
        policy,
        dest,
        key,
        op.as_str(),
        size as i64,
        change_time,
        now
    ])?;
    Ok(())
}
