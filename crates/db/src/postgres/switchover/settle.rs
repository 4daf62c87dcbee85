//! Settling a role change that a crash or an error interrupted: rolled back when the
//! target was not yet promoted, finished (planned or forced) when it was.

use georep_core::{Database, DbMember};

use super::fence::{connect_through_gate, set_fence, set_gate};
use super::follow::subscription;
use super::forced::finish_forced;
use super::planned::finish_planned;
use super::{exec, replica, Settled};
use crate::error::Result;
use crate::postgres::conn::connect;
use crate::postgres::{quote_ident, subscription_name};

/// Settles a role change from `db`'s primary to `to` that was interrupted (a crash, or
/// an error part-way): rolled back if `to` was not yet promoted, finished if it was.
/// Fails, changing nothing, when the members it must ask cannot be reached; the caller
/// keeps new connections held and tries again.
pub async fn settle(db: &Database, to: &str, planned: bool) -> Result<Settled> {
    let target = replica(db, to)?;
    let who = format!("replica '{to}'");
    let r = connect(&who, &target.url).await?;
    let sub = subscription_name(db, to);
    if let Some((enabled, _)) = subscription(&r, &who, &sub).await? {
        // Not promoted: the old primary stays; undo the fence.
        if !enabled {
            exec(
                &r,
                &who,
                &format!("ALTER SUBSCRIPTION {} ENABLE", quote_ident(&sub)),
            )
            .await?;
        }
        if planned {
            let p = connect_through_gate("primary", &db.primary.url).await?;
            set_fence(&p, "primary", false).await?;
            set_gate(&p, "primary", false).await?;
        }
        return Ok(Settled::RolledBack);
    }
    if planned {
        match connect_through_gate("primary", &db.primary.url).await {
            Ok(p) => {
                let others: Vec<&DbMember> = db.replicas.iter().filter(|m| m.name != to).collect();
                return Ok(Settled::Finished(
                    finish_planned(db, &target, &r, &p, &others).await?,
                ));
            }
            Err(e) => {
                let mut rep = finish_forced(db, &target, &r, None).await?;
                rep.left_behind.push((
                    db.primary.name.clone(),
                    format!("unreachable while the failover was finished: {e}"),
                ));
                return Ok(Settled::Finished(rep));
            }
        }
    }
    Ok(Settled::Finished(
        finish_forced(db, &target, &r, None).await?,
    ))
}
