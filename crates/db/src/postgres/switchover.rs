//! Role changes: planned switchover, forced promotion, and settling a role change that
//! a crash or an error interrupted. The caller holds new client connections (the
//! listeners) while these run.
//!
//! The point of no return is the target's subscription being dropped, in one
//! transaction: while it exists the old primary is still the primary and a role change
//! is rolled back; once it is gone the target is the primary and the change is finished.

use std::time::{Duration, Instant};

use georep_core::{crash_point, Database, DbMember};
use serde::Serialize;

use super::catalog::selected_tables;
use super::conn::connect;
use super::drift::push_sequences;
use super::publication::{publish_tables, IfMissing};
use super::{
    deadline_after, drop_slot, drop_subscription, publication_name, quote_ident, quote_literal,
    quote_table, subscription_name,
};
use crate::error::{DbError, Result};

/// What a role change did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SwitchoverReport {
    pub from: String,
    pub to: String,
    /// The old primary's WAL position once writes were fenced (planned only).
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

/// How far behind (WAL bytes) the target may be when the fence goes up.
const PREFLIGHT_MAX_BEHIND: i64 = 8 << 20;

/// How long other replicas may take to confirm the fence once the target has.
const OTHERS_GRACE: Duration = Duration::from_secs(5);

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
fn replica(db: &Database, to: &str) -> Result<DbMember> {
    db.replicas
        .iter()
        .find(|r| r.name == to)
        .cloned()
        .ok_or_else(|| {
            DbError::InvalidConfig(format!("'{to}' is not a replica of database '{}'", db.name))
        })
}

async fn exec(c: &tokio_postgres::Client, who: &str, sql: &str) -> Result<()> {
    c.batch_execute(sql).await.map_err(|e| DbError::sql(who, e))
}

async fn dbname(c: &tokio_postgres::Client, who: &str) -> Result<String> {
    c.query_one("SELECT current_database()", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| DbError::sql(who, e))
}

/// Sets or clears the fence on a member: new client sessions are read-only. Replicas
/// keep it (a write there would diverge from the primary); the primary has none.
/// georep's own sessions (see `connect`) and the apply workers are not bound by it.
pub async fn set_fence(c: &tokio_postgres::Client, who: &str, on: bool) -> Result<()> {
    let name = quote_ident(&dbname(c, who).await?);
    let sql = if on {
        format!("ALTER DATABASE {name} SET default_transaction_read_only = on")
    } else {
        format!("ALTER DATABASE {name} RESET default_transaction_read_only")
    };
    exec(c, who, &sql).await
}

/// Closes or reopens the database to new non-superuser sessions for the length of a
/// planned switchover (`CONNECTION LIMIT 0`), so a client that bypasses the listeners
/// cannot connect and write past the fence. Only the default limit (-1) is changed, so a
/// limit an operator set is left alone (and then only the read-only fence applies).
async fn set_gate(c: &tokio_postgres::Client, who: &str, closed: bool) -> Result<()> {
    let limit: i32 = c
        .query_one(
            "SELECT datconnlimit FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| DbError::sql(who, e))?;
    let name = quote_ident(&dbname(c, who).await?);
    match (closed, limit) {
        (true, -1) => exec(c, who, &format!("ALTER DATABASE {name} CONNECTION LIMIT 0")).await,
        (false, 0) => {
            exec(
                c,
                who,
                &format!("ALTER DATABASE {name} CONNECTION LIMIT -1"),
            )
            .await
        }
        _ => Ok(()),
    }
}

/// Connects to an old primary that a planned switchover closed (`CONNECTION LIMIT 0`)
/// and that no one reopened (georep crashed, or its connection broke). A georep role
/// that is not a superuser is held by that gate like any client, so it reopens the
/// gate from the server's maintenance database (`postgres`, else `template1`) and
/// connects again; the read-only fence stays until the change is settled.
async fn connect_through_gate(who: &str, url: &str) -> Result<tokio_postgres::Client> {
    let refused = match connect(who, url).await {
        // too_many_connections; whether the database's own limit is the cause is read
        // from pg_database below, not from the (translated) message.
        Err(e @ DbError::Busy { .. }) if matches!(&e, DbError::Busy { code, .. } if code == "53300") => {
            e
        }
        other => return other,
    };
    let Ok(ep) = georep_core::pg_endpoint(url) else {
        return Err(refused);
    };
    for maintenance in ["postgres", "template1"] {
        let Some(other) = with_database(url, maintenance) else {
            continue;
        };
        let Ok(m) = connect(who, &other).await else {
            continue;
        };
        let closed: bool = m
            .query_one(
                "SELECT datconnlimit = 0 FROM pg_database WHERE datname = $1",
                &[&ep.dbname],
            )
            .await
            .map(|r| r.get(0))
            .map_err(|e| DbError::sql(who, e))?;
        if closed {
            exec(
                &m,
                who,
                &format!(
                    "ALTER DATABASE {} CONNECTION LIMIT -1",
                    quote_ident(&ep.dbname)
                ),
            )
            .await?;
            tracing::warn!(member = who, database = %ep.dbname, "reopened a database a switchover had closed, to settle it");
        }
        return connect(who, url).await;
    }
    Err(refused)
}

/// `url` pointed at another database of the same server.
fn with_database(url: &str, name: &str) -> Option<String> {
    let mut u = url::Url::parse(url).ok()?;
    let kept: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != "dbname")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.set_path(&format!("/{name}"));
    if kept.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(kept);
    }
    Some(u.to_string())
}

/// A subscription's state on a member: enabled, and the connection it follows.
async fn subscription(
    c: &tokio_postgres::Client,
    who: &str,
    name: &str,
) -> Result<Option<(bool, String)>> {
    Ok(c.query_opt(
        "SELECT subenabled, subconninfo FROM pg_subscription WHERE subname = $1",
        &[&name],
    )
    .await
    .map_err(|e| DbError::sql(who, e))?
    .map(|r| (r.get(0), r.get(1))))
}

/// The publisher's LSN of the last transaction a subscription applied.
async fn applied_lsn(c: &tokio_postgres::Client, who: &str, sub: &str) -> Result<Option<u64>> {
    let row = c
        .query_opt(
            "SELECT o.remote_lsn::text FROM pg_replication_origin_status o \
             JOIN pg_subscription s ON o.external_id = 'pg_' || s.oid WHERE s.subname = $1",
            &[&sub],
        )
        .await
        .map_err(|e| DbError::sql(who, e))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|l| parse_lsn(&l)))
}

/// `X/Y` as a number, so LSNs compare.
fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The point of no return: the target stops following in one transaction (its
/// subscription is dropped; the slot is left to the caller). Returns the publisher's
/// LSN it had applied, or None when it was no longer subscribed.
async fn stop_following(
    c: &tokio_postgres::Client,
    who: &str,
    sub: &str,
    measure: bool,
) -> Result<Option<Option<u64>>> {
    if subscription(c, who, sub).await?.is_none() {
        return Ok(None);
    }
    // To know what it applied, stop it first (a disabled subscription still means
    // "not promoted"), then read its position once the worker is gone.
    let applied = if measure {
        exec(
            c,
            who,
            &format!("ALTER SUBSCRIPTION {} DISABLE", quote_ident(sub)),
        )
        .await?;
        wait_worker_stopped(c, who, sub).await?;
        applied_lsn(c, who, sub).await?
    } else {
        None
    };
    drop_subscription(c, who, sub).await?;
    Ok(Some(applied))
}

/// Ends every client session of the database and waits until they are gone, so no
/// commit can still be in flight when the fence position is read.
async fn end_client_sessions(p: &tokio_postgres::Client) -> Result<()> {
    const CLIENTS: &str = "FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND backend_type = 'client backend'";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = p
            .query_one(
                &format!("SELECT count(pg_terminate_backend(pid)) {CLIENTS}"),
                &[],
            )
            .await
            .map(|r| r.get(0))
            .map_err(|e| DbError::sql("primary", e))?;
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DbError::Timeout(format!(
                "{left} client session(s) of the primary did not end within 10 s of pg_terminate_backend; the switchover was abandoned and the primary unfenced"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (up to 5 s) until a subscription's apply worker has stopped, so what it has
/// applied is final.
async fn wait_worker_stopped(c: &tokio_postgres::Client, who: &str, sub: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let running: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL)",
                &[&sub],
            )
            .await
            .map(|r| r.get(0))
            .map_err(|e| DbError::sql(who, e))?;
        if !running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

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

/// Makes `member` follow `primary` from now on (no initial copy: the caller has
/// checked that it holds exactly what the new primary holds).
async fn follow(
    c: &tokio_postgres::Client,
    who: &str,
    db: &Database,
    member: &str,
    primary: &DbMember,
    primary_client: &tokio_postgres::Client,
) -> Result<()> {
    let sub = subscription_name(db, member);
    set_fence(c, who, true).await?;
    if subscription(c, who, &sub).await?.is_some() {
        drop_subscription(c, who, &sub).await?;
    }
    // A slot of that name left on the new primary from an earlier era would be reused
    // at the wrong position.
    drop_slot(primary_client, "new primary", &sub).await?;
    exec(
        c,
        who,
        &format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (slot_name = {}, copy_data = false)",
            quote_ident(&sub),
            quote_literal(&primary.url),
            quote_ident(&publication_name(db)),
            quote_literal(&sub)
        ),
    )
    .await
}

/// The publication on the new primary, for the database's tables (kept if it exists,
/// so replicas already following it are not disturbed).
async fn ensure_publication(c: &tokio_postgres::Client, who: &str, db: &Database) -> Result<()> {
    let tables = selected_tables(c, db, who).await?;
    publish_tables(c, who, db, &tables, IfMissing::Create).await
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
/// [`settle`] finishes the change. Call [`preflight`] first, before holding clients.
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
async fn finish_planned(
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

/// Forced promotion of replica `to` while the primary is gone: it stops following and
/// becomes writable. What it had not received is lost; the caller estimates how much
/// from the last lag it saw. Every other replica that had applied exactly what the new
/// primary had follows it; the others are left for a reseed.
pub async fn promote(db: &Database, to: &str) -> Result<SwitchoverReport> {
    let target = replica(db, to)?;
    let who = format!("replica '{to}'");
    let r = connect(&who, &target.url).await?;
    let applied = stop_following(&r, &who, &subscription_name(db, to), true)
        .await?
        .flatten();
    crash_point("promote-promoted");
    finish_forced(db, &target, &r, applied).await
}

/// After a forced promotion: the new primary is writable and publishes; other replicas
/// follow it when they had applied exactly what it had (`applied`; unknown: none do).
async fn finish_forced(
    db: &Database,
    target: &DbMember,
    r: &tokio_postgres::Client,
    applied: Option<u64>,
) -> Result<SwitchoverReport> {
    let who = format!("new primary '{}'", target.name);
    set_fence(r, &who, false).await?;
    ensure_publication(r, &who, db).await?;
    let mut report = SwitchoverReport {
        from: db.primary.name.clone(),
        to: target.name.clone(),
        sequences_set: sequences_past_data(r, &who, db).await?,
        ..Default::default()
    };
    for m in db.replicas.iter().filter(|m| m.name != target.name) {
        let mwho = format!("replica '{}'", m.name);
        let sub = subscription_name(db, &m.name);
        let c = match connect(&mwho, &m.url).await {
            Ok(c) => c,
            Err(e) => {
                report.left_behind.push((
                    m.name.clone(),
                    format!("unreachable during the failover: {e}"),
                ));
                continue;
            }
        };
        match subscription(&c, &mwho, &sub).await? {
            Some((_, conn)) if conn == target.url => {
                report.repointed.push(m.name.clone());
                continue;
            }
            Some(_) => {
                exec(
                    &c,
                    &mwho,
                    &format!("ALTER SUBSCRIPTION {} DISABLE", quote_ident(&sub)),
                )
                .await?;
            }
            None => {}
        }
        // Its apply worker stops at a transaction boundary; then what it applied is final.
        wait_worker_stopped(&c, &mwho, &sub).await?;
        let mine = applied_lsn(&c, &mwho, &sub).await?;
        match (applied, mine) {
            (Some(a), Some(b)) if a == b => {
                follow(&c, &mwho, db, &m.name, target, r).await?;
                report.repointed.push(m.name.clone());
            }
            _ => report.left_behind.push((
                m.name.clone(),
                format!(
                    "it had applied up to {} of the old primary's changes and the new primary up to {}; following it would leave a gap or a divergence",
                    fmt_lsn(mine),
                    fmt_lsn(applied)
                ),
            )),
        }
    }
    Ok(report)
}

/// Moves every sequence owned by a replicated column past the largest value in it
/// (plus the database's margin): the last sequence push may predate rows the promoted
/// replica received, and the old primary cannot be asked.
async fn sequences_past_data(
    c: &tokio_postgres::Client,
    who: &str,
    db: &Database,
) -> Result<usize> {
    let tables = selected_tables(c, db, who).await?;
    let owned = c
        .query(
            "SELECT s.oid::regclass::text, quote_ident(a.attname), t.oid::regclass::text, \
             n.nspname || '.' || t.relname \
             FROM pg_class s \
             JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass \
               AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
             JOIN pg_class t ON t.oid = d.refobjid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid \
             WHERE s.relkind = 'S'",
            &[],
        )
        .await
        .map_err(|e| DbError::sql(who, e))?;
    let mut moved = 0;
    for row in owned {
        let (seq, col, tbl, name): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if !tables.contains(&name) {
            continue;
        }
        let margin = db.sequence_margin;
        c.query_one(
            &format!(
                "SELECT setval({seql}::regclass, GREATEST(coalesce((SELECT max({col}) FROM {tbl}), 0) + {margin}, \
                 (SELECT last_value FROM {seq})), true)",
                seql = quote_literal(&seq)
            ),
            &[],
        )
        .await
        .map_err(|e| DbError::sql(who, e))?;
        moved += 1;
    }
    Ok(moved)
}

fn fmt_lsn(l: Option<u64>) -> String {
    l.map(|l| format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff))
        .unwrap_or_else(|| "an unknown position".into())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maintenance_database_keeps_the_server_and_options() {
        assert_eq!(
            with_database(
                "postgres://op:pw@h:6000/Shop?sslmode=require&dbname=x",
                "postgres"
            )
            .as_deref(),
            Some("postgres://op:pw@h:6000/postgres?sslmode=require")
        );
        assert_eq!(
            with_database("postgres://h/shop", "template1").as_deref(),
            Some("postgres://h/template1")
        );
    }

    #[test]
    fn lsns_compare_as_numbers() {
        assert_eq!(parse_lsn("0/194BDD8"), Some(0x194BDD8));
        assert!(parse_lsn("1/0") > parse_lsn("0/FFFFFFFF"));
        assert_eq!(parse_lsn("junk"), None);
        assert_eq!(fmt_lsn(parse_lsn("16/B374D848")), "16/B374D848");
        assert_eq!(fmt_lsn(None), "an unknown position");
    }
}
