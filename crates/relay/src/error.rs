//! What can go wrong in a relay, with what to do about it.

/// A relay's error.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The outbox file could not be opened, read or written.
    #[error("relay '{relay}': outbox {path}: {detail}")]
    Outbox {
        relay: String,
        path: String,
        detail: String,
    },
    /// The outbox holds more undelivered bytes than `max_outbox`.
    #[error("relay '{0}': the outbox is full (max_outbox); deliveries must catch up first")]
    Full(String),
    /// The listen address could not be bound.
    #[error("relay '{relay}': cannot listen on {addr}: {detail}")]
    Listen {
        relay: String,
        addr: String,
        detail: String,
    },
    /// A request that names something that is not there or is not allowed now.
    #[error("{0}")]
    Refused(String),
}

impl RelayError {
    pub(crate) fn outbox(relay: &str, path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::Outbox {
            relay: relay.to_string(),
            path: path.display().to_string(),
            detail: e.to_string(),
        }
    }
}

impl From<RelayError> for georep_component::Error {
    fn from(e: RelayError) -> Self {
        match e {
            RelayError::Refused(_) => Self::refused(e.to_string()),
            RelayError::Full(_) => Self::new(georep_component::ErrorKind::Unavailable, e),
            _ => Self::internal(e.to_string()),
        }
    }
}

pub type Result<T, E = RelayError> = std::result::Result<T, E>;
