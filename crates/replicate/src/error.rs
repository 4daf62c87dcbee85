//! Errors of the replication runtime, by cause.

use georep_state::StateError;
use georep_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error(transparent)]
    State(#[from] StateError),
    /// A store of the topology failed; the message names it.
    #[error("store '{store}': {source}")]
    Store {
        store: String,
        #[source]
        source: StorageError,
    },
    #[error("no policy named '{0}'; `georep plan -c FILE` lists the policies")]
    UnknownPolicy(String),
    #[error("{0}")]
    Config(String),
    /// A named thing that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the current state (e.g. resuming a policy that is not paused).
    #[error("{0}")]
    Conflict(String),
    /// A database member could not be reached, refused, or did not answer in time.
    #[error("{0}")]
    Unavailable(String),
}

impl ReplicateError {
    /// Exit class for the CLI: 2 bad config or input, 3 unreachable or refused.
    pub fn exit_class(&self) -> u8 {
        match self {
            Self::Store { source, .. } => source.exit_class(),
            Self::Unavailable(_) => 3,
            _ => 2,
        }
    }
}

pub type Result<T, E = ReplicateError> = std::result::Result<T, E>;

/// The cause as the daemon's API reports it.
impl From<ReplicateError> for georep_component::Error {
    fn from(e: ReplicateError) -> Self {
        use georep_component::ErrorKind as K;
        let kind = match &e {
            ReplicateError::UnknownPolicy(_) | ReplicateError::NotFound(_) => K::NotFound,
            ReplicateError::Config(_) => K::Invalid,
            ReplicateError::Conflict(_) => K::Refused,
            ReplicateError::Unavailable(_) => K::Unavailable,
            ReplicateError::Store { source, .. } if source.exit_class() == 3 => K::Unavailable,
            ReplicateError::Store { .. } => K::Upstream,
            ReplicateError::State(_) => K::Internal,
        };
        georep_component::Error::new(kind, e)
    }
}
