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

use crate::error::{Result, StorageError};
use crate::store::{Entry, ListRole};

/// Name prefix of in-flight writes; never listed as objects.
pub const TEMP_PREFIX: &str = ".georep-tmp-";
const LIST_BATCH: usize = 512;

/// Walks `root` depth-first with each folder's entries sorted so that the emitted keys
/// come out in ascending byte order: a folder `d` sorts as `d/`, exactly where the keys
/// `d/...` belong. Memory is one folder's entries plus a few batches.
pub(crate) fn list_sorted(
    root: PathBuf,
    store: String,
    role: ListRole,
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
        let walker = walkdir::WalkDir::new(&root)
            .min_depth(1)
            // A source may link in folders; a destination must not, or a delete would
            // reach outside it.
            .follow_links(role == ListRole::Source)
            .sort_by(|a, b| {
                let slash = |e: &walkdir::DirEntry| {
                    if e.file_type().is_dir() {
                        Some(b'/')
                    } else {
                        None
                    }
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
        let mut batch = Vec::with_capacity(LIST_BATCH);
        for item in walker {
            let out = match item {
                Ok(e) if e.file_type().is_dir() => continue,
                Ok(e) if e.file_type().is_symlink() => {
                    tracing::warn!(path = %e.path().display(), "symbolic link in a destination: left alone");
                    continue;
                }
                Ok(e) if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) => {
                    if role == ListRole::Destination && is_orphan(e.file_name()) {
                        match std::fs::remove_file(e.path()) {
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
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
    });
    stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (stream::iter(b), rx))
    })
    .flatten()
    .boxed()
}

/// Whether a temp file's writer process (its pid is in the name) no longer runs.
fn is_orphan(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    let pid = name
        .strip_prefix(TEMP_PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

fn entry_of(root: &Path, e: &walkdir::DirEntry, store: &str) -> Result<Entry> {
    let rel = e.path().strip_prefix(root).unwrap_or(e.path());
    let key = rel.to_str().ok_or_else(|| StorageError::Io {
        store: store.to_string(),
        detail: format!("file name is not UTF-8, skipped: {}", rel.display()),
        retryable: false,
    })?;
    if key.chars().any(char::is_control) {
        // Object stores refuse such keys, and the delete list is newline-separated.
        return Err(StorageError::Io {
            store: store.to_string(),
            detail: format!("file name contains a control character, skipped: {key:?}"),
            retryable: false,
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

/// The file for `key` under `root`, refusing keys that could escape the folder.
pub(crate) fn key_path(root: &Path, key: &str, store: &str) -> Result<PathBuf> {
    let bad = key.is_empty()
        || key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == ".." || s.starts_with(TEMP_PREFIX));
    if bad {
        return Err(StorageError::Backend {
            store: store.to_string(),
            detail: format!("key {key:?} cannot be a file name (empty, '.' or '..' segment)"),
            retryable: false,
        });
    }
    Ok(root.join(key))
}

/// Streams an open file in `chunk`-sized reads on the blocking pool.
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

fn temp_path(dest: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "{TEMP_PREFIX}{}-{n}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    dest.with_file_name(name)
}

fn create_parent(dest: &Path, store: &str) -> Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            StorageError::io(
                store,
                &format!("cannot create folder {}", parent.display()),
                e,
            )
        })?;
    }
    Ok(())
}

/// Writes a stream to `dest` through a temp file and a rename, then sets its mtime.
pub(crate) async fn write_atomic(
    dest: &Path,
    mut data: BoxStream<'static, Result<Bytes>>,
    mtime: Option<DateTime<Utc>>,
    fsync: bool,
    store: &str,
) -> Result<()> {
    let (file, tmp) = create_temp(dest, store)?;
    let result: Result<()> = async {
        let file = tokio::fs::File::from_std(file);
        let mut w = tokio::io::BufWriter::with_capacity(1 << 20, file);
        while let Some(chunk) = data.next().await {
            w.write_all(&chunk?).await.map_err(|e| {
                StorageError::io(store, &format!("cannot write {}", tmp.display()), e)
            })?;
        }
        w.flush()
            .await
            .map_err(|e| StorageError::io(store, &format!("cannot write {}", tmp.display()), e))?;
        let file = w.into_inner().into_std().await;
        if let Some(t) = mtime {
            let _ = file.set_modified(t.into());
        }
        tokio::task::spawn_blocking(move || commit(file, fsync))
            .await
            .map_err(|e| StorageError::io(store, "fsync", std::io::Error::other(e)))?
            .map_err(|e| StorageError::io(store, &format!("cannot sync {}", tmp.display()), e))?;
        rename_durably(&tmp, dest, fsync, store)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Flushes a finished temp file to disk when `--fsync` asked for it, then closes it.
fn commit(file: File, fsync: bool) -> std::io::Result<()> {
    if fsync {
        file.sync_all()?;
    }
    Ok(())
}

/// Renames the temp file over the key; with `fsync`, also makes the rename durable.
fn rename_durably(tmp: &Path, dest: &Path, fsync: bool, store: &str) -> Result<()> {
    std::fs::rename(tmp, dest).map_err(|e| {
        StorageError::io(store, &format!("cannot rename into {}", dest.display()), e)
    })?;
    if fsync {
        if let Some(parent) = dest.parent() {
            File::open(parent).and_then(|d| d.sync_all()).map_err(|e| {
                StorageError::io(store, &format!("cannot sync {}", parent.display()), e)
            })?;
        }
    }
    Ok(())
}

/// Creates a fresh temp file beside `dest`, creating folders only when they are missing
/// (one syscall per file in the common case).
fn create_temp(dest: &Path, store: &str) -> Result<(File, PathBuf)> {
    let tmp = temp_path(dest);
    let open = || File::options().write(true).create_new(true).open(&tmp);
    match open() {
        Ok(f) => Ok((f, tmp)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_parent(dest, store)?;
            open().map(|f| (f, tmp.clone())).map_err(|e| {
                StorageError::io(store, &format!("cannot create {}", tmp.display()), e)
            })
        }
        Err(e) => Err(StorageError::io(
            store,
            &format!("cannot create {}", tmp.display()),
            e,
        )),
    }
}

/// Copies one local file to another folder atomically, keeping its mtime. The kernel
/// copies the bytes (`copy_file_range`); the source's size after the copy must equal
/// what was copied, or the source changed mid-copy and nothing is renamed into place.
pub(crate) fn copy_file_atomic(
    from: &Path,
    to: &Path,
    mtime: DateTime<Utc>,
    fsync: bool,
    src_store: &str,
    dst_store: &str,
) -> Result<u64> {
    let mut src = File::open(from)
        .map_err(|e| StorageError::io(src_store, &format!("cannot read {}", from.display()), e))?;
    let before = src
        .metadata()
        .and_then(|m| m.modified())
        .map_err(|e| StorageError::io(src_store, &format!("cannot stat {}", from.display()), e))?;
    let (mut dst, tmp) = create_temp(to, dst_store)?;
    let result = (|| {
        let n = std::io::copy(&mut src, &mut dst).map_err(|e| {
            StorageError::io(
                dst_store,
                &format!("cannot copy {} to {}", from.display(), tmp.display()),
                e,
            )
        })?;
        let now = src.metadata().map_err(|e| {
            StorageError::io(src_store, &format!("cannot stat {}", from.display()), e)
        })?;
        if now.len() != n || now.modified().ok() != Some(before) {
            return Err(StorageError::Verify(format!(
                "{} changed during the copy; it will be copied again",
                from.display()
            )));
        }
        let _ = dst.set_modified(mtime.into());
        commit(dst, fsync).map_err(|e| {
            StorageError::io(dst_store, &format!("cannot sync {}", tmp.display()), e)
        })?;
        rename_durably(&tmp, to, fsync, dst_store)?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
            list_sorted(dir.path().to_path_buf(), "t".into(), role)
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
        let keys: Vec<String> = list_sorted(dir.path().to_path_buf(), "t".into(), ListRole::Source)
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
        let root = Path::new("/srv/x");
        for bad in ["../etc/passwd", "a/../../b", "", "a//b", "./a"] {
            assert!(key_path(root, bad, "t").is_err(), "{bad}");
        }
        assert_eq!(
            key_path(root, "a/b c", "t").expect("ok"),
            root.join("a/b c")
        );
    }
}
