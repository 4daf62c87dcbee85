//! Preparing a former primary to be set up again as a replica: georep's publication,
//! subscriptions and slots dropped, the replicated tables emptied.

use georep_core::{Database, DbMember};

use super::exec;
use super::fence::{set_fence, set_gate};
use crate::error::{DbError, Result};
use crate::postgres::catalog::selected_tables;
use crate::postgres::conn::connect;
use crate::postgres::{drop_subscription, publication_name, quote_ident, quote_table};

/// Empties a former primary so it can be set up again as a replica of `db` (whose
/// primary is the current one): its georep publication and subscriptions are dropped and
/// the replicated tables truncated. Run `setup` afterwards.
pub async fn prepare_reseed(db: &Database, member: &DbMember) -> Result<()> {
    let who = format!("member '{}'", member.name);
    let c = connect(&who, &member.url).await?;
    let p = connect("primary", &db.primary.url).await?;
    let tables = selected_tables(&p, db, "primary").await?;
    // Exactly this database's names, in this database: a LIKE 'georep_orders_%' would
    // also match database orders-eu's objects (and '_' is a wildcard in LIKE).
    let ours = db.subscription_names();
    let subs: Vec<String> = c
        .query(
            "SELECT subname::text FROM pg_subscription WHERE subname = ANY($1) \
             AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&ours],
        )
        .await
        .map_err(|e| DbError::sql(&who, e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for s in subs {
        drop_subscription(&c, &who, &s).await?;
    }
    exec(
        &c,
        &who,
        &format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(&publication_name(db))
        ),
    )
    .await?;
    // Slots a former primary still holds for others would keep WAL forever.
    c.query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = ANY($1) AND database = current_database() AND NOT active",
        &[&ours],
    )
    .await
    .map_err(|e| DbError::sql(&who, e))?;
    let list = tables
        .iter()
        .map(|t| quote_table(t))
        .collect::<Vec<_>>()
        .join(", ");
    if !list.is_empty() {
        exec(&c, &who, &format!("TRUNCATE {list} CASCADE")).await?;
    }
    // It comes back as a replica: read-only for clients, open to readers.
    set_fence(&c, &who, true).await?;
    set_gate(&c, &who, false).await?;
    Ok(())
}
