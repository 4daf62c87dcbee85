//! `georep db copy`: the one-shot dump-and-restore path. Schema first (tables without
//! indexes or constraints), then data streamed with parallel binary COPY from one
//! consistent snapshot (large tables split in key ranges), then indexes and constraints,
//! then sequences.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_postgres::Client;

use super::catalog::{sequences_used_by, tables_that_exist};
use super::conn::connect;
use super::{quote_ident, quote_table, schema_dump, split_table};
use crate::error::{DbError, Result};

#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// `schema.table` or `table`; empty: every table outside the system schemas.
    pub tables: Vec<String>,
    /// Parallel COPY streams.
    pub jobs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyTable {
    pub table: String,
    pub rows: u64,
    pub bytes: u64,
    pub parts: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    pub tables: Vec<CopyTable>,
    pub rows: u64,
    pub bytes: u64,
    pub sequences: usize,
    pub seconds: f64,
}

/// Bytes gathered before they are handed to the target connection.
const CHUNK: usize = 256 * 1024;

/// One unit of data work: a table, or a key range of a large table.
#[derive(Clone)]
struct Part {
    table: String,
    filter: Option<String>,
}

async fn parts_of(src: &Client, table: &str, jobs: usize) -> Result<Vec<Part>> {
    let whole = vec![Part {
        table: table.to_string(),
        filter: None,
    }];
    let est: f32 = src
        .query_one(
            "SELECT greatest(reltuples, 0)::float4 FROM pg_class WHERE oid = $1::text::regclass",
            &[&quote_table(table)],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| DbError::sql("source", e))?;
    if jobs < 2 || est < 200_000.0 {
        return Ok(whole);
    }
    // PostgreSQL 14+ scans a block range directly (TID range scan): each part reads only
    // its own pages, whatever the key.
    let (version, pages): (i32, i64) = src
        .query_one(
            "SELECT current_setting('server_version_num')::int, \
             (pg_relation_size($1::text::regclass) / current_setting('block_size')::int)::bigint",
            &[&quote_table(table)],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .map_err(|e| DbError::sql("source", e))?;
    if version >= 140000 && pages > 0 {
        let n = jobs as i64;
        let step = (pages / n).max(1);
        let mut parts = Vec::new();
        let mut from = 0i64;
        for i in 1..n {
            let cut = i * step;
            parts.push(Part {
                table: table.to_string(),
                filter: Some(format!(
                    "ctid >= '({from},0)'::tid AND ctid < '({cut},0)'::tid"
                )),
            });
            from = cut;
        }
        parts.push(Part {
            table: table.to_string(),
            filter: Some(format!("ctid >= '({from},0)'::tid")),
        });
        return Ok(parts);
    }
    let key = src
        .query_opt(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
             AND a.attnum = i.indkey[0] WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
             AND i.indnatts = 1 AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)",
            &[&quote_table(table)],
        )
        .await
        .map_err(|e| DbError::sql("source", e))?
        .map(|r| r.get::<_, String>(0));
    let Some(key) = key else { return Ok(whole) };
    let k = quote_ident(&key);
    let r = src
        .query_one(
            &format!(
                "SELECT min({k})::bigint, max({k})::bigint FROM {}",
                quote_table(table)
            ),
            &[],
        )
        .await
        .map_err(|e| DbError::sql("source", e))?;
    let (Some(lo), Some(hi)) = (r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1)) else {
        return Ok(whole);
    };
    let n = jobs as i64;
    let step = ((hi - lo) / n).max(1);
    let mut parts = Vec::new();
    let mut from = i64::MIN;
    for i in 1..n {
        let cut = lo + i * step;
        if cut > hi {
            break;
        }
        parts.push(Part {
            table: table.to_string(),
            filter: Some(format!("{k} >= {from} AND {k} < {cut}")),
        });
        from = cut;
    }
    parts.push(Part {
        table: table.to_string(),
        filter: Some(format!("{k} >= {from}")),
    });
    Ok(parts)
}

/// Streams one part from source to target; (rows, bytes).
async fn copy_part(from: &str, to: &str, snapshot: &str, part: &Part) -> Result<(u64, u64)> {
    let src = connect("source", from).await?;
    let dst = connect("target", to).await?;
    src.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
    ))
    .await
    .map_err(|e| DbError::sql("source", e))?;
    let t = quote_table(&part.table);
    let out_sql = match &part.filter {
        Some(f) => format!("COPY (SELECT * FROM {t} WHERE {f}) TO STDOUT (FORMAT binary)"),
        None => format!("COPY {t} TO STDOUT (FORMAT binary)"),
    };
    let stream = src
        .copy_out(&out_sql)
        .await
        .map_err(|e| DbError::sql("source", e))?;
    let sink = dst
        .copy_in::<_, bytes::Bytes>(&format!("COPY {t} FROM STDIN (FORMAT binary)"))
        .await
        .map_err(|e| DbError::sql("target", e))?;
    futures::pin_mut!(stream);
    futures::pin_mut!(sink);
    // COPY sends one message per row: gather them into large chunks and feed without a
    // flush per row (a flush per row made this five times slower than pg_dump | psql).
    let mut bytes = 0u64;
    let mut buf = bytes::BytesMut::with_capacity(CHUNK);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| DbError::sql("source", e))?;
        bytes += chunk.len() as u64;
        buf.extend_from_slice(&chunk);
        if buf.len() >= CHUNK {
            sink.feed(buf.split().freeze())
                .await
                .map_err(|e| DbError::sql("target", e))?;
        }
    }
    if !buf.is_empty() {
        sink.feed(buf.freeze())
            .await
            .map_err(|e| DbError::sql("target", e))?;
    }
    let rows = sink.finish().await.map_err(|e| DbError::sql("target", e))?;
    src.batch_execute("COMMIT")
        .await
        .map_err(|e| DbError::sql("source", e))?;
    Ok((rows, bytes))
}

pub async fn copy(
    from: &str,
    to: &str,
    opts: &CopyOptions,
    progress: &(dyn Fn(&CopyTable) + Send + Sync),
) -> Result<CopyReport> {
    let started = Instant::now();
    let src = connect("source", from).await?;
    let dst = connect("target", to).await?;
    let mut tables: Vec<String> = if opts.tables.is_empty() {
        src.query(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| DbError::sql("source", e))?
        .iter()
        .map(|r| r.get(0))
        .collect()
    } else {
        // The topology's syntax: `Orders` is orders, `"Orders"` is Orders.
        opts.tables
            .iter()
            .map(|t| georep_core::topology::table_name(t).map_err(DbError::InvalidConfig))
            .collect::<Result<_>>()?
    };
    tables.dedup();
    if let Some(t) = tables.iter().find(|t| t.matches('.').count() > 1) {
        return Err(DbError::InvalidConfig(format!(
            "table {t} has a '.' in its schema or table name, which georep does not support; copy the other tables with --tables"
        )));
    }
    if tables.is_empty() {
        return Err(DbError::InvalidConfig(
            "the source has no tables to copy".into(),
        ));
    }
    let missing = tables_that_exist(&src, "source", &tables, false).await?;
    if !missing.is_empty() {
        return Err(DbError::InvalidConfig(format!(
            "the source has no table {}; name tables as schema.table (\"Quoted\" for mixed case)",
            missing.join(", ")
        )));
    }
    let clash = tables_that_exist(&dst, "target", &tables, true).await?;
    if !clash.is_empty() {
        return Err(DbError::InvalidConfig(format!(
            "the target already has {}; copy into an empty database (or drop those tables)",
            clash.join(", ")
        )));
    }
    // 1. Tables, sequences and defaults; no indexes or constraints yet. With the
    // sequences their defaults use that the target lacks.
    let used = sequences_used_by(&src, "source", &tables).await?;
    let mut objects = tables.clone();
    objects.extend(tables_that_exist(&dst, "target", &used, false).await?);
    let mut schemas: Vec<&str> = objects.iter().map(|t| split_table(t).0).collect();
    schemas.sort();
    schemas.dedup();
    for s in &schemas {
        dst.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(s)))
            .await
            .map_err(|e| DbError::sql("target", e))?;
    }
    let pre = schema_dump(from, Some("pre-data"), &objects).await?;
    dst.batch_execute(&pre)
        .await
        .map_err(|e| DbError::sql("target", e))?;

    // 2. Data, from one snapshot, `jobs` streams at a time.
    src.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| DbError::sql("source", e))?;
    let snapshot: String = src
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| DbError::sql("source", e))?;
    let mut parts = Vec::new();
    for t in &tables {
        parts.extend(parts_of(&src, t, opts.jobs).await?);
    }
    // The post-data DDL is fetched while the data streams.
    let post = tokio::spawn({
        let (from, tables) = (from.to_string(), tables.clone());
        async move { schema_dump(&from, Some("post-data"), &tables).await }
    });
    let totals: Vec<(String, Arc<AtomicU64>, Arc<AtomicU64>, usize)> = tables
        .iter()
        .map(|t| {
            let n = parts.iter().filter(|p| &p.table == t).count();
            (
                t.clone(),
                Arc::new(AtomicU64::new(0)),
                Arc::new(AtomicU64::new(0)),
                n,
            )
        })
        .collect();
    let results: Vec<Result<(String, u64, u64)>> = futures::stream::iter(parts)
        .map(|p| {
            let (from, to, snap) = (from.to_string(), to.to_string(), snapshot.clone());
            async move {
                let (rows, bytes) = copy_part(&from, &to, &snap, &p).await?;
                Ok((p.table, rows, bytes))
            }
        })
        .buffer_unordered(opts.jobs.max(1))
        .collect()
        .await;
    for r in results {
        let (t, rows, bytes) = r?;
        if let Some((_, rw, by, _)) = totals.iter().find(|x| x.0 == t) {
            rw.fetch_add(rows, Ordering::Relaxed);
            by.fetch_add(bytes, Ordering::Relaxed);
        }
    }
    let report_tables: Vec<CopyTable> = totals
        .iter()
        .map(|(t, rw, by, n)| CopyTable {
            table: t.clone(),
            rows: rw.load(Ordering::Relaxed),
            bytes: by.load(Ordering::Relaxed),
            parts: *n,
        })
        .collect();
    for t in &report_tables {
        progress(t);
    }

    // 3. Indexes, constraints, triggers, with room to sort.
    let post = post
        .await
        .map_err(|e| DbError::Tool(format!("pg_dump task failed: {e}")))??;
    dst.batch_execute(&format!(
        "SET maintenance_work_mem = '512MB'; SET max_parallel_maintenance_workers = {}",
        opts.jobs.clamp(1, 8) - 1
    ))
    .await
    .map_err(|e| DbError::sql("target", e))?;
    dst.batch_execute(&post)
        .await
        .map_err(|e| DbError::sql("target", e))?;

    // 4. Sequences, as of the snapshot.
    let seqs = src
        .query(
            "SELECT schemaname::text, sequencename::text FROM pg_sequences WHERE schemaname = ANY($1)",
            &[&schemas.iter().map(|s| s.to_string()).collect::<Vec<_>>()],
        )
        .await
        .map_err(|e| DbError::sql("source", e))?;
    let mut n = 0;
    for s in seqs {
        let (schema, name): (String, String) = (s.get(0), s.get(1));
        let r = src
            .query_one(
                &format!(
                    "SELECT last_value, is_called FROM {}.{}",
                    quote_ident(&schema),
                    quote_ident(&name)
                ),
                &[],
            )
            .await
            .map_err(|e| DbError::sql("source", e))?;
        let (v, called): (i64, bool) = (r.get(0), r.get(1));
        // Only sequences the copied definitions created (a sequence of a table left out
        // is not there); quoted by the server, so mixed case is kept.
        let set = dst
            .query(
                "SELECT setval(r, $3, $4) FROM \
                 (SELECT to_regclass(format('%I.%I', $1::text, $2::text)) AS r) x WHERE r IS NOT NULL",
                &[&schema, &name, &v, &called],
            )
            .await
            .map_err(|e| DbError::sql("target", e))?;
        n += set.len();
    }
    src.batch_execute("COMMIT")
        .await
        .map_err(|e| DbError::sql("source", e))?;
    Ok(CopyReport {
        rows: report_tables.iter().map(|t| t.rows).sum(),
        bytes: report_tables.iter().map(|t| t.bytes).sum(),
        tables: report_tables,
        sequences: n,
        seconds: started.elapsed().as_secs_f64(),
    })
}
