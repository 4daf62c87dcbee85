//! Reading and writing single objects: properties, streamed reads, writes that become
//! visible only when complete, kernel copies between local folders, and deletes.

use std::path::{Path as FsPath, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::{
    Attribute, Attributes, GetResultPayload, ObjectStoreExt, PutMultipartOptions, PutOptions,
    PutPayload, WriteMultipart,
};

use super::{blocking, Backend, Store};
use crate::entry::Entry;
use crate::error::{Result, StorageError};
use crate::local;

/// An open object being read: its properties and a stream of its bytes.
pub struct ObjectReader {
    pub size: u64,
    pub last_modified: DateTime<Utc>,
    pub e_tag: Option<String>,
    pub attributes: Attributes,
    pub stream: BoxStream<'static, Result<Bytes>>,
}

impl ObjectReader {
    /// An in-memory object, for writing test data and small generated objects.
    pub fn from_bytes(data: Bytes, attributes: Attributes) -> Self {
        Self {
            size: data.len() as u64,
            last_modified: Utc::now(),
            e_tag: None,
            attributes,
            stream: futures::stream::once(async move { Ok(data) }).boxed(),
        }
    }

    /// Reads the whole object into memory.
    pub async fn bytes(mut self) -> Result<Bytes> {
        let mut buf = Vec::with_capacity(self.size as usize);
        while let Some(chunk) = self.stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.into())
    }
}

impl Store {
    /// Reads an object's properties.
    pub async fn head(&self, key: &str) -> Result<Entry> {
        if let Backend::Local { root, links } = &self.backend {
            let (root, links, key, store) =
                (root.clone(), *links, key.to_string(), self.shown.clone());
            return blocking(&self.shown, move || {
                local::head(&root, &key, links, &store).map(|(_, e)| e)
            })
            .await;
        }
        let (os, path) = self.locate(key)?;
        let meta = os
            .head(&path)
            .await
            .map_err(|e| self.error_mapper().map(e))?;
        Ok(Entry {
            key: key.to_string(),
            size: meta.size,
            last_modified: meta.last_modified,
            e_tag: meta.e_tag,
        })
    }

    /// Opens an object for reading; `chunk` is the read size for local files.
    /// A local store's object as an open file, for callers on a blocking thread that
    /// read it themselves (backup points); opened as `get` opens it, no link followed.
    /// `None` for object stores.
    pub fn open_local(&self, key: &str) -> Option<Result<(std::fs::File, Entry)>> {
        match &self.backend {
            Backend::Local { root, links } => Some(local::head(root, key, *links, &self.shown)),
            _ => None,
        }
    }

    /// A local store's atomic writer for callers on a blocking thread; `None` for
    /// object stores. The object appears only on [`crate::LocalWriter::commit`].
    pub fn local_writer(&self, key: &str) -> Option<Result<crate::LocalWriter>> {
        match &self.backend {
            Backend::Local { root, .. } => Some(crate::LocalWriter::create(
                root,
                key,
                self.fsync,
                &self.shown,
            )),
            _ => None,
        }
    }

    pub async fn get(&self, key: &str, chunk: usize) -> Result<ObjectReader> {
        if let Backend::Local { root, links } = &self.backend {
            let (root, links, k, store) =
                (root.clone(), *links, key.to_string(), self.shown.clone());
            let (file, entry) =
                blocking(&self.shown, move || local::head(&root, &k, links, &store)).await?;
            let mut attributes = Attributes::new();
            if let Some(ct) = crate::mime::guess(key) {
                attributes.insert(Attribute::ContentType, ct.into());
            }
            return Ok(ObjectReader {
                size: entry.size,
                last_modified: entry.last_modified,
                e_tag: None,
                attributes,
                stream: local::read_chunks(
                    file,
                    PathBuf::from(key),
                    entry.size,
                    entry.last_modified,
                    chunk,
                    self.shown.clone(),
                ),
            });
        }
        let (os, path) = self.locate(key)?;
        let mapper = self.error_mapper();
        let got = os.get(&path).await.map_err(|e| mapper.map(e))?;
        let size = got.meta.size;
        let last_modified = got.meta.last_modified;
        let e_tag = got.meta.e_tag.clone();
        let attributes = got.attributes.clone();
        let stream = match got.payload {
            GetResultPayload::File(file, fs_path) => local::read_chunks(
                file,
                fs_path,
                size,
                last_modified,
                chunk,
                self.shown.clone(),
            ),
            GetResultPayload::Stream(s) => s.map_err(move |e| mapper.map(e)).boxed(),
        };
        Ok(ObjectReader {
            size,
            last_modified,
            e_tag,
            attributes,
            stream,
        })
    }

    /// Reads `range` of an object (a byte range, end exclusive) in one piece: for
    /// readers of large containers that need a few pieces of them, such as the pack
    /// files of a backup repository. A range past the object's end is an error.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        let (shown, owned) = (self.shown.clone(), key.to_string());
        let r0 = range.clone();
        let bad_range = move |size: u64| StorageError::Io {
            store: shown.clone(),
            detail: format!(
                "{owned}: bytes {}..{} asked for, but the object has {size}",
                r0.start, r0.end
            ),
            retryable: false,
        };
        if range.start > range.end {
            return Err(bad_range(0));
        }
        if let Backend::Local { root, links } = &self.backend {
            let (root, links, k, store) =
                (root.clone(), *links, key.to_string(), self.shown.clone());
            let (r, bad) = (range.clone(), bad_range.clone());
            return blocking(&self.shown, move || {
                use std::os::unix::fs::FileExt;
                let (file, entry) = local::head(&root, &k, links, &store)?;
                if r.end > entry.size {
                    return Err(bad(entry.size));
                }
                let mut buf = vec![0u8; (r.end - r.start) as usize];
                file.read_exact_at(&mut buf, r.start)
                    .map_err(|e| StorageError::Io {
                        store: store.clone(),
                        detail: format!("{k}: {e}"),
                        retryable: false,
                    })?;
                Ok(Bytes::from(buf))
            })
            .await;
        }
        let (os, path) = self.locate(key)?;
        let got = os
            .get_range(&path, range.clone())
            .await
            .map_err(|e| self.error_mapper().map(e))?;
        if got.len() as u64 != range.end - range.start {
            return Err(bad_range(got.len() as u64 + range.start));
        }
        Ok(got)
    }

    /// Writes an object so that it becomes visible only when complete: a temp file and
    /// rename on local disk, one PUT or a committed multipart upload elsewhere.
    /// Returns the new object's ETag when the store gives one.
    pub async fn put(
        &self,
        key: &str,
        reader: ObjectReader,
        part_size: usize,
        part_concurrency: usize,
    ) -> Result<Option<String>> {
        match &self.backend {
            Backend::Local { root, .. } => {
                local::write_atomic(
                    root,
                    key,
                    reader.stream,
                    Some(reader.last_modified),
                    local::Modes::default(),
                    self.fsync,
                    &self.shown,
                )
                .await?;
                Ok(None)
            }
            Backend::Remote { os, .. } => {
                let path = self.remote_path(key)?;
                let mapper = self.error_mapper();
                let mut stream = reader.stream;
                if reader.size as usize <= part_size {
                    let mut parts = Vec::new();
                    while let Some(chunk) = stream.next().await {
                        parts.push(chunk?);
                    }
                    let payload: PutPayload = parts.into_iter().collect();
                    let opts = PutOptions {
                        attributes: reader.attributes,
                        ..Default::default()
                    };
                    let res = os
                        .put_opts(&path, payload, opts)
                        .await
                        .map_err(|e| mapper.map(e))?;
                    return Ok(res.e_tag);
                }
                let opts = PutMultipartOptions {
                    attributes: reader.attributes,
                    ..Default::default()
                };
                let upload = os
                    .put_multipart_opts(&path, opts)
                    .await
                    .map_err(|e| mapper.map(e))?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size);
                let result: Result<()> = async {
                    while let Some(chunk) = stream.next().await {
                        writer
                            .wait_for_capacity(part_concurrency)
                            .await
                            .map_err(|e| mapper.map(e))?;
                        writer.put(chunk?);
                    }
                    Ok(())
                }
                .await;
                match result {
                    Ok(()) => {
                        let res = writer.finish().await.map_err(|e| mapper.map(e))?;
                        Ok(res.e_tag)
                    }
                    Err(e) => {
                        // Nothing was committed, so nothing is visible; free the parts.
                        let _ = writer.abort().await;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Copies between two local folders in the kernel (`copy_file_range`), atomically.
    pub async fn copy_local(
        &self,
        key: &str,
        dst: &Store,
        src_mtime: DateTime<Utc>,
    ) -> Result<u64> {
        let (Backend::Local { root: sroot, links }, Some(droot)) =
            (&self.backend, dst.local_root())
        else {
            return Err(StorageError::InvalidConfig {
                store: self.shown.clone(),
                detail: "copy_local needs two local stores".into(),
            });
        };
        let (sroot, droot, links) = (sroot.clone(), droot.to_path_buf(), *links);
        let (sname, dname, key) = (self.shown.clone(), dst.shown.clone(), key.to_string());
        let fsync = dst.fsync;
        blocking(&dst.shown, move || {
            local::copy_file_atomic(
                (&sroot, links, &sname),
                (&droot, &dname),
                &key,
                src_mtime,
                fsync,
            )
        })
        .await
    }

    /// Deletes an object; an object already gone counts as deleted.
    pub async fn delete(&self, key: &str) -> Result<()> {
        if let Backend::Local { root, .. } = &self.backend {
            let (root, key, store) = (root.clone(), key.to_string(), self.shown.clone());
            return blocking(&self.shown, move || local::delete(&root, &key, &store)).await;
        }
        let (os, path) = self.locate(key)?;
        match os.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error_mapper().map(e)),
        }
    }

    /// Makes sure a local destination folder exists (object stores need nothing), made
    /// as closed as a local `source` folder, else as `mkdir -p` would.
    pub fn prepare_destination(&self, source: Option<&Store>) -> Result<()> {
        if let Backend::Local { root, .. } = &self.backend {
            if root.is_dir() {
                return Ok(());
            }
            let modes = local::Modes {
                file: None,
                source_root: source.and_then(Store::local_root).map(FsPath::to_path_buf),
            };
            let mut b = std::fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(b.recursive(true), modes.folder("") & 0o1777);
            b.create(root)
                .map_err(|e| StorageError::io(&self.shown, "cannot create the folder", e))?;
        }
        Ok(())
    }
}
