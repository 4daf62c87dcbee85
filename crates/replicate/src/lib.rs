//! georep-replicate: continuous, policy-driven object replication.
//!
//! API boundary: [`Policies`], the daemon component that runs every policy (status,
//! resync, pause, resume, webhook ingestion, metrics), [`status`] (the same status read
//! straight from a state store) and [`events`] (webhook body parsing).
//!
//! A change is detected three ways — periodic scans diffed against the manifest in the
//! state store, filesystem notifications for local sources, and storage events posted to
//! the webhook — and all three end in one place, `State::apply`, which records the change
//! and queues its replication in one transaction. Workers take items under a lease, copy
//! with the transfer engine's verified copy, and record the outcome; a copy is idempotent,
//! so work cut off by a crash is simply done again.

mod component;
mod error;
pub mod events;
mod metrics;
mod policy;
pub mod status;
mod watch;

pub use component::{policy_record, Ingested, Policies, Resynced};
pub use error::{ReplicateError, Result};
pub use policy::{ScanSummary, Via, FAILED_AFTER, GUARD_FLOOR};
