//! Ending a role change: recording one that happened (`commit`: the epoch first, then
//! the route, then its history), and settling one that failed part-way or that a
//! restart found interrupted (rolled back or finished).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use georep_core::Database;
use georep_db::{engine, Settled, SwitchoverReport};

use super::{address, FailoverKind, FailoverReport, Group};
use crate::{FailoverError, Result};

/// A role change's kind as recorded (`planned`, `forced`, `automatic`). georep writes
/// only those; anything else would be a change without the primary's consent.
fn kind_of(s: &str) -> FailoverKind {
    FailoverKind::parse(s).unwrap_or(FailoverKind::Forced)
}

impl Group {
    /// Records a role change that happened (the target is promoted): the new epoch
    /// first, then the route; members left behind are fenced.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn commit(
        &self,
        epoch: i64,
        kind: &str,
        db: &Database,
        rep: &SwitchoverReport,
        held_at: Instant,
        data_loss: String,
        outcome: &str,
    ) -> Result<FailoverReport> {
        let mut fenced = self.fenced.lock().map(|f| f.clone()).unwrap_or_default();
        if kind != "planned" {
            fenced.insert(db.primary.name.clone());
        }
        fenced.extend(rep.left_behind.iter().map(|(m, _)| m.clone()));
        fenced.remove(&rep.to);
        let fenced_text = fenced.iter().cloned().collect::<Vec<_>>().join(",");
        // The epoch is durable before any listener routes by it.
        if !self.state.failover_advance(
            &self.cfg.name,
            epoch,
            &rep.to,
            "stable",
            (!fenced_text.is_empty()).then_some(fenced_text.as_str()),
        )? {
            self.route.send_modify(|r| r.held = false);
            return Err(FailoverError::Refused(format!(
                "epoch {epoch} is not newer than the recorded one: another failover won; routing unchanged"
            )));
        }
        if let Ok(mut f) = self.fenced.lock() {
            *f = fenced;
        }
        if let Ok(mut p) = self.primary.lock() {
            *p = rep.to.clone();
        }
        // Lags were measured against the old primary; the probes measure them afresh.
        if let Ok(mut l) = self.lag.lock() {
            l.clear();
        }
        if let Ok(mut f) = self.fences_set.lock() {
            f.clear();
        }
        let current = self.current_db();
        let rw = address(&current, &current.primary.url);
        // Both routes change with the release, so no held reader reaches the new primary.
        let ro = self.read_only_targets();
        self.route.send_modify(|r| {
            r.epoch = epoch;
            r.read_write = rw.clone();
            r.read_only = ro.clone();
            r.held = false;
        });
        let gap = held_at.elapsed().as_millis() as u64;
        let left_behind: BTreeMap<String, String> = rep.left_behind.iter().cloned().collect();
        let left_text = left_behind
            .iter()
            .map(|(m, why)| format!("{m}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        self.state.failover_history_finish(
            &self.cfg.name,
            epoch,
            &georep_state::FailoverFinish {
                write_gap_ms: gap as i64,
                data_loss: &data_loss,
                outcome,
                left_behind: (!left_text.is_empty()).then_some(left_text.as_str()),
            },
        )?;
        for (m, why) in &left_behind {
            tracing::warn!(group = %self.cfg.name, member = %m, "{why}; it is fenced until `georep db reseed`");
        }
        let report = FailoverReport {
            kind: kind_of(kind),
            from: rep.from.clone(),
            to: rep.to.clone(),
            epoch,
            write_gap_ms: gap,
            catch_up_ms: rep.catch_up_ms,
            data_loss,
            finished_at: chrono::Utc::now().to_rfc3339(),
            repointed: rep.repointed.clone(),
            left_behind,
            outcome: outcome.to_string(),
        };
        if let Ok(mut l) = self.last.lock() {
            *l = Some(report.clone());
        }
        Ok(report)
    }

    /// A role change failed part-way: settle it (roll back or finish) before anything
    /// routes again. When the members cannot tell yet, new connections stay held and
    /// the probe loop keeps trying.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn settle_after_error(
        &self,
        epoch: i64,
        kind: &str,
        db: &Database,
        to: &str,
        err: georep_db::DbError,
        held_at: Instant,
        data_loss: String,
    ) -> Result<FailoverReport> {
        match engine::settle(db, to, kind == "planned").await {
            Ok(Settled::RolledBack) => {
                self.state.failover_rolled_back(
                    &self.cfg.name,
                    epoch,
                    &format!("rolled back: {err}"),
                )?;
                self.route.send_modify(|r| {
                    r.epoch = epoch;
                    r.held = false;
                });
                tracing::warn!(group = %self.cfg.name, epoch, error = %err, "the failover failed before the promotion and was rolled back; the primary is unchanged");
                Err(err.into())
            }
            Ok(Settled::Finished(rep)) => self.commit(
                epoch,
                kind,
                db,
                &rep,
                held_at,
                data_loss,
                &format!("finished after an error: {err}"),
            ),
            Err(e) => {
                self.unsettled.store(true, Ordering::SeqCst);
                tracing::error!(group = %self.cfg.name, epoch, error = %err, settle = %e, "the failover failed and cannot be settled yet; new connections stay held");
                Err(FailoverError::Refused(format!(
                    "the failover to '{to}' failed ({err}) and cannot be settled yet ({e}); new connections stay held while georep keeps trying"
                )))
            }
        }
    }

    /// Settles the role change recorded as in progress (the daemon stopped in the
    /// middle of it, or it failed and could not be settled then). Returns true once
    /// the group is stable and new connections are released.
    pub(super) async fn recover(&self) -> bool {
        let Ok(_one) = self.op().await else {
            return false;
        };
        let pending = match self.state.failover_pending(&self.cfg.name) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(group = %self.cfg.name, error = %e, "cannot read the interrupted role change");
                return false;
            }
        };
        let Some(ev) = pending else {
            self.route.send_modify(|r| r.held = false);
            return true;
        };
        let db = self.current_db();
        let planned = ev.kind == FailoverKind::Planned;
        let held_at = Instant::now();
        match engine::settle(&db, &ev.to, planned).await {
            Ok(Settled::RolledBack) => {
                if let Err(e) = self.state.failover_rolled_back(
                    &self.cfg.name,
                    ev.epoch,
                    "rolled back after an interruption: the target had not been promoted",
                ) {
                    tracing::error!(group = %self.cfg.name, error = %e, "cannot record the rollback");
                    return false;
                }
                self.route.send_modify(|r| {
                    r.epoch = ev.epoch;
                    r.held = false;
                });
                tracing::warn!(group = %self.cfg.name, epoch = ev.epoch, primary = %ev.from, to = %ev.to, "interrupted failover rolled back: '{}' stays the primary", ev.from);
                true
            }
            Ok(Settled::Finished(rep)) => {
                let loss = if planned {
                    "none (planned; finished after an interruption)".to_string()
                } else {
                    "unknown (forced; finished after an interruption)".to_string()
                };
                match self.commit(
                    ev.epoch,
                    ev.kind.as_str(),
                    &db,
                    &rep,
                    held_at,
                    loss,
                    "finished after an interruption: the target had been promoted",
                ) {
                    Ok(r) => {
                        tracing::warn!(group = %self.cfg.name, epoch = r.epoch, primary = %r.to, "interrupted failover finished: '{}' is the primary", r.to);
                        true
                    }
                    Err(e) => {
                        tracing::error!(group = %self.cfg.name, error = %e, "cannot record the finished failover");
                        false
                    }
                }
            }
            Err(e) => {
                tracing::warn!(group = %self.cfg.name, epoch = ev.epoch, error = %e, "cannot settle the interrupted failover yet; new connections stay held");
                false
            }
        }
    }

    /// A role change that ended in an error while still recorded as in progress (a
    /// state write failed, say) leaves new connections held: the probe loop settles it.
    pub(super) fn unsettled_on_error(&self, r: Result<FailoverReport>) -> Result<FailoverReport> {
        if r.is_err()
            && self
                .state
                .failover_pending(&self.cfg.name)
                .map_or(true, |p| p.is_some())
        {
            self.unsettled.store(true, Ordering::SeqCst);
        }
        r
    }
}
