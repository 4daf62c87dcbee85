//! `georep db ddl`: one DDL statement applied to every member in the order that keeps
//! logical replication running. A subscriber must be able to take every row the
//! publisher sends, so additive changes (new columns, wider types, new tables) go to
//! replicas first, and destructive ones (DROP, RENAME) to the primary first.

use georep_core::Database;
use serde::Serialize;

use super::conn::connect;
use super::setup::selected_tables;
use super::{publication_name, quote_ident, quote_table, subscription_name};
use crate::error::{DbError, Result};

#[derive(Debug, Clone, Serialize)]
pub struct DdlReport {
    /// Members in the order the statement ran on them.
    pub order: Vec<String>,
    /// Tables added to replication because the statement created them.
    pub tables_added: Vec<String>,
}

/// Whether a statement removes or renames something (then the primary goes first).
pub fn primary_first(sql: &str) -> bool {
    let s = sql.to_ascii_uppercase();
    s.contains("DROP ") || s.contains("RENAME ")
}

pub async fn ddl(db: &Database, sql: &str) -> Result<DdlReport> {
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
    if primary_first(sql) {
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
        let list = after
            .iter()
            .map(|t| quote_table(t))
            .collect::<Vec<_>>()
            .join(", ");
        primary
            .batch_execute(&format!(
                "ALTER PUBLICATION {} SET TABLE {list}",
                quote_ident(&publication_name(db))
            ))
            .await
            .map_err(|e| DbError::sql("primary", e))?;
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
        assert!(primary_first("ALTER TABLE t DROP COLUMN c"));
        assert!(primary_first("alter table t rename column a to b"));
        assert!(!primary_first("ALTER TABLE t ADD COLUMN c int"));
        assert!(!primary_first("CREATE TABLE x (id int primary key)"));
    }
}
