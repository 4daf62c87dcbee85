//! georep-failover: failover groups and the database replicas they move, as daemon
//! components.
//!
//! API boundary: [`Groups`] and [`Databases`], the daemon's components for
//! `[[failover_groups]]` and `[[databases]]`; [`Group`] — started from a topology's
//! failover group and its database, it binds the read-write and read-only listeners,
//! probes every member's health, and performs planned failovers ([`Group::failover`]). The current route lives in memory
//! (a `watch` channel) and is only ever changed to an epoch already written to the state
//! store. The listeners' data path is a plain byte splice that reads the route when a
//! client connects and never waits on the control plane, except while a failover holds
//! new connections.

mod drill;
mod group;
mod groups;
mod monitor;
mod proxy;
mod pump;

pub use drill::drill;
pub use georep_api::DrillReport;
pub use groups::Groups;
pub use monitor::{DatabaseStatus, Databases};

pub use group::{
    FailoverEvent, FailoverKind, FailoverReport, Group, GroupState, GroupStatus, Lag, MemberHealth,
};
pub use proxy::Route;

/// Why a failover group operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("{0}")]
    InvalidConfig(String),
    #[error("cannot listen on {addr}: {source}; choose a free address for the failover group's listener")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] georep_db::DbError),
    #[error(transparent)]
    State(#[from] georep_state::StateError),
    #[error("{0}")]
    Refused(String),
    /// The daemon's API, when a drill drives a running daemon.
    #[error(transparent)]
    Api(#[from] georep_api::ClientError),
}

pub type Result<T, E = FailoverError> = std::result::Result<T, E>;
