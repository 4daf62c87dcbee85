//! Fault injection as a store wrapper, so retry and verification paths get real tests.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Serves the first `faults` reads one byte short (a connection cut that the HTTP layer
/// did not notice, or an object that changed under the reader); then reads are honest.
#[derive(Debug)]
pub struct TruncatingStore {
    inner: Arc<dyn ObjectStore>,
    faults: AtomicUsize,
}

impl TruncatingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, faults: usize) -> Self {
        Self {
            inner,
            faults: AtomicUsize::new(faults),
        }
    }

    /// Faults not yet served.
    pub fn faults_left(&self) -> usize {
        self.faults.load(Ordering::SeqCst)
    }
}

impl fmt::Display for TruncatingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TruncatingStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for TruncatingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let got = self.inner.get_opts(location, options).await?;
        let fault = self
            .faults
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !fault {
            return Ok(got);
        }
        let (meta, range, attributes) =
            (got.meta.clone(), got.range.clone(), got.attributes.clone());
        let all: Vec<Bytes> = got.into_stream().try_collect().await?;
        let mut joined: Vec<u8> = all.concat();
        joined.pop();
        let short = futures::stream::once(async move { Ok(Bytes::from(joined)) }).boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(short),
            meta,
            range,
            attributes,
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
