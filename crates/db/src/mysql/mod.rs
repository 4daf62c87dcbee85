//! MariaDB and MySQL geo-replicas over SQL only (issue 13, in progress): connections
//! and URLs (`conn`), GTID positions (`gtid`), the prerequisite checks that `georep db
//! setup` runs before anything else (`check`), the snapshot copy and GTID replication
//! (`setup`), `status` (lag measured by a heartbeat) and `teardown`, and `verify`.
//! Failover groups' role changes are in `switchover`. Everything is written once for
//! both families: the statements that differ are in `sql` ([`Dialect`]) and GTID
//! histories in `gtid` ([`gtid::Gtids`]). MariaDB runs against real servers in the
//! tests; MySQL 8 cannot be installed on the test machines, so its statements and GTID
//! set arithmetic are unit-tested only.

pub mod check;
pub mod conn;
pub mod gtid;
pub mod setup;
pub mod sql;
pub mod status;
pub mod switchover;
pub mod verify;

pub use conn::{connect, parse_url, MyUrl, SslMode};

/// Which server family a member runs; the SQL differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    MariaDb,
    MySql,
}

impl Dialect {
    /// From `SELECT VERSION()`: MariaDB says so (`10.11.19-MariaDB-...`).
    pub fn of_version(version: &str) -> Self {
        if version.to_ascii_lowercase().contains("mariadb") {
            Self::MariaDb
        } else {
            Self::MySql
        }
    }

    /// The family a database's `engine` names.
    pub fn of_engine(e: georep_core::DbEngine) -> Self {
        match e {
            georep_core::DbEngine::MySql => Self::MySql,
            _ => Self::MariaDb,
        }
    }

    /// The family a connected server belongs to, and its version.
    pub async fn of_server(c: &mut mysql_async::Conn, who: &str) -> crate::Result<(Self, String)> {
        use mysql_async::prelude::Queryable;
        let v: String = c
            .query_first("SELECT VERSION()")
            .await
            .map_err(|e| crate::DbError::mysql(who, e))?
            .unwrap_or_default();
        Ok((Self::of_version(&v), v))
    }

    /// The server variable that makes a replica write what it applies to its own binary
    /// log (so it can become a primary with the history).
    pub fn log_replica_updates(self) -> &'static str {
        match self {
            Self::MariaDb => "log_slave_updates",
            Self::MySql => "log_replica_updates",
        }
    }
}

/// One row's string column by name (`None` for NULL, a missing column or a value
/// that is not text): never panics on what a server sends.
pub(crate) fn text(row: &mysql_async::Row, col: &str) -> Option<String> {
    row.get_opt::<Option<String>, _>(col)
        .and_then(std::result::Result::ok)
        .flatten()
}

/// The schemas a server keeps for itself; never replicated or checked.
pub const SYSTEM_SCHEMAS: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];

/// [`SYSTEM_SCHEMAS`] as an SQL list: `'mysql','information_schema',...`.
pub(crate) fn system_schemas_sql() -> String {
    SYSTEM_SCHEMAS
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `name` quoted as an identifier (`a``b`).
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A column as it is read in text: FLOAT prints only 6 significant digits, so it is
/// read as DOUBLE, which loads back into a FLOAT exactly and hashes every bit.
pub(crate) fn read_expr(name: &str, data_type: &str) -> String {
    if data_type.eq_ignore_ascii_case("float") {
        format!("CAST({} AS DOUBLE)", quote_ident(name))
    } else {
        quote_ident(name)
    }
}
