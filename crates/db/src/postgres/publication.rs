//! The database's publication: pointing it at exactly the replicated tables. Setup, `ddl`
//! and a newly promoted primary all go through [`publish_tables`], so the statement is
//! written once.

use georep_core::Database;
use tokio_postgres::Client;

use super::{publication_name, quote_ident, quote_table};
use crate::error::{DbError, Result};

/// What [`publish_tables`] does when the publication does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfMissing {
    /// Create it (`setup`, a newly promoted primary).
    Create,
    /// Alter it without looking: a missing publication is the server's error (`ddl`
    /// runs on a database that is set up already).
    Fail,
}

/// Makes the database's publication on `c` publish exactly `tables`: `ALTER PUBLICATION
/// ... SET TABLE` when it exists (so replicas already following it are not disturbed),
/// else `CREATE PUBLICATION ... FOR TABLE` or, with [`IfMissing::Fail`], the server's
/// error.
pub(crate) async fn publish_tables(
    c: &Client,
    who: &str,
    db: &Database,
    tables: &[String],
    if_missing: IfMissing,
) -> Result<()> {
    let publication = publication_name(db);
    let list = tables
        .iter()
        .map(|t| quote_table(t))
        .collect::<Vec<_>>()
        .join(", ");
    let exists: bool = match if_missing {
        IfMissing::Fail => true,
        IfMissing::Create => c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
                &[&publication],
            )
            .await
            .map(|r| r.get(0))
            .map_err(|e| DbError::sql(who, e))?,
    };
    let sql = if exists {
        format!(
            "ALTER PUBLICATION {} SET TABLE {list}",
            quote_ident(&publication)
        )
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {list}",
            quote_ident(&publication)
        )
    };
    c.batch_execute(&sql)
        .await
        .map_err(|e| DbError::sql(who, e))
}
