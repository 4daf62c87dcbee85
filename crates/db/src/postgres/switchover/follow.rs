//! Who follows whom: a member's subscription and the position it applied, the point of
//! no return (a target stops following), making a member follow a new primary, and the
//! publication a new primary serves.

use std::time::{Duration, Instant};

use georep_core::{Database, DbMember};

use super::exec;
use super::fence::set_fence;
use crate::error::{DbError, Result};
use crate::postgres::catalog::selected_tables;
use crate::postgres::publication::{publish_tables, IfMissing};
use crate::postgres::{
    drop_slot, drop_subscription, publication_name, quote_ident, quote_literal, subscription_name,
};

/// A subscription's state on a member: enabled, and the connection it follows.
pub(super) async fn subscription(
    c: &tokio_postgres::Client,
    who: &str,
    name: &str,
) -> Result<Option<(bool, String)>> {
    Ok(c.query_opt(
        "SELECT subenabled, subconninfo FROM pg_subscription WHERE subname = $1",
        &[&name],
    )
    .await
    .map_err(|e| DbError::sql(who, e))?
    .map(|r| (r.get(0), r.get(1))))
}

/// The publisher's LSN of the last transaction a subscription applied.
pub(super) async fn applied_lsn(
    c: &tokio_postgres::Client,
    who: &str,
    sub: &str,
) -> Result<Option<u64>> {
    let row = c
        .query_opt(
            "SELECT o.remote_lsn::text FROM pg_replication_origin_status o \
             JOIN pg_subscription s ON o.external_id = 'pg_' || s.oid WHERE s.subname = $1",
            &[&sub],
        )
        .await
        .map_err(|e| DbError::sql(who, e))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|l| parse_lsn(&l)))
}

/// `X/Y` as a number, so LSNs compare.
fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The point of no return: the target stops following in one transaction (its
/// subscription is dropped; the slot is left to the caller). Returns the publisher's
/// LSN it had applied, or None when it was no longer subscribed.
pub(super) async fn stop_following(
    c: &tokio_postgres::Client,
    who: &str,
    sub: &str,
    measure: bool,
) -> Result<Option<Option<u64>>> {
    if subscription(c, who, sub).await?.is_none() {
        return Ok(None);
    }
    // To know what it applied, stop it first (a disabled subscription still means
    // "not promoted"), then read its position once the worker is gone.
    let applied = if measure {
        exec(
            c,
            who,
            &format!("ALTER SUBSCRIPTION {} DISABLE", quote_ident(sub)),
        )
        .await?;
        wait_worker_stopped(c, who, sub).await?;
        applied_lsn(c, who, sub).await?
    } else {
        None
    };
    drop_subscription(c, who, sub).await?;
    Ok(Some(applied))
}

/// Waits (up to 5 s) until a subscription's apply worker has stopped, so what it has
/// applied is final.
pub(super) async fn wait_worker_stopped(
    c: &tokio_postgres::Client,
    who: &str,
    sub: &str,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let running: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL)",
                &[&sub],
            )
            .await
            .map(|r| r.get(0))
            .map_err(|e| DbError::sql(who, e))?;
        if !running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Makes `member` follow `primary` from now on (no initial copy: the caller has
/// checked that it holds exactly what the new primary holds).
pub(super) async fn follow(
    c: &tokio_postgres::Client,
    who: &str,
    db: &Database,
    member: &str,
    primary: &DbMember,
    primary_client: &tokio_postgres::Client,
) -> Result<()> {
    let sub = subscription_name(db, member);
    set_fence(c, who, true).await?;
    if subscription(c, who, &sub).await?.is_some() {
        drop_subscription(c, who, &sub).await?;
    }
    // A slot of that name left on the new primary from an earlier era would be reused
    // at the wrong position.
    drop_slot(primary_client, "new primary", &sub).await?;
    exec(
        c,
        who,
        &format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (slot_name = {}, copy_data = false)",
            quote_ident(&sub),
            quote_literal(&primary.url),
            quote_ident(&publication_name(db)),
            quote_literal(&sub)
        ),
    )
    .await
}

/// The publication on the new primary, for the database's tables (kept if it exists,
/// so replicas already following it are not disturbed).
pub(super) async fn ensure_publication(
    c: &tokio_postgres::Client,
    who: &str,
    db: &Database,
) -> Result<()> {
    let tables = selected_tables(c, db, who).await?;
    publish_tables(c, who, db, &tables, IfMissing::Create).await
}

pub(super) fn fmt_lsn(l: Option<u64>) -> String {
    l.map(|l| format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff))
        .unwrap_or_else(|| "an unknown position".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_compare_as_numbers() {
        assert_eq!(parse_lsn("0/194BDD8"), Some(0x194BDD8));
        assert!(parse_lsn("1/0") > parse_lsn("0/FFFFFFFF"));
        assert_eq!(parse_lsn("junk"), None);
        assert_eq!(fmt_lsn(parse_lsn("16/B374D848")), "16/B374D848");
        assert_eq!(fmt_lsn(None), "an unknown position");
    }
}
