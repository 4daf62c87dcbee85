//! The fence on a member (new client sessions read-only), the gate that closes its
//! database to new non-superuser sessions during a planned switchover, reaching an old
//! primary a crashed switchover left closed, and ending client sessions.

use std::time::{Duration, Instant};

use super::exec;
use crate::error::{DbError, Result};
use crate::postgres::conn::connect;
use crate::postgres::quote_ident;

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
pub(super) async fn set_gate(c: &tokio_postgres::Client, who: &str, closed: bool) -> Result<()> {
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
pub(super) async fn connect_through_gate(who: &str, url: &str) -> Result<tokio_postgres::Client> {
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

/// Ends every client session of the database and waits until they are gone, so no
/// commit can still be in flight when the fence position is read.
pub(super) async fn end_client_sessions(p: &tokio_postgres::Client) -> Result<()> {
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
}
