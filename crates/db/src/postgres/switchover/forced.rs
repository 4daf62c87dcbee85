//! Forced promotion while the primary is gone: the target stops following and becomes
//! writable, its sequences move past the data it holds, and other replicas follow it only
//! when they had applied exactly what it had.

use georep_core::{Database, DbMember};

use super::fence::set_fence;
use super::follow::{
    applied_lsn, ensure_publication, fmt_lsn, follow, stop_following, subscription,
    wait_worker_stopped,
};
use super::{exec, replica, SwitchoverReport};
use crate::crash_point;
use crate::error::{DbError, Result};
use crate::postgres::catalog::selected_tables;
use crate::postgres::conn::connect;
use crate::postgres::{quote_ident, quote_literal, subscription_name};

/// Forced promotion of replica `to` while the primary is gone: it stops following and
/// becomes writable. What it had not received is lost; the caller estimates how much
/// from the last lag it saw. Every other replica that had applied exactly what the new
/// primary had follows it; the others are left for a reseed.
pub async fn promote(db: &Database, to: &str) -> Result<SwitchoverReport> {
    let target = replica(db, to)?;
    let who = format!("replica '{to}'");
    let r = connect(&who, &target.url).await?;
    let applied = stop_following(&r, &who, &subscription_name(db, to), true)
        .await?
        .flatten();
    crash_point("promote-promoted");
    finish_forced(db, &target, &r, applied).await
}

/// After a forced promotion: the new primary is writable and publishes; other replicas
/// follow it when they had applied exactly what it had (`applied`; unknown: none do).
pub(super) async fn finish_forced(
    db: &Database,
    target: &DbMember,
    r: &tokio_postgres::Client,
    applied: Option<u64>,
) -> Result<SwitchoverReport> {
    let who = format!("new primary '{}'", target.name);
    set_fence(r, &who, false).await?;
    ensure_publication(r, &who, db).await?;
    let mut report = SwitchoverReport {
        from: db.primary.name.clone(),
        to: target.name.clone(),
        sequences_set: sequences_past_data(r, &who, db).await?,
        ..Default::default()
    };
    for m in db.replicas.iter().filter(|m| m.name != target.name) {
        let mwho = format!("replica '{}'", m.name);
        let sub = subscription_name(db, &m.name);
        let c = match connect(&mwho, &m.url).await {
            Ok(c) => c,
            Err(e) => {
                report.left_behind.push((
                    m.name.clone(),
                    format!("unreachable during the failover: {e}"),
                ));
                continue;
            }
        };
        match subscription(&c, &mwho, &sub).await? {
            Some((_, conn)) if conn == target.url => {
                report.repointed.push(m.name.clone());
                continue;
            }
            Some(_) => {
                exec(
                    &c,
                    &mwho,
                    &format!("ALTER SUBSCRIPTION {} DISABLE", quote_ident(&sub)),
                )
                .await?;
            }
            None => {}
        }
        // Its apply worker stops at a transaction boundary; then what it applied is final.
        wait_worker_stopped(&c, &mwho, &sub).await?;
        let mine = applied_lsn(&c, &mwho, &sub).await?;
        match (applied, mine) {
            (Some(a), Some(b)) if a == b => {
                follow(&c, &mwho, db, &m.name, target, r).await?;
                report.repointed.push(m.name.clone());
            }
            _ => report.left_behind.push((
                m.name.clone(),
                format!(
                    "it had applied up to {} of the old primary's changes and the new primary up to {}; following it would leave a gap or a divergence",
                    fmt_lsn(mine),
                    fmt_lsn(applied)
                ),
            )),
        }
    }
    Ok(report)
}

/// Moves every sequence owned by a replicated column past the largest value in it
/// (plus the database's margin): the last sequence push may predate rows the promoted
/// replica received, and the old primary cannot be asked.
async fn sequences_past_data(
    c: &tokio_postgres::Client,
    who: &str,
    db: &Database,
) -> Result<usize> {
    let tables = selected_tables(c, db, who).await?;
    let owned = c
        .query(
            "SELECT s.oid::regclass::text, quote_ident(a.attname), t.oid::regclass::text, \
             n.nspname || '.' || t.relname \
             FROM pg_class s \
             JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass \
               AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
             JOIN pg_class t ON t.oid = d.refobjid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid \
             WHERE s.relkind = 'S'",
            &[],
        )
        .await
        .map_err(|e| DbError::sql(who, e))?;
    let mut moved = 0;
    for row in owned {
        let (seq, col, tbl, name): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if !tables.contains(&name) {
            continue;
        }
        let margin = db.sequence_margin;
        c.query_one(
            &format!(
                "SELECT setval({seql}::regclass, GREATEST(coalesce((SELECT max({col}) FROM {tbl}), 0) + {margin}, \
                 (SELECT last_value FROM {seq})), true)",
                seql = quote_literal(&seq)
            ),
            &[],
        )
        .await
        .map_err(|e| DbError::sql(who, e))?;
        moved += 1;
    }
    Ok(moved)
}
