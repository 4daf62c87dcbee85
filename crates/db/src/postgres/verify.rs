//! `georep db verify`: row counts and content hashes per table, in primary-key ranges,
//! compared between the primary and each replica once the replica has caught up with
//! the point at which the primary was read. Ranges that differ are read again (rows may
//! have changed in between); only persistent differences are reported.

use std::time::{Duration, Instant};

use georep_core::Database;
use serde::Serialize;
use tokio_postgres::Client;

use super::catalog::selected_tables;
use super::conn::connect;
use super::{quote_ident, quote_table, subscription_name};
use crate::error::{DbError, Result};

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Only this table (`schema.table` or `table`).
    pub table: Option<String>,
    /// Key ranges per table (integer keys only; other keys are hashed whole).
    pub ranges: usize,
    /// Re-reads of a differing range before it is reported.
    pub rechecks: u32,
    /// Ranges hashed at once (sessions per server; MariaDB).
    pub jobs: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            table: None,
            ranges: 16,
            rechecks: 3,
            jobs: 4,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RangeDiff {
    /// Inclusive lower and exclusive upper key bound (None: unbounded).
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub primary_rows: i64,
    pub replica_rows: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    pub replica: String,
    pub table: String,
    pub primary_rows: i64,
    pub replica_rows: i64,
    pub ranges: usize,
    pub differing: Vec<RangeDiff>,
    pub equal: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub database: String,
    pub tables: Vec<TableCheck>,
    pub equal: bool,
}

/// How one table is split and hashed.
struct Plan {
    table: String,
    order: String,
    /// Single integer key column, when there is one.
    int_key: Option<String>,
    bounds: Vec<(Option<i64>, Option<i64>)>,
}

async fn plan(primary: &Client, table: &str, ranges: usize) -> Result<Plan> {
    let rows = primary
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&super::quote_table(table)],
        )
        .await
        .map_err(|e| DbError::sql("primary", e))?;
    let keys: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let order = if keys.is_empty() {
        // No primary key (replica identity full): order by the whole row.
        "t::text".to_string()
    } else {
        keys.iter()
            .map(|(k, _)| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let int_key = match keys.as_slice() {
        [(k, ty)] if matches!(ty.as_str(), "integer" | "bigint" | "smallint") => Some(k.clone()),
        _ => None,
    };
    let mut bounds = vec![(None, None)];
    if let Some(k) = &int_key {
        let r = primary
            .query_one(
                &format!(
                    "SELECT min({k})::bigint, max({k})::bigint FROM {}",
                    quote_table(table),
                    k = quote_ident(k)
                ),
                &[],
            )
            .await
            .map_err(|e| DbError::sql("primary", e))?;
        if let (Some(lo), Some(hi)) = (r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1)) {
            let n = ranges.max(1) as i64;
            let step = ((hi - lo) / n).max(1);
            let mut cuts: Vec<i64> = (1..n).map(|i| lo + i * step).filter(|c| *c <= hi).collect();
            cuts.dedup();
            bounds.clear();
            let mut prev = None;
            for c in cuts {
                bounds.push((prev, Some(c)));
                prev = Some(c);
            }
            bounds.push((prev, None));
        }
    }
    Ok(Plan {
        table: table.to_string(),
        order,
        int_key,
        bounds,
    })
}

/// (rows, hash) of one range.
async fn hash(
    c: &Client,
    who: &str,
    p: &Plan,
    b: (Option<i64>, Option<i64>),
) -> Result<(i64, String)> {
    let mut cond = Vec::new();
    if let Some(k) = &p.int_key {
        if let Some(lo) = b.0 {
            cond.push(format!("{} >= {lo}", quote_ident(k)));
        }
        if let Some(hi) = b.1 {
            cond.push(format!("{} < {hi}", quote_ident(k)));
        }
    }
    let filter = if cond.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", cond.join(" AND "))
    };
    let sql = format!(
        "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY {})), '') FROM {} t {filter}",
        p.order,
        quote_table(&p.table)
    );
    let r = c
        .query_one(&sql, &[])
        .await
        .map_err(|e| DbError::sql(who, e))?;
    Ok((r.get(0), r.get(1)))
}

/// Waits until the replica's slot has confirmed the primary's current WAL position.
async fn catch_up(primary: &Client, slot: &str, who: &str) -> Result<()> {
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| DbError::sql("primary", e))?;
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let done: Option<bool> = primary
            .query_opt(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
                &[&lsn, &slot],
            )
            .await
            .map_err(|e| DbError::sql("primary", e))?
            .map(|r| r.get(0));
        match done {
            Some(true) => return Ok(()),
            None => {
                return Err(DbError::InvalidConfig(format!(
                    "{who} has no replication slot on the primary; run georep db setup first"
                )))
            }
            _ if Instant::now() > end => {
                return Err(DbError::Timeout(format!(
                    "{who} did not catch up with the primary within 60 s; check georep db status"
                )))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub async fn verify(db: &Database, opts: &VerifyOptions) -> Result<VerifyReport> {
    let primary = connect("primary", &db.primary.url).await?;
    let mut tables = selected_tables(&primary, db, "primary").await?;
    if let Some(t) = &opts.table {
        // The topology's syntax: `Orders` is orders, `"Orders"` is Orders.
        let want = georep_core::topology::table_name(t).map_err(DbError::InvalidConfig)?;
        if !tables.contains(&want) {
            return Err(DbError::InvalidConfig(format!(
                "table {want} is not replicated by database '{}'; replicated: {}",
                db.name,
                tables.join(", ")
            )));
        }
        tables = vec![want];
    }
    let mut plans = Vec::new();
    for t in &tables {
        plans.push(plan(&primary, t, opts.ranges).await?);
    }
    let mut out = Vec::new();
    for r in &db.replicas {
        let who = format!("replica '{}'", r.name);
        let c = connect(&who, &r.url).await?;
        let slot = subscription_name(db, &r.name);
        for p in &plans {
            let mut check = TableCheck {
                replica: r.name.clone(),
                table: p.table.clone(),
                primary_rows: 0,
                replica_rows: 0,
                ranges: p.bounds.len(),
                differing: Vec::new(),
                equal: true,
            };
            let mut pending: Vec<(Option<i64>, Option<i64>)> = p.bounds.clone();
            let mut first = true;
            for _ in 0..=opts.rechecks {
                let mut left = Vec::new();
                let mut diffs = Vec::new();
                let mut prim = Vec::new();
                for b in &pending {
                    prim.push(hash(&primary, "primary", p, *b).await?);
                }
                catch_up(&primary, &slot, &who).await?;
                for (b, (pn, ph)) in pending.iter().zip(prim) {
                    let (rn, rh) = hash(&c, &who, p, *b).await?;
                    if first {
                        check.primary_rows += pn;
                        check.replica_rows += rn;
                    }
                    if (pn, &ph) != (rn, &rh) {
                        left.push(*b);
                        diffs.push(RangeDiff {
                            from: b.0,
                            to: b.1,
                            primary_rows: pn,
                            replica_rows: rn,
                        });
                    }
                }
                first = false;
                pending = left;
                check.differing = diffs;
                if pending.is_empty() {
                    break;
                }
            }
            check.equal = check.differing.is_empty();
            out.push(check);
        }
    }
    let equal = out.iter().all(|t| t.equal);
    Ok(VerifyReport {
        database: db.name.clone(),
        tables: out,
        equal,
    })
}
