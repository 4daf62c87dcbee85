//! `georep db ...`: PostgreSQL geo-replicas declared under `[[databases]]`.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use georep_core::Database;
use georep_db::postgres::{self as pg, SetupProgress};

use crate::output::human;
use crate::topology::{load, ConfigArg, ConfigFileError};
use crate::{exit, Output};

#[derive(Subcommand, Debug)]
pub(crate) enum DbCommand {
    /// Check prerequisites, copy the schema, create publication and subscriptions, and
    /// return when every table is synchronized. Safe to re-run.
    Setup(DbArgs),
    /// Per replica: state, lag (bytes, seconds), WAL kept by its slot, sequence and schema
    /// drift. Exit 1 when a replica breaches the RPO or drifts.
    Status(DbArgs),
    /// Push every replica's sequences ahead of the primary (by the configured margin).
    SyncSequences(SyncArgs),
    /// Compare row counts and content hashes per table (in key ranges); exit 1 if any differ.
    Verify(VerifyArgs),
    /// Apply one DDL statement to replicas and primary in the order that keeps
    /// replication running.
    Ddl(DdlArgs),
    /// One-shot copy of a database: schema, parallel COPY, indexes and constraints, sequences.
    Copy(CopyArgs),
    /// Remove subscriptions, slots and the publication on every member.
    Teardown(DbArgs),
    /// Rebuild a fenced member (an old primary after a forced failover) as a replica of
    /// the current primary; done by the running daemon.
    Reseed(crate::failover::ReseedArgs),
}

#[derive(Args, Debug)]
pub(crate) struct DbArgs {
    /// The database's name in the topology.
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
    /// setup: give up waiting for the initial copy after this long (default: wait).
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration)]
    pub(crate) timeout: Option<Duration>,
    /// setup (MariaDB): a replica that already holds databases has them dropped and
    /// copied again (without it, such a replica is refused).
    #[arg(long)]
    pub(crate) wipe: bool,
    /// setup (MariaDB) and verify: parallel sessions on each server (setup's all read
    /// one snapshot).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub(crate) jobs: u16,
}

#[derive(Args, Debug)]
pub(crate) struct SyncArgs {
    #[command(flatten)]
    pub(crate) db: DbArgs,
    /// How far ahead of the primary (default: the database's sequence_margin; 0 = exact).
    #[arg(long)]
    pub(crate) margin: Option<i64>,
}

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) db: DbArgs,
    /// Only this table.
    #[arg(long)]
    pub(crate) table: Option<String>,
    /// Key ranges per table.
    #[arg(long, default_value_t = 16)]
    pub(crate) ranges: usize,
}

#[derive(Args, Debug)]
pub(crate) struct DdlArgs {
    #[command(flatten)]
    pub(crate) db: DbArgs,
    /// The statement.
    pub(crate) sql: String,
}

#[derive(Args, Debug)]
pub(crate) struct CopyArgs {
    /// Source database URL.
    #[arg(long)]
    pub(crate) from: String,
    /// Target database URL (an existing, empty database).
    #[arg(long)]
    pub(crate) to: String,
    /// Tables (schema.table or table), comma-separated; default: all user tables.
    #[arg(long, value_delimiter = ',')]
    pub(crate) tables: Vec<String>,
    /// Parallel COPY streams.
    #[arg(long, default_value_t = 4)]
    pub(crate) jobs: usize,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

fn database(a: &DbArgs) -> Result<Database> {
    let t = load(&a.config.config)?;
    t.database(&a.name).cloned().ok_or_else(|| {
        let known: Vec<&str> = t.databases.iter().map(|d| d.name.as_str()).collect();
        ConfigFileError(format!(
            "no database named '{}' in {} (declared: {})",
            a.name,
            a.config.config.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
        .into()
    })
}

fn json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(crate) async fn run(cmd: DbCommand) -> Result<u8> {
    match cmd {
        DbCommand::Setup(a) => {
            let db = database(&a)?;
            if db.engine.is_mysql_family() {
                let opts = georep_db::mysql::setup::SetupOptions {
                    wipe: a.wipe,
                    jobs: usize::from(a.jobs),
                    engine: georep_db::mysql::Dialect::of_engine(db.engine),
                };
                return crate::db_mysql::setup(&db, a.output, &opts).await;
            }
            let quiet = a.output == Output::Json;
            let show = move |p: SetupProgress| {
                if quiet {
                    return;
                }
                match p {
                    SetupProgress::Checked { tables } => {
                        eprintln!("prerequisites ok; {tables} tables")
                    }
                    SetupProgress::SchemaCopied { replica, tables } => {
                        eprintln!("{replica}: schema of {tables} tables created")
                    }
                    SetupProgress::Subscribed { replica, created } => eprintln!(
                        "{replica}: subscription {}",
                        if created {
                            "created"
                        } else {
                            "exists, refreshed"
                        }
                    ),
                    SetupProgress::Copying {
                        replica,
                        ready,
                        total,
                    } => eprintln!("{replica}: {ready}/{total} tables synchronized"),
                    SetupProgress::SequencesSynced { replica, sequences } => {
                        eprintln!("{replica}: {sequences} sequences pushed ahead")
                    }
                }
            };
            let r = pg::setup(&db, a.timeout, &show).await?;
            if quiet {
                json(&r)?;
            } else {
                println!(
                    "database {}: {} tables replicated to {} replica(s) in {:.1}s",
                    r.database,
                    r.tables.len(),
                    r.replicas.len(),
                    r.seconds
                );
            }
            Ok(0)
        }
        DbCommand::Status(a) => {
            let db = database(&a)?;
            if db.engine.is_mysql_family() {
                return crate::db_mysql::status(&db, a.output).await;
            }
            let st = pg::status(&db).await?;
            let bad = st.iter().any(|r| {
                r.rpo_breached
                    || !r.schema_drift.is_empty()
                    || r.sequences_behind > 0
                    || r.wal_warning.is_some()
            });
            if a.output == Output::Json {
                json(
                    &serde_json::json!({"database": db.name, "rpo_seconds": db.rpo.as_secs_f64(), "replicas": st}),
                )?;
            } else {
                println!(
                    "database {} (primary in {}), rpo target {}s",
                    db.name,
                    db.primary.region,
                    db.rpo.as_secs()
                );
                println!(
                    "  {:<12} {:<16} {:<13} {:>10} {:>8} {:>12} {:>9} {:>7}",
                    "REPLICA", "REGION", "STATE", "LAG", "LAG S", "WAL KEPT", "SEQ BEH.", "DRIFT"
                );
                for r in &st {
                    println!(
                        "  {:<12} {:<16} {:<13} {:>10} {:>8} {:>12} {:>9} {:>7}{}",
                        r.name,
                        r.region,
                        r.state,
                        r.lag_bytes
                            .map(|b| human(b as u64))
                            .unwrap_or_else(|| "-".into()),
                        r.lag_seconds
                            .map(|s| format!("{s:.1}"))
                            .unwrap_or_else(|| "-".into()),
                        r.wal_retained_bytes
                            .map(|b| human(b as u64))
                            .unwrap_or_else(|| "-".into()),
                        r.sequences_behind,
                        r.schema_drift.len(),
                        if r.rpo_breached { "  RPO BREACHED" } else { "" }
                    );
                    if let Some(e) = &r.error {
                        println!("    error: {e}");
                    }
                    if let Some(w) = &r.wal_warning {
                        println!("    warning: {w}");
                    }
                    for d in &r.schema_drift {
                        println!(
                            "    drift: {} {}: primary {} / replica {}",
                            d.kind,
                            d.object,
                            d.primary.as_deref().unwrap_or("(missing)"),
                            d.replica_def.as_deref().unwrap_or("(missing)")
                        );
                    }
                }
            }
            Ok(if bad { exit::DIFFERENCES } else { 0 })
        }
        DbCommand::SyncSequences(a) => {
            let db = database(&a.db)?;
            if db.engine.is_mysql_family() {
                return Err(crate::db_mysql::not_for(
                    &db,
                    "sync-sequences",
                    "AUTO_INCREMENT values travel with the rows",
                ));
            }
            let r = pg::sync_sequences(&db, a.margin).await?;
            if a.db.output == Output::Json {
                json(&r)?;
            } else {
                for (replica, n) in r {
                    println!("{replica}: {n} sequences moved");
                }
            }
            Ok(0)
        }
        DbCommand::Verify(a) => {
            let db = database(&a.db)?;
            let opts = pg::VerifyOptions {
                table: a.table.clone(),
                ranges: a.ranges,
                jobs: usize::from(a.db.jobs),
                ..Default::default()
            };
            let r = if db.engine.is_mysql_family() {
                crate::db_mysql::verify(&db, &opts).await?
            } else {
                pg::verify(&db, &opts).await?
            };
            if a.db.output == Output::Json {
                json(&r)?;
            } else {
                for t in &r.tables {
                    println!(
                        "{:<12} {:<32} {:>10} rows  {:>10} rows  {}",
                        t.replica,
                        t.table,
                        t.primary_rows,
                        t.replica_rows,
                        if t.equal {
                            "equal".to_string()
                        } else {
                            format!("DIFFERS in {} of {} ranges", t.differing.len(), t.ranges)
                        }
                    );
                    for d in &t.differing {
                        println!(
                            "    keys [{}, {}): primary {} rows, replica {} rows",
                            d.from
                                .map(|v| v.to_string())
                                .unwrap_or_else(|| "-inf".into()),
                            d.to.map(|v| v.to_string()).unwrap_or_else(|| "+inf".into()),
                            d.primary_rows,
                            d.replica_rows
                        );
                    }
                }
            }
            Ok(if r.equal { 0 } else { exit::DIFFERENCES })
        }
        DbCommand::Ddl(a) => {
            let db = database(&a.db)?;
            if db.engine.is_mysql_family() {
                return Err(crate::db_mysql::not_for(
                    &db,
                    "ddl",
                    "binlog replication carries DDL itself: run it on the primary",
                ));
            }
            let r = pg::ddl(&db, &a.sql).await?;
            if a.db.output == Output::Json {
                json(&r)?;
            } else {
                println!("applied on {}", r.order.join(", then "));
                if !r.tables_added.is_empty() {
                    println!("now replicated: {}", r.tables_added.join(", "));
                }
            }
            Ok(0)
        }
        DbCommand::Copy(a) => {
            let opts = pg::CopyOptions {
                tables: a.tables.clone(),
                jobs: a.jobs,
            };
            let quiet = a.output == Output::Json;
            let show = move |t: &pg::CopyTable| {
                if !quiet {
                    eprintln!(
                        "{}: {} rows, {} ({} streams)",
                        t.table,
                        t.rows,
                        human(t.bytes),
                        t.parts
                    );
                }
            };
            let r = pg::copy(&a.from, &a.to, &opts, &show).await?;
            if quiet {
                json(&r)?;
            } else {
                println!(
                    "copied {} tables, {} rows, {} in {:.1}s ({}/s); {} sequences set",
                    r.tables.len(),
                    r.rows,
                    human(r.bytes),
                    r.seconds,
                    human((r.bytes as f64 / r.seconds.max(0.001)) as u64),
                    r.sequences
                );
            }
            Ok(0)
        }
        DbCommand::Reseed(a) => crate::failover::reseed(a).await,
        DbCommand::Teardown(a) => {
            let db = database(&a)?;
            if db.engine.is_mysql_family() {
                return crate::db_mysql::teardown(&db, a.output).await;
            }
            let r = pg::teardown(&db).await?;
            if a.output == Output::Json {
                json(&r)?;
            } else {
                println!(
                    "dropped {} subscription(s), {} slot(s){}",
                    r.subscriptions_dropped.len(),
                    r.slots_dropped.len(),
                    if r.publication_dropped {
                        ", the publication"
                    } else {
                        ""
                    }
                );
                for w in &r.warnings {
                    println!("warning: {w}");
                }
            }
            Ok(if r.warnings.is_empty() {
                0
            } else {
                exit::DIFFERENCES
            })
        }
    }
}
