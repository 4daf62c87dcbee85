//! Role changes of MariaDB and MySQL members for failover groups: the fence (`read_only` and the
//! client sessions ended), the planned switchover (every GTID of the fenced primary
//! executed on the target before it is promoted), the forced promotion (the relay log
//! applied first; refused for a replica with errant transactions, or behind another
//! one), settling an interrupted change, and preparing a reseed.
//!
//! The statements that differ between the two are [`Dialect`]'s; GTID histories are
//! compared as [`Gtids`]. The point of no return is `RESET SLAVE ALL` (MySQL: `RESET
//! REPLICA ALL`) on the target: while it still has a
//! replication source, the old primary is the primary and a change is rolled back;
//! once the source is gone, the target is the primary and the change is finished.

use std::time::{Duration, Instant};

use georep_core::{Database, DbMember};
use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{Conn, Row};

use super::check::Member;
use super::gtid::{Gtids, MariaPos};
use super::setup::change_master;
use super::{conn, text, Dialect};
use crate::crash_point;
use crate::error::{DbError, Result};
use crate::role::{replica, Settled, SwitchoverReport};

/// How far behind (transactions) the target may be when the fence goes up.
const PREFLIGHT_MAX_BEHIND: u64 = 1000;

/// How long a forced promotion waits for the target to apply what it received.
const APPLY_RELAY: Duration = Duration::from_secs(30);

async fn one<T: FromValue + Send + 'static>(c: &mut Conn, who: &str, sql: &str) -> Result<T> {
    c.query_first::<T, _>(sql)
        .await
        .map_err(|e| DbError::mysql(who, e))?
        .ok_or_else(|| DbError::Sql {
            member: who.into(),
            detail: format!("no row from {sql}"),
        })
}

async fn exec(c: &mut Conn, who: &str, sql: &str) -> Result<()> {
    c.query_drop(sql).await.map_err(|e| DbError::mysql(who, e))
}

/// A GTID history read with `sql` (one of [`Dialect::executed`], `applied`, `current`).
async fn pos(d: Dialect, c: &mut Conn, who: &str, sql: &str) -> Result<Gtids> {
    let text: String = one(c, who, sql).await?;
    Gtids::parse(d, &text).map_err(|e| DbError::Sql {
        member: who.into(),
        detail: format!("{sql}: {e}"),
    })
}

/// The member's replication source as `SHOW SLAVE STATUS` shows it (None: it has none,
/// so it is a primary).
async fn source(d: Dialect, c: &mut Conn, who: &str) -> Result<Option<Row>> {
    c.query_first(d.replica_status())
        .await
        .map_err(|e| DbError::mysql(who, e))
}

/// Whether a replica status row names `m`'s server as the source.
fn follows(d: Dialect, row: &Row, m: &DbMember) -> bool {
    let Ok(u) = conn::parse_url(&m.name, &m.url) else {
        return false;
    };
    let [_, _, host, port, _] = d.status_columns();
    text(row, host).is_some_and(|h| h.eq_ignore_ascii_case(u.host()))
        && text(row, port).and_then(|p| p.parse::<u16>().ok()) == Some(u.port())
}

/// Whether both replication threads run.
fn running(d: Dialect, row: &Row) -> bool {
    let [io, sql, ..] = d.status_columns();
    text(row, io).as_deref() == Some("Yes") && text(row, sql).as_deref() == Some("Yes")
}

/// Whether the applier (SQL) thread runs.
fn applying(d: Dialect, row: &Row) -> bool {
    text(row, d.status_columns()[1]).as_deref() == Some("Yes")
}

/// Transactions in a replica's own binary log that it did not receive from a source:
/// a write made on it directly (another server id, or a sequence number past what it
/// applied). Promoting it would publish them; following another would fail on them.
pub fn errant(binlog: &MariaPos, applied: &MariaPos) -> Vec<String> {
    binlog
        .0
        .iter()
        .filter(|(d, (s, n))| match applied.0.get(d) {
            None => true,
            Some((as_, an)) => an < n || (an == n && as_ != s),
        })
        .map(|(d, (s, n))| format!("{d}-{s}-{n}"))
        .collect()
}

/// The primary's GTID set as the probes last read it, per database: MySQL's errant
/// check compares against it when the primary is gone.
static LAST_HEAD: std::sync::Mutex<std::collections::BTreeMap<String, Gtids>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn remember_head(db: &str, head: &Gtids) {
    if let Ok(mut m) = LAST_HEAD.lock() {
        m.insert(db.to_string(), head.clone());
    }
}

fn last_head(db: &str) -> Option<Gtids> {
    LAST_HEAD.lock().ok().and_then(|m| m.get(db).cloned())
}

/// MySQL's errant transactions: what the member executed that none of `refs` (the
/// primary, other members) holds, leaving out those written by `source` (the failed
/// primary: what the member received from it and nobody else did is not errant, it is
/// ahead). A member that was a primary before wrote its history under its own UUID,
/// and the references hold it. With no reference, everything left counts.
pub fn errant_mysql(executed: &Gtids, source: Option<&str>, refs: &[Gtids]) -> Vec<String> {
    let Gtids::My(mine) = executed else {
        return Vec::new();
    };
    let mut left = source.map_or_else(|| mine.clone(), |u| mine.without_server(u));
    for r in refs {
        if let Gtids::My(set) = r {
            left = left.subtract(set);
        }
    }
    if left.0.is_empty() {
        Vec::new()
    } else {
        vec![left.to_string()]
    }
}

/// Errant transactions of a member. MariaDB: [`errant`] as it holds over about half a
/// second: while a replica applies, a transaction can be in its binary log a moment
/// before its slave position moves, so only what stays errant through every look is
/// reported. MySQL: [`errant_mysql`] against `refs` (read after the member, so that
/// they hold all it received), leaving out `source`'s.
async fn errant_of(
    d: Dialect,
    c: &mut Conn,
    who: &str,
    source: Option<&str>,
    refs: &[Gtids],
) -> Result<Vec<String>> {
    if d == Dialect::MySql {
        let executed = pos(d, c, who, d.executed()).await?;
        return Ok(errant_mysql(&executed, source, refs));
    }
    let mut seen: Option<Vec<String>> = None;
    for round in 0..10 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (Gtids::Maria(binlog), Gtids::Maria(applied)) = (
            pos(d, c, who, d.executed()).await?,
            pos(d, c, who, d.applied()).await?,
        ) else {
            return Ok(Vec::new());
        };
        let now = errant(&binlog, &applied);
        let kept: Vec<String> = match seen {
            None => now,
            Some(before) => before.into_iter().filter(|g| now.contains(g)).collect(),
        };
        if kept.is_empty() {
            return Ok(kept);
        }
        seen = Some(kept);
    }
    Ok(seen.unwrap_or_default())
}

/// Sets a member's role default: `read_only` on (MariaDB: no client without READ_ONLY
/// ADMIN can write; MySQL: `super_read_only`, no client at all; replication still
/// applies) or off.
pub async fn set_fence(d: Dialect, c: &mut Conn, who: &str, on: bool) -> Result<()> {
    exec(c, who, d.fence(on)).await
}

/// Whether the member is fenced: `read_only` is on. On MySQL, [`set_fence`] raises
/// `super_read_only` too; setup lowers only that while it copies into a fenced
/// member, and a probe must not raise it under the copy.
pub async fn fenced(c: &mut Conn, who: &str) -> Result<bool> {
    Ok(one::<u64>(c, who, "SELECT @@GLOBAL.read_only").await? != 0)
}

/// Ends every client session but this one (replication threads stay: the target
/// needs the tail of the binary log) and waits, at most 5 s, until they are gone, so
/// no commit is still under way afterwards.
async fn end_client_sessions(c: &mut Conn, who: &str) -> Result<()> {
    const CLIENTS: &str =
        "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() \
        AND USER <> 'system user' AND COMMAND NOT IN \
        ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker')";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ids: Vec<u64> = c.query(CLIENTS).await.map_err(|e| DbError::mysql(who, e))?;
        if ids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DbError::Timeout(format!(
                "{who}: client sessions {ids:?} did not end within 5 s of KILL CONNECTION"
            )));
        }
        for id in ids {
            // Gone meanwhile (1094, unknown thread): fine.
            match c.query_drop(format!("KILL CONNECTION {id}")).await {
                Ok(()) => {}
                Err(mysql_async::Error::Server(s)) if s.code == 1094 => {}
                Err(e) => return Err(DbError::mysql(who, e)),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the member executed `pos` within `t` (`MASTER_GTID_WAIT`,
/// `WAIT_FOR_EXECUTED_GTID_SET`).
async fn gtid_wait(d: Dialect, c: &mut Conn, who: &str, pos: &Gtids, t: Duration) -> Result<bool> {
    // MySQL's timeout is whole seconds.
    let secs = match d {
        Dialect::MariaDb => t.as_secs_f64(),
        Dialect::MySql => t.as_secs_f64().ceil(),
    };
    let r: Option<i64> = c
        .exec_first(d.wait_executed(), (pos.to_string(), secs))
        .await
        .map_err(|e| DbError::mysql(who, e))?;
    Ok(d.waited(r))
}

/// Stops replication, forgets the source and opens the member to client writes. The
/// forgetting is the point of no return of a promotion.
async fn become_primary(d: Dialect, c: &mut Conn, who: &str) -> Result<()> {
    exec(c, who, d.stop_replica()).await?;
    exec(c, who, d.forget_source()).await?;
    set_fence(d, c, who, false).await
}

/// Points `c` (stopped or not) at `to` by GTID and starts it.
async fn follow(d: Dialect, c: &mut Conn, who: &str, to: &DbMember) -> Result<()> {
    let u = conn::parse_url(&to.name, &to.url)?;
    exec(c, who, d.stop_replica()).await?;
    change_master(d, c, who, &u).await?;
    exec(c, who, d.start_replica()).await
}

/// Waits, with nothing held or fenced, until replica `to` replicates from the primary
/// (both threads running, no errant transactions) and is at most 1,000 transactions
/// behind, so the fence that follows holds writes only briefly.
pub async fn preflight(db: &Database, to: &str, timeout: Duration) -> Result<()> {
    let d = Dialect::of_engine(db.engine);
    let target = replica(db, to)?;
    let rwho = format!("replica '{to}'");
    let mut p = conn::connect("primary", &db.primary.url).await?;
    let mut r = conn::connect(&rwho, &target.url).await?;
    let bad = if d == Dialect::MySql {
        // The replica first: the primary read after it holds all it received.
        let mine = pos(d, &mut r, &rwho, d.executed()).await?;
        let head = pos(d, &mut p, "primary", d.executed()).await?;
        remember_head(&db.name, &head);
        errant_mysql(&mine, None, &[head])
    } else {
        errant_of(d, &mut r, &rwho, None, &[]).await?
    };
    if !bad.is_empty() {
        return Err(DbError::Prerequisites(vec![format!(
            "{rwho} has transactions of its own that the primary never had ({}); promoting it would publish them: run georep db reseed on it, or fail over to another replica",
            bad.join(",")
        )]));
    }
    let deadline = Instant::now() + timeout;
    loop {
        let row = source(d, &mut r, &rwho).await?.ok_or_else(|| {
            DbError::InvalidConfig(format!(
                "{rwho} has no replication source: it is not set up as a replica (run georep db setup {})",
                db.name
            ))
        })?;
        let [io, sql, host, port, _] = d.status_columns();
        if !follows(d, &row, &db.primary) {
            return Err(DbError::InvalidConfig(format!(
                "{rwho} replicates from {}:{}, not from the primary: run georep db setup {}",
                text(&row, host).unwrap_or_default(),
                text(&row, port).unwrap_or_default(),
                db.name
            )));
        }
        let head = pos(d, &mut p, "primary", d.executed()).await?;
        let applied = pos(d, &mut r, &rwho, d.applied()).await?;
        let behind = head.distance(&applied);
        let both = running(d, &row);
        if both && behind <= PREFLIGHT_MAX_BEHIND {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DbError::Timeout(format!(
                "{rwho} is {} within {timeout:?}; nothing was fenced and the primary is unchanged",
                if both {
                    format!("{behind} transactions behind and did not catch up")
                } else {
                    format!(
                        "not replicating (IO thread {}, SQL thread {}{})",
                        text(&row, io).unwrap_or_default(),
                        text(&row, sql).unwrap_or_default(),
                        text(&row, "Last_Error")
                            .filter(|e| !e.is_empty())
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    )
                }
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Planned switchover to replica `to`: the primary is fenced (read-only, client
/// sessions ended), the target executes every GTID the primary logged, then becomes
/// the primary; every other replica and the old primary follow it. On failure before
/// the promotion the old primary is unfenced and stays the primary. Call
/// [`preflight`] first, before holding clients.
pub async fn switchover(db: &Database, to: &str, timeout: Duration) -> Result<SwitchoverReport> {
    let d = Dialect::of_engine(db.engine);
    let target = replica(db, to)?;
    let rwho = format!("replica '{to}'");
    let mut p = conn::connect("primary", &db.primary.url).await?;
    let mut r = conn::connect(&rwho, &target.url).await?;

    // 1. Fence: sessions that would block the fence end first, then writes stop, then
    // whatever connected meanwhile ends too.
    let fenced = async {
        end_client_sessions(&mut p, "primary").await?;
        // A session holding a table lock would make the fence wait: the server gives
        // up after 10 s (a client-side timeout would leave the statement running, to
        // land after the unfence).
        exec(&mut p, "primary", "SET SESSION lock_wait_timeout = 10").await?;
        set_fence(d, &mut p, "primary", true).await?;
        end_client_sessions(&mut p, "primary").await?;
        pos(d, &mut p, "primary", d.executed()).await
    }
    .await;
    let fence_pos = match fenced {
        Ok(f) => f,
        Err(e) => {
            let _ = unfence_primary(d, db).await;
            return Err(e);
        }
    };
    crash_point("switchover-fenced");

    // 2. The target executes everything up to the fence. A session that `read_only`
    // does not bind (READ_ONLY ADMIN) may still have written: the position is read
    // again until it holds still, or the switchover is abandoned.
    let started = Instant::now();
    let mut fence_pos = fence_pos;
    let mut rounds = 0;
    let caught_up = loop {
        match gtid_wait(d, &mut r, &rwho, &fence_pos, timeout).await {
            Ok(true) => {}
            Ok(false) => {
                break Err(DbError::Timeout(format!(
                    "{rwho} did not execute the fence position {fence_pos} within {timeout:?}; the switchover was abandoned and the primary unfenced"
                )))
            }
            Err(e) => break Err(e),
        }
        let now = match pos(d, &mut p, "primary", d.executed()).await {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        if now == fence_pos {
            break Ok(());
        }
        rounds += 1;
        if rounds >= 3 {
            break Err(DbError::Prerequisites(vec![format!(
                "the fenced primary kept logging transactions ({fence_pos}, then {now}): {}. The switchover was abandoned and the primary unfenced",
                match d {
                    Dialect::MariaDb => "a session with READ_ONLY ADMIN (or SUPER) writes past read_only; give applications users without it",
                    Dialect::MySql => "something writes past super_read_only (an event, or a plugin); find it in the binary log",
                }
            )]));
        }
        let _ = end_client_sessions(&mut p, "primary").await;
        fence_pos = now;
    };
    if let Err(e) = caught_up {
        let _ = set_fence(d, &mut p, "primary", false).await;
        return Err(e);
    }
    let catch_up_ms = started.elapsed().as_millis() as u64;
    // MySQL: the target must hold nothing the primary does not (errant transactions
    // would reach the old primary once it follows).
    if d == Dialect::MySql {
        let extra = match pos(d, &mut r, &rwho, d.executed()).await {
            Ok(mine) => errant_mysql(&mine, None, std::slice::from_ref(&fence_pos)),
            Err(e) => {
                let _ = set_fence(d, &mut p, "primary", false).await;
                return Err(e);
            }
        };
        if !extra.is_empty() {
            let _ = set_fence(d, &mut p, "primary", false).await;
            return Err(DbError::Prerequisites(vec![format!(
                "{rwho} has transactions the primary never had ({}); the switchover was abandoned and the primary unfenced: run georep db reseed on it",
                extra.join(",")
            )]));
        }
    }

    // 3. Promote: the point of no return.
    become_primary(d, &mut r, &format!("new primary '{to}'")).await?;
    crash_point("switchover-promoted");

    // 4. Everyone else follows it.
    let mut report = finish_planned(db, &target, &mut r, &mut p).await?;
    report.fence_lsn = Some(fence_pos.to_string());
    report.catch_up_ms = catch_up_ms;
    Ok(report)
}

/// MySQL: what the member no longer has in its binary log (`gtid_purged`).
async fn purged_of(d: Dialect, c: &mut Conn, who: &str) -> Result<Option<Gtids>> {
    if d != Dialect::MySql {
        return Ok(None);
    }
    pos(d, c, who, "SELECT @@GLOBAL.gtid_purged")
        .await
        .map(Some)
}

async fn unfence_primary(d: Dialect, db: &Database) -> Result<()> {
    let mut p = conn::connect("primary", &db.primary.url).await?;
    set_fence(d, &mut p, "primary", false).await
}

/// Other replicas of `db` (not the target) that follow the new primary, or why not.
async fn repoint_others(
    db: &Database,
    target: &DbMember,
    (new_pos, purged): (&Gtids, Option<&Gtids>),
    report: &mut SwitchoverReport,
) {
    let d = Dialect::of_engine(db.engine);
    for m in db.replicas.iter().filter(|m| m.name != target.name) {
        let who = format!("replica '{}'", m.name);
        let outcome = async {
            let mut c = conn::connect(&who, &m.url).await?;
            if source(d, &mut c, &who)
                .await?
                .is_some_and(|row| follows(d, &row, target))
            {
                // Re-pointed before an interruption, perhaps not started yet.
                exec(&mut c, &who, d.start_replica()).await?;
                return Ok(None);
            }
            // Stopped at a transaction boundary; then what it applied is final.
            exec(&mut c, &who, d.stop_replica()).await?;
            let bad = errant_of(d, &mut c, &who, None, std::slice::from_ref(new_pos)).await?;
            if !bad.is_empty() {
                return Ok(Some(format!(
                    "it has transactions of its own ({}) that the new primary never had",
                    bad.join(",")
                )));
            }
            let applied = pos(d, &mut c, &who, d.applied()).await?;
            if !new_pos.contains(&applied) {
                return Ok(Some(format!(
                    "it had applied up to {applied} and the new primary only up to {new_pos}; following it would diverge"
                )));
            }
            // MySQL: the new primary no longer has what it purged (a copy's
            // `gtid_purged`, or binary logs removed): a replica missing some of it
            // could not fetch it.
            if let Some(purged) = purged.filter(|p| !applied.contains(p)) {
                return Ok(Some(format!(
                    "the new primary has purged transactions it lacks ({purged}, it has {applied}); run georep db reseed on it"
                )));
            }
            // Behind is fine: the new primary logged what it applied, so the replica
            // fetches the rest from it.
            follow(d, &mut c, &who, target).await?;
            let _ = c.disconnect().await;
            Ok::<_, DbError>(None)
        }
        .await;
        match outcome {
            Ok(None) => report.repointed.push(m.name.clone()),
            Ok(Some(why)) => report.left_behind.push((m.name.clone(), why)),
            Err(e) => report.left_behind.push((
                m.name.clone(),
                format!("could not be re-pointed during the failover: {e}"),
            )),
        }
    }
}

/// After a planned promotion: the new primary is writable, other replicas follow it,
/// and the old primary (still fenced) follows it from exactly its own position. Each
/// step is safe to repeat.
async fn finish_planned(
    db: &Database,
    target: &DbMember,
    r: &mut Conn,
    p: &mut Conn,
) -> Result<SwitchoverReport> {
    let d = Dialect::of_engine(db.engine);
    let rwho = format!("new primary '{}'", target.name);
    set_fence(d, r, &rwho, false).await?;
    let mut report = SwitchoverReport {
        from: db.primary.name.clone(),
        to: target.name.clone(),
        ..Default::default()
    };
    let new_pos = pos(d, r, &rwho, d.current()).await?;
    let purged = purged_of(d, r, &rwho).await?;
    repoint_others(db, target, (&new_pos, purged.as_ref()), &mut report).await;
    // The old primary keeps its fence: it is a replica now.
    set_fence(d, p, "primary", true).await?;
    if source(d, p, "primary")
        .await?
        .is_some_and(|row| follows(d, &row, target))
    {
        exec(p, "primary", d.start_replica()).await?;
        return Ok(report);
    }
    let mine = pos(d, p, "primary", d.executed()).await?;
    if !new_pos.contains(&mine) {
        report.left_behind.push((
            db.primary.name.clone(),
            format!(
                "it logged transactions after the fence ({mine}) that the new primary does not have ({new_pos})"
            ),
        ));
        return Ok(report);
    }
    // It continues from what it logged; an empty slave position would replay the
    // new primary's binary log from the start (MySQL auto-positions from what it
    // executed).
    exec(p, "primary", d.stop_replica()).await?;
    exec(p, "primary", d.forget_source()).await?;
    if d == Dialect::MariaDb {
        p.exec_drop("SET GLOBAL gtid_slave_pos = ?", (mine.to_string(),))
            .await
            .map_err(|e| DbError::mysql("primary", e))?;
    }
    follow(d, p, "primary", target).await?;
    Ok(report)
}

/// Forced promotion of replica `to` while the primary is gone. Refused, with nothing
/// changed, when the target has transactions of its own, when its SQL thread is stopped
/// with received transactions not applied, when another reachable replica received
/// more, or when it cannot apply its relay log within 30 s: promoting then would lose
/// or invent data. Other replicas follow the new primary when they are not ahead of it.
pub async fn promote(db: &Database, to: &str) -> Result<SwitchoverReport> {
    let d = Dialect::of_engine(db.engine);
    let target = replica(db, to)?;
    let who = format!("replica '{to}'");
    let mut r = conn::connect(&who, &target.url).await?;
    promotable(db, to, &mut r).await?;
    // Nothing more can arrive; what arrived (read once fetching stopped) is applied
    // before the promotion.
    exec(&mut r, &who, d.stop_fetching()).await?;
    let (received, backlog, relay) = match promotable(db, to, &mut r).await {
        Ok(x) => x,
        Err(e) => {
            let _ = exec(&mut r, &who, d.start_replica()).await;
            return Err(e);
        }
    };
    if !gtid_wait(d, &mut r, &who, &received, APPLY_RELAY).await? {
        let _ = exec(&mut r, &who, d.start_replica()).await;
        return Err(DbError::Timeout(format!(
            "{who} did not apply its relay log ({backlog} transaction(s), {relay} bytes, up to {received}) within {APPLY_RELAY:?}; it was not promoted: wait for it, or promote another replica"
        )));
    }
    become_primary(d, &mut r, &format!("new primary '{to}'")).await?;
    crash_point("promote-promoted");
    finish_forced(db, &target, &mut r).await
}

/// Refuses, changing nothing, a forced promotion of replica `to` that would lose or
/// invent data (see [`promote`]).
pub async fn check_promotable(db: &Database, to: &str) -> Result<()> {
    let target = replica(db, to)?;
    let who = format!("replica '{to}'");
    let mut r = conn::connect(&who, &target.url).await?;
    promotable(db, to, &mut r).await.map(|_| ())
}

/// What the target received, how many of those it has not applied, and its relay
/// log's size; or why it must not be promoted.
async fn promotable(db: &Database, to: &str, r: &mut Conn) -> Result<(Gtids, u64, String)> {
    let d = Dialect::of_engine(db.engine);
    let who = format!("replica '{to}'");
    let Some(row) = source(d, r, &who).await? else {
        return Err(DbError::InvalidConfig(format!(
            "{who} has no replication source: it is not set up as a replica (run georep db setup {})",
            db.name
        )));
    };
    // What every other reachable replica holds (and, for MySQL's errant check, the
    // primary if it still answers).
    let mut others: Vec<(String, Gtids)> = Vec::new();
    for m in db.replicas.iter().filter(|m| m.name != to) {
        let mwho = format!("replica '{}'", m.name);
        let Ok(Ok(mut c)) =
            tokio::time::timeout(Duration::from_secs(5), conn::connect(&mwho, &m.url)).await
        else {
            continue;
        };
        if let (Ok(Some(row)), Ok(applied)) = (
            source(d, &mut c, &mwho).await,
            pos(d, &mut c, &mwho, d.applied()).await,
        ) {
            others.push((m.name.clone(), received_of(d, &row, &applied, &mwho)?));
        }
    }
    // MySQL: the errant check's references are the other members, the primary's set
    // as the probes last saw it and the primary itself if it answers (read after the
    // target's set); what the target received from the primary is left out by its UUID.
    let source_uuid = text(&row, "Source_UUID").filter(|u| !u.is_empty());
    if d == Dialect::MySql {
        let mut refs: Vec<Gtids> = others.iter().map(|(_, g)| g.clone()).collect();
        refs.extend(last_head(&db.name));
        let mine = pos(d, r, &who, d.executed()).await?;
        if let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_secs(2),
            conn::connect("primary", &db.primary.url),
        )
        .await
        {
            if let Ok(head) = pos(d, &mut c, "primary", d.executed()).await {
                refs.push(head);
            }
        }
        let bad = errant_mysql(&mine, source_uuid.as_deref(), &refs);
        if !bad.is_empty() {
            return Err(DbError::Prerequisites(vec![format!(
                "{who} has transactions that neither its source ({}) nor any reachable member has ({}){}; promoting it would publish them: promote another replica, or remove them and run georep db reseed",
                source_uuid.as_deref().unwrap_or("unknown"),
                bad.join(","),
                if refs.is_empty() {
                    ". No other member could be reached and the daemon has not read the primary's GTID set since it started, so they cannot be told apart from a former primary's history: promote by hand once you have checked them"
                } else {
                    ""
                }
            )]));
        }
    } else {
        let bad = errant_of(d, r, &who, None, &[]).await?;
        if !bad.is_empty() {
            return Err(DbError::Prerequisites(vec![format!(
                "{who} has transactions of its own that the primary never had ({}); promoting it would publish them: promote another replica, or remove them and run georep db reseed",
                bad.join(",")
            )]));
        }
    }
    let applied = pos(d, r, &who, d.applied()).await?;
    let received = received_of(d, &row, &applied, &who)?;
    let backlog = received.distance(&applied);
    let relay = text(&row, "Relay_Log_Space").unwrap_or_default();
    if backlog > 0 && !applying(d, &row) {
        return Err(DbError::Prerequisites(vec![format!(
            "{who} has {backlog} received transaction(s) not applied (relay log {relay} bytes) and its SQL thread is stopped{}: start it ({}) and let it apply them, or promote another replica",
            text(&row, "Last_SQL_Error")
                .filter(|e| !e.is_empty())
                .map(|e| format!(" ({e})"))
                .unwrap_or_default(),
            match d {
                Dialect::MariaDb => "START SLAVE SQL_THREAD",
                Dialect::MySql => "START REPLICA SQL_THREAD",
            }
        )]));
    }
    for (name, theirs) in &others {
        // MySQL: only what came from the failed primary counts (another member's own
        // errant transactions do not make it "ahead").
        let only_source;
        let theirs = match (&source_uuid, theirs) {
            (Some(u), Gtids::My(set)) => {
                only_source = Gtids::My(set.of_server(u));
                &only_source
            }
            _ => theirs,
        };
        let ahead = theirs.distance(&received);
        if ahead > 0 {
            return Err(DbError::Prerequisites(vec![format!(
                "replica '{name}' received {ahead} transaction(s) more than {who} ({theirs} against {received}); promoting {who} would lose them: promote '{name}' instead"
            )]));
        }
    }
    Ok((received, backlog, relay))
}

/// Everything a replica holds from its sources: what it received (MariaDB:
/// `Gtid_IO_Pos`, empty after a restart; MySQL: `Retrieved_Gtid_Set`) joined with what
/// it applied. An unreadable position refuses the promotion rather than counting as
/// nothing.
fn received_of(d: Dialect, row: &Row, applied: &Gtids, who: &str) -> Result<Gtids> {
    let col = d.status_columns()[4];
    let io = Gtids::parse(d, &text(row, col).unwrap_or_default()).map_err(|e| DbError::Sql {
        member: who.into(),
        detail: format!("its {col}: {e}"),
    })?;
    Ok(applied.union(&io))
}

/// After a forced promotion: the new primary is writable; other replicas follow it
/// when they are not ahead of it.
async fn finish_forced(db: &Database, target: &DbMember, r: &mut Conn) -> Result<SwitchoverReport> {
    let d = Dialect::of_engine(db.engine);
    let who = format!("new primary '{}'", target.name);
    set_fence(d, r, &who, false).await?;
    let new_pos = pos(d, r, &who, d.current()).await?;
    let mut report = SwitchoverReport {
        from: db.primary.name.clone(),
        to: target.name.clone(),
        ..Default::default()
    };
    let purged = purged_of(d, r, &who).await?;
    repoint_others(db, target, (&new_pos, purged.as_ref()), &mut report).await;
    Ok(report)
}

/// Settles a role change from `db`'s primary to `to` that was interrupted: rolled
/// back when `to` still has its replication source, finished when it has none. Fails,
/// changing nothing, when the members it must ask cannot be reached.
pub async fn settle(db: &Database, to: &str, planned: bool) -> Result<Settled> {
    let d = Dialect::of_engine(db.engine);
    let target = replica(db, to)?;
    let who = format!("replica '{to}'");
    let mut r = conn::connect(&who, &target.url).await?;
    if source(d, &mut r, &who).await?.is_some() {
        // Not promoted: it replicates again, and the old primary takes writes again.
        exec(&mut r, &who, d.start_replica()).await?;
        if planned {
            unfence_primary(d, db).await?;
        }
        return Ok(Settled::RolledBack);
    }
    if planned {
        match conn::connect("primary", &db.primary.url).await {
            Ok(mut p) => {
                // No source may also mean an operator reset it: finish only when the
                // target holds everything the old primary logged (it reached the fence).
                let mine = pos(d, &mut p, "primary", d.executed()).await?;
                let theirs = pos(d, &mut r, &who, d.current()).await?;
                if !theirs.contains(&mine) {
                    return Err(DbError::Prerequisites(vec![format!(
                        "{who} has no replication source but lacks what the old primary logged ({theirs} against {mine}): it was not promoted by this failover; point it at the primary again (georep db setup) or promote it by hand"
                    )]));
                }
                return Ok(Settled::Finished(
                    finish_planned(db, &target, &mut r, &mut p).await?,
                ));
            }
            Err(e) => {
                let mut rep = finish_forced(db, &target, &mut r).await?;
                rep.left_behind.push((
                    db.primary.name.clone(),
                    format!("unreachable while the failover was finished: {e}"),
                ));
                return Ok(Settled::Finished(rep));
            }
        }
    }
    Ok(Settled::Finished(finish_forced(db, &target, &mut r).await?))
}

/// Rebuilds `member` (a fenced former primary) as a replica of `db`'s primary: it is
/// made read-only, its replication and binary log (which may hold transactions nobody
/// else has) are reset, and setup copies every database again.
pub async fn reseed(db: &Database, member: &DbMember) -> Result<super::setup::SetupReport> {
    let d = Dialect::of_engine(db.engine);
    let who = format!("member '{}'", member.name);
    let mut c = conn::connect(&who, &member.url).await?;
    let (_, version) = Dialect::of_server(&mut c, &who).await?;
    set_fence(d, &mut c, &who, true).await?;
    exec(&mut c, &who, d.stop_replica()).await?;
    exec(&mut c, &who, d.forget_source()).await?;
    // Its binary log may hold the only copy of writes a forced failover lost: say what
    // is discarded, so they can be looked for in a backup.
    let mut refs = Vec::new();
    if let Ok(mut p) = conn::connect("primary", &db.primary.url).await {
        refs.extend(pos(d, &mut p, "primary", d.executed()).await.ok());
    }
    let own = errant_of(d, &mut c, &who, None, &refs).await?;
    if !own.is_empty() {
        let logged = pos(d, &mut c, &who, d.executed()).await?;
        tracing::warn!(member = %member.name, discarded = %own.join(","), binlog_pos = %logged, "reseed discards transactions no other member has (the binary log is reset)");
    }
    if d == Dialect::MySql {
        // super_read_only would refuse the reset and setup's copy; read_only stays.
        exec(&mut c, &who, "SET GLOBAL super_read_only = 0").await?;
    }
    exec(&mut c, &who, d.reset_log(&version)).await?;
    let _ = c.disconnect().await;
    let m = |x: &DbMember, primary| Member {
        name: x.name.clone(),
        url: x.url.clone(),
        primary,
    };
    super::setup::setup(
        &m(&db.primary, true),
        &[m(member, false)],
        &super::setup::SetupOptions {
            wipe: true,
            engine: d,
            ..Default::default()
        },
    )
    .await
}

/// Lag of each replica for the probe loop of a failover group, read against the
/// primary session `p`: a heartbeat is written first when `beat` (the primary is not
/// fenced and no role change runs), then each replica's copy of it is read. Seconds
/// are primary-clock time since the beat the replica last applied (`None`: its
/// replication threads are not both running); transactions are its GTID distance.
pub async fn replica_lag(
    p: &mut Conn,
    db: &Database,
    beat: bool,
) -> Result<Vec<(String, Option<u64>, Option<f64>)>> {
    let d = Dialect::of_engine(db.engine);
    if beat {
        super::status::beat(p, "primary").await?;
    }
    let head = pos(d, p, "primary", d.executed()).await?;
    remember_head(&db.name, &head);
    let mut out = Vec::new();
    for r in &db.replicas {
        let who = format!("replica '{}'", r.name);
        let got = tokio::time::timeout(Duration::from_secs(2), async {
            let mut c = conn::connect(&who, &r.url).await?;
            let up = source(d, &mut c, &who)
                .await?
                .is_some_and(|row| running(d, &row));
            let applied = pos(d, &mut c, &who, d.applied()).await?;
            let age = super::status::beat_age(p, "primary", &mut c).await?;
            let _ = c.disconnect().await;
            Ok::<_, DbError>((Some(head.distance(&applied)), age.filter(|_| up)))
        })
        .await;
        let (transactions, seconds) = got.ok().and_then(|g| g.ok()).unwrap_or((None, None));
        out.push((r.name.clone(), transactions, seconds));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errant_transactions_are_those_not_received_from_a_source() {
        let p = |s: &str| MariaPos::parse(s).expect("gtid");
        // Log and applied agree: nothing of its own.
        assert!(errant(&p("0-1-112"), &p("0-1-112")).is_empty());
        // A fresh replica logged nothing yet.
        assert!(errant(&p(""), &p("0-1-5")).is_empty());
        // A write made on the replica itself.
        assert_eq!(errant(&p("0-3-113"), &p("0-2-112")), vec!["0-3-113"]);
        // Same sequence number, another server: a divergence.
        assert_eq!(errant(&p("0-3-112"), &p("0-2-112")), vec!["0-3-112"]);
        // A domain it never received.
        assert_eq!(errant(&p("0-1-5,1-3-2"), &p("0-1-5")), vec!["1-3-2"]);
        // Applied past its own log (the position was set after a copy): fine.
        assert!(errant(&p("0-1-3"), &p("0-1-9")).is_empty());
    }

    #[test]
    fn mysql_errant_transactions_are_those_no_reference_holds() {
        let (a, b, c) = (
            "3e11fa47-71ca-11e1-9e33-c80aa9429562",
            "4e11fa47-71ca-11e1-9e33-c80aa9429562",
            "5e11fa47-71ca-11e1-9e33-c80aa9429562",
        );
        let g = |t: &str| Gtids::parse(Dialect::MySql, t).expect("set");
        // B received A's 1-100 and wrote 1-5 as a primary before; the primary has those.
        let mine = g(&format!("{a}:1-100,{b}:1-5"));
        assert!(errant_mysql(&mine, None, &[g(&format!("{a}:1-120,{b}:1-5"))]).is_empty());
        // Primary A gone: received more of A's than another replica is not errant.
        assert!(errant_mysql(&mine, Some(a), &[g(&format!("{a}:1-90,{b}:1-5"))]).is_empty());
        // A write made on B directly while it was a replica.
        let wrote = g(&format!("{a}:1-100,{b}:1-6"));
        assert_eq!(
            errant_mysql(&wrote, Some(a), &[g(&format!("{a}:1-100,{b}:1-5"))]),
            vec![format!("{b}:6")]
        );
        // Under any other UUID too (a clone's old UUID, a hand-made transaction).
        let foreign = g(&format!("{a}:1-100,{c}:1"));
        assert_eq!(
            errant_mysql(&foreign, None, &[g(&format!("{a}:1-100"))]),
            vec![format!("{c}:1")]
        );
        // Known to any one of the references is enough.
        assert!(errant_mysql(
            &wrote,
            Some(a),
            &[g(&format!("{a}:1-100")), g(&format!("{b}:1-6"))]
        )
        .is_empty());
        // Nobody to compare against: everything but the source's counts.
        assert_eq!(errant_mysql(&mine, Some(a), &[]), vec![format!("{b}:1-5")]);
        assert!(errant_mysql(&g(&format!("{a}:1-100")), Some(a), &[]).is_empty());
    }
}
