//! georep-storage: stores over `object_store`, and the transfer engine behind
//! `georep copy`, `sync` and `check`.
//!
//! API boundary: `Store` (open a URL, list in key order, read, write atomically, delete)
//! and `engine::run` (diff two stores as a streaming merge and act on the difference).
//! This crate never prints; it returns a `Report` and updates `Progress` counters.

pub mod engine;
mod entry;
mod error;
mod fsafe;
mod lenient;
mod limiter;
mod local;
mod mime;
mod store;

pub use engine::{
    copy_object, run, DiffKind, Difference, Failure, JobOptions, Mode, Overwrite, Planned,
    Progress, Report,
};
pub use entry::{Entry, ListRole};
pub use error::{Result, StorageError};
pub use limiter::RateLimiter;
pub use local::{LocalWriter, TEMP_PREFIX};
pub use store::{key_within, resolve_local, ObjectReader, Store, StoreOptions};
