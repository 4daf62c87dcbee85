//! Failover groups: requests, status, reports and history.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// `POST` [`paths::GROUP_FAILOVER`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverRequest {
    /// The replica to promote (member name or region); `None`: a healthy replica.
    #[serde(default)]
    pub to: Option<String>,
    /// Promote without the primary: what it had not sent is lost.
    #[serde(default)]
    pub force: bool,
}

/// `POST` [`paths::GROUP_RESEED`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReseedRequest {
    pub member: String,
}

/// How far a replica is behind the primary, as read on the primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// WAL bytes not yet confirmed (PostgreSQL); `None` when unknown.
    pub bytes: Option<i64>,
    /// Seconds behind; `None` when the replica is not connected (unknown).
    pub seconds: Option<f64>,
    /// Transactions the primary logged that the replica has not applied (MariaDB: the
    /// GTID distance); `None` for PostgreSQL or when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactions: Option<u64>,
}

/// Where a group's listeners send new connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The epoch this route belongs to (as recorded in the state store).
    pub epoch: i64,
    /// `host:port` of the primary.
    pub read_write: Option<String>,
    /// `host:port` of the healthy replicas new read-only connections are spread over
    /// (or of the primary, if configured and none is healthy).
    pub read_only: Vec<String>,
    /// While true, new connections wait (a failover is switching roles).
    pub held: bool,
}

/// A failover group's recorded state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupState {
    Stable,
    /// A role change is recorded as in progress (running, or interrupted and settling).
    FailingOver,
}

impl GroupState {
    /// Parses the state store's column; anything but `stable` is a change in progress.
    pub fn from_record(s: &str) -> Self {
        if s == "stable" {
            Self::Stable
        } else {
            Self::FailingOver
        }
    }

    /// As the state store writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::FailingOver => "failing-over",
        }
    }
}

/// What kind of role change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverKind {
    Planned,
    Forced,
    Automatic,
}

impl FailoverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Forced => "forced",
            Self::Automatic => "automatic",
        }
    }

    /// Parses the state store's column.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "planned" => Some(Self::Planned),
            "forced" => Some(Self::Forced),
            "automatic" => Some(Self::Automatic),
            _ => None,
        }
    }
}

/// What the probes last saw of one member.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberHealth {
    pub member: String,
    pub region: String,
    pub role: String,
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_ok: Option<String>,
}

/// What a failover did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverReport {
    pub kind: FailoverKind,
    pub from: String,
    pub to: String,
    pub epoch: i64,
    /// From holding new connections to releasing them at the new primary.
    pub write_gap_ms: u64,
    pub catch_up_ms: u64,
    pub data_loss: String,
    pub finished_at: String,
    /// Other replicas now following the new primary.
    pub repointed: Vec<String>,
    /// Members that now need `georep db reseed`, with why.
    pub left_behind: BTreeMap<String, String>,
    /// `done`, or how an interrupted change was finished.
    pub outcome: String,
}

/// One recorded role change (including rolled-back attempts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverEvent {
    pub epoch: i64,
    pub kind: FailoverKind,
    pub from: String,
    pub to: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub write_gap_ms: Option<i64>,
    pub data_loss: Option<String>,
    pub outcome: Option<String>,
    pub left_behind: Option<String>,
}

/// A failover group's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub database: String,
    pub epoch: i64,
    pub primary: String,
    pub state: GroupState,
    pub route: Route,
    pub read_write_listener: String,
    pub read_only_listener: Option<String>,
    pub members: Vec<MemberHealth>,
    /// Members never routed to again (an old primary after a forced failover); each
    /// needs `georep db reseed` before it can serve as a replica.
    pub fenced: BTreeSet<String>,
    /// Last known lag per replica, read on the primary.
    pub last_known_lag: BTreeMap<String, Lag>,
    /// Why automatic failover is not happening, when it is wanted but refused.
    pub automatic: Option<String>,
    pub last_failover: Option<FailoverReport>,
    /// An interrupted role change is being settled; new connections are held meanwhile.
    pub unsettled: bool,
    /// The latest role changes, newest first.
    pub history: Vec<FailoverEvent>,
}

/// `GET` [`paths::GROUPS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupList {
    pub failover_groups: Vec<GroupStatus>,
}

/// What a reseed did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReseedReport {
    /// Tables emptied and copied again from the primary.
    pub tables: Vec<String>,
    pub seconds: f64,
}

/// What a DR drill measured: a planned failover and a failback under a write load
/// through the read-write listener, and every acknowledged write checked afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub group: String,
    pub database: String,
    pub started_from: String,
    pub failed_over_to: String,
    pub acknowledged_writes: usize,
    pub lost_writes: usize,
    /// The first lost writes (at most 20).
    pub lost: Vec<String>,
    /// `none` or `WRITES LOST`.
    pub data_loss: String,
    /// The writer's longest pause across the failover (None: no write after it).
    pub rto_failover_ms: Option<u64>,
    pub rto_failback_ms: Option<u64>,
    pub write_gap_failover_ms: u64,
    pub write_gap_failback_ms: u64,
    pub lag_before_failover: Lag,
    /// The epochs of the failover and the failback.
    pub epochs: Vec<i64>,
    pub finished_at: String,
}
