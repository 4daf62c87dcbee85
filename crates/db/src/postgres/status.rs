//! `georep db status`: per replica, state, lag, WAL kept by its slot, sequence and
//! schema drift.

use georep_core::Database;
use tokio_postgres::Client;

use super::catalog::selected_tables;
use super::conn::connect;
use super::drift::{schema_drift, sequence_drift};
use super::subscription_name;
use crate::error::{DbError, Result};

use georep_api::ReplicaState;
pub use georep_api::ReplicaStatus;

/// Status of every replica of `db`. The primary must be reachable; replicas that are not
/// are reported as such.
pub async fn status(db: &Database) -> Result<Vec<ReplicaStatus>> {
    let primary = connect("primary", &db.primary.url).await?;
    let tables = selected_tables(&primary, db, "primary").await?;
    let keep: String = primary
        .query_one("SHOW max_slot_wal_keep_size", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| DbError::sql("primary", e))?;
    let mut out = Vec::new();
    for r in &db.replicas {
        let sub = subscription_name(db, &r.name);
        let mut st = ReplicaStatus {
            name: r.name.clone(),
            region: r.region.clone(),
            url: georep_core::redact_url(&r.url),
            state: ReplicaState::NotSetUp,
            error: None,
            tables_ready: 0,
            tables_total: 0,
            lag_bytes: None,
            lag_seconds: None,
            slot_active: false,
            wal_retained_bytes: None,
            wal_status: None,
            safe_wal_bytes: None,
            max_slot_wal_keep_size: keep.clone(),
            wal_warning: None,
            sequence_drift: Vec::new(),
            sequences_behind: 0,
            schema_drift: Vec::new(),
            rpo_seconds: 0.0,
            rpo_breached: false,
            io_thread: None,
            sql_thread: None,
            gtid_distance: None,
            relay_log_bytes: None,
        };
        let slot = primary
            .query_opt(
                "SELECT active, \
                 pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, \
                 pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, \
                 wal_status, safe_wal_size FROM pg_replication_slots WHERE slot_name = $1",
                &[&sub],
            )
            .await
            .map_err(|e| DbError::sql("primary", e))?;
        if let Some(s) = &slot {
            st.slot_active = s.get(0);
            st.lag_bytes = s.get::<_, Option<i64>>(1).map(|v| v.max(0));
            st.wal_retained_bytes = s.get::<_, Option<i64>>(2).map(|v| v.max(0));
            st.wal_status = s.get(3);
            st.safe_wal_bytes = s.get(4);
            st.wal_warning = wal_warning(&st, &keep);
            let lag: Option<f64> = primary
                .query_opt(
                    "SELECT coalesce(EXTRACT(epoch FROM replay_lag)::float8, 0) \
                     FROM pg_stat_replication WHERE application_name = $1",
                    &[&sub],
                )
                .await
                .map_err(|e| DbError::sql("primary", e))?
                .map(|r| r.get(0));
            st.lag_seconds = lag;
        }
        match connect(&format!("replica '{}'", r.name), &r.url).await {
            Err(e) => {
                st.state = ReplicaState::Unreachable;
                st.error = Some(e.to_string());
            }
            Ok(c) => {
                replica_side(&c, &sub, &mut st).await?;
                if st.state != ReplicaState::NotSetUp {
                    st.sequence_drift = sequence_drift(&primary, &c, &r.name, &tables).await?;
                    st.sequences_behind = st.sequence_drift.iter().filter(|d| d.behind > 0).count();
                    st.schema_drift = schema_drift(&primary, &c, &r.name, &tables).await?;
                }
            }
        }
        if st.wal_status.as_deref() == Some("lost") {
            st.state = ReplicaState::SlotLost;
            st.error = Some("the primary removed WAL this replica still needed (max_slot_wal_keep_size); the replica cannot catch up: run georep db teardown, then georep db setup".into());
        }
        // The RPO: what a failover to this replica would lose right now. Unknown (the
        // replica is not receiving) counts as breached.
        st.rpo_seconds = st.lag_seconds.unwrap_or(0.0);
        st.rpo_breached = match st.state {
            ReplicaState::Streaming | ReplicaState::CatchingUp => {
                st.rpo_seconds > db.rpo.as_secs_f64()
            }
            _ => true,
        };
        out.push(st);
    }
    Ok(out)
}

async fn replica_side(c: &Client, sub: &str, st: &mut ReplicaStatus) -> Result<()> {
    let who = format!("replica '{}'", st.name);
    let Some(row) = c
        .query_opt(
            "SELECT s.subenabled, \
             (SELECT count(*) FROM pg_subscription_rel sr WHERE sr.srsubid = s.oid AND sr.srsubstate = 'r'), \
             (SELECT count(*) FROM pg_subscription_rel sr WHERE sr.srsubid = s.oid), \
             (SELECT pid FROM pg_stat_subscription ss WHERE ss.subid = s.oid AND ss.relid IS NULL LIMIT 1) \
             FROM pg_subscription s WHERE s.subname = $1",
            &[&sub],
        )
        .await
        .map_err(|e| DbError::sql(&who, e))?
    else {
        st.state = ReplicaState::NotSetUp;
        return Ok(());
    };
    let enabled: bool = row.get(0);
    st.tables_ready = row.get(1);
    st.tables_total = row.get(2);
    let worker: Option<i32> = row.get(3);
    st.state = if !enabled {
        ReplicaState::Disabled
    } else if st.tables_ready < st.tables_total {
        ReplicaState::InitialCopy
    } else if worker.is_none() || !st.slot_active || st.lag_seconds.unwrap_or(0.0) > 1.0 {
        ReplicaState::CatchingUp
    } else {
        ReplicaState::Streaming
    };
    Ok(())
}

fn wal_warning(st: &ReplicaStatus, keep: &str) -> Option<String> {
    let retained = st.wal_retained_bytes.unwrap_or(0);
    if keep.trim() == "-1" {
        (retained > 1 << 30).then(|| {
            format!(
                "slot keeps {} MiB of WAL with no limit (max_slot_wal_keep_size = -1): a replica that stays away can fill the primary's disk; set max_slot_wal_keep_size",
                retained >> 20
            )
        })
    } else {
        match st.safe_wal_bytes {
            Some(safe) if safe < (retained + safe) / 5 => Some(format!(
                "only {} MiB of WAL left before the primary invalidates this slot (max_slot_wal_keep_size = {keep}); bring the replica back or raise the limit",
                safe.max(0) >> 20
            )),
            _ => None,
        }
    }
}
