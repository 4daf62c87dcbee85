//! Errors by cause; each message names the member (primary or a replica) and the fix.

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A URL, table name or option that cannot work.
    #[error("{0}")]
    InvalidConfig(String),
    /// A member cannot be reached.
    #[error("cannot reach {member} ({url}): {detail}; is the server up and the address right?")]
    Unreachable {
        member: String,
        url: String,
        detail: String,
    },
    /// The server answered but refused a session for lack of room (SQLSTATE class 53:
    /// `max_connections`, a role's or a database's connection limit). It is up.
    #[error("{member} ({url}) is up but refused a session: {detail}; {}", busy_hint(.detail))]
    Busy {
        member: String,
        url: String,
        detail: String,
        /// The SQLSTATE (`53300`: too many connections).
        code: String,
    },
    /// Credentials refused or privileges missing.
    #[error("{member} ({url}) refused the connection: {detail}; check the user and password (in the URL, or PGPASSWORD / MYSQL_PWD)")]
    Auth {
        member: String,
        url: String,
        detail: String,
    },
    /// Prerequisites that are not met, each with its fix.
    #[error("prerequisites not met:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Prerequisites(Vec<String>),
    /// A statement failed.
    #[error("{member}: {detail}")]
    Sql { member: String, detail: String },
    /// A tool georep runs (pg_dump) is missing or failed.
    #[error("{0}")]
    Tool(String),
    /// Waiting for something took longer than allowed.
    #[error("{0}")]
    Timeout(String),
}

fn busy_hint(detail: &str) -> &'static str {
    if detail.contains("for database") {
        "a planned failover closes the database to new sessions (CONNECTION LIMIT 0) until it settles; superusers are not held"
    } else {
        "raise max_connections or the role's connection limit, or close idle sessions"
    }
}

impl DbError {
    /// Whether the member's server refused a new session at login for a reason that
    /// says it is running (no room, credentials): a failover would not help. A session
    /// that dies after login says nothing of the kind.
    pub fn server_answered(&self) -> bool {
        matches!(self, Self::Busy { .. } | Self::Auth { .. })
    }

    /// Exit class for the CLI: 2 bad config or unmet prerequisites, 3 unreachable or
    /// refused, 1 anything that went wrong while running.
    pub fn exit_class(&self) -> u8 {
        match self {
            Self::InvalidConfig(_) | Self::Prerequisites(_) | Self::Tool(_) => 2,
            Self::Unreachable { .. } | Self::Auth { .. } | Self::Busy { .. } => 3,
            Self::Sql { .. } | Self::Timeout(_) => 1,
        }
    }

    pub fn sql(member: &str, e: tokio_postgres::Error) -> Self {
        let detail = match e.as_db_error() {
            Some(d) => match d.hint() {
                Some(h) => format!("{} (hint: {h})", d.message()),
                None => d.message().to_string(),
            },
            None => e.to_string(),
        };
        Self::Sql {
            member: member.to_string(),
            detail,
        }
    }

    /// A statement that failed on a MariaDB or MySQL member (the server's code kept).
    pub fn mysql(member: &str, e: mysql_async::Error) -> Self {
        let detail = match &e {
            mysql_async::Error::Server(s) => format!("{} (error {})", s.message, s.code),
            other => other.to_string(),
        };
        Self::Sql {
            member: member.to_string(),
            detail,
        }
    }
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;
