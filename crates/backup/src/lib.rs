//! georep-backup: recovery points in restic's repository format, through rustic_core,
//! over any georep store (local folders, Azure Blob, S3, GCS).
//!
//! API boundary: [`StoreBackend`], rustic_core's repository backend over a
//! `georep_storage` store. rustic_core is synchronous: call it only from blocking
//! threads (`spawn_blocking`); the backend reaches the async store through the tokio
//! handle it was made with.
//!
//! The operations ([`run_point`], [`points`], [`restore`], [`verify`], [`prune`],
//! [`drill`]) take a [`RepoSpec`] and return the API's report types.

mod backend;
mod component;
mod error;
mod ops;
mod repo;
mod source;

pub use backend::StoreBackend;
pub use component::Backups;
pub use error::{BackupError, Result};
pub use ops::{drill, points, prune, restore, run_point, stats, verify, PointSel, HOST};
pub use repo::{cache_dir, source_store, KeyCache, RepoSpec};
