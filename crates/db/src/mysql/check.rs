//! The prerequisites `georep db setup` checks on every member before it changes
//! anything, all reported at once, each with its fix: versions, the binary log and its
//! format, GTIDs, unique server ids, replicas that log what they apply, the users'
//! privileges, and tables without a primary key or on an engine without snapshots.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use super::{conn, quote_ident, text, Dialect};
use crate::error::{DbError, Result};

/// A member to check (no `Debug`: the URL may hold a password).
#[derive(Clone)]
pub struct Member {
    pub name: String,
    pub url: String,
    pub primary: bool,
}

/// What a member runs, as the checks read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub member: String,
    pub dialect: Dialect,
    pub version: String,
    pub server_id: u64,
}

async fn one_row(c: &mut Conn, member: &str, sql: &str) -> Result<Row> {
    c.query_first::<Row, _>(sql)
        .await
        .map_err(|e| DbError::mysql(member, e))?
        .ok_or_else(|| DbError::Sql {
            member: member.into(),
            detail: format!("no row from {sql}"),
        })
}

/// Global privileges of the session's user from `SHOW GRANTS` (`ON *.*` lines).
async fn global_privileges(c: &mut Conn, member: &str) -> Result<Vec<String>> {
    let grants: Vec<String> = c
        .query("SHOW GRANTS")
        .await
        .map_err(|e| DbError::mysql(member, e))?;
    Ok(parse_grants(&grants))
}

/// The privileges named in `GRANT ... ON *.* TO ...` lines, upper case.
pub fn parse_grants(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for l in lines {
        let Some(rest) = l.strip_prefix("GRANT ") else {
            continue;
        };
        let Some((privs, on)) = rest.split_once(" ON ") else {
            continue;
        };
        if !on.trim_start().starts_with("*.*") {
            continue;
        }
        out.extend(privs.split(',').map(|p| p.trim().to_ascii_uppercase()));
    }
    out
}

/// Whether `have` grants `want`; SUPER still covers the privileges MariaDB 10.5 split
/// out of it, and the MySQL names of the same rights are accepted.
pub fn grants(have: &[String], want: &str) -> bool {
    const SUPER_COVERS: &[&str] = &[
        "REPLICATION SLAVE ADMIN",
        "BINLOG ADMIN",
        "BINLOG MONITOR",
        "SLAVE MONITOR",
        "REPLICATION CLIENT",
        "CONNECTION ADMIN",
        "REPLICATION_SLAVE_ADMIN",
        "SYSTEM_VARIABLES_ADMIN",
    ];
    have.iter().any(|h| {
        h == "ALL PRIVILEGES"
            || h == want
            || (h == "SUPER" && SUPER_COVERS.contains(&want))
            // MySQL 8 names a few of MariaDB's rights differently.
            || (want == "SLAVE MONITOR" && h == "REPLICATION CLIENT")
            || (want == "BINLOG MONITOR" && h == "REPLICATION CLIENT")
    })
}

/// Checks every member; `Ok` with what they run when nothing is missing, otherwise
/// [`DbError::Prerequisites`] listing every problem with its fix. An unreachable
/// member or refused login is returned as such (exit 3), before anything else.
pub async fn check(expected: Dialect, members: &[Member]) -> Result<Vec<Facts>> {
    let mut problems = Vec::new();
    let mut facts = Vec::new();
    for m in members {
        let mut c = conn::connect(&m.name, &m.url).await?;
        let f = check_member(&mut c, expected, m, &mut problems).await;
        let _ = c.disconnect().await;
        facts.push(f?);
    }
    // Each member needs its own server id, or replication skips "its own" events.
    for (i, a) in facts.iter().enumerate() {
        if a.server_id == 0 {
            problems.push(format!(
                "{}: server_id is 0, which disables replication; give every member its own server_id (server option --server-id=N, or SET GLOBAL server_id = N and in the config)",
                a.member
            ));
        }
        for b in &facts[..i] {
            if a.server_id == b.server_id && a.server_id != 0 {
                problems.push(format!(
                    "{} and {} both have server_id {}: each member needs its own (server option --server-id=N)",
                    b.member, a.member, a.server_id
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(facts)
    } else {
        Err(DbError::Prerequisites(problems))
    }
}

async fn check_member(
    c: &mut Conn,
    expected: Dialect,
    m: &Member,
    problems: &mut Vec<String>,
) -> Result<Facts> {
    let name = &m.name;
    let row = one_row(
        c,
        name,
        "SELECT VERSION() AS version, @@server_id AS server_id, @@log_bin AS log_bin, @@binlog_format AS binlog_format, @@binlog_row_image AS binlog_row_image",
    )
    .await?;
    let version = text(&row, "version").unwrap_or_default();
    let dialect = Dialect::of_version(&version);
    let server_id = text(&row, "server_id")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let engine = |d: Dialect| match d {
        Dialect::MariaDb => "mariadb",
        Dialect::MySql => "mysql",
    };
    if dialect != expected {
        problems.push(format!(
            "{name} runs {version}, not {}: set engine = \"{}\" for this database",
            engine(expected),
            engine(dialect)
        ));
    }
    let major_minor: Vec<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .take(3)
        .filter_map(|p| p.parse().ok())
        .collect();
    let old = match (dialect, major_minor.as_slice()) {
        (Dialect::MariaDb, [maj, min, ..]) => (*maj, *min) < (10, 5),
        // CHANGE REPLICATION SOURCE and the REPLICA statements came in 8.0.23.
        (Dialect::MySql, [maj, min, patch, ..]) => (*maj, *min, *patch) < (8, 0, 23),
        (Dialect::MySql, [maj, ..]) => *maj < 8,
        _ => false,
    };
    if old {
        problems.push(format!(
            "{name} runs {version}: georep needs MariaDB 10.5 or later, or MySQL 8.0.23 or later; upgrade the server"
        ));
    }
    if text(&row, "log_bin").as_deref() != Some("1") {
        problems.push(format!(
            "{name}: the binary log is off; start the server with log_bin (option --log-bin), so it can be a source and take over as primary"
        ));
    }
    let format = text(&row, "binlog_format").unwrap_or_default();
    if !format.eq_ignore_ascii_case("ROW") {
        problems.push(format!(
            "{name}: binlog_format is {format}; set binlog_format = ROW (SET GLOBAL binlog_format = 'ROW', and in the config file)"
        ));
    }
    let image = text(&row, "binlog_row_image").unwrap_or_default();
    if !image.eq_ignore_ascii_case("FULL") {
        problems.push(format!(
            "{name}: binlog_row_image is {image}; set binlog_row_image = FULL (SET GLOBAL binlog_row_image = 'FULL', and in the config file)"
        ));
    }
    let var = dialect.log_replica_updates();
    let row = one_row(c, name, &format!("SELECT @@{var} AS v")).await?;
    if text(&row, "v").as_deref() != Some("1") {
        problems.push(format!(
            "{name}: {var} is off; turn it on (option --{}) and restart, so a replica writes what it applies to its binary log and can take over as primary",
            var.replace('_', "-")
        ));
    }
    match dialect {
        Dialect::MariaDb => {
            let row = one_row(c, name, "SELECT @@gtid_strict_mode AS v").await?;
            if text(&row, "v").as_deref() != Some("1") {
                problems.push(format!(
                    "{name}: gtid_strict_mode is off; SET GLOBAL gtid_strict_mode = 1 and set it in the config file, so GTID positions compare exactly"
                ));
            }
        }
        Dialect::MySql => {
            let row = one_row(
                c,
                name,
                "SELECT @@gtid_mode AS mode, @@enforce_gtid_consistency AS enforce",
            )
            .await?;
            if !text(&row, "mode").is_some_and(|v| v.eq_ignore_ascii_case("ON")) {
                problems.push(format!(
                    "{name}: gtid_mode is not ON; set gtid_mode = ON and enforce_gtid_consistency = ON (step through OFF_PERMISSIVE and ON_PERMISSIVE on a running server)"
                ));
            }
            if !text(&row, "enforce").is_some_and(|v| v.eq_ignore_ascii_case("ON")) {
                problems.push(format!(
                    "{name}: enforce_gtid_consistency is not ON; SET GLOBAL enforce_gtid_consistency = ON and set it in the config file"
                ));
            }
        }
    }
    let have = global_privileges(c, name).await?;
    let want: &[&str] = if m.primary {
        match dialect {
            Dialect::MariaDb => &["REPLICATION SLAVE", "SELECT"],
            // The copy holds FLUSH TABLES WITH READ LOCK for an instant.
            Dialect::MySql => &["REPLICATION SLAVE", "SELECT", "RELOAD"],
        }
    } else {
        match dialect {
            Dialect::MariaDb => &[
                "REPLICATION SLAVE ADMIN",
                "BINLOG ADMIN",
                "SLAVE MONITOR",
                "CREATE",
                "INSERT",
            ],
            // RELOAD: the replica's own GTID history is reset to the snapshot's.
            Dialect::MySql => &[
                "REPLICATION_SLAVE_ADMIN",
                "SYSTEM_VARIABLES_ADMIN",
                "REPLICATION CLIENT",
                "RELOAD",
                "CREATE",
                "INSERT",
            ],
        }
    };
    let missing: Vec<&str> = want.iter().copied().filter(|w| !grants(&have, w)).collect();
    if !missing.is_empty() {
        let user = conn::parse_url(name, &m.url)
            .ok()
            .and_then(|u| u.user().map(str::to_string))
            .unwrap_or_else(|| "USER".into());
        problems.push(format!(
            "{name}: the user '{user}' lacks {}; GRANT {} ON *.* TO '{user}'@'%'",
            missing.join(", "),
            missing.join(", ")
        ));
    }
    if m.primary {
        tables(c, name, problems).await?;
    }
    Ok(Facts {
        member: name.clone(),
        dialect,
        version,
        server_id,
    })
}

/// Tables without a primary key, and tables on an engine without consistent snapshots,
/// named one by one.
async fn tables(c: &mut Conn, name: &str, problems: &mut Vec<String>) -> Result<()> {
    let system = super::system_schemas_sql();
    let sql = format!(
        "SELECT t.TABLE_SCHEMA AS s, t.TABLE_NAME AS t, COALESCE(t.ENGINE, '') AS e, t.TABLE_TYPE AS ty, \
         EXISTS (SELECT 1 FROM information_schema.TABLE_CONSTRAINTS c \
                 WHERE c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME \
                 AND c.CONSTRAINT_TYPE = 'PRIMARY KEY') AS pk \
         FROM information_schema.TABLES t \
         WHERE t.TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED', 'SEQUENCE') AND t.TABLE_SCHEMA NOT IN ({system}) \
         ORDER BY t.TABLE_SCHEMA, t.TABLE_NAME"
    );
    let rows: Vec<Row> = c.query(sql).await.map_err(|e| DbError::mysql(name, e))?;
    for r in rows {
        let (schema, table) = (
            text(&r, "s").unwrap_or_default(),
            text(&r, "t").unwrap_or_default(),
        );
        let full = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
        let engine = text(&r, "e").unwrap_or_default();
        let kind = text(&r, "ty").unwrap_or_default();
        if kind != "BASE TABLE" {
            problems.push(format!(
                "{name}: table {full} is a {kind} table, which georep does not copy yet; convert or drop it, or set the replica up another way"
            ));
            continue;
        }
        if text(&r, "pk").as_deref() != Some("1") {
            problems.push(format!(
                "{name}: table {full} has no primary key: row-based replication scans it for every changed row and verify cannot split it into key ranges; add one (ALTER TABLE {full} ADD PRIMARY KEY (...), or an invisible id column)"
            ));
        }
        if !engine.eq_ignore_ascii_case("InnoDB") && !engine.is_empty() {
            problems.push(format!(
                "{name}: table {full} uses {engine}, which has no consistent snapshot; ALTER TABLE {full} ENGINE = InnoDB"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_read_from_show_grants_lines() {
        let lines = vec![
            "GRANT SELECT, REPLICATION SLAVE ON *.* TO `rep`@`%` IDENTIFIED BY PASSWORD '*X'"
                .to_string(),
            "GRANT ALL PRIVILEGES ON `shop`.* TO `rep`@`%`".to_string(),
        ];
        let have = parse_grants(&lines);
        assert_eq!(have, vec!["SELECT", "REPLICATION SLAVE"]);
        assert!(grants(&have, "REPLICATION SLAVE"));
        assert!(
            !grants(&have, "CREATE"),
            "a schema-level grant is not global"
        );
        let root = parse_grants(&[
            "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION".to_string(),
        ]);
        assert!(grants(&root, "BINLOG ADMIN"));
        let sup = parse_grants(&["GRANT SUPER, CREATE ON *.* TO `a`@`%`".to_string()]);
        assert!(grants(&sup, "SLAVE MONITOR") && !grants(&sup, "INSERT"));
    }
}
