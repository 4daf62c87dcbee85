//! Catalog queries several commands share: which tables a database replicates, which
//! of a list of tables exist on a member, and which sequences their defaults use.
//! Its own module so that `setup`, `drift`, `ddl` and the others read the catalog from
//! one place without importing each other.

use georep_core::Database;
use tokio_postgres::Client;

use super::quote_table;
use crate::error::{DbError, Result};

/// The tables a database replicates, as `schema.table`, checked to exist on `client`.
pub(crate) async fn selected_tables(
    client: &Client,
    db: &Database,
    member: &str,
) -> Result<Vec<String>> {
    if db.tables.is_empty() {
        let rows = client
            .query(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ANY($1) \
                 ORDER BY 1",
                &[&db.schemas],
            )
            .await
            .map_err(|e| DbError::sql(member, e))?;
        let tables: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        // `schema.table` is read back by splitting at the first dot.
        if let Some(t) = tables.iter().find(|t| t.matches('.').count() > 1) {
            return Err(DbError::InvalidConfig(format!(
                "database '{}': table {t} has a '.' in its schema or table name, which georep does not support; rename it or list the other tables in `tables`",
                db.name
            )));
        }
        return Ok(tables);
    }
    let missing = tables_that_exist(client, member, &db.tables, false).await?;
    if !missing.is_empty() {
        return Err(DbError::InvalidConfig(format!(
            "database '{}': tables not found on the {member}: {}; fix `tables` in the topology",
            db.name,
            missing.join(", ")
        )));
    }
    Ok(db.tables.clone())
}

/// The sequences that column defaults of `tables` draw from (`nextval(...)`), as
/// `schema.sequence`. pg_dump brings a table's owned (serial) sequences along, but not a
/// sequence a default merely uses; a table created without it cannot be created at all.
pub(crate) async fn sequences_used_by(
    c: &tokio_postgres::Client,
    who: &str,
    tables: &[String],
) -> crate::Result<Vec<String>> {
    let quoted: Vec<String> = tables.iter().map(|t| quote_table(t)).collect();
    let rows = c
        .query(
            "SELECT DISTINCT sn.nspname || '.' || s.relname FROM unnest($1::text[]) AS q \
             JOIN pg_attrdef ad ON ad.adrelid = to_regclass(q) \
             JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid \
               AND d.refclassid = 'pg_class'::regclass \
             JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S' \
             JOIN pg_namespace sn ON sn.oid = s.relnamespace ORDER BY 1",
            &[&quoted],
        )
        .await
        .map_err(|e| crate::DbError::sql(who, e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Those of `tables` that exist on `c` (`exist`) or do not. Each name is resolved
/// quoted, exactly as spelled, never folded to lower case as bare text would be.
pub(crate) async fn tables_that_exist(
    c: &tokio_postgres::Client,
    who: &str,
    tables: &[String],
    exist: bool,
) -> crate::Result<Vec<String>> {
    let quoted: Vec<String> = tables.iter().map(|t| quote_table(t)).collect();
    let rows = c
        .query(
            "SELECT t FROM unnest($1::text[], $2::text[]) AS x(t, q) \
             WHERE (to_regclass(q) IS NOT NULL) = $3",
            &[&tables, &quoted, &exist],
        )
        .await
        .map_err(|e| crate::DbError::sql(who, e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
