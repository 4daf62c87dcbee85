//! Failover groups as recorded: each group's epoch, primary, state and fenced members,
//! and the history of its role changes (which also says what to settle after a crash).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::State;
use crate::error::{Result, StateError};

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
