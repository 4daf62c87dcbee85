//! `georep db teardown`: remove subscriptions, slots and the publication; never leave a
//! slot holding WAL on the primary.

use georep_core::Database;
use serde::Serialize;

use super::conn::connect;
use super::{drop_slot, drop_subscription, publication_name, quote_ident, subscription_name};
use crate::error::{DbError, Result};

#[derive(Debug, Clone, Default, Serialize)]
pub struct TeardownReport {
    pub subscriptions_dropped: Vec<String>,
    pub slots_dropped: Vec<String>,
    pub publication_dropped: bool,
    /// Things left for the operator (a replica that could not be reached).
    pub warnings: Vec<String>,
}

pub async fn teardown(db: &Database) -> Result<TeardownReport> {
    let primary = connect("primary", &db.primary.url).await?;
    let mut rep = TeardownReport::default();
    let mut sync_prefixes = Vec::new();
    for r in &db.replicas {
        let sub = subscription_name(db, &r.name);
        let who = format!("replica '{}'", r.name);
        match connect(&who, &r.url).await {
            Ok(c) => {
                let oid: Option<u32> = c
                    .query_opt("SELECT oid FROM pg_subscription WHERE subname = $1", &[&sub])
                    .await
                    .map_err(|e| DbError::sql(&who, e))?
                    .map(|r| r.get(0));
                if let Some(oid) = oid {
                    // Detach the slot first: the primary's slot is dropped below, even if
                    // this replica could not reach the primary itself.
                    drop_subscription(&c, &who, &sub).await?;
                    rep.subscriptions_dropped.push(format!("{} on {}", sub, r.name));
                    sync_prefixes.push(format!("pg_{oid}_sync_"));
                }
            }
            Err(e) => rep.warnings.push(format!(
                "{who} is unreachable ({e}); its subscription {sub} remains there: when it is back, run ALTER SUBSCRIPTION {sub} DISABLE; ALTER SUBSCRIPTION {sub} SET (slot_name = NONE); DROP SUBSCRIPTION {sub}; (its slot on the primary is dropped now)"
            )),
        }
    }
    let mut slots: Vec<String> = db
        .replicas
        .iter()
        .map(|r| subscription_name(db, &r.name))
        .collect();
    for row in primary
        .query(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pg\\_%\\_sync\\_%'",
            &[],
        )
        .await
        .map_err(|e| DbError::sql("primary", e))?
    {
        let name: String = row.get(0);
        if sync_prefixes.iter().any(|p| name.starts_with(p)) {
            slots.push(name);
        }
    }
    for slot in slots {
        if drop_slot(&primary, "primary", &slot).await? {
            rep.slots_dropped.push(slot.clone());
        }
    }
    let publication = publication_name(db);
    let n = primary
        .execute(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| DbError::sql("primary", e))?;
    if n > 0 {
        primary
            .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(&publication)))
            .await
            .map_err(|e| DbError::sql("primary", e))?;
        rep.publication_dropped = true;
    }
    // Never report success while one of ours still holds WAL.
    let left: Vec<String> = primary
        .query(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY($1)",
            &[&db
                .replicas
                .iter()
                .map(|r| subscription_name(db, &r.name))
                .collect::<Vec<_>>()],
        )
        .await
        .map_err(|e| DbError::sql("primary", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !left.is_empty() {
        return Err(DbError::Sql {
            member: "primary".into(),
            detail: format!(
                "replication slots still present after teardown: {}; drop them with SELECT pg_drop_replication_slot('NAME')",
                left.join(", ")
            ),
        });
    }
    Ok(rep)
}
