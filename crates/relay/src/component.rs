//! [`Relays`], the relay component: one [`Running`] relay per `[[relays]]` entry, its
//! outbox in `relays/NAME.db` beside the state file, its listener bound, brought to
//! each topology the daemon applies. A changed relay is stopped and started again with
//! its outbox (nothing accepted is lost); a removed one keeps its outbox file until it
//! is deleted by hand, with whatever it had not delivered.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use georep_api::{RelayActionReport, RelayList, RelayStatus};
use georep_component::{changed_fields, BoxFuture, Change, ChangeAction, Component, Context};
use georep_core::{Relay, Topology};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::error::RelayError;
use crate::outbox::Outbox;
use crate::relay::Running;

const SECTION: &str = "relays";

struct Started {
    relay: Arc<Running>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabel {
    relay: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    relay: String,
    target: String,
}

struct RelayMetrics {
    accepted: Family<RelayLabel, Gauge>,
    outbox_bytes: Family<RelayLabel, Gauge>,
    oldest: Family<RelayLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    breached: Family<RelayLabel, Gauge>,
    failovers: Family<RelayLabel, Gauge>,
    dead_letters: Family<RelayLabel, Gauge>,
    delivered: Family<TargetLabel, Gauge>,
    pending: Family<TargetLabel, Gauge>,
    healthy: Family<TargetLabel, Gauge>,
}

/// Every relay of the topology, listening and delivering.
pub struct Relays {
    dir: PathBuf,
    metrics: RelayMetrics,
    running: RwLock<BTreeMap<String, Started>>,
    applying: tokio::sync::Mutex<()>,
}

impl Relays {
    pub fn new(ctx: &Context) -> Self {
        let m = RelayMetrics {
            accepted: Family::default(),
            outbox_bytes: Family::default(),
            oldest: Family::default(),
            breached: Family::default(),
            failovers: Family::default(),
            dead_letters: Family::default(),
            delivered: Family::default(),
            pending: Family::default(),
            healthy: Family::default(),
        };
        let r = &ctx.metrics;
        r.register(
            "relay_accepted_events",
            "Events a relay accepted since its outbox was created",
            m.accepted.clone(),
        );
        r.register(
            "relay_outbox_bytes",
            "Bytes of events a relay holds",
            m.outbox_bytes.clone(),
        );
        r.register(
            "relay_oldest_pending_seconds",
            "Age of the oldest event not delivered everywhere",
            m.oldest.clone(),
        );
        r.register(
            "relay_rpo_breached",
            "1 when the oldest pending event is older than the relay's rpo",
            m.breached.clone(),
        );
        r.register(
            "relay_failovers",
            "Target changes of a relay (failovers, failbacks, manual)",
            m.failovers.clone(),
        );
        r.register(
            "relay_dead_letters",
            "Events targets refused as bad data, kept for replay",
            m.dead_letters.clone(),
        );
        r.register(
            "relay_delivered_events",
            "Events delivered to a target",
            m.delivered.clone(),
        );
        r.register(
            "relay_pending_events",
            "Events waiting for a target",
            m.pending.clone(),
        );
        r.register(
            "relay_target_healthy",
            "1 when the last delivery or probe to a target succeeded",
            m.healthy.clone(),
        );
        let dir = ctx
            .state
            .path()
            .parent()
            .map_or_else(|| PathBuf::from("relays"), |p| p.join("relays"));
        Self {
            dir,
            metrics: m,
            running: RwLock::new(BTreeMap::new()),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    fn get(&self, name: &str) -> georep_component::Result<Arc<Running>> {
        self.running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .map(|s| s.relay.clone())
            .ok_or_else(|| georep_component::Error::not_found(format!("no relay named '{name}'")))
    }

    pub fn statuses(&self) -> georep_component::Result<RelayList> {
        let all: Vec<Arc<Running>> = self
            .running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|s| s.relay.clone())
            .collect();
        let relays = all
            .iter()
            .map(|r| r.status().map_err(georep_component::Error::from))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RelayList { relays })
    }

    pub fn status(&self, name: &str) -> georep_component::Result<RelayStatus> {
        Ok(self.get(name)?.status()?)
    }

    /// `switchover`, `switchback` or `replay`.
    pub async fn act(
        &self,
        name: &str,
        action: &str,
    ) -> georep_component::Result<RelayActionReport> {
        let r = self.get(name)?;
        Ok(match action {
            "replay" => r.replay().await?,
            _ => r.manual(action).await?,
        })
    }

    fn start(&self, cfg: &Relay, topo: &Topology) -> Result<Started, RelayError> {
        let open = |what: &str, name: &str| -> Result<georep_storage::Store, RelayError> {
            let def = topo.store(name).ok_or_else(|| {
                RelayError::Refused(format!(
                    "relay '{}': {what} '{name}' is not a store",
                    cfg.name
                ))
            })?;
            georep_storage::Store::open(&def.url, &georep_storage::StoreOptions::default()).map_err(
                |e| {
                    RelayError::Refused(format!("relay '{}': {what} store '{name}': {e}", cfg.name))
                },
            )
        };
        let dead_store = match &cfg.dead_letters {
            None => None,
            Some(name) => Some(open("dead_letters", name)?),
        };
        if let Some(t) = cfg
            .targets
            .iter()
            .find(|t| t.kind == georep_core::TargetKind::EventBridge)
        {
            let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
            if !set("AWS_ACCESS_KEY_ID") || !set("AWS_SECRET_ACCESS_KEY") {
                return Err(RelayError::Refused(format!(
                    "relay '{}': target '{}' (eventbridge) signs with AWS credentials: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) for georep serve",
                    cfg.name, t.name
                )));
            }
        }
        if let Some(t) = cfg
            .targets
            .iter()
            .find(|t| t.kind == georep_core::TargetKind::Logs && t.key.is_none())
        {
            georep_http::entra::Source::from_env().map_err(|e| {
                RelayError::Refused(format!(
                    "relay '{}': target '{}' (logs, no key) gets Microsoft Entra tokens: {e}",
                    cfg.name, t.name
                ))
            })?;
        }
        let mut archives = std::collections::HashMap::new();
        for t in &cfg.targets {
            if let Some(name) = &t.store {
                archives.insert(t.name.clone(), open(&format!("target '{}'", t.name), name)?);
            }
        }
        let path = self.dir.join(format!("{}.db", cfg.name));
        let outbox = Outbox::open(&cfg.name, &path, cfg.max_outbox)?;
        let listener = std::net::TcpListener::bind(cfg.listen).map_err(|e| RelayError::Listen {
            relay: cfg.name.clone(),
            addr: cfg.listen.to_string(),
            detail: e.to_string(),
        })?;
        let tls = match &cfg.tls {
            None => None,
            Some(t) => Some(
                georep_http::tls_config(&t.cert, &t.key)
                    .map_err(|e| RelayError::Refused(format!("relay '{}': {e}", cfg.name)))?,
            ),
        };
        let relay = Running::open(cfg.clone(), outbox, dead_store, archives)?;
        let (stop, rx) = watch::channel(false);
        let tasks = relay.start(listener, tls, rx)?;
        Ok(Started { relay, stop, tasks })
    }

    async fn stop_one(&self, name: &str) {
        let started = self
            .running
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        if let Some(s) = started {
            let _ = s.stop.send(true);
            for t in s.tasks {
                let abort = t.abort_handle();
                if tokio::time::timeout(Duration::from_secs(10), t)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
            }
        }
    }

    fn started(&self) -> Vec<(String, Relay)> {
        self.running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(n, s)| (n.clone(), s.relay.cfg.clone()))
            .collect()
    }
}

fn differences(a: &Relay, b: &Relay) -> Vec<String> {
    changed_fields!(a, b; listen, accept, key, mode, targets, failover_after, failback_after,
        probe_interval, max_outbox, batch, rpo, dead_letters)
}

impl Component for Relays {
    fn section(&self) -> &'static str {
        SECTION
    }

    fn plan(&self, topo: &Topology) -> Vec<Change> {
        let new: Vec<(String, Relay)> = topo
            .relays
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        georep_component::diff(SECTION, &self.started(), &new, differences)
    }

    fn preflight(&self, topo: &Topology) -> Vec<String> {
        let held: Vec<std::net::SocketAddr> =
            self.started().iter().map(|(_, s)| s.listen).collect();
        georep_component::unbindable(
            "relay",
            topo.relays.iter().map(|x| (x.name.clone(), x.listen)),
            &held,
        )
    }

    fn apply<'a>(&'a self, topo: &'a Topology) -> BoxFuture<'a, Vec<Change>> {
        Box::pin(async move {
            let _one = self.applying.lock().await;
            let mut changes = self.plan(topo);
            for c in &mut changes {
                if matches!(c.action, ChangeAction::Change | ChangeAction::Remove) {
                    self.stop_one(&c.name).await;
                }
                if matches!(c.action, ChangeAction::Add | ChangeAction::Change) {
                    let Some(cfg) = topo.relay(&c.name) else {
                        continue;
                    };
                    match self.start(cfg, topo) {
                        Ok(s) => {
                            self.running
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(c.name.clone(), s);
                        }
                        Err(e) => c.error = Some(e.to_string()),
                    }
                }
            }
            changes
        })
    }

    fn refresh(&self) {
        let Ok(list) = self.statuses() else { return };
        let m = &self.metrics;
        for r in list.relays {
            let l = RelayLabel {
                relay: r.name.clone(),
            };
            let g = |n: u64| n.min(i64::MAX as u64) as i64;
            m.accepted.get_or_create(&l).set(g(r.accepted));
            m.outbox_bytes.get_or_create(&l).set(g(r.outbox_bytes));
            m.oldest
                .get_or_create(&l)
                .set(r.oldest_pending_seconds.unwrap_or(0.0));
            m.breached.get_or_create(&l).set(i64::from(r.rpo_breached));
            m.failovers.get_or_create(&l).set(g(r.failovers));
            m.dead_letters.get_or_create(&l).set(g(r.dead_letters));
            for t in r.targets {
                let tl = TargetLabel {
                    relay: r.name.clone(),
                    target: t.name.clone(),
                };
                m.delivered.get_or_create(&tl).set(g(t.delivered));
                m.pending.get_or_create(&tl).set(g(t.pending));
                m.healthy.get_or_create(&tl).set(i64::from(t.healthy));
            }
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let names: Vec<String> = self.started().into_iter().map(|(n, _)| n).collect();
            for n in names {
                self.stop_one(&n).await;
            }
        })
    }
}
