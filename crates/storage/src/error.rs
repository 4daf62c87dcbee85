//! One error type for the crate: what went wrong, with which store, and whether a retry
//! could help. Messages name the store (never a secret) and the likely fix.

/// An error from a store or from the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The store URL or its environment is unusable (missing account, bad endpoint).
    #[error("store '{store}': {detail}")]
    InvalidConfig { store: String, detail: String },
    /// The container or bucket itself does not exist.
    #[error("store '{store}': {what} '{name}' does not exist; create it first, or check the URL for a typo")]
    ContainerNotFound {
        store: String,
        what: &'static str,
        name: String,
    },
    /// A local folder or object that must exist does not.
    #[error("store '{store}': {detail}")]
    NotFound { store: String, detail: String },
    /// The endpoint answered but refused the credentials.
    #[error("store '{store}': credentials refused ({detail}); check {env}")]
    PermissionDenied {
        store: String,
        detail: String,
        env: &'static str,
    },
    /// The endpoint could not be reached in the retry window.
    #[error("cannot reach store '{store}': {detail}; is the endpoint up and the URL right?")]
    Unreachable { store: String, detail: String },
    /// A copied object did not verify (size or hash).
    #[error("verification failed: {0}")]
    Verify(String),
    /// Local disk IO.
    #[error("store '{store}': {detail}")]
    Io {
        store: String,
        detail: String,
        retryable: bool,
    },
    /// One entry that cannot be listed, read or written here (a name no store can hold,
    /// a link left alone, keys `a` and `a/b` on a folder). Reported by key; the rest of
    /// the run goes on, and it does not hold back deletes of other keys.
    #[error("store '{store}': '{key}': {detail}")]
    Skipped {
        store: String,
        key: String,
        detail: String,
    },
    /// The listing left part of the store unseen on purpose (symbolic links not
    /// followed): every listed entry is right, but a key missing from it may still
    /// exist, so nothing may be deleted for its absence.
    #[error("store '{store}': {detail}")]
    Unlisted { store: String, detail: String },
    /// Anything else the backend reported.
    #[error("store '{store}': {detail}")]
    Backend {
        store: String,
        detail: String,
        retryable: bool,
    },
}

impl StorageError {
    /// Whether trying the same operation again may succeed. object_store already retries
    /// transport errors, 5xx and 429 with backoff; this covers what is left (a mismatch
    /// after a good transfer, a source that changed mid-copy).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Verify(_) => true,
            Self::Io { retryable, .. } | Self::Backend { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// Whether the error means the whole store is unusable, not just one object.
    pub fn is_fatal_for_store(&self) -> bool {
        matches!(
            self,
            Self::InvalidConfig { .. }
                | Self::ContainerNotFound { .. }
                | Self::PermissionDenied { .. }
                | Self::Unreachable { .. }
        )
    }

    /// The exit-code class from DESIGN.md: 2 bad input or config, 3 unreachable or
    /// credentials refused, 1 anything else.
    pub fn exit_class(&self) -> u8 {
        match self {
            Self::InvalidConfig { .. } | Self::ContainerNotFound { .. } | Self::NotFound { .. } => {
                2
            }
            Self::PermissionDenied { .. } | Self::Unreachable { .. } => 3,
            _ => 1,
        }
    }

    pub(crate) fn io(store: &str, what: &str, e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let retryable = matches!(e.kind(), K::Interrupted | K::TimedOut | K::WouldBlock);
        match e.kind() {
            K::NotFound => Self::NotFound {
                store: store.to_string(),
                detail: format!("{what}: {e}"),
            },
            K::PermissionDenied => Self::Io {
                store: store.to_string(),
                detail: format!("{what}: {e}; check the file's permissions"),
                retryable: false,
            },
            K::StorageFull | K::QuotaExceeded => Self::Io {
                store: store.to_string(),
                detail: format!("{what}: the store is full ({e}); free space or grow it"),
                retryable: false,
            },
            // Writes refused for good: the wrong store for the job (exit 2).
            K::ReadOnlyFilesystem => Self::InvalidConfig {
                store: store.to_string(),
                detail: format!(
                    "{what}: the store is read-only ({e}); mount it read-write or choose another store"
                ),
            },
            _ => Self::Io {
                store: store.to_string(),
                detail: format!("{what}: {e}"),
                retryable,
            },
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
