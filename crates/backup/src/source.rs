//! A georep store as rustic_core's backup source. The listing (key, size, mtime, ETag)
//! becomes file nodes; rustic compares them with the parent point and opens only the
//! objects that differ, so an unchanged object is never read.
//!
//! restic looks tree entries up by binary search, so entries are yielded depth-first
//! with each folder's names in ascending order: `Path::cmp` order, not the byte order of
//! flat keys (`a-b` sorts before `a/b` as a string, after it as a path).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use georep_storage::{Entry, StorageError, Store};
use rustic_core::jiff::Timestamp;
use rustic_core::repofile::{Metadata, Node, NodeType};
use rustic_core::{ErrorKind, ReadSource, ReadSourceEntry, ReadSourceOpen, RusticError};

/// What reading the source cost and what failed, shared with the readers.
#[derive(Debug, Default)]
pub(crate) struct ReadStats {
    pub(crate) files: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) first_failure: Mutex<Option<String>>,
}

impl ReadStats {
    fn fail(&self, key: &str, why: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_failure.lock() {
            f.get_or_insert_with(|| format!("{key}: {why}"));
        }
        tracing::warn!(key, why, "object left out of the point");
    }
}

/// Keys that cannot be a path in a restic tree, with why.
pub(crate) fn path_of(key: &str) -> Result<PathBuf, &'static str> {
    if key.is_empty() || key.ends_with('/') {
        return Err("a folder marker, not an object");
    }
    if key
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err("an empty, '.' or '..' part cannot be a path in the point");
    }
    Ok(PathBuf::from(format!("/{key}")))
}

/// Whole seconds and nanoseconds as restic's node times.
fn ts(t: chrono::DateTime<chrono::Utc>) -> Option<Timestamp> {
    Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32).ok()
}

/// The ETag folded into the change time: object stores keep mtimes to the second, so a
/// same-size overwrite within one second differs only in its ETag. rustic compares ctime
/// when both points have one.
fn ctime(e: &Entry) -> Option<Timestamp> {
    let tag = e.e_tag.as_deref()?;
    let h = blake3::hash(tag.as_bytes());
    let b = h.as_bytes();
    let nanos = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % 1_000_000_000;
    Timestamp::new(e.last_modified.timestamp(), nanos as i32).ok()
}

/// The source as listed, in tree order, and the keys left out with why.
pub(crate) struct StoreSource {
    entries: Vec<(PathBuf, Entry)>,
    store: Arc<Store>,
    rt: tokio::runtime::Handle,
    pub(crate) stats: Arc<ReadStats>,
}

impl StoreSource {
    /// `listed` in any order; returns the keys that cannot be in a point, with why.
    pub(crate) fn new(
        listed: Vec<Entry>,
        store: Arc<Store>,
        rt: tokio::runtime::Handle,
    ) -> (Self, Vec<(String, &'static str)>) {
        let mut skipped = Vec::new();
        let mut entries = Vec::with_capacity(listed.len());
        for e in listed {
            // Zero-byte `folder/` markers (consoles make them) hold no data.
            if e.size == 0 && e.key.ends_with('/') {
                continue;
            }
            match path_of(&e.key) {
                Ok(p) => entries.push((p, e)),
                Err(why) => skipped.push((e.key, why)),
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        // A key that is also a folder (`a` and `a/b`) cannot be both in a tree.
        let folders: BTreeSet<PathBuf> = entries
            .iter()
            .flat_map(|(p, _)| p.ancestors().skip(1).map(PathBuf::from))
            .collect();
        entries.retain(|(p, e)| {
            let clash = folders.contains(p);
            if clash {
                skipped.push((
                    e.key.clone(),
                    "other keys use it as a folder; a point cannot hold both",
                ));
            }
            !clash
        });
        (
            Self {
                entries,
                store,
                rt,
                stats: Arc::new(ReadStats::default()),
            },
            skipped,
        )
    }
}

impl ReadSource for StoreSource {
    type Open = StoreOpen;
    type Iter = std::vec::IntoIter<rustic_core::RusticResult<ReadSourceEntry<StoreOpen>>>;

    fn size(&self) -> rustic_core::RusticResult<Option<u64>> {
        Ok(Some(self.entries.iter().map(|(_, e)| e.size).sum()))
    }

    fn entries(&self) -> Self::Iter {
        self.entries
            .iter()
            .map(|(path, e)| {
                let name = path.file_name().unwrap_or(OsStr::new("?"));
                let mtime = ts(e.last_modified);
                let meta = Metadata {
                    mode: Some(0o644),
                    mtime,
                    atime: mtime,
                    ctime: ctime(e),
                    size: e.size,
                    links: 1,
                    ..Metadata::default()
                };
                Ok(ReadSourceEntry {
                    path: path.clone(),
                    node: Node::new_node(name, NodeType::File, meta),
                    open: Some(StoreOpen {
                        store: self.store.clone(),
                        key: e.key.clone(),
                        size: e.size,
                        rt: self.rt.clone(),
                        stats: self.stats.clone(),
                    }),
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
    }
}

/// How to read one object; rustic opens it only when it differs from the parent.
pub(crate) struct StoreOpen {
    store: Arc<Store>,
    key: String,
    size: u64,
    rt: tokio::runtime::Handle,
    stats: Arc<ReadStats>,
}

impl ReadSourceOpen for StoreOpen {
    type Reader = StoreReader;

    fn open(self) -> rustic_core::RusticResult<StoreReader> {
        // A local file is read here, on rustic's thread, without a trip through the
        // runtime for every chunk.
        if let Some(opened) = self.store.open_local(&self.key) {
            return match opened {
                Ok((_, e)) if e.size != self.size => {
                    let why = format!(
                        "changed while the point was taken ({} bytes when listed, {} now); taken again",
                        self.size, e.size
                    );
                    self.stats.fail(&self.key, &why);
                    Err(
                        RusticError::new(ErrorKind::Backend, "cannot read {key}: {why}")
                            .attach_context("key", self.key.clone())
                            .attach_context("why", why),
                    )
                }
                Ok((file, _)) => {
                    self.stats.files.fetch_add(1, Ordering::Relaxed);
                    Ok(StoreReader {
                        stream: futures::stream::empty().boxed(),
                        file: Some(file),
                        buf: Bytes::new(),
                        rt: self.rt,
                        key: self.key,
                        expect: self.size,
                        seen: 0,
                        stats: self.stats,
                    })
                }
                Err(StorageError::NotFound { .. }) => Ok(StoreReader::gone(self)),
                Err(e) => {
                    let why = e.to_string();
                    self.stats.fail(&self.key, &why);
                    Err(
                        RusticError::new(ErrorKind::Backend, "cannot read {key}: {why}")
                            .attach_context("key", self.key.clone())
                            .attach_context("why", why),
                    )
                }
            };
        }
        let got = self.rt.block_on(self.store.get(&self.key, 1 << 20));
        let fail = |why: String| {
            self.stats.fail(&self.key, &why);
            RusticError::new(ErrorKind::Backend, "cannot read {key}: {why}")
                .attach_context("key", self.key.clone())
                .attach_context("why", why)
        };
        match got {
            Ok(r) if r.size != self.size => Err(fail(format!(
                "changed while the point was taken ({} bytes when listed, {} now); taken again",
                self.size, r.size
            ))),
            Ok(r) => {
                self.stats.files.fetch_add(1, Ordering::Relaxed);
                Ok(StoreReader {
                    stream: r.stream,
                    file: None,
                    buf: Bytes::new(),
                    rt: self.rt,
                    key: self.key,
                    expect: self.size,
                    seen: 0,
                    stats: self.stats,
                })
            }
            // Deleted since the listing: the point shows the source after the delete.
            Err(StorageError::NotFound { .. }) => Ok(StoreReader::gone(self)),
            Err(e) => Err(fail(e.to_string())),
        }
    }
}

/// An object's content as `std::io::Read`, fetched chunk by chunk through the runtime.
pub(crate) struct StoreReader {
    stream: BoxStream<'static, georep_storage::Result<Bytes>>,
    /// A local file, read directly instead of `stream`.
    file: Option<std::fs::File>,
    buf: Bytes,
    rt: tokio::runtime::Handle,
    key: String,
    expect: u64,
    seen: u64,
    stats: Arc<ReadStats>,
}

impl StoreReader {
    /// A reader for an object deleted after the listing: it fails, which leaves the
    /// object out without counting it as a failure.
    fn gone(o: StoreOpen) -> Self {
        Self {
            stream: futures::stream::once(async {
                Err(StorageError::NotFound {
                    store: String::new(),
                    detail: "deleted".into(),
                })
            })
            .boxed(),
            file: None,
            buf: Bytes::new(),
            rt: o.rt,
            key: o.key,
            expect: 0,
            seen: 0,
            stats: o.stats,
        }
    }

    fn failed(&self, why: String) -> std::io::Error {
        self.stats.fail(&self.key, &why);
        std::io::Error::other(why)
    }
}

impl Read for StoreReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if let Some(f) = self.file.as_mut() {
            let n = match f.read(out) {
                Ok(n) => n,
                Err(e) => return Err(self.failed(format!("read failed: {e}"))),
            };
            self.seen += n as u64;
            self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
            if (n == 0 && self.seen != self.expect && !out.is_empty()) || self.seen > self.expect {
                return Err(self.failed(format!(
                    "changed while the point was taken ({} bytes listed, {} read); taken again",
                    self.expect, self.seen
                )));
            }
            return Ok(n);
        }
        while self.buf.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                Some(Ok(b)) => {
                    self.seen += b.len() as u64;
                    self.stats
                        .bytes
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                    self.buf = b;
                }
                Some(Err(StorageError::NotFound { .. })) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "deleted since the listing",
                    ));
                }
                Some(Err(e)) => return Err(self.failed(e.to_string())),
                None if self.seen != self.expect => {
                    return Err(self.failed(format!(
                        "changed while the point was taken ({} bytes listed, {} read); taken again",
                        self.expect, self.seen
                    )));
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
    }
}
