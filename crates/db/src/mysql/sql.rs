//! The replication statements that differ between MariaDB 10.11 and MySQL 8.0.23+/8.4,
//! in one place. MariaDB's are run against real servers by the tests; MySQL 8 cannot be
//! installed on the test machines, so its strings are pinned by the unit tests below
//! against the reference manual (dev.mysql.com/doc/refman/8.4/en/: change-replication-
//! source-to.html, show-replica-status.html, gtid-functions.html,
//! reset-binary-logs-and-gtids.html, server-system-variables.html#sysvar_super_read_only).

use super::Dialect;

/// Where a replica connects and how (the password is part of the statement, so
/// callers never print it or a server's error that quotes it).
pub struct Source<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    /// Encrypt the link.
    pub tls: bool,
    /// Check the source's certificate against the replica server's CA list.
    pub verify: bool,
}

/// A string literal: quotes and backslashes escaped.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

impl Dialect {
    /// Points a stopped replica at `src`, positioned by GTID (MariaDB: from its
    /// `gtid_slave_pos`; MySQL: auto-positioning from its `gtid_executed`).
    pub fn change_source(self, src: &Source<'_>) -> String {
        let (h, p, u, pw) = (
            literal(src.host),
            src.port,
            literal(src.user),
            literal(src.password),
        );
        match self {
            Self::MariaDb => format!(
                "CHANGE MASTER TO MASTER_HOST = {h}, MASTER_PORT = {p}, MASTER_USER = {u}, MASTER_PASSWORD = {pw}, MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1{}",
                match (src.tls, src.verify) {
                    (false, _) => "",
                    (true, false) => ", MASTER_SSL = 1",
                    (true, true) => ", MASTER_SSL = 1, MASTER_SSL_VERIFY_SERVER_CERT = 1",
                }
            ),
            Self::MySql => format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST = {h}, SOURCE_PORT = {p}, SOURCE_USER = {u}, SOURCE_PASSWORD = {pw}, SOURCE_AUTO_POSITION = 1, SOURCE_CONNECT_RETRY = 1{}",
                match (src.tls, src.verify) {
                    // caching_sha2_password over a plain link needs the server's key.
                    (false, _) => ", GET_SOURCE_PUBLIC_KEY = 1",
                    (true, false) => ", SOURCE_SSL = 1",
                    (true, true) => ", SOURCE_SSL = 1, SOURCE_SSL_VERIFY_SERVER_CERT = 1",
                }
            ),
        }
    }

    pub fn start_replica(self) -> &'static str {
        match self {
            Self::MariaDb => "START SLAVE",
            Self::MySql => "START REPLICA",
        }
    }

    pub fn stop_replica(self) -> &'static str {
        match self {
            Self::MariaDb => "STOP SLAVE",
            Self::MySql => "STOP REPLICA",
        }
    }

    /// Stops fetching only: what arrived can still be applied.
    pub fn stop_fetching(self) -> &'static str {
        match self {
            Self::MariaDb => "STOP SLAVE IO_THREAD",
            Self::MySql => "STOP REPLICA IO_THREAD",
        }
    }

    /// Forgets the source: the point of no return of a promotion.
    pub fn forget_source(self) -> &'static str {
        match self {
            Self::MariaDb => "RESET SLAVE ALL",
            Self::MySql => "RESET REPLICA ALL",
        }
    }

    pub fn replica_status(self) -> &'static str {
        match self {
            Self::MariaDb => "SHOW SLAVE STATUS",
            Self::MySql => "SHOW REPLICA STATUS",
        }
    }

    /// Column names of the replica status row: (IO thread, SQL thread, source host,
    /// source port, GTIDs received).
    pub fn status_columns(self) -> [&'static str; 5] {
        match self {
            Self::MariaDb => [
                "Slave_IO_Running",
                "Slave_SQL_Running",
                "Master_Host",
                "Master_Port",
                "Gtid_IO_Pos",
            ],
            Self::MySql => [
                "Replica_IO_Running",
                "Replica_SQL_Running",
                "Source_Host",
                "Source_Port",
                "Retrieved_Gtid_Set",
            ],
        }
    }

    /// Everything the server executed or logged, as a GTID position or set.
    pub fn executed(self) -> &'static str {
        match self {
            Self::MariaDb => "SELECT @@gtid_binlog_pos",
            Self::MySql => "SELECT @@GLOBAL.gtid_executed",
        }
    }

    /// What a replica applied from its sources.
    pub fn applied(self) -> &'static str {
        match self {
            Self::MariaDb => "SELECT @@gtid_slave_pos",
            Self::MySql => "SELECT @@GLOBAL.gtid_executed",
        }
    }

    /// Waits until the server executed the GTIDs of the first parameter, at most the
    /// second (seconds); the result is read by [`Self::waited`].
    pub fn wait_executed(self) -> &'static str {
        match self {
            Self::MariaDb => "SELECT MASTER_GTID_WAIT(?, ?)",
            Self::MySql => "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)",
        }
    }

    /// Whether a [`Self::wait_executed`] result means "reached" (MariaDB: 0, -1 on
    /// timeout; MySQL: 0, 1 on timeout).
    pub fn waited(self, result: Option<i64>) -> bool {
        result == Some(0)
    }

    /// Fences (or unfences) client writes. MySQL's `super_read_only` also binds
    /// SUPER and CONNECTION_ADMIN sessions; MariaDB's `read_only` binds all but READ_ONLY
    /// ADMIN. Turning MySQL's off needs both variables (`super_read_only` implies
    /// `read_only`).
    pub fn fence(self, on: bool) -> &'static str {
        match (self, on) {
            (Self::MariaDb, true) => "SET GLOBAL read_only = 1",
            (Self::MariaDb, false) => "SET GLOBAL read_only = 0",
            (Self::MySql, true) => "SET GLOBAL super_read_only = 1",
            (Self::MySql, false) => "SET GLOBAL super_read_only = 0; SET GLOBAL read_only = 0",
        }
    }

    /// Statements that make a stopped replica start after `gtid` (a copy's position):
    /// MariaDB sets its slave position; MySQL empties its binary log and GTID history
    /// (8.4 renamed `RESET MASTER`) and declares `gtid` purged.
    pub fn start_after(self, version: &str, gtid: &str) -> Vec<String> {
        match self {
            Self::MariaDb => vec![format!("SET GLOBAL gtid_slave_pos = {}", literal(gtid))],
            Self::MySql => vec![
                self.reset_log(version).into(),
                format!("SET GLOBAL gtid_purged = {}", literal(gtid)),
            ],
        }
    }

    /// Holds commits for the instant the copy's snapshot sessions start (both need
    /// RELOAD). MariaDB blocks commits only (`BACKUP STAGE BLOCK_COMMIT`, as mydumper
    /// does) and can do without: each session reads its own snapshot's position.
    /// MySQL has no such position, so it takes the global read lock, as mysqldump
    /// does, and reads `gtid_executed` while holding it. If georep vanishes meanwhile,
    /// the server ends the session, and the hold, within a minute.
    pub fn hold_commits(self) -> &'static str {
        match self {
            Self::MariaDb => "SET SESSION lock_wait_timeout = 10, wait_timeout = 60; BACKUP STAGE START; BACKUP STAGE BLOCK_COMMIT",
            Self::MySql => "SET SESSION lock_wait_timeout = 10, wait_timeout = 60; FLUSH TABLES WITH READ LOCK",
        }
    }

    pub fn release_commits(self) -> &'static str {
        match self {
            Self::MariaDb => "BACKUP STAGE END",
            Self::MySql => "UNLOCK TABLES",
        }
    }

    /// What a primary-to-be has done itself, including what it logged as a primary
    /// before (MariaDB: `gtid_current_pos`).
    pub fn current(self) -> &'static str {
        match self {
            Self::MariaDb => "SELECT @@gtid_current_pos",
            Self::MySql => "SELECT @@GLOBAL.gtid_executed",
        }
    }

    /// Empties the binary log and its GTID history (8.4 renamed `RESET MASTER`).
    pub fn reset_log(self, version: &str) -> &'static str {
        match self {
            Self::MySql if mysql_at_least(version, 8, 4) => "RESET BINARY LOGS AND GTIDS",
            _ => "RESET MASTER",
        }
    }

    /// The replica status column and value that say "positioned by GTID".
    pub fn gtid_positioned(self) -> (&'static str, &'static str) {
        match self {
            Self::MariaDb => ("Using_Gtid", "Slave_Pos"),
            Self::MySql => ("Auto_Position", "1"),
        }
    }

    /// GTID-mode prerequisites beyond the binary log: (variable, required value).
    pub fn gtid_prerequisites(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::MariaDb => &[("gtid_strict_mode", "ON"), ("log_slave_updates", "ON")],
            Self::MySql => &[
                ("gtid_mode", "ON"),
                ("enforce_gtid_consistency", "ON"),
                ("log_replica_updates", "ON"),
            ],
        }
    }
}

/// Whether a MySQL `VERSION()` (`8.4.2`, `8.0.36-log`) is at least `major.minor`.
fn mysql_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut it = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let v = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    v >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(tls: bool, verify: bool) -> Source<'static> {
        Source {
            host: "db-we.example",
            port: 3306,
            user: "repl",
            password: "p'w\\x",
            tls,
            verify,
        }
    }

    #[test]
    fn mysql_8_points_a_replica_with_auto_positioning_and_keeps_tls() {
        assert_eq!(
            Dialect::MySql.change_source(&src(true, true)),
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST = 'db-we.example', SOURCE_PORT = 3306, SOURCE_USER = 'repl', SOURCE_PASSWORD = 'p''w\\\\x', SOURCE_AUTO_POSITION = 1, SOURCE_CONNECT_RETRY = 1, SOURCE_SSL = 1, SOURCE_SSL_VERIFY_SERVER_CERT = 1"
        );
        assert!(Dialect::MySql
            .change_source(&src(false, false))
            .ends_with("SOURCE_CONNECT_RETRY = 1, GET_SOURCE_PUBLIC_KEY = 1"));
        assert!(Dialect::MySql
            .change_source(&src(true, false))
            .ends_with(", SOURCE_SSL = 1"));
        assert_eq!(
            Dialect::MariaDb.change_source(&src(false, false)),
            "CHANGE MASTER TO MASTER_HOST = 'db-we.example', MASTER_PORT = 3306, MASTER_USER = 'repl', MASTER_PASSWORD = 'p''w\\\\x', MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1"
        );
    }

    #[test]
    fn mysql_8_uses_the_replica_words_that_8_4_kept() {
        let m = Dialect::MySql;
        assert_eq!(
            [
                m.start_replica(),
                m.stop_replica(),
                m.stop_fetching(),
                m.forget_source(),
                m.replica_status()
            ],
            [
                "START REPLICA",
                "STOP REPLICA",
                "STOP REPLICA IO_THREAD",
                "RESET REPLICA ALL",
                "SHOW REPLICA STATUS"
            ]
        );
        assert_eq!(
            m.status_columns(),
            [
                "Replica_IO_Running",
                "Replica_SQL_Running",
                "Source_Host",
                "Source_Port",
                "Retrieved_Gtid_Set"
            ]
        );
        // No SLAVE or MASTER keyword survives in any MySQL statement (8.4 removed them).
        let all = [
            m.start_replica(),
            m.stop_replica(),
            m.stop_fetching(),
            m.forget_source(),
            m.replica_status(),
            m.executed(),
            m.wait_executed(),
            m.fence(true),
            m.fence(false),
        ];
        for s in all {
            assert!(!s.contains("SLAVE") && !s.contains("MASTER"), "{s}");
        }
        assert!(!m.change_source(&src(true, true)).contains("MASTER"));
    }

    #[test]
    fn mysql_8_waits_fences_and_positions_by_gtid_sets() {
        let m = Dialect::MySql;
        assert_eq!(m.wait_executed(), "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)");
        assert!(m.waited(Some(0)));
        // WAIT_FOR_EXECUTED_GTID_SET returns 1 on timeout; MASTER_GTID_WAIT -1.
        assert!(!m.waited(Some(1)));
        assert!(!Dialect::MariaDb.waited(Some(-1)));
        assert!(!m.waited(None));
        assert_eq!(m.fence(true), "SET GLOBAL super_read_only = 1");
        assert_eq!(
            m.fence(false),
            "SET GLOBAL super_read_only = 0; SET GLOBAL read_only = 0"
        );
        let set = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-77";
        assert_eq!(
            m.start_after("8.4.2", set),
            vec![
                "RESET BINARY LOGS AND GTIDS".to_string(),
                format!("SET GLOBAL gtid_purged = '{set}'")
            ]
        );
        assert_eq!(m.start_after("8.0.36-log", set)[0], "RESET MASTER");
        assert_eq!(
            Dialect::MariaDb.start_after("10.11.19-MariaDB", "0-1-5"),
            vec!["SET GLOBAL gtid_slave_pos = '0-1-5'".to_string()]
        );
        assert!(m.hold_commits().ends_with("; FLUSH TABLES WITH READ LOCK"));
        assert_eq!(m.release_commits(), "UNLOCK TABLES");
        assert!(Dialect::MariaDb
            .hold_commits()
            .ends_with("BACKUP STAGE START; BACKUP STAGE BLOCK_COMMIT"));
        assert_eq!(m.current(), "SELECT @@GLOBAL.gtid_executed");
        assert_eq!(m.applied(), "SELECT @@GLOBAL.gtid_executed");
        assert_eq!(m.executed(), "SELECT @@GLOBAL.gtid_executed");
        assert_eq!(m.gtid_positioned(), ("Auto_Position", "1"));
        assert_eq!(
            Dialect::MariaDb.reset_log("10.11.19-MariaDB"),
            "RESET MASTER"
        );
        assert_eq!(m.reset_log("8.4.3"), "RESET BINARY LOGS AND GTIDS");
        assert_eq!(
            m.gtid_prerequisites()
                .iter()
                .map(|(v, _)| *v)
                .collect::<Vec<_>>(),
            [
                "gtid_mode",
                "enforce_gtid_consistency",
                "log_replica_updates"
            ]
        );
    }

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert!(mysql_at_least("8.4.0", 8, 4));
        assert!(mysql_at_least("9.1.0", 8, 4));
        assert!(!mysql_at_least("8.0.40", 8, 4));
        assert!(!mysql_at_least("", 8, 4));
    }
}
