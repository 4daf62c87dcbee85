//! Role changes: planned switchover, forced promotion, and settling a role change that
//! a crash or an error interrupted. The caller holds new client connections (the
//! listeners) while these run.
//!
//! The point of no return is the target's subscription being dropped, in one
//! transaction: while it exists the old primary is still the primary and a role change
//! is rolled back; once it is gone the target is the primary and the change is finished.
//!
//! This module holds the report a role change returns and the helpers every step shares;
//! the fence, following and stopping to follow, the planned switchover, the forced
//! promotion, settling and reseed preparation each have a child module.

use georep_core::Database;

use super::subscription_name;
use crate::error::{DbError, Result};

mod fence;
mod follow;
mod forced;
mod planned;
mod reseed;
mod settle;

pub use self::fence::set_fence;
pub use self::forced::promote;
pub use self::planned::{preflight, switchover};
pub use self::reseed::prepare_reseed;
pub use self::settle::settle;
use crate::role::replica;
pub use crate::role::{rotated, Settled, SwitchoverReport};

async fn exec(c: &tokio_postgres::Client, who: &str, sql: &str) -> Result<()> {
    c.batch_execute(sql).await.map_err(|e| DbError::sql(who, e))
}

/// Last known lag of each replica, read on the primary: (bytes, seconds). Seconds are
/// None when the replica is not connected (its lag in time is unknown).
pub async fn replica_lag(
    primary: &tokio_postgres::Client,
    db: &Database,
) -> Result<Vec<(String, Option<i64>, Option<f64>)>> {
    let mut out = Vec::new();
    for r in &db.replicas {
        let slot = subscription_name(db, &r.name);
        let row = primary
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint, \
                 CASE WHEN w.pid IS NULL THEN NULL ELSE coalesce(EXTRACT(epoch FROM w.replay_lag)::float8, 0) END \
                 FROM pg_replication_slots s LEFT JOIN pg_stat_replication w ON w.application_name = s.slot_name \
                 WHERE s.slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| DbError::sql("primary", e))?;
        match row {
            Some(row) => out.push((r.name.clone(), row.get(0), row.get(1))),
            None => out.push((r.name.clone(), None, None)),
        }
    }
    Ok(out)
}
