//! What a listing yields ([`Entry`]) and why a store is listed ([`ListRole`]): shared by
//! `store` and the local-folder code in `local`, so that neither imports the other's types.

use chrono::{DateTime, Utc};

/// One object in a listing. `key` is relative to the store's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
    pub e_tag: Option<String>,
}

/// Why a store is listed, which decides what a missing folder means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListRole {
    /// A local folder must exist.
    Source,
    /// A missing local folder lists as empty, and temp files left by a georep process
    /// that died (kill -9, power loss) are removed.
    Destination,
}
