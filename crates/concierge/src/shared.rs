//! [`Shared`]: one concierge's state, read by its API and status and changed by its
//! probes, its identity keepers and operators: the fleet, the hubs and their health, the
//! hub devices are sent to, pins, the assignments given, and failovers. What must
//! survive a restart (the current hub, the hold, pins, failovers) is saved on every
//! change (`saved`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use georep_api::{
    ConciergeFailover, ConciergeHubStatus, ConciergeIdentities, ConciergePin, ConciergeStatus,
};
use serde::Serialize;

use crate::assign::Signer;
use crate::identities::Device;

/// A hub as devices are told of it, and whether probes find it healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubView {
    pub name: String,
    pub region: String,
    pub url: String,
    #[serde(skip)]
    pub healthy: bool,
}

/// What a device is told.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assignment {
    pub device: String,
    /// The device's group: reassign notices may name it.
    pub group: Option<String>,
    pub hub: HubView,
    pub fallbacks: Vec<HubView>,
    /// `preferred`, `failover` or `pinned`.
    pub reason: &'static str,
    pub ttl_seconds: u64,
    /// Issued at and expires at, Unix seconds (JWT's `iat` and `exp`).
    pub iat: u64,
    pub exp: u64,
}

/// What probes and identity keepers last found on one hub.
#[derive(Debug, Clone, Default)]
pub(crate) struct HubLive {
    pub(crate) failures: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) round_trip: Option<Duration>,
    pub(crate) connected: Option<u64>,
    /// A presence watcher is connected to the hub.
    pub(crate) watched: bool,
    /// Messages bridged to the hub, and dropped for it (down, or too slow).
    pub(crate) bridged: u64,
    pub(crate) bridge_dropped: u64,
    pub(crate) identities: ConciergeIdentities,
}

#[derive(Debug, Default)]
struct Live {
    hubs: Vec<HubLive>,
    failovers: u64,
    /// Newest first.
    recent: VecDeque<ConciergeFailover>,
    read_at: Option<String>,
    read_error: Option<String>,
}

/// Per hub place where a device said it is: (its connection time, when the concierge
/// heard of it), both Unix ms.
type Seen = BTreeMap<usize, (u64, u64)>;

/// The hub of the newest connection, and when the concierge heard of it.
fn newest(seen: &Seen) -> Option<(usize, u64)> {
    seen.iter()
        .max_by_key(|(_, (at, _))| *at)
        .map(|(place, (_, heard))| (*place, *heard))
}

/// Names and places, for status.
pub struct About {
    pub name: String,
    pub listen: String,
    pub identities: String,
    pub ttl: Duration,
}

/// One concierge's state, shared by its API, its probes, its identity keepers and the
/// daemon.
pub struct Shared {
    about: About,
    pub(crate) signer: Signer,
    devices: RwLock<BTreeMap<String, Device>>,
    hubs: RwLock<Vec<HubView>>,
    current: AtomicUsize,
    /// Set by a manual failover: probes do not fail back.
    held: AtomicBool,
    /// `device:ID` or `group:NAME` → hub name.
    pins: RwLock<BTreeMap<String, String>>,
    /// Device → (hub, expiry) of its last assignment.
    assigned: RwLock<HashMap<String, (usize, u64)>>,
    live: Mutex<Live>,
    /// The fleet has been read at least once.
    loaded: AtomicBool,
    /// Held while devices are moved, so a probe's move and an operator's never cross.
    moving: Mutex<()>,
    /// Device → hub place → (the device's connection time, when the concierge heard of
    /// it), both Unix ms: from signed presence on each hub.
    presence: RwLock<HashMap<String, Seen>>,
    /// Reassign notices for the hub watchers to publish.
    notices: tokio::sync::broadcast::Sender<georep_device::Reassign>,
    /// Where [`Shared::save`] writes; none in tests.
    saved: Option<PathBuf>,
    /// Assignments given, and requests refused.
    pub served: AtomicU64,
    pub refused: AtomicU64,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

pub(crate) fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Shared {
    pub fn new(signer: Signer, hubs: Vec<HubView>, about: About) -> Arc<Self> {
        Self::with_saved(signer, hubs, about, None)
    }

    /// As [`Shared::new`], saving to (and restored from) `saved` by the component.
    pub(crate) fn with_saved(
        signer: Signer,
        hubs: Vec<HubView>,
        about: About,
        saved: Option<PathBuf>,
    ) -> Arc<Self> {
        let n = hubs.len();
        Arc::new(Self {
            about,
            signer,
            devices: RwLock::new(BTreeMap::new()),
            hubs: RwLock::new(hubs),
            current: AtomicUsize::new(0),
            held: AtomicBool::new(false),
            pins: RwLock::new(BTreeMap::new()),
            assigned: RwLock::new(HashMap::new()),
            live: Mutex::new(Live {
                hubs: vec![HubLive::default(); n],
                ..Live::default()
            }),
            moving: Mutex::new(()),
            loaded: AtomicBool::new(false),
            presence: RwLock::new(HashMap::new()),
            notices: tokio::sync::broadcast::channel(64).0,
            saved,
            served: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes back what was saved: pins and the current hub by name (those naming a hub
    /// no longer configured are dropped, and said so).
    pub(crate) fn restore(&self, s: crate::saved::Saved) {
        let hubs = self.hubs();
        let place = |name: &str| hubs.iter().position(|h| h.name == name);
        if let Some(c) = s.current.as_deref() {
            match place(c) {
                Some(i) => self.current.store(i, Ordering::SeqCst),
                None => {
                    tracing::warn!(concierge = %self.about.name, hub = c, "the saved current hub is no longer configured; devices go to the preferred hub")
                }
            }
        }
        self.held.store(s.held, Ordering::SeqCst);
        let mut pins = write(&self.pins);
        for (who, hub) in s.pins {
            if place(&hub).is_some() {
                pins.insert(who, hub);
            } else {
                tracing::warn!(concierge = %self.about.name, %who, %hub, "a saved pin names a hub no longer configured: dropped");
            }
        }
        drop(pins);
        let mut live = self.live();
        live.failovers = s.failovers;
        live.recent = s.recent.into();
    }

    /// Saves what must survive a restart.
    pub(crate) fn save(&self) -> Result<(), String> {
        let Some(path) = &self.saved else {
            return Ok(());
        };
        let hubs = self.hubs();
        let live = self.live();
        let s = crate::saved::Saved {
            current: hubs.get(self.current()).map(|h| h.name.clone()),
            held: self.held(),
            pins: read(&self.pins).clone(),
            failovers: live.failovers,
            recent: live.recent.iter().cloned().collect(),
        };
        drop(live);
        crate::saved::write(path, &s)
    }

    /// Replaces the fleet.
    pub fn set_devices(&self, devices: BTreeMap<String, Device>) {
        *write(&self.devices) = devices;
        self.loaded.store(true, Ordering::SeqCst);
    }

    /// Whether the fleet has been read at all.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    /// The fleet as it stands.
    pub(crate) fn fleet(&self) -> BTreeMap<String, Device> {
        read(&self.devices).clone()
    }

    pub(crate) fn device(&self, id: &str) -> Option<Device> {
        read(&self.devices).get(id).cloned()
    }

    pub fn set_healthy(&self, hub: usize, healthy: bool) {
        if let Some(h) = write(&self.hubs).get_mut(hub) {
            h.healthy = healthy;
        }
    }

    /// Sends devices to hub `hub` (by place) from now on.
    pub fn set_current(&self, hub: usize) {
        self.current.store(hub, Ordering::SeqCst);
    }

    pub fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }

    pub fn held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Moves devices to hub `to`, remembering why; a move to where they are is nothing.
    /// `hold` sets (or clears) the operator's hold. Saved.
    pub(crate) fn move_to(&self, to: usize, reason: &str, hold: Option<bool>) {
        let _one = self
            .moving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.move_locked(to, reason, hold);
    }

    /// A move decided by probes, from `from`: nothing when an operator moved devices
    /// since, or (a failback) holds them.
    pub(crate) fn auto_move(&self, from: usize, to: usize, reason: &str) {
        let _one = self
            .moving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.current() != from || (reason == "failback" && self.held()) {
            return;
        }
        self.move_locked(to, reason, None);
    }

    fn move_locked(&self, to: usize, reason: &str, hold: Option<bool>) {
        let hubs = self.hubs();
        let from = self.current();
        if let Some(h) = hold {
            self.held.store(h, Ordering::SeqCst);
        }
        if from != to && to < hubs.len() {
            self.set_current(to);
            let mut live = self.live();
            live.failovers += 1;
            live.recent.push_front(ConciergeFailover {
                at: rfc3339_now(),
                from: hubs.get(from).map(|h| h.name.clone()).unwrap_or_default(),
                to: hubs[to].name.clone(),
                reason: reason.to_string(),
            });
            live.recent.truncate(crate::saved::RECENT);
            drop(live);
            self.notify(georep_device::Reassign::default());
        }
        if let Err(e) = self.save() {
            tracing::error!(concierge = %self.about.name, error = %e, "the move is in effect but was not saved: a restart would forget it");
        }
    }

    /// The hubs as they stand (health included).
    pub fn hubs(&self) -> Vec<HubView> {
        read(&self.hubs).clone()
    }

    /// Devices in the fleet.
    pub fn devices(&self) -> usize {
        read(&self.devices).len()
    }

    /// Pins `who` (`device:ID` or `group:NAME`) to hub `hub`, or unpins it (`None`).
    pub fn pin(&self, who: &str, hub: Option<&str>) {
        let mut pins = write(&self.pins);
        match hub {
            Some(h) => pins.insert(who.to_string(), h.to_string()),
            None => pins.remove(who),
        };
    }

    /// Tells devices (those `notice` names) on every hub to ask again, spread over a
    /// time that grows with the fleet (1 ms a device, 1 s to 30 s).
    pub(crate) fn notify(&self, mut notice: georep_device::Reassign) {
        notice.spread_ms = (self.devices() as u64).clamp(1000, 30_000);
        // No watcher (no hub with an account) is no one to tell.
        let _ = self.notices.send(notice);
    }

    pub(crate) fn notices(&self) -> tokio::sync::broadcast::Receiver<georep_device::Reassign> {
        self.notices.subscribe()
    }

    /// Records signed presence heard on hub `place` (checked against the device's key
    /// and the hub's name); gives whether it was taken.
    pub(crate) fn present(&self, place: usize, p: &georep_device::Presence) -> bool {
        let Some(hub) = self.hubs().get(place).map(|h| h.name.clone()) else {
            return false;
        };
        let Some(d) = self.device(&p.device) else {
            return false;
        };
        if p.hub != hub || !p.verify(&d.key) {
            return false;
        }
        let mut all = write(&self.presence);
        let entry = all.entry(p.device.clone()).or_default();
        if p.online {
            if entry.get(&place).is_none_or(|(at, _)| *at <= p.at) {
                entry.insert(place, (p.at, now_ms()));
            }
        } else if entry.get(&place).is_some_and(|(at, _)| *at <= p.at) {
            entry.remove(&place);
        }
        if entry.is_empty() {
            all.remove(&p.device);
        }
        true
    }

    /// Hub `place`'s watcher lost its connection: where devices are there is unknown.
    pub(crate) fn hub_unseen(&self, place: usize) {
        let mut all = write(&self.presence);
        all.retain(|_, hubs| {
            hubs.remove(&place);
            !hubs.is_empty()
        });
    }

    /// Where `id` is connected as far as presence tells: the hub with the newest
    /// connection, and when the concierge heard of it (Unix ms).
    fn connected(&self, id: &str) -> Option<(usize, u64)> {
        read(&self.presence).get(id).and_then(newest)
    }

    /// Every device (of `group`, when given): where it is assigned and connected.
    pub fn device_views(&self, group: Option<&str>) -> Vec<georep_api::ConciergeDevice> {
        let hubs = self.hubs();
        let at = now();
        let assigned = read(&self.assigned).clone();
        read(&self.devices)
            .values()
            .filter(|d| group.is_none() || d.group.as_deref() == group)
            .map(|d| {
                let a = assigned.get(&d.id).filter(|(_, exp)| *exp > at);
                let c = self.connected(&d.id);
                georep_api::ConciergeDevice {
                    id: d.id.clone(),
                    group: d.group.clone(),
                    enabled: d.enabled,
                    assigned_hub: a.and_then(|(i, _)| hubs.get(*i)).map(|h| h.name.clone()),
                    connected_hub: c.and_then(|(i, _)| hubs.get(i)).map(|h| h.name.clone()),
                    connected_seen_ms: c.map(|(_, seen)| seen),
                }
            })
            .collect()
    }

    pub(crate) fn pins(&self) -> Vec<ConciergePin> {
        read(&self.pins)
            .iter()
            .map(|(who, hub)| ConciergePin {
                who: who.clone(),
                hub: hub.clone(),
            })
            .collect()
    }

    /// Records what a probe of hub `i` found.
    pub(crate) fn probed(&self, i: usize, r: &Result<crate::probe::Probed, String>) {
        let mut live = self.live();
        let Some(h) = live.hubs.get_mut(i) else {
            return;
        };
        match r {
            Ok(p) => {
                h.failures = 0;
                h.last_error = None;
                h.round_trip = Some(p.took);
                if p.connected.is_some() {
                    h.connected = p.connected;
                }
            }
            Err(e) => {
                h.failures += 1;
                h.last_error = Some(e.clone());
            }
        }
    }

    /// Counts a message bridged to hub `i` (or dropped for it).
    pub(crate) fn bridged(&self, i: usize, sent: bool) {
        if let Some(h) = self.live().hubs.get_mut(i) {
            if sent {
                h.bridged += 1;
            } else {
                h.bridge_dropped += 1;
            }
        }
    }

    /// Whether hub `i`'s presence watcher is connected.
    pub(crate) fn watched(&self, i: usize, on: bool) {
        if let Some(h) = self.live().hubs.get_mut(i) {
            h.watched = on;
        }
        if !on {
            self.hub_unseen(i);
        }
    }

    /// Records what keeping identities on hub `i` left.
    pub(crate) fn kept(&self, i: usize, ids: ConciergeIdentities) {
        if let Some(h) = self.live().hubs.get_mut(i) {
            h.identities = ids;
        }
    }

    pub(crate) fn identities_of(&self, i: usize) -> ConciergeIdentities {
        self.live()
            .hubs
            .get(i)
            .map(|h| h.identities.clone())
            .unwrap_or_default()
    }

    /// Records a read of the identities object.
    pub(crate) fn identities_read(&self, r: Result<(), String>) {
        let mut live = self.live();
        match r {
            Ok(()) => {
                live.read_at = Some(rfc3339_now());
                live.read_error = None;
            }
            Err(e) => live.read_error = Some(e),
        }
    }

    /// What `device` is told at `at` (Unix seconds).
    pub fn assignment(&self, device: &Device, at: u64) -> Option<Assignment> {
        let hubs = read(&self.hubs).clone();
        let pins = read(&self.pins);
        let pinned = pins
            .get(&format!("device:{}", device.id))
            .or_else(|| {
                device
                    .group
                    .as_ref()
                    .and_then(|g| pins.get(&format!("group:{g}")))
            })
            .and_then(|name| hubs.iter().position(|h| &h.name == name))
            // A pin to a hub that fails its probes gives way to the current hub.
            .filter(|&p| hubs[p].healthy);
        let current = self.current().min(hubs.len().checked_sub(1)?);
        let (chosen, reason) = match pinned {
            Some(p) => (p, "pinned"),
            None if current == 0 => (0, "preferred"),
            None => (current, "failover"),
        };
        let mut fallbacks: Vec<HubView> = hubs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != chosen)
            .map(|(_, h)| h.clone())
            .collect();
        // Healthy ones first, each group in the order of preference.
        fallbacks.sort_by_key(|h| !h.healthy);
        let ttl = self.about.ttl.as_secs();
        Some(Assignment {
            device: device.id.clone(),
            group: device.group.clone(),
            hub: hubs[chosen].clone(),
            fallbacks,
            reason,
            ttl_seconds: ttl,
            iat: at,
            exp: at + ttl,
        })
    }

    /// Remembers that `a` was given, for devices per hub.
    pub(crate) fn given(&self, a: &Assignment) {
        let hubs = read(&self.hubs);
        if let Some(i) = hubs.iter().position(|h| h.name == a.hub.name) {
            write(&self.assigned).insert(a.device.clone(), (i, a.exp));
        }
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    /// The concierge as it stands.
    pub fn status(&self) -> ConciergeStatus {
        let hubs = self.hubs();
        let at = now();
        let mut per_hub = vec![0u64; hubs.len()];
        {
            let mut assigned = write(&self.assigned);
            // Forget expired ones and devices no longer in the fleet.
            let devices = read(&self.devices);
            assigned.retain(|id, (_, exp)| *exp > at && devices.contains_key(id));
            for (i, _) in assigned.values() {
                if let Some(n) = per_hub.get_mut(*i) {
                    *n += 1;
                }
            }
        }
        let mut present = vec![0u64; hubs.len()];
        // One read guard: taking the lock again while holding it deadlocks against a
        // waiting writer.
        for seen in read(&self.presence).values() {
            if let Some((i, _)) = newest(seen) {
                if let Some(n) = present.get_mut(i) {
                    *n += 1;
                }
            }
        }
        let (devices, enabled) = {
            let d = read(&self.devices);
            (
                d.len() as u64,
                d.values().filter(|d| d.enabled).count() as u64,
            )
        };
        let live = self.live();
        let current = self.current();
        ConciergeStatus {
            name: self.about.name.clone(),
            listen: self.about.listen.clone(),
            devices,
            enabled_devices: enabled,
            identities_source: self.about.identities.clone(),
            identities_read_at: live.read_at.clone(),
            identities_error: live.read_error.clone(),
            current_hub: hubs
                .get(current)
                .map(|h| h.name.clone())
                .unwrap_or_default(),
            held: self.held(),
            hubs: hubs
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let l = live.hubs.get(i).cloned().unwrap_or_default();
                    ConciergeHubStatus {
                        name: h.name.clone(),
                        region: h.region.clone(),
                        url: h.url.clone(),
                        healthy: h.healthy,
                        consecutive_failures: l.failures,
                        last_error: l.last_error,
                        last_round_trip_ms: l.round_trip.map(|d| d.as_secs_f64() * 1000.0),
                        assigned_devices: per_hub[i],
                        connected_devices: l.watched.then_some(present[i]),
                        bridged_in: l.bridged,
                        bridge_dropped: l.bridge_dropped,
                        connected_clients: l.connected,
                        identities: l.identities,
                    }
                })
                .collect(),
            pins: self.pins(),
            failovers: live.failovers,
            recent_failovers: live.recent.iter().cloned().collect(),
            assignments: self.served.load(Ordering::Relaxed),
            refused_requests: self.refused.load(Ordering::Relaxed),
        }
    }
}
