//! `db setup` for MariaDB: check everything, copy every user database from one
//! consistent snapshot with its GTID position, then start native GTID replication
//! (`MASTER_USE_GTID=slave_pos`) from that position, so writes made on the primary
//! during the copy arrive afterwards. A replica already replicating from this primary is
//! only started again: re-running is safe.
//!
//! The copy is written with `sql_log_bin=0`: logged, it would carry the replica's own
//! server id (errant GTIDs), and the position could not be set.

use std::time::Instant;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, TxOpts, Value};

use super::check::{check, Member};
use super::gtid::MariaPos;
use super::{conn, quote_ident, text, Dialect};
use crate::error::{DbError, Result};

/// What setup did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupReport {
    /// Per replica: `copied` or `restarted` (already replicating from this primary).
    pub replicas: Vec<(String, &'static str)>,
    pub databases: Vec<String>,
    pub tables: u64,
    pub rows: u64,
    /// The snapshot's GTID position (the replicas start after it).
    pub gtid: String,
    /// What the copy does not carry (views, routines, triggers, events, users): create
    /// them on the replica yourself.
    pub warnings: Vec<String>,
    pub duration_ms: u64,
}

/// Rows per INSERT while copying (fewer for wide tables: a statement takes at most
/// 65,535 placeholders).
const BATCH_ROWS: usize = 500;

/// Sets up every replica of `primary` (MariaDB). A replica that already holds user
/// databases is refused unless `wipe` (they are dropped and copied again).
pub async fn setup(primary: &Member, replicas: &[Member], wipe: bool) -> Result<SetupReport> {
    let started = Instant::now();
    let mut all = vec![primary.clone()];
    all.extend(replicas.iter().cloned());
    check(Dialect::MariaDb, &all).await?;
    let pu = conn::parse_url(&primary.name, &primary.url)?;
    let mut report = SetupReport {
        replicas: Vec::new(),
        databases: Vec::new(),
        tables: 0,
        rows: 0,
        gtid: String::new(),
        warnings: Vec::new(),
        duration_ms: 0,
    };
    for r in replicas {
        let mut rc = conn::connect(&r.name, &r.url).await?;
        if replicating_from(&mut rc, &r.name, pu.host(), pu.port()).await? {
            rc.query_drop("START SLAVE")
                .await
                .map_err(|e| DbError::mysql(&r.name, e))?;
            report.replicas.push((r.name.clone(), "restarted"));
            continue;
        }
        if pu.host_is_loopback() && !conn::parse_url(&r.name, &r.url)?.host_is_loopback() {
            return Err(DbError::InvalidConfig(format!(
                "{}: the primary's URL names a loopback address ({}), which the replica would take as itself; give the primary's address as the replica reaches it",
                r.name,
                pu.host()
            )));
        }
        let copied = copy(primary, r, &mut rc, wipe).await?;
        report.warnings = copied.warnings;
        report.databases = copied.databases;
        report.tables = copied.tables;
        report.rows += copied.rows;
        report.gtid = copied.gtid.to_string();
        start_replication(&mut rc, &r.name, &pu, &copied.gtid).await?;
        let _ = rc.disconnect().await;
        report.replicas.push((r.name.clone(), "copied"));
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Whether the replica already replicates from `host:port` by GTID.
async fn replicating_from(c: &mut Conn, member: &str, host: &str, port: u16) -> Result<bool> {
    let row: Option<Row> = c
        .query_first("SHOW SLAVE STATUS")
        .await
        .map_err(|e| DbError::mysql(member, e))?;
    Ok(row.is_some_and(|r| {
        text(&r, "Master_Host").as_deref() == Some(host)
            && text(&r, "Master_Port").and_then(|p| p.parse::<u16>().ok()) == Some(port)
            && text(&r, "Using_Gtid").is_some_and(|g| g.eq_ignore_ascii_case("Slave_Pos"))
    }))
}

struct Copied {
    warnings: Vec<String>,
    databases: Vec<String>,
    tables: u64,
    rows: u64,
    gtid: MariaPos,
}

/// Copies every user database from one consistent snapshot of the primary.
async fn copy(primary: &Member, r: &Member, rc: &mut Conn, wipe: bool) -> Result<Copied> {
    let p = &primary.name;
    let mut pc = conn::connect(p, &primary.url).await?;
    let perr = |e| DbError::mysql(p, e);
    let rerr = |e| DbError::mysql(&r.name, e);
    // On the very sessions that copy and drop: two different servers, and the replica
    // stopped (nothing applies while the copy writes).
    let ids: (Option<u64>, Option<u64>) = (
        pc.query_first("SELECT @@server_id").await.map_err(perr)?,
        rc.query_first("SELECT @@server_id").await.map_err(rerr)?,
    );
    if ids.0 == ids.1 {
        return Err(DbError::InvalidConfig(format!(
            "{}: its URL reaches the primary's server (server_id {}); a replica must be another server",
            r.name,
            ids.0.unwrap_or_default()
        )));
    }
    rc.query_drop("STOP SLAVE").await.map_err(rerr)?;
    // The replica must not have transactions of its own that the primary never had.
    let own: String = rc
        .query_first("SELECT @@gtid_binlog_pos")
        .await
        .map_err(rerr)?
        .unwrap_or_default();
    let mut opts = TxOpts::default();
    opts.with_consistent_snapshot(true)
        .with_readonly(Some(true));
    let mut tx = pc.start_transaction(opts).await.map_err(perr)?;
    let status: Vec<Row> = tx
        .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
        .await
        .map_err(perr)?;
    let var = |name: &str| {
        status
            .iter()
            .find(|r| text(r, "Variable_name").is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .and_then(|r| text(r, "Value"))
            .unwrap_or_default()
    };
    let (file, pos) = (var("Binlog_snapshot_file"), var("Binlog_snapshot_position"));
    let gtid: String = tx
        .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file.clone(), pos.clone()))
        .await
        .map_err(perr)?
        .unwrap_or_default();
    let gtid = MariaPos::parse(&gtid).map_err(|e| DbError::Sql {
        member: p.clone(),
        detail: format!("the snapshot's GTID position: {e}"),
    })?;
    let own_pos = MariaPos::parse(&own).unwrap_or_default();
    if !gtid.contains(&own_pos) {
        return Err(DbError::Prerequisites(vec![format!(
            "{}: its binary log holds transactions the primary never had ({own}); if the replica holds nothing you need, run RESET MASTER on it, then setup again",
            r.name
        )]));
    }
    let system = super::system_schemas_sql();
    let databases: Vec<String> = tx
        .query(format!(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN ({system}) ORDER BY SCHEMA_NAME"
        ))
        .await
        .map_err(perr)?;
    let system_list = system.clone();
    let held: Vec<String> = rc
        .query(format!(
            "SELECT DISTINCT TABLE_SCHEMA FROM information_schema.TABLES WHERE TABLE_SCHEMA NOT IN ({system_list}) ORDER BY TABLE_SCHEMA"
        ))
        .await
        .map_err(rerr)?;
    if !held.is_empty() && !wipe {
        return Err(DbError::Prerequisites(vec![format!(
            "{}: the replica already holds data in {}; setup copies the whole server and would replace it: point the replica at an empty server, or pass --wipe to drop those databases and copy again",
            r.name,
            held.join(", ")
        )]));
    }
    let warnings = not_copied(&mut tx, p, &system).await?;
    rc.query_drop(
        "SET SESSION sql_log_bin = 0; SET SESSION foreign_key_checks = 0; SET SESSION unique_checks = 0; SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO'",
    )
    .await
    .map_err(rerr)?;
    let (mut tables, mut rows) = (0u64, 0u64);
    for db in &databases {
        let qdb = quote_ident(db);
        let create: Option<Row> = tx
            .query_first(format!("SHOW CREATE DATABASE {qdb}"))
            .await
            .map_err(perr)?;
        let create = create
            .and_then(|r| r.get_opt::<String, _>(1).and_then(std::result::Result::ok))
            .unwrap_or_else(|| format!("CREATE DATABASE {qdb}"));
        rc.query_drop(format!("DROP DATABASE IF EXISTS {qdb}"))
            .await
            .map_err(rerr)?;
        rc.query_drop(create).await.map_err(rerr)?;
        let names: Vec<String> = tx
            .exec(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                (db.clone(),),
            )
            .await
            .map_err(perr)?;
        for t in &names {
            let full = format!("{qdb}.{}", quote_ident(t));
            // As mysqldump does: the table's metadata lock is released after its copy
            // (rolling back to the savepoint), so an ALTER on the primary waits for one
            // table at most, not for the whole copy; the snapshot stays.
            tx.query_drop("SAVEPOINT georep_table")
                .await
                .map_err(perr)?;
            let ddl: Option<Row> = tx
                .query_first(format!("SHOW CREATE TABLE {full}"))
                .await
                .map_err(perr)?;
            let ddl = ddl
                .and_then(|r| r.get_opt::<String, _>(1).and_then(std::result::Result::ok))
                .ok_or_else(|| DbError::Sql {
                    member: p.clone(),
                    detail: format!("no definition for {full}"),
                })?;
            rc.query_drop(format!("USE {qdb}")).await.map_err(rerr)?;
            rc.query_drop(ddl).await.map_err(rerr)?;
            let columns: Vec<String> = tx
                .exec(
                    "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND EXTRA NOT LIKE '%GENERATED%' ORDER BY ORDINAL_POSITION",
                    (db.clone(), t.clone()),
                )
                .await
                .map_err(perr)?;
            let cols = columns
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ");
            rows += copy_table(&mut tx, rc, (p, &r.name), (&full, &cols)).await?;
            tx.query_drop("ROLLBACK TO SAVEPOINT georep_table")
                .await
                .map_err(perr)?;
            tables += 1;
        }
    }
    tx.commit().await.map_err(perr)?;
    let _ = pc.disconnect().await;
    Ok(Copied {
        warnings,
        databases,
        tables,
        rows,
        gtid,
    })
}

/// Streams one table's rows from the snapshot into multi-row INSERTs on the replica,
/// a batch at a time (memory stays at one batch whatever the table's size).
async fn copy_table(
    tx: &mut mysql_async::Transaction<'_>,
    rc: &mut Conn,
    (p, r): (&str, &str),
    (full, cols): (&str, &str),
) -> Result<u64> {
    // Columns named: `*` leaves out INVISIBLE ones; generated ones are computed again.
    let mut result = tx
        .query_iter(format!("SELECT {cols} FROM {full}"))
        .await
        .map_err(|e| DbError::mysql(p, e))?;
    let width = result.columns_ref().len().max(1);
    let per_batch = BATCH_ROWS.min(65_000 / width).max(1);
    let mut batch: Vec<Value> = Vec::new();
    let mut rows = 0u64;
    let insert = |n: usize| {
        let one = format!("({})", vec!["?"; width].join(","));
        format!(
            "INSERT INTO {full} ({cols}) VALUES {}",
            vec![one; n].join(",")
        )
    };
    while let Some(row) = result.next().await.map_err(|e| DbError::mysql(p, e))? {
        batch.extend(row.unwrap());
        rows += 1;
        if batch.len() >= per_batch * width {
            let values = std::mem::take(&mut batch);
            rc.exec_drop(insert(values.len() / width), values)
                .await
                .map_err(|e| DbError::mysql(r, e))?;
        }
    }
    if !batch.is_empty() {
        rc.exec_drop(insert(batch.len() / width), batch)
            .await
            .map_err(|e| DbError::mysql(r, e))?;
    }
    Ok(rows)
}

/// Objects the copy does not carry, counted, for the report.
async fn not_copied(
    tx: &mut mysql_async::Transaction<'_>,
    p: &str,
    system: &str,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (what, sql) in [
        ("views", format!("SELECT COUNT(*) FROM information_schema.VIEWS WHERE TABLE_SCHEMA NOT IN ({system})")),
        ("routines", format!("SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA NOT IN ({system})")),
        ("triggers", format!("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA NOT IN ({system})")),
        ("events", format!("SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA NOT IN ({system})")),
    ] {
        let n: Option<u64> = tx.query_first(sql).await.map_err(|e| DbError::mysql(p, e))?;
        if let Some(n) = n.filter(|n| *n > 0) {
            out.push(format!(
                "{n} {what} are not copied: create them on the replica (later changes to them replicate, and fail on the replica until they exist)"
            ));
        }
    }
    out.push("users and grants are not copied: create the application's users on the replica (later GRANT and ALTER USER replicate)".into());
    Ok(out)
}

/// Points the replica at the primary from `gtid` on and starts it.
async fn start_replication(
    rc: &mut Conn,
    member: &str,
    primary: &conn::MyUrl,
    gtid: &MariaPos,
) -> Result<()> {
    let err = |e| DbError::mysql(member, e);
    rc.query_drop("STOP SLAVE").await.map_err(err)?;
    rc.exec_drop("SET GLOBAL gtid_slave_pos = ?", (gtid.to_string(),))
        .await
        .map_err(err)?;
    change_master(rc, member, primary).await?;
    rc.query_drop("START SLAVE").await.map_err(err)?;
    Ok(())
}

/// `CHANGE MASTER TO` the source at `primary`'s address and credentials, by GTID from
/// the replica's `gtid_slave_pos` (the replica is stopped).
pub(crate) async fn change_master(
    rc: &mut Conn,
    member: &str,
    primary: &conn::MyUrl,
) -> Result<()> {
    // The password is written as a literal with backslashes escaped: that holds only
    // while backslash is an escape in this session.
    rc.query_drop("SET SESSION sql_mode = REPLACE(@@SESSION.sql_mode, 'NO_BACKSLASH_ESCAPES', '')")
        .await
        .map_err(|e| DbError::mysql(member, e))?;
    let password = primary.password().unwrap_or_default();
    let sql = Dialect::MariaDb.change_source(&super::sql::Source {
        host: primary.host(),
        port: primary.port(),
        user: primary.user().unwrap_or_default(),
        password: &password,
        // The link between regions is encrypted as the primary's URL asks; a
        // certificate check asked for is kept (against the replica server's CA list).
        tls: !matches!(
            primary.ssl_mode,
            conn::SslMode::Disabled | conn::SslMode::Preferred
        ),
        verify: matches!(
            primary.ssl_mode,
            conn::SslMode::VerifyCa | conn::SslMode::VerifyIdentity
        ),
    });
    // The statement carries the password, and a server's syntax error quotes the text:
    // only the error code is shown.
    rc.query_drop(sql).await.map_err(|e| match e {
        mysql_async::Error::Server(s) => DbError::Sql {
            member: member.into(),
            detail: format!("CHANGE MASTER TO failed (error {})", s.code),
        },
        _ => DbError::Sql {
            member: member.into(),
            detail: "CHANGE MASTER TO failed: the session ended".into(),
        },
    })
}
