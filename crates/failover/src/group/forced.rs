//! Forced failover without the primary, and the automatic failover decision that leads
//! to it under `policy = "automatic"` (after the grace period, within `max_data_loss`,
//! and only after a last, more patient probe of the primary).

use std::time::{Duration, Instant};

use georep_core::Database;
use georep_db::engine;

use super::probe::{probe, Probe};
use super::{FailoverReport, Group};
use crate::{FailoverError, Result};

impl Group {
    /// Under `policy = "automatic"`: fail over once the primary has been unhealthy for the
    /// whole grace period, to a healthy replica whose last known lag is within
    /// `max_data_loss`; otherwise say why not.
    pub(super) async fn consider_automatic(&self, db: &Database) {
        let primary_up = self
            .health
            .lock()
            .ok()
            .and_then(|h| h.get(&db.primary.name).map(|m| m.healthy))
            .unwrap_or(true);
        let since = {
            let Ok(mut d) = self.primary_down_since.lock() else {
                return;
            };
            if primary_up {
                *d = None;
                None
            } else {
                Some(*d.get_or_insert_with(Instant::now))
            }
        };
        if self.cfg.policy != georep_core::FailoverPolicy::Automatic {
            return;
        }
        let Some(since) = since else {
            if let Ok(mut a) = self.automatic.lock() {
                *a = None;
            }
            return;
        };
        if since.elapsed() < self.cfg.grace_period {
            return;
        }
        let limit = self.cfg.max_data_loss.as_secs_f64();
        let lags = self.lag.lock().map(|l| l.clone()).unwrap_or_default();
        // The least behind first: promoting another would lose what it has (MariaDB
        // refuses a replica behind another).
        let behind = |name: &str| {
            let l = lags.get(name).copied().unwrap_or_default();
            (
                l.transactions
                    .or(l.bytes.map(|b| b.max(0) as u64))
                    .unwrap_or(u64::MAX),
                l.seconds.unwrap_or(f64::MAX),
            )
        };
        let candidate = db
            .replicas
            .iter()
            .filter(|r| {
                self.healthy(&r.name)
                    && lags
                        .get(&r.name)
                        .and_then(|l| l.seconds)
                        .is_some_and(|s| s <= limit)
            })
            .min_by(|a, b| {
                let (x, y) = (behind(&a.name), behind(&b.name));
                x.0.cmp(&y.0).then(x.1.total_cmp(&y.1))
            });
        match candidate {
            Some(r) => {
                // Probes can time out while the primary is only slow: before acting,
                // one more look with a longer timeout. Any answer keeps the primary.
                let patient = (self.cfg.probe_timeout * 4).max(Duration::from_secs(2));
                if let Ok(()) | Err(Probe::Answered(_)) =
                    probe(db, &db.primary, patient).await.map(|_| ())
                {
                    tracing::warn!(group = %self.cfg.name, primary = %db.primary.name, "the primary missed its probes but answered a last, longer one: no automatic failover");
                    if let Ok(mut h) = self.health.lock() {
                        if let Some(e) = h.get_mut(&db.primary.name) {
                            e.consecutive_failures = 0;
                            e.healthy = true;
                        }
                    }
                    if let Ok(mut d) = self.primary_down_since.lock() {
                        *d = None;
                    }
                    return;
                }
                let name = r.name.clone();
                tracing::warn!(group = %self.cfg.name, primary = %db.primary.name, to = %name, "primary unhealthy for the whole grace period: automatic failover");
                if let Err(e) = self
                    .force(Some(&name), "automatic", Some(&db.primary.name))
                    .await
                {
                    // Reported in the group's status, and logged once per reason.
                    let why = format!("automatic failover to '{name}' refused or failed: {e}");
                    if self.note_automatic(&why) {
                        tracing::error!(group = %self.cfg.name, "{why}");
                    }
                }
            }
            None => {
                let why = format!(
                    "automatic failover refused: the primary '{}' has been unhealthy for {:.0}s, but no healthy replica's last known lag is within max_data_loss = {limit}s (last known: {})",
                    db.primary.name,
                    since.elapsed().as_secs_f64(),
                    db.replicas
                        .iter()
                        .map(|r| format!(
                            "{} {}",
                            r.name,
                            match lags.get(&r.name).and_then(|l| l.seconds) {
                                Some(s) => format!("{s:.1}s"),
                                None => "unknown".into(),
                            }
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if self.note_automatic(&why) {
                    tracing::warn!(group = %self.cfg.name, "{why}");
                }
            }
        }
    }

    /// Records why automatic failover did not happen (shown in the group's status);
    /// true when the reason changed, so it is logged once.
    fn note_automatic(&self, why: &str) -> bool {
        self.automatic
            .lock()
            .map(|mut a| {
                let changed = a.as_deref() != Some(why);
                *a = Some(why.to_string());
                changed
            })
            .unwrap_or(false)
    }

    /// Forced failover: promote a replica without the primary (which is fenced for good
    /// and needs a reseed), route to it, and record the estimated data loss.
    /// `expect_primary`: the primary the decision was made against; if another role
    /// change got in first, nothing is done.
    pub async fn force(
        &self,
        to: Option<&str>,
        kind: &str,
        expect_primary: Option<&str>,
    ) -> Result<FailoverReport> {
        let _one = self.op().await?;
        let db = self.current_db();
        if let Some(p) = expect_primary.filter(|p| *p != db.primary.name) {
            return Err(FailoverError::Refused(format!(
                "the primary changed from '{p}' to '{}' meanwhile; not failing over again",
                db.primary.name
            )));
        }
        let target = match to {
            Some(t) => db
                .replicas
                .iter()
                .find(|r| r.name == t || r.region == t)
                .cloned(),
            None => db.replicas.iter().find(|r| self.healthy(&r.name)).cloned(),
        }
        .ok_or_else(|| {
            FailoverError::Refused(format!(
                "no such healthy replica of '{}' to promote",
                db.name
            ))
        })?;
        if !self.healthy(&target.name) {
            return Err(FailoverError::Refused(format!(
                "replica '{}' is not healthy (or fenced); promoting it would leave no working primary",
                target.name
            )));
        }
        let rec = self
            .state
            .failover(&self.cfg.name)?
            .ok_or_else(|| FailoverError::InvalidConfig("failover group not recorded".into()))?;
        // An unreachable target is refused before anything is recorded or held.
        drop(engine::Session::connect(&db, &target).await?);
        // A replica that would lose or invent data is refused before anything is held.
        engine::check_promotable(&db, &target.name).await?;
        let epoch = rec.epoch + 1;
        self.state
            .failover_begin(&self.cfg.name, epoch, kind, &db.primary.name, &target.name)?;
        let held_at = Instant::now();
        self.route.send_modify(|r| r.held = true);
        let loss = self
            .lag
            .lock()
            .ok()
            .and_then(|l| l.get(&target.name).cloned())
            .unwrap_or_default();
        let data_loss = match (loss.bytes, loss.transactions, loss.seconds) {
            (Some(b), _, Some(s)) => format!("at most the last {s:.1}s ({b} bytes of WAL) before the primary failed, by the last lag seen"),
            (Some(b), _, None) => format!("up to {b} bytes of WAL (lag in time unknown)"),
            (None, Some(n), Some(s)) => format!("at most the last {s:.1}s ({n} transaction(s) not applied) before the primary failed, by the last lag seen; what the replica received was applied first"),
            (None, Some(n), None) => format!("up to {n} transaction(s) (lag in time unknown)"),
            _ => "unknown (no lag was seen)".into(),
        };
        let result = match engine::promote(&db, &target.name).await {
            Ok(rep) => self.commit(epoch, kind, &db, &rep, held_at, data_loss, "done"),
            Err(e) => {
                self.settle_after_error(epoch, kind, &db, &target.name, e, held_at, data_loss)
                    .await
            }
        };
        let report = self.unsettled_on_error(result)?;
        tracing::warn!(group = %self.cfg.name, epoch, from = %report.from, to = %report.to, data_loss = %report.data_loss, "forced failover done; the old primary is fenced and needs a reseed");
        Ok(report)
    }
}
