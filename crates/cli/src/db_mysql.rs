//! `georep db setup|status|verify|teardown` for `engine = "mariadb"` databases (issue
//! 13, in progress): the same commands as PostgreSQL's, through `georep_db::mysql`.

use anyhow::Result;
use georep_core::Database;
use georep_db::mysql::check::Member;

use crate::topology::ConfigFileError;
use crate::Output;

/// The primary and the replicas as the mysql module takes them.
fn members(db: &Database) -> Result<(Member, Vec<Member>)> {
    let primary = Member {
        name: db.primary.name.clone(),
        url: db.primary.url.clone(),
        primary: true,
    };
    let replicas = db
        .replicas
        .iter()
        .map(|r| Member {
            name: r.name.clone(),
            url: r.url.clone(),
            primary: false,
        })
        .collect();
    Ok((primary, replicas))
}

/// Commands that are PostgreSQL's only.
pub(crate) fn not_for(db: &Database, command: &str, why: &str) -> anyhow::Error {
    ConfigFileError(format!(
        "database '{}' runs {}: `georep db {command}` is for PostgreSQL ({why})",
        db.name, db.engine
    ))
    .into()
}

pub(crate) async fn setup(
    db: &Database,
    output: Output,
    opts: &georep_db::mysql::setup::SetupOptions,
) -> Result<u8> {
    let (p, rs) = members(db)?;
    let r = georep_db::mysql::setup::setup(&p, &rs, opts).await?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "database": db.name,
                "replicas": r.replicas.iter().map(|(n, how)| serde_json::json!({"replica": n, "done": how})).collect::<Vec<_>>(),
                "databases": r.databases,
                "tables": r.tables,
                "rows": r.rows,
                "gtid": r.gtid,
                "warnings": r.warnings,
                "duration_ms": r.duration_ms,
            }))?
        ),
        Output::Text => {
            for (n, how) in &r.replicas {
                println!(
                    "{n}: {}",
                    if *how == "copied" {
                        format!(
                            "copied {} tables, {} rows from one snapshot at GTID {}; replicating from there",
                            r.tables, r.rows, r.gtid
                        )
                    } else {
                        "already replicating from this primary; started again".to_string()
                    }
                );
            }
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "database {}: {} replica(s) in {:.1}s",
                db.name,
                r.replicas.len(),
                r.duration_ms as f64 / 1000.0
            );
        }
    }
    Ok(0)
}

pub(crate) async fn status(db: &Database, output: Output) -> Result<u8> {
    let (p, rs) = members(db)?;
    let st =
        georep_db::mysql::status::status(&p, &rs, db.rpo, georep_db::mysql::status::LagBy::Waiting)
            .await?;
    let bad = st.iter().any(|r| {
        r.rpo_breached || r.last_error.is_some() || r.io_running != "Yes" || r.sql_running != "Yes"
    });
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "database": db.name,
                "replicas": st.iter().map(|r| serde_json::json!({
                    "replica": r.name,
                    "io_running": r.io_running,
                    "sql_running": r.sql_running,
                    "gtid_distance": r.gtid_distance,
                    "lag_seconds": r.lag_seconds,
                    "rpo_breached": r.rpo_breached,
                    "relay_log_unapplied": r.relay_behind,
                    "relay_log_bytes": r.relay_log_bytes,
                    "applied": r.applied,
                    "last_error": r.last_error,
                })).collect::<Vec<_>>(),
            }))?
        ),
        Output::Text => {
            for r in &st {
                println!(
                    "{:<12} io {:<10} sql {:<4} lag {}{} {} transaction(s) behind{}{}",
                    r.name,
                    r.io_running,
                    r.sql_running,
                    r.lag_seconds.map_or_else(
                        || format!("over {:.0}s", db.rpo.as_secs_f64()),
                        |l| format!("{l:.3}s")
                    ),
                    if r.rpo_breached { " RPO BREACHED" } else { "" },
                    r.gtid_distance,
                    if r.relay_behind {
                        " (some received, not yet applied)"
                    } else {
                        ""
                    },
                    r.last_error
                        .as_deref()
                        .map(|e| format!("  ERROR: {e}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(if bad { crate::exit::DIFFERENCES } else { 0 })
}

pub(crate) async fn verify(
    db: &Database,
    opts: &georep_db::postgres::VerifyOptions,
) -> Result<georep_db::postgres::VerifyReport> {
    let (p, rs) = members(db)?;
    Ok(georep_db::mysql::verify::verify(&db.name, &p, &rs, opts).await?)
}

pub(crate) async fn teardown(db: &Database, output: Output) -> Result<u8> {
    let (_, rs) = members(db)?;
    let done = georep_db::mysql::status::teardown(&rs).await?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"database": db.name, "replication_stopped": done})
            )?
        ),
        Output::Text => println!(
            "replication stopped and its source forgotten on: {} (data and users stay)",
            done.join(", ")
        ),
    }
    Ok(0)
}
