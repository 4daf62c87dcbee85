//! `georep db ddl`: one DDL statement applied to every member in the order that keeps
//! logical replication running. A subscriber must be able to take every row the
//! publisher sends, so additive changes (new columns, wider types, new tables) go to
//! replicas first, and destructive ones (DROP, RENAME) to the primary first.

use georep_core::Database;
use serde::Serialize;

use super::catalog::selected_tables;
use super::conn::connect;
use super::publication::{publish_tables, IfMissing};
use super::{quote_ident, subscription_name};
use crate::error::{DbError, Result};

#[derive(Debug, Clone, Serialize)]
pub struct DdlReport {
    /// Members in the order the statement ran on them.
    pub order: Vec<String>,
    /// Tables added to replication because the statement created them.
    pub tables_added: Vec<String>,
}

/// Whether a statement removes or renames something the publisher sends (then the
/// primary goes first: a replica that lost a column first could not apply rows that
/// still carry it). Everything else, relaxing a constraint included (`DROP NOT NULL`,
/// `DROP CONSTRAINT`, `DROP DEFAULT`), goes to the replicas first, so the primary never
/// writes a row that a replica would refuse. Several statements must agree.
pub fn primary_first(sql: &str) -> Result<bool> {
    let tokens = tokens(sql);
    let mut verdict = None;
    for stmt in tokens.split(|t| t == ";") {
        let Some(first) = destructive(stmt) else {
            continue;
        };
        if verdict.is_some_and(|v| v != first) {
            return Err(DbError::InvalidConfig(
                "the statements need different orders (one removes or renames, another adds); run them one at a time".into(),
            ));
        }
        verdict = Some(first);
    }
    verdict.ok_or_else(|| DbError::InvalidConfig("no SQL statement given".into()))
}

/// Whether one statement (its tokens, keywords upper-cased) drops or renames an object
/// or a column; `None` for transaction control and settings, which need no order.
fn destructive(stmt: &[String]) -> Option<bool> {
    let first = stmt.first().map(String::as_str);
    match first {
        None | Some("BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "SET" | "RESET") => None,
        Some("DROP") => Some(true),
        Some("ALTER") => Some(stmt.iter().enumerate().any(|(i, t)| match t.as_str() {
            "RENAME" => true,
            // ALTER TABLE t DROP [COLUMN] c (or DROP ATTRIBUTE, ...), but not
            // DROP CONSTRAINT or ALTER COLUMN c DROP NOT NULL / DEFAULT / IDENTITY /
            // EXPRESSION: those relax what a row may be.
            "DROP" => !matches!(
                stmt.get(i + 1).map(String::as_str),
                Some("CONSTRAINT" | "NOT" | "DEFAULT" | "IDENTITY" | "EXPRESSION") | None
            ),
            _ => false,
        })),
        _ => Some(false),
    }
}

/// The statement's words, upper-cased, and its punctuation, without whitespace or
/// comments; quoted identifiers and string literals are one token each (kept as
/// written), so a `DROP` inside a name or a string is not a keyword.
fn tokens(sql: &str) -> Vec<String> {
    let c: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            ch if ch.is_whitespace() => i += 1,
            '-' if c.get(i + 1) == Some(&'-') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                // Block comments nest in PostgreSQL.
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            q @ ('"' | '\'') => {
                let start = i;
                i += 1;
                while i < c.len() {
                    if c[i] == q && c.get(i + 1) == Some(&q) {
                        i += 2;
                    } else if c[i] == q {
                        i += 1;
                        break;
                    } else {
                        i += 1;
                    }
                }
                out.push(c[start..i].iter().collect());
            }
            '$' => {
                // Dollar quoting: $tag$ ... $tag$ is one literal.
                let end_tag = c[i + 1..].iter().position(|&x| x == '$').map(|p| i + 1 + p);
                let tag_ok = end_tag
                    .is_some_and(|e| c[i + 1..e].iter().all(|x| x.is_alphanumeric() || *x == '_'));
                match end_tag {
                    Some(e) if tag_ok => {
                        let tag: String = c[i..=e].iter().collect();
                        let body: String = c[e + 1..].iter().collect();
                        let len = body.find(&tag).map_or(body.chars().count(), |p| {
                            body[..p].chars().count() + tag.chars().count()
                        });
                        let end = e + 1 + len;
                        out.push(c[i..end.min(c.len())].iter().collect());
                        i = end;
                    }
                    _ => {
                        out.push("$".into());
                        i += 1;
                    }
                }
            }
            ch if ch.is_alphanumeric() || ch == '_' => {
                let start = i;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '$') {
                    i += 1;
                }
                out.push(c[start..i].iter().collect::<String>().to_uppercase());
            }
            ch => {
                out.push(ch.to_string());
                i += 1;
            }
        }
    }
    out
}

pub async fn ddl(db: &Database, sql: &str) -> Result<DdlReport> {
    let primary_first = primary_first(sql)?;
    let primary = connect("primary", &db.primary.url).await?;
    let before = selected_tables(&primary, db, "primary").await?;
    let mut members = Vec::new();
    for r in &db.replicas {
        let who = format!("replica '{}'", r.name);
        members.push((who.clone(), r.name.clone(), connect(&who, &r.url).await?));
    }
    let mut order = Vec::new();
    let run_primary = |order: &mut Vec<String>| {
        order.push("primary".to_string());
        primary.batch_execute(sql)
    };
    if primary_first {
        run_primary(&mut order)
            .await
            .map_err(|e| DbError::sql("primary", e))?;
        for (who, _, c) in &members {
            c.batch_execute(sql)
                .await
                .map_err(|e| DbError::sql(who, e))?;
            order.push(who.clone());
        }
    } else {
        for (who, _, c) in &members {
            c.batch_execute(sql)
                .await
                .map_err(|e| DbError::sql(who, e))?;
            order.push(who.clone());
        }
        run_primary(&mut order)
            .await
            .map_err(|e| DbError::sql("primary", e))?;
    }
    // A table created in a replicated schema joins the publication.
    let after = selected_tables(&primary, db, "primary").await?;
    let added: Vec<String> = after
        .iter()
        .filter(|t| !before.contains(t))
        .cloned()
        .collect();
    if after != before && !after.is_empty() {
        publish_tables(&primary, "primary", db, &after, IfMissing::Fail).await?;
        for (who, name, c) in &members {
            c.batch_execute(&format!(
                "ALTER SUBSCRIPTION {} REFRESH PUBLICATION",
                quote_ident(&subscription_name(db, name))
            ))
            .await
            .map_err(|e| DbError::sql(who, e))?;
        }
    }
    Ok(DdlReport {
        order,
        tables_added: added,
    })
}

#[cfg(test)]
mod tests {
    use super::primary_first;

    #[test]
    fn destructive_statements_start_at_the_primary() {
        let cases: &[(&str, bool)] = &[
            ("ALTER TABLE t DROP COLUMN c", true),
            ("ALTER TABLE t DROP\nCOLUMN c", true),
            ("alter table t\n\tdrop\tcolumn c", true),
            ("ALTER TABLE t DROP c", true),
            (
                "ALTER TABLE IF EXISTS t DROP COLUMN IF EXISTS c CASCADE",
                true,
            ),
            ("ALTER TABLE t /* tidy up */ DROP -- old\n COLUMN c", true),
            ("ALTER TABLE t DROP/**/COLUMN c", true),
            ("ALTER TABLE t ADD COLUMN d int, DROP COLUMN c", true),
            ("DROP TABLE t", true),
            ("drop\ntable t", true),
            ("DROP INDEX CONCURRENTLY i", true),
            ("alter table t rename column a to b", true),
            ("ALTER TABLE t\nRENAME TO u", true),
            ("ALTER TABLE t ADD COLUMN c int", false),
            ("alter table t add column dropped_at timestamptz", false),
            (
                "ALTER TABLE t ADD COLUMN note text DEFAULT 'DROP COLUMN'",
                false,
            ),
            ("ALTER TABLE \"DROP TABLE\" ADD COLUMN c int", false),
            ("ALTER TABLE t ADD COLUMN c int -- DROP COLUMN later", false),
            (
                "/* DROP TABLE t */ CREATE TABLE x (id int primary key)",
                false,
            ),
            ("CREATE TABLE x (id int primary key)", false),
            ("ALTER TABLE t ALTER COLUMN c DROP NOT NULL", false),
            ("alter table t alter c drop default", false),
            (
                "ALTER TABLE t ALTER COLUMN c DROP\nNOT NULL, ADD COLUMN d int",
                false,
            ),
            ("ALTER TABLE t DROP CONSTRAINT t_c_check", false),
            ("ALTER TABLE t ALTER COLUMN c TYPE bigint", false),
            (
                "CREATE FUNCTION f() RETURNS int AS $$ DROP TABLE t $$ LANGUAGE sql",
                false,
            ),
            (
                "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1 $body$ LANGUAGE sql",
                false,
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(primary_first(sql).ok(), Some(*want), "{sql:?}");
        }
    }

    #[test]
    fn statements_that_need_different_orders_are_refused() {
        assert!(
            primary_first("ALTER TABLE t ADD COLUMN d int; ALTER TABLE t DROP COLUMN c").is_err()
        );
        assert_eq!(
            primary_first("ALTER TABLE t DROP COLUMN c; DROP TABLE u;").ok(),
            Some(true)
        );
        assert!(primary_first("  -- nothing\n").is_err());
        assert_eq!(
            primary_first("BEGIN;\nALTER TABLE t DROP COLUMN c;\nCOMMIT;").ok(),
            Some(true)
        );
    }
}
