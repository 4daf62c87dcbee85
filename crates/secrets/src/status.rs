//! A sync's status, read from its ledger alone (no vault is asked), so it answers
//! while a pass runs and when a vault is down.

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::ledger::Ledger;

/// One secret at one destination, as the last pass left it.
#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize, Default)]
pub struct SyncStatus {
    pub sync: String,
    /// Set after `promote`: the vault that is the source now.
    pub promoted: Option<String>,
    pub last_run: Option<String>,
    pub escrow_at: Option<String>,
    pub escrow_bundle: Option<String>,
    pub secrets: Vec<SecretStatus>,
    /// Counts by status.
    pub in_sync: usize,
    pub pending: usize,
    pub drifted: usize,
    pub failed: usize,
}

/// `dir` is `secrets/` beside the state file.
pub fn status(dir: &Path, sync: &str) -> Result<SyncStatus> {
    let mut out = SyncStatus {
        sync: sync.to_string(),
        ..SyncStatus::default()
    };
    let Some(l) = Ledger::open_read(dir, sync)? else {
        return Ok(out);
    };
    out.promoted = l.meta(crate::sync::PROMOTED)?;
    out.last_run = l.meta("last_run")?;
    out.escrow_at = l.meta("escrow_at")?;
    out.escrow_bundle = l.meta("escrow_key")?;
    for (vault, name, row) in l.rows(None)? {
        match row.status.as_str() {
            "in_sync" => out.in_sync += 1,
            "pending" => out.pending += 1,
            "drifted" => out.drifted += 1,
            "failed" => out.failed += 1,
            _ => {}
        }
        out.secrets.push(SecretStatus {
            name,
            destination: vault,
            status: row.status,
            versions: row.carried.len(),
            updated: row.updated,
            detail: row.detail,
        });
    }
    Ok(out)
}
