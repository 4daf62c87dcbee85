//! Azure Key Vault's secrets over its REST API (api-version 7.5) with Entra bearer
//! tokens. Attributes and tags are per version; versions are ordered by the
//! `georep-seq` tag georep writes, then creation time (one-second resolution). A name
//! deleted but recoverable (soft delete) is recovered before it is written again.
//! Keys cannot be exported: they are listed so the sync can name each one.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::error::{Result, SecretsError};
use crate::model::{
    user_tags, Attrs, Entry, Shape, Value, Version, VersionMeta, TAG_NAME, TAG_SEQ, TAG_SHAPE,
};
use crate::vault::{path_escape, Answer, Http, JsonBody, Versions, WriteMeta};
use georep_http::entra::{Source, Tokens};

const API: &str = "api-version=7.5";

pub struct KeyVault {
    pub(crate) http: Http,
    endpoint: String,
    tokens: Tokens,
}

impl KeyVault {
    pub(crate) fn new(http: Http, endpoint: &str) -> Result<Self> {
        let source = Source::from_env()
            .map_err(|e| SecretsError::Config(format!("vault '{}': {e}", http.vault)))?;
        Ok(Self {
            http,
            endpoint: endpoint.to_string(),
            tokens: Tokens::new(source, resource_for(endpoint)),
        })
    }

    /// One request with a token; a refused token is dropped and the request tried once
    /// more with a new one.
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Json>,
        what: &str,
    ) -> Result<Answer> {
        for attempt in 0..2 {
            let token = self
                .tokens
                .get(&self.http.client, crate::vault::TIMEOUT)
                .await
                .map_err(|detail| SecretsError::Auth {
                    vault: self.http.vault.clone(),
                    detail,
                })?;
            let mut rb = self
                .http
                .client
                .request(method.clone(), url)
                .bearer_auth(token);
            if let Some(b) = body {
                rb = rb.json_body(b);
            }
            let a = self.http.send(rb, what).await?;
            if (200..300).contains(&a.status) {
                return Ok(a);
            }
            if a.status == 401 && attempt == 0 {
                self.tokens.drop_token().await;
                continue;
            }
            let v = a.json();
            let code = v["error"]["code"].as_str().unwrap_or_default();
            let inner = v["error"]["innererror"]["code"]
                .as_str()
                .unwrap_or_default();
            let msg = v["error"]["message"].as_str().unwrap_or_default();
            let detail = if inner.is_empty() {
                format!("{code}: {msg}")
            } else {
                format!("{code} ({inner}): {msg}")
            };
            if a.status == 403 && inner == "SecretDisabled" {
                return Err(SecretsError::Refused {
                    vault: self.http.vault.clone(),
                    detail: format!("{what}: the version is disabled"),
                });
            }
            if a.status == 409 && inner == "ObjectIsBeingRecovered" {
                return Err(SecretsError::Throttled {
                    vault: self.http.vault.clone(),
                    detail: format!("{what}: {detail}"),
                    retry_after: Some(Duration::from_secs(1)),
                });
            }
            return Err(self.http.fail(&a, what, &detail));
        }
        Err(SecretsError::Auth {
            vault: self.http.vault.clone(),
            detail: format!("{what}: a fresh token was refused too"),
        })
    }

    fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{}/{path}{sep}{API}", self.endpoint)
    }

    /// Pages of a list, following `nextLink` only while it stays on this vault (the
    /// token goes with each request).
    async fn pages(&self, first: &str, what: &str) -> Result<Vec<Json>> {
        let mut out = Vec::new();
        let mut url = self.url(first);
        loop {
            let a = self.call(reqwest::Method::GET, &url, None, what).await?;
            let v = a.json();
            out.extend(v["value"].as_array().cloned().unwrap_or_default());
            match v["nextLink"].as_str() {
                Some(next) if !next.is_empty() => {
                    if !same_host(next, &self.endpoint) {
                        return Err(SecretsError::Vault {
                            vault: self.http.vault.clone(),
                            detail: format!("{what}: the next page is on another host; refused"),
                        });
                    }
                    url = next.to_string();
                }
                _ => return Ok(out),
            }
        }
    }

    pub(crate) async fn check(&self) -> Result<()> {
        let url = self.url("secrets?maxresults=1");
        self.call(reqwest::Method::GET, &url, None, "list secrets")
            .await
            .map(|_| ())
    }

    pub(crate) async fn list(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for item in self.pages("secrets?maxresults=25", "list secrets").await? {
            let Some(name) = name_of(&item["id"]) else {
                continue;
            };
            let tags = tag_map(&item["tags"]);
            out.push(Entry {
                name,
                fingerprint: format!(
                    "{}:{}",
                    item["attributes"]["updated"], item["attributes"]["enabled"]
                ),
                origin: tags.get(TAG_NAME).cloned(),
                coarse: updated(&item),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub(crate) async fn entry(&self, name: &str) -> Result<Option<Entry>> {
        let url = self.url(&format!("secrets/{}/", path_escape(name)));
        match self
            .call(reqwest::Method::GET, &url, None, &format!("read '{name}'"))
            .await
        {
            Ok(a) => {
                let item = a.json();
                let tags = tag_map(&item["tags"]);
                Ok(Some(Entry {
                    name: name.to_string(),
                    fingerprint: format!(
                        "{}:{}",
                        item["attributes"]["updated"], item["attributes"]["enabled"]
                    ),
                    origin: tags.get(TAG_NAME).cloned(),
                    coarse: updated(&item),
                }))
            }
            // Its newest version is disabled: an empty fingerprint has it checked again.
            Err(SecretsError::Refused { .. }) => Ok(Some(Entry {
                name: name.to_string(),
                fingerprint: String::new(),
                origin: None,
                coarse: None,
            })),
            Err(e) => Err(e),
        }
    }

    /// Keys in the vault: never exportable as values.
    pub(crate) async fn keys(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for item in self.pages("keys?maxresults=25", "list keys").await? {
            let Some(name) = name_of(&item["kid"]) else {
                continue;
            };
            // A certificate's key: its secret (PFX/PEM) travels as a secret.
            if item["managed"].as_bool() == Some(true) {
                continue;
            }
            let hsm = item["kty"].as_str().is_some_and(|k| k.ends_with("-HSM"));
            out.push((
                name,
                format!(
                    "a Key Vault {}key cannot be exported; create a key in the destination region and re-wrap the data it protects (or back it up and restore it within the same geography)",
                    if hsm { "HSM-backed " } else { "" }
                ),
            ));
        }
        Ok(out)
    }

    pub(crate) async fn versions(&self, name: &str) -> Result<Versions> {
        let items = self
            .pages(
                &format!("secrets/{}/versions?maxresults=25", path_escape(name)),
                &format!("list the versions of '{name}'"),
            )
            .await?;
        let mut v: Vec<((u64, i64, usize), VersionMeta)> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let id = item["id"].as_str()?.rsplit('/').next()?.to_string();
                let created = item["attributes"]["created"].as_i64().unwrap_or(0);
                let seq = tag_map(&item["tags"])
                    .get(TAG_SEQ)
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                Some((
                    (seq, created, i),
                    VersionMeta {
                        id,
                        created: DateTime::<Utc>::from_timestamp(created, 0),
                        readable: item["attributes"]["enabled"].as_bool().unwrap_or(true),
                    },
                ))
            })
            .collect();
        if v.is_empty() {
            return Err(SecretsError::NotFound {
                vault: self.http.vault.clone(),
                detail: format!("'{name}' has no version"),
            });
        }
        // Versions georep wrote carry their sequence; others go by time (one-second
        // resolution), a foreign one after georep's in the same second.
        v.sort_by_key(|(k, _)| (k.1, k.0 == 0, k.0, k.2));
        if v.iter().all(|(k, _)| k.0 > 0) {
            v.sort_by_key(|(k, _)| (k.0, k.1, k.2));
        }
        // The vault itself says which version is current.
        let url = self.url(&format!("secrets/{}/", path_escape(name)));
        if let Ok(a) = self
            .call(reqwest::Method::GET, &url, None, &format!("read '{name}'"))
            .await
        {
            let current = a.json()["id"]
                .as_str()
                .and_then(|id| id.rsplit('/').next())
                .map(str::to_string);
            if let Some(pos) = v.iter().position(|(_, m)| Some(&m.id) == current.as_ref()) {
                let cur = v.remove(pos);
                v.push(cur);
            }
        }
        Ok(Versions {
            versions: v.into_iter().map(|(_, m)| m).collect(),
            secret_attrs: None,
        })
    }

    pub(crate) async fn read(&self, name: &str, id: &str) -> Result<Version> {
        let url = self.url(&format!("secrets/{}/{id}", path_escape(name)));
        let a = self
            .call(
                reqwest::Method::GET,
                &url,
                None,
                &format!("read '{name}' version {id}"),
            )
            .await?;
        let v = a.json();
        let text = v["value"].as_str().ok_or_else(|| SecretsError::Vault {
            vault: self.http.vault.clone(),
            detail: format!("'{name}' version {id} has no value"),
        })?;
        let tags = tag_map(&v["tags"]);
        let shape = tags
            .get(TAG_SHAPE)
            .and_then(|s| Shape::parse(s))
            .unwrap_or_default();
        let value = match shape {
            Shape::Binary => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| SecretsError::Vault {
                        vault: self.http.vault.clone(),
                        detail: format!("'{name}' version {id} is marked binary but is not base64"),
                    })?
            }
            _ => text.as_bytes().to_vec(),
        };
        let at = |k: &str| {
            v["attributes"][k]
                .as_i64()
                .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
        };
        Ok(Version {
            id: id.to_string(),
            value: Value::new(value),
            attrs: Attrs {
                enabled: v["attributes"]["enabled"].as_bool().unwrap_or(true),
                not_before: at("nbf"),
                expires: at("exp"),
                content_type: v["contentType"].as_str().map(str::to_string),
                tags: user_tags(&tags),
                shape,
            },
            created: at("created"),
        })
    }

    fn body(&self, meta: &WriteMeta<'_>) -> Json {
        let a = meta.attrs;
        let mut tags = a.to_tags(true);
        tags.insert(TAG_SEQ.into(), meta.seq.to_string());
        if let Some(o) = meta.origin {
            tags.insert(TAG_NAME.into(), o.to_string());
        }
        let mut attributes = json!({ "enabled": a.enabled });
        if let Some(n) = a.not_before {
            attributes["nbf"] = json!(n.timestamp());
        }
        if let Some(e) = a.expires {
            attributes["exp"] = json!(e.timestamp());
        }
        let mut b = json!({ "attributes": attributes, "tags": tags });
        if let Some(c) = &a.content_type {
            b["contentType"] = json!(c);
        }
        b
    }

    pub(crate) async fn write(
        &self,
        name: &str,
        value: &Value,
        meta: &WriteMeta<'_>,
    ) -> Result<String> {
        let text = match (meta.attrs.shape, value.as_text()) {
            (Shape::Binary, _) | (_, None) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(value.expose())
            }
            (_, Some(s)) => s.to_string(),
        };
        // Bytes that are not text travel as base64, marked so they come back as bytes.
        let binary;
        let mut m = meta.clone();
        if value.as_text().is_none() && meta.attrs.shape != Shape::Binary {
            binary = Attrs {
                shape: Shape::Binary,
                ..meta.attrs.clone()
            };
            m.attrs = &binary;
        }
        let mut body = self.body(&m);
        body["value"] = json!(text);
        let url = self.url(&format!("secrets/{}", path_escape(name)));
        let what = format!("write '{name}'");
        let a = match self
            .call(reqwest::Method::PUT, &url, Some(&body), &what)
            .await
        {
            Err(SecretsError::Refused { detail, .. })
                if detail.contains("ObjectIsDeletedButRecoverable") =>
            {
                self.recover(name).await?;
                self.call(reqwest::Method::PUT, &url, Some(&body), &what)
                    .await?
            }
            other => other?,
        };
        a.json()["id"]
            .as_str()
            .and_then(|id| id.rsplit('/').next())
            .map(str::to_string)
            .ok_or_else(|| SecretsError::Vault {
                vault: self.http.vault.clone(),
                detail: format!("writing '{name}' gave no version id"),
            })
    }

    /// [`Self::write`], retried; before each retry the newest version is checked, since
    /// a PUT whose answer was lost may have made it.
    pub(crate) async fn write_once(
        &self,
        name: &str,
        value: &Value,
        meta: &WriteMeta<'_>,
    ) -> Result<String> {
        let mut attempt = 0u32;
        loop {
            match self.write(name, value, meta).await {
                Ok(id) => return Ok(id),
                Err(e) if e.is_retryable() && attempt < 5 => {
                    if let Some(id) = self.landed(name, value, meta.seq).await {
                        return Ok(id);
                    }
                    let wait = match &e {
                        SecretsError::Throttled {
                            retry_after: Some(d),
                            ..
                        } => (*d).min(Duration::from_secs(60)),
                        _ => Duration::from_millis(200 << attempt),
                    };
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The newest version's id when it carries sequence `seq` and this value.
    async fn landed(&self, name: &str, value: &Value, seq: u64) -> Option<String> {
        let url = self.url(&format!("secrets/{}/", path_escape(name)));
        let a = self
            .call(reqwest::Method::GET, &url, None, &format!("read '{name}'"))
            .await
            .ok()?;
        let v = a.json();
        let tags = tag_map(&v["tags"]);
        let same_seq = tags.get(TAG_SEQ).is_some_and(|s| *s == seq.to_string());
        let text = v["value"].as_str()?;
        let same_value = match value.as_text() {
            Some(t) if tags.get(TAG_SHAPE).is_none_or(|s| s != "binary") => t == text,
            _ => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(value.expose()) == text
            }
        };
        if !(same_seq && same_value) {
            return None;
        }
        v["id"].as_str()?.rsplit('/').next().map(str::to_string)
    }

    /// Recovers a soft-deleted name and waits until it can be written.
    async fn recover(&self, name: &str) -> Result<()> {
        let url = self.url(&format!("deletedsecrets/{}/recover", path_escape(name)));
        self.call(
            reqwest::Method::POST,
            &url,
            None,
            &format!("recover the deleted '{name}'"),
        )
        .await?;
        let check = self.url(&format!("secrets/{}/", path_escape(name)));
        for _ in 0..60 {
            match self
                .call(reqwest::Method::GET, &check, None, "wait for the recovery")
                .await
            {
                Ok(_) => return Ok(()),
                Err(SecretsError::NotFound { .. }) => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(SecretsError::Refused { detail, .. }) if detail.contains("disabled") => {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
        }
        Err(SecretsError::Vault {
            vault: self.http.vault.clone(),
            detail: format!("'{name}' was still being recovered after 30 s"),
        })
    }

    pub(crate) async fn set_attrs(&self, name: &str, id: &str, meta: &WriteMeta<'_>) -> Result<()> {
        let url = self.url(&format!("secrets/{}/{id}", path_escape(name)));
        self.call(
            reqwest::Method::PATCH,
            &url,
            Some(&self.body(meta)),
            &format!("update '{name}'"),
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn disable(&self, name: &str) -> Result<()> {
        let vs = self.versions(name).await?;
        let Some(newest) = vs.versions.last() else {
            return Ok(());
        };
        let url = self.url(&format!("secrets/{}/{}", path_escape(name), newest.id));
        self.call(
            reqwest::Method::PATCH,
            &url,
            Some(&json!({"attributes": {"enabled": false}})),
            &format!("disable '{name}'"),
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn delete(&self, name: &str) -> Result<()> {
        let url = self.url(&format!("secrets/{}", path_escape(name)));
        match self
            .call(
                reqwest::Method::DELETE,
                &url,
                None,
                &format!("delete '{name}'"),
            )
            .await
        {
            Ok(_) | Err(SecretsError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A secret's `attributes.updated` (whole seconds).
fn updated(item: &Json) -> Option<DateTime<Utc>> {
    item["attributes"]["updated"]
        .as_i64()
        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
}

/// The token audience for a vault: each cloud has its own.
fn resource_for(endpoint: &str) -> &'static str {
    let host = endpoint.split("://").nth(1).unwrap_or_default();
    let host = host.split([':', '/']).next().unwrap_or_default();
    if host.ends_with(".vault.azure.cn") {
        "https://vault.azure.cn"
    } else if host.ends_with(".vault.usgovcloudapi.net") {
        "https://vault.usgovcloudapi.net"
    } else if host.ends_with(".vault.microsoftazure.de") {
        "https://vault.microsoftazure.de"
    } else {
        "https://vault.azure.net"
    }
}

/// `https://V.vault.azure.net/secrets/NAME[/VERSION]` → NAME.
fn name_of(id: &Json) -> Option<String> {
    let id = id.as_str()?;
    let rest = id
        .split_once("/secrets/")
        .or_else(|| id.split_once("/keys/"))?
        .1;
    Some(rest.split('/').next()?.to_string())
}

fn tag_map(v: &Json) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `link` is on the same host as `endpoint` (an explicit :443 ignored).
fn same_host(link: &str, endpoint: &str) -> bool {
    match (url::Url::parse(link), url::Url::parse(endpoint)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_next_links() {
        assert_eq!(
            name_of(&json!("https://v.vault.azure.net/secrets/db-pw/0123abcd")),
            Some("db-pw".into())
        );
        assert_eq!(
            name_of(&json!("https://v.vault.azure.net/keys/k1")),
            Some("k1".into())
        );
        assert!(same_host(
            "https://v.vault.azure.net:443/secrets?$skiptoken=x",
            "https://v.vault.azure.net"
        ));
        assert!(!same_host(
            "https://evil.example/secrets",
            "https://v.vault.azure.net"
        ));
    }
}
