//! Planned switchover: make a replica the primary without losing an acknowledged write.
//! The caller holds new client connections (the listeners) while this runs.

use std::time::{Duration, Instant};

use georep_core::{Database, DbMember};
use serde::Serialize;

use super::conn::connect;
use super::drift::push_sequences;
use super::setup::selected_tables;
use super::{
    drop_subscription, publication_name, quote_ident, quote_literal, quote_table, subscription_name,
};
use crate::error::{DbError, Result};

#[derive(Debug, Clone, Serialize)]
pub struct SwitchoverReport {
    pub from: String,
    pub to: String,
    /// The old primary's WAL position once writes were fenced.
    pub fence_lsn: String,
    /// How long the replica took to confirm everything up to the fence.
    pub catch_up_ms: u64,
    pub sequences_set: usize,
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

async fn exec(c: &tokio_postgres::Client, who: &str, sql: &str) -> Result<()> {
    c.batch_execute(sql).await.map_err(|e| DbError::sql(who, e))
}

/// Fences the current primary of `db` (read-only, client sessions ended), waits until
/// replica `to` has confirmed every change up to the fence, sets its sequences exactly,
/// promotes it, and reverses replication so the old primary follows it. On failure
/// before the promotion, the old primary is unfenced and stays the primary.
pub async fn switchover(db: &Database, to: &str, timeout: Duration) -> Result<SwitchoverReport> {
    let target = db
        .replicas
        .iter()
        .find(|r| r.name == to)
        .cloned()
        .ok_or_else(|| {
            DbError::InvalidConfig(format!("'{to}' is not a replica of database '{}'", db.name))
        })?;
    let old = db.primary.clone();
    let p = connect("primary", &old.url).await?;
    let r = connect(&format!("replica '{to}'"), &target.url).await?;
    let rwho = format!("replica '{to}'");
    let tables = selected_tables(&p, db, "primary").await?;
    let dbname: String = p
        .query_one("SELECT current_database()", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| DbError::sql("primary", e))?;
    let slot = subscription_name(db, &target.name);

    // 1. Fence: new sessions are read-only, current client sessions end.
    exec(
        &p,
        "primary",
        &format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            quote_ident(&dbname)
        ),
    )
    .await?;
    let unfence = format!(
        "ALTER DATABASE {} RESET default_transaction_read_only",
        quote_ident(&dbname)
    );
    p.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        &[],
    )
    .await
    .map_err(|e| DbError::sql("primary", e))?;
    let fence_lsn: String = p
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| DbError::sql("primary", e))?;

    // 2. Wait for the replica to confirm everything up to the fence.
    let started = Instant::now();
    loop {
        let done: Option<bool> = p
            .query_opt(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
                &[&fence_lsn, &slot],
            )
            .await
            .map_err(|e| DbError::sql("primary", e))?
            .map(|r| r.get(0));
        if done == Some(true) {
            break;
        }
        if done.is_none() || started.elapsed() > timeout {
            let _ = exec(&p, "primary", &unfence).await;
            return Err(DbError::Timeout(format!(
                "replica '{to}' did not confirm the fence position {fence_lsn} within {timeout:?}; the switchover was abandoned and the primary unfenced"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let catch_up_ms = started.elapsed().as_millis() as u64;

    // 3. Sequences exactly as on the primary.
    let sequences_set = push_sequences(&p, &r, &target.name, &tables, 0).await?;

    // 4. Promote: the replica stops following (its slot is dropped on the old primary).
    drop_subscription(&r, &rwho, &slot).await?;
    p.query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .map_err(|e| DbError::sql("primary", e))?;

    // 5. Reverse: the old primary subscribes to the new one, from this exact point.
    let publication = publication_name(db);
    let list = tables
        .iter()
        .map(|t| quote_table(t))
        .collect::<Vec<_>>()
        .join(", ");
    exec(
        &p,
        "primary",
        &format!("DROP PUBLICATION IF EXISTS {}", quote_ident(&publication)),
    )
    .await?;
    exec(
        &r,
        &rwho,
        &format!("DROP PUBLICATION IF EXISTS {}", quote_ident(&publication)),
    )
    .await?;
    exec(
        &r,
        &rwho,
        &format!(
            "CREATE PUBLICATION {} FOR TABLE {list}",
            quote_ident(&publication)
        ),
    )
    .await?;
    let back = subscription_name(db, &old.name);
    exec(&p, "primary", &unfence).await?;
    exec(
        &p,
        "primary",
        &format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (slot_name = {}, copy_data = false)",
            quote_ident(&back),
            quote_literal(&target.url),
            quote_ident(&publication),
            quote_literal(&back)
        ),
    )
    .await?;
    Ok(SwitchoverReport {
        from: old.name,
        to: target.name,
        fence_lsn,
        catch_up_ms,
        sequences_set,
    })
}

/// Forced promotion of replica `to` while the primary is gone: the replica stops
/// following (its subscription is dropped, the slot left behind on the dead primary is
/// not touched) and becomes writable. What it had not received is lost; the caller
/// estimates how much from the last lag it saw.
pub async fn promote(db: &Database, to: &str) -> Result<()> {
    let target = db.replicas.iter().find(|r| r.name == to).ok_or_else(|| {
        DbError::InvalidConfig(format!("'{to}' is not a replica of database '{}'", db.name))
    })?;
    let who = format!("replica '{to}'");
    let r = connect(&who, &target.url).await?;
    let slot = subscription_name(db, &target.name);
    let exists: bool = r
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&slot],
        )
        .await
        .map(|row| row.get(0))
        .map_err(|e| DbError::sql(&who, e))?;
    if exists {
        drop_subscription(&r, &who, &slot).await?;
    }
    let dbname: String = r
        .query_one("SELECT current_database()", &[])
        .await
        .map(|row| row.get(0))
        .map_err(|e| DbError::sql(&who, e))?;
    exec(
        &r,
        &who,
        &format!(
            "ALTER DATABASE {} RESET default_transaction_read_only",
            quote_ident(&dbname)
        ),
    )
    .await?;
    Ok(())
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

/// Empties a former primary so it can be set up again as a replica of `db` (whose
/// primary is the current one): its georep publication and subscriptions are dropped and
/// the replicated tables truncated. Run `setup` afterwards.
pub async fn prepare_reseed(db: &Database, member: &DbMember) -> Result<()> {
    let who = format!("member '{}'", member.name);
    let c = connect(&who, &member.url).await?;
    let p = connect("primary", &db.primary.url).await?;
    let tables = selected_tables(&p, db, "primary").await?;
    let prefix = format!("{}_", publication_name(db));
    let subs: Vec<String> = c
        .query(
            "SELECT subname::text FROM pg_subscription WHERE subname LIKE $1 || '%'",
            &[&prefix],
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
         WHERE slot_name LIKE $1 || '%' AND NOT active",
        &[&prefix],
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
    let dbname: String = c
        .query_one("SELECT current_database()", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| DbError::sql(&who, e))?;
    exec(
        &c,
        &who,
        &format!(
            "ALTER DATABASE {} RESET default_transaction_read_only",
            quote_ident(&dbname)
        ),
    )
    .await?;
    Ok(())
}
