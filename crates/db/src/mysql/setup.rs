//! `db setup` for MariaDB and MySQL: check everything, copy every user database from
//! one consistent snapshot with its GTID position (read by `jobs` sessions that share
//! the snapshot, large tables in key ranges), then start native GTID replication
//! (MariaDB: `MASTER_USE_GTID=slave_pos`; MySQL: `SOURCE_AUTO_POSITION=1` after
//! `gtid_purged` is set to the snapshot's set) from that position, so writes made on
//! the primary during the copy arrive afterwards. A replica already replicating from
//! this primary is only started again: re-running is safe.
//!
//! The copy is written with `sql_log_bin=0`: logged, it would carry the replica's own
//! server id (errant GTIDs), and the position could not be set.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};
use tokio::task::JoinSet;

use super::check::{check, Member};
use super::gtid::Gtids;
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

/// How setup copies.
#[derive(Debug, Clone, Copy)]
pub struct SetupOptions {
    /// A replica that already holds user databases has them dropped and copied again
    /// (without it, such a replica is refused).
    pub wipe: bool,
    /// Parallel copy sessions, all reading one snapshot.
    pub jobs: usize,
    /// The family the topology names (`engine`); a member running the other is refused.
    pub engine: Dialect,
}

impl Default for SetupOptions {
    fn default() -> Self {
        Self {
            wipe: false,
            jobs: 4,
            engine: Dialect::MariaDb,
        }
    }
}

/// Sets up every replica of `primary`.
pub async fn setup(
    primary: &Member,
    replicas: &[Member],
    opts: &SetupOptions,
) -> Result<SetupReport> {
    let started = Instant::now();
    let mut all = vec![primary.clone()];
    all.extend(replicas.iter().cloned());
    let d = opts.engine;
    check(d, &all).await?;
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
        if replicating_from(d, &mut rc, &r.name, pu.host(), pu.port()).await? {
            rc.query_drop(d.start_replica())
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
        let copied = copy(primary, r, &mut rc, opts).await?;
        report.warnings = copied.warnings;
        report.databases = copied.databases;
        report.tables = copied.tables;
        report.rows += copied.rows;
        report.gtid = copied.gtid.to_string();
        start_replication((d, &copied.version), &mut rc, &r.name, &pu, &copied.gtid).await?;
        let _ = rc.disconnect().await;
        report.replicas.push((r.name.clone(), "copied"));
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Whether the replica already replicates from `host:port` by GTID.
async fn replicating_from(
    d: Dialect,
    c: &mut Conn,
    member: &str,
    host: &str,
    port: u16,
) -> Result<bool> {
    let row: Option<Row> = c
        .query_first(d.replica_status())
        .await
        .map_err(|e| DbError::mysql(member, e))?;
    let [_, _, h, p, _] = d.status_columns();
    let (col, want) = d.gtid_positioned();
    Ok(row.is_some_and(|r| {
        text(&r, h).as_deref() == Some(host)
            && text(&r, p).and_then(|p| p.parse::<u16>().ok()) == Some(port)
            && text(&r, col).is_some_and(|g| g.eq_ignore_ascii_case(want))
    }))
}

struct Copied {
    warnings: Vec<String>,
    databases: Vec<String>,
    tables: u64,
    rows: u64,
    gtid: Gtids,
    /// The replica's `VERSION()` (MySQL's reset statement depends on it).
    version: String,
}

/// One piece of the copy: a table, or a key range of a large one.
struct Chunk {
    full: String,
    /// The column list written to.
    cols: String,
    /// What is read for those columns.
    select: String,
    /// `WHERE` clause for the key range (empty: the whole table).
    range: String,
    /// Estimated rows, to start the largest pieces first.
    estimate: u64,
    /// Every column's text form loads back as it was (see [`loads_as_text`]): the rows
    /// go in by `LOAD DATA LOCAL INFILE`, else by multi-row INSERTs.
    load: bool,
    /// Indexes built once the table's last chunk is in.
    after: Option<Arc<Deferred>>,
}

/// A table's secondary indexes, added when its rows are in: one sorted build per
/// index instead of a random B-tree insert per row.
struct Deferred {
    full: String,
    /// `KEY ...` definitions exactly as `SHOW CREATE TABLE` printed them.
    keys: Vec<String>,
    /// Chunks of the table not copied yet.
    left: std::sync::atomic::AtomicUsize,
}

/// Splits the plain secondary indexes (`KEY ...` lines) out of a `SHOW CREATE TABLE`
/// statement, which prints one element per line. A table with a foreign key keeps
/// them: InnoDB would create an index of its own for the key meanwhile.
fn defer_keys(ddl: &str) -> (String, Vec<String>) {
    let lines: Vec<&str> = ddl.lines().collect();
    let close = lines.iter().rposition(|l| l.starts_with(')'));
    let (Some(close), false) = (close, ddl.contains("FOREIGN KEY")) else {
        return (ddl.to_string(), Vec::new());
    };
    if close == 0 {
        return (ddl.to_string(), Vec::new());
    }
    let mut elements = Vec::new();
    let mut keys = Vec::new();
    for l in &lines[1..close] {
        let item = l.trim_end().trim_end_matches(',');
        if item.starts_with("  KEY `") {
            keys.push(item.trim_start().to_string());
        } else {
            elements.push(item);
        }
    }
    if keys.is_empty() || elements.is_empty() {
        return (ddl.to_string(), Vec::new());
    }
    let mut out = vec![lines[0].to_string(), elements.join(",\n")];
    out.extend(lines[close..].iter().map(|l| l.to_string()));
    (out.join("\n"), keys)
}

/// Column types whose text-protocol value `LOAD DATA` stores back unchanged. BIT and
/// spatial values (raw bytes that LOAD DATA would parse as text) take the INSERT path.
fn loads_as_text(data_type: &str) -> bool {
    matches!(
        data_type.to_ascii_lowercase().as_str(),
        "tinyint"
            | "smallint"
            | "mediumint"
            | "int"
            | "bigint"
            | "decimal"
            | "float"
            | "double"
            | "char"
            | "varchar"
            | "tinytext"
            | "text"
            | "mediumtext"
            | "longtext"
            | "binary"
            | "varbinary"
            | "tinyblob"
            | "blob"
            | "mediumblob"
            | "longblob"
            | "date"
            | "datetime"
            | "timestamp"
            | "time"
            | "year"
            | "enum"
            | "set"
            | "json"
            | "uuid"
            | "inet4"
            | "inet6"
    )
}

/// Bytes of rows per `LOAD DATA` statement (well under the default 16 MiB
/// max_allowed_packet, which LOCAL INFILE data does not count against anyway; small
/// enough that reading the next batch overlaps loading this one).
const LOAD_BYTES: usize = 2 << 20;

/// One value in `LOAD DATA`'s default format: tab-separated, `\N` for NULL, and the
/// tab, newline, backslash and NUL bytes escaped. `None` for a value the text protocol
/// never sends.
fn encode_field(out: &mut Vec<u8>, v: &Value) -> Option<()> {
    match v {
        Value::NULL => out.extend_from_slice(b"\\N"),
        Value::Bytes(b) => {
            for &c in b {
                match c {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    0 => out.extend_from_slice(b"\\0"),
                    c => out.push(c),
                }
            }
        }
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::UInt(u) => out.extend_from_slice(u.to_string().as_bytes()),
        _ => return None,
    }
    Some(())
}

/// Rows per key-range chunk of a large table (integer primary keys only): enough
/// chunks that one big table keeps every session busy.
const CHUNK_ROWS: u64 = 200_000;

/// Copies every user database from one consistent snapshot of the primary, with
/// `opts.jobs` sessions that all read that same snapshot.
async fn copy(primary: &Member, r: &Member, rc: &mut Conn, opts: &SetupOptions) -> Result<Copied> {
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
    let d = opts.engine;
    let (_, version) = Dialect::of_server(rc, &r.name).await?;
    rc.query_drop(d.stop_replica()).await.map_err(rerr)?;
    if d == Dialect::MySql {
        // super_read_only binds every user, the copy's too: lowered for the copy
        // (read_only stays, so clients still cannot write) and raised again once
        // replication runs (`start_replication`).
        rc.query_drop("SET GLOBAL super_read_only = 0")
            .await
            .map_err(rerr)?;
    }
    // The replica must not have transactions of its own that the primary never had.
    let own: String = rc
        .query_first(d.executed())
        .await
        .map_err(rerr)?
        .unwrap_or_default();
    // LOAD DATA LOCAL needs the replica server's consent (off by default on MySQL 8).
    let local_infile: Option<u64> = rc
        .query_first("SELECT @@GLOBAL.local_infile")
        .await
        .map_err(rerr)?;
    let (mut sessions, gtid) = snapshots(d, primary, &mut pc, opts.jobs).await?;
    let _ = pc.disconnect().await;
    let own_pos = Gtids::parse(d, &own).map_err(|e| DbError::Sql {
        member: r.name.clone(),
        detail: format!("its GTID history: {e}"),
    })?;
    if !gtid.contains(&own_pos) {
        return Err(DbError::Prerequisites(vec![format!(
            "{}: its binary log holds transactions the primary never had ({own}); if the replica holds nothing you need, run {} on it, then setup again",
            r.name,
            d.reset_log(&version)
        )]));
    }
    // The catalog is read on the first snapshot session: what the copy sees.
    let cat = &mut sessions[0];
    let system = super::system_schemas_sql();
    let databases: Vec<String> = cat
        .query(format!(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN ({system}) ORDER BY SCHEMA_NAME"
        ))
        .await
        .map_err(perr)?;
    let held: Vec<String> = rc
        .query(format!(
            "SELECT DISTINCT TABLE_SCHEMA FROM information_schema.TABLES WHERE TABLE_SCHEMA NOT IN ({system}) ORDER BY TABLE_SCHEMA"
        ))
        .await
        .map_err(rerr)?;
    if !held.is_empty() && !opts.wipe {
        return Err(DbError::Prerequisites(vec![format!(
            "{}: the replica already holds data in {}; setup copies the whole server and would replace it: point the replica at an empty server, or pass --wipe to drop those databases and copy again",
            r.name,
            held.join(", ")
        )]));
    }
    let warnings = not_copied(cat, p, &system).await?;
    rc.query_drop(
        "SET SESSION sql_log_bin = 0; SET SESSION foreign_key_checks = 0; SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO'",
    )
        .await
        .map_err(rerr)?;
    let mut chunks = Vec::new();
    let mut tables = 0u64;
    for db in &databases {
        let qdb = quote_ident(db);
        let create: Option<Row> = cat
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
        rc.query_drop(format!("USE {qdb}")).await.map_err(rerr)?;
        let names: Vec<(String, Option<u64>)> = cat
            .exec(
                "SELECT TABLE_NAME, TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                (db.clone(),),
            )
            .await
            .map_err(perr)?;
        for (t, estimate) in &names {
            // As mysqldump does: a table's metadata lock is released after it is read
            // (rolling back to the savepoint), so an ALTER on the primary waits for one
            // table at most, not for the whole copy; the snapshot stays.
            cat.query_drop("SAVEPOINT georep_table")
                .await
                .map_err(perr)?;
            let planned = plan_table(cat, p, db, t, estimate.unwrap_or(0)).await?;
            cat.query_drop("ROLLBACK TO SAVEPOINT georep_table")
                .await
                .map_err(perr)?;
            let (create, keys) = defer_keys(&planned.0);
            rc.query_drop(create).await.map_err(rerr)?;
            let after = (!keys.is_empty()).then(|| {
                Arc::new(Deferred {
                    full: format!("{qdb}.{}", quote_ident(t)),
                    keys,
                    left: std::sync::atomic::AtomicUsize::new(planned.1.len()),
                })
            });
            chunks.extend(planned.1.into_iter().map(|mut c| {
                c.load &= local_infile == Some(1);
                c.after = after.clone();
                c
            }));
            tables += 1;
        }
    }
    chunks.sort_by_key(|c| std::cmp::Reverse(c.estimate));
    let queue = Arc::new(Mutex::new(VecDeque::from(chunks)));
    let mut workers = JoinSet::new();
    for session in sessions {
        let sink = conn::connect(&r.name, &r.url).await?;
        let (queue, names) = (queue.clone(), (p.clone(), r.name.clone()));
        workers.spawn(worker(session, sink, queue, names));
    }
    let mut rows = 0u64;
    while let Some(done) = workers.join_next().await {
        // The first failure ends the copy (the other workers are aborted with the set).
        rows += done.map_err(|e| DbError::Sql {
            member: r.name.clone(),
            detail: format!("a copy session ended: {e}"),
        })??;
    }
    Ok(Copied {
        warnings,
        databases,
        tables,
        rows,
        gtid,
        version,
    })
}

/// Opens `jobs` sessions on the primary that all see one snapshot, and that
/// snapshot's GTID position. Commits are held for the instant the sessions start
/// ([`Dialect::hold_commits`]; it needs the RELOAD privilege). MariaDB can do without:
/// the sessions are started again until their binary log positions agree, and after a
/// few tries the copy goes on with one session. MySQL cannot: it has no snapshot
/// position, so the hold is required.
async fn snapshots(
    d: Dialect,
    primary: &Member,
    control: &mut Conn,
    jobs: usize,
) -> Result<(Vec<Conn>, Gtids)> {
    let p = &primary.name;
    let mut sessions = Vec::new();
    for _ in 0..jobs.clamp(1, 32) {
        let mut c = conn::connect(p, &primary.url).await?;
        // Text results in utf8mb4, which is how the copy loads them back.
        c.query_drop("SET NAMES utf8mb4; SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(|e| DbError::mysql(p, e))?;
        sessions.push(c);
    }
    if d == Dialect::MySql {
        no_long_queries(control, p).await?;
    }
    let mut held = false;
    if sessions.len() > 1 || d == Dialect::MySql {
        match control.query_drop(d.hold_commits()).await {
            Ok(()) => held = true,
            Err(e) => {
                let _ = control.query_drop(d.release_commits()).await;
                if d == Dialect::MySql {
                    return Err(no_hold(p, e));
                }
            }
        }
    }
    let mut tries = 0;
    let position = loop {
        // All at once and bounded: commits on the primary wait while they start.
        let begun = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            futures::future::try_join_all(sessions.iter_mut().map(|c| begin_snapshot(d, c, p))),
        )
        .await;
        // MySQL: the snapshots' set is what the server executed while commits are held.
        let set = match (&begun, d) {
            (Ok(Ok(_)), Dialect::MySql) => {
                Some(control.query_first::<String, _>(d.executed()).await)
            }
            _ => None,
        };
        if held {
            // Released on every way out, before any error is returned.
            control
                .query_drop(d.release_commits())
                .await
                .map_err(|e| DbError::mysql(p, e))?;
        }
        let mut positions = begun.map_err(|_| DbError::Sql {
            member: p.clone(),
            detail: "the copy sessions did not start their snapshots within 30 s".into(),
        })??;
        if let Some(set) = set {
            let set = set.map_err(|e| DbError::mysql(p, e))?.unwrap_or_default();
            let gtid = Gtids::parse(d, &set).map_err(|e| DbError::Sql {
                member: p.clone(),
                detail: format!("the snapshot's GTID set: {e}"),
            })?;
            return Ok((sessions, gtid));
        }
        if positions.windows(2).all(|w| w[0] == w[1]) {
            break positions.swap_remove(0);
        }
        tries += 1;
        if held || tries >= 5 {
            tracing::warn!(
                primary = %p,
                "the copy sessions could not share one snapshot (BACKUP STAGE needs the RELOAD privilege and writes kept moving the position); copying with one session"
            );
            sessions.truncate(1);
            let (file, pos) = positions.swap_remove(0);
            break (file, pos);
        }
        for c in &mut sessions {
            c.query_drop("ROLLBACK")
                .await
                .map_err(|e| DbError::mysql(p, e))?;
        }
    };
    let gtid: String = sessions[0]
        .exec_first("SELECT BINLOG_GTID_POS(?, ?)", position)
        .await
        .map_err(|e| DbError::mysql(p, e))?
        .unwrap_or_default();
    let gtid = Gtids::parse(d, &gtid).map_err(|e| DbError::Sql {
        member: p.clone(),
        detail: format!("the snapshot's GTID position: {e}"),
    })?;
    Ok((sessions, gtid))
}

/// MySQL's FLUSH TABLES WITH READ LOCK waits for running queries with every write
/// held behind it: waits, at most 30 s, until no query has run 5 s or more, else
/// refuses and names them.
async fn no_long_queries(c: &mut Conn, p: &str) -> Result<()> {
    const LONG: &str = "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Query' \
        AND TIME >= 5 AND ID <> CONNECTION_ID() AND USER <> 'system user'";
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ids: Vec<u64> = c.query(LONG).await.map_err(|e| DbError::mysql(p, e))?;
        if ids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DbError::Prerequisites(vec![format!(
                "{p}: queries {ids:?} have run for 5 s or more; FLUSH TABLES WITH READ LOCK would wait behind them with every write held: run setup when they have ended, or end them (KILL QUERY ID)"
            )]));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Why MySQL's copy could not hold commits, with the fix.
fn no_hold(p: &str, e: mysql_async::Error) -> DbError {
    match e {
        // 1227: access denied, this needs a privilege.
        mysql_async::Error::Server(s) if s.code == 1227 => DbError::Prerequisites(vec![format!(
            "{p}: FLUSH TABLES WITH READ LOCK was refused, and MySQL's copy needs it for an instant to read its snapshot's GTID set: GRANT RELOAD ON *.* to the primary URL's user"
        )]),
        e => DbError::Sql {
            member: p.into(),
            detail: format!(
                "could not hold commits for the snapshot (FLUSH TABLES WITH READ LOCK, 10 s): {e}; a long query or a table lock blocks it: run setup again when it has ended"
            ),
        },
    }
}

/// Starts a consistent-snapshot transaction and returns its binary log position
/// (MariaDB; empty for MySQL, which reads the held server's set instead).
async fn begin_snapshot(d: Dialect, c: &mut Conn, p: &str) -> Result<(String, String)> {
    let err = |e| DbError::mysql(p, e);
    c.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .map_err(err)?;
    if d == Dialect::MySql {
        return Ok((String::new(), String::new()));
    }
    let status: Vec<Row> = c
        .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
        .await
        .map_err(err)?;
    let var = |name: &str| {
        status
            .iter()
            .find(|r| text(r, "Variable_name").is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .and_then(|r| text(r, "Value"))
            .unwrap_or_default()
    };
    Ok((var("Binlog_snapshot_file"), var("Binlog_snapshot_position")))
}

/// A table's definition and the chunks its rows are copied in.
async fn plan_table(
    cat: &mut Conn,
    p: &str,
    db: &str,
    t: &str,
    estimate: u64,
) -> Result<(String, Vec<Chunk>)> {
    let err = |e| DbError::mysql(p, e);
    let full = format!("{}.{}", quote_ident(db), quote_ident(t));
    let ddl: Option<Row> = cat
        .query_first(format!("SHOW CREATE TABLE {full}"))
        .await
        .map_err(err)?;
    let ddl = ddl
        .and_then(|r| r.get_opt::<String, _>(1).and_then(std::result::Result::ok))
        .ok_or_else(|| DbError::Sql {
            member: p.into(),
            detail: format!("no definition for {full}"),
        })?;
    let columns: Vec<(String, String)> = cat
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COALESCE(GENERATION_EXPRESSION, '') = '' ORDER BY ORDINAL_POSITION",
            (db, t),
        )
        .await
        .map_err(err)?;
    // Columns named: `*` leaves out INVISIBLE ones; generated ones are computed again
    // (by their expression: MySQL's EXTRA says DEFAULT_GENERATED for a column whose
    // default is an expression, which is copied like any other).
    let cols = columns
        .iter()
        .map(|(c, _)| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let load = columns.iter().all(|(_, ty)| loads_as_text(ty));
    let select = columns
        .iter()
        .map(|(c, ty)| super::read_expr(c, ty))
        .collect::<Vec<_>>()
        .join(", ");
    let whole = |range: String, estimate| Chunk {
        full: full.clone(),
        cols: cols.clone(),
        select: select.clone(),
        range,
        estimate,
        load,
        after: None,
    };
    let pieces = estimate / CHUNK_ROWS;
    if pieces < 2 {
        return Ok((ddl, vec![whole(String::new(), estimate)]));
    }
    let keys: Vec<(String, String)> = cat
        .exec(
            "SELECT k.COLUMN_NAME, col.DATA_TYPE FROM information_schema.KEY_COLUMN_USAGE k \
             JOIN information_schema.COLUMNS col ON col.TABLE_SCHEMA = k.TABLE_SCHEMA AND col.TABLE_NAME = k.TABLE_NAME AND col.COLUMN_NAME = k.COLUMN_NAME \
             WHERE k.TABLE_SCHEMA = ? AND k.TABLE_NAME = ? AND k.CONSTRAINT_NAME = 'PRIMARY' ORDER BY k.ORDINAL_POSITION",
            (db, t),
        )
        .await
        .map_err(err)?;
    let key = match keys.as_slice() {
        [(k, ty)]
            if matches!(
                ty.as_str(),
                "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
            ) =>
        {
            k.clone()
        }
        _ => return Ok((ddl, vec![whole(String::new(), estimate)])),
    };
    let qk = quote_ident(&key);
    let bounds: Option<(Option<i64>, Option<i64>)> = cat
        .query_first(format!(
            "SELECT CAST(MIN({qk}) AS SIGNED), CAST(MAX({qk}) AS SIGNED) FROM {full}"
        ))
        .await
        .map_err(err)?;
    let Some((Some(lo), Some(hi))) = bounds else {
        return Ok((ddl, vec![whole(String::new(), estimate)]));
    };
    let ranges = key_ranges(&qk, (lo, hi), pieces.min(64));
    let each = estimate / ranges.len() as u64;
    let chunks = ranges.into_iter().map(|r| whole(r, each)).collect();
    Ok((ddl, chunks))
}

/// `WHERE` clauses that split keys `lo..=hi` into at most `n` ranges covering every
/// value (the first and last are open-ended), empty for one whole-table range.
fn key_ranges(qk: &str, (lo, hi): (i64, i64), n: u64) -> Vec<String> {
    let n = i128::from(n.max(1));
    let step = ((i128::from(hi) - i128::from(lo)) / n).max(1);
    let mut out = Vec::new();
    let mut prev: Option<i64> = None;
    for i in 1..n {
        let Ok(cut) = i64::try_from(i128::from(lo) + i * step) else {
            break;
        };
        if cut > hi || prev.is_some_and(|p| cut <= p) {
            break;
        }
        out.push(match prev {
            None => format!("{qk} < {cut}"),
            Some(p) => format!("{qk} >= {p} AND {qk} < {cut}"),
        });
        prev = Some(cut);
    }
    out.push(prev.map(|p| format!("{qk} >= {p}")).unwrap_or_default());
    out
}

/// One copy session: takes chunks until none are left, reading them from its snapshot
/// session and writing them on its own replica session.
async fn worker(
    mut snap: Conn,
    mut sink: Conn,
    queue: Arc<Mutex<VecDeque<Chunk>>>,
    (p, r): (String, String),
) -> Result<u64> {
    // Unlogged (no errant GTIDs), and without per-row checks the primary already made.
    sink.query_drop(
        "SET SESSION sql_log_bin = 0; SET SESSION foreign_key_checks = 0; SET SESSION unique_checks = 0; SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO'",
    )
    .await
    .map_err(|e| DbError::mysql(&r, e))?;
    let mut rows = 0u64;
    loop {
        let next = queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front();
        let Some(chunk) = next else { break };
        snap.query_drop("SAVEPOINT georep_table")
            .await
            .map_err(|e| DbError::mysql(&p, e))?;
        rows += copy_chunk(&mut snap, &mut sink, (&p, &r), &chunk).await?;
        if let Some(d) = &chunk.after {
            if d.left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                let adds: Vec<String> = d.keys.iter().map(|k| format!("ADD {k}")).collect();
                sink.query_drop(format!("ALTER TABLE {} {}", d.full, adds.join(", ")))
                    .await
                    .map_err(|e| DbError::mysql(&r, e))?;
            }
        }
        snap.query_drop("ROLLBACK TO SAVEPOINT georep_table")
            .await
            .map_err(|e| DbError::mysql(&p, e))?;
    }
    snap.query_drop("COMMIT")
        .await
        .map_err(|e| DbError::mysql(&p, e))?;
    let _ = snap.disconnect().await;
    let _ = sink.disconnect().await;
    Ok(rows)
}

/// Streams one chunk's rows from the snapshot into multi-row INSERTs on the replica,
/// a batch at a time (memory stays at one batch whatever the table's size).
async fn copy_chunk(
    snap: &mut Conn,
    sink: &mut Conn,
    (p, r): (&str, &str),
    c: &Chunk,
) -> Result<u64> {
    let (full, cols) = (&c.full, &c.cols);
    let filter = if c.range.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", c.range)
    };
    let mut result = snap
        .query_iter(format!("SELECT {} FROM {full}{filter}", c.select))
        .await
        .map_err(|e| DbError::mysql(p, e))?;
    let width = result.columns_ref().len().max(1);
    if c.load {
        // Reading the primary and loading the replica overlap: batches pass through a
        // short queue (memory stays at a few batches per session).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<u8>, u64)>(2);
        let read = async {
            let tx = tx;
            let mut data: Vec<u8> = Vec::with_capacity(LOAD_BYTES + 64 * 1024);
            let (mut rows, mut pending) = (0u64, 0u64);
            while let Some(row) = result.next().await.map_err(|e| DbError::mysql(p, e))? {
                for (i, v) in row.unwrap().iter().enumerate() {
                    if i > 0 {
                        data.push(b'\t');
                    }
                    encode_field(&mut data, v).ok_or_else(|| DbError::Sql {
                        member: p.into(),
                        detail: format!("{full}: a value of an unexpected kind in a text result"),
                    })?;
                }
                data.push(b'\n');
                rows += 1;
                pending += 1;
                if data.len() >= LOAD_BYTES {
                    let next = Vec::with_capacity(LOAD_BYTES + 64 * 1024);
                    // A closed queue: the loader failed, and its error is returned.
                    if tx
                        .send((std::mem::replace(&mut data, next), pending))
                        .await
                        .is_err()
                    {
                        return Ok(rows);
                    }
                    pending = 0;
                }
            }
            if pending > 0 {
                let _ = tx.send((data, pending)).await;
            }
            Ok::<u64, DbError>(rows)
        };
        let load = async {
            while let Some((data, n)) = rx.recv().await {
                load_batch(sink, r, c, data, n).await?;
            }
            Ok::<(), DbError>(())
        };
        let (rows, loaded) = futures::future::join(read, load).await;
        loaded?;
        return rows;
    }
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
            sink.exec_drop(insert(values.len() / width), values)
                .await
                .map_err(|e| DbError::mysql(r, e))?;
        }
    }
    if !batch.is_empty() {
        sink.exec_drop(insert(batch.len() / width), batch)
            .await
            .map_err(|e| DbError::mysql(r, e))?;
    }
    Ok(rows)
}

/// Loads `rows` encoded rows into the chunk's table. The session is not in strict
/// mode (the primary's rows are taken as they are), so a row count that differs or
/// any warning is an error: nothing is silently truncated.
async fn load_batch(sink: &mut Conn, r: &str, c: &Chunk, data: Vec<u8>, rows: u64) -> Result<()> {
    let data = bytes::Bytes::from(data);
    sink.set_infile_handler(async move {
        let stream: mysql_async::InfileData =
            Box::pin(futures::stream::once(async move { Ok(data) }));
        Ok(stream)
    });
    sink.query_drop(format!(
        "LOAD DATA LOCAL INFILE 'georep-copy' INTO TABLE {} CHARACTER SET utf8mb4 \
         FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({})",
        c.full, c.cols
    ))
    .await
    .map_err(|e| DbError::mysql(r, e))?;
    let (loaded, warnings) = (sink.affected_rows(), sink.get_warnings());
    if loaded != rows || warnings > 0 {
        let shown: Vec<(String, u32, String)> = sink
            .query("SHOW WARNINGS LIMIT 3")
            .await
            .map_err(|e| DbError::mysql(r, e))?;
        return Err(DbError::Sql {
            member: r.into(),
            detail: format!(
                "{}: {loaded} of {rows} rows loaded with {warnings} warnings ({}); the copy stopped rather than keep a changed row",
                c.full,
                shown
                    .iter()
                    .map(|(_, code, m)| format!("{code}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        });
    }
    Ok(())
}

/// Objects the copy does not carry, counted, for the report.
async fn not_copied(tx: &mut Conn, p: &str, system: &str) -> Result<Vec<String>> {
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
    (d, version): (Dialect, &str),
    rc: &mut Conn,
    member: &str,
    primary: &conn::MyUrl,
    gtid: &Gtids,
) -> Result<()> {
    let err = |e| DbError::mysql(member, e);
    rc.query_drop(d.stop_replica()).await.map_err(err)?;
    for sql in d.start_after(version, &gtid.to_string()) {
        rc.query_drop(sql).await.map_err(err)?;
    }
    change_master(d, rc, member, primary).await?;
    rc.query_drop(d.start_replica()).await.map_err(err)?;
    if d == Dialect::MySql {
        // A replica is fenced; `copy` lowered super_read_only.
        rc.query_drop(d.fence(true)).await.map_err(err)?;
    }
    Ok(())
}

/// Points the stopped replica at the source at `primary`'s address and credentials,
/// by GTID (MariaDB: from its `gtid_slave_pos`; MySQL: auto-positioned from its
/// `gtid_executed`).
pub(crate) async fn change_master(
    d: Dialect,
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
    let sql = d.change_source(&super::sql::Source {
        host: primary.host(),
        port: primary.port(),
        user: primary.user().unwrap_or_default(),
        password: &password,
        // The link between regions is encrypted as the primary's URL asks; a
        // certificate check asked for is kept (against the replica server's CA list).
        // MySQL 8 servers always have a certificate, so PREFERRED encrypts there
        // (a plain link would fetch the server's RSA key unverified).
        tls: !matches!(
            (d, primary.ssl_mode),
            (_, conn::SslMode::Disabled) | (Dialect::MariaDb, conn::SslMode::Preferred)
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
            detail: format!(
                "pointing the replica at its source failed (error {})",
                s.code
            ),
        },
        _ => DbError::Sql {
            member: member.into(),
            detail: "pointing the replica at its source failed: the session ended".into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::{defer_keys, key_ranges};

    #[test]
    fn secondary_indexes_are_split_out_of_the_definition() {
        let ddl = "CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  `k` int(11) NOT NULL DEFAULT 0,\n  `c` char(9) NOT NULL DEFAULT 'KEY `x`',\n  PRIMARY KEY (`id`),\n  UNIQUE KEY `u` (`c`),\n  KEY `k_1` (`k`),\n  KEY `kc` (`k`,`c`(3))\n) ENGINE=InnoDB DEFAULT CHARSET=latin1";
        let (create, keys) = defer_keys(ddl);
        assert_eq!(keys, vec!["KEY `k_1` (`k`)", "KEY `kc` (`k`,`c`(3))"]);
        assert_eq!(
            create,
            "CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  `k` int(11) NOT NULL DEFAULT 0,\n  `c` char(9) NOT NULL DEFAULT 'KEY `x`',\n  PRIMARY KEY (`id`),\n  UNIQUE KEY `u` (`c`)\n) ENGINE=InnoDB DEFAULT CHARSET=latin1"
        );
        // Foreign keys, or nothing to defer: unchanged.
        let fk = "CREATE TABLE `c` (\n  `id` int,\n  KEY `p` (`p`),\n  CONSTRAINT `f` FOREIGN KEY (`p`) REFERENCES `p` (`id`)\n) ENGINE=InnoDB";
        assert_eq!(defer_keys(fk), (fk.to_string(), Vec::new()));
        let plain = "CREATE TABLE `t` (\n  `id` int,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB";
        assert_eq!(defer_keys(plain), (plain.to_string(), Vec::new()));
    }

    #[test]
    fn key_ranges_cover_every_key_once() {
        assert_eq!(key_ranges("k", (1, 1_000_000), 1), vec![String::new()]);
        assert_eq!(
            key_ranges("k", (0, 300), 3),
            vec!["k < 100", "k >= 100 AND k < 200", "k >= 200"]
        );
        // Fewer keys than pieces: no empty or overlapping ranges.
        assert_eq!(key_ranges("k", (5, 6), 8), vec!["k < 6", "k >= 6"]);
        // The whole i64 range does not overflow.
        let r = key_ranges("k", (i64::MIN, i64::MAX), 4);
        assert_eq!(r.len(), 4);
        assert!(r[0].starts_with("k < ") && r[3].starts_with("k >= "));
    }
}
