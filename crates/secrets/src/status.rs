//! A sync's status, read from its ledger alone (no vault is asked), so it answers
//! while a pass runs and when a vault is down.

use std::path::Path;

use crate::error::Result;
use crate::ledger::Ledger;

pub use georep_api::{SecretStatus, SecretSyncStatus};

/// `dir` is `secrets/` beside the state file.
pub fn status(dir: &Path, sync: &str) -> Result<SecretSyncStatus> {
    let mut out = SecretSyncStatus {
        sync: sync.to_string(),
        ..SecretSyncStatus::default()
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
            "not_exportable" => out.not_exportable += 1,
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
