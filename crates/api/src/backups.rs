//! Recovery points (`[[backups]]`): points, what a run, restore, verify, prune and drill
//! report, and a backup's status.

use serde::{Deserialize, Serialize};

/// One point in a backup's repository (a restic snapshot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The snapshot id (64 hex digits; restic accepts any unique prefix).
    pub id: String,
    /// When the point was taken, RFC 3339 UTC.
    pub time: String,
    /// Unix seconds of `time`.
    pub unix: i64,
    /// Objects in the point.
    pub files: u64,
    /// Bytes of content in the point.
    pub size: u64,
    /// Bytes the point added to the repository (after dedup, before compression).
    pub data_added: u64,
    /// Objects new or changed since the point before.
    pub files_new: u64,
    pub files_changed: u64,
}

/// What `backup run` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointReport {
    pub backup: String,
    pub point: Point,
    /// Objects whose content was read (new or changed); the rest came from the parent.
    pub files_read: u64,
    pub bytes_read: u64,
    pub duration_ms: u64,
    /// Whether the repository was created by this run.
    pub initialized: bool,
}

/// What `backup restore` (and a drill's restore) did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreReport {
    pub backup: String,
    pub point: String,
    /// The store the point was restored to (URL, credentials never shown).
    pub to: String,
    pub files: u64,
    pub bytes: u64,
    pub duration_ms: u64,
}

/// What `backup verify` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub backup: String,
    pub points: u64,
    pub read_data: bool,
    /// Problems found; empty when the repository is sound.
    pub errors: Vec<String>,
    /// Findings that do not endanger any point (unreferenced packs left by an
    /// interrupted run, say).
    pub warnings: Vec<String>,
    pub duration_ms: u64,
}

/// One point and whether retention keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneDecision {
    pub id: String,
    pub time: String,
    pub keep: bool,
    /// The bands that keep it (`within`, `hourly`, ...).
    pub reasons: Vec<String>,
}

/// What `backup prune` did or, with `--dry-run`, would do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneReport {
    pub backup: String,
    pub dry_run: bool,
    pub points: Vec<PruneDecision>,
    /// Repository files (packs) removed or to remove, and their bytes.
    pub packs_removed: u64,
    pub bytes_removed: u64,
    /// Packs rewritten to drop unreferenced data.
    pub packs_repacked: u64,
    pub duration_ms: u64,
}

/// `georep backup drill`: a point restored to a scratch store and compared byte for byte.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupDrillReport {
    pub backup: String,
    pub point: Point,
    pub restore: RestoreReport,
    /// Objects read back from the scratch store and equal to the point.
    pub verified_files: u64,
    /// Objects that differ or are missing, by key; empty on a passing drill.
    pub mismatches: Vec<String>,
    /// Time to get the data back: restore plus verification, in seconds.
    pub rto_seconds: f64,
    /// Age of the restored point when the drill began: the data a loss at that moment
    /// would have cost, in seconds.
    pub rpo_seconds: f64,
    pub passed: bool,
}

/// `GET` [`crate::paths::BACKUPS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupList {
    pub backups: Vec<BackupStatus>,
}

/// A backup as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupStatus {
    pub name: String,
    pub source: String,
    pub repository: String,
    /// `every 5m` or `cron 0 * * * *`.
    pub schedule: String,
    pub append_only: bool,
    pub last_point: Option<Point>,
    /// Age of the last point in seconds: the recovery point actually achieved now.
    pub rpo_seconds: Option<f64>,
    /// The interval the schedule promises, in seconds (for cron, the gap between the
    /// next two runs).
    pub target_seconds: f64,
    /// The last point is older than twice the interval (or no point after that long).
    pub rpo_breached: bool,
    pub points: u64,
    /// Bytes held by the repository's packs.
    pub repository_bytes: u64,
    /// Content bytes over all points divided by repository bytes.
    pub dedup_ratio: Option<f64>,
    /// Unix seconds of the next scheduled run.
    pub next_run: Option<i64>,
    /// Whether a point (or the retention after it) is being taken now.
    pub running: bool,
    /// Runs that failed since the daemon started, and the last failure.
    pub failures: u64,
    pub last_error: Option<String>,
}
