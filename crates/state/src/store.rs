//! The SQLite-backed state store.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use crate::error::{Result, StateError};
use crate::schema::MIGRATIONS;

/// Queue items, their operation and status, and manifest entries are the API's types:
/// the state parses its text columns into them at the SQL edge (`Op::parse`,
/// `Status::parse`), and the API shows them as stored.
pub use georep_api::{
    ItemStatus as Status, ObjectAtDestination as Item, Op, SourceObject as ManifestEntry,
};

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

/// A policy as recorded by the daemon.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRecord {
    pub name: String,
    pub config: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
    /// Why the policy's deletes are paused (mass-delete guard), if they are.
    pub paused: Option<String>,
    /// An operator paused the policy (`georep pause`): nothing is copied or deleted
    /// until it is resumed; changes are still recorded. The note given, or a default.
    pub held: Option<String>,
    pub allow_mass_delete: bool,
    pub last_scan_at: Option<i64>,
    pub last_scan_ms: Option<i64>,
    pub last_scan_error: Option<String>,
    pub scans: i64,
    /// Start of the last scan that completed without error.
    pub last_ok_scan_at: Option<i64>,
}

/// How a policy's recorded configuration compares with the one given.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum PolicyChange {
    Added,
    Changed { previous: serde_json::Value },
    Unchanged,
}

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

/// The state store. One connection behind a mutex: every operation is a short
/// transaction, and SQLite serialises writers anyway.
pub struct State {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("path", &self.path).finish()
    }
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
    /// Opens (creating if needed) the state named by a `sqlite://PATH` URL or a bare path.
    pub fn open(url: &str) -> Result<Self> {
        let path = if let Some(p) = url.strip_prefix("sqlite://") {
            PathBuf::from(p)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Err(StateError::InvalidConfig {
                url: georep_core::redact_url(url),
                reason: "PostgreSQL state (shared by many workers) is not available in this \
                         version; use sqlite://PATH"
                    .into(),
            });
        } else if url.contains("://") {
            return Err(StateError::InvalidConfig {
                url: georep_core::redact_url(url),
                reason: "unknown scheme; use sqlite://PATH".into(),
            });
        } else {
            PathBuf::from(url)
        };
        Self::open_path(&path)
    }

    /// Opens (creating if needed) a SQLite state file.
    pub fn open_path(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StateError::Open {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        }
        let conn = Connection::open(path).map_err(|e| StateError::Open {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let corrupt = |e: rusqlite::Error| StateError::Corrupt {
            path: shown.clone(),
            reason: e.to_string(),
        };
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(corrupt)?;
        // WAL + NORMAL: a commit survives the process being killed at any moment (the WAL
        // is in the OS page cache); only a power cut can lose the last commits.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(corrupt)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(corrupt)?;
        let state = Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        };
        state.migrate()?;
        Ok(state)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (the
        // transaction rolls back on drop), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.lock();
        let shown = self.path.display().to_string();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| StateError::Corrupt {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StateError::TooNew {
                path: shown,
                found: version,
                supported,
            });
        }
        if version == 0 {
            // A non-empty database without our version is someone else's file.
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(|e| StateError::Corrupt {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            if tables > 0 {
                return Err(StateError::Corrupt {
                    path: shown,
                    reason: format!("it has {tables} tables but no georep schema version"),
                });
            }
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    // ---- policies -------------------------------------------------------------------

    /// Records a policy's configuration; says whether it is new or changed. In the same
    /// transaction, a destination added to the policy gets every object of the manifest
    /// queued (so it is filled, not just sent later changes), and a changed source drops
    /// the manifest (so the next scan compares against the new source from scratch).
    /// Destinations are `(name, url)`: a destination whose URL changed is a new place
    /// and is filled like an added one.
    pub fn upsert_policy(
        &self,
        name: &str,
        config: &serde_json::Value,
        source: &str,
        dests: &[(String, String)],
    ) -> Result<PolicyChange> {
        let mut conn = self.lock();
        let now = crate::now_ms();
        let text = serde_json::to_string(config)?;
        let dests_json = serde_json::to_string(dests)?;
        let tx = conn.transaction()?;
        let old: Option<(String, Option<String>, Option<String>)> = tx
            .query_row(
                "SELECT config, source, dests FROM policies WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let change = match old {
            None => {
                tx.execute(
                    "INSERT INTO policies (name, config, created_at, updated_at, source, dests) \
                     VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
                    params![name, text, now, source, dests_json],
                )?;
                PolicyChange::Added
            }
            Some((old, old_source, old_dests)) => {
                if old_source.as_deref().is_some_and(|s| s != source) {
                    tx.execute("DELETE FROM manifest WHERE policy = ?1", [name])?;
                }
                let before = recorded_dests(old_dests.as_deref())?;
                let moved = |(d, url): &&(String, String)| match before.get(d) {
                    None => true,
                    // Recorded before URLs were: a name alone says nothing moved.
                    Some(None) => false,
                    Some(Some(old)) => old != url,
                };
                for (d, _) in dests.iter().filter(moved) {
                    tx.execute(
                        "INSERT INTO items (policy, dest, key, op, status, generation, size, \
                         change_time, enqueued_at, attempts, next_attempt_at) \
                         SELECT policy, ?2, key, 'copy', 'pending', 1, size, ?3, ?3, 0, ?3 \
                         FROM manifest WHERE policy = ?1 \
                         ON CONFLICT (policy, dest, key) DO UPDATE SET status = 'pending', \
                         op = 'copy', generation = generation + 1, next_attempt_at = ?3",
                        params![name, d, now],
                    )?;
                }
                tx.execute(
                    "UPDATE policies SET source = ?2, dests = ?3 WHERE name = ?1",
                    params![name, source, dests_json],
                )?;
                if old == text {
                    PolicyChange::Unchanged
                } else {
                    tx.execute(
                        "UPDATE policies SET config = ?2, updated_at = ?3 WHERE name = ?1",
                        params![name, text, now],
                    )?;
                    PolicyChange::Changed {
                        previous: serde_json::from_str(&old)?,
                    }
                }
            }
        };
        tx.commit()?;
        Ok(change)
    }

    /// Compares without recording (for `georep plan`).
    pub fn policy_change(&self, name: &str, config: &serde_json::Value) -> Result<PolicyChange> {
        let text = serde_json::to_string(config)?;
        match self.policy(name)? {
            None => Ok(PolicyChange::Added),
            Some(p) if serde_json::to_string(&p.config)? == text => Ok(PolicyChange::Unchanged),
            Some(p) => Ok(PolicyChange::Changed { previous: p.config }),
        }
    }

    pub fn policies(&self) -> Result<Vec<PolicyRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT name, config, created_at, updated_at, paused, allow_mass_delete, \
             last_scan_at, last_scan_ms, last_scan_error, scans, last_ok_scan_at, held \
             FROM policies ORDER BY name",
        )?;
        let rows = stmt.query_map([], policy_from_row)?;
        let mut out = Vec::new();
        for r in rows {
            let (rec, config) = r?;
            out.push(PolicyRecord {
                config: serde_json::from_str(&config)?,
                ..rec
            });
        }
        Ok(out)
    }

    pub fn policy(&self, name: &str) -> Result<Option<PolicyRecord>> {
        Ok(self.policies()?.into_iter().find(|p| p.name == name))
    }

    /// Pauses (with a reason) or resumes a policy's deletes.
    pub fn set_paused(&self, name: &str, reason: Option<&str>) -> Result<()> {
        self.lock().execute(
            "UPDATE policies SET paused = ?2 WHERE name = ?1",
            params![name, reason],
        )?;
        Ok(())
    }

    /// An operator's pause of the whole policy (copies and deletes), or its end.
    pub fn set_held(&self, name: &str, note: Option<&str>) -> Result<()> {
        self.lock().execute(
            "UPDATE policies SET held = ?2 WHERE name = ?1",
            params![name, note],
        )?;
        Ok(())
    }

    /// Lets the next pass delete more than the guard allows (operator confirmed).
    pub fn set_allow_mass_delete(&self, name: &str, allow: bool) -> Result<()> {
        self.lock().execute(
            "UPDATE policies SET allow_mass_delete = ?2 WHERE name = ?1",
            params![name, allow as i64],
        )?;
        Ok(())
    }

    pub fn record_scan(&self, name: &str, at: i64, ms: i64, error: Option<&str>) -> Result<()> {
        self.lock().execute(
            "UPDATE policies SET last_scan_at = ?2, last_scan_ms = ?3, last_scan_error = ?4, \
             scans = scans + 1, \
             last_ok_scan_at = CASE WHEN ?4 IS NULL THEN ?2 ELSE last_ok_scan_at END \
             WHERE name = ?1",
            params![name, at, ms, error],
        )?;
        Ok(())
    }

    // ---- manifests ------------------------------------------------------------------

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

    // ---- the queue ------------------------------------------------------------------

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

/// A failover group's routing as recorded: listeners route by this, and only by an
/// epoch that was written here first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailoverRecord {
    pub group: String,
    pub epoch: i64,
    pub primary: String,
    /// `stable`, or `failing-over` while a role change is in progress.
    pub state: georep_api::GroupState,
    /// Members that must never be routed to again (e.g. an old primary after a forced
    /// failover); stored comma-separated.
    pub fenced: std::collections::BTreeSet<String>,
    pub updated_at: i64,
}

impl State {
    pub fn failover(&self, group: &str) -> Result<Option<FailoverRecord>> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                "SELECT grp, epoch, primary_member, state, fenced, updated_at FROM failover WHERE grp = ?1",
                [group],
                |r| {
                    Ok(FailoverRecord {
                        group: r.get(0)?,
                        epoch: r.get(1)?,
                        primary: r.get(2)?,
                        state: georep_api::GroupState::from_record(&r.get::<_, String>(3)?),
                        fenced: r
                            .get::<_, Option<String>>(4)?
                            .unwrap_or_default()
                            .split(',')
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect(),
                        updated_at: r.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records the group's first epoch if it has none; returns the current record.
    pub fn failover_init(&self, group: &str, primary: &str) -> Result<FailoverRecord> {
        self.lock().execute(
            "INSERT INTO failover (grp, epoch, primary_member, state, updated_at) \
             VALUES (?1, 1, ?2, 'stable', ?3) ON CONFLICT (grp) DO NOTHING",
            params![group, primary, crate::now_ms()],
        )?;
        self.failover(group)?.ok_or_else(|| StateError::Corrupt {
            path: self.path.display().to_string(),
            reason: "failover row vanished".into(),
        })
    }

    /// Moves a group to `epoch` (which must be newer than the recorded one), with its
    /// primary, state and fenced members. Returns false when the epoch is not newer (a
    /// stale writer), in which case nothing changes.
    pub fn failover_advance(
        &self,
        group: &str,
        epoch: i64,
        primary: &str,
        state: &str,
        fenced: Option<&str>,
    ) -> Result<bool> {
        let n = self.lock().execute(
            "UPDATE failover SET epoch = ?2, primary_member = ?3, state = ?4, fenced = ?5, \
             updated_at = ?6 WHERE grp = ?1 AND epoch < ?2",
            params![group, epoch, primary, state, fenced, crate::now_ms()],
        )?;
        Ok(n == 1)
    }

    /// Replaces a group's fenced members (after a reseed), keeping its epoch.
    pub fn failover_set_fenced(&self, group: &str, fenced: Option<&str>) -> Result<()> {
        self.lock().execute(
            "UPDATE failover SET fenced = ?2, updated_at = ?3 WHERE grp = ?1",
            params![group, fenced, crate::now_ms()],
        )?;
        Ok(())
    }

    /// Records that a role change to `epoch` has begun: the group reads
    /// `failing-over` and a history row holds what to settle if the daemon dies
    /// before it ends. The recorded epoch and primary do not change yet.
    pub fn failover_begin(
        &self,
        group: &str,
        epoch: i64,
        kind: &str,
        from: &str,
        to: &str,
    ) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO failover_history (grp, epoch, kind, from_member, to_member, started_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![group, epoch, kind, from, to, crate::now_ms()],
        )?;
        tx.execute(
            "UPDATE failover SET state = 'failing-over', updated_at = ?2 WHERE grp = ?1",
            params![group, crate::now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The role change a group is in the middle of, if any: the unfinished history row
    /// for the epoch after the recorded one.
    pub fn failover_pending(&self, group: &str) -> Result<Option<FailoverEvent>> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                &format!(
                    "SELECT {HISTORY_COLUMNS} FROM failover_history h JOIN failover f ON f.grp = h.grp \
                     WHERE h.grp = ?1 AND f.state = 'failing-over' AND h.epoch = f.epoch + 1 \
                     AND h.finished_at IS NULL"
                ),
                [group],
                history_from_row,
            )
            .optional()?)
    }

    /// Ends a role change that did not happen: the recorded primary stays, under the
    /// attempt's epoch, so the attempt can never be completed later and its history row
    /// is kept.
    pub fn failover_rolled_back(&self, group: &str, epoch: i64, outcome: &str) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE failover_history SET finished_at = ?3, outcome = ?4, data_loss = 'none' \
             WHERE grp = ?1 AND epoch = ?2",
            params![group, epoch, crate::now_ms(), outcome],
        )?;
        tx.execute(
            "UPDATE failover SET state = 'stable', epoch = ?3, updated_at = ?2 \
             WHERE grp = ?1 AND epoch < ?3",
            params![group, crate::now_ms(), epoch],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records the end of a role change.
    pub fn failover_history_finish(
        &self,
        group: &str,
        epoch: i64,
        finish: &FailoverFinish<'_>,
    ) -> Result<()> {
        self.lock().execute(
            "UPDATE failover_history SET finished_at = ?3, write_gap_ms = ?4, data_loss = ?5, \
             outcome = ?6, left_behind = ?7 WHERE grp = ?1 AND epoch = ?2",
            params![
                group,
                epoch,
                crate::now_ms(),
                finish.write_gap_ms,
                finish.data_loss,
                finish.outcome,
                finish.left_behind
            ],
        )?;
        Ok(())
    }

    /// A group's role changes, newest first.
    pub fn failover_history(&self, group: &str, limit: usize) -> Result<Vec<FailoverEvent>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {HISTORY_COLUMNS} FROM failover_history h WHERE h.grp = ?1 \
             ORDER BY h.epoch DESC LIMIT ?2"
        ))?;
        let rows = stmt
            .query_map(params![group, limit as i64], history_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

/// How a role change ended, for its history row.
#[derive(Debug, Clone, Default)]
pub struct FailoverFinish<'a> {
    pub write_gap_ms: i64,
    pub data_loss: &'a str,
    /// `done`, or `finished after a restart`, ...
    pub outcome: &'a str,
    /// Members left needing a reseed, with why.
    pub left_behind: Option<&'a str>,
}
/// One recorded role change: the API's type, its kind parsed at the SQL edge
/// (`FailoverKind::parse`; a kind georep never writes reads as `forced`).
pub use georep_api::FailoverEvent;

const HISTORY_COLUMNS: &str = "h.epoch, h.kind, h.from_member, h.to_member, h.started_at, \
     h.finished_at, h.write_gap_ms, h.data_loss, h.outcome, h.left_behind";

fn history_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FailoverEvent> {
    Ok(FailoverEvent {
        epoch: r.get(0)?,
        kind: georep_api::FailoverKind::parse(&r.get::<_, String>(1)?)
            .unwrap_or(georep_api::FailoverKind::Forced),
        from: r.get(2)?,
        to: r.get(3)?,
        started_at: r.get(4)?,
        finished_at: r.get(5)?,
        write_gap_ms: r.get(6)?,
        data_loss: r.get(7)?,
        outcome: r.get(8)?,
        left_behind: r.get(9)?,
    })
}

type PolicyRow = (PolicyRecord, String);

fn policy_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PolicyRow> {
    Ok((
        PolicyRecord {
            name: r.get(0)?,
            config: serde_json::Value::Null,
            created_at: r.get(2)?,
            updated_at: r.get(3)?,
            paused: r.get(4)?,
            allow_mass_delete: r.get::<_, i64>(5)? != 0,
            last_scan_at: r.get(6)?,
            last_scan_ms: r.get(7)?,
            last_scan_error: r.get(8)?,
            scans: r.get(9)?,
            last_ok_scan_at: r.get(10)?,
            held: r.get(11)?,
        },
        r.get(1)?,
    ))
}

/// Queues `op` for one destination. A row that is still open keeps its oldest change
/// time (so the RPO counts from the first unreplicated change) and gets a new
/// generation, so a worker still busy with the old version cannot complete this one.
#[allow(clippy::too_many_arguments)]
fn enqueue(
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

/// The destinations recorded with a policy: `[[name, url], ...]`, or names alone from
/// before URLs were recorded.
fn recorded_dests(json: Option<&str>) -> Result<std::collections::HashMap<String, Option<String>>> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Dest {
        Named(String),
        WithUrl(String, String),
    }
    let list: Vec<Dest> = json
        .map(serde_json::from_str)
        .transpose()?
        .unwrap_or_default();
    Ok(list
        .into_iter()
        .map(|d| match d {
            Dest::Named(n) => (n, None),
            Dest::WithUrl(n, u) => (n, Some(u)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, State) {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = State::open(&format!("sqlite://{}/s/g.db", dir.path().display())).expect("open");
        (dir, st)
    }

    fn up(key: &str, size: u64, t: i64) -> Observed {
        Observed {
            key: key.into(),
            kind: ObservedKind::Upsert {
                size,
                etag: None,
                mtime: t,
            },
            change_time: t,
        }
    }

    #[test]
    fn apply_claim_complete_and_requeue() {
        let (_d, st) = open();
        let dests = vec!["a".to_string(), "b".to_string()];
        st.apply("p", &dests, &[up("k1", 10, 1000), up("k2", 20, 2000)])
            .expect("apply");
        assert_eq!(st.manifest_count("p").expect("count"), 2);
        let lag = st.lag("p").expect("lag");
        assert_eq!(lag.len(), 2);
        assert_eq!((lag[0].pending, lag[0].pending_bytes), (2, 30));
        assert_eq!(lag[0].oldest_change, Some(1000));

        let items = st.claim("p", 10, Duration::from_secs(60)).expect("claim");
        assert_eq!(items.len(), 4);
        // Leased items are not handed out twice.
        assert!(st
            .claim("p", 10, Duration::from_secs(60))
            .expect("claim")
            .is_empty());

        // k1 changes again while a worker holds the old version.
        st.apply("p", &dests, &[up("k1", 11, 3000)]).expect("apply");
        let k1a = items
            .iter()
            .find(|i| i.key == "k1" && i.dest == "a")
            .expect("k1a");
        assert!(
            !st.complete(k1a, None).expect("complete"),
            "stale generation"
        );
        let s = st.object_status("p", "k1").expect("status");
        assert_eq!(s[0].status, Status::Pending);
        assert_eq!(
            s[0].change_time, 1000,
            "keeps the oldest unreplicated change"
        );

        for it in items.iter().filter(|i| i.key == "k2") {
            assert!(st.complete(it, None).expect("complete"));
        }
        let s = st.object_status("p", "k2").expect("status");
        assert!(s
            .iter()
            .all(|i| i.status == Status::Complete && i.replicated_at.is_some()));
    }

    #[test]
    fn an_added_destination_is_backfilled_and_requeued_rows_are_released() {
        let (_d, st) = open();
        let a = vec!["a".to_string()];
        let named = |names: &[&str]| -> Vec<(String, String)> {
            names
                .iter()
                .map(|n| (n.to_string(), format!("/srv/{n}")))
                .collect()
        };
        st.upsert_policy("p", &serde_json::json!({"v": 1}), "src", &named(&["a"]))
            .expect("up");
        st.apply("p", &a, &[up("k1", 1, 1), up("k2", 2, 2)])
            .expect("apply");
        st.upsert_policy(
            "p",
            &serde_json::json!({"v": 2}),
            "src",
            &named(&["a", "b"]),
        )
        .expect("up");
        let lag = st.lag("p").expect("lag");
        assert_eq!(
            lag.iter().find(|l| l.dest == "b").map(|l| l.pending),
            Some(2)
        );

        // A worker finishing an old generation releases the row for the new one.
        let items = st.claim("p", 10, Duration::from_secs(3600)).expect("claim");
        let k1 = items
            .iter()
            .find(|i| i.key == "k1" && i.dest == "a")
            .expect("k1");
        st.apply("p", &a, &[up("k1", 5, 5)]).expect("apply");
        assert!(!st.complete(k1, None).expect("complete"));
        let again = st.claim("p", 10, Duration::from_secs(3600)).expect("claim");
        assert!(
            again.iter().any(|i| i.key == "k1" && i.dest == "a"),
            "{again:?}"
        );

        // A destination whose URL changed is a new place: filled like an added one.
        for i in items.iter().filter(|i| i.dest == "b").chain(&again) {
            st.complete(i, None).expect("complete");
        }
        let pending_at = |st: &State, d: &str| {
            st.lag("p")
                .expect("lag")
                .iter()
                .find(|l| l.dest == d)
                .map(|l| l.pending)
        };
        assert_eq!(pending_at(&st, "b"), Some(0));
        let a_before = pending_at(&st, "a");
        let moved = vec![
            ("a".to_string(), "/srv/a".to_string()),
            ("b".to_string(), "/srv/b-new".to_string()),
        ];
        st.upsert_policy("p", &serde_json::json!({"v": 2}), "src", &moved)
            .expect("up");
        assert_eq!(pending_at(&st, "b"), Some(2), "the new place is filled");
        assert_eq!(pending_at(&st, "a"), a_before, "an unmoved one is not");

        // A new source URL drops the manifest.
        st.upsert_policy("p", &serde_json::json!({"v": 3}), "other", &moved)
            .expect("up");
        assert_eq!(st.manifest_count("p").expect("count"), 0);
    }

    #[test]
    fn failures_back_off_and_turn_failed() {
        let (_d, st) = open();
        st.apply("p", &["a".into()], &[up("k", 1, 1)])
            .expect("apply");
        for n in 0..3 {
            let it = st.claim("p", 1, Duration::from_secs(60)).expect("claim");
            assert_eq!(it.len(), 1, "round {n}");
            st.fail(&it[0], "boom", 0, 3).expect("fail");
        }
        let s = st.object_status("p", "k").expect("status");
        assert_eq!((s[0].status, s[0].attempts), (Status::Failed, 3));
        assert_eq!(s[0].last_error.as_deref(), Some("boom"));
        // Failed items are still retried.
        st.fail(&s[0], "later", crate::now_ms() + 60_000, 3)
            .expect("fail");
        assert!(st
            .claim("p", 1, Duration::from_secs(60))
            .expect("claim")
            .is_empty());
        assert!(st.next_due("p").expect("due").is_some());
    }

    #[test]
    fn removes_respect_propagate_and_manifest_pages_are_ordered() {
        let (_d, st) = open();
        let d = vec!["a".to_string()];
        let keys = ["b", "a/x", "a", "é", "Z"];
        let obs: Vec<_> = keys.iter().map(|k| up(k, 1, 1)).collect();
        st.apply("p", &d, &obs).expect("apply");
        let page1 = st.manifest_page("p", None, 2).expect("page");
        let page2 = st
            .manifest_page("p", Some(&page1[1].key), 10)
            .expect("page");
        let all: Vec<_> = page1.iter().chain(&page2).map(|e| e.key.clone()).collect();
        assert_eq!(all, ["Z", "a", "a/x", "b", "é"]);

        st.apply(
            "p",
            &d,
            &[
                Observed {
                    key: "a".into(),
                    kind: ObservedKind::Remove { propagate: false },
                    change_time: 5,
                },
                Observed {
                    key: "b".into(),
                    kind: ObservedKind::Remove { propagate: true },
                    change_time: 5,
                },
            ],
        )
        .expect("apply");
        assert_eq!(st.manifest_count("p").expect("count"), 3);
        assert_eq!(st.object_status("p", "b").expect("s")[0].op, Op::Delete);
        assert_eq!(st.object_status("p", "a").expect("s")[0].op, Op::Copy);
    }

    #[test]
    fn policies_record_changes_and_refuse_foreign_files() {
        let (d, st) = open();
        let cfg = serde_json::json!({"rpo": "5m"});
        assert_eq!(
            st.upsert_policy("p", &cfg, "src", &[("a".to_string(), "/srv/a".to_string())])
                .expect("up"),
            PolicyChange::Added
        );
        assert_eq!(
            st.upsert_policy("p", &cfg, "src", &[("a".to_string(), "/srv/a".to_string())])
                .expect("up"),
            PolicyChange::Unchanged
        );
        let cfg2 = serde_json::json!({"rpo": "1m"});
        assert!(matches!(
            st.policy_change("p", &cfg2).expect("c"),
            PolicyChange::Changed { .. }
        ));
        st.set_paused("p", Some("guard")).expect("pause");
        assert_eq!(
            st.policy("p").expect("p").expect("some").paused.as_deref(),
            Some("guard")
        );
        drop(st);
        // Reopening keeps everything.
        let st = State::open_path(&d.path().join("s/g.db")).expect("reopen");
        assert_eq!(st.policies().expect("list").len(), 1);

        let foreign = d.path().join("other.db");
        let c = Connection::open(&foreign).expect("create");
        c.execute_batch("CREATE TABLE t (x)").expect("table");
        drop(c);
        let e = State::open_path(&foreign).expect_err("foreign");
        assert!(e.to_string().contains("not a georep database"), "{e}");

        let junk = d.path().join("junk.db");
        std::fs::write(&junk, b"this is not sqlite at all, not even close........").expect("w");
        let e = State::open_path(&junk).expect_err("junk");
        assert!(e.to_string().contains("corrupt"), "{e}");

        let e = State::open("postgres://u:secret@h/db").expect_err("pg");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn an_interrupted_role_change_is_found_and_settled() {
        let (_d, st) = open();
        let rec = st.failover_init("fg", "a").expect("init");
        assert_eq!((rec.epoch, rec.state), (1, georep_api::GroupState::Stable));
        assert!(st.failover_pending("fg").expect("pending").is_none());
        st.failover_begin("fg", 2, "planned", "a", "b")
            .expect("begin");
        let rec = st.failover("fg").expect("read").expect("row");
        assert_eq!(
            (rec.epoch, rec.primary.as_str(), rec.state.as_str()),
            (1, "a", "failing-over")
        );
        let p = st.failover_pending("fg").expect("pending").expect("one");
        assert_eq!(
            (p.epoch, p.kind.as_str(), p.to.as_str()),
            (2, "planned", "b")
        );
        st.failover_rolled_back("fg", 2, "rolled back after a restart")
            .expect("roll back");
        assert!(st.failover_pending("fg").expect("pending").is_none());
        let rec = st.failover("fg").expect("read").expect("row");
        assert_eq!(
            (rec.epoch, rec.primary.as_str(), rec.state.as_str()),
            (2, "a", "stable")
        );

        // The next attempt takes epoch 3 and finishes.
        st.failover_begin("fg", 3, "forced", "a", "b")
            .expect("begin");
        assert!(st
            .failover_advance("fg", 3, "b", "stable", Some("a"))
            .expect("advance"));
        st.failover_history_finish(
            "fg",
            3,
            &FailoverFinish {
                write_gap_ms: 5,
                data_loss: "x",
                outcome: "done",
                left_behind: None,
            },
        )
        .expect("finish");
        assert!(!st
            .failover_advance("fg", 3, "a", "stable", None)
            .expect("stale"));
        let h = st.failover_history("fg", 10).expect("history");
        assert_eq!(h.len(), 2);
        assert_eq!(
            (h[0].outcome.as_deref(), h[0].kind.as_str()),
            (Some("done"), "forced")
        );
        assert_eq!(h[1].outcome.as_deref(), Some("rolled back after a restart"));
        assert!(st.failover_pending("fg").expect("pending").is_none());
    }
}
