//! Opening a backup's repository (creating it on the first point) and the lock that
//! keeps a point and a prune of the same repository apart.
//!
//! rustic_core neither writes nor honours restic's lock files, and a prune deletes
//! packs that no index lists yet, which includes those of a point still running. So
//! georep takes its own lock per repository: an advisory file lock in the cache folder,
//! which serialises the daemon and every CLI command on this machine. Two machines
//! writing one repository are not serialised (see the README).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use georep_core::{Backup, StoreUrl, Topology};
use georep_storage::{ListRole, StorageError, Store, StoreOptions};
use rustic_core::{
    ConfigOptions, Credentials, KeyOptions, OpenStatus, Repository, RepositoryBackends,
    RepositoryOptions,
};

use crate::error::{BackupError, Result};
use crate::StoreBackend;

/// Everything needed to reach one backup's repository.
#[derive(Clone)]
pub struct RepoSpec {
    /// The backup's name (for messages).
    pub name: String,
    pub url: StoreUrl,
    pub password: String,
    pub append_only: bool,
    /// Where the local cache of index and snapshot files and the lock files live.
    pub cache_dir: PathBuf,
    pub opts: StoreOptions,
    /// The repository's master key once a password opened it, so that later opens in
    /// this process skip the key derivation (scrypt with N=2^17: 128 MiB and a quarter
    /// second each). In memory only.
    pub key_cache: KeyCache,
}

/// See [`RepoSpec::key_cache`]; shared by clones, never printed or written.
#[derive(Clone, Default)]
pub struct KeyCache(Arc<std::sync::Mutex<Option<CachedKey>>>);

/// The key, and a hash of the password that opened it: a spec cloned with another
/// password never uses it.
type CachedKey = (blake3::Hash, rustic_core::repofile::MasterKey);

impl KeyCache {
    fn get(&self, password: &str) -> Option<rustic_core::repofile::MasterKey> {
        let h = blake3::hash(password.as_bytes());
        self.0
            .lock()
            .ok()
            .and_then(|k| k.as_ref().filter(|(p, _)| *p == h).map(|(_, k)| k.clone()))
    }

    fn set(&self, password: &str, key: Option<rustic_core::repofile::MasterKey>) {
        if let Ok(mut k) = self.0.lock() {
            *k = key.map(|key| (blake3::hash(password.as_bytes()), key));
        }
    }
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCache(***)")
    }
}

/// The password is never shown.
impl std::fmt::Debug for RepoSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoSpec")
            .field("name", &self.name)
            .field("url", &self.url.to_string())
            .field("append_only", &self.append_only)
            .finish_non_exhaustive()
    }
}

impl RepoSpec {
    /// The repository of `[[backups]]` entry `b`; the cache and locks live beside the
    /// state database (so the daemon and the CLI on one machine share them).
    pub fn from_topology(topo: &Topology, b: &Backup) -> Result<Self> {
        let def = topo.store(&b.repository).ok_or_else(|| {
            BackupError::Invalid(format!(
                "backup '{}': no store named '{}'",
                b.name, b.repository
            ))
        })?;
        Ok(Self {
            name: b.name.clone(),
            url: def.url.clone(),
            password: b.password.clone(),
            append_only: b.append_only,
            cache_dir: cache_dir(topo),
            opts: StoreOptions::default(),
            key_cache: KeyCache::default(),
        })
    }

    /// The repository as messages name it.
    pub fn shown(&self) -> String {
        self.url.to_string()
    }

    fn store(&self) -> Result<Store> {
        Store::open(&self.url, &self.opts).map_err(|source| BackupError::Store {
            what: format!("backup '{}': cannot open the repository's store", self.name),
            source,
        })
    }

    /// Whether the store holds a repository; `Err` when it holds something else.
    pub(crate) async fn probe(&self) -> Result<bool> {
        let store = self.store()?;
        match store.head("config").await {
            Ok(_) => return Ok(true),
            Err(StorageError::NotFound { .. }) => {}
            Err(source) => {
                return Err(BackupError::Store {
                    what: format!("backup '{}': cannot read the repository", self.name),
                    source,
                })
            }
        }
        let mut list = store.list(ListRole::Destination);
        while let Some(e) = list.next().await {
            match e {
                Ok(e) => {
                    return Err(BackupError::NotARepository {
                        repo: self.shown(),
                        detail: format!(
                            "it has no `config` but holds other objects (e.g. '{}')",
                            e.key
                        ),
                    })
                }
                Err(StorageError::NotFound { .. }) | Err(StorageError::Skipped { .. }) => {}
                Err(source) => {
                    return Err(BackupError::Store {
                        what: format!("backup '{}': cannot list the repository", self.name),
                        source,
                    })
                }
            }
        }
        Ok(false)
    }

    /// Opens the repository; blocking (call from `spawn_blocking`). With `create`, an
    /// empty store gets a new repository (restic format v2) and `true` comes back.
    pub(crate) fn open(
        &self,
        rt: &tokio::runtime::Handle,
        exists: bool,
        create: bool,
    ) -> Result<(Repository<OpenStatus>, bool)> {
        let repo_err = |what: &str| {
            let repo = self.shown();
            let what = what.to_string();
            move |e| BackupError::from_rustic(&repo, &what, e)
        };
        let backend = StoreBackend::new(
            self.store()?,
            self.opts.clone(),
            rt.clone(),
            self.append_only,
        );
        let backends = RepositoryBackends::new(Arc::new(backend), None);
        let opts = RepositoryOptions::default().cache_dir(self.cache_dir.join("rustic"));
        let repo = Repository::new(&opts, &backends).map_err(repo_err("open"))?;
        let creds = Credentials::password(&self.password);
        if exists {
            if let Some(key) = self.key_cache.get(&self.password) {
                match repo.clone().open(&Credentials::Masterkey(key)) {
                    Ok(open) => return Ok((open, false)),
                    // The repository changed under us (a new key, say): ask the password.
                    Err(_) => self.key_cache.set(&self.password, None),
                }
            }
            let open = repo.open(&creds).map_err(repo_err("open"))?;
            self.key_cache.set(&self.password, Some(open.key()));
            return Ok((open, false));
        }
        if !create {
            return Err(BackupError::NoRepository { repo: self.shown() });
        }
        let config = ConfigOptions::default().set_append_only(self.append_only.then_some(true));
        let repo = repo
            .init(&creds, &KeyOptions::default(), &config)
            .map_err(repo_err("create"))?;
        Ok((repo, true))
    }

    /// This repository's lock on this machine; blocking. A prune takes it exclusive
    /// (it deletes packs no index lists yet, such as those of a point being taken);
    /// points, restores and checks share it.
    pub(crate) fn lock(&self, exclusive: bool) -> Result<RepoLock> {
        RepoLock::acquire(&self.cache_dir, &self.shown(), exclusive)
    }
}

/// `backups/` beside the SQLite state file; with another state, `$GEOREP_CACHE_DIR`,
/// else `~/.cache/georep/backups`. Never a shared temp folder: the locks live here.
pub fn cache_dir(topo: &Topology) -> PathBuf {
    if let Some(d) = topo
        .state
        .sqlite_path()
        .and_then(|p| p.parent().map(|d| d.join("backups")))
    {
        return d;
    }
    if let Some(d) = std::env::var_os("GEOREP_CACHE_DIR") {
        return PathBuf::from(d).join("backups");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/georep/backups"))
        .unwrap_or_else(|| PathBuf::from("/var/cache/georep/backups"))
}

/// The store a backup reads.
pub fn source_store(topo: &Topology, b: &Backup) -> Result<Store> {
    let def = topo.store(&b.source).ok_or_else(|| {
        BackupError::Invalid(format!(
            "backup '{}': no store named '{}'",
            b.name, b.source
        ))
    })?;
    Store::open(&def.url, &StoreOptions::default()).map_err(|source| BackupError::Store {
        what: format!("backup '{}': cannot open the source", b.name),
        source,
    })
}

/// Held while a point, a prune or a restore runs; released when dropped.
pub(crate) struct RepoLock {
    _file: File,
}

impl RepoLock {
    /// Waits this long for another process's lock before giving up with a message.
    const WAIT: Duration = Duration::from_secs(3600);

    fn acquire(dir: &Path, repo: &str, exclusive: bool) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = dir.join("locks");
        // Private to this user: nobody else can plant a link or hold the lock.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                BackupError::Invalid(format!(
                    "cannot create the lock folder {}: {e}; check the state folder's permissions",
                    dir.display()
                ))
            })?;
        let id = blake3::hash(repo.as_bytes()).to_hex();
        let path = dir.join(format!("{}.lock", &id[..16]));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| {
                BackupError::Invalid(format!(
                    "cannot open the lock file {}: {e} (a link is refused)",
                    path.display()
                ))
            })?;
        let started = Instant::now();
        let mut told = false;
        loop {
            let tried = if exclusive {
                file.try_lock()
            } else {
                file.try_lock_shared()
            };
            match tried {
                Ok(()) => return Ok(Self { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < Self::WAIT => {
                    if !told {
                        tracing::info!(repository = repo, "waiting for another georep process using this repository (a prune, or a point while pruning)");
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(BackupError::Invalid(format!(
                        "repository {repo} stayed locked by another georep process for {} min ({}); try again when it is done",
                        Self::WAIT.as_secs() / 60,
                        path.display()
                    )))
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(BackupError::Invalid(format!(
                        "cannot lock {}: {e}",
                        path.display()
                    )))
                }
            }
        }
    }
}
