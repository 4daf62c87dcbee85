//! What can go wrong in a secret sync, classed as DESIGN.md's exit codes want:
//! configuration (2), an unreachable vault or refused credentials (3), the rest (1).

/// A secrets error. Messages name the vault and the secret, never a value or a token.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Bad configuration or input (exit 2).
    #[error("{0}")]
    Config(String),
    /// The vault refused the credentials (exit 3).
    #[error("vault '{vault}': credentials refused: {detail}")]
    Auth { vault: String, detail: String },
    /// The vault could not be reached (exit 3).
    #[error("vault '{vault}': unreachable: {detail}")]
    Unreachable { vault: String, detail: String },
    /// The secret (or version) is not there.
    #[error("vault '{vault}': {detail}")]
    NotFound { vault: String, detail: String },
    /// The vault throttled us; retry after the pause.
    #[error("vault '{vault}': throttled: {detail}")]
    Throttled {
        vault: String,
        detail: String,
        retry_after: Option<std::time::Duration>,
    },
    /// The vault refused the request for a reason other than credentials.
    #[error("vault '{vault}': {detail}")]
    Refused { vault: String, detail: String },
    /// The vault failed (5xx) or answered something unreadable.
    #[error("vault '{vault}': {detail}")]
    Vault { vault: String, detail: String },
    /// The ledger (state) could not be read or written.
    #[error("secret sync '{sync}': state {path}: {detail}")]
    Ledger {
        sync: String,
        path: String,
        detail: String,
    },
    /// An escrow bundle could not be written, read or opened.
    #[error("escrow: {0}")]
    Escrow(String),
}

impl SecretsError {
    /// Worth another try: throttling, a vault that failed or could not be reached.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::Vault { .. } | Self::Unreachable { .. }
        )
    }

    /// The process exit code this error maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => 2,
            Self::Auth { .. } | Self::Unreachable { .. } => 3,
            _ => 1,
        }
    }
}

pub type Result<T, E = SecretsError> = std::result::Result<T, E>;
