//! Database geo-replicas: each replica's replication state, lag and drift.

use serde::{Deserialize, Serialize};

/// The last status read of one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseStatus {
    pub name: String,
    /// The member that is primary now (it changes with failovers).
    pub primary: String,
    pub primary_region: String,
    pub rpo_target_seconds: f64,
    /// When this status was read (RFC 3339).
    pub checked_at: Option<String>,
    /// Why the last read failed (the primary unreachable, ...).
    pub error: Option<String>,
    pub replicas: Vec<ReplicaStatus>,
    pub rpo_breached: bool,
    pub last_sequence_sync: Option<String>,
}

/// `GET` [`crate::paths::DATABASES`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseList {
    pub databases: Vec<DatabaseStatus>,
}

/// Where a replica's replication stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaState {
    /// Applying changes as they come.
    Streaming,
    /// Behind, applying.
    CatchingUp,
    /// Tables still being copied.
    InitialCopy,
    /// The subscription is disabled.
    Disabled,
    /// The replica does not answer.
    Unreachable,
    /// No subscription (run `georep db setup`).
    NotSetUp,
    /// The primary invalidated the slot: the replica must be set up again.
    SlotLost,
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Streaming => "streaming",
            Self::CatchingUp => "catching-up",
            Self::InitialCopy => "initial-copy",
            Self::Disabled => "disabled",
            Self::Unreachable => "unreachable",
            Self::NotSetUp => "not-set-up",
            Self::SlotLost => "slot-lost",
        }
    }
}

impl std::fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One replica of a database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub name: String,
    pub region: String,
    pub url: String,
    pub state: ReplicaState,
    pub error: Option<String>,
    pub tables_ready: i64,
    pub tables_total: i64,
    /// WAL the replica has not confirmed yet.
    pub lag_bytes: Option<i64>,
    /// Replay lag reported by the primary's WAL sender (0 when caught up).
    pub lag_seconds: Option<f64>,
    pub slot_active: bool,
    /// WAL the primary keeps for this replica's slot.
    pub wal_retained_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL's view of the slot).
    pub wal_status: Option<String>,
    /// Bytes of WAL that can still be written before the slot is invalidated
    /// (None when `max_slot_wal_keep_size` is unlimited).
    pub safe_wal_bytes: Option<i64>,
    pub max_slot_wal_keep_size: String,
    pub wal_warning: Option<String>,
    pub sequence_drift: Vec<SequenceDrift>,
    /// Sequences on this replica behind the primary.
    pub sequences_behind: usize,
    pub schema_drift: Vec<SchemaDiff>,
    pub rpo_seconds: f64,
    pub rpo_breached: bool,
    /// MariaDB/MySQL: the replication threads as the replica reports them (`Yes`,
    /// `No`, `Connecting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_thread: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_thread: Option<String>,
    /// MariaDB/MySQL: transactions the primary logged that the replica has not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid_distance: Option<u64>,
    /// MariaDB/MySQL: received but not applied yet (the relay log's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_log_bytes: Option<u64>,
}

/// One sequence on one replica compared with the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceDrift {
    pub replica: String,
    pub sequence: String,
    pub primary: Option<i64>,
    pub replica_value: Option<i64>,
    /// How far the replica is behind the primary (> 0: a promoted replica would hand
    /// out values the primary already used).
    pub behind: i64,
}

/// One difference in table definitions between the primary and a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaDiff {
    pub replica: String,
    /// `table`, `column`, `index` or `constraint`.
    pub kind: String,
    pub object: String,
    /// The definition on the primary (None: missing there).
    pub primary: Option<String>,
    /// The definition on the replica (None: missing there).
    pub replica_def: Option<String>,
}
