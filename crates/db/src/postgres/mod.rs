//! PostgreSQL geo-replicas over native logical replication, driven through SQL only.
//!
//! One publication on the primary (`georep_<db>`), and per replica one subscription and
//! one slot (`georep_<db>_<replica>`), so every object georep creates is recognisable by
//! name and `teardown` can remove exactly those.

mod catalog;
mod conn;
mod copy;
mod ddl;
mod drift;
mod publication;
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

/// The publication of a database on its primary (named in the topology's model, which
/// also checks that no two databases share one).
pub fn publication_name(db: &Database) -> String {
    db.publication_name()
}

/// The subscription on a replica, which is also its slot's name on the primary.
pub fn subscription_name(db: &Database, replica: &str) -> String {
    db.subscription_name(replica)
}

/// `start + d`, or 100 years after `start` when that is past what the clock can hold:
/// a deadline from a huge timeout means "never", not a panic.
fn deadline_after(start: std::time::Instant, d: std::time::Duration) -> std::time::Instant {
    start
        .checked_add(d)
        .or_else(|| start.checked_add(georep_core::MAX_DURATION))
        .unwrap_or(start)
}

/// How pg_dump is run: its arguments, and the environment that tells it where to
/// connect. The URL is never an argument: argv is world-readable (`ps`, /proc), so the
/// password travels in the child's `PGPASSWORD` and the rest in `PGHOST`, `PGPORT`, ...
#[derive(Debug)]
struct PgDump {
    args: Vec<String>,
    env: Vec<(&'static str, std::ffi::OsString)>,
}

/// The pg_dump invocation for `url`, read with the same parser `connect` uses so both
/// reach the same server as the same user.
fn pg_dump_invocation(
    url: &str,
    section: Option<&str>,
    tables: &[String],
) -> crate::Result<PgDump> {
    use std::ffi::OsString;
    use tokio_postgres::config::{Host, SslMode, TargetSessionAttrs};

    let cfg: tokio_postgres::Config = georep_core::pg_connect_url(url).parse().map_err(|e| {
        crate::DbError::InvalidConfig(format!(
            "invalid PostgreSQL URL {}: {e}",
            georep_core::redact_url(url)
        ))
    })?;
    let mut args: Vec<String> = [
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--no-publications",
        "--no-subscriptions",
        "--no-password",
    ]
    .map(String::from)
    .to_vec();
    if let Some(s) = section {
        args.push(format!("--section={s}"));
    }
    for t in tables {
        args.push("-t".into());
        args.push(quote_table(t));
    }
    let join = |parts: Vec<String>| OsString::from(parts.join(","));
    let mut env: Vec<(&'static str, OsString)> = Vec::new();
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        env.push(("PGHOST", join(hosts)));
    }
    let addrs: Vec<String> = cfg.get_hostaddrs().iter().map(|a| a.to_string()).collect();
    if !addrs.is_empty() {
        env.push(("PGHOSTADDR", join(addrs)));
    }
    let ports: Vec<String> = cfg.get_ports().iter().map(|p| p.to_string()).collect();
    env.push((
        "PGPORT",
        if ports.is_empty() {
            "5432".into()
        } else {
            join(ports)
        },
    ));
    if let Some(user) = cfg.get_user() {
        env.push(("PGUSER", user.into()));
        // tokio-postgres's default database is the user's name; libpq's would be PGDATABASE.
        env.push(("PGDATABASE", cfg.get_dbname().unwrap_or(user).into()));
    } else if let Some(db) = cfg.get_dbname() {
        env.push(("PGDATABASE", db.into()));
    }
    if let Some(pw) = cfg.get_password() {
        env.push((
            "PGPASSWORD",
            std::os::unix::ffi::OsStringExt::from_vec(pw.to_vec()),
        ));
    }
    let sslmode = match cfg.get_ssl_mode() {
        SslMode::Disable => "disable",
        SslMode::Require => "require",
        _ => "prefer",
    };
    env.push(("PGSSLMODE", sslmode.into()));
    if let Some(o) = cfg.get_options() {
        env.push(("PGOPTIONS", o.into()));
    }
    if let Some(a) = cfg.get_application_name() {
        env.push(("PGAPPNAME", a.into()));
    }
    if let Some(t) = cfg.get_connect_timeout() {
        env.push(("PGCONNECT_TIMEOUT", t.as_secs().max(1).to_string().into()));
    }
    match cfg.get_target_session_attrs() {
        TargetSessionAttrs::ReadWrite => env.push(("PGTARGETSESSIONATTRS", "read-write".into())),
        TargetSessionAttrs::ReadOnly => env.push(("PGTARGETSESSIONATTRS", "read-only".into())),
        _ => {}
    }
    Ok(PgDump { args, env })
}

/// Table definitions from `pg_dump --schema-only` (one `--section` of them, if given),
/// ready to run over a SQL connection.
pub(crate) async fn schema_dump(
    url: &str,
    section: Option<&str>,
    tables: &[String],
) -> crate::Result<String> {
    let inv = pg_dump_invocation(url, section, tables)?;
    let mut cmd = tokio::process::Command::new("pg_dump");
    cmd.args(&inv.args)
        .envs(inv.env)
        .stdin(std::process::Stdio::null());
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

/// `schema.table` (exact catalog names, as the topology keeps them) split in two; a
/// bare name is in `public`.
pub(crate) fn split_table(qualified: &str) -> (&str, &str) {
    qualified.split_once('.').unwrap_or(("public", qualified))
}

/// `"schema"."table"`, quoted for SQL. Names come from the catalog or the topology
/// exactly as spelled there, so every one is quoted: `Orders` must not become `orders`.
pub(crate) fn quote_table(qualified: &str) -> String {
    let (schema, table) = split_table(qualified);
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
        assert_eq!(quote_table("public.t"), "\"public\".\"t\"");
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }

    /// The password is never an argument (argv is visible to every user through `ps`):
    /// it and the connection parameters go to pg_dump through its environment.
    #[test]
    fn pg_dump_gets_no_password_on_its_command_line() {
        let url =
            "postgresql://app:S3cr%40t%20pw@db-qc:6432/orders?sslmode=require&application_name=x";
        let inv =
            pg_dump_invocation(url, Some("pre-data"), &["sales.Orders".into()]).expect("valid");
        let argv = inv.args.join(" ");
        for part in ["S3cr", "db-qc", "6432", "app", "orders?", "postgres"] {
            assert!(!argv.contains(part), "{part} in argv: {argv}");
        }
        assert!(
            argv.contains("--no-password") && argv.contains("--section=pre-data"),
            "{argv}"
        );
        assert!(argv.contains("-t \"sales\".\"Orders\""), "{argv}");
        let env: std::collections::BTreeMap<&str, String> = inv
            .env
            .iter()
            .map(|(k, v)| (*k, v.to_string_lossy().into_owned()))
            .collect();
        let want = [
            ("PGHOST", "db-qc"),
            ("PGPORT", "6432"),
            ("PGUSER", "app"),
            ("PGDATABASE", "orders"),
            ("PGPASSWORD", "S3cr@t pw"),
            ("PGSSLMODE", "require"),
            ("PGAPPNAME", "x"),
        ];
        for (k, v) in want {
            assert_eq!(env.get(k).map(String::as_str), Some(v), "{k} in {env:?}");
        }

        // ?password= is read the same way, and no password means no PGPASSWORD.
        let inv = pg_dump_invocation("postgres://app@h1,h2:5433/d?password=pw2", None, &[])
            .expect("valid");
        assert!(!inv.args.join(" ").contains("pw2"));
        let env: Vec<_> = inv
            .env
            .iter()
            .map(|(k, v)| (*k, v.to_string_lossy().into_owned()))
            .collect();
        assert!(env.contains(&("PGPASSWORD", "pw2".into())), "{env:?}");
        assert!(env.contains(&("PGHOST", "h1,h2".into())), "{env:?}");
        let inv = pg_dump_invocation("postgres://app@h/d", None, &[]).expect("valid");
        assert!(inv.env.iter().all(|(k, _)| *k != "PGPASSWORD"));

        let err = pg_dump_invocation("postgres://app:pw9@h/d?bogus=1", None, &[])
            .expect_err("unknown option")
            .to_string();
        assert!(!err.contains("pw9"), "{err}");
    }
}
