//! `db status` and `db teardown` for MariaDB and MySQL replicas: the replication threads, the last
//! error named, how many transactions the replica has not applied (GTID distance, exact
//! under `gtid_strict_mode`) and whether some of them are received but not yet applied
//! (relay log); teardown stops replication and forgets the source, nothing else.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use super::check::Member;
use super::conn;
use super::gtid::Gtids;
use super::{text, Dialect};
use crate::error::{DbError, Result};

/// One replica as read now.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaState {
    pub name: String,
    /// `Yes`, `No` or `Connecting`, as the server says.
    pub io_running: String,
    pub sql_running: String,
    /// The last IO or SQL error, with its code.
    pub last_error: Option<String>,
    /// Transactions the primary has that the replica has not applied.
    pub gtid_distance: u64,
    /// Received but not applied yet (relay log).
    pub relay_behind: bool,
    pub relay_log_bytes: u64,
    pub applied: String,
    /// Seconds a heartbeat written on the primary now took to be applied on the
    /// replica; `None` when it did not arrive within the RPO (or replication is
    /// stopped). Measured, unlike `Seconds_Behind_Master`, which reads 0 while the IO
    /// thread is behind.
    pub lag_seconds: Option<f64>,
    pub rpo_breached: bool,
}

/// georep's heartbeat table, in its own database (replicated like any other): one row
/// per writer (1: `db status`, 2: the daemon's probes).
pub(crate) const HEARTBEAT_DDL: &str = "CREATE DATABASE IF NOT EXISTS georep; CREATE TABLE IF NOT EXISTS georep.heartbeat (id TINYINT PRIMARY KEY, ts DATETIME(6) NOT NULL, beat BIGINT UNSIGNED NOT NULL)";

/// Writes a heartbeat on the primary and waits, at most `wait`, for the replica to
/// apply it; the time it took, or `None`.
async fn heartbeat_lag(
    pc: &mut Conn,
    primary: &str,
    rc: &mut Conn,
    wait: Duration,
) -> Result<Option<f64>> {
    let beat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    if !write_beat(pc, primary, 1, Some(beat)).await? {
        // A fenced primary (after a failover, the topology's primary may be one)
        // takes no write from georep: it would be an errant transaction there.
        return Ok(None);
    }
    let started = Instant::now();
    loop {
        // Before the table itself has replicated, the read fails: not arrived yet.
        let seen: Option<u64> = rc
            .query_first("SELECT beat FROM georep.heartbeat WHERE id = 1")
            .await
            .unwrap_or(None);
        if seen == Some(beat) {
            return Ok(Some(started.elapsed().as_secs_f64()));
        }
        if started.elapsed() >= wait {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes the daemon's heartbeat (row 2) on an unfenced primary: a fenced one takes
/// no write from georep either, so a switchover's fence position stays final.
pub(crate) async fn beat(pc: &mut Conn, primary: &str) -> Result<()> {
    write_beat(pc, primary, 2, None).await.map(|_| ())
}

/// Writes heartbeat row `id` (its `beat` value, or the primary's clock in µs) in one
/// statement that writes nothing while `read_only` is on: a check and a write apart
/// would let a fence fall between them. False: the primary is read-only.
async fn write_beat(pc: &mut Conn, primary: &str, id: u8, beat: Option<u64>) -> Result<bool> {
    let value = beat.map_or_else(
        || "FLOOR(UNIX_TIMESTAMP(NOW(6)) * 1000000)".to_string(),
        |b| b.to_string(),
    );
    let write = format!(
        "REPLACE INTO georep.heartbeat (id, ts, beat) SELECT {id}, UTC_TIMESTAMP(6), {value} FROM DUAL WHERE @@GLOBAL.read_only = 0"
    );
    let first = pc.query_iter(write.as_str()).await;
    let done = match first {
        Ok(r) => r.affected_rows(),
        // The table or database does not exist yet (1146, 1049): created once.
        Err(mysql_async::Error::Server(e)) if e.code == 1146 || e.code == 1049 => {
            let fenced: Option<u64> = pc
                .query_first("SELECT @@GLOBAL.read_only")
                .await
                .map_err(|e| DbError::mysql(primary, e))?;
            if fenced != Some(0) {
                return Ok(false);
            }
            pc.query_drop(HEARTBEAT_DDL)
                .await
                .map_err(|e| DbError::mysql(primary, e))?;
            pc.query_iter(write.as_str())
                .await
                .map_err(|e| DbError::mysql(primary, e))?
                .affected_rows()
        }
        Err(e) => return Err(DbError::mysql(primary, e)),
    };
    Ok(done > 0)
}

/// Seconds since the daemon's last heartbeat that replica `rc` applied, by the
/// primary's clock (`None`: none applied yet).
pub(crate) async fn beat_age(pc: &mut Conn, primary: &str, rc: &mut Conn) -> Result<Option<f64>> {
    let seen: Option<u64> = rc
        .query_first("SELECT beat FROM georep.heartbeat WHERE id = 2")
        .await
        .unwrap_or(None);
    let Some(seen) = seen else {
        return Ok(None);
    };
    let now: Option<u64> = pc
        .query_first("SELECT FLOOR(UNIX_TIMESTAMP(NOW(6)) * 1000000)")
        .await
        .map_err(|e| DbError::mysql(primary, e))?;
    Ok(now.map(|n| n.saturating_sub(seen) as f64 / 1e6))
}

/// How `status` measures lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagBy {
    /// Write a heartbeat and wait, at most the RPO, for it to arrive (`db status`).
    Waiting,
    /// Read the age of the last heartbeat applied; the daemon writes one at every poll
    /// and probe, so nothing waits.
    Beat,
}

/// Reads every replica's state against the primary's position, and measures its lag
/// with a heartbeat (`LagBy`).
pub async fn status(
    primary: &Member,
    replicas: &[Member],
    rpo: Duration,
    by: LagBy,
) -> Result<Vec<ReplicaState>> {
    let mut pc = conn::connect(&primary.name, &primary.url).await?;
    let (d, _) = Dialect::of_server(&mut pc, &primary.name).await?;
    if by == LagBy::Beat {
        beat(&mut pc, &primary.name).await?;
    }
    let head: String = pc
        .query_first(d.executed())
        .await
        .map_err(|e| DbError::mysql(&primary.name, e))?
        .unwrap_or_default();
    let head = Gtids::parse(d, &head).map_err(|e| DbError::Sql {
        member: primary.name.clone(),
        detail: format!("its GTID position: {e}"),
    })?;
    let mut out = Vec::new();
    for r in replicas {
        let mut c = conn::connect(&r.name, &r.url).await?;
        let err = |e| DbError::mysql(&r.name, e);
        let row: Option<Row> = c.query_first(d.replica_status()).await.map_err(err)?;
        let applied: String = c
            .query_first(d.applied())
            .await
            .map_err(err)?
            .unwrap_or_default();
        let [io, sql, _, _, got] = d.status_columns();
        let running = row.as_ref().is_some_and(|r| {
            text(r, io).as_deref() == Some("Yes") && text(r, sql).as_deref() == Some("Yes")
        });
        let lag_seconds = match (running, by) {
            (false, _) => None,
            (true, LagBy::Waiting) => heartbeat_lag(&mut pc, &primary.name, &mut c, rpo).await?,
            (true, LagBy::Beat) => beat_age(&mut pc, &primary.name, &mut c).await?,
        };
        let _ = c.disconnect().await;
        let applied_pos = Gtids::parse(d, &applied).unwrap_or_else(|_| Gtids::empty(d));
        let Some(row) = row else {
            out.push(ReplicaState {
                name: r.name.clone(),
                io_running: "No".into(),
                sql_running: "No".into(),
                last_error: Some("not replicating: run georep db setup".into()),
                gtid_distance: head.distance(&applied_pos),
                relay_behind: false,
                relay_log_bytes: 0,
                applied,
                lag_seconds: None,
                rpo_breached: true,
            });
            continue;
        };
        let received = Gtids::parse(d, &text(&row, got).unwrap_or_default())
            .unwrap_or_else(|_| Gtids::empty(d));
        let error = |no: &str, msg: &str| {
            let code = text(&row, no).unwrap_or_default();
            text(&row, msg)
                .filter(|m| !m.is_empty())
                .map(|m| format!("{m} (error {code})"))
        };
        let last_error = error("Last_SQL_Errno", "Last_SQL_Error")
            .or_else(|| error("Last_IO_Errno", "Last_IO_Error"));
        out.push(ReplicaState {
            name: r.name.clone(),
            io_running: text(&row, io).unwrap_or_default(),
            sql_running: text(&row, sql).unwrap_or_default(),
            last_error,
            gtid_distance: head.distance(&applied_pos),
            relay_behind: received.distance(&applied_pos) > 0,
            relay_log_bytes: text(&row, "Relay_Log_Space")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            applied,
            rpo_breached: lag_seconds.is_none_or(|l| l > rpo.as_secs_f64()),
            lag_seconds,
        });
    }
    let _ = pc.disconnect().await;
    Ok(out)
}

/// Stops replication on every replica and forgets its source; data and users stay.
pub async fn teardown(replicas: &[Member]) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for r in replicas {
        let mut c = conn::connect(&r.name, &r.url).await?;
        let (d, _) = Dialect::of_server(&mut c, &r.name).await?;
        c.query_drop(format!("{}; {}", d.stop_replica(), d.forget_source()))
            .await
            .map_err(|e| DbError::mysql(&r.name, e))?;
        let _ = c.disconnect().await;
        done.push(r.name.clone());
    }
    Ok(done)
}
