//! Secret syncs (`[[secret_syncs]]`): what a pass reports and a sync's status. Names,
//! version counts and outcomes only: no type here can hold a secret value.

use serde::{Deserialize, Serialize};

/// What happened to one secret at one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Already in step.
    InSync,
    /// Versions written.
    Copied,
    /// Attributes brought in step (no new version).
    Updated,
    /// `--dry-run`: versions would be written.
    WouldCopy,
    /// Changed at the destination by someone else; left alone.
    Drifted,
    /// Gone from the source: kept (`deletes = "keep"`).
    Kept,
    Disabled,
    Deleted,
    /// `--dry-run`: would be disabled or deleted.
    WouldRemove,
    /// Cannot be copied at all (a key); the detail says what to do instead.
    NotExportable,
    /// The source's newest readable version is older than the one carried (disabled,
    /// deleted or rolled back there): destinations are never rolled back; reported.
    SourceBehind,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InSync => "in_sync",
            Self::Copied => "copied",
            Self::Updated => "updated",
            Self::WouldCopy => "would_copy",
            Self::Drifted => "drifted",
            Self::Kept => "kept",
            Self::Disabled => "disabled",
            Self::Deleted => "deleted",
            Self::WouldRemove => "would_remove",
            Self::NotExportable => "not_exportable",
            Self::SourceBehind => "source_behind",
            Self::Failed => "failed",
        }
    }

    /// Whether this outcome makes the pass exit 1.
    pub fn is_problem(self) -> bool {
        matches!(
            self,
            Self::Drifted | Self::NotExportable | Self::SourceBehind | Self::Failed
        )
    }
}

/// One secret at one destination in a pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretItem {
    /// The name at the source (the logical name).
    pub name: String,
    pub destination: String,
    pub outcome: Outcome,
    /// Versions written (or that would be).
    pub written: u32,
    pub detail: String,
}

/// One pass of a secret sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretPass {
    pub sync: String,
    pub source: String,
    pub destinations: Vec<String>,
    /// Set when `promote` made another vault the source.
    pub promoted: bool,
    /// Secrets at the source that the filter takes.
    pub secrets: usize,
    /// Secret × destination pairs found in step without reading a value.
    pub unchanged: usize,
    /// Everything else, in name order.
    pub items: Vec<SecretItem>,
    /// The escrow bundle written, if one was.
    pub escrow: Option<String>,
    /// Vaults that could not be used at all, with why.
    pub errors: Vec<String>,
    /// 0, 1 (drift, failures, not exportable) or 3 (a vault unreachable or refusing).
    pub exit_code: i32,
}

/// One secret at one destination, as the last pass left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretStatus {
    pub name: String,
    pub destination: String,
    /// `in_sync`, `pending`, `drifted`, `failed`, `kept`, `disabled`, `deleted`.
    pub status: String,
    /// Versions carried (of those recorded).
    pub versions: usize,
    pub updated: String,
    pub detail: String,
}

/// A secret sync's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SecretSyncStatus {
    pub sync: String,
    /// Set after `promote`: the vault that is the source now.
    pub promoted: Option<String>,
    /// The last pass that reached every vault (RFC 3339).
    pub last_run: Option<String>,
    pub escrow_at: Option<String>,
    pub escrow_bundle: Option<String>,
    pub secrets: Vec<SecretStatus>,
    pub in_sync: usize,
    pub pending: usize,
    pub drifted: usize,
    pub failed: usize,
    /// Items that can never be copied (keys), listed under the source vault.
    pub not_exportable: usize,
    /// Daemon only: seconds since the last complete pass (the lag of every
    /// destination), how often passes run, and whether the lag passed twice that.
    pub lag_seconds: Option<f64>,
    pub interval_seconds: Option<f64>,
    pub lag_breached: bool,
    /// Daemon only: a pass is running; passes that failed since start; the last
    /// pass's vault-level errors.
    pub running: bool,
    pub failures: u64,
    pub last_errors: Vec<String>,
}

/// `GET /api/v1/secret-syncs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretSyncList {
    pub secret_syncs: Vec<SecretSyncStatus>,
}
