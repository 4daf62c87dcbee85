//! Object-replication policies: status, scans, resync, pause and resume.

use serde::{Deserialize, Serialize};

/// What one scan of a policy's source found.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanSummary {
    pub listed: u64,
    pub changed: u64,
    pub removed: u64,
    /// Removals held back by the mass-delete guard.
    pub held: u64,
    /// Entries no store can hold (reported once each), left out of the pass.
    pub skipped: u64,
    pub millis: u64,
}

/// `POST` [`paths::POLICY_RESYNC`]: a full scan now, failed items retried, and objects
/// missing or different at a destination queued again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resynced {
    pub scan: ScanSummary,
    /// Items made due now (including failed ones).
    pub retried: u64,
    /// Objects missing or different at a destination, queued again.
    pub repaired: u64,
}

/// `POST` [`paths::POLICY_PAUSE`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PauseRequest {
    /// Why, shown in status (e.g. a change ticket).
    #[serde(default)]
    pub note: Option<String>,
}

/// The answer to a pause: the policy and what status shows while it is paused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    pub paused: String,
    pub held: String,
}

/// `POST` [`paths::POLICY_RESUME`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resumed {
    pub resumed: String,
    pub note: String,
}

/// A policy's replication status, per destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub name: String,
    pub source: StoreRef,
    /// `keep` or `propagate`.
    pub deletes: String,
    pub rpo_target_seconds: f64,
    /// Why deletes are held (mass-delete guard), if they are.
    pub paused: Option<String>,
    /// An operator paused the whole policy (`georep pause`): when, and the note given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// How changes are detected besides scans, when a daemon reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<String>,
    pub scan_interval_seconds: f64,
    /// A scheduled policy's schedule (`every 10m`, `cron 0 2 * * *`); absent when the
    /// policy is continuous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// When a scheduled policy syncs next (RFC 3339; due now after a missed tick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<String>,
    pub last_scan: Option<ScanStatus>,
    /// Source objects recorded in the manifest.
    pub source_objects: u64,
    pub destinations: Vec<DestStatus>,
    /// True when any destination's current RPO exceeds the target.
    pub rpo_breached: bool,
}

/// `GET` [`crate::paths::POLICIES`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyList {
    pub policies: Vec<PolicyStatus>,
}

/// A store as a status names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreRef {
    pub store: String,
    pub region: String,
    pub url: String,
}

/// The last scan of a policy's source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanStatus {
    pub at: String,
    pub duration_ms: i64,
    pub error: Option<String>,
    pub scans: i64,
}

/// One destination of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestStatus {
    #[serde(flatten)]
    pub store: StoreRef,
    pub pending: u64,
    pub pending_bytes: u64,
    pub failed: u64,
    pub complete: u64,
    /// Age of the oldest change not yet replicated here (0 when nothing is pending).
    pub rpo_seconds: f64,
    pub rpo_breached: bool,
    /// Change → visible latency over the last 15 minutes.
    pub latency: Latency,
    /// Over the last minute.
    pub objects_per_second: f64,
    pub bytes_per_second: f64,
}

/// Change → visible latency percentiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: Option<i64>,
    pub p99_ms: Option<i64>,
    pub max_ms: Option<i64>,
}

/// What a queue item does at its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Copy,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Copy => "copy",
            Op::Delete => "delete",
        }
    }

    /// As the state store writes it (anything else reads as a copy, the safe side).
    pub fn parse(s: &str) -> Self {
        if s == "delete" {
            Op::Delete
        } else {
            Op::Copy
        }
    }
}

/// Replication status of one object at one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    Pending,
    Complete,
    /// Still retried (with the longest backoff), but has failed many times in a row.
    Failed,
}

impl ItemStatus {
    /// As the state store writes it (anything else reads as pending: retried).
    pub fn parse(s: &str) -> Self {
        match s {
            "complete" => Self::Complete,
            "failed" => Self::Failed,
            _ => Self::Pending,
        }
    }
}

/// A source object as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceObject {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Last-modified time at the source, ms since the epoch.
    pub mtime: i64,
}

/// One object at one destination (a row of the replication queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectAtDestination {
    pub policy: String,
    pub dest: String,
    pub key: String,
    pub op: Op,
    pub status: ItemStatus,
    /// Bumped whenever the row is re-queued, so a worker finishing an older version of
    /// the work cannot mark the newer one complete.
    pub generation: i64,
    pub size: u64,
    pub change_time: i64,
    pub enqueued_at: i64,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
    pub replicated_at: Option<i64>,
}

/// `GET` [`crate::paths::POLICY_OBJECT`]: one object at every destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectStatus {
    pub policy: String,
    pub key: String,
    /// What the manifest holds for the source object, if it is known.
    pub source: Option<SourceObject>,
    pub destinations: Vec<ObjectAtDestination>,
}
