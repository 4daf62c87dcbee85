//! [`Concierges`], the daemon component: per `[[concierges]]` entry, the device API on
//! its listener; the identities object watched (its properties read every `poll`, the
//! body only when they change, and every 30 s regardless; a bad file keeps the previous
//! fleet and is reported); one keeper per hub with an admin account that keeps the
//! fleet there (`dynsec`) on every change and every 30 s, so a hub that is down never
//! holds the others back; and hub probes that move devices: to the next healthy hub
//! after `failover_after` failed probes of the current one, back to a preferred hub
//! once it has been healthy for `failback_after` (not while an operator holds them).
//! The current hub, the hold, pins and failovers are saved in `concierges/NAME.json`
//! beside the state file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use georep_api::{
    ConciergeActionReport, ConciergeIdentities, ConciergeList, ConciergePinRequest, ConciergeStatus,
};
use georep_component::{changed_fields, BoxFuture, Change, ChangeAction, Component, Context};
use georep_core::{Concierge, Topology};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::assign::Signer;
use crate::dynsec::Applied;
use crate::shared::{About, HubView, Shared};

const SECTION: &str = "concierges";
/// The identities are read, and kept on every hub, at least this often.
const RESYNC: Duration = Duration::from_secs(30);
/// Dynamic security commands sent at once.
const DYNSEC_BATCH: usize = 200;

/// How long a dynamic security exchange may take: at least 30 s (a hub saves its
/// configuration after each command), or the probe timeout when longer.
fn dynsec_timeout(k: &Keeper) -> Duration {
    k.timeout.max(Duration::from_secs(30))
}

/// Drift listed in status, per hub.
const DRIFT_SHOWN: usize = 20;

type Fleet = Arc<crate::identities::Fleet>;
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
    failovers: Family<ConciergeLabel, Gauge>,
    pending: Family<HubLabel, Gauge>,
    drifted: Family<HubLabel, Gauge>,
}

/// Every concierge of the topology.
pub struct Concierges {
    running: RwLock<BTreeMap<String, Started>>,
    applying: tokio::sync::Mutex<()>,
    metrics: Metrics,
    /// `concierges/` beside the state file.
    dir: PathBuf,
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
        r.register(
            "concierge_failovers",
            "Changes of the hub devices are sent to (failovers and failbacks, automatic and manual)",
            m.failovers.clone(),
        );
        r.register(
            "concierge_identities_pending",
            "Device identities not yet as the fleet says on a hub",
            m.pending.clone(),
        );
        r.register(
            "concierge_identities_drifted",
            "Device identities changed on a hub by someone else (reported, left alone)",
            m.drifted.clone(),
        );
        let dir = ctx
            .state
            .path()
            .parent()
            .map_or_else(|| PathBuf::from(SECTION), |p| p.join(SECTION));
        Self {
            running: RwLock::new(BTreeMap::new()),
            applying: tokio::sync::Mutex::new(()),
            metrics: m,
            dir,
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

    fn get(&self, name: &str) -> georep_component::Result<(Concierge, Arc<Shared>)> {
        self.running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .map(|s| (s.cfg.clone(), s.shared.clone()))
            .ok_or_else(|| {
                georep_component::Error::not_found(format!(
                    "no concierge '{name}' is running; see `georep concierge status`"
                ))
            })
    }

    /// Every running concierge.
    pub fn statuses(&self) -> ConciergeList {
        let all: Vec<Arc<Shared>> = self
            .running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|s| s.shared.clone())
            .collect();
        ConciergeList {
            concierges: all.iter().map(|s| s.status()).collect(),
        }
    }

    pub fn status(&self, name: &str) -> georep_component::Result<ConciergeStatus> {
        Ok(self.get(name)?.1.status())
    }

    fn report(name: &str, action: &str, s: &Shared, at_ms: u64) -> ConciergeActionReport {
        let st = s.status();
        ConciergeActionReport {
            concierge: name.to_string(),
            action: action.to_string(),
            at_ms,
            current_hub: st.current_hub,
            held: st.held,
            pins: st.pins,
        }
    }

    /// Sends devices to hub `to` (else the next healthy one) and holds them there: no
    /// automatic failback until [`Concierges::failback`].
    pub fn failover(
        &self,
        name: &str,
        to: Option<&str>,
    ) -> georep_component::Result<ConciergeActionReport> {
        let (_, s) = self.get(name)?;
        let hubs = s.hubs();
        let current = s.current();
        let target = match to {
            Some(t) => hubs.iter().position(|h| h.name == t).ok_or_else(|| {
                georep_component::Error::not_found(format!(
                    "concierge '{name}' has no hub '{t}'; its hubs: {}",
                    names(&hubs)
                ))
            })?,
            None => (1..hubs.len())
                .map(|k| (current + k) % hubs.len())
                .find(|&i| hubs[i].healthy)
                .ok_or_else(|| {
                    georep_component::Error::refused(format!(
                        "concierge '{name}': no other hub is healthy; see `georep concierge status {name}`"
                    ))
                })?,
        };
        if !hubs[target].healthy {
            return Err(georep_component::Error::refused(format!(
                "concierge '{name}': hub '{}' fails its probes ({}); devices would be sent to a hub they cannot use",
                hubs[target].name,
                s.status().hubs[target].last_error.clone().unwrap_or_default()
            )));
        }
        let at = crate::shared::now_ms();
        s.move_to(target, "manual failover", Some(true));
        Ok(Self::report(name, "failover", &s, at))
    }

    /// Sends devices back to the preferred hub; automatic failover and failback apply
    /// again.
    pub fn failback(&self, name: &str) -> georep_component::Result<ConciergeActionReport> {
        let (_, s) = self.get(name)?;
        let hubs = s.hubs();
        if let Some(first) = hubs.first().filter(|h| !h.healthy) {
            return Err(georep_component::Error::refused(format!(
                "concierge '{name}': the preferred hub '{}' fails its probes; fail back once it is healthy",
                first.name
            )));
        }
        let at = crate::shared::now_ms();
        s.move_to(0, "manual failback", Some(false));
        Ok(Self::report(name, "failback", &s, at))
    }

    /// Pins (or, without a hub, unpins) a device or a group.
    pub fn pin(
        &self,
        name: &str,
        req: &ConciergePinRequest,
    ) -> georep_component::Result<ConciergeActionReport> {
        let (_, s) = self.get(name)?;
        let fleet = s.fleet();
        // Unpinning needs no member of the fleet: a device or group that left must
        // still be unpinnable.
        let unpin = req.hub.is_none();
        let who = match (&req.device, &req.group) {
            (Some(d), None) => {
                if !unpin && !fleet.contains_key(d) {
                    return Err(georep_component::Error::not_found(format!(
                        "concierge '{name}': no device '{d}' in the fleet"
                    )));
                }
                format!("device:{d}")
            }
            (None, Some(g)) => {
                if !unpin && !fleet.values().any(|d| d.group.as_deref() == Some(g)) {
                    return Err(georep_component::Error::not_found(format!(
                        "concierge '{name}': no device of the fleet is in group '{g}'"
                    )));
                }
                format!("group:{g}")
            }
            _ => {
                return Err(georep_component::Error::invalid(
                    "name one device or one group: {\"device\": \"ID\"} or {\"group\": \"NAME\"}, with \"hub\" to pin or without to unpin",
                ))
            }
        };
        if let Some(h) = &req.hub {
            let hubs = s.hubs();
            if !hubs.iter().any(|x| &x.name == h) {
                return Err(georep_component::Error::not_found(format!(
                    "concierge '{name}' has no hub '{h}'; its hubs: {}",
                    names(&hubs)
                )));
            }
        }
        let at = crate::shared::now_ms();
        s.pin(&who, req.hub.as_deref());
        s.save().map_err(georep_component::Error::internal)?;
        s.notify(georep_device::Reassign {
            group: req.group.clone(),
            devices: req.device.iter().cloned().collect(),
            spread_ms: 0,
        });
        let action = if req.hub.is_some() { "pin" } else { "unpin" };
        Ok(Self::report(name, action, &s, at))
    }

    /// Where each device (of `group`) is assigned and connected.
    pub fn devices(
        &self,
        name: &str,
        group: Option<&str>,
    ) -> georep_component::Result<georep_api::ConciergeDevices> {
        let (_, s) = self.get(name)?;
        Ok(georep_api::ConciergeDevices {
            concierge: name.to_string(),
            now_ms: crate::shared::now_ms(),
            devices: s.device_views(group),
        })
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
        // An identities store that cannot be read now does not keep the concierge from
        // starting: devices are told to come back (503) and hubs are left as they are
        // until the fleet is read.
        let fleet = load(&store, &cfg.identities.object).await;
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
        let path = self.dir.join(format!("{name}.json"));
        let saved = crate::saved::read(&path).unwrap_or_else(|e| {
            tracing::error!(concierge = %name, error = %e, "starting afresh: devices go to the preferred hub, no pins");
            crate::saved::Saved::default()
        });
        let about = About {
            name: name.clone(),
            listen: cfg.listen.to_string(),
            identities: format!("{}/{}", cfg.identities.store, cfg.identities.object),
            ttl: cfg.ttl,
        };
        let shared = Shared::with_saved(signer, hubs, about, Some(path));
        shared.restore(saved);
        let fleet = match fleet {
            Ok(f) => {
                shared.set_devices(f.devices.clone());
                shared.identities_read(Ok(()));
                Some(Arc::new(f))
            }
            Err(e) => {
                tracing::error!(concierge = %name, error = %e, "cannot read the identities: devices are told to come back, hubs are left as they are, until they can be read");
                shared.identities_read(Err(e));
                None
            }
        };
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
        let (fleet_tx, fleet_rx) = watch::channel(fleet);
        for (i, hub) in cfg.hubs.iter().enumerate() {
            if hub.username.is_none() || hub.password.is_none() {
                continue;
            }
            tasks.push(tokio::spawn(crate::presence::watch(
                name.clone(),
                i,
                hub.clone(),
                shared.clone(),
                rx.clone(),
            )));
            // For a hub file made now; one read back keeps its own.
            let mut salt = [0u8; 32];
            let _ = aws_lc_rs::rand::fill(&mut salt);
            tasks.push(tokio::spawn(keeper(
                Keeper {
                    max_delete: cfg.max_delete,
                    bridge: cfg.bridge.clone(),
                    saved: self.dir.join(format!("{name}.hub-{}.json", hub.name)),
                    salt: salt.to_vec(),
                    tag: format!("georep:{name}"),
                    concierge: name.clone(),
                    place: i,
                    hub: hub.clone(),
                    timeout: cfg.probe_timeout,
                    shared: shared.clone(),
                },
                fleet_rx.clone(),
                rx.clone(),
            )));
        }
        if !cfg.bridge.is_empty() {
            tasks.push(tokio::spawn(crate::bridge::run(
                name.clone(),
                cfg.hubs.clone(),
                cfg.bridge.clone(),
                shared.clone(),
                rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(watch_identities(
            cfg.clone(),
            store,
            shared.clone(),
            fleet_tx,
            rx,
        )));
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

fn names(hubs: &[HubView]) -> String {
    hubs.iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fleet in `object` of `store`.
async fn load(
    store: &georep_storage::Store,
    object: &str,
) -> Result<crate::identities::Fleet, String> {
    let bytes = store
        .get(object, 1 << 20)
        .await
        .map_err(|e| format!("identities object '{object}': {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("identities object '{object}': {e}"))?;
    crate::identities::parse(&bytes).map_err(|e| format!("{object}: {e}"))
}

/// Watches the identities object: its properties every `poll`, its body when they
/// change (and every [`RESYNC`]); a new fleet goes to the API and to every keeper. A
/// bad or unreadable object keeps the previous fleet; the error is logged when it
/// changes and shown in status.
async fn watch_identities(
    cfg: Concierge,
    store: georep_storage::Store,
    shared: Arc<Shared>,
    fleet: watch::Sender<Option<Fleet>>,
    mut stop: watch::Receiver<bool>,
) {
    let object = &cfg.identities.object;
    let mut seen = None;
    let mut read_at = Instant::now();
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(cfg.identities.poll) => {}
            _ = stop.changed() => return,
        }
        let r: Result<Option<crate::identities::Fleet>, String> = async {
            let e = store
                .head(object)
                .await
                .map_err(|e| format!("identities object '{object}': {e}"))?;
            let sig = Some((e.size, e.last_modified, e.e_tag));
            if sig == seen && read_at.elapsed() < RESYNC {
                return Ok(None);
            }
            let got = load(&store, object).await?;
            seen = sig;
            read_at = Instant::now();
            Ok(Some(got))
        }
        .await;
        match r {
            Ok(None) => {}
            Ok(Some(got)) => {
                shared.identities_read(Ok(()));
                if last_error.take().is_some() {
                    tracing::info!(concierge = %cfg.name, "the identities can be read again");
                }
                if fleet.borrow().as_deref() != Some(&got) {
                    shared.set_devices(got.devices.clone());
                    fleet.send_replace(Some(Arc::new(got)));
                }
            }
            Err(e) => {
                shared.identities_read(Err(e.clone()));
                if last_error.as_ref() != Some(&e) {
                    tracing::error!(concierge = %cfg.name, error = %e, "cannot read the identities; devices keep the previous ones");
                    last_error = Some(e);
                }
            }
        }
    }
}

/// One hub's identity keeper.
struct Keeper {
    /// The mass-delete guard.
    max_delete: georep_core::MaxDelete,
    /// Bridged topic filters: the admin account's role must cover them.
    bridge: Vec<String>,
    /// Where what it set is saved.
    saved: PathBuf,
    /// Keys the digests of device keys in `saved`.
    salt: Vec<u8>,
    tag: String,
    concierge: String,
    place: usize,
    hub: georep_core::Hub,
    timeout: Duration,
    shared: Arc<Shared>,
}

/// Keeps the fleet on one hub: at once on every change, every [`RESYNC`] otherwise,
/// and after a failure again after 1 s, doubling to 30 s.
async fn keeper(
    k: Keeper,
    mut fleet: watch::Receiver<Option<Fleet>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut applied = match crate::saved::read_json::<Applied>(&k.saved) {
        Ok(a) => a.salted(&k.salt),
        Err(e) => {
            tracing::warn!(concierge = %k.concierge, hub = %k.hub.name, error = %e, "what was set on the hub is not known: every identity is set again");
            Applied::new(&k.salt)
        }
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let Some(read) = fleet.borrow_and_update().clone() else {
            // Not read yet: nothing to keep.
            tokio::select! {
                r = fleet.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
            continue;
        };
        let now = crate::dynsec::with_device_role(&read, &k.concierge);
        let wait = match keep(&k, &now, &mut applied).await {
            Ok(()) => {
                backoff = Duration::from_secs(1);
                RESYNC
            }
            Err(e) => {
                tracing::warn!(concierge = %k.concierge, hub = %k.hub.name, error = %e, "cannot keep identities on the hub");
                let mut ids = k.shared.identities_of(k.place);
                let in_sync = now.devices.values().filter(|d| applied.has(d)).count() as u64;
                ids.managed = true;
                ids.in_sync = in_sync.saturating_sub(ids.drifted);
                ids.pending = (now.devices.len() as u64).saturating_sub(in_sync)
                    + applied
                        .devices
                        .keys()
                        .filter(|id| !now.devices.contains_key(*id))
                        .count() as u64;
                ids.last_error = Some(e);
                k.shared.kept(k.place, ids);
                let w = backoff;
                backoff = (backoff * 2).min(RESYNC);
                w
            }
        };
        tokio::select! {
            r = fleet.changed() => if r.is_err() { return },
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The hub's clients and roles (verbose).
async fn listing(
    k: &Keeper,
    admin: (&str, &str),
) -> Result<(Vec<serde_json::Value>, Vec<serde_json::Value>), String> {
    use serde_json::json;
    let asks = vec![
        json!({"command": "listClients", "verbose": true}),
        json!({"command": "listRoles", "verbose": true}),
    ];
    let answers = crate::dynsec::call(&k.hub.url, admin, asks, dynsec_timeout(k)).await?;
    let list = |i: usize, what: &str| {
        answers
            .get(i)
            .and_then(|a| a["data"][what].as_array().cloned())
            .ok_or(format!("the hub's dynamic security gave no {what}"))
    };
    Ok((list(0, "clients")?, list(1, "roles")?))
}

/// One pass of keeping `fleet` on the keeper's hub.
async fn keep(
    k: &Keeper,
    fleet: &crate::identities::Fleet,
    applied: &mut Applied,
) -> Result<(), String> {
    let (Some(user), Some(pw)) = (k.hub.username.as_deref(), k.hub.password.as_deref()) else {
        return Ok(());
    };
    let admin = (user, pw);
    let (mut clients, mut roles) = listing(k, admin).await?;
    // georep's own role for its admin account, made or mended first and on its own:
    // giving the role disconnects every connection of the account, this one too, so
    // its answer may be lost; the hub is listed again after.
    let service = crate::dynsec::service(admin.0, &clients, &roles, &k.bridge);
    if !service.is_empty() {
        let _ = crate::dynsec::call(&k.hub.url, admin, service, dynsec_timeout(k)).await;
        tracing::info!(concierge = %k.concierge, hub = %k.hub.name, "gave the admin account georep's role ({})", crate::dynsec::SERVICE_ROLE);
        (clients, roles) = listing(k, admin).await?;
    }
    let (cmds, drift) = crate::dynsec::plan(&k.tag, fleet, &clients, &roles, applied);
    let before = k.shared.identities_of(k.place);
    for d in &drift {
        if !before.drift.contains(d) {
            tracing::warn!(concierge = %k.concierge, hub = %k.hub.name, "identity drift: {d}");
        }
    }
    let touched: std::collections::BTreeSet<&str> =
        cmds.iter().filter_map(|c| c["username"].as_str()).collect();
    let n_devices = fleet.devices.len() as u64;
    let drifted_devices = drift.iter().filter(|d| d.starts_with("client '")).count() as u64;
    let pending_in_fleet = touched
        .iter()
        .filter(|id| fleet.devices.contains_key(**id))
        .count() as u64;
    let mut ids = ConciergeIdentities {
        managed: true,
        in_sync: n_devices.saturating_sub(pending_in_fleet + drifted_devices),
        pending: touched.len() as u64,
        drifted: drift.len() as u64,
        drift: drift.iter().take(DRIFT_SHOWN).cloned().collect(),
        last_sync_at: before.last_sync_at.clone(),
        last_error: None,
    };
    let cmds_empty = cmds.is_empty();
    // The mass-delete guard: a fleet that lost most of its devices at once (an empty
    // or cut-short object) deletes nothing until max_delete allows it.
    let deletes = cmds
        .iter()
        .filter(|c| c["command"] == "deleteClient")
        .count() as u64;
    let managed = clients
        .iter()
        .filter(|c| c["textdescription"].as_str() == Some(k.tag.as_str()))
        .count() as u64;
    if deletes > 0 && !k.max_delete.allows(deletes, managed) {
        let e = format!(
            "the identities would delete {deletes} of the {managed} clients georep manages on the hub, more than max_delete ({}): nothing was changed; fix the identities object, or raise max_delete for this change",
            k.max_delete
        );
        ids.last_error = Some(e.clone());
        k.shared.kept(k.place, ids);
        return Err(e);
    }
    if !cmds.is_empty() {
        let n = cmds.len();
        // In batches: the hub saves its whole configuration after every command, so a
        // large fleet's first pass takes a while; each batch that went through is
        // recorded (and saved) at once, so a failure later never sets it again.
        for batch in crate::dynsec::batches(cmds, DYNSEC_BATCH) {
            let r = crate::dynsec::call(&k.hub.url, admin, batch.clone(), dynsec_timeout(k)).await;
            let failed: Vec<String> = match r {
                Ok(answers) => answers
                    .iter()
                    .filter_map(|a| {
                        a["error"]
                            .as_str()
                            .map(|e| format!("{}: {e}", a["command"].as_str().unwrap_or("?")))
                    })
                    .collect(),
                Err(e) => vec![e],
            };
            if !failed.is_empty() {
                let e = format!(
                    "{} of {} commands failed: {}",
                    failed.len(),
                    batch.len(),
                    failed.join("; ")
                );
                if let Err(e) = crate::saved::write_json(&k.saved, &*applied) {
                    tracing::warn!(concierge = %k.concierge, hub = %k.hub.name, error = %e, "cannot save what was set on the hub");
                }
                ids.last_error = Some(e.clone());
                k.shared.kept(k.place, ids);
                return Err(e);
            }
            applied.record(fleet, &batch);
        }
        tracing::info!(concierge = %k.concierge, hub = %k.hub.name, commands = n, "identities kept on the hub");
    }
    let changed = !cmds_empty;
    applied.set(fleet);
    if changed || !k.saved.exists() {
        if let Err(e) = crate::saved::write_json(&k.saved, &*applied) {
            tracing::warn!(concierge = %k.concierge, hub = %k.hub.name, error = %e, "cannot save what was set on the hub: a restart sets every identity again");
        }
    }
    ids.in_sync = n_devices.saturating_sub(drifted_devices);
    ids.pending = 0;
    ids.last_sync_at = Some(crate::shared::rfc3339_now());
    k.shared.kept(k.place, ids);
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
            let r = r.map_err(|e| e.0);
            shared.probed(i, &r);
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
        // Failback: the first hub before the current one healthy long enough, unless an
        // operator holds the devices where they are.
        let back = (0..current)
            .find(|&i| healthy_since[i].is_some_and(|t| t.elapsed() >= cfg.failback_after))
            .filter(|_| !shared.held());
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
            shared.auto_move(current, to, why);
        }
        tokio::select! {
            () = tokio::time::sleep(cfg.probe_interval) => {}
            _ = stop.changed() => return,
        }
    }
}

fn differences(a: &Concierge, b: &Concierge) -> Vec<String> {
    changed_fields!(a, b; listen, tls, signing_key, hubs, identities, failover_after,
        failback_after, probe_interval, probe_timeout, ttl, bridge, max_delete)
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
            let st = s.shared.status();
            m.served.get_or_create(&l).set(g(st.assignments));
            m.refused.get_or_create(&l).set(g(st.refused_requests));
            m.failovers.get_or_create(&l).set(g(st.failovers));
            for h in st.hubs {
                let hl = HubLabel {
                    concierge: name.clone(),
                    hub: h.name.clone(),
                };
                m.healthy.get_or_create(&hl).set(i64::from(h.healthy));
                m.current
                    .get_or_create(&hl)
                    .set(i64::from(h.name == st.current_hub));
                m.pending.get_or_create(&hl).set(g(h.identities.pending));
                m.drifted.get_or_create(&hl).set(g(h.identities.drifted));
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
