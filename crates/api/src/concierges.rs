//! Concierges (`[[concierges]]`): a concierge's status (hubs and their health, devices
//! per hub, identities kept on each hub, failovers, pins) and what its actions report.

use serde::{Deserialize, Serialize};

/// Every concierge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConciergeList {
    pub concierges: Vec<ConciergeStatus>,
}

/// One concierge as it is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConciergeStatus {
    pub name: String,
    pub listen: String,
    /// Devices in the fleet, and how many of them are enabled.
    pub devices: u64,
    pub enabled_devices: u64,
    /// Where the identities come from (`STORE/OBJECT`), when they were last read and
    /// the last failure to read them (the previous fleet is kept meanwhile).
    pub identities_source: String,
    pub identities_read_at: Option<String>,
    pub identities_error: Option<String>,
    /// The hub devices are sent to now.
    pub current_hub: String,
    /// Set by a manual failover: no automatic failback until `concierge failback`.
    pub held: bool,
    pub hubs: Vec<ConciergeHubStatus>,
    /// Devices or groups pinned to a hub (drills), in `device:ID` / `group:NAME` form.
    pub pins: Vec<ConciergePin>,
    pub failovers: u64,
    /// The most recent failovers and failbacks, newest first.
    pub recent_failovers: Vec<ConciergeFailover>,
    /// Assignments given and requests refused since the daemon started.
    pub assignments: u64,
    pub refused_requests: u64,
}

/// One hub of a concierge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConciergeHubStatus {
    pub name: String,
    pub region: String,
    pub url: String,
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// The last successful probe's round trip (connect, subscribe, publish, receive).
    pub last_round_trip_ms: Option<f64>,
    /// Devices whose unexpired assignment names this hub.
    pub assigned_devices: u64,
    /// Devices connected to it by their signed presence (none without an account to
    /// watch the hub with).
    pub connected_devices: Option<u64>,
    /// Messages bridged to this hub from the others (`bridge`), and dropped for it
    /// while it was down or too slow.
    pub bridged_in: u64,
    pub bridge_dropped: u64,
    /// The hub's own count of connected clients (`$SYS/broker/clients/connected`, as
    /// of the last probe; georep's own connections included), when the hub tells it.
    pub connected_clients: Option<u64>,
    pub identities: ConciergeIdentities,
}

/// Device identities on one hub.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConciergeIdentities {
    /// False when the hub has no admin account (`username`/`password`): georep does not
    /// keep identities there.
    pub managed: bool,
    /// Devices as the fleet says, waiting for a change, and made by someone else
    /// (reported, never overwritten).
    pub in_sync: u64,
    pub pending: u64,
    pub drifted: u64,
    /// What drifted, first few.
    pub drift: Vec<String>,
    /// RFC 3339 UTC of the last pass that left the hub in step.
    pub last_sync_at: Option<String>,
    pub last_error: Option<String>,
}

/// Devices of a concierge (of one group, when asked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConciergeDevices {
    pub concierge: String,
    /// The daemon's clock, Unix ms.
    pub now_ms: u64,
    pub devices: Vec<ConciergeDevice>,
}

/// Where one device is assigned and connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConciergeDevice {
    pub id: String,
    pub group: Option<String>,
    pub enabled: bool,
    /// The hub of its unexpired assignment.
    pub assigned_hub: Option<String>,
    /// The hub its newest signed presence names, and when the concierge heard of it
    /// (Unix ms, the daemon's clock).
    pub connected_hub: Option<String>,
    pub connected_seen_ms: Option<u64>,
}

/// A device or group held on a hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConciergePin {
    /// `device:ID` or `group:NAME`.
    pub who: String,
    pub hub: String,
}

/// A change of the hub devices are sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConciergeFailover {
    /// RFC 3339 UTC.
    pub at: String,
    pub from: String,
    pub to: String,
    /// `failover` (probes), `failback` (probes), `manual failover`, `manual failback`.
    pub reason: String,
}

/// `concierge failover`: to a named hub, or (none) the next healthy one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConciergeFailoverRequest {
    #[serde(default)]
    pub to: Option<String>,
}

/// `concierge pin`: a device or a group (one of them) to a hub; no hub unpins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConciergePinRequest {
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub hub: Option<String>,
}

/// What `concierge failover|failback|pin` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConciergeActionReport {
    pub concierge: String,
    pub action: String,
    /// When it took effect, Unix ms (the daemon's clock).
    pub at_ms: u64,
    pub current_hub: String,
    pub held: bool,
    pub pins: Vec<ConciergePin>,
}
