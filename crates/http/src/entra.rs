//! Microsoft Entra tokens for the Azure APIs georep calls (Key Vault, Logs Ingestion),
//! from the environment the Azure SDKs read:
//! client credentials (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`,
//! `AZURE_AUTHORITY_HOST`), else a managed identity — App Service, Functions and
//! Container Apps (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`), or a VM's instance metadata
//! service when `AZURE_USE_IMDS=1` says the machine has one (it is never tried
//! unasked: off Azure it only times out). A token is kept until five minutes before it
//! expires, and dropped when the API refuses it.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// A token this close to its expiry is replaced before use.
const EARLY: Duration = Duration::from_secs(300);
const IMDS: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// Where tokens come from.
#[derive(Clone)]
pub enum Source {
    ClientSecret {
        authority: String,
        tenant: String,
        client_id: String,
        secret: String,
    },
    /// `IDENTITY_ENDPOINT` (App Service and its kin).
    AppService {
        endpoint: String,
        header: String,
        client_id: Option<String>,
    },
    /// The instance metadata service.
    Imds { client_id: Option<String> },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientSecret {
                tenant, client_id, ..
            } => write!(f, "client {client_id} in tenant {tenant}"),
            Self::AppService { .. } => f.write_str("the managed identity (IDENTITY_ENDPOINT)"),
            Self::Imds { .. } => f.write_str("the managed identity (instance metadata)"),
        }
    }
}

impl Source {
    /// From the environment; `Err` says what to set.
    pub fn from_env() -> Result<Self, String> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(tenant), Some(client_id), Some(secret)) = (
            get("AZURE_TENANT_ID"),
            get("AZURE_CLIENT_ID"),
            get("AZURE_CLIENT_SECRET"),
        ) {
            return Ok(Self::ClientSecret {
                authority: get("AZURE_AUTHORITY_HOST")
                    .unwrap_or_else(|| "https://login.microsoftonline.com".into())
                    .trim_end_matches('/')
                    .to_string(),
                tenant,
                client_id,
                secret,
            });
        }
        if let (Some(endpoint), Some(header)) = (get("IDENTITY_ENDPOINT"), get("IDENTITY_HEADER")) {
            return Ok(Self::AppService {
                endpoint,
                header,
                client_id: get("AZURE_CLIENT_ID"),
            });
        }
        if get("AZURE_USE_IMDS").is_some_and(|v| v == "1" || v == "true") {
            return Ok(Self::Imds {
                client_id: get("AZURE_CLIENT_ID"),
            });
        }
        Err("no Azure credentials: export AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (an app registration with access to the resource), or run with a managed identity (IDENTITY_ENDPOINT, or AZURE_USE_IMDS=1 on a VM)".into())
    }
}

/// Tokens for one resource, cached.
pub struct Tokens {
    source: Source,
    /// `https://vault.azure.net` (its scope adds `/.default`; Azure Monitor's is
    /// `https://monitor.azure.com/`, hence the double slash in its scope).
    resource: String,
    cached: Mutex<Option<(String, Instant)>>,
}

impl Tokens {
    pub fn new(source: Source, resource: &str) -> Self {
        Self {
            source,
            resource: resource.to_string(),
            cached: Mutex::new(None),
        }
    }

    /// A token good for at least five more minutes; `timeout` bounds the fetch.
    pub async fn get(&self, http: &reqwest::Client, timeout: Duration) -> Result<String, String> {
        let mut c = self.cached.lock().await;
        if let Some((t, until)) = c.as_ref() {
            if Instant::now() + EARLY < *until {
                return Ok(t.clone());
            }
        }
        let (token, life) = self.fetch(http, timeout).await?;
        *c = Some((token.clone(), Instant::now() + life));
        Ok(token)
    }

    /// Forgets the token (the vault refused it).
    pub async fn drop_token(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(String, Duration), String> {
        let enc = |v: &str| {
            percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let (rb, from) = match &self.source {
            Source::ClientSecret {
                authority,
                tenant,
                client_id,
                secret,
            } => {
                let url = format!("{authority}/{tenant}/oauth2/v2.0/token");
                let body = format!(
                    "grant_type=client_credentials&client_id={}&client_secret={}&scope={}",
                    enc(client_id),
                    enc(secret),
                    enc(&format!("{}/.default", self.resource))
                );
                (
                    http.post(&url)
                        .header(
                            reqwest::header::CONTENT_TYPE,
                            "application/x-www-form-urlencoded",
                        )
                        .body(body),
                    format!("Microsoft Entra ({authority})"),
                )
            }
            Source::AppService {
                endpoint,
                header,
                client_id,
            } => {
                let mut url = format!(
                    "{endpoint}?api-version=2019-08-01&resource={}",
                    enc(&self.resource)
                );
                if let Some(c) = client_id {
                    url.push_str(&format!("&client_id={}", enc(c)));
                }
                (
                    http.get(url).header("X-IDENTITY-HEADER", header),
                    "the managed identity endpoint (IDENTITY_ENDPOINT)".to_string(),
                )
            }
            Source::Imds { client_id } => {
                let mut url = format!(
                    "{IMDS}?api-version=2018-02-01&resource={}",
                    enc(&self.resource)
                );
                if let Some(c) = client_id {
                    url.push_str(&format!("&client_id={}", enc(c)));
                }
                (
                    http.get(url).header("Metadata", "true"),
                    "the instance metadata service".to_string(),
                )
            }
        };
        let resp = rb
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("cannot reach {from} for a token: {}", e.without_url()))?;
        let status = resp.status().as_u16();
        let raw = resp.bytes().await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
        let (Some(token), 200) = (v["access_token"].as_str(), status) else {
            // Entra's codes name the cause (AADSTS7000215: a wrong secret).
            return Err(format!(
                "{from} refused a token for {:?} (HTTP {status}): {} {}",
                self.source,
                v["error"].as_str().unwrap_or_default(),
                v["error_description"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
            ));
        };
        let num = |k: &str| {
            v[k].as_u64()
                .or_else(|| v[k].as_str().and_then(|s| s.parse().ok()))
        };
        let life = match (num("expires_in"), num("expires_on")) {
            (Some(s), _) => s,
            (None, Some(on)) => on.saturating_sub(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            ),
            _ => 3599,
        };
        Ok((token.to_string(), Duration::from_secs(life)))
    }
}
