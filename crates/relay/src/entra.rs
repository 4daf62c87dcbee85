//! Microsoft Entra tokens for `logs` targets without a `key`: the OAuth 2.0 client
//! credentials flow with the environment the Azure SDKs read (`AZURE_TENANT_ID`,
//! `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_AUTHORITY_HOST`), for the Logs
//! Ingestion scope. A token is kept until five minutes before it expires, and dropped
//! when the target refuses it (401), so a rotated or revoked one is replaced at once.

use std::time::{Duration, Instant};

/// The scope the Logs Ingestion API takes tokens for.
const SCOPE: &str = "https://monitor.azure.com//.default";
/// A token this close to its expiry is replaced before use.
const EARLY: Duration = Duration::from_secs(300);

/// Where tokens come from.
#[derive(Clone)]
pub(crate) struct Credentials {
    authority: String,
    tenant: String,
    client_id: String,
    secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("authority", &self.authority)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("secret", &"***")
            .finish()
    }
}

impl Credentials {
    /// From the environment; `Err` names what is missing.
    pub(crate) fn from_env() -> Result<Self, String> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let missing: Vec<&str> = ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"]
            .into_iter()
            .filter(|k| get(k).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{} not set: export AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (an app registration allowed to publish to the data collection rule), or give the target a key",
                missing.join(", ")
            ));
        }
        Ok(Self {
            authority: get("AZURE_AUTHORITY_HOST")
                .unwrap_or_else(|| "https://login.microsoftonline.com".into())
                .trim_end_matches('/')
                .to_string(),
            tenant: get("AZURE_TENANT_ID").unwrap_or_default(),
            client_id: get("AZURE_CLIENT_ID").unwrap_or_default(),
            secret: get("AZURE_CLIENT_SECRET").unwrap_or_default(),
        })
    }
}

/// A token and when to stop using it.
#[derive(Default)]
pub(crate) struct Cache {
    token: Option<(String, Instant)>,
}

impl Cache {
    /// A token good for at least five more minutes, fetched when needed.
    pub(crate) async fn token(
        &mut self,
        http: &reqwest::Client,
        c: &Credentials,
        timeout: Duration,
    ) -> Result<String, String> {
        if let Some((t, until)) = &self.token {
            if Instant::now() + EARLY < *until {
                return Ok(t.clone());
            }
        }
        let url = format!("{}/{}/oauth2/v2.0/token", c.authority, c.tenant);
        let enc = |v: &str| {
            percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let body = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}&scope={}",
            enc(&c.client_id),
            enc(&c.secret),
            enc(SCOPE)
        );
        let resp = http
            .post(&url)
            .timeout(timeout)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| format!("cannot reach Microsoft Entra at {url}: {}", e.without_url()))?;
        let status = resp.status().as_u16();
        let raw = resp.bytes().await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
        let (Some(token), 200) = (v["access_token"].as_str(), status) else {
            // Entra's error codes name the cause (AADSTS7000215: a wrong secret).
            return Err(format!(
                "Microsoft Entra refused a token for client {} in tenant {} (HTTP {status}): {} {}",
                c.client_id,
                c.tenant,
                v["error"].as_str().unwrap_or_default(),
                v["error_description"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
            ));
        };
        let life = v["expires_in"]
            .as_u64()
            .or_else(|| v["expires_in"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(3599);
        self.token = Some((
            token.to_string(),
            Instant::now() + Duration::from_secs(life),
        ));
        Ok(token.to_string())
    }

    /// Forgets the token (the target refused it).
    pub(crate) fn drop_token(&mut self) {
        self.token = None;
    }
}
