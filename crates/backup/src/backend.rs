//! rustic_core's `ReadBackend`/`WriteBackend` over a georep store, in restic's layout:
//! `config`, `keys/ID`, `snapshots/ID`, `index/ID`, `data/XX/ID`. Each object appears
//! whole or not at all (the store's atomic put), which is what keeps an interrupted
//! point readable by `restic check`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures::StreamExt;
use georep_storage::{ListRole, ObjectReader, StorageError, Store, StoreOptions};
use rustic_core::{
    BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend,
};

/// A repository held in a georep store.
pub struct StoreBackend {
    store: Store,
    opts: StoreOptions,
    rt: tokio::runtime::Handle,
    append_only: bool,
    /// The folder stores (`keys`, `snapshots`, `index`, `data`), opened when first listed.
    folders: Mutex<BTreeMap<&'static str, std::sync::Arc<Store>>>,
}

impl std::fmt::Debug for StoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBackend")
            .field("store", &self.store.name())
            .field("append_only", &self.append_only)
            .finish()
    }
}

/// The key of a repository file.
fn key(t: FileType, id: &Id) -> String {
    let h = id.to_hex();
    match t {
        FileType::Config => "config".into(),
        FileType::Pack => format!("data/{}/{}", &h[..2], &*h),
        _ => format!("{}/{}", t.dirname(), &*h),
    }
}

/// A store error as rustic_core carries it (the store's message names the store).
fn be(e: StorageError, what: &str) -> Box<RusticError> {
    RusticError::with_source(
        ErrorKind::Backend,
        "{what} failed in the repository's store",
        e,
    )
    .attach_context("what", what.to_string())
}

impl StoreBackend {
    /// The repository in `store` (opened with `opts`); `rt` runs its IO. With
    /// `append_only`, nothing is ever removed.
    pub fn new(
        store: Store,
        opts: StoreOptions,
        rt: tokio::runtime::Handle,
        append_only: bool,
    ) -> Self {
        Self {
            store,
            opts,
            rt,
            append_only,
            folders: Mutex::new(BTreeMap::new()),
        }
    }

    fn folder(&self, name: &'static str) -> RusticResult<std::sync::Arc<Store>> {
        if let Some(s) = self.folders.lock().ok().and_then(|m| m.get(name).cloned()) {
            return Ok(s);
        }
        let url = self.store.url().join(name).map_err(|e| {
            RusticError::with_source(ErrorKind::Backend, "cannot name the folder {name}", e)
                .attach_context("name", name.to_string())
        })?;
        let s = std::sync::Arc::new(Store::open(&url, &self.opts).map_err(|e| be(e, "open"))?);
        if let Ok(mut m) = self.folders.lock() {
            m.insert(name, s.clone());
        }
        Ok(s)
    }
}

impl ReadBackend for StoreBackend {
    fn location(&self) -> String {
        self.store.name().to_string()
    }

    fn list_with_size(&self, t: FileType) -> RusticResult<Vec<(Id, u32)>> {
        if t == FileType::Config {
            return match self.rt.block_on(self.store.head("config")) {
                Ok(e) => Ok(vec![(
                    Id::default(),
                    u32::try_from(e.size).unwrap_or(u32::MAX),
                )]),
                Err(StorageError::NotFound { .. }) => Ok(Vec::new()),
                Err(e) => Err(be(e, "head config")),
            };
        }
        let folder = self.folder(t.dirname())?;
        let entries: Vec<georep_storage::Entry> = self
            .rt
            .block_on(async {
                let mut out = Vec::new();
                let mut l = folder.list(ListRole::Destination);
                while let Some(e) = l.next().await {
                    match e {
                        Ok(e) => out.push(e),
                        // A folder not written yet holds nothing.
                        Err(StorageError::NotFound { .. })
                        | Err(StorageError::ContainerNotFound { .. })
                            if out.is_empty() =>
                        {
                            break
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            })
            .map_err(|e| be(e, "list"))?;
        Ok(entries
            .into_iter()
            .filter_map(|e| {
                let name = e.key.rsplit('/').next()?;
                let id = name.parse::<Id>().ok()?;
                Some((id, u32::try_from(e.size).ok()?))
            })
            .collect())
    }

    fn read_full(&self, t: FileType, id: &Id) -> RusticResult<Bytes> {
        self.rt
            .block_on(async { self.store.get(&key(t, id), 1 << 20).await?.bytes().await })
            .map_err(|e| be(e, "read"))
    }

    fn read_partial(
        &self,
        t: FileType,
        id: &Id,
        _cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        let r = u64::from(offset)..u64::from(offset) + u64::from(length);
        self.rt
            .block_on(self.store.get_range(&key(t, id), r))
            .map_err(|e| be(e, "read a range"))
    }

    fn warmup_path(&self, t: FileType, id: &Id) -> String {
        key(t, id)
    }
}

impl WriteBackend for StoreBackend {
    fn write_bytes(
        &self,
        t: FileType,
        id: &Id,
        _cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        let parts = content.into_vec();
        let size = parts.iter().map(|p| p.len() as u64).sum();
        let reader = ObjectReader {
            size,
            last_modified: chrono::Utc::now(),
            e_tag: None,
            attributes: Default::default(),
            stream: futures::stream::iter(parts.into_iter().map(Ok)).boxed(),
        };
        self.rt
            .block_on(self.store.put(&key(t, id), reader, 8 << 20, 4))
            .map(drop)
            .map_err(|e| be(e, "write"))
    }

    fn remove(&self, t: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        if self.append_only {
            return Err(RusticError::new(
                ErrorKind::AppendOnly,
                "the repository is append-only: nothing is deleted",
            ));
        }
        self.rt
            .block_on(self.store.delete(&key(t, id)))
            .map_err(|e| be(e, "delete"))
    }
}
