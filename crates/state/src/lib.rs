//! georep-state: durable state for the daemon — policy records, source manifests, the
//! replication work queue with per-object status, and scan history.
//!
//! API boundary: [`State`] and the plain record types it returns. The backing store is an
//! embedded SQLite file (WAL mode), so a kill -9 at any moment leaves either the whole of
//! a transaction or none of it. Callers never see SQL.
//!
//! Architecture invariant: every change that makes work (a manifest update) is written in
//! the same transaction as the queue items it creates, so a crash can never record a change
//! as seen without also recording the work to replicate it.

mod error;
mod schema;
mod store;

pub use error::{Result, StateError};
pub use store::{
    DestLag, FailoverEvent, FailoverFinish, FailoverRecord, Item, ManifestEntry, Observed,
    ObservedKind, Op, PolicyChange, PolicyRecord, State, Status,
};

/// Milliseconds since the Unix epoch: the one time unit stored.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
