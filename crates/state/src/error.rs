//! Errors from the state store, by cause, each saying what to do.

/// Why the state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state URL is not one georep can use.
    #[error("state url '{url}': {reason}")]
    InvalidConfig { url: String, reason: String },
    /// The file cannot be opened or created (permissions, missing folder, full disk).
    #[error(
        "cannot open state database {path}: {reason}; check that the folder exists and is writable"
    )]
    Open { path: String, reason: String },
    /// The file is not a georep state database, or is damaged.
    #[error("state database {path} is corrupt or not a georep database: {reason}; restore it from a backup or move it aside (georep rebuilds state by rescanning)")]
    Corrupt { path: String, reason: String },
    /// The file was written by a newer georep.
    #[error("state database {path} has schema version {found}, newer than this georep understands ({supported}); upgrade georep")]
    TooNew {
        path: String,
        found: i64,
        supported: i64,
    },
    /// Any other database error.
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored JSON value could not be read back.
    #[error("state database holds an unreadable value: {0}")]
    Json(#[from] serde_json::Error),
}

impl StateError {
    /// Busy or locked databases clear up on their own; the rest do not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Sql(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;
