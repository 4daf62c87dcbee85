//! What can go wrong with a backup, each with the exit class of DESIGN.md.

use georep_storage::StorageError;
use rustic_core::RusticError;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("repository {repo}: wrong password; set the variable named in the backup's `password` to the password the repository was created with")]
    WrongPassword { repo: String },
    #[error("repository {repo} is not a restic repository: {detail}; point `repository` at an empty folder or container, or at a restic repository")]
    NotARepository { repo: String, detail: String },
    #[error(
        "repository {repo} holds no repository yet; take a first point with `georep backup run`"
    )]
    NoRepository { repo: String },
    #[error("{what}: {source}")]
    Store {
        what: String,
        #[source]
        source: StorageError,
    },
    /// A store error met inside rustic_core (which keeps only its text and class).
    #[error("{what}: {detail}")]
    RepositoryStore {
        what: String,
        detail: String,
        class: u8,
    },
    #[error("repository {repo}: {detail}")]
    Repository { repo: String, detail: String },
    #[error("point {point} was taken without {failed} objects that could not be read or kept changing and {skipped} that cannot be in a point (first: {first}); see the warnings above")]
    Partial {
        failed: u64,
        skipped: u64,
        first: String,
        point: String,
    },
    #[error("repository {repo} is append-only: {what} would delete from it, so it is refused (retention is left to the store's own lifecycle rules)")]
    AppendOnly { repo: String, what: &'static str },
    #[error("no point '{point}' in repository {repo}; list the points with `georep backup list`")]
    NoSuchPoint { repo: String, point: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the backup task stopped: {0}")]
    Task(String),
}

impl BackupError {
    /// DESIGN.md: 2 bad input or config, 3 unreachable or credentials refused, 1 the
    /// job ran and something failed.
    pub fn exit_class(&self) -> u8 {
        match self {
            Self::WrongPassword { .. } => 3,
            Self::NotARepository { .. }
            | Self::NoRepository { .. }
            | Self::NoSuchPoint { .. }
            | Self::Invalid(_) => 2,
            Self::Store { source, .. } => source.exit_class(),
            Self::RepositoryStore { class, .. } => *class,
            Self::AppendOnly { .. } => 2,
            Self::Repository { .. } | Self::Partial { .. } | Self::Task(_) => 1,
        }
    }

    /// A rustic error as one line: a store error inside it keeps its class, a wrong
    /// password is named.
    pub(crate) fn from_rustic(repo: &str, what: &str, e: Box<RusticError>) -> Self {
        if e.is_incorrect_password() {
            return Self::WrongPassword {
                repo: repo.to_string(),
            };
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&*e);
        while let Some(c) = cause {
            if let Some(s) = c.downcast_ref::<StorageError>() {
                return Self::RepositoryStore {
                    what: format!("{what} (repository {repo})"),
                    detail: s.to_string(),
                    class: s.exit_class(),
                };
            }
            cause = c.source();
        }
        let text = e.to_string();
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("unknown error")
            .to_string();
        Self::Repository {
            repo: repo.to_string(),
            detail: format!("{what}: {line}"),
        }
    }
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;
