//! Relays (`[[relays]]`): a relay's status (accepted, delivered, pending per target,
//! the current target, failovers, dead letters, RPO) and what its actions report.

use serde::{Deserialize, Serialize};

/// Every relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayList {
    pub relays: Vec<RelayStatus>,
}

/// One relay as it is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayStatus {
    pub name: String,
    /// `failover` or `replicate`.
    pub mode: String,
    pub accept: String,
    pub listen: String,
    /// Events accepted since the outbox was created.
    pub accepted: u64,
    /// `failover` mode: the target events go to now.
    pub current_target: Option<String>,
    /// Set by a manual switchover: no automatic failback until a switchback.
    pub pinned: bool,
    pub targets: Vec<RelayTargetStatus>,
    pub failovers: u64,
    /// The most recent failovers and failbacks, newest first.
    pub recent_failovers: Vec<RelayFailover>,
    pub dead_letters: u64,
    /// The most recent dead letters, newest first.
    pub recent_dead_letters: Vec<RelayDeadLetter>,
    /// Bytes of events held, and the most it may hold before publishers get 503.
    pub outbox_bytes: u64,
    pub max_outbox: u64,
    /// The outbox's last failure (disk full, I/O error), if any since the start.
    pub outbox_error: Option<String>,
    /// Age of the oldest event not delivered everywhere it must go.
    pub oldest_pending_seconds: Option<f64>,
    pub rpo_seconds: f64,
    pub rpo_breached: bool,
}

/// One target of a relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayTargetStatus {
    pub name: String,
    pub region: String,
    pub kind: String,
    /// Redacted (a query may hold a signature).
    pub url: String,
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// Events delivered to it.
    pub delivered: u64,
    /// Events waiting for it (`replicate` mode; in `failover` mode, for the current
    /// target only).
    pub pending: u64,
    pub pending_bytes: u64,
    pub oldest_pending_seconds: Option<f64>,
}

/// A change of target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayFailover {
    /// RFC 3339 UTC.
    pub at: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// An event a target refused as bad data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayDeadLetter {
    pub id: i64,
    pub target: String,
    pub event_id: String,
    pub reason: String,
    /// RFC 3339 UTC.
    pub at: String,
}

/// What `relay switchover|switchback|replay` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayActionReport {
    pub relay: String,
    pub action: String,
    pub current_target: Option<String>,
    /// `replay`: dead letters sent again.
    pub replayed: u64,
}
