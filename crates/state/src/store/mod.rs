//! The SQLite-backed state store: [`State`], opening a state file and bringing its schema
//! up to date. What it records lives in one child module per concern: policies, the
//! source manifest, the work queue and failover groups.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::Connection;

use crate::error::{Result, StateError};
use crate::schema::MIGRATIONS;

mod failover;
mod manifest;
mod policies;
mod queue;
#[cfg(test)]
mod tests;

pub use self::failover::{FailoverEvent, FailoverFinish, FailoverRecord};
pub use self::manifest::{Observed, ObservedKind};
pub use self::policies::{PolicyChange, PolicyRecord};
pub use self::queue::DestLag;

/// Queue items, their operation and status, and manifest entries are the API's types:
/// the state parses its text columns into them at the SQL edge (`Op::parse`,
/// `Status::parse`), and the API shows them as stored.
pub use georep_api::{
    ItemStatus as Status, ObjectAtDestination as Item, Op, SourceObject as ManifestEntry,
};

/// The state store. One connection behind a mutex: every operation is a short
/// transaction, and SQLite serialises writers anyway.
pub struct State {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("path", &self.path).finish()
    }
}

impl State {
    /// Opens (creating if needed) the state named by a `sqlite://PATH` URL or a bare path.
    pub fn open(url: &str) -> Result<Self> {
        let path = if let Some(p) = url.strip_prefix("sqlite://") {
            PathBuf::from(p)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Err(StateError::InvalidConfig {
                url: georep_core::redact_url(url),
                reason: "PostgreSQL state (shared by many workers) is not available in this \
                         version; use sqlite://PATH"
                    .into(),
            });
        } else if url.contains("://") {
            return Err(StateError::InvalidConfig {
                url: georep_core::redact_url(url),
                reason: "unknown scheme; use sqlite://PATH".into(),
            });
        } else {
            PathBuf::from(url)
        };
        Self::open_path(&path)
    }

    /// Opens (creating if needed) a SQLite state file.
    pub fn open_path(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StateError::Open {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        }
        let conn = Connection::open(path).map_err(|e| StateError::Open {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let corrupt = |e: rusqlite::Error| StateError::Corrupt {
            path: shown.clone(),
            reason: e.to_string(),
        };
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(corrupt)?;
        // WAL + NORMAL: a commit survives the process being killed at any moment (the WAL
        // is in the OS page cache); only a power cut can lose the last commits.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(corrupt)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(corrupt)?;
        let state = Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        };
        state.migrate()?;
        Ok(state)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (the
        // transaction rolls back on drop), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.lock();
        let shown = self.path.display().to_string();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| StateError::Corrupt {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StateError::TooNew {
                path: shown,
                found: version,
                supported,
            });
        }
        if version == 0 {
            // A non-empty database without our version is someone else's file.
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(|e| StateError::Corrupt {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            if tables > 0 {
                return Err(StateError::Corrupt {
                    path: shown,
                    reason: format!("it has {tables} tables but no georep schema version"),
                });
            }
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }
}
