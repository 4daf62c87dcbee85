//! Local folders: key-ordered listing, large-chunk reads, atomic writes.
//!
//! Writes go to a hidden temp file in the destination folder (`.georep-tmp-…`) and are
//! renamed over the key only when complete, so a reader (or a kill -9) never leaves a
//! partial file under a real key. Listings skip these temp files.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::entry::{Entry, ListRole};
use crate::error::{Result, StorageError};
use crate::fsafe::{self, SafeError};

/// Name prefix of in-flight writes; never listed as objects.
pub const TEMP_PREFIX: &str = ".georep-tmp-";
const LIST_BATCH: usize = 512;

/// How a local folder treats symbolic links below its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Links {
    /// Skip them (reported once per listing); never read, write or delete through one.
    #[default]
    Skip,
    /// Read what a link points to, as long as it stays inside the root (sources only).
    FollowInside,
}

/// Walks `root` depth-first with each folder's entries sorted so that the emitted keys
/// come out in ascending byte order: a folder `d` sorts as `d/`, exactly where the keys
/// `d/...` belong. Memory is one folder's entries plus a few batches.
///
/// One bad entry never ends the listing: a name no store can hold (control characters,
/// not UTF-8) or a link loop is yielded as [`StorageError::Skipped`] and the walk goes on.
pub(crate) fn list_sorted(
    root: PathBuf,
    store: String,
    role: ListRole,
    links: Links,
) -> BoxStream<'static, Result<Entry>> {
    let must_exist = role == ListRole::Source;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Result<Entry>>>(4);
    tokio::task::spawn_blocking(move || {
        if !root.exists() {
            if must_exist {
                let _ = tx.blocking_send(vec![Err(StorageError::InvalidConfig {
                    store: store.clone(),
                    detail: "the folder does not exist; check the path".into(),
                })]);
            }
            return;
        }
        if !root.is_dir() {
            let _ = tx.blocking_send(vec![Err(StorageError::InvalidConfig {
                store: store.clone(),
                detail: "not a folder; give a directory path".into(),
            })]);
            return;
        }
        let follow = role == ListRole::Source && links == Links::FollowInside;
        let real_root = if follow {
            std::fs::canonicalize(&root).unwrap_or_else(|_| root.clone())
        } else {
            root.clone()
        };
        let walker = walkdir::WalkDir::new(&root)
            .min_depth(1)
            .follow_links(follow)
            .sort_by(move |a, b| {
                // A followed link to a folder sorts as a folder (`d/`), where its keys
                // belong; walkdir hands the sorter the link itself.
                let slash = |e: &walkdir::DirEntry| {
                    let dir = e.file_type().is_dir()
                        || (follow
                            && e.path_is_symlink()
                            && std::fs::metadata(e.path()).is_ok_and(|m| m.is_dir()));
                    dir.then_some(b'/')
                };
                let an = a
                    .file_name()
                    .as_encoded_bytes()
                    .iter()
                    .copied()
                    .chain(slash(a));
                let bn = b
                    .file_name()
                    .as_encoded_bytes()
                    .iter()
                    .copied()
                    .chain(slash(b));
                an.cmp(bn)
            });
        let mut links_skipped: (u64, Option<PathBuf>) = (0, None);
        let mut specials: (u64, Option<PathBuf>) = (0, None);
        let mut batch = Vec::with_capacity(LIST_BATCH);
        let mut walker = walker.into_iter();
        while let Some(item) = walker.next() {
            let out = match item {
                Ok(e) if e.file_type().is_symlink() => {
                    // Not followed: a link in a source is skipped unless asked for, and
                    // a link in a destination is left alone whatever it points to.
                    links_skipped.0 += 1;
                    links_skipped
                        .1
                        .get_or_insert_with(|| e.path().to_path_buf());
                    continue;
                }
                Ok(e) if follow && e.path_is_symlink() && !inside(&real_root, e.path()) => {
                    links_skipped.0 += 1;
                    links_skipped
                        .1
                        .get_or_insert_with(|| e.path().to_path_buf());
                    if e.file_type().is_dir() {
                        walker.skip_current_dir();
                    }
                    continue;
                }
                Ok(e) if e.file_type().is_dir() => continue,
                Ok(e) if !e.file_type().is_file() => {
                    specials.0 += 1;
                    specials.1.get_or_insert_with(|| e.path().to_path_buf());
                    continue;
                }
                Ok(e) if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) => {
                    if role == ListRole::Destination && is_orphan(e.file_name()) {
                        let rel = e.path().strip_prefix(&root).ok().and_then(Path::to_str);
                        let removed = match rel {
                            Some(rel) => fsafe::delete(&root, rel).map_err(|e| match e {
                                SafeError::Io(io) => io,
                                other => std::io::Error::other(format!("{other:?}")),
                            }),
                            None => Err(std::io::Error::other("not a UTF-8 path")),
                        };
                        match removed {
                            Ok(()) => {
                                tracing::info!(path = %e.path().display(), "removed a temp file left by a dead georep process")
                            }
                            Err(err) => {
                                tracing::warn!(path = %e.path().display(), error = %err, "cannot remove an orphaned temp file")
                            }
                        }
                    }
                    continue;
                }
                Ok(e) => entry_of(&root, &e, &store),
                Err(err) if err.loop_ancestor().is_some() => {
                    let path = err
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    Err(StorageError::Skipped {
                        store: store.clone(),
                        key: path,
                        detail: "symbolic link loop; skipped".into(),
                    })
                }
                // One entry below the root that cannot be read (a dangling link when
                // links are followed, a folder without permission): reported by key,
                // and, being a source entry, it holds deletes. The walk goes on.
                Err(err) if err.depth() > 0 => {
                    let rel = err
                        .path()
                        .map(|p| p.strip_prefix(&root).unwrap_or(p).display().to_string())
                        .unwrap_or_default();
                    let dangling = err
                        .path()
                        .is_some_and(|p| p.is_symlink() && std::fs::metadata(p).is_err());
                    let detail = if dangling {
                        "a symbolic link that points nowhere; skipped".to_string()
                    } else {
                        match err.io_error() {
                            Some(io) => format!("cannot be listed ({io}); skipped"),
                            None => format!("cannot be listed ({err}); skipped"),
                        }
                    };
                    Err(StorageError::Skipped {
                        store: store.clone(),
                        key: rel,
                        detail,
                    })
                }
                Err(err) => {
                    let path = err
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    let detail = match err.io_error() {
                        Some(io) => format!("cannot list {path}: {io}"),
                        None => format!("cannot list {path}: {err}"),
                    };
                    Err(StorageError::Io {
                        store: store.clone(),
                        detail,
                        retryable: false,
                    })
                }
            };
            batch.push(out);
            if batch.len() == LIST_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(LIST_BATCH));
                if tx.blocking_send(full).is_err() {
                    return; // the reader went away
                }
            }
        }
        if let (n, Some(first)) = &links_skipped {
            if role == ListRole::Source {
                // What a skipped link holds is unknown: its replicas at a destination
                // must not look like objects the source lost.
                batch.push(Err(StorageError::Unlisted {
                    store: store.clone(),
                    detail: format!(
                        "{n} symbolic link(s) in the source were not followed (first: {}), so deletes are held; pass --follow-symlinks (policy: follow_symlinks = true) to copy what they point to inside the folder, or remove the links",
                        first.display()
                    ),
                }));
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        if let (n, Some(first)) = links_skipped {
            match role {
                ListRole::Source if follow => {
                    tracing::warn!(%store, count = n, first = %first.display(), "symbolic links that lead outside the source folder: skipped")
                }
                ListRole::Source => {
                    tracing::warn!(%store, count = n, first = %first.display(), "symbolic links in the source: skipped (follow_symlinks / --follow-symlinks copies what they point to inside the folder)")
                }
                ListRole::Destination => {
                    tracing::warn!(%store, count = n, first = %first.display(), "symbolic links in a destination: left alone, never written or deleted through")
                }
            }
        }
        if let (n, Some(first)) = specials {
            tracing::warn!(%store, count = n, first = %first.display(), "devices, FIFOs or sockets: skipped");
        }
    });
    stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (stream::iter(b), rx))
    })
    .flatten()
    .boxed()
}

/// Whether a followed link's target stays inside the (canonical) root.
fn inside(real_root: &Path, path: &Path) -> bool {
    std::fs::canonicalize(path).is_ok_and(|p| p.starts_with(real_root))
}

/// This machine's name as it goes into temp file names, so that a folder shared between
/// hosts (NFS) never has one host judge another's temp files by its own process table.
fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let uname = rustix::system::uname();
        let full = uname.nodename().to_bytes();
        // Readable part plus a hash of the whole name: `web-01.a` and `web01a` differ.
        let readable: String = String::from_utf8_lossy(full)
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        let hash = blake3::hash(full).to_hex();
        format!("{readable}x{}", &hash.as_str()[..8])
    })
}

/// The tag earlier versions put in temp names (the first 24 letters and digits of the
/// host name), still recognised as this host's.
fn legacy_host_tag() -> String {
    let uname = rustix::system::uname();
    let tag: String = uname
        .nodename()
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect();
    if tag.is_empty() {
        "host".into()
    } else {
        tag
    }
}

/// Whether a temp file's writer process no longer runs. Names are
/// `.georep-tmp-h<HOST>-<PID>-…`; only this host's files are judged, by its own `/proc`.
/// Older names without a host (`.georep-tmp-<PID>-…`) were always written locally.
fn is_orphan(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
        return false;
    };
    let mut parts = rest.split('-');
    let first = parts.next().unwrap_or_default();
    let pid = match first.strip_prefix('h') {
        Some(host) if host == host_tag() || host == legacy_host_tag() => parts.next(),
        Some(_) => return false,
        None => Some(first),
    };
    match pid.and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

fn entry_of(root: &Path, e: &walkdir::DirEntry, store: &str) -> Result<Entry> {
    let rel = e.path().strip_prefix(root).unwrap_or(e.path());
    let key = rel.to_str().ok_or_else(|| StorageError::Skipped {
        store: store.to_string(),
        key: rel.display().to_string(),
        detail: "file name is not UTF-8; no object store can hold it, skipped".into(),
    })?;
    if key.chars().any(char::is_control) {
        // Object stores refuse such keys, and the delete list is newline-separated.
        return Err(StorageError::Skipped {
            store: store.to_string(),
            key: key.escape_debug().to_string(),
            detail: "file name contains a control character; skipped".into(),
        });
    }
    let meta = e.metadata().map_err(|err| StorageError::Io {
        store: store.to_string(),
        detail: format!("cannot stat {key}: {err}"),
        retryable: false,
    })?;
    let last_modified = meta
        .modified()
        .map(DateTime::<Utc>::from)
        .unwrap_or_else(|_| Utc::now());
    Ok(Entry {
        key: key.to_string(),
        size: meta.len(),
        last_modified,
        e_tag: None,
    })
}

/// Refuses keys that could escape the folder or collide with georep's temp files.
pub(crate) fn check_key(key: &str, store: &str) -> Result<()> {
    let bad = key.is_empty()
        || key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == ".." || s.starts_with(TEMP_PREFIX));
    if bad || key.contains('\0') {
        return Err(StorageError::Skipped {
            store: store.to_string(),
            key: key.escape_debug().to_string(),
            detail: "cannot be a file name (empty, '.' or '..' segment); skipped".into(),
        });
    }
    Ok(())
}

/// Maps a refusal of the no-follow walk to an error naming the key and what stood there.
pub(crate) fn safe_error(e: SafeError, key: &str, store: &str, what: &str) -> StorageError {
    match e {
        SafeError::Link(at) => StorageError::Skipped {
            store: store.to_string(),
            key: key.to_string(),
            detail: format!("'{at}' is a symbolic link; georep never {what}s through a link, so it is left alone (remove the link or move it out of the folder)"),
        },
        SafeError::Clash(at) if at == key => StorageError::Skipped {
            store: store.to_string(),
            key: key.to_string(),
            detail: "a folder of that name is in the way (keys 'a' and 'a/b' cannot both be files); skipped".into(),
        },
        SafeError::Clash(at) => StorageError::Skipped {
            store: store.to_string(),
            key: key.to_string(),
            detail: format!("'{at}' is a file, so it cannot also be a folder (keys 'a' and 'a/b' cannot both be files); skipped"),
        },
        // A name this file system cannot hold (too long, or not in its encoding): one
        // key reported, never a failure that repeats on every run.
        SafeError::Io(io)
            if matches!(
                io.raw_os_error(),
                Some(c) if c == rustix::io::Errno::NAMETOOLONG.raw_os_error()
                    || c == rustix::io::Errno::ILSEQ.raw_os_error()
            ) =>
        {
            StorageError::Skipped {
                store: store.to_string(),
                key: key.to_string(),
                detail: format!("this file system cannot hold the name ({io}); skipped"),
            }
        }
        SafeError::Io(io) => StorageError::io(store, &format!("cannot {what} {key}"), io),
    }
}

/// Opens a local file for reading: through no link below the root, or with
/// [`Links::FollowInside`] through links whose target stays inside the root.
pub(crate) fn open_file(root: &Path, key: &str, links: Links, store: &str) -> Result<File> {
    check_key(key, store)?;
    match links {
        Links::Skip => fsafe::open_read(root, key).map_err(|e| safe_error(e, key, store, "read")),
        Links::FollowInside => {
            let path = root.join(key);
            let real_root = std::fs::canonicalize(root)
                .map_err(|e| StorageError::io(store, "cannot resolve the folder", e))?;
            let real = std::fs::canonicalize(&path)
                .map_err(|e| StorageError::io(store, &format!("cannot read {key}"), e))?;
            if !real.starts_with(&real_root) {
                return Err(StorageError::Skipped {
                    store: store.to_string(),
                    key: key.to_string(),
                    detail: "a symbolic link leads outside the source folder; skipped".into(),
                });
            }
            let rel = real
                .strip_prefix(&real_root)
                .ok()
                .and_then(Path::to_str)
                .unwrap_or(key);
            fsafe::open_read(&real_root, rel).map_err(|e| safe_error(e, key, store, "read"))
        }
    }
}

/// A local file's properties, read without following links.
pub(crate) fn head(root: &Path, key: &str, links: Links, store: &str) -> Result<(File, Entry)> {
    let file = open_file(root, key, links, store)?;
    let meta = file
        .metadata()
        .map_err(|e| StorageError::io(store, &format!("cannot stat {key}"), e))?;
    let last_modified = meta
        .modified()
        .map(DateTime::<Utc>::from)
        .unwrap_or_else(|_| Utc::now());
    let entry = Entry {
        key: key.to_string(),
        size: meta.len(),
        last_modified,
        e_tag: None,
    };
    Ok((file, entry))
}

/// Deletes a key's file, never through a link; already gone counts as deleted.
pub(crate) fn delete(root: &Path, key: &str, store: &str) -> Result<()> {
    check_key(key, store)?;
    fsafe::delete(root, key).map_err(|e| safe_error(e, key, store, "delete"))
}

/// Streams an open file in `chunk`-sized reads on the blocking pool. At the end the
/// file's size and mtime must still be those it was opened with; a file rewritten while
/// it was read ends the stream with an error, so the torn copy is never committed.
pub(crate) fn read_chunks(
    file: File,
    path: PathBuf,
    size: u64,
    opened_mtime: DateTime<Utc>,
    chunk: usize,
    store: String,
) -> BoxStream<'static, Result<Bytes>> {
    let chunk = chunk.max(64 * 1024);
    stream::try_unfold((Some(file), size), move |(file, remaining)| {
        let path = path.clone();
        let store = store.clone();
        async move {
            let Some(mut file) = file else {
                return Ok(None);
            };
            let want = remaining.min(chunk as u64) as usize;
            let res = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::with_capacity(want);
                let n = (&mut file).take(want as u64).read_to_end(&mut buf);
                let meta = if want == 0 || n.as_ref().is_ok_and(|n| *n == 0) {
                    Some(file.metadata())
                } else {
                    None
                };
                (file, buf, n, meta)
            })
            .await;
            let (file, buf, n, meta) = res.map_err(|e| StorageError::Io {
                store: store.clone(),
                detail: e.to_string(),
                retryable: true,
            })?;
            let n = n.map_err(|e| {
                StorageError::io(&store, &format!("cannot read {}", path.display()), e)
            })?;
            if let Some(meta) = meta {
                // End of the data: did the file change under us?
                let meta = meta.map_err(|e| {
                    StorageError::io(&store, &format!("cannot stat {}", path.display()), e)
                })?;
                let mtime = meta.modified().map(DateTime::<Utc>::from).ok();
                if meta.len() != size || mtime.is_some_and(|m| m != opened_mtime) {
                    return Err(StorageError::Verify(format!(
                        "{} changed while it was read; it will be read again",
                        path.display()
                    )));
                }
                return Ok(None);
            }
            Ok(Some((Bytes::from(buf), (Some(file), remaining - n as u64))))
        }
    })
    .boxed()
}

fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{TEMP_PREFIX}h{}-{}-{n}-{:08x}",
        host_tag(),
        std::process::id(),
        rand::random::<u32>()
    )
}

/// How a new local file gets its permissions: the source file's and folders' modes when
/// the source is a local folder, else `0644` files and `0755` folders (as `cp` makes
/// them). A file replaced from a store without modes keeps its own, so georep never
/// widens what an operator narrowed. Temp files are `0600` until they are complete.
#[derive(Debug, Clone, Default)]
pub(crate) struct Modes {
    pub file: Option<u32>,
    pub source_root: Option<PathBuf>,
}

impl Modes {
    /// The mode for a new destination folder `prefix` (`""` for the root itself): the
    /// source folder's (through a followed link too), else what `mkdir` would give.
    pub(crate) fn folder(&self, prefix: &str) -> u32 {
        let Some(root) = self.source_root.as_deref() else {
            return 0o777 & !umask();
        };
        let followed = || {
            std::fs::metadata(root.join(prefix))
                .ok()
                .filter(|m| m.is_dir())
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        };
        if prefix.is_empty() {
            return followed().unwrap_or(0o777 & !umask());
        }
        fsafe::folder_mode(root, prefix)
            .or_else(followed)
            .unwrap_or(0o777 & !umask())
    }
}

/// The process's umask, read once (Linux shows it in /proc/self/status; setting it to
/// read it would race with other threads). Default 022.
fn umask() -> u32 {
    static MASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
}

/// A temp file beside the key, created `0600` without following any link, with the
/// folder levels made as needed.
fn create_temp(root: &Path, key: &str, modes: &Modes, store: &str) -> Result<Temp> {
    check_key(key, store)?;
    let folder = |p: &str| modes.folder(p);
    let (dir, name) = fsafe::open_parent(root, key, Some(&folder))
        .map_err(|e| safe_error(e, key, store, "write"))?;
    let tmp = temp_name();
    let file = fsafe::create_temp_in(&dir, &tmp).map_err(|e| safe_error(e, key, store, "write"))?;
    // Only a regular file's own mode is kept; whatever else stands there says nothing.
    let existing = match fsafe::kind_at(&dir, name) {
        Ok(Some((rustix::fs::FileType::RegularFile, mode))) => Some(mode & 0o777),
        _ => None,
    };
    let mode = match (modes.file, existing) {
        (Some(src), _) => src,
        (None, Some(old)) => old,
        (None, None) => 0o666 & !umask(),
    };
    Ok(Temp {
        dir,
        name: name.to_string(),
        tmp,
        mode,
        key: key.to_string(),
        store: store.to_string(),
        file: Some(file),
    })
}

/// A temp file being written; removed on drop unless committed.
struct Temp {
    dir: std::os::fd::OwnedFd,
    name: String,
    tmp: String,
    mode: u32,
    key: String,
    store: String,
    file: Option<File>,
}

impl Temp {
    /// Sets mode and mtime, flushes (with `fsync`), and renames the temp file over the key.
    fn commit(&mut self, mtime: Option<DateTime<Utc>>, fsync: bool) -> Result<()> {
        let io = |what: &str, e: std::io::Error| {
            StorageError::io(&self.store, &format!("cannot {what} {}", self.key), e)
        };
        if let Some(file) = self.file.take() {
            fsafe::set_mode(&file, self.mode).map_err(|e| io("set the mode of", e))?;
            if let Some(t) = mtime {
                let _ = file.set_modified(t.into());
            }
            if fsync {
                file.sync_all().map_err(|e| io("sync", e))?;
            }
        }
        fsafe::commit_rename(&self.dir, &self.tmp, &self.name, &self.key)
            .map_err(|e| safe_error(e, &self.key, &self.store, "write"))?;
        self.tmp.clear();
        if fsync {
            rustix::fs::fsync(&self.dir).map_err(|e| io("sync the folder of", e.into()))?;
        }
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.tmp.is_empty() {
            let _ = fsafe::unlink_in(&self.dir, &self.tmp);
        }
    }
}

/// Writes a stream to `key` under `root` through a temp file and a rename, then sets its
/// mode and mtime. Nothing below `root` is followed if it is a link.
pub(crate) async fn write_atomic(
    root: &Path,
    key: &str,
    mut data: BoxStream<'static, Result<Bytes>>,
    mtime: Option<DateTime<Utc>>,
    modes: Modes,
    fsync: bool,
    store: &str,
) -> Result<()> {
    let (root, key_owned, store_owned) = (root.to_path_buf(), key.to_string(), store.to_string());
    let mut temp =
        tokio::task::spawn_blocking(move || create_temp(&root, &key_owned, &modes, &store_owned))
            .await
            .map_err(|e| StorageError::io(store, "create", std::io::Error::other(e)))??;
    let Some(file) = temp.file.take() else {
        return Err(StorageError::io(
            store,
            "write",
            std::io::Error::other("no temp file"),
        ));
    };
    let file = tokio::fs::File::from_std(file);
    let mut w = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let what = |e: std::io::Error| StorageError::io(store, &format!("cannot write {key}"), e);
    while let Some(chunk) = data.next().await {
        w.write_all(&chunk?).await.map_err(what)?;
    }
    w.flush().await.map_err(what)?;
    temp.file = Some(w.into_inner().into_std().await);
    tokio::task::spawn_blocking(move || temp.commit(mtime, fsync))
        .await
        .map_err(|e| StorageError::io(store, "commit", std::io::Error::other(e)))?
}

/// An atomic local write for callers on a blocking thread that produce the bytes
/// themselves (a backup restore): a temp file that becomes the key only on
/// [`LocalWriter::commit`], and is removed if the writer is dropped first.
pub struct LocalWriter {
    temp: Temp,
    file: std::io::BufWriter<File>,
    fsync: bool,
}

impl LocalWriter {
    pub(crate) fn create(root: &Path, key: &str, fsync: bool, store: &str) -> Result<Self> {
        let mut temp = create_temp(root, key, &Modes::default(), store)?;
        let Some(file) = temp.file.take() else {
            return Err(StorageError::io(
                store,
                "write",
                std::io::Error::other("no temp file"),
            ));
        };
        Ok(Self {
            temp,
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            fsync,
        })
    }

    /// Makes the written bytes the object (with `mtime`), atomically.
    pub fn commit(mut self, mtime: Option<DateTime<Utc>>) -> Result<()> {
        let (store, key) = (self.temp.store.clone(), self.temp.key.clone());
        let file = self.file.into_inner().map_err(|e| {
            StorageError::io(&store, &format!("cannot write {key}"), e.into_error())
        })?;
        self.temp.file = Some(file);
        self.temp.commit(mtime, self.fsync)
    }
}

impl std::io::Write for LocalWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.file.write(b)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Copies one local file to another folder atomically, keeping its mtime and mode. The
/// kernel copies the bytes (`copy_file_range`); the source's size after the copy must
/// equal what was copied, or the source changed mid-copy and nothing is renamed into
/// place. Neither side is reached through a link below its root.
pub(crate) fn copy_file_atomic(
    src: (&Path, Links, &str),
    dst: (&Path, &str),
    key: &str,
    mtime: DateTime<Utc>,
    fsync: bool,
) -> Result<u64> {
    let (src_root, links, src_store) = src;
    let (dst_root, dst_store) = dst;
    let (mut file, before) = head(src_root, key, links, src_store)?;
    let mode = file
        .metadata()
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .ok();
    let modes = Modes {
        file: mode,
        source_root: Some(src_root.to_path_buf()),
    };
    let mut temp = create_temp(dst_root, key, &modes, dst_store)?;
    let Some(mut out) = temp.file.take() else {
        return Err(StorageError::io(
            dst_store,
            "write",
            std::io::Error::other("no temp file"),
        ));
    };
    let n = std::io::copy(&mut file, &mut out)
        .map_err(|e| StorageError::io(dst_store, &format!("cannot copy {key}"), e))?;
    let now = file
        .metadata()
        .map_err(|e| StorageError::io(src_store, &format!("cannot stat {key}"), e))?;
    let now_mtime = now.modified().ok().map(DateTime::<Utc>::from);
    if now.len() != n || now_mtime != Some(before.last_modified) {
        return Err(StorageError::Verify(format!(
            "{key} changed during the copy; it will be copied again"
        )));
    }
    temp.file = Some(out);
    temp.commit(Some(mtime), fsync)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[tokio::test]
    async fn orphaned_temp_files_are_hidden_and_removed_only_for_destinations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dead = dir.path().join(format!("{TEMP_PREFIX}4194000-0-0000abcd"));
        let alive = dir
            .path()
            .join(format!("{TEMP_PREFIX}{}-0-0000abcd", std::process::id()));
        for p in [&dead, &alive] {
            std::fs::write(p, b"partial").expect("write");
        }
        std::fs::write(dir.path().join("real"), b"x").expect("write");
        let list = |role| {
            list_sorted(dir.path().to_path_buf(), "t".into(), role, Links::Skip)
                .map_ok(|e| e.key)
                .try_collect::<Vec<_>>()
        };
        assert_eq!(list(ListRole::Source).await.expect("list"), vec!["real"]);
        assert!(dead.exists(), "a source listing changes nothing");
        assert_eq!(
            list(ListRole::Destination).await.expect("list"),
            vec!["real"]
        );
        assert!(!dead.exists(), "orphan of a dead process removed");
        assert!(alive.exists(), "a live writer's temp file is kept");
    }

    #[tokio::test]
    async fn keys_come_out_in_byte_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        for k in ["a/b", "a.txt", "a-b", "a0", "b", "a/a/z", "A"] {
            let p = dir.path().join(k);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, b"").expect("write");
        }
        let keys: Vec<String> = list_sorted(
            dir.path().to_path_buf(),
            "t".into(),
            ListRole::Source,
            Links::Skip,
        )
        .map_ok(|e| e.key)
        .try_collect()
        .await
        .expect("list");
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 7);
    }

    #[tokio::test]
    async fn a_file_rewritten_while_read_fails_the_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 300_000]).expect("write");
        let file = File::open(&path).expect("open");
        let meta = file.metadata().expect("meta");
        let mtime = DateTime::<Utc>::from(meta.modified().expect("mtime"));
        // Same size, new content and mtime: only the mtime can tell.
        std::fs::write(&path, vec![2u8; 300_000]).expect("rewrite");
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        File::options()
            .write(true)
            .open(&path)
            .expect("open")
            .set_modified(later)
            .expect("touch");
        let items: Vec<Result<Bytes>> =
            read_chunks(file, path.clone(), 300_000, mtime, 65_536, "t".into())
                .collect()
                .await;
        assert!(
            matches!(items.last(), Some(Err(StorageError::Verify(_)))),
            "{items:?}"
        );

        let file = File::open(&path).expect("open");
        let mtime =
            DateTime::<Utc>::from(file.metadata().expect("meta").modified().expect("mtime"));
        let items: Vec<Result<Bytes>> = read_chunks(file, path, 300_000, mtime, 65_536, "t".into())
            .collect()
            .await;
        assert!(
            items.iter().all(|r| r.is_ok()),
            "an unchanged file reads cleanly"
        );
        assert_eq!(
            items
                .iter()
                .map(|r| r.as_ref().map_or(0, |b| b.len()))
                .sum::<usize>(),
            300_000
        );
    }

    #[test]
    fn keys_cannot_escape_the_folder() {
        for bad in ["../etc/passwd", "a/../../b", "", "a//b", "./a", "a\0b"] {
            assert!(check_key(bad, "t").is_err(), "{bad}");
        }
        assert!(check_key("a/b c#1", "t").is_ok());
    }

    #[test]
    fn deletes_never_reach_through_a_link() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("f"), b"keep").expect("write");
        std::os::unix::fs::symlink(outside.path(), root.path().join("sub")).expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("f"), root.path().join("k"))
            .expect("symlink");
        for key in ["sub/f", "k"] {
            let err = delete(root.path(), key, "t").expect_err(key);
            assert!(
                matches!(&err, StorageError::Skipped { detail, .. } if detail.contains("symbolic link")),
                "{err}"
            );
        }
        assert!(outside.path().join("f").exists(), "deleted through a link");
        assert!(
            root.path().join("k").symlink_metadata().is_ok(),
            "the link is left alone"
        );
        // Gone already, at any level, counts as deleted.
        delete(root.path(), "no/such/key", "t").expect("missing is fine");
    }

    #[tokio::test]
    async fn names_with_hash_digits_read_write_and_delete() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = futures::stream::once(async { Ok(Bytes::from_static(b"r1")) }).boxed();
        write_atomic(
            root.path(),
            "d/report#1",
            data,
            None,
            Modes::default(),
            false,
            "t",
        )
        .await
        .expect("write");
        let (_, e) = head(root.path(), "d/report#1", Links::Skip, "t").expect("head");
        assert_eq!(e.size, 2);
        delete(root.path(), "d/report#1", "t").expect("delete");
        assert!(!root.path().join("d/report#1").exists());
    }

    #[tokio::test]
    async fn a_replaced_file_keeps_its_narrowed_mode() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("k");
        std::fs::write(&path, b"old").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let data = futures::stream::once(async { Ok(Bytes::from_static(b"new")) }).boxed();
        write_atomic(root.path(), "k", data, None, Modes::default(), false, "t")
            .await
            .expect("write");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let data = futures::stream::once(async { Ok(Bytes::from_static(b"n")) }).boxed();
        write_atomic(
            root.path(),
            "fresh",
            data,
            None,
            Modes::default(),
            false,
            "t",
        )
        .await
        .expect("write");
        let meta = std::fs::metadata(root.path().join("fresh")).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn temp_files_of_another_host_are_never_judged_here() {
        let other = std::ffi::OsString::from(format!("{TEMP_PREFIX}hotherbox-4194000-0-0000abcd"));
        assert!(
            !is_orphan(&other),
            "another host's pid is not ours to judge"
        );
        let ours =
            std::ffi::OsString::from(format!("{TEMP_PREFIX}h{}-4194000-0-0000abcd", host_tag()));
        assert!(is_orphan(&ours), "our own dead writer's file is an orphan");
        assert!(temp_name().starts_with(&format!("{TEMP_PREFIX}h{}-", host_tag())));
    }
}
