//! Opening a store from a [`StoreUrl`]: each backend built with credentials from the
//! environment (never from the URL), the secrets to scrub remembered, and local paths
//! made absolute or resolved through their links.

use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use georep_core::StoreUrl;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::{Backend, Store};
use crate::error::{Result, StorageError};
use crate::lenient::Lenient;
use crate::local;

/// The Azurite/Azure Storage Emulator key: public, documented, and only ever used for an
/// explicit emulator endpoint with the emulator's account name.
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

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
