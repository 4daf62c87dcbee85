//! [`Concierges`], the daemon component: per `[[concierges]]` entry, the device API on
//! its listener, the fleet read from its identities object every 5 s (a bad file
//! keeps the previous fleet and is logged) and kept on every hub with an admin
//! account (`dynsec`), and hub probes that move
//! devices: to the next healthy hub after `failover_after` failed probes of the current
//! one, back to a preferred hub once it has been healthy for `failback_after`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use georep_component::{changed_fields, BoxFuture, Change, ChangeAction, Component, Context};
use georep_core::{Concierge, Topology};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::api::{HubView, Shared};
use crate::assign::Signer;

const SECTION: &str = "concierges";
/// How often the identities are read and kept on every hub.
const RELOAD: Duration = Duration::from_secs(5);

struct Started {
    cfg: Concierge,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConciergeLabel {
    concierge: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HubLabel {
    concierge: String,
    hub: String,
}

#[derive(Default)]
struct Metrics {
    devices: Family<ConciergeLabel, Gauge>,
    served: Family<ConciergeLabel, Gauge>,
    refused: Family<ConciergeLabel, Gauge>,
    healthy: Family<HubLabel, Gauge>,
    current: Family<HubLabel, Gauge>,
}

/// Every concierge of the topology.
pub struct Concierges {
    running: RwLock<BTreeMap<String, Started>>,
    applying: tokio::sync::Mutex<()>,
    metrics: Metrics,
}

impl Concierges {
    pub fn new(ctx: &Context) -> Self {
        let m = Metrics::default();
        let r = &ctx.metrics;
        r.register(
            "concierge_devices",
            "Devices in a concierge's fleet",
            m.devices.clone(),
        );
        r.register(
            "concierge_assignments",
            "Assignments a concierge gave since it started",
            m.served.clone(),
        );
        r.register(
            "concierge_refused_requests",
            "Assignment requests refused (no token, unknown or disabled device, bad signature) since start",
            m.refused.clone(),
        );
        r.register(
            "concierge_hub_healthy",
            "1 while probes find a hub healthy (an MQTT round trip)",
            m.healthy.clone(),
        );
        r.register(
            "concierge_current_hub",
            "1 for the hub a concierge sends devices to",
            m.current.clone(),
        );
        Self {
            running: RwLock::new(BTreeMap::new()),
            applying: tokio::sync::Mutex::new(()),
            metrics: m,
        }
    }

    fn started(&self) -> Vec<(String, Concierge)> {
        self.running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(n, s)| (n.clone(), s.cfg.clone()))
            .collect()
    }

    async fn start(&self, cfg: &Concierge, topo: &Topology) -> Result<Started, String> {
        let name = &cfg.name;
        let tls = match &cfg.tls {
            None => None,
            Some(t) => Some(
                georep_http::tls_config(&t.cert, &t.key)
                    .map_err(|e| format!("concierge '{name}': {e}"))?,
            ),
        };
        let def = topo.store(&cfg.identities.store).ok_or_else(|| {
            format!(
                "concierge '{name}': identities store '{}' is not declared",
                cfg.identities.store
            )
        })?;
        let store = georep_storage::Store::open(&def.url, &georep_storage::StoreOptions::default())
            .map_err(|e| {
                format!(
                    "concierge '{name}': identities store '{}': {e}",
                    cfg.identities.store
                )
            })?;
        let fleet = load(&store, &cfg.identities.object)
            .await
            .map_err(|e| format!("concierge '{name}': {e}"))?;
        let signer =
            Signer::from_seed(&cfg.signing_key).map_err(|e| format!("concierge '{name}': {e}"))?;
        let hubs = cfg
            .hubs
            .iter()
            .map(|h| HubView {
                name: h.name.clone(),
                region: h.region.clone(),
                url: h.url.clone(),
                healthy: true,
            })
            .collect();
        let shared = Shared::new(signer, hubs, cfg.ttl);
        shared.set_devices(fleet);
        let listener = std::net::TcpListener::bind(cfg.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| format!("concierge '{name}': cannot listen on {}: {e}", cfg.listen))?;
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let app = crate::api::router(shared.clone());
        let guarded = georep_http::Guarded::new(listener, tls, rx.clone())
            .map_err(|e| format!("concierge '{name}': {e}"))?;
        tasks.push(tokio::spawn(guarded.serve(app, rx.clone())));
        tasks.push(tokio::spawn(probes(
            cfg.clone(),
            shared.clone(),
            rx.clone(),
        )));
        tasks.push(tokio::spawn(reload(cfg.clone(), store, shared.clone(), rx)));
        Ok(Started {
            cfg: cfg.clone(),
            shared,
            stop,
            tasks,
        })
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
}

/// The fleet in `object` of `store`.
async fn load(
    store: &georep_storage::Store,
    object: &str,
) -> Result<BTreeMap<String, crate::identities::Device>, String> {
    let bytes = store
        .get(object, 1 << 20)
        .await
        .map_err(|e| format!("identities object '{object}': {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("identities object '{object}': {e}"))?;
    crate::identities::parse(&bytes).map_err(|e| format!("{object}: {e}"))
}

/// Reads the fleet every [`RELOAD`] (a bad file keeps the previous one) and keeps it
/// on every hub that has an admin account.
async fn reload(
    cfg: Concierge,
    store: georep_storage::Store,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let tag = format!("georep:{}", cfg.name);
    // Per hub: the key each managed device's password was last set from.
    let mut set: Vec<BTreeMap<String, Vec<u8>>> = vec![BTreeMap::new(); cfg.hubs.len()];
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                () = tokio::time::sleep(RELOAD) => {}
                _ = stop.changed() => return,
            }
        }
        first = false;
        let fleet = match load(&store, &cfg.identities.object).await {
            Ok(fleet) => {
                shared.set_devices(fleet.clone());
                fleet
            }
            Err(e) => {
                tracing::error!(concierge = %cfg.name, error = %e, "cannot read the identities; devices keep the previous ones");
                continue;
            }
        };
        for (i, hub) in cfg.hubs.iter().enumerate() {
            let (Some(user), Some(pw)) = (hub.username.as_deref(), hub.password.as_deref()) else {
                continue;
            };
            if let Err(e) = keep(
                &tag,
                &fleet,
                hub,
                (user, pw),
                cfg.probe_timeout,
                &mut set[i],
            )
            .await
            {
                tracing::warn!(concierge = %cfg.name, hub = %hub.name, error = %e, "cannot keep identities on the hub");
            }
        }
    }
}

/// One pass of keeping `fleet` on `hub`.
async fn keep(
    tag: &str,
    fleet: &BTreeMap<String, crate::identities::Device>,
    hub: &georep_core::Hub,
    admin: (&str, &str),
    timeout: Duration,
    set: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), String> {
    use serde_json::json;
    let mut asks = vec![json!({"command": "listClients", "verbose": true})];
    if set.is_empty() {
        // The probe role, once per start (an existing one answers an error, ignored).
        asks.extend([
            json!({"command": "createRole", "rolename": "georep-probe"}),
            json!({"command": "addRoleACL", "rolename": "georep-probe", "acltype": "publishClientSend", "topic": "georep/probe/#", "allow": true}),
            json!({"command": "addRoleACL", "rolename": "georep-probe", "acltype": "subscribePattern", "topic": "georep/probe/#", "allow": true}),
            json!({"command": "addRoleACL", "rolename": "georep-probe", "acltype": "publishClientReceive", "topic": "georep/probe/#", "allow": true}),
            json!({"command": "addClientRole", "username": admin.0, "rolename": "georep-probe"}),
        ]);
    }
    let answers = crate::dynsec::call(&hub.url, admin, asks, timeout).await?;
    let clients = answers
        .first()
        .and_then(|a| a["data"]["clients"].as_array().cloned())
        .ok_or("listClients gave no clients")?;
    let disabled: Vec<String> = clients
        .iter()
        .filter(|c| c["disabled"] == json!(true))
        .filter_map(|c| c["username"].as_str().map(str::to_string))
        .collect();
    let (cmds, drift) = crate::dynsec::plan(tag, fleet, &clients, &disabled, &|id| {
        fleet.get(id).is_some_and(|d| set.get(id) != Some(&d.key))
    });
    for d in &drift {
        tracing::warn!(hub = %hub.name, "identity drift: {d}");
    }
    if cmds.is_empty() {
        return Ok(());
    }
    let n = cmds.len();
    let answers = crate::dynsec::call(&hub.url, admin, cmds, timeout).await?;
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|a| {
            a["error"]
                .as_str()
                .map(|e| format!("{}: {e}", a["command"].as_str().unwrap_or("?")))
        })
        .collect();
    if !failed.is_empty() {
        return Err(format!(
            "{} of {n} commands failed: {}",
            failed.len(),
            failed.join("; ")
        ));
    }
    *set = fleet
        .iter()
        .map(|(id, d)| (id.clone(), d.key.clone()))
        .collect();
    tracing::info!(hub = %hub.name, commands = n, "identities kept on the hub");
    Ok(())
}

/// Probes every hub each `probe_interval` and moves devices by the rules.
async fn probes(cfg: Concierge, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let n = cfg.hubs.len();
    let mut failures = vec![0u32; n];
    let mut healthy_since: Vec<Option<Instant>> = vec![Some(Instant::now()); n];
    loop {
        let rounds = cfg.hubs.iter().map(|h| {
            let account = h.username.as_deref().zip(h.password.as_deref());
            crate::probe::round_trip(&h.url, account, cfg.probe_timeout)
        });
        let results = futures::future::join_all(rounds).await;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(_) => {
                    failures[i] = 0;
                    healthy_since[i].get_or_insert_with(Instant::now);
                    shared.set_healthy(i, true);
                }
                Err(e) => {
                    failures[i] += 1;
                    healthy_since[i] = None;
                    if failures[i] >= cfg.failover_after {
                        shared.set_healthy(i, false);
                    }
                    tracing::warn!(concierge = %cfg.name, hub = %cfg.hubs[i].name, error = %e, "hub probe failed");
                }
            }
        }
        let current = shared.current();
        // Failback: the first hub before the current one healthy long enough.
        let back = (0..current)
            .find(|&i| healthy_since[i].is_some_and(|t| t.elapsed() >= cfg.failback_after));
        let next = if let Some(b) = back {
            Some((b, "failback"))
        } else if failures[current] >= cfg.failover_after {
            (1..n)
                .map(|k| (current + k) % n)
                .find(|&i| failures[i] == 0)
                .map(|i| (i, "failover"))
        } else {
            None
        };
        if let Some((to, why)) = next {
            tracing::warn!(concierge = %cfg.name, from = %cfg.hubs[current].name, to = %cfg.hubs[to].name, "{why}: devices are sent to another hub");
            shared.set_current(to);
        }
        tokio::select! {
            () = tokio::time::sleep(cfg.probe_interval) => {}
            _ = stop.changed() => return,
        }
    }
}

fn differences(a: &Concierge, b: &Concierge) -> Vec<String> {
    changed_fields!(a, b; listen, tls, signing_key, hubs, identities, failover_after,
        failback_after, probe_interval, probe_timeout, ttl)
}

impl Component for Concierges {
    fn section(&self) -> &'static str {
        SECTION
    }

    fn plan(&self, topo: &Topology) -> Vec<Change> {
        let new: Vec<(String, Concierge)> = topo
            .concierges
            .iter()
            .map(|c| (c.name.clone(), c.clone()))
            .collect();
        georep_component::diff(SECTION, &self.started(), &new, differences)
    }

    fn preflight(&self, topo: &Topology) -> Vec<String> {
        let held: Vec<std::net::SocketAddr> =
            self.started().iter().map(|(_, s)| s.listen).collect();
        georep_component::unbindable(
            "concierge",
            topo.concierges.iter().map(|x| (x.name.clone(), x.listen)),
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
                    let Some(cfg) = topo.concierge(&c.name) else {
                        continue;
                    };
                    match self.start(cfg, topo).await {
                        Ok(s) => {
                            self.running
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(c.name.clone(), s);
                        }
                        Err(e) => c.error = Some(e),
                    }
                }
            }
            changes
        })
    }

    fn refresh(&self) {
        let running = self
            .running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let m = &self.metrics;
        for (name, s) in running.iter() {
            let l = ConciergeLabel {
                concierge: name.clone(),
            };
            let g = |n: u64| n.min(i64::MAX as u64) as i64;
            m.devices
                .get_or_create(&l)
                .set(g(s.shared.devices() as u64));
            m.served.get_or_create(&l).set(g(s
                .shared
                .served
                .load(std::sync::atomic::Ordering::Relaxed)));
            m.refused.get_or_create(&l).set(g(s
                .shared
                .refused
                .load(std::sync::atomic::Ordering::Relaxed)));
            let current = s.shared.current();
            for (i, h) in s.shared.hubs().into_iter().enumerate() {
                let hl = HubLabel {
                    concierge: name.clone(),
                    hub: h.name,
                };
                m.healthy.get_or_create(&hl).set(i64::from(h.healthy));
                m.current.get_or_create(&hl).set(i64::from(i == current));
            }
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for (name, _) in self.started() {
                self.stop_one(&name).await;
            }
        })
    }
}
