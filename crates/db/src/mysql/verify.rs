//! `db verify` for MariaDB replicas, in the same report shape as PostgreSQL's: each
//! table split into key ranges (single integer primary keys; other tables are one
//! range), each range hashed on both sides much as pt-table-checksum does: a row's
//! columns, each after its length, and NULL flags, hashed, and the hashes aggregated
//! over the range with the row count, after the replica has applied everything the
//! primary had when verify began. The row hash is CRC32 and CRC32C side by side (64
//! bits; MariaDB 10.8+), *summed* over the range: CRCs are linear, so the XOR that
//! pt-table-checksum aggregates with cannot see a value swapped between two rows,
//! while a sum can. Servers without CRC32C get 64 bits of MD5, also summed (a XOR
//! would cancel two identical rows), at about twice the cost. FLOAT columns are hashed
//! as DOUBLE (their text has 6 digits), and a row too long to join is an error, not a
//! row left out.
//! A differing range is read again, once the replica has caught up, before it is
//! reported, since rows may still move. Ranges are hashed by `jobs` session pairs,
//! each range on both servers at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use tokio::task::JoinSet;

use super::check::Member;
use super::{conn, quote_ident, text};
use crate::error::{DbError, Result};
use crate::postgres::{RangeDiff, TableCheck, VerifyOptions, VerifyReport};

/// How one table is split and hashed.
struct Plan {
    schema: String,
    table: String,
    /// Column expressions, quoted (FLOAT cast to DOUBLE).
    columns: Vec<String>,
    /// A column can hold values near max_allowed_packet.
    long_values: bool,
    int_key: Option<String>,
    bounds: Vec<(Option<i64>, Option<i64>)>,
}

impl Plan {
    fn full(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// The query for one range: rows and the aggregate of each row's hash.
    fn sql(&self, b: (Option<i64>, Option<i64>), crc: bool) -> String {
        // Each value's length first, so `('a#','b')` and `('a','#b')` differ.
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .flat_map(|c| [format!("LENGTH({c})"), c.clone()])
            .collect();
        parts.extend(self.columns.iter().map(|c| format!("ISNULL({c})")));
        let row = format!("CONCAT_WS('#', {})", parts.join(", "));
        let mut cond = Vec::new();
        if let Some(k) = &self.int_key {
            if let Some(lo) = b.0 {
                cond.push(format!("{} >= {lo}", quote_ident(k)));
            }
            if let Some(hi) = b.1 {
                cond.push(format!("{} < {hi}", quote_ident(k)));
            }
        }
        format!(
            "SELECT COUNT(*) AS n, {} AS big, {} AS h FROM {}{}",
            // A joined row longer than max_allowed_packet is NULL and would drop out of
            // the sum unseen: counted, and refused by `hash`.
            if self.long_values {
                format!("COALESCE(SUM({row} IS NULL), 0)")
            } else {
                "0".to_string()
            },
            if crc {
                format!("COALESCE(SUM((CRC32({row}) << 32) | CRC32C({row})), 0)")
            } else {
                format!("COALESCE(SUM(CAST(CONV(LEFT(MD5({row}), 16), 16, 10) AS UNSIGNED)), 0)")
            },
            self.full(),
            if cond.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", cond.join(" AND "))
            }
        )
    }
}

async fn plans(c: &mut Conn, opts: &VerifyOptions) -> Result<Vec<Plan>> {
    let err = |e| DbError::mysql("primary", e);
    let system = super::system_schemas_sql();
    let rows: Vec<Row> = c
        .query(format!(
            "SELECT TABLE_SCHEMA AS s, TABLE_NAME AS t FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ({system}, 'georep') \
             ORDER BY TABLE_SCHEMA, TABLE_NAME"
        ))
        .await
        .map_err(err)?;
    let mut out = Vec::new();
    for r in rows {
        let (schema, table) = (
            text(&r, "s").unwrap_or_default(),
            text(&r, "t").unwrap_or_default(),
        );
        if let Some(want) = &opts.table {
            if want != &format!("{schema}.{table}") && want != &table {
                continue;
            }
        }
        let typed: Vec<(String, String)> = c
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (schema.clone(), table.clone()),
            )
            .await
            .map_err(err)?;
        let long_values = typed.iter().any(|(_, ty)| {
            matches!(
                ty.to_ascii_lowercase().as_str(),
                "mediumblob" | "longblob" | "mediumtext" | "longtext" | "json"
            )
        });
        let columns: Vec<String> = typed
            .iter()
            .map(|(c, ty)| super::read_expr(c, ty))
            .collect();
        let keys: Vec<Row> = c
            .exec(
                "SELECT k.COLUMN_NAME AS c, col.DATA_TYPE AS ty FROM information_schema.KEY_COLUMN_USAGE k \
                 JOIN information_schema.COLUMNS col ON col.TABLE_SCHEMA = k.TABLE_SCHEMA AND col.TABLE_NAME = k.TABLE_NAME AND col.COLUMN_NAME = k.COLUMN_NAME \
                 WHERE k.TABLE_SCHEMA = ? AND k.TABLE_NAME = ? AND k.CONSTRAINT_NAME = 'PRIMARY' ORDER BY k.ORDINAL_POSITION",
                (schema.clone(), table.clone()),
            )
            .await
            .map_err(err)?;
        let int_key = match keys.as_slice() {
            [k] if text(k, "ty").is_some_and(|t| {
                matches!(
                    t.as_str(),
                    "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
                )
            }) =>
            {
                text(k, "c")
            }
            _ => None,
        };
        let mut plan = Plan {
            schema,
            table,
            columns,
            long_values,
            int_key,
            bounds: vec![(None, None)],
        };
        if let Some(k) = &plan.int_key {
            let row: Option<Row> = c
                .query_first(format!(
                    "SELECT CAST(MIN({k}) AS SIGNED) AS lo, CAST(MAX({k}) AS SIGNED) AS hi FROM {}",
                    plan.full(),
                    k = quote_ident(k)
                ))
                .await
                .map_err(err)?;
            let num = |c: &str| {
                row.as_ref()
                    .and_then(|r| text(r, c))
                    .and_then(|v| v.parse::<i64>().ok())
            };
            if let (Some(lo), Some(hi)) = (num("lo"), num("hi")) {
                let n = opts.ranges.max(1) as i64;
                let step = i64::try_from((i128::from(hi) - i128::from(lo)) / i128::from(n))
                    .unwrap_or(i64::MAX)
                    .max(1);
                let mut cuts: Vec<i64> =
                    (1..n).map(|i| lo + i * step).filter(|c| *c <= hi).collect();
                cuts.dedup();
                plan.bounds.clear();
                let mut prev = None;
                for cut in cuts {
                    plan.bounds.push((prev, Some(cut)));
                    prev = Some(cut);
                }
                plan.bounds.push((prev, None));
            }
        }
        out.push(plan);
    }
    if let Some(t) = &opts.table {
        if out.is_empty() {
            return Err(DbError::InvalidConfig(format!(
                "no table {t} on the primary; name it as database.table"
            )));
        }
    }
    Ok(out)
}

async fn hash(c: &mut Conn, who: &str, sql: &str) -> Result<(i64, String)> {
    let row: Option<Row> = c
        .query_first(sql)
        .await
        .map_err(|e| DbError::mysql(who, e))?;
    let num = |col: &str| {
        row.as_ref()
            .and_then(|r| text(r, col))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let big = num("big");
    if big > 0 {
        return Err(DbError::Sql {
            member: who.into(),
            detail: format!(
                "{big} rows are longer than max_allowed_packet once their columns are joined for hashing, so they cannot be compared; raise max_allowed_packet on both servers (or check that table with --table after raising it)"
            ),
        });
    }
    Ok((
        num("n"),
        row.and_then(|r| text(&r, "h")).unwrap_or_default(),
    ))
}

/// Whether the server has `CRC32C()` (MariaDB 10.8 and later).
async fn has_crc32c(c: &mut Conn) -> bool {
    c.query_drop("SELECT CRC32C('')").await.is_ok()
}

/// Makes the replica apply everything the primary has logged now (at most `secs`).
async fn catch_up(pc: &mut Conn, rc: &mut Conn, (p, r): (&str, &str), secs: u32) -> Result<()> {
    let (d, _) = super::Dialect::of_server(pc, p).await?;
    let head: String = pc
        .query_first(d.executed())
        .await
        .map_err(|e| DbError::mysql(p, e))?
        .unwrap_or_default();
    let _: Option<i64> = rc
        .exec_first(d.wait_executed(), (head, secs))
        .await
        .map_err(|e| DbError::mysql(r, e))?;
    Ok(())
}

/// One range's outcome: the plan and bound it belongs to, rows on each side, and
/// whether the hashes still differed after the rechecks.
struct Outcome {
    plan: usize,
    bound: usize,
    rows: (i64, i64),
    differs: bool,
}

/// One pair of sessions (primary, replica) hashing ranges off the shared queue; each
/// range is hashed on both servers at once.
async fn worker(
    plans: Arc<Vec<Plan>>,
    queue: Arc<Mutex<VecDeque<(usize, usize)>>>,
    (primary, replica): (Member, Member),
    (rechecks, crc): (u32, bool),
) -> Result<Vec<Outcome>> {
    let (p, r) = (primary.name.as_str(), replica.name.as_str());
    let mut pc = conn::connect(p, &primary.url).await?;
    let mut rc = conn::connect(r, &replica.url).await?;
    let mut out = Vec::new();
    let mut reconnected = false;
    loop {
        let next = queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front();
        let Some((plan, bound)) = next else { break };
        let sql = plans[plan].sql(plans[plan].bounds[bound], crc);
        let mut attempt = 0;
        loop {
            let (a, z) = match tokio::try_join!(hash(&mut pc, p, &sql), hash(&mut rc, r, &sql)) {
                Ok(hashes) => hashes,
                Err(e) if reconnected => return Err(e),
                Err(e) => {
                    // A session lost between regions is opened again, once per
                    // worker; the range is hashed again on both sides.
                    tracing::warn!(error = %e, "a verify session failed; connecting again");
                    reconnected = true;
                    pc = conn::connect(p, &primary.url).await?;
                    rc = conn::connect(r, &replica.url).await?;
                    continue;
                }
            };
            if a == z || attempt >= rechecks {
                out.push(Outcome {
                    plan,
                    bound,
                    rows: (a.0, z.0),
                    differs: a != z,
                });
                break;
            }
            // Rows may still be on their way: read again once the replica has what
            // the primary holds now.
            attempt += 1;
            catch_up(&mut pc, &mut rc, (p, r), 10).await?;
        }
    }
    let _ = pc.disconnect().await;
    let _ = rc.disconnect().await;
    Ok(out)
}

/// Compares every table (or `opts.table`) of each replica with the primary, hashing
/// `opts.jobs` ranges at a time, each on both servers at once.
pub async fn verify(
    database: &str,
    primary: &Member,
    replicas: &[Member],
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let mut pc = conn::connect(&primary.name, &primary.url).await?;
    let plans = Arc::new(plans(&mut pc, opts).await?);
    let mut tables = Vec::new();
    for r in replicas {
        // Both sides must hash alike: CRC32C only if both have it.
        let mut crc = has_crc32c(&mut pc).await;
        {
            let mut rc = conn::connect(&r.name, &r.url).await?;
            // Rows may still be on their way: wait for what the primary has now.
            catch_up(&mut pc, &mut rc, (&primary.name, &r.name), 30).await?;
            crc &= has_crc32c(&mut rc).await;
            let _ = rc.disconnect().await;
        }
        let work: VecDeque<(usize, usize)> = plans
            .iter()
            .enumerate()
            .flat_map(|(i, p)| (0..p.bounds.len()).map(move |b| (i, b)))
            .collect();
        let queue = Arc::new(Mutex::new(work));
        let mut workers = JoinSet::new();
        for _ in 0..opts.jobs.clamp(1, 32) {
            workers.spawn(worker(
                plans.clone(),
                queue.clone(),
                (primary.clone(), r.clone()),
                (opts.rechecks, crc),
            ));
        }
        let mut outcomes = Vec::new();
        while let Some(done) = workers.join_next().await {
            outcomes.extend(done.map_err(|e| DbError::Sql {
                member: r.name.clone(),
                detail: format!("a verify session ended: {e}"),
            })??);
        }
        outcomes.sort_by_key(|o| (o.plan, o.bound));
        for (i, p) in plans.iter().enumerate() {
            let mine = outcomes.iter().filter(|o| o.plan == i);
            let (mut primary_rows, mut replica_rows) = (0i64, 0i64);
            let mut differing = Vec::new();
            for o in mine {
                primary_rows += o.rows.0;
                replica_rows += o.rows.1;
                if o.differs {
                    let b = p.bounds[o.bound];
                    differing.push(RangeDiff {
                        from: b.0,
                        to: b.1,
                        primary_rows: o.rows.0,
                        replica_rows: o.rows.1,
                    });
                }
            }
            tables.push(TableCheck {
                replica: r.name.clone(),
                table: format!("{}.{}", p.schema, p.table),
                primary_rows,
                replica_rows,
                ranges: p.bounds.len(),
                equal: differing.is_empty(),
                differing,
            });
        }
    }
    let _ = pc.disconnect().await;
    Ok(VerifyReport {
        database: database.to_string(),
        equal: tables.iter().all(|t| t.equal),
        tables,
    })
}
