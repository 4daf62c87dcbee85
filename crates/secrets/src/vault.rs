//! One interface over the three vault kinds, and what they share: the HTTP client, the
//! reading of an answer into [`SecretsError`], retries with backoff (honouring
//! `Retry-After`).

use std::future::Future;
use std::time::Duration;

use georep_core::{Vault, VaultUrl};

use crate::error::{Result, SecretsError};
use crate::model::{Attrs, Entry, Value, Version, VersionMeta};

/// Attempts per request before an error that may pass is given up on.
const ATTEMPTS: u32 = 6;
/// Each request's deadline.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

/// A secret's versions, oldest first, and the attributes the vault keeps per secret
/// rather than per version (Secrets Manager tags, KV v2 custom metadata): they belong
/// to the newest version.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    pub versions: Vec<VersionMeta>,
    pub secret_attrs: Option<Attrs>,
}

/// A vault of any kind, ready to use.
pub enum VaultClient {
    Kv(crate::kv::Kv),
    Sm(crate::sm::Sm),
    KeyVault(crate::keyvault::KeyVault),
}

/// What a write carries besides the value.
#[derive(Debug, Clone)]
pub struct WriteMeta<'a> {
    pub attrs: &'a Attrs,
    /// The version's place in the sequence georep carries (kept as a tag or label where
    /// the vault allows, so the order survives equal creation times).
    pub seq: u64,
    /// The source's name when the destination's differs.
    pub origin: Option<&'a str>,
    /// The destination's newest version id when the pass knows it (it wrote it; ""
    /// when the secret does not exist there), so KV v2 need not read it first.
    pub after: Option<&'a str>,
}

impl VaultClient {
    /// A client for `v`, its credentials taken from the topology or the environment.
    pub fn open(v: &Vault) -> Result<Self> {
        let http = Http::new(&v.name)?;
        Ok(match &v.url {
            VaultUrl::Kv { endpoint, mount } => {
                Self::Kv(crate::kv::Kv::new(http, v, endpoint, mount)?)
            }
            VaultUrl::SecretsManager { region } => Self::Sm(crate::sm::Sm::new(http, region)?),
            VaultUrl::KeyVault { endpoint } => {
                Self::KeyVault(crate::keyvault::KeyVault::new(http, endpoint)?)
            }
        })
    }

    /// The vault's name in the topology.
    pub fn name(&self) -> &str {
        &self.http().vault
    }

    fn http(&self) -> &Http {
        match self {
            Self::Kv(c) => &c.http,
            Self::Sm(c) => &c.http,
            Self::KeyVault(c) => &c.http,
        }
    }

    /// Checks that the vault answers and takes the credentials (exit 3 if not).
    pub async fn check(&self) -> Result<()> {
        retry(|| async {
            match self {
                Self::Kv(c) => c.check().await,
                Self::Sm(c) => c.check().await,
                Self::KeyVault(c) => c.check().await,
            }
        })
        .await
    }

    /// Every live secret (deleted ones left out) with its fingerprint.
    pub async fn list(&self) -> Result<Vec<Entry>> {
        retry(|| async {
            match self {
                Self::Kv(c) => c.list().await,
                Self::Sm(c) => c.list().await,
                Self::KeyVault(c) => c.list().await,
            }
        })
        .await
    }

    /// One secret's listing entry (its fingerprint now); `None` when it is not there.
    pub async fn entry(&self, name: &str) -> Result<Option<Entry>> {
        let got = retry(|| async {
            match self {
                Self::Kv(c) => c.entry(name).await,
                Self::Sm(c) => c.entry(name).await,
                Self::KeyVault(c) => c.entry(name).await,
            }
        })
        .await;
        match got {
            Err(SecretsError::NotFound { .. }) => Ok(None),
            other => other,
        }
    }

    /// What cannot be exported at all (Key Vault keys): names with the reason.
    pub async fn unexportable(&self) -> Result<Vec<(String, String)>> {
        match self {
            Self::KeyVault(c) => retry(|| c.keys()).await,
            _ => Ok(Vec::new()),
        }
    }

    /// A secret's versions, oldest first; `NotFound` when it has none.
    pub async fn versions(&self, name: &str) -> Result<Versions> {
        retry(|| async {
            match self {
                Self::Kv(c) => c.versions(name).await,
                Self::Sm(c) => c.versions(name).await,
                Self::KeyVault(c) => c.versions(name).await,
            }
        })
        .await
    }

    /// One version with its value.
    pub async fn read(&self, name: &str, id: &str) -> Result<Version> {
        retry(|| async {
            match self {
                Self::Kv(c) => c.read(name, id).await,
                Self::Sm(c) => c.read(name, id).await,
                Self::KeyVault(c) => c.read(name, id).await,
            }
        })
        .await
    }

    /// Writes a new newest version; returns its id. Each kind makes a retried write
    /// land once: KV v2 by check-and-set, Secrets Manager by a request token, Key Vault
    /// by looking for the version (its sequence tag and value) before trying again.
    pub async fn write(&self, name: &str, value: &Value, meta: &WriteMeta<'_>) -> Result<String> {
        match self {
            Self::Kv(c) => c.write(name, value, meta).await,
            Self::Sm(c) => {
                let token = request_token();
                retry(|| c.write(name, value, meta, &token)).await
            }
            Self::KeyVault(c) => c.write_once(name, value, meta).await,
        }
    }

    /// Sets the attributes of version `id` (the newest), without a new version.
    pub async fn set_attrs(&self, name: &str, id: &str, meta: &WriteMeta<'_>) -> Result<()> {
        retry(|| async {
            match self {
                Self::Kv(c) => c.set_attrs(name, meta).await,
                Self::Sm(c) => c.set_attrs(name, meta).await,
                Self::KeyVault(c) => c.set_attrs(name, id, meta).await,
            }
        })
        .await
    }

    /// Keeps only the `keep` newest versions findable where the vault would otherwise
    /// keep them all or prune them its own way (Secrets Manager staging labels).
    pub async fn trim(&self, name: &str, keep: &[(u64, String)]) -> Result<()> {
        match self {
            Self::Sm(c) => retry(|| c.trim(name, keep)).await,
            _ => Ok(()),
        }
    }

    /// `deletes = "disable"`: the secret stays, unusable (see `SecretDeletes`).
    pub async fn disable(&self, name: &str) -> Result<()> {
        retry(|| async {
            match self {
                Self::Kv(c) => c.disable(name).await,
                Self::Sm(c) => c.disable(name).await,
                Self::KeyVault(c) => c.disable(name).await,
            }
        })
        .await
    }

    /// `deletes = "propagate"`: deleted, recoverably where the vault allows it.
    pub async fn delete(&self, name: &str) -> Result<()> {
        retry(|| async {
            match self {
                Self::Kv(c) => c.delete(name).await,
                Self::Sm(c) => c.delete(name).await,
                Self::KeyVault(c) => c.delete(name).await,
            }
        })
        .await
    }
}

/// 32 hex characters from the system's random source.
pub(crate) fn request_token() -> String {
    let a: u128 = rand::random();
    format!("{a:032x}")
}

/// Runs `f` until it succeeds, fails for good, or `ATTEMPTS` are spent; waits with
/// exponential backoff and jitter, or as long as the vault asked.
pub(crate) async fn retry<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if e.is_retryable() && attempt + 1 < ATTEMPTS => {
                let backoff =
                    Duration::from_millis(200 * 2u64.pow(attempt)).min(Duration::from_secs(10));
                let wait = match &e {
                    SecretsError::Throttled {
                        retry_after: Some(d),
                        ..
                    } => (*d).min(Duration::from_secs(60)),
                    _ => backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0),
                };
                tracing::debug!(error = %e, ?wait, attempt, "retrying a vault request");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The HTTP client one vault uses, and its name for messages.
pub(crate) struct Http {
    pub(crate) client: reqwest::Client,
    pub(crate) vault: String,
}

/// An answer: status, `Retry-After`, body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: bytes::Bytes,
}

impl Answer {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

impl Http {
    pub(crate) fn new(vault: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| SecretsError::Config(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            client,
            vault: vault.to_string(),
        })
    }

    /// Sends; a request that never got an answer is `Unreachable` (the URL left out,
    /// as it may name a secret).
    pub(crate) async fn send(&self, rb: reqwest::RequestBuilder, what: &str) -> Result<Answer> {
        let resp = rb.send().await.map_err(|e| SecretsError::Unreachable {
            vault: self.vault.clone(),
            detail: format!("{what}: {}", describe(&e)),
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.bytes().await.map_err(|e| SecretsError::Unreachable {
            vault: self.vault.clone(),
            detail: format!("{what}: the answer broke off: {}", describe(&e)),
        })?;
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    /// The error for an answer that is not a success, classed by status; `detail` is
    /// the vault's own message (never a value: vaults do not echo them).
    pub(crate) fn fail(&self, a: &Answer, what: &str, detail: &str) -> SecretsError {
        let vault = self.vault.clone();
        let detail = format!("{what}: HTTP {}: {}", a.status, one_line(detail));
        match a.status {
            401 | 403 => SecretsError::Auth { vault, detail },
            404 => SecretsError::NotFound { vault, detail },
            429 => SecretsError::Throttled {
                vault,
                detail,
                retry_after: a.retry_after,
            },
            500..=599 => SecretsError::Vault { vault, detail },
            _ => SecretsError::Refused { vault, detail },
        }
    }
}

/// A reqwest error without its URL, with its cause chain.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The first line of a vault's message, bounded.
pub(crate) fn one_line(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars().take(300).collect()
}

/// `name` percent-encoded as one path segment per `/`-separated part.
pub(crate) fn path_escape(name: &str) -> String {
    const SEG: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    name.split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, SEG).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// A JSON request body (reqwest's `json` feature is not built).
pub(crate) trait JsonBody {
    fn json_body(self, v: &serde_json::Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &serde_json::Value) -> Self {
        self.header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(v).unwrap_or_default())
    }
}
