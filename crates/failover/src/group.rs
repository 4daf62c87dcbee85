//! One failover group at run time: listeners, health probes, the recorded epoch, and
//! planned failover.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use georep_core::{crash_point, Database, DbMember, FailoverGroup};
use georep_db::postgres as pg;
use georep_state::State;
use tokio::sync::watch;

use crate::proxy::{self, Kind, Route};
use crate::{FailoverError, Result};

pub use georep_api::{
    FailoverEvent, FailoverKind, FailoverReport, GroupState, GroupStatus, Lag, MemberHealth,
};

pub struct Group {
    pub cfg: FailoverGroup,
    db: Database,
    state: Arc<State>,
    route: watch::Sender<Route>,
    primary: Mutex<String>,
    health: Mutex<BTreeMap<String, MemberHealth>>,
    op: tokio::sync::Mutex<()>,
    last: Mutex<Option<FailoverReport>>,
    fenced: Mutex<BTreeSet<String>>,
    lag: Mutex<BTreeMap<String, Lag>>,
    primary_down_since: Mutex<Option<Instant>>,
    automatic: Mutex<Option<String>>,
    /// A role change was interrupted and is not settled yet: new connections are held.
    unsettled: AtomicBool,
    /// Members whose read-only default matches their role (cleared at each role change).
    fences_set: Mutex<BTreeSet<String>>,
}

/// A role change's kind as recorded (`planned`, `forced`, `automatic`). georep writes
/// only those; anything else would be a change without the primary's consent.
fn kind_of(s: &str) -> FailoverKind {
    FailoverKind::parse(s).unwrap_or(FailoverKind::Forced)
}

/// Why a probe failed: the server answered with a refusal, or did not answer at all.
enum Probe {
    Answered(String),
    Down(String),
}

/// Connects to a member and runs `SELECT 1` within `t`.
async fn probe(m: &DbMember, t: Duration) -> std::result::Result<pg::Client, Probe> {
    tokio::time::timeout(t, async {
        let c = pg::connect(&m.name, &m.url).await.map_err(|e| {
            if e.server_answered() {
                Probe::Answered(e.to_string())
            } else {
                Probe::Down(e.to_string())
            }
        })?;
        c.simple_query("SELECT 1")
            .await
            .map_err(|e| Probe::Down(e.to_string()))?;
        Ok(c)
    })
    .await
    .unwrap_or_else(|_| Err(Probe::Down(format!("no answer within {t:?}"))))
}

/// Binds a listener; an address still held by a listener being closed (the same group
/// restarted by a reload) is tried again for a few seconds.
async fn bind_when_free(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
}

/// `host:port` of a member's URL, read as connections read it (`host=`/`port=` too).
fn address(url: &str) -> Option<String> {
    georep_core::pg_endpoint(url)
        .ok()
        .filter(|e| !e.is_socket())
        .map(|e| e.address())
}

impl Group {
    /// Binds the listeners and starts routing by the recorded epoch (the topology's
    /// primary the first time).
    pub async fn start(
        cfg: FailoverGroup,
        db: Database,
        state: Arc<State>,
        stop: watch::Receiver<bool>,
    ) -> Result<Arc<Self>> {
        let rec = state.failover_init(&cfg.name, &db.primary.name)?;
        let unsettled = rec.state != GroupState::Stable;
        if unsettled {
            tracing::warn!(group = %cfg.name, epoch = rec.epoch, "a role change was interrupted: new connections are held until it is rolled back or finished");
        }
        let current = pg::rotated(&db, &rec.primary);
        let route = Route {
            epoch: rec.epoch,
            read_write: address(&current.primary.url),
            read_only: if cfg.read_only_to_primary {
                address(&current.primary.url).into_iter().collect()
            } else {
                Vec::new()
            },
            held: unsettled,
        };
        let (tx, _) = watch::channel(route);
        let group = Arc::new(Self {
            cfg: cfg.clone(),
            db,
            state,
            route: tx,
            primary: Mutex::new(rec.primary.clone()),
            health: Mutex::new(BTreeMap::new()),
            op: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
            fenced: Mutex::new(rec.fenced.clone()),
            lag: Mutex::new(BTreeMap::new()),
            primary_down_since: Mutex::new(None),
            automatic: Mutex::new(None),
            unsettled: AtomicBool::new(unsettled),
            fences_set: Mutex::new(BTreeSet::new()),
        });
        let mut listeners = vec![(cfg.read_write_listener, Kind::ReadWrite)];
        listeners.extend(cfg.read_only_listener.map(|ro| (ro, Kind::ReadOnly)));
        for (addr, kind) in listeners {
            // A listener already serving stops when the caller drops the stop sender.
            let bound = bind_when_free(addr)
                .await
                .map_err(|source| FailoverError::Bind { addr, source })?;
            proxy::spawn(
                bound,
                kind,
                cfg.max_connections as usize,
                group.route.subscribe(),
                stop.clone(),
            )
            .map_err(|source| FailoverError::Bind { addr, source })?;
        }
        tokio::spawn(group.clone().probe_loop(stop));
        Ok(group)
    }

    /// Waits until no role change (failover, reseed) is in progress and keeps others
    /// from starting while the guard lives: a reload stops a group only then.
    pub async fn idle(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.op.lock().await
    }

    /// The database with the current roles.
    pub fn current_db(&self) -> Database {
        let p = self.primary.lock().map(|p| p.clone()).unwrap_or_default();
        pg::rotated(&self.db, &p)
    }

    async fn probe_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
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
                let ok = probe(&m, t).await;
                // The primary's view of each replica's lag: what a forced failover would lose.
                let ok = match ok {
                    Ok(c) => {
                        self.enforce_fence(&c, &m.name).await;
                        if is_primary {
                            match tokio::time::timeout(t, pg::replica_lag(&c, &db)).await {
                                Ok(Ok(lags)) => {
                                    if let Ok(mut l) = self.lag.lock() {
                                        for (name, b, s) in lags {
                                            l.insert(
                                                name,
                                                Lag {
                                                    bytes: b,
                                                    seconds: s,
                                                },
                                            );
                                        }
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
    async fn enforce_fence(&self, c: &pg::Client, member: &str) {
        let done = self
            .fences_set
            .lock()
            .map(|f| f.contains(member))
            .unwrap_or(true);
        if done || self.unsettled.load(Ordering::SeqCst) {
            return;
        }
        let Ok(_one) = self.op.try_lock() else {
            return;
        };
        let primary = self.current_db().primary.name == member;
        let set = tokio::time::timeout(self.cfg.probe_timeout, pg::set_fence(c, member, !primary))
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

    fn healthy(&self, name: &str) -> bool {
        let fenced = self.fenced.lock().map(|f| f.contains(name)).unwrap_or(true);
        !fenced
            && self
                .health
                .lock()
                .ok()
                .and_then(|h| h.get(name).map(|m| m.healthy))
                .unwrap_or(false)
    }

    /// Under `policy = "automatic"`: fail over once the primary has been unhealthy for the
    /// whole grace period, to a healthy replica whose last known lag is within
    /// `max_data_loss`; otherwise say why not.
    async fn consider_automatic(&self, db: &Database) {
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
        let candidate = db.replicas.iter().find(|r| {
            self.healthy(&r.name)
                && lags
                    .get(&r.name)
                    .and_then(|l| l.seconds)
                    .is_some_and(|s| s <= limit)
        });
        match candidate {
            Some(r) => {
                // Probes can time out while the primary is only slow: before acting,
                // one more look with a longer timeout. Any answer keeps the primary.
                let patient = (self.cfg.probe_timeout * 4).max(Duration::from_secs(2));
                if let Ok(()) | Err(Probe::Answered(_)) =
                    probe(&db.primary, patient).await.map(|_| ())
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
                    tracing::error!(group = %self.cfg.name, error = %e, "automatic failover failed");
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
                let changed = self
                    .automatic
                    .lock()
                    .map(|mut a| {
                        let c = a.as_deref() != Some(why.as_str());
                        *a = Some(why.clone());
                        c
                    })
                    .unwrap_or(false);
                if changed {
                    tracing::warn!(group = %self.cfg.name, "{why}");
                }
            }
        }
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
        let _one = self.op.lock().await;
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
        drop(pg::connect(&format!("replica '{}'", target.name), &target.url).await?);
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
        let data_loss = match (loss.bytes, loss.seconds) {
            (Some(b), Some(s)) => format!("at most the last {s:.1}s ({b} bytes of WAL) before the primary failed, by the last lag seen"),
            (Some(b), None) => format!("up to {b} bytes of WAL (lag in time unknown)"),
            _ => "unknown (no lag was seen)".into(),
        };
        let result = match pg::promote(&db, &target.name).await {
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

    /// Records a role change that happened (the target is promoted): the new epoch
    /// first, then the route; members left behind are fenced.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        epoch: i64,
        kind: &str,
        db: &Database,
        rep: &pg::SwitchoverReport,
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
        let rw = address(&self.current_db().primary.url);
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
    async fn settle_after_error(
        &self,
        epoch: i64,
        kind: &str,
        db: &Database,
        to: &str,
        err: georep_db::DbError,
        held_at: Instant,
        data_loss: String,
    ) -> Result<FailoverReport> {
        match pg::settle(db, to, kind == "planned").await {
            Ok(pg::Settled::RolledBack) => {
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
            Ok(pg::Settled::Finished(rep)) => self.commit(
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
    async fn recover(&self) -> bool {
        let _one = self.op.lock().await;
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
        match pg::settle(&db, &ev.to, planned).await {
            Ok(pg::Settled::RolledBack) => {
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
            Ok(pg::Settled::Finished(rep)) => {
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

    /// Points the read-only listener at a healthy replica (or the primary, if allowed).
    /// A role change that ended in an error while still recorded as in progress (a
    /// state write failed, say) leaves new connections held: the probe loop settles it.
    fn unsettled_on_error(&self, r: Result<FailoverReport>) -> Result<FailoverReport> {
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

    /// Points the read-only listener at [`Self::read_only_targets`].
    fn update_read_only(&self) {
        let ro = self.read_only_targets();
        self.route.send_if_modified(|r| {
            if r.read_only != ro {
                r.read_only = ro.clone();
                true
            } else {
                false
            }
        });
    }

    /// The healthy replicas whose last known lag is within the database's RPO; failing
    /// that, every healthy replica; failing that, the primary if allowed.
    fn read_only_targets(&self) -> Vec<String> {
        let db = self.current_db();
        let lags = self.lag.lock().map(|l| l.clone()).unwrap_or_default();
        let rpo = db.rpo.as_secs_f64();
        let fresh = |name: &str| {
            lags.get(name)
                .and_then(|l| l.seconds)
                .is_some_and(|s| s <= rpo)
        };
        let healthy: Vec<_> = db
            .replicas
            .iter()
            .filter(|r| self.healthy(&r.name))
            .collect();
        let within: Vec<_> = healthy.iter().filter(|r| fresh(&r.name)).collect();
        let mut ro: Vec<String> = if within.is_empty() {
            healthy.iter().filter_map(|r| address(&r.url)).collect()
        } else {
            within.iter().filter_map(|r| address(&r.url)).collect()
        };
        if ro.is_empty() && self.cfg.read_only_to_primary {
            ro.extend(address(&db.primary.url));
        }
        ro
    }

    /// Rebuilds a fenced member as a replica of the current primary (its data is
    /// replaced by a fresh copy), then lets it be routed to again.
    pub async fn reseed(&self, member: &str) -> Result<pg::SetupReport> {
        let _one = self.op.lock().await;
        let fenced = self.fenced.lock().map(|f| f.clone()).unwrap_or_default();
        if !fenced.contains(member) {
            return Err(FailoverError::Refused(format!(
                "member '{member}' is not fenced; only a fenced former primary needs a reseed (fenced: {})",
                if fenced.is_empty() { "none".to_string() } else { fenced.iter().cloned().collect::<Vec<_>>().join(", ") }
            )));
        }
        let db = self.current_db();
        let m = db
            .replicas
            .iter()
            .find(|r| r.name == member)
            .cloned()
            .ok_or_else(|| {
                FailoverError::Refused(format!("'{member}' is not a member of '{}'", db.name))
            })?;
        pg::prepare_reseed(&db, &m).await?;
        let only = Database {
            replicas: vec![m],
            ..db
        };
        let report = pg::setup(&only, Some(Duration::from_secs(3600)), &|_| {}).await?;
        let mut left = fenced;
        left.remove(member);
        let text = left.iter().cloned().collect::<Vec<_>>().join(",");
        self.state
            .failover_set_fenced(&self.cfg.name, (!text.is_empty()).then_some(text.as_str()))?;
        if let Ok(mut f) = self.fenced.lock() {
            *f = left;
        }
        tracing::info!(group = %self.cfg.name, member, "reseeded: the member follows the primary again");
        Ok(report)
    }

    pub fn status(&self) -> Result<GroupStatus> {
        let rec = self
            .state
            .failover(&self.cfg.name)?
            .ok_or_else(|| FailoverError::InvalidConfig("failover group not recorded".into()))?;
        Ok(GroupStatus {
            name: self.cfg.name.clone(),
            database: self.cfg.database.clone(),
            epoch: rec.epoch,
            primary: rec.primary,
            state: rec.state,
            route: self.route.borrow().clone(),
            read_write_listener: self.cfg.read_write_listener.to_string(),
            read_only_listener: self.cfg.read_only_listener.map(|a| a.to_string()),
            members: self
                .health
                .lock()
                .map(|h| h.values().cloned().collect())
                .unwrap_or_default(),
            fenced: self.fenced.lock().map(|f| f.clone()).unwrap_or_default(),
            last_known_lag: self.lag.lock().map(|l| l.clone()).unwrap_or_default(),
            automatic: self.automatic.lock().ok().and_then(|a| a.clone()),
            last_failover: self.last.lock().ok().and_then(|l| l.clone()),
            unsettled: self.unsettled.load(Ordering::SeqCst),
            history: self.state.failover_history(&self.cfg.name, 20)?,
        })
    }

    /// Planned failover to `to` (a member name or region; default: the first healthy
    /// replica): hold new connections, fence the primary, wait for the replica to have
    /// everything, promote it, reverse replication, record the new epoch, route, release.
    pub async fn failover(&self, to: Option<&str>) -> Result<FailoverReport> {
        let _one = self.op.lock().await;
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
        pg::preflight(&db, &target.name, Duration::from_secs(30)).await?;
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
        let result = match pg::switchover(&db, &target.name, Duration::from_secs(30)).await {
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
