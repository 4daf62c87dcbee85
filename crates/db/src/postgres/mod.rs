//! PostgreSQL geo-replicas over native logical replication, driven through SQL only.
//!
//! One publication on the primary (`georep_<db>`), and per replica one subscription and
//! one slot (`georep_<db>_<replica>`), so every object georep creates is recognisable by
//! name and `teardown` can remove exactly those.

mod conn;
mod copy;
mod ddl;
mod drift;
mod setup;
mod status;
mod switchover;
mod teardown;
mod verify;

pub use conn::connect;
pub use copy::{copy, CopyOptions, CopyReport, CopyTable};
pub use ddl::{ddl, primary_first, DdlReport};
pub use drift::{schema_drift, sequence_drift, sync_sequences, SchemaDiff, SequenceDrift};
pub use setup::{setup, SetupProgress, SetupReport};
pub use status::{status, ReplicaStatus};
pub use switchover::{
    preflight, prepare_reseed, promote, replica_lag, rotated, set_fence, settle, switchover,
    Settled, SwitchoverReport,
};
pub use teardown::{teardown, TeardownReport};
/// The connection type `connect` returns.
pub use tokio_postgres::Client;
pub use verify::{verify, RangeDiff, TableCheck, VerifyOptions, VerifyReport};

use georep_core::Database;

/// The publication of a database on its primary.
pub fn publication_name(db: &Database) -> String {
    ident(&format!("georep_{}", db.name))
}

/// The subscription on a replica, which is also its slot's name on the primary.
pub fn subscription_name(db: &Database, replica: &str) -> String {
    ident(&format!("georep_{}_{}", db.name, replica))
}

/// `start + d`, or 100 years after `start` when that is past what the clock can hold:
/// a deadline from a huge timeout means "never", not a panic.
fn deadline_after(start: std::time::Instant, d: std::time::Duration) -> std::time::Instant {
    start
        .checked_add(d)
        .or_else(|| start.checked_add(georep_core::MAX_DURATION))
        .unwrap_or(start)
}

/// A lowercase identifier of at most 63 bytes made of `[a-z0-9_]`.
fn ident(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(63);
    out
}

/// Table definitions from `pg_dump --schema-only` (one `--section` of them, if given),
/// ready to run over a SQL connection.
pub(crate) async fn schema_dump(
    url: &str,
    section: Option<&str>,
    tables: &[String],
) -> crate::Result<String> {
    let mut cmd = tokio::process::Command::new("pg_dump");
    cmd.args([
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--no-publications",
        "--no-subscriptions",
    ]);
    if let Some(s) = section {
        cmd.arg(format!("--section={s}"));
    }
    for t in tables {
        let (s, n) = t.split_once('.').unwrap_or(("public", t));
        cmd.arg("-t")
            .arg(format!("{}.{}", quote_ident(s), quote_ident(n)));
    }
    cmd.arg("-d").arg(url).stdin(std::process::Stdio::null());
    let out = cmd.output().await.map_err(|e| {
        crate::DbError::Tool(format!(
            "cannot run pg_dump ({e}); install the PostgreSQL client tools (apt-get install -y postgresql-client) matching the server's major version"
        ))
    })?;
    if !out.status.success() {
        return Err(crate::DbError::Tool(format!(
            "pg_dump --schema-only of {} failed: {}",
            georep_core::redact_url(url),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // Newer pg_dump wraps its output in psql-only \restrict lines; drop them.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Stops a subscription and drops it without touching its slot (the caller drops the
/// slot on the publisher, or the publisher is gone), in one transaction: the member
/// either still follows or no longer does.
pub(crate) async fn drop_subscription(
    c: &tokio_postgres::Client,
    who: &str,
    name: &str,
) -> crate::Result<()> {
    let q = quote_ident(name);
    // One simple-query message runs as one implicit transaction; DROP SUBSCRIPTION is
    // allowed in it once the slot is detached.
    c.batch_execute(&format!(
        "ALTER SUBSCRIPTION {q} DISABLE; ALTER SUBSCRIPTION {q} SET (slot_name = NONE); DROP SUBSCRIPTION {q}"
    ))
    .await
    .map_err(|e| crate::DbError::sql(who, e))
}

/// Drops replication slot `slot` if it exists, ending the WAL sender that holds it
/// first. Returns whether a slot was dropped.
pub(crate) async fn drop_slot(
    c: &tokio_postgres::Client,
    who: &str,
    slot: &str,
) -> crate::Result<bool> {
    for _ in 0..50 {
        let active: Option<Option<i32>> = c
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| crate::DbError::sql(who, e))?
            .map(|r| r.get(0));
        match active {
            None => return Ok(false),
            Some(Some(pid)) => {
                c.query("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(|e| crate::DbError::sql(who, e))?;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Some(None) => match c
                .query("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
            {
                Ok(_) => return Ok(true),
                // Re-acquired between the check and the drop: try again.
                Err(e) if e.code().map(|c| c.code()) == Some("55006") => continue,
                Err(e) => return Err(crate::DbError::sql(who, e)),
            },
        }
    }
    Err(crate::DbError::Sql {
        member: who.to_string(),
        detail: format!("replication slot {slot} stays in use; end its WAL sender and run SELECT pg_drop_replication_slot('{slot}')"),
    })
}

/// `"schema"."table"`, quoted for SQL.
pub(crate) fn quote_table(qualified: &str) -> String {
    let (schema, table) = qualified.split_once('.').unwrap_or(("public", qualified));
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_identifiers() {
        assert_eq!(ident("georep_Orders-EU.1"), "georep_orders_eu_1");
        assert_eq!(ident(&"x".repeat(100)).len(), 63);
        assert_eq!(quote_table("public.t"), "\"public\".\"t\"");
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }
}
