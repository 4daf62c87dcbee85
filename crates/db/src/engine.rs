//! One entry point per role-change operation for every engine: failover groups and
//! drills call these, and they dispatch on `Database::engine` to the `postgres` or
//! `mysql` module. A probe holds a [`Session`] (an enum, not a trait object: the two
//! drivers' sessions differ, and async methods would not be object-safe).

use std::collections::HashSet;
use std::time::Duration;

use georep_api::{Lag, ReplicaState, ReplicaStatus, ReseedReport};
use georep_core::{Database, DbEngine, DbMember};
use mysql_async::prelude::Queryable;

use crate::error::{DbError, Result};
use crate::role::{Settled, SwitchoverReport};
use crate::{mysql as my, postgres as pg};

fn is_my(db: &Database) -> Result<bool> {
    Ok(match db.engine {
        DbEngine::Postgres => false,
        DbEngine::MariaDb | DbEngine::MySql => true,
    })
}

/// A session with one member, held by a failover group's probe.
pub enum Session {
    Pg(pg::Client),
    My(mysql_async::Conn, my::Dialect),
}

impl Session {
    /// Connects to member `m` of `db`, naming it in errors.
    pub async fn connect(db: &Database, m: &DbMember) -> Result<Self> {
        Ok(if is_my(db)? {
            Self::My(
                my::connect(&m.name, &m.url).await?,
                my::Dialect::of_engine(db.engine),
            )
        } else {
            Self::Pg(pg::connect(&m.name, &m.url).await?)
        })
    }

    /// A round trip (`SELECT 1`).
    pub async fn ping(&mut self, who: &str) -> Result<()> {
        match self {
            Self::Pg(c) => c
                .simple_query("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| DbError::sql(who, e)),
            Self::My(c, _) => c
                .query_drop("SELECT 1")
                .await
                .map_err(|e| DbError::mysql(who, e)),
        }
    }

    /// Whether the fence must be checked at every probe: MariaDB's `read_only` is lost
    /// when the server restarts; PostgreSQL's default is stored with the database.
    pub fn fence_is_volatile(&self) -> bool {
        matches!(self, Self::My(..))
    }

    /// Sets the member's read-only default for its role.
    pub async fn set_fence(&mut self, who: &str, on: bool) -> Result<()> {
        match self {
            Self::Pg(c) => pg::set_fence(c, who, on).await,
            Self::My(c, d) => {
                if my::switchover::fenced(c, who).await? == on {
                    return Ok(());
                }
                my::switchover::set_fence(*d, c, who, on).await
            }
        }
    }

    /// Each replica's lag, read through this session with the primary. `beat`: the
    /// caller holds the group (no role change runs), so MariaDB's probe may write its
    /// heartbeat.
    pub async fn replica_lag(&mut self, db: &Database, beat: bool) -> Result<Vec<(String, Lag)>> {
        Ok(match self {
            Self::Pg(c) => pg::replica_lag(c, db)
                .await?
                .into_iter()
                .map(|(name, bytes, seconds)| {
                    (
                        name,
                        Lag {
                            bytes,
                            seconds,
                            transactions: None,
                        },
                    )
                })
                .collect(),
            Self::My(c, _) => my::switchover::replica_lag(c, db, beat)
                .await?
                .into_iter()
                .map(|(name, transactions, seconds)| {
                    (
                        name,
                        Lag {
                            bytes: None,
                            seconds,
                            transactions,
                        },
                    )
                })
                .collect(),
        })
    }
}

/// Waits, changing nothing, until replica `to` is close enough for a planned switchover.
pub async fn preflight(db: &Database, to: &str, timeout: Duration) -> Result<()> {
    if is_my(db)? {
        my::switchover::preflight(db, to, timeout).await
    } else {
        pg::preflight(db, to, timeout).await
    }
}

/// Planned switchover to replica `to` with zero loss.
pub async fn switchover(db: &Database, to: &str, timeout: Duration) -> Result<SwitchoverReport> {
    if is_my(db)? {
        my::switchover::switchover(db, to, timeout).await
    } else {
        pg::switchover(db, to, timeout).await
    }
}

/// Forced promotion of replica `to` while the primary is gone.
pub async fn promote(db: &Database, to: &str) -> Result<SwitchoverReport> {
    if is_my(db)? {
        my::switchover::promote(db, to).await
    } else {
        pg::promote(db, to).await
    }
}

/// Refuses, changing nothing, a forced promotion of `to` that would lose or invent
/// data (MariaDB: errant transactions, a relay log that cannot be applied, another
/// replica that received more). PostgreSQL checks as it promotes.
pub async fn check_promotable(db: &Database, to: &str) -> Result<()> {
    if is_my(db)? {
        my::switchover::check_promotable(db, to).await
    } else {
        Ok(())
    }
}

/// Settles an interrupted role change (rolled back or finished).
pub async fn settle(db: &Database, to: &str, planned: bool) -> Result<Settled> {
    if is_my(db)? {
        my::switchover::settle(db, to, planned).await
    } else {
        pg::settle(db, to, planned).await
    }
}

/// Rebuilds fenced member `m` as a replica of `db`'s primary from a fresh copy.
pub async fn reseed(db: &Database, m: &DbMember) -> Result<ReseedReport> {
    if is_my(db)? {
        let r = my::switchover::reseed(db, m).await?;
        return Ok(ReseedReport {
            tables: r.databases,
            seconds: r.duration_ms as f64 / 1000.0,
        });
    }
    pg::prepare_reseed(db, m).await?;
    let only = Database {
        replicas: vec![m.clone()],
        ..db.clone()
    };
    let r = pg::setup(&only, Some(Duration::from_secs(3600)), &|_| {}).await?;
    Ok(ReseedReport {
        tables: r.tables,
        seconds: r.seconds,
    })
}

/// Every replica's replication status, for the daemon's poller: PostgreSQL's, or
/// MariaDB's with lag read from the daemon's heartbeat (written at each poll).
pub async fn status(db: &Database) -> Result<Vec<ReplicaStatus>> {
    if !is_my(db)? {
        return pg::status(db).await;
    }
    let m = |x: &DbMember, primary| my::check::Member {
        name: x.name.clone(),
        url: x.url.clone(),
        primary,
    };
    let replicas: Vec<_> = db.replicas.iter().map(|r| m(r, false)).collect();
    let states = my::status::status(
        &m(&db.primary, true),
        &replicas,
        db.rpo,
        my::status::LagBy::Beat,
    )
    .await?;
    Ok(db
        .replicas
        .iter()
        .zip(states)
        .map(|(r, s)| ReplicaStatus {
            name: r.name.clone(),
            region: r.region.clone(),
            url: georep_core::redact_url(&r.url),
            state: match (s.io_running.as_str(), s.sql_running.as_str()) {
                ("Yes", "Yes") if !s.rpo_breached => ReplicaState::Streaming,
                ("Yes", "Yes") => ReplicaState::CatchingUp,
                _ if s
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("run georep db setup")) =>
                {
                    ReplicaState::NotSetUp
                }
                _ => ReplicaState::Disabled,
            },
            error: s.last_error,
            tables_ready: 0,
            tables_total: 0,
            lag_bytes: None,
            lag_seconds: s.lag_seconds,
            slot_active: s.io_running == "Yes",
            wal_retained_bytes: None,
            wal_status: None,
            safe_wal_bytes: None,
            max_slot_wal_keep_size: String::new(),
            wal_warning: None,
            sequence_drift: Vec::new(),
            sequences_behind: 0,
            schema_drift: Vec::new(),
            rpo_seconds: db.rpo.as_secs_f64(),
            rpo_breached: s.rpo_breached,
            io_thread: Some(s.io_running),
            sql_thread: Some(s.sql_running),
            gtid_distance: Some(s.gtid_distance),
            relay_log_bytes: Some(s.relay_log_bytes),
        })
        .collect())
}

/// The table a drill writes to, replicated like any other.
const PG_DRILL_TABLE: &str = "CREATE TABLE IF NOT EXISTS georep_drill (id bigserial PRIMARY KEY, v text UNIQUE NOT NULL, at timestamptz NOT NULL DEFAULT now())";
const MY_DRILL_TABLE: &str = "CREATE DATABASE IF NOT EXISTS georep; CREATE TABLE IF NOT EXISTS georep.drill (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(100) NOT NULL UNIQUE, at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))";

/// Creates the drill table (on every member for PostgreSQL, whose DDL does not
/// replicate; on the primary for MariaDB, whose binary log carries it).
pub async fn prepare_drill(db: &Database) -> Result<()> {
    if is_my(db)? {
        let mut c = my::connect("primary", &db.primary.url).await?;
        c.query_drop(MY_DRILL_TABLE)
            .await
            .map_err(|e| DbError::mysql("primary", e))?;
        let _ = c.disconnect().await;
        return Ok(());
    }
    pg::ddl(db, PG_DRILL_TABLE).await.map(|_| ())
}

/// A drill's client session through a listener.
pub enum DrillSession {
    Pg(pg::Client),
    My(mysql_async::Conn),
}

impl DrillSession {
    pub async fn connect(db: &Database, url: &str) -> Result<Self> {
        Ok(if is_my(db)? {
            Self::My(my::connect("listener", url).await?)
        } else {
            Self::Pg(pg::connect("listener", url).await?)
        })
    }

    /// Writes `v`; true once the database acknowledged it.
    pub async fn insert(&mut self, v: &str) -> bool {
        match self {
            Self::Pg(c) => c
                .execute("INSERT INTO georep_drill (v) VALUES ($1)", &[&v])
                .await
                .is_ok(),
            Self::My(c) => c
                .exec_drop("INSERT INTO georep.drill (v) VALUES (?)", (v,))
                .await
                .is_ok(),
        }
    }

    /// Every value in the drill table.
    pub async fn values(&mut self) -> Result<HashSet<String>> {
        Ok(match self {
            Self::Pg(c) => c
                .query("SELECT v FROM georep_drill", &[])
                .await
                .map_err(|e| DbError::sql("listener", e))?
                .iter()
                .map(|r| r.get(0))
                .collect(),
            Self::My(c) => c
                .query::<String, _>("SELECT v FROM georep.drill")
                .await
                .map_err(|e| DbError::mysql("listener", e))?
                .into_iter()
                .collect(),
        })
    }
}
