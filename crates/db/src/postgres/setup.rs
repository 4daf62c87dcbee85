//! `georep db setup`: prerequisites, schema, publication, subscriptions, initial copy.

use std::time::{Duration, Instant};

use georep_core::{Database, DbMember};
use serde::Serialize;
use tokio_postgres::Client;

use super::catalog::{selected_tables, sequences_used_by, tables_that_exist};
use super::conn::connect;
use super::publication::{publish_tables, IfMissing};
use super::{
    publication_name, quote_ident, quote_literal, schema_dump, split_table, subscription_name,
};
use crate::error::{DbError, Result};

/// What `setup` is doing, for a progress display.
#[derive(Debug, Clone)]
pub enum SetupProgress {
    Checked {
        tables: usize,
    },
    SchemaCopied {
        replica: String,
        tables: usize,
    },
    Subscribed {
        replica: String,
        created: bool,
    },
    Copying {
        replica: String,
        ready: usize,
        total: usize,
    },
    SequencesSynced {
        replica: String,
        sequences: usize,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaSetup {
    pub name: String,
    pub region: String,
    /// Tables whose definitions were copied (missing on the replica before).
    pub schema_copied: Vec<String>,
    /// False when the subscription existed already (a re-run).
    pub subscription_created: bool,
    pub tables_ready: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    pub database: String,
    pub publication: String,
    pub tables: Vec<String>,
    pub replicas: Vec<ReplicaSetup>,
    pub seconds: f64,
}

async fn one<T>(c: &Client, member: &str, sql: &str) -> Result<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    c.query_one(sql, &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| DbError::sql(member, e))
}

/// Every unmet prerequisite, each with its fix.
async fn check(
    db: &Database,
    primary: &Client,
    replicas: &[(DbMember, Client)],
    tables: &[String],
) -> Result<Vec<String>> {
    let mut bad = Vec::new();
    let p = "primary";
    let wal_level: String = one(primary, p, "SHOW wal_level").await?;
    if wal_level != "logical" {
        bad.push(format!(
            "primary: wal_level is '{wal_level}', logical replication needs 'logical': run ALTER SYSTEM SET wal_level = logical and restart (Azure Database for PostgreSQL: server parameter wal_level = LOGICAL; Amazon RDS: rds.logical_replication = 1)"
        ));
    }
    for (who, c) in std::iter::once((p.to_string(), primary)).chain(
        replicas
            .iter()
            .map(|(m, c)| (format!("replica '{}'", m.name), c)),
    ) {
        let v: String = one(c, &who, "SHOW server_version_num").await?;
        if v.parse::<i64>().unwrap_or(0) < 100000 {
            bad.push(format!(
                "{who}: PostgreSQL {v} is too old; logical replication needs 10 or newer"
            ));
        }
    }
    // Slots and senders: one each per replica, plus up to two table-sync workers (each
    // with a temporary slot) during the initial copy.
    let existing: i64 = primary
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = ANY($1)",
            &[&replicas
                .iter()
                .map(|(m, _)| subscription_name(db, &m.name))
                .collect::<Vec<_>>()],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| DbError::sql(p, e))?;
    let needed = replicas.len() as i64 - existing;
    let free_slots: i64 = one(
        primary,
        p,
        "SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)",
    )
    .await?;
    if free_slots < needed * 3 {
        bad.push(format!(
            "primary: {free_slots} free replication slots, {} needed ({needed} replicas, each with up to 2 more during the initial copy): raise max_replication_slots (restart needed) or drop unused slots (SELECT slot_name, active FROM pg_replication_slots)",
            needed * 3
        ));
    }
    let free_senders: i64 = one(
        primary,
        p,
        "SELECT current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)",
    )
    .await?;
    if free_senders < needed * 3 {
        bad.push(format!(
            "primary: {free_senders} free WAL senders, {} needed: raise max_wal_senders (restart needed)",
            needed * 3
        ));
    }
    let can_replicate: bool = one(
        primary,
        p,
        "SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user",
    )
    .await?;
    if !can_replicate {
        bad.push("primary: the user lacks the REPLICATION attribute: ALTER ROLE <user> WITH REPLICATION (Azure: grant azure_pg_admin and REPLICATION; RDS: GRANT rds_replication TO <user>)".to_string());
    }
    for (m, c) in replicas {
        let who = format!("replica '{}'", m.name);
        let v: i32 = one(c, &who, "SELECT current_setting('server_version_num')::int").await?;
        let sql = if v >= 160000 {
            "SELECT rolsuper OR pg_has_role(current_user, 'pg_create_subscription', 'member') FROM pg_roles WHERE rolname = current_user"
        } else {
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        };
        let ok: bool = one(c, &who, sql).await?;
        if !ok {
            bad.push(format!(
                "{who}: the user cannot create subscriptions: it needs superuser (PostgreSQL 15 and older) or membership in pg_create_subscription (16+)"
            ));
        }
    }
    let rows = primary
        .query(
            "SELECT n.nspname || '.' || c.relname, c.relreplident::text, \
             EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname || '.' || c.relname = ANY($1) ORDER BY 1",
            &[&tables],
        )
        .await
        .map_err(|e| DbError::sql(p, e))?;
    let no_identity: Vec<String> = rows
        .iter()
        .filter(|r| {
            let ident: String = r.get(1);
            let pk: bool = r.get(2);
            ident == "n" || (ident == "d" && !pk)
        })
        .map(|r| r.get(0))
        .collect();
    if !no_identity.is_empty() {
        bad.push(format!(
            "tables without a primary key or replica identity (UPDATE and DELETE on the primary would fail once published): {}; add a primary key (ALTER TABLE t ADD PRIMARY KEY (...)), or ALTER TABLE t REPLICA IDENTITY USING INDEX <unique index>, or REPLICA IDENTITY FULL",
            no_identity.join(", ")
        ));
    }
    if tables.is_empty() {
        bad.push(format!(
            "database '{}' selects no tables (schemas {:?}); create tables or fix `tables`/`schemas`",
            db.name, db.schemas
        ));
    }
    Ok(bad)
}

/// Sets up (or completes, on a re-run) every replica of `db`, returning when every
/// table is synchronized. Writes on the primary during the initial copy are not lost:
/// each subscription's slot is created before its copy starts, and changes after that
/// point are streamed once the copy is done.
pub async fn setup(
    db: &Database,
    timeout: Option<Duration>,
    progress: &(dyn Fn(SetupProgress) + Send + Sync),
) -> Result<SetupReport> {
    let started = Instant::now();
    let primary = connect("primary", &db.primary.url).await?;
    let mut replicas = Vec::new();
    for r in &db.replicas {
        let c = connect(&format!("replica '{}'", r.name), &r.url).await?;
        replicas.push((r.clone(), c));
    }
    let tables = selected_tables(&primary, db, "primary").await?;
    let bad = check(db, &primary, &replicas, &tables).await?;
    if !bad.is_empty() {
        return Err(DbError::Prerequisites(bad));
    }
    progress(SetupProgress::Checked {
        tables: tables.len(),
    });

    // Schema: create what each replica lacks.
    let mut reports = Vec::new();
    for (m, c) in &replicas {
        let who = format!("replica '{}'", m.name);
        let missing = tables_that_exist(c, &who, &tables, false).await?;
        if !missing.is_empty() {
            // With the sequences their defaults use that the replica lacks too.
            let used = sequences_used_by(&primary, "primary", &missing).await?;
            let mut objects = missing.clone();
            objects.extend(tables_that_exist(c, &who, &used, false).await?);
            let mut schemas: Vec<&str> = objects.iter().map(|t| split_table(t).0).collect();
            schemas.sort();
            schemas.dedup();
            for s in schemas {
                c.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(s)))
                    .await
                    .map_err(|e| DbError::sql(&who, e))?;
            }
            let ddl = schema_dump(&db.primary.url, None, &objects).await?;
            c.batch_execute(&ddl)
                .await
                .map_err(|e| DbError::sql(&who, e))?;
            // pg_dump clears search_path for its session; put it back for ours.
            c.batch_execute("SET search_path TO DEFAULT")
                .await
                .map_err(|e| DbError::sql(&who, e))?;
            progress(SetupProgress::SchemaCopied {
                replica: m.name.clone(),
                tables: missing.len(),
            });
        }
        reports.push(ReplicaSetup {
            name: m.name.clone(),
            region: m.region.clone(),
            schema_copied: missing,
            subscription_created: false,
            tables_ready: 0,
        });
    }

    // Publication: exactly the selected tables.
    let publication = publication_name(db);
    publish_tables(&primary, "primary", db, &tables, IfMissing::Create).await?;

    // Subscriptions.
    for ((m, c), rep) in replicas.iter().zip(reports.iter_mut()) {
        let who = format!("replica '{}'", m.name);
        let sub = subscription_name(db, &m.name);
        let exists: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)",
                &[&sub],
            )
            .await
            .map(|r| r.get(0))
            .map_err(|e| DbError::sql(&who, e))?;
        if exists {
            for sql in [
                format!("ALTER SUBSCRIPTION {} ENABLE", quote_ident(&sub)),
                format!(
                    "ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = true)",
                    quote_ident(&sub)
                ),
            ] {
                c.batch_execute(&sql)
                    .await
                    .map_err(|e| DbError::sql(&who, e))?;
            }
        } else {
            // A slot of that name without its subscription is left from an interrupted
            // run; its position is meaningless for a fresh copy.
            let stale = primary
                .query(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND NOT active",
                    &[&sub],
                )
                .await
                .map_err(|e| DbError::sql("primary", e))?;
            if !stale.is_empty() {
                tracing::info!(slot = %sub, "dropped a stale slot from an interrupted setup");
            }
            let sql = format!(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (slot_name = {}, copy_data = true)",
                quote_ident(&sub),
                quote_literal(&db.primary.url),
                quote_ident(&publication),
                quote_literal(&sub)
            );
            c.batch_execute(&sql)
                .await
                .map_err(|e| DbError::sql(&who, e))?;
            rep.subscription_created = true;
        }
        progress(SetupProgress::Subscribed {
            replica: m.name.clone(),
            created: rep.subscription_created,
        });
    }

    // Wait for every table of every replica to be ready.
    let deadline = timeout.map(|t| super::deadline_after(Instant::now(), t));
    for ((m, c), rep) in replicas.iter().zip(reports.iter_mut()) {
        let who = format!("replica '{}'", m.name);
        let sub = subscription_name(db, &m.name);
        let mut last = None;
        loop {
            let row = c
                .query_one(
                    "SELECT count(*) FILTER (WHERE sr.srsubstate = 'r'), count(*) \
                     FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid \
                     WHERE s.subname = $1",
                    &[&sub],
                )
                .await
                .map_err(|e| DbError::sql(&who, e))?;
            let (ready, total): (i64, i64) = (row.get(0), row.get(1));
            if last != Some(ready) {
                progress(SetupProgress::Copying {
                    replica: m.name.clone(),
                    ready: ready as usize,
                    total: total as usize,
                });
                last = Some(ready);
            }
            if total >= tables.len() as i64 && ready == total {
                rep.tables_ready = ready as usize;
                break;
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                let errors: i64 = c
                    .query_one(
                        "SELECT coalesce(sum(sync_error_count + apply_error_count), 0) \
                         FROM pg_stat_subscription_stats WHERE subname = $1",
                        &[&sub],
                    )
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                return Err(DbError::Timeout(format!(
                    "{who}: {ready} of {total} tables synchronized when the timeout ran out ({errors} replication errors reported; see the replica's server log). The copy goes on; run setup again to keep waiting"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // Sequences are not replicated: push replicas' ahead now.
    for (m, c) in &replicas {
        let n =
            super::drift::push_sequences(&primary, c, &m.name, &tables, db.sequence_margin).await?;
        progress(SetupProgress::SequencesSynced {
            replica: m.name.clone(),
            sequences: n,
        });
    }
    Ok(SetupReport {
        database: db.name.clone(),
        publication,
        tables,
        replicas: reports,
        seconds: started.elapsed().as_secs_f64(),
    })
}
