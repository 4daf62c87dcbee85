//! georep-backup: recovery points in restic's repository format, through rustic_core,
//! over any georep store (local folders, Azure Blob, S3, GCS).
//!
//! API boundary: [`StoreBackend`], rustic_core's repository backend over a
//! `georep_storage` store. rustic_core is synchronous: call it only from blocking
//! threads (`spawn_blocking`); the backend reaches the async store through the tokio
//! handle it was made with.
//!
//! Work in progress (issue 12): the component that takes points on schedule, the
//! commands and retention come next; `docs/notes/issue-12-rustic-core.md` is the plan.

mod backend;

pub use backend::StoreBackend;
