//! What every engine's role change shares: the report a switchover or promotion
//! returns, how an interrupted one ended, and the database seen with another primary.

use georep_core::{Database, DbMember};
use serde::Serialize;

use crate::error::{DbError, Result};

/// What a role change did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SwitchoverReport {
    pub from: String,
    pub to: String,
    /// The old primary's position once writes were fenced (planned only): a WAL LSN
    /// on PostgreSQL, a GTID position on MariaDB.
    pub fence_lsn: Option<String>,
    /// How long the new primary took to confirm everything up to the fence.
    pub catch_up_ms: u64,
    pub sequences_set: usize,
    /// Other replicas that now follow the new primary.
    pub repointed: Vec<String>,
    /// Members that cannot follow the new primary without a gap or a divergence, and
    /// why; they need `georep db reseed`.
    pub left_behind: Vec<(String, String)>,
}

/// How an interrupted role change ended.
#[derive(Debug, Clone, Serialize)]
pub enum Settled {
    /// The target had not been promoted: the old primary is the primary again.
    RolledBack,
    /// The target had been promoted: the rest of the change was done.
    Finished(SwitchoverReport),
}

/// `db` with `primary` (a member name) as the primary and every other member as a replica.
pub fn rotated(db: &Database, primary: &str) -> Database {
    let mut members: Vec<DbMember> = std::iter::once(db.primary.clone())
        .chain(db.replicas.iter().cloned())
        .collect();
    let Some(i) = members.iter().position(|m| m.name == primary) else {
        return db.clone();
    };
    let p = members.remove(i);
    Database {
        primary: p,
        replicas: members,
        ..db.clone()
    }
}

/// Replica `to` of `db`.
pub(crate) fn replica(db: &Database, to: &str) -> Result<DbMember> {
    db.replicas
        .iter()
        .find(|r| r.name == to)
        .cloned()
        .ok_or_else(|| {
            DbError::InvalidConfig(format!("'{to}' is not a replica of database '{}'", db.name))
        })
}
