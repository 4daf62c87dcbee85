//! The planned switchover: a preflight that waits for the target to be close, the fence,
//! the wait for the target to confirm everything up to it, the promotion, and finishing
//! (the publication moves, other replicas and the old primary follow the new one).

use std::time::{Duration, Instant};

use georep_core::{Database, DbMember};

use super::fence::{end_client_sessions, set_fence, set_gate};
use super::follow::{ensure_publication, follow, stop_following, subscription};
use super::{exec, replica, SwitchoverReport};
use crate::crash_point;
use crate::error::{DbError, Result};
use crate::postgres::catalog::selected_tables;
use crate::postgres::conn::connect;
use crate::postgres::drift::push_sequences;
use crate::postgres::{
    deadline_after, drop_slot, publication_name, quote_ident, subscription_name,
};

/// How far behind (WAL bytes) the target may be when the fence goes up.
const PREFLIGHT_MAX_BEHIND: i64 = 8 << 20;

/// How long other replicas may take to confirm the fence once the target has.
const OTHERS_GRACE: Duration = Duration::from_secs(5);

/// Waits until the slot of each replica in `slots` has confirmed `lsn` on the
/// primary, or `deadline` passes; returns those that confirmed.
async fn wait_confirmed(
    p: &tokio_postgres::Client,
    slots: &[String],
    lsn: &str,
    deadline: Instant,
) -> Result<Vec<String>> {
    loop {
        let rows = p
            .query(
                "SELECT slot_name::text FROM pg_replication_slots \
                 WHERE slot_name = ANY($1) AND confirmed_flush_lsn >= $2::text::pg_lsn",
                &[&slots, &lsn],
            )
            .await
            .map_err(|e| DbError::sql("primary", e))?;
        let done: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if done.len() == slots.len() || Instant::now() >= deadline {
            return Ok(done);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits, with nothing held or fenced, until replica `to` streams from the primary and
/// is less than 8 MiB behind, so the fence of a planned switchover that follows holds
/// writes for a moment rather than for a reconnect or a backlog. Fails after `timeout`,
/// saying why, with nothing changed.
pub async fn preflight(db: &Database, to: &str, timeout: Duration) -> Result<()> {
    replica(db, to)?;
    let p = connect("primary", &db.primary.url).await?;
    let slot = subscription_name(db, to);
    let deadline = deadline_after(Instant::now(), timeout);
    loop {
        let row = p
            .query_opt(
                "SELECT w.state = 'streaming', pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint \
                 FROM pg_replication_slots s LEFT JOIN pg_stat_replication w ON w.application_name = s.slot_name \
                 WHERE s.slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| DbError::sql("primary", e))?;
        let Some(row) = row else {
            return Err(DbError::InvalidConfig(format!(
                "replica '{to}' has no replication slot {slot} on the primary: it is not set up as a replica (run georep db setup {})",
                db.name
            )));
        };
        let (streaming, behind): (Option<bool>, Option<i64>) = (row.get(0), row.get(1));
        if streaming == Some(true) && behind.is_some_and(|b| b <= PREFLIGHT_MAX_BEHIND) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(DbError::Timeout(format!(
                "replica '{to}' is {} within {timeout:?}; nothing was fenced and the primary is unchanged",
                if streaming == Some(true) {
                    format!("{} bytes behind and did not catch up", behind.unwrap_or(-1))
                } else {
                    "not streaming from the primary".to_string()
                }
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Fences the current primary of `db` (read-only, closed to new non-superuser sessions,
/// client sessions ended), waits until
/// replica `to` (and, for a few seconds more, every other replica) has confirmed every
/// change up to the fence, sets its sequences exactly, promotes it, points the other
/// replicas at it and reverses replication so the old primary follows it. On failure
/// before the promotion the old primary is unfenced and stays the primary; after it,
/// [`settle`](fn@super::settle) finishes the change. Call [`preflight`] first, before holding clients.
pub async fn switchover(db: &Database, to: &str, timeout: Duration) -> Result<SwitchoverReport> {
    let target = replica(db, to)?;
    let old = db.primary.clone();
    let p = connect("primary", &old.url).await?;
    let rwho = format!("replica '{to}'");
    let r = connect(&rwho, &target.url).await?;
    let tables = selected_tables(&p, db, "primary").await?;
    let slot = subscription_name(db, &target.name);
    let others: Vec<&DbMember> = db.replicas.iter().filter(|m| m.name != to).collect();

    // 1. Fence: new sessions are read-only, current client sessions end.
    set_fence(&p, "primary", true).await?;
    set_gate(&p, "primary", true).await?;
    if let Err(e) = end_client_sessions(&p).await {
        let _ = set_fence(&p, "primary", false).await;
        let _ = set_gate(&p, "primary", false).await;
        return Err(e);
    }
    // The insert position covers every commit record written so far, including
    // asynchronous commits not yet flushed; no client session is left to add more.
    let fence_lsn: String = p
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| DbError::sql("primary", e))?;
    crash_point("switchover-fenced");

    // 2. Wait for the target to confirm everything up to the fence.
    let started = Instant::now();
    let confirmed = wait_confirmed(
        &p,
        std::slice::from_ref(&slot),
        &fence_lsn,
        deadline_after(started, timeout),
    )
    .await;
    if !matches!(&confirmed, Ok(c) if !c.is_empty()) {
        let _ = set_fence(&p, "primary", false).await;
        let _ = set_gate(&p, "primary", false).await;
        confirmed?;
        return Err(DbError::Timeout(format!(
            "replica '{to}' did not confirm the fence position {fence_lsn} within {timeout:?}; the switchover was abandoned and the primary unfenced"
        )));
    }
    let catch_up_ms = started.elapsed().as_millis() as u64;

    // 3. Sequences exactly as on the primary.
    let sequences_set = push_sequences(&p, &r, &target.name, &tables, 0).await?;

    // 4. Promote: the point of no return.
    stop_following(&r, &rwho, &slot, false).await?;
    crash_point("switchover-promoted");

    // 5. Everyone else follows the new primary.
    let mut report = finish_planned(db, &target, &r, &p, &others).await?;
    report.fence_lsn = Some(fence_lsn);
    report.catch_up_ms = catch_up_ms;
    report.sequences_set = sequences_set;
    Ok(report)
}

/// After a planned promotion: the publication moves to the new primary, every other
/// replica that has everything up to the (still fenced) old primary's position follows
/// it, the old primary is unfenced and follows it too. Each step is safe to repeat.
pub(super) async fn finish_planned(
    db: &Database,
    target: &DbMember,
    r: &tokio_postgres::Client,
    p: &tokio_postgres::Client,
    others: &[&DbMember],
) -> Result<SwitchoverReport> {
    let rwho = format!("new primary '{}'", target.name);
    let mut report = SwitchoverReport {
        from: db.primary.name.clone(),
        to: target.name.clone(),
        ..Default::default()
    };
    set_fence(r, &rwho, false).await?;
    ensure_publication(r, &rwho, db).await?;
    let fenced_at: String = p
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| DbError::sql("primary", e))?;
    let mut pending = Vec::new();
    for m in others {
        let who = format!("replica '{}'", m.name);
        match connect(&who, &m.url).await {
            Ok(c) => match subscription(&c, &who, &subscription_name(db, &m.name)).await? {
                Some((_, conn)) if conn == target.url => {
                    // Re-pointed before an interruption: its old slot may remain.
                    drop_slot(p, "primary", &subscription_name(db, &m.name)).await?;
                    report.repointed.push(m.name.clone())
                }
                _ => pending.push((m, c)),
            },
            Err(e) => report.left_behind.push((
                m.name.clone(),
                format!("unreachable during the failover: {e}"),
            )),
        }
    }
    let slots: Vec<String> = pending
        .iter()
        .map(|(m, _)| subscription_name(db, &m.name))
        .collect();
    let done = wait_confirmed(p, &slots, &fenced_at, Instant::now() + OTHERS_GRACE).await?;
    for (m, c) in pending {
        let who = format!("replica '{}'", m.name);
        let sub = subscription_name(db, &m.name);
        if done.contains(&sub) {
            follow(&c, &who, db, &m.name, target, r).await?;
            drop_slot(p, "primary", &sub).await?;
            report.repointed.push(m.name.clone());
        } else {
            // It would miss what it had not received: stop it and leave it for a reseed.
            if subscription(&c, &who, &sub).await?.is_some() {
                exec(
                    &c,
                    &who,
                    &format!("ALTER SUBSCRIPTION {} DISABLE", quote_ident(&sub)),
                )
                .await?;
            }
            // Its slot would hold WAL on the old primary until the reseed.
            drop_slot(p, "primary", &sub).await?;
            report.left_behind.push((
                m.name.clone(),
                format!("had not confirmed {fenced_at} within {OTHERS_GRACE:?} of the new primary"),
            ));
        }
    }
    // The old primary follows the new one from exactly this point.
    drop_slot(p, "primary", &subscription_name(db, &target.name)).await?;
    exec(
        p,
        "primary",
        &format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(&publication_name(db))
        ),
    )
    .await?;
    // The old primary keeps its fence: it is a replica now.
    set_fence(p, "primary", true).await?;
    let back = subscription_name(db, &db.primary.name);
    match subscription(p, "primary", &back).await? {
        Some((_, conn)) if conn == target.url => {}
        _ => follow(p, "primary", db, &db.primary.name, target, r).await?,
    }
    // Readers may connect to it again.
    set_gate(p, "primary", false).await?;
    Ok(report)
}
