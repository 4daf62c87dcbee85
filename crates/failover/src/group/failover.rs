//! Planned failover: hold new connections, switch over (fence, catch up, promote,
//! reverse replication), record the new epoch, route, release.

use std::time::{Duration, Instant};

use georep_db::crash_point;
use georep_db::engine;

use super::{FailoverReport, Group};
use crate::{FailoverError, Result};

impl Group {
    /// Planned failover to `to` (a member name or region; default: the first healthy
    /// replica): hold new connections, fence the primary, wait for the replica to have
    /// everything, promote it, reverse replication, record the new epoch, route, release.
    pub async fn failover(&self, to: Option<&str>) -> Result<FailoverReport> {
        let _one = self.op().await?;
        let db = self.current_db();
        let healthy = |name: &str| self.healthy(name);
        let target = match to {
            Some(t) => db
                .replicas
                .iter()
                .find(|r| r.name == t || r.region == t)
                .cloned()
                .ok_or_else(|| {
                    FailoverError::Refused(format!(
                        "'{t}' is not a replica of '{}' (the primary is '{}'); replicas: {}",
                        db.name,
                        db.primary.name,
                        db.replicas
                            .iter()
                            .map(|r| format!("{} ({})", r.name, r.region))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?,
            None => db
                .replicas
                .iter()
                .find(|r| healthy(&r.name))
                .cloned()
                .ok_or_else(|| {
                    FailoverError::Refused("no healthy replica to fail over to".into())
                })?,
        };
        let rec = self
            .state
            .failover(&self.cfg.name)?
            .ok_or_else(|| FailoverError::InvalidConfig("failover group not recorded".into()))?;
        // Nothing is held while the target gets ready: clients keep writing meanwhile.
        engine::preflight(&db, &target.name, Duration::from_secs(30)).await?;
        let epoch = rec.epoch + 1;
        self.state.failover_begin(
            &self.cfg.name,
            epoch,
            "planned",
            &db.primary.name,
            &target.name,
        )?;
        crash_point("failover-begun");
        let held_at = Instant::now();
        self.route.send_modify(|r| r.held = true);
        tracing::info!(group = %self.cfg.name, from = %db.primary.name, to = %target.name, "planned failover: holding new connections");
        let loss =
            "none: every write acknowledged before the fence was confirmed by the new primary";
        let result = match engine::switchover(&db, &target.name, Duration::from_secs(30)).await {
            Ok(rep) => {
                crash_point("failover-before-route");
                self.commit(epoch, "planned", &db, &rep, held_at, loss.into(), "done")
            }
            Err(e) => {
                self.settle_after_error(
                    epoch,
                    "planned",
                    &db,
                    &target.name,
                    e,
                    held_at,
                    loss.into(),
                )
                .await
            }
        };
        let report = self.unsettled_on_error(result)?;
        tracing::info!(group = %self.cfg.name, epoch, write_gap_ms = report.write_gap_ms, "planned failover done");
        Ok(report)
    }
}
