//! `Store`: one georep view of a location, over `object_store`.
//!
//! It adds what georep needs on top of the backends: listings in key order (the diff is
//! a streaming merge), keys relative to the URL's prefix, errors that name the store
//! and the fix, secrets scrubbed from every message, and atomic, mtime-preserving writes
//! on local disk (object_store's `LocalFileSystem` lists unordered and cannot keep mtimes).
//!
//! This module holds [`Store`] and what every operation shares (which backend, where a key
//! lives); opening, listing, reading and writing, error mapping and secret scrubbing each
//! have a child module.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use georep_core::StoreUrl;
use object_store::path::Path;
use object_store::ObjectStore;

use crate::error::{Result, StorageError};
use crate::lenient::Lenient;
use crate::local;

pub(crate) mod errors;
mod list;
mod objects;
mod open;
mod scrub;

pub use self::list::key_within;
pub use self::objects::ObjectReader;
pub use self::open::{resolve_local, StoreOptions};

#[derive(Debug)]
enum Backend {
    Local {
        root: PathBuf,
        links: local::Links,
    },
    Remote {
        os: Arc<dyn ObjectStore>,
        /// Full prefix inside the container; `None` for the whole container.
        prefix: Option<Path>,
        /// S3 and Azure list through georep's own List request, so that one name
        /// object_store cannot hold never stops a listing.
        lenient: Option<Arc<Lenient>>,
    },
}

/// A store: a URL opened with credentials from the environment.
#[derive(Debug)]
pub struct Store {
    url: StoreUrl,
    shown: String,
    /// Local writes reach the disk (file and folder fsync) before they count as done.
    fsync: bool,
    backend: Backend,
    secrets: Vec<String>,
}

impl Store {
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// The store's URL as shown to people; never contains a secret.
    pub fn name(&self) -> &str {
        &self.shown
    }

    /// The folder of a local store.
    pub fn local_root(&self) -> Option<&FsPath> {
        match &self.backend {
            Backend::Local { root, .. } => Some(root),
            Backend::Remote { .. } => None,
        }
    }

    /// Whether the store keeps content-type, cache-control and user metadata.
    pub fn carries_attributes(&self) -> bool {
        !matches!(self.url, StoreUrl::Local { .. })
    }

    /// Whether a single-part upload's ETag is the MD5 of the content (S3, GCS).
    pub fn etag_is_md5(&self) -> bool {
        matches!(self.url, StoreUrl::S3 { .. } | StoreUrl::Gcs { .. })
    }

    fn locate(&self, key: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        match &self.backend {
            Backend::Local { .. } => {
                Err(self.bad_key(key, "a local folder is read by georep's own code"))
            }
            Backend::Remote { os, .. } => Ok((os.clone(), self.remote_path(key)?)),
        }
    }

    fn remote_path(&self, key: &str) -> Result<Path> {
        let Backend::Remote { prefix, .. } = &self.backend else {
            return Err(self.bad_key(key, "not a remote store"));
        };
        let full = match prefix {
            Some(p) => format!("{}/{key}", p.as_ref()),
            None => key.to_string(),
        };
        Path::parse(&full).map_err(|e| self.bad_key(key, e))
    }

    fn bad_key(&self, key: &str, e: impl std::fmt::Display) -> StorageError {
        StorageError::Backend {
            store: self.shown.clone(),
            detail: format!("key {key:?} cannot be stored here: {e}"),
            retryable: false,
        }
    }
}

/// Runs file-system work on the blocking pool.
async fn blocking<T: Send + 'static>(
    store: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Io {
            store: store.to_string(),
            detail: format!("worker task failed: {e}"),
            retryable: false,
        })?
}
