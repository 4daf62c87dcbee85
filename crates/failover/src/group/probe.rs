//! The probe loop: every member's health (a server that refuses at login still runs),
//! each replica's lag read on the primary, each member's read-only default set to match
//! its role; then the read-only route and the automatic failover decision.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use georep_core::{Database, DbMember};
use georep_db::engine::Session;
use tokio::sync::watch;

use super::Group;

/// Why a probe failed: the server answered with a refusal, or did not answer at all.
pub(super) enum Probe {
    Answered(String),
    Down(String),
}

/// Connects to a member and runs `SELECT 1` within `t`.
pub(super) async fn probe(
    db: &Database,
    m: &DbMember,
    t: Duration,
) -> std::result::Result<Session, Probe> {
    tokio::time::timeout(t, async {
        let mut c = Session::connect(db, m).await.map_err(|e| {
            if e.server_answered() {
                Probe::Answered(e.to_string())
            } else {
                Probe::Down(e.to_string())
            }
        })?;
        c.ping(&m.name)
            .await
            .map_err(|e| Probe::Down(e.to_string()))?;
        Ok(c)
    })
    .await
    .unwrap_or_else(|_| Err(Probe::Down(format!("no answer within {t:?}"))))
}

impl Group {
    pub(super) async fn probe_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            // A retired group only winds down: the one replacing it probes and acts.
            if self.retired.load(Ordering::SeqCst) {
                break;
            }
            if self.unsettled.load(Ordering::SeqCst) && self.recover().await {
                self.unsettled.store(false, Ordering::SeqCst);
            }
            let db = self.current_db();
            let members: Vec<_> = std::iter::once((db.primary.clone(), "primary"))
                .chain(db.replicas.iter().map(|r| (r.clone(), "replica")))
                .collect();
            for (m, role) in members {
                let t = self.cfg.probe_timeout;
                let is_primary = role == "primary";
                let ok = probe(&db, &m, t).await;
                // The primary's view of each replica's lag: what a forced failover would lose.
                let ok = match ok {
                    Ok(mut c) => {
                        self.enforce_fence(&mut c, &m.name).await;
                        if is_primary {
                            // A heartbeat is written only while no role change runs
                            // and the primary is not fenced (it checks `read_only`,
                            // which a switchover sets before reading its position).
                            let beat = self.op.try_lock().is_ok()
                                && !self.unsettled.load(Ordering::SeqCst);
                            // MariaDB's lag is read on each replica: more round trips.
                            let limit = if db.engine.is_mysql_family() {
                                t.max(Duration::from_secs(3))
                            } else {
                                t
                            };
                            let read = tokio::time::timeout(limit, c.replica_lag(&db, beat)).await;
                            match read {
                                Ok(Ok(lags)) => {
                                    if let Ok(mut l) = self.lag.lock() {
                                        l.extend(lags);
                                    }
                                }
                                Ok(Err(e)) => {
                                    tracing::warn!(group = %self.cfg.name, error = %e, "cannot read replica lag")
                                }
                                Err(_) => {}
                            }
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                if let Ok(mut h) = self.health.lock() {
                    let e = h.entry(m.name.clone()).or_default();
                    e.member = m.name.clone();
                    e.region = m.region.clone();
                    e.role = role.to_string();
                    match ok {
                        Ok(()) => {
                            e.consecutive_failures = 0;
                            e.healthy = true;
                            e.last_error = None;
                            e.last_ok = Some(chrono::Utc::now().to_rfc3339());
                        }
                        // The server answered ("too many clients", a closed database,
                        // a refused password): it is running, and a failover would
                        // not help. Reported, never counted as down.
                        Err(Probe::Answered(err)) => {
                            e.last_error = Some(err);
                        }
                        Err(Probe::Down(err)) => {
                            e.consecutive_failures += 1;
                            e.last_error = Some(err);
                            if e.consecutive_failures >= self.cfg.probe_failures {
                                e.healthy = false;
                            }
                        }
                    }
                }
            }
            if self.retired.load(Ordering::SeqCst) {
                break;
            }
            self.update_read_only();
            self.consider_automatic(&db).await;
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.probe_interval) => {}
                _ = stop.changed() => break,
            }
        }
    }

    /// Once per member and role: a replica is read-only for client sessions and the
    /// primary is not, so a member that comes back from a partition or a crash cannot
    /// take writes by default unless the recorded epoch makes it the primary. Skipped
    /// while a role change runs (it sets fences itself).
    async fn enforce_fence(&self, c: &mut Session, member: &str) {
        let done = self
            .fences_set
            .lock()
            .map(|f| f.contains(member))
            .unwrap_or(true);
        if (done && !c.fence_is_volatile()) || self.unsettled.load(Ordering::SeqCst) {
            return;
        }
        let Ok(_one) = self.op.try_lock() else {
            return;
        };
        let primary = self.current_db().primary.name == member;
        let set = tokio::time::timeout(self.cfg.probe_timeout, c.set_fence(member, !primary))
            .await
            .unwrap_or_else(|_| {
                Err(georep_db::DbError::Timeout(format!(
                    "no answer within {:?}",
                    self.cfg.probe_timeout
                )))
            });
        match set {
            Ok(()) => {
                if let Ok(mut f) = self.fences_set.lock() {
                    f.insert(member.to_string());
                }
            }
            Err(e) => {
                tracing::warn!(group = %self.cfg.name, member, error = %e, "cannot set the member's read-only default")
            }
        }
    }
}
