//! One failover group at run time: listeners, health probes, the recorded epoch, and
//! planned failover.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use georep_core::{Database, FailoverGroup};
use georep_db::postgres as pg;
use georep_state::State;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::{self, Kind, Route};
use crate::{FailoverError, Result};

/// What the probes last saw of one member.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemberHealth {
    pub member: String,
    pub region: String,
    pub role: String,
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_ok: Option<String>,
}

/// A group's status for the API and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    pub name: String,
    pub database: String,
    pub epoch: i64,
    pub primary: String,
    pub state: String,
    pub route: Route,
    pub read_write_listener: String,
    pub read_only_listener: Option<String>,
    pub members: Vec<MemberHealth>,
    pub last_failover: Option<FailoverReport>,
}

/// What a failover did.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub kind: String,
    pub from: String,
    pub to: String,
    pub epoch: i64,
    /// From holding new connections to releasing them at the new primary.
    pub write_gap_ms: u64,
    pub catch_up_ms: u64,
    pub data_loss: String,
    pub finished_at: String,
}

pub struct Group {
    pub cfg: FailoverGroup,
    db: Database,
    state: Arc<State>,
    route: watch::Sender<Route>,
    primary: Mutex<String>,
    health: Mutex<BTreeMap<String, MemberHealth>>,
    op: tokio::sync::Mutex<()>,
    last: Mutex<Option<FailoverReport>>,
}

/// `host:port` of a member's URL.
fn address(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port().unwrap_or(5432)))
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
        if rec.state != "stable" {
            tracing::warn!(group = %cfg.name, state = %rec.state, "resuming with the recorded primary after an interrupted role change");
        }
        let current = pg::rotated(&db, &rec.primary);
        let route = Route {
            epoch: rec.epoch,
            read_write: address(&current.primary.url),
            read_only: if cfg.read_only_to_primary {
                address(&current.primary.url)
            } else {
                None
            },
            held: false,
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
        });
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| FailoverError::Bind { addr, source })
        };
        let rw = bind(cfg.read_write_listener).await?;
        tokio::spawn(proxy::serve(
            rw,
            Kind::ReadWrite,
            group.route.subscribe(),
            stop.clone(),
        ));
        if let Some(ro) = cfg.read_only_listener {
            let ro = bind(ro).await?;
            tokio::spawn(proxy::serve(
                ro,
                Kind::ReadOnly,
                group.route.subscribe(),
                stop.clone(),
            ));
        }
        tokio::spawn(group.clone().probe_loop(stop));
        Ok(group)
    }

    /// The database with the current roles.
    pub fn current_db(&self) -> Database {
        let p = self.primary.lock().map(|p| p.clone()).unwrap_or_default();
        pg::rotated(&self.db, &p)
    }

    async fn probe_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let db = self.current_db();
            let members: Vec<_> = std::iter::once((db.primary.clone(), "primary"))
                .chain(db.replicas.iter().map(|r| (r.clone(), "replica")))
                .collect();
            for (m, role) in members {
                let t = self.cfg.probe_timeout;
                let ok = tokio::time::timeout(t, async {
                    let c = pg::connect(&m.name, &m.url)
                        .await
                        .map_err(|e| e.to_string())?;
                    c.simple_query("SELECT 1")
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<(), String>(())
                })
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {t:?}")));
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
                        Err(err) => {
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
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.probe_interval) => {}
                _ = stop.changed() => break,
            }
        }
    }

    /// Points the read-only listener at a healthy replica (or the primary, if allowed).
    fn update_read_only(&self) {
        let db = self.current_db();
        let healthy = |name: &str| {
            self.health
                .lock()
                .ok()
                .and_then(|h| h.get(name).map(|m| m.healthy))
                .unwrap_or(false)
        };
        let ro = db
            .replicas
            .iter()
            .find(|r| healthy(&r.name))
            .and_then(|r| address(&r.url))
            .or_else(|| {
                self.cfg
                    .read_only_to_primary
                    .then(|| address(&db.primary.url))
                    .flatten()
            });
        self.route.send_if_modified(|r| {
            if r.read_only != ro {
                r.read_only = ro.clone();
                true
            } else {
                false
            }
        });
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
            last_failover: self.last.lock().ok().and_then(|l| l.clone()),
        })
    }

    /// Planned failover to `to` (a member name or region; default: the first healthy
    /// replica): hold new connections, fence the primary, wait for the replica to have
    /// everything, promote it, reverse replication, record the new epoch, route, release.
    pub async fn failover(&self, to: Option<&str>) -> Result<FailoverReport> {
        let _one = self.op.lock().await;
        let db = self.current_db();
        let healthy = |name: &str| {
            self.health
                .lock()
                .ok()
                .and_then(|h| h.get(name).map(|m| m.healthy))
                .unwrap_or(false)
        };
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
        let epoch = rec.epoch + 1;
        self.state.failover_history_start(
            &self.cfg.name,
            epoch,
            "planned",
            &db.primary.name,
            &target.name,
        )?;
        let held_at = Instant::now();
        self.route.send_modify(|r| r.held = true);
        tracing::info!(group = %self.cfg.name, from = %db.primary.name, to = %target.name, "planned failover: holding new connections");
        let result = pg::switchover(&db, &target.name, Duration::from_secs(30)).await;
        let rep = match result {
            Ok(rep) => rep,
            Err(e) => {
                self.route.send_modify(|r| r.held = false);
                return Err(e.into());
            }
        };
        // The epoch is durable before any listener routes by it.
        if !self
            .state
            .failover_advance(&self.cfg.name, epoch, &target.name, "stable", None)?
        {
            self.route.send_modify(|r| r.held = false);
            return Err(FailoverError::Refused(format!(
                "epoch {epoch} is not newer than the recorded one: another failover won; routing unchanged"
            )));
        }
        if let Ok(mut p) = self.primary.lock() {
            *p = target.name.clone();
        }
        let new_db = self.current_db();
        let rw = address(&new_db.primary.url);
        self.route.send_modify(|r| {
            r.epoch = epoch;
            r.read_write = rw.clone();
            r.held = false;
        });
        self.update_read_only();
        let gap = held_at.elapsed().as_millis() as u64;
        self.state
            .failover_history_finish(&self.cfg.name, epoch, gap as i64, "none (planned)")?;
        let report = FailoverReport {
            kind: "planned".into(),
            from: rep.from,
            to: rep.to,
            epoch,
            write_gap_ms: gap,
            catch_up_ms: rep.catch_up_ms,
            data_loss:
                "none: every write acknowledged before the fence was confirmed by the new primary"
                    .into(),
            finished_at: chrono::Utc::now().to_rfc3339(),
        };
        tracing::info!(group = %self.cfg.name, epoch, write_gap_ms = gap, "planned failover done");
        if let Ok(mut l) = self.last.lock() {
            *l = Some(report.clone());
        }
        Ok(report)
    }
}
