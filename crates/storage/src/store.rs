//! `Store`: one georep view of a location, over `object_store`.
//!
//! It adds what georep needs on top of the backends: listings in key order (the diff is
//! a streaming merge), keys relative to the URL's prefix, errors that name the store
//! and the fix, secrets scrubbed from every message, and atomic, mtime-preserving writes
//! on local disk (object_store's `LocalFileSystem` lists unordered and cannot keep mtimes).

use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use georep_core::StoreUrl;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetResultPayload, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

use crate::error::{Result, StorageError};
use crate::lenient::Lenient;
use crate::local;

/// The Azurite/Azure Storage Emulator key: public, documented, and only ever used for an
/// explicit emulator endpoint with the emulator's account name.
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

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

/// How stores talk to their endpoints; one per process run.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Longest time one request (with its retries) may take before the endpoint is
    /// declared down.
    pub retry_timeout: Duration,
    /// Idle timeout: a request that receives nothing for this long fails the attempt.
    /// There is no total timeout, so a large object may take as long as it needs.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Variables read before the process environment (for tests that talk to several
    /// endpoints in one process); credentials still never come from URLs.
    pub env: std::collections::BTreeMap<String, String>,
    /// fsync local files and their folders before a write counts as done, so a power
    /// loss cannot leave a renamed but empty file. Off by default, as in cp and rclone.
    pub fsync: bool,
    /// Local sources: read what symbolic links point to, as long as it stays inside the
    /// folder. Off by default: links are skipped and reported. Destinations never follow.
    pub follow_symlinks: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            retry_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            env: Default::default(),
            fsync: false,
            follow_symlinks: false,
        }
    }
}

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
    /// Opens a store. Nothing is sent to the endpoint yet; a bad endpoint shows up at the
    /// first listing, with a message naming the store.
    pub fn open(url: &StoreUrl, opts: &StoreOptions) -> Result<Self> {
        let env = |name: &str| {
            opts.env
                .get(name)
                .cloned()
                .or_else(|| std::env::var(name).ok())
                .filter(|v| !v.is_empty())
        };
        let shown = url.to_string();
        let invalid = |detail: String| StorageError::InvalidConfig {
            store: shown.clone(),
            detail,
        };
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: 10,
            retry_timeout: opts.retry_timeout,
        };
        let client = |allow_http: bool| {
            ClientOptions::new()
                .with_timeout_disabled()
                .with_read_timeout(opts.request_timeout)
                .with_connect_timeout(opts.connect_timeout)
                .with_allow_http(allow_http)
                .with_pool_max_idle_per_host(64)
        };
        let mut secrets = Vec::new();
        let backend = match url {
            StoreUrl::Local { path } => Backend::Local {
                root: absolute(path),
                links: if opts.follow_symlinks {
                    local::Links::FollowInside
                } else {
                    local::Links::Skip
                },
            },
            StoreUrl::Memory { name, prefix } => Backend::Remote {
                os: memory_store(name),
                prefix: parse_prefix(prefix, &shown)?,
                lenient: None,
            },
            StoreUrl::Azure {
                account,
                container,
                prefix,
                endpoint,
            } => {
                let env_account = env("AZURE_STORAGE_ACCOUNT_NAME");
                let account = account.clone().or(env_account).ok_or_else(|| {
                    invalid("no storage account: set AZURE_STORAGE_ACCOUNT_NAME or use https://ACCOUNT.blob.core.windows.net/CONTAINER".into())
                })?;
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_account(&account)
                    .with_container_name(container)
                    .with_retry(retry)
                    .with_client_options(client(
                        endpoint
                            .as_deref()
                            .is_some_and(|e| e.starts_with("http://")),
                    ));
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e.clone());
                }
                let key = env("AZURE_STORAGE_ACCOUNT_KEY");
                let sas = env("AZURE_STORAGE_SAS_TOKEN");
                match (&key, &sas) {
                    (Some(k), _) => {
                        secrets.push(k.clone());
                        b = b.with_access_key(k);
                    }
                    (None, Some(s)) => {
                        secrets.push(s.trim_start_matches('?').to_string());
                        let pairs = parse_sas(s).map_err(|d| invalid(d.to_string()))?;
                        for (_, v) in &pairs {
                            secrets.push(v.clone());
                        }
                        b = b.with_config(AzureConfigKey::SasKey, s.trim_start_matches('?'));
                    }
                    (None, None) if endpoint.is_some() && account == EMULATOR_ACCOUNT => {
                        b = b.with_access_key(EMULATOR_KEY);
                    }
                    (None, None) => {
                        let has_other = [
                            "AZURE_CLIENT_SECRET",
                            "AZURE_STORAGE_TOKEN",
                            "AZURE_FEDERATED_TOKEN_FILE",
                        ]
                        .iter()
                        .any(|v| env(v).is_some());
                        if !has_other {
                            return Err(invalid("no credentials: set AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN (or AZURE_CLIENT_ID/AZURE_CLIENT_SECRET/AZURE_TENANT_ID)".into()));
                        }
                    }
                }
                let signing = crate::lenient::Signing {
                    unsigned: b
                        .get_config_value(&AzureConfigKey::SkipSignature)
                        .is_some_and(|v| v == "true"),
                    request_payer: false,
                };
                let emulated = b
                    .get_config_value(&AzureConfigKey::UseEmulator)
                    .is_some_and(|v| v == "true");
                let base = match b.get_config_value(&AzureConfigKey::Endpoint) {
                    Some(e) => format!("{}/{container}", e.trim_end_matches('/')),
                    None => format!("https://{account}.blob.core.windows.net/{container}"),
                };
                let os = b.build().map_err(|e| invalid(e.to_string()))?;
                let allow_http = endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://"));
                let lenient = (!emulated)
                    .then(|| {
                        Lenient::azure(
                            os.credentials().clone(),
                            account.clone(),
                            signing,
                            &base,
                            &client(allow_http),
                            opts.retry_timeout,
                        )
                    })
                    .flatten()
                    .map(Arc::new);
                Backend::Remote {
                    os: Arc::new(os),
                    prefix: parse_prefix(prefix, &shown)?,
                    lenient,
                }
            }
            StoreUrl::S3 { bucket, prefix } => {
                let endpoint = env("AWS_ENDPOINT_URL").or_else(|| env("AWS_ENDPOINT"));
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .with_client_options(client(
                        endpoint
                            .as_deref()
                            .is_some_and(|e| e.starts_with("http://")),
                    ));
                if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
                    b = b.with_region("us-east-1");
                } else if let Some(r) = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")) {
                    b = b.with_region(r);
                }
                if let Some(e) = &endpoint {
                    b = b
                        .with_endpoint(e.clone())
                        .with_virtual_hosted_style_request(false);
                }
                if let Some(id) = env("AWS_ACCESS_KEY_ID") {
                    b = b.with_access_key_id(id);
                }
                match env("AWS_SECRET_ACCESS_KEY") {
                    Some(s) => {
                        b = b.with_secret_access_key(&s);
                        secrets.push(s);
                    }
                    None => {
                        let has_other = [
                            "AWS_WEB_IDENTITY_TOKEN_FILE",
                            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                            "AWS_SKIP_SIGNATURE",
                        ]
                        .iter()
                        .any(|v| env(v).is_some());
                        if !has_other {
                            return Err(invalid(
                                "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                                    .into(),
                            ));
                        }
                    }
                }
                if let Some(t) = env("AWS_SESSION_TOKEN") {
                    b = b.with_token(&t);
                    secrets.push(t);
                }
                let cfg = |k: AmazonS3ConfigKey| b.get_config_value(&k).filter(|v| !v.is_empty());
                let region = cfg(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
                let base = match (
                    cfg(AmazonS3ConfigKey::Endpoint),
                    cfg(AmazonS3ConfigKey::VirtualHostedStyleRequest).as_deref() == Some("true"),
                ) {
                    (Some(e), true) => e,
                    (Some(e), false) => format!("{}/{bucket}", e.trim_end_matches('/')),
                    (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
                    (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
                };
                let signing = crate::lenient::Signing {
                    unsigned: cfg(AmazonS3ConfigKey::SkipSignature).as_deref() == Some("true"),
                    request_payer: cfg(AmazonS3ConfigKey::RequestPayer).as_deref() == Some("true"),
                };
                // S3 Express buckets sign differently: they keep object_store's listing.
                let express = cfg(AmazonS3ConfigKey::S3Express).as_deref() == Some("true");
                let allow_http = endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://"));
                let os = b.build().map_err(|e| invalid(e.to_string()))?;
                let lenient = (!express)
                    .then(|| {
                        Lenient::s3(
                            os.credentials().clone(),
                            region,
                            signing,
                            &base,
                            &client(allow_http),
                            opts.retry_timeout,
                        )
                    })
                    .flatten()
                    .map(Arc::new);
                Backend::Remote {
                    os: Arc::new(os),
                    prefix: parse_prefix(prefix, &shown)?,
                    lenient,
                }
            }
            StoreUrl::Gcs { bucket, prefix } => {
                let has_creds = [
                    "GOOGLE_SERVICE_ACCOUNT",
                    "GOOGLE_SERVICE_ACCOUNT_PATH",
                    "GOOGLE_SERVICE_ACCOUNT_KEY",
                    "GOOGLE_APPLICATION_CREDENTIALS",
                    "GOOGLE_SKIP_SIGNATURE",
                ]
                .iter()
                .any(|v| env(v).is_some());
                if !has_creds {
                    return Err(invalid("no credentials: set GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT_PATH / GOOGLE_SERVICE_ACCOUNT_KEY)".into()));
                }
                if let Some(k) = env("GOOGLE_SERVICE_ACCOUNT_KEY") {
                    secrets.push(k);
                }
                let os = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .with_client_options(client(false))
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                Backend::Remote {
                    os: Arc::new(os),
                    prefix: parse_prefix(prefix, &shown)?,
                    lenient: None,
                }
            }
        };
        secrets.retain(|s| s.len() >= 4);
        Ok(Self {
            url: url.clone(),
            fsync: opts.fsync,
            shown,
            backend,
            secrets,
        })
    }

    /// Wraps any `object_store` backend (fault injection, custom backends). The store is
    /// shown as `memory://NAME`.
    pub fn from_object_store(name: &str, os: Arc<dyn ObjectStore>) -> Self {
        let url = StoreUrl::Memory {
            name: name.to_string(),
            prefix: String::new(),
        };
        Self {
            shown: url.to_string(),
            url,
            backend: Backend::Remote {
                os,
                prefix: None,
                lenient: None,
            },
            secrets: Vec::new(),
            fsync: false,
        }
    }

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

    /// Lists every object under the prefix in ascending byte order of key.
    pub fn list(&self, role: ListRole) -> BoxStream<'static, Result<Entry>> {
        match &self.backend {
            Backend::Local { root, links } => {
                local::list_sorted(root.clone(), self.shown.clone(), role, *links)
            }
            Backend::Remote {
                lenient: Some(l),
                prefix,
                ..
            } => {
                let full = prefix
                    .as_ref()
                    .map(|p| format!("{}/", p.as_ref()))
                    .unwrap_or_default();
                l.clone().list(full, self.error_mapper())
            }
            Backend::Remote { os, prefix, .. } => {
                let strip = prefix.as_ref().map(|p| format!("{}/", p.as_ref()));
                let this = self.error_mapper();
                let entries = os
                    .list(prefix.as_ref())
                    .map_err(move |e| this.map(e))
                    .try_filter_map(move |meta| {
                        let full = meta.location.as_ref();
                        let key = match &strip {
                            Some(s) => full.strip_prefix(s.as_str()).map(str::to_string),
                            None => Some(full.to_string()),
                        };
                        futures::future::ready(Ok(key.map(|key| Entry {
                            key,
                            size: meta.size,
                            last_modified: meta.last_modified,
                            e_tag: meta.e_tag,
                        })))
                    });
                drop_folder_markers(entries.boxed())
            }
        }
    }

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

    pub(crate) fn error_mapper(&self) -> ErrorMapper {
        ErrorMapper {
            store: self.shown.clone(),
            secrets: self.secrets.clone(),
            container: match &self.url {
                StoreUrl::Azure { container, .. } => Some(("container", container.clone())),
                StoreUrl::S3 { bucket, .. } | StoreUrl::Gcs { bucket, .. } => {
                    Some(("bucket", bucket.clone()))
                }
                _ => None,
            },
            env_hint: match &self.url {
                StoreUrl::Azure { .. } => "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN",
                StoreUrl::S3 { .. } => "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                StoreUrl::Gcs { .. } => "GOOGLE_APPLICATION_CREDENTIALS",
                _ => "the file permissions",
            },
        }
    }
}

/// Turns backend errors into `StorageError`s that name the store, and scrubs secrets.
#[derive(Debug, Clone)]
pub(crate) struct ErrorMapper {
    store: String,
    secrets: Vec<String>,
    container: Option<(&'static str, String)>,
    env_hint: &'static str,
}

impl ErrorMapper {
    pub(crate) fn map(&self, e: object_store::Error) -> StorageError {
        let text = self.scrub(&chain_text(&e));
        let store = self.store.clone();
        let container_missing = [
            "ContainerNotFound",
            "NoSuchBucket",
            "The specified container does not exist",
            "bucket does not exist",
        ]
        .iter()
        .any(|m| text.contains(m));
        if container_missing {
            if let Some((what, name)) = &self.container {
                return StorageError::ContainerNotFound {
                    store,
                    what,
                    name: name.clone(),
                };
            }
        }
        match &e {
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                store,
                detail: short(&text),
            },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => StorageError::PermissionDenied {
                store,
                detail: short(&text),
                env: self.env_hint,
            },
            _ => {
                if let Some(kind) = http_kind(&e) {
                    use object_store::client::HttpErrorKind as K;
                    if matches!(kind, K::Connect | K::Timeout | K::Request) {
                        return StorageError::Unreachable {
                            store,
                            detail: unreachable_detail(&e, &text),
                        };
                    }
                }
                let status = retry_status(&e);
                if matches!(status, Some(401 | 403)) {
                    return StorageError::PermissionDenied {
                        store,
                        detail: short(&text),
                        env: self.env_hint,
                    };
                }
                let retryable = status.is_none_or(|s| s >= 500 || s == 429 || s == 408);
                StorageError::Backend {
                    store,
                    detail: short(&text),
                    retryable,
                }
            }
        }
    }

    pub(crate) fn store(&self) -> &str {
        &self.store
    }

    /// An HTTP error status from a request georep signed and sent itself.
    pub(crate) fn map_status(&self, status: u16, body: &str) -> StorageError {
        let text = self.scrub(body);
        let store = self.store.clone();
        let container_missing = [
            "ContainerNotFound",
            "NoSuchBucket",
            "The specified container does not exist",
        ]
        .iter()
        .any(|m| text.contains(m));
        if status == 404 && container_missing {
            if let Some((what, name)) = &self.container {
                return StorageError::ContainerNotFound {
                    store,
                    what,
                    name: name.clone(),
                };
            }
        }
        let detail = short(&format!("HTTP {status}: {}", text.trim()));
        match status {
            401 | 403 => StorageError::PermissionDenied {
                store,
                detail,
                env: self.env_hint,
            },
            404 => StorageError::NotFound { store, detail },
            _ => StorageError::Backend {
                store,
                detail,
                retryable: status >= 500 || status == 429 || status == 408,
            },
        }
    }

    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            out = out.replace(s.as_str(), "***");
        }
        scrub_query_secrets(&out)
    }
}

/// Replaces values of signature-like query parameters (`sig=`, `X-Amz-Signature=`,
/// `X-Amz-Credential=`, `X-Amz-Security-Token=`) in any URL inside `text`.
pub(crate) fn scrub_query_secrets(text: &str) -> String {
    let mut out = text.to_string();
    for param in [
        "sig=",
        "X-Amz-Signature=",
        "X-Amz-Credential=",
        "X-Amz-Security-Token=",
    ] {
        let mut from = 0;
        while let Some(pos) = out[from..].find(param) {
            let start = from + pos + param.len();
            let end = out[start..]
                .find(|c: char| c == '&' || c == ')' || c == '"' || c.is_whitespace())
                .map(|e| start + e)
                .unwrap_or(out.len());
            out.replace_range(start..end, "***");
            from = start + 3;
        }
    }
    out
}

fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cur = s.source();
    }
    text
}

fn http_kind(e: &(dyn std::error::Error + 'static)) -> Option<object_store::client::HttpErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = cur {
        if let Some(h) = s.downcast_ref::<object_store::client::HttpError>() {
            return Some(h.kind());
        }
        cur = s.source();
    }
    None
}

/// The HTTP status in an object_store error's text ("... status code: 503 ..."); the
/// retry error type that holds it is private.
fn retry_status(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let text = chain_text(e);
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// The root cause of a transport failure and how long georep kept trying, instead of
/// the whole chain of wrappers.
fn unreachable_detail(e: &(dyn std::error::Error + 'static), text: &str) -> String {
    let mut root = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        root = s.to_string();
        cur = s.source();
    }
    // object_store says "... in 1.067797403s, after 6 retries, max_retries: ...".
    let elapsed = text
        .split(" in ")
        .nth(1)
        .and_then(|t| t.split("s,").next())
        .and_then(|t| t.parse::<f64>().ok());
    let retries = text
        .split(", after ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse::<u32>().ok());
    match (retries, elapsed) {
        (Some(n), Some(secs)) => {
            short(&format!("{root} (gave up after {n} retries in {secs:.1}s)"))
        }
        _ => short(&root),
    }
}

/// Keeps error text to one readable line.
fn short(text: &str) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.len() > 400 {
        let mut cut = 400;
        while !one_line.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &one_line[..cut])
    } else {
        one_line
    }
}

/// For stores listed through object_store (GCS, S3 Express): drops "folder markers",
/// zero-byte objects named `dir/`, which object_store
/// lists as `dir` (it strips the trailing slash). A zero-byte entry is a marker when the
/// next key is the same name (a real `dir` object listed before its marker) or lies
/// below it (`dir/...`). A lone empty marker stays, and reads as gone when copied.
fn drop_folder_markers(
    entries: BoxStream<'static, Result<Entry>>,
) -> BoxStream<'static, Result<Entry>> {
    struct St {
        /// A zero-byte entry waiting for the next key to tell whether it is a marker.
        held: Option<Entry>,
        last: Option<String>,
    }
    let marker_of = |held: &Entry, next: &str| key_within(next, &held.key);
    entries
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .scan(
            St {
                held: None,
                last: None,
            },
            move |st, item| {
                let mut out: Vec<Result<Entry>> = Vec::new();
                match item {
                    None => out.extend(st.held.take().map(Ok)),
                    Some(Err(e)) => {
                        out.extend(st.held.take().map(Ok));
                        out.push(Err(e));
                    }
                    Some(Ok(e)) => {
                        if let Some(h) = st.held.take() {
                            if !marker_of(&h, &e.key) {
                                out.push(Ok(h));
                            }
                        }
                        if e.size == 0 && st.last.as_deref() == Some(e.key.as_str()) {
                            // The marker of a real object of the same name: already listed.
                        } else {
                            st.last = Some(e.key.clone());
                            if e.size == 0 {
                                st.held = Some(e);
                            } else {
                                out.push(Ok(e));
                            }
                        }
                    }
                }
                futures::future::ready(Some(futures::stream::iter(out)))
            },
        )
        .flatten()
        .boxed()
}

/// Whether `key` is `prefix` itself or a key below it (`prefix/...`), as folders nest.
pub fn key_within(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
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

fn parse_prefix(prefix: &str, shown: &str) -> Result<Option<Path>> {
    if prefix.is_empty() {
        return Ok(None);
    }
    Path::parse(prefix)
        .map(Some)
        .map_err(|e| StorageError::InvalidConfig {
            store: shown.to_string(),
            detail: format!("invalid prefix {prefix:?}: {e}"),
        })
}

fn parse_sas(s: &str) -> std::result::Result<Vec<(String, String)>, &'static str> {
    let pairs: Vec<(String, String)> = s
        .trim_start_matches('?')
        .split('&')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    if pairs.iter().any(|(k, _)| k == "sig") {
        Ok(pairs)
    } else {
        Err("AZURE_STORAGE_SAS_TOKEN does not look like a SAS token (no sig=); copy the whole query string from the portal")
    }
}

/// A local store URL with its links resolved as far as the path exists (the rest is
/// appended as written), so overlap checks compare where data really goes. Other URLs
/// come back unchanged.
pub fn resolve_local(url: &StoreUrl) -> StoreUrl {
    let StoreUrl::Local { path } = url else {
        return url.clone();
    };
    let path = absolute(path);
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return StoreUrl::Local { path: out };
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return StoreUrl::Local { path },
        }
    }
}

fn absolute(path: &FsPath) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// `memory://NAME` stores live for the whole process so that two opens of the same name
/// see the same objects (tests copy between them).
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<std::collections::HashMap<String, Arc<InMemory>>>> =
        OnceLock::new();
    let map = STORES.get_or_init(Default::default);
    let mut map = match map.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_signatures() {
        let t = "error sending request for url (http://h/c/k?sv=1&sig=abc%2Fdef&se=2)";
        let s = scrub_query_secrets(t);
        assert!(!s.contains("abc"), "{s}");
        assert!(s.contains("sig=***&se=2"), "{s}");
    }
}
