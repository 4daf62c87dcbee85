//! Sequences (which logical replication does not carry) and schema drift.

use std::collections::BTreeMap;

use georep_core::Database;
use tokio_postgres::Client;

use super::catalog::selected_tables;
use super::conn::connect;
use crate::error::{DbError, Result};

pub use georep_api::{SchemaDiff, SequenceDrift};

fn schemas_of(tables: &[String]) -> Vec<String> {
    let mut s: Vec<String> = tables
        .iter()
        .map(|t| super::split_table(t).0.to_string())
        .collect();
    s.sort();
    s.dedup();
    s
}

/// Every sequence of `schemas` by (schema, name), exactly as the catalog spells them.
async fn sequences(
    c: &Client,
    member: &str,
    schemas: &[String],
) -> Result<BTreeMap<(String, String), Option<i64>>> {
    let rows = c
        .query(
            "SELECT schemaname::text, sequencename::text, last_value FROM pg_sequences \
             WHERE schemaname = ANY($1)",
            &[&schemas],
        )
        .await
        .map_err(|e| DbError::sql(member, e))?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// Sets each replica sequence to at least the primary's value plus `margin`; returns how
/// many were moved.
pub(crate) async fn push_sequences(
    primary: &Client,
    replica: &Client,
    replica_name: &str,
    tables: &[String],
    margin: i64,
) -> Result<usize> {
    let schemas = schemas_of(tables);
    let who = format!("replica '{replica_name}'");
    let p = sequences(primary, "primary", &schemas).await?;
    let r = sequences(replica, &who, &schemas).await?;
    let mut moved = 0;
    for (seq @ (schema, name), value) in &p {
        let Some(v) = value else { continue };
        let target = v.saturating_add(margin);
        match r.get(seq) {
            Some(Some(cur)) if *cur >= target => {}
            Some(_) => {
                // Quoted by the server: "Sales EU"."Invoice-Seq" is not sales_eu.invoice_seq.
                replica
                    .query_one(
                        "SELECT setval(format('%I.%I', $1::text, $2::text)::regclass, $3, true)",
                        &[schema, name, &target],
                    )
                    .await
                    .map_err(|e| DbError::sql(&who, e))?;
                moved += 1;
            }
            None => {
                tracing::warn!(replica = replica_name, sequence = %format!("{schema}.{name}"), "sequence missing on the replica")
            }
        }
    }
    Ok(moved)
}

/// Pushes every replica's sequences ahead of the primary by the database's margin
/// (`margin` overrides it; 0 sets them exactly, as at promotion).
pub async fn sync_sequences(db: &Database, margin: Option<i64>) -> Result<Vec<(String, usize)>> {
    let primary = connect("primary", &db.primary.url).await?;
    let tables = selected_tables(&primary, db, "primary").await?;
    let mut out = Vec::new();
    for r in &db.replicas {
        // One unreachable replica must not keep the others' sequences behind.
        let c = match connect(&format!("replica '{}'", r.name), &r.url).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(replica = %r.name, error = %e, "sequences not pushed to an unreachable replica");
                continue;
            }
        };
        let n = push_sequences(
            &primary,
            &c,
            &r.name,
            &tables,
            margin.unwrap_or(db.sequence_margin),
        )
        .await?;
        out.push((r.name.clone(), n));
    }
    Ok(out)
}

/// Sequence values on every reachable replica compared with the primary.
pub async fn sequence_drift(
    primary: &Client,
    replica: &Client,
    replica_name: &str,
    tables: &[String],
) -> Result<Vec<SequenceDrift>> {
    let schemas = schemas_of(tables);
    let p = sequences(primary, "primary", &schemas).await?;
    let r = sequences(replica, &format!("replica '{replica_name}'"), &schemas).await?;
    Ok(p.iter()
        .map(|(seq, pv)| {
            let rv = r.get(seq).copied().flatten();
            SequenceDrift {
                replica: replica_name.to_string(),
                sequence: format!("{}.{}", seq.0, seq.1),
                primary: *pv,
                replica_value: rv,
                behind: pv.unwrap_or(0) - rv.unwrap_or(0),
            }
        })
        .collect())
}

async fn definitions(
    c: &Client,
    member: &str,
    tables: &[String],
) -> Result<BTreeMap<(String, String), String>> {
    let mut out = BTreeMap::new();
    let q = |e| DbError::sql(member, e);
    for r in c
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname || '.' || c.relname = ANY($1)",
            &[&tables],
        )
        .await
        .map_err(q)?
    {
        out.insert(("table".into(), r.get(0)), "exists".into());
    }
    for r in c
        .query(
            "SELECT table_schema || '.' || table_name || '.' || column_name, \
             data_type || coalesce('(' || character_maximum_length || ')', '') || \
             CASE WHEN is_nullable = 'NO' THEN ' NOT NULL' ELSE '' END \
             FROM information_schema.columns WHERE table_schema || '.' || table_name = ANY($1)",
            &[&tables],
        )
        .await
        .map_err(q)?
    {
        out.insert(("column".into(), r.get(0)), r.get(1));
    }
    for r in c
        .query(
            "SELECT schemaname || '.' || indexname, indexdef FROM pg_indexes \
             WHERE schemaname || '.' || tablename = ANY($1)",
            &[&tables],
        )
        .await
        .map_err(q)?
    {
        out.insert(("index".into(), r.get(0)), r.get(1));
    }
    for r in c
        .query(
            "SELECT n.nspname || '.' || c.relname || '.' || con.conname, pg_get_constraintdef(con.oid) \
             FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname || '.' || c.relname = ANY($1)",
            &[&tables],
        )
        .await
        .map_err(q)?
    {
        out.insert(("constraint".into(), r.get(0)), r.get(1));
    }
    Ok(out)
}

/// Tables, columns (type, nullability), indexes and constraints that differ between the
/// primary and a replica.
pub async fn schema_drift(
    primary: &Client,
    replica: &Client,
    replica_name: &str,
    tables: &[String],
) -> Result<Vec<SchemaDiff>> {
    let p = definitions(primary, "primary", tables).await?;
    let r = definitions(replica, &format!("replica '{replica_name}'"), tables).await?;
    let mut keys: Vec<&(String, String)> = p.keys().chain(r.keys()).collect();
    keys.sort();
    keys.dedup();
    Ok(keys
        .into_iter()
        .filter_map(|k| {
            let (a, b) = (p.get(k), r.get(k));
            (a != b).then(|| SchemaDiff {
                replica: replica_name.to_string(),
                kind: k.0.clone(),
                object: k.1.clone(),
                primary: a.cloned(),
                replica_def: b.cloned(),
            })
        })
        .collect())
}
