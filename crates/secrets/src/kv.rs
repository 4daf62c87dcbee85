//! HashiCorp Vault and OpenBao: a KV version 2 engine over its HTTP API. A value is the
//! version's data map: `{"value": "..."}` for text (binary as base64, marked), any
//! other map carried whole. Attributes live in the key's custom metadata (one set per
//! key, so they describe the newest version). Listing uses OpenBao's
//! `detailed-metadata` (one request per folder) where it exists, and one metadata read
//! per key on Vault.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value as Json};

use crate::error::{Result, SecretsError};
use crate::model::{Attrs, Entry, Shape, Value, Version, VersionMeta, TAG_NAME, TAG_SEQ};
use crate::vault::{path_escape, Answer, Http, JsonBody, Versions, WriteMeta};

/// Metadata reads at once when listing without `detailed-metadata`.
const PARALLEL: usize = 16;

pub struct Kv {
    pub(crate) http: Http,
    endpoint: String,
    mount: String,
    token: Token,
    namespace: Option<String>,
    /// 0 unknown, 1 `detailed-metadata` works, 2 it does not (Vault).
    detailed: AtomicU8,
}

enum Token {
    Fixed(String),
    /// Read at each use, so a renewed token (a Vault Agent sink) is picked up.
    File(PathBuf),
}

impl Kv {
    pub(crate) fn new(
        http: Http,
        v: &georep_core::Vault,
        endpoint: &str,
        mount: &str,
    ) -> Result<Self> {
        let token = match (&v.token, &v.token_file) {
            (Some(t), _) => Token::Fixed(t.clone()),
            (None, Some(p)) => Token::File(p.clone()),
            (None, None) => {
                let env = ["VAULT_TOKEN", "BAO_TOKEN"]
                    .iter()
                    .find_map(|k| std::env::var(k).ok().filter(|t| !t.is_empty()));
                match env {
                    Some(t) => Token::Fixed(t),
                    None => {
                        return Err(SecretsError::Config(format!(
                            "vault '{}': no token: give the vault token = \"${{NAME}}\" or token_file, or export VAULT_TOKEN (or BAO_TOKEN)",
                            v.name
                        )))
                    }
                }
            }
        };
        Ok(Self {
            http,
            endpoint: endpoint.to_string(),
            mount: mount.to_string(),
            token,
            namespace: v.namespace.clone(),
            detailed: AtomicU8::new(0),
        })
    }

    fn token(&self) -> Result<String> {
        match &self.token {
            Token::Fixed(t) => Ok(t.clone()),
            Token::File(p) => {
                let t = read_nofollow(p).map_err(|e| SecretsError::Auth {
                    vault: self.http.vault.clone(),
                    detail: format!("cannot read token_file {}: {e}", p.display()),
                })?;
                Ok(t.trim().to_string())
            }
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> Result<reqwest::RequestBuilder> {
        let url = format!("{}/v1/{}/{}", self.endpoint, self.mount, path);
        let mut rb = self
            .http
            .client
            .request(method, url)
            .header("X-Vault-Token", self.token()?);
        if let Some(ns) = &self.namespace {
            rb = rb.header("X-Vault-Namespace", ns);
        }
        Ok(rb)
    }

    async fn call(&self, rb: reqwest::RequestBuilder, what: &str) -> Result<Answer> {
        let a = self.http.send(rb, what).await?;
        if (200..300).contains(&a.status) {
            return Ok(a);
        }
        let v = a.json();
        let msg: Vec<&str> = v["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        // Vault's messages are multi-line ("1 error occurred:\n\t* unsupported path").
        let mut detail = msg
            .iter()
            .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("; ");
        if a.status == 403 {
            detail = format!("{detail} (the token is wrong, expired, or its policy does not allow this path on mount '{}')", self.mount);
        }
        if a.status == 503 {
            detail = format!("{detail} (sealed or in standby)");
        }
        Err(self.http.fail(&a, what, &detail))
    }

    pub(crate) async fn check(&self) -> Result<()> {
        let rb = self.req(reqwest::Method::GET, "metadata/?list=true")?;
        match self.call(rb, "list the mount").await {
            Ok(_) | Err(SecretsError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn list(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut folders = vec![String::new()];
        let mut plain: Vec<String> = Vec::new();
        while let Some(dir) = folders.pop() {
            let mode = self.detailed.load(Ordering::Relaxed);
            if mode != 2 {
                let rb = self.req(
                    reqwest::Method::GET,
                    &format!("detailed-metadata/{}?list=true", path_escape(&dir)),
                )?;
                match self.call(rb, "list").await {
                    Ok(a) => {
                        self.detailed.store(1, Ordering::Relaxed);
                        let v = a.json();
                        for k in keys(&v) {
                            let full = format!("{dir}{k}");
                            if k.ends_with('/') {
                                folders.push(full);
                            } else if let Some(e) = entry(&full, &v["data"]["key_info"][k]) {
                                out.push(e);
                            }
                        }
                        continue;
                    }
                    // Known to work here: an empty folder.
                    Err(SecretsError::NotFound { .. }) if mode == 1 => continue,
                    Err(e) if e.is_retryable() => return Err(e),
                    // Vault has no detailed-metadata (404 "unsupported path"), a policy
                    // may not allow it (403), or the mount is empty: list plainly.
                    Err(_) => self.detailed.store(2, Ordering::Relaxed),
                }
            }
            let rb = self.req(
                reqwest::Method::GET,
                &format!("metadata/{}?list=true", path_escape(&dir)),
            )?;
            match self.call(rb, "list").await {
                Ok(a) => {
                    for k in keys(&a.json()) {
                        let full = format!("{dir}{k}");
                        if k.ends_with('/') {
                            folders.push(full);
                        } else {
                            plain.push(full);
                        }
                    }
                }
                Err(SecretsError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let read: Vec<Option<Entry>> = futures::stream::iter(plain)
            .map(|name| async move {
                match self.metadata(&name).await {
                    Ok(m) => Ok(entry(&name, &m)),
                    Err(SecretsError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        out.extend(read.into_iter().flatten());
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn metadata(&self, name: &str) -> Result<Json> {
        let rb = self.req(
            reqwest::Method::GET,
            &format!("metadata/{}", path_escape(name)),
        )?;
        let a = self
            .call(rb, &format!("read the metadata of '{name}'"))
            .await?;
        Ok(a.json()["data"].clone())
    }

    pub(crate) async fn entry(&self, name: &str) -> Result<Option<Entry>> {
        Ok(entry(name, &self.metadata(name).await?))
    }

    pub(crate) async fn versions(&self, name: &str) -> Result<Versions> {
        let m = self.metadata(name).await?;
        let versions = live_versions(&m);
        if versions.is_empty() {
            return Err(SecretsError::NotFound {
                vault: self.http.vault.clone(),
                detail: format!("'{name}' has no live version"),
            });
        }
        Ok(Versions {
            versions,
            secret_attrs: Some(Attrs::from_tags(&custom(&m))),
        })
    }

    pub(crate) async fn read(&self, name: &str, id: &str) -> Result<Version> {
        let rb = self.req(
            reqwest::Method::GET,
            &format!("data/{}?version={}", path_escape(name), id),
        )?;
        let a = self
            .call(rb, &format!("read '{name}' version {id}"))
            .await?;
        let v = a.json();
        let data = &v["data"]["data"];
        let (value, shape) = from_map(data).ok_or_else(|| SecretsError::Vault {
            vault: self.http.vault.clone(),
            detail: format!("'{name}' version {id} has no data map"),
        })?;
        let created = time(&v["data"]["metadata"]["created_time"]);
        let mut attrs = Attrs::enabled();
        attrs.shape = shape;
        Ok(Version {
            id: id.to_string(),
            value,
            attrs,
            created,
        })
    }

    /// Writes with check-and-set on the version seen just before, so a retry whose
    /// first attempt landed (its answer lost) is recognised instead of adding a
    /// second version, and a concurrent writer is not overwritten unseen.
    pub(crate) async fn write(
        &self,
        name: &str,
        value: &Value,
        meta: &WriteMeta<'_>,
    ) -> Result<String> {
        let data = to_map(value, meta.attrs.shape).ok_or_else(|| {
            SecretsError::Config(format!(
                "'{name}': the value is marked as a map but is not a JSON object"
            ))
        })?;
        let hinted = meta.after.and_then(|a| {
            if a.is_empty() {
                Some(0)
            } else {
                a.parse::<u64>().ok()
            }
        });
        let mut current = match hinted {
            Some(c) => c,
            None => self.current_version(name).await?,
        };
        let mut body = json!({ "options": { "cas": current }, "data": data });
        let mut refetched = hinted.is_none();
        let mut attempt = 0u32;
        let version = loop {
            let rb = self
                .req(
                    reqwest::Method::POST,
                    &format!("data/{}", path_escape(name)),
                )?
                .json_body(&body);
            match self.call(rb, &format!("write '{name}'")).await {
                Ok(a) => {
                    break a.json()["data"]["version"].as_u64().ok_or_else(|| {
                        SecretsError::Vault {
                            vault: self.http.vault.clone(),
                            detail: format!("writing '{name}' gave no version number"),
                        }
                    })?
                }
                Err(SecretsError::Refused { detail, .. }) if detail.contains("check-and-set") => {
                    // An earlier attempt whose answer was lost landed: that version.
                    let next = (current + 1).to_string();
                    if let Ok(got) = crate::vault::retry(|| self.read(name, &next)).await {
                        if got.value == *value {
                            break current + 1;
                        }
                    }
                    // The pass's idea of the newest version was wrong (a key whose
                    // versions were all deleted keeps its numbers): read it once.
                    if !refetched {
                        refetched = true;
                        current = self.current_version(name).await?;
                        body["options"]["cas"] = json!(current);
                        continue;
                    }
                    return Err(SecretsError::Refused {
                        vault: self.http.vault.clone(),
                        detail: format!("'{name}' was written by someone else meanwhile (its version {next}); the next pass compares again"),
                    });
                }
                Err(e) if e.is_retryable() && attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        crate::vault::retry(|| self.set_attrs(name, meta)).await?;
        Ok(version.to_string())
    }

    /// The key's current version number (0 when it has none).
    async fn current_version(&self, name: &str) -> Result<u64> {
        match crate::vault::retry(|| self.metadata(name)).await {
            Ok(m) => Ok(m["current_version"].as_u64().unwrap_or(0)),
            Err(SecretsError::NotFound { .. }) => Ok(0),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn set_attrs(&self, name: &str, meta: &WriteMeta<'_>) -> Result<()> {
        let mut tags = meta.attrs.to_tags(false);
        tags.insert(TAG_SEQ.into(), meta.seq.to_string());
        if let Some(o) = meta.origin {
            tags.insert(TAG_NAME.into(), o.to_string());
        }
        // Custom metadata is replaced whole; keys georep no longer sets must go.
        let rb = self
            .req(
                reqwest::Method::POST,
                &format!("metadata/{}", path_escape(name)),
            )?
            .json_body(&json!({ "custom_metadata": tags }));
        self.call(rb, &format!("set the metadata of '{name}'"))
            .await
            .map(|_| ())
    }

    pub(crate) async fn disable(&self, name: &str) -> Result<()> {
        let rb = self.req(
            reqwest::Method::DELETE,
            &format!("data/{}", path_escape(name)),
        )?;
        self.call(rb, &format!("soft-delete the newest version of '{name}'"))
            .await
            .map(|_| ())
    }

    pub(crate) async fn delete(&self, name: &str) -> Result<()> {
        let m = self.metadata(name).await?;
        let ids: Vec<u64> = live_versions(&m)
            .iter()
            .filter_map(|v| v.id.parse().ok())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let rb = self
            .req(
                reqwest::Method::POST,
                &format!("delete/{}", path_escape(name)),
            )?
            .json_body(&json!({ "versions": ids }));
        self.call(rb, &format!("soft-delete the versions of '{name}'"))
            .await
            .map(|_| ())
    }
}

/// Reads a file the way georep reads secrets from disk: opened without following a
/// link (`O_NOFOLLOW`), and only if what was opened is a regular file.
pub fn read_nofollow(p: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(p)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                std::io::Error::other("it is a symbolic link, which georep does not follow")
            } else {
                e
            }
        })?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

fn keys(v: &Json) -> Vec<&str> {
    v["data"]["keys"]
        .as_array()
        .map(|k| k.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default()
}

fn time(v: &Json) -> Option<DateTime<Utc>> {
    v.as_str()
        .filter(|s| !s.is_empty())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn custom(m: &Json) -> BTreeMap<String, String> {
    m["custom_metadata"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Versions neither deleted nor destroyed, oldest first.
fn live_versions(m: &Json) -> Vec<VersionMeta> {
    let mut out: Vec<(u64, VersionMeta)> = m["versions"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| {
                    let n: u64 = k.parse().ok()?;
                    // `delete_version_after` gives live versions a future deletion
                    // time: only a time passed means deleted.
                    let deleted = time(&v["deletion_time"]).is_some_and(|t| t <= Utc::now());
                    let destroyed = v["destroyed"].as_bool().unwrap_or(false);
                    (!deleted && !destroyed).then(|| {
                        (
                            n,
                            VersionMeta {
                                id: k.clone(),
                                created: time(&v["created_time"]),
                                readable: true,
                            },
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|(n, _)| *n);
    out.into_iter().map(|(_, v)| v).collect()
}

/// A listing entry from a key's metadata; `None` when no version is live.
fn entry(name: &str, m: &Json) -> Option<Entry> {
    let live = live_versions(m);
    let newest = live.last()?;
    let tags = custom(m);
    Some(Entry {
        name: name.to_string(),
        fingerprint: format!(
            "{}:{}:{}",
            newest.id,
            live.len(),
            m["updated_time"].as_str().unwrap_or_default()
        ),
        origin: tags.get(TAG_NAME).cloned(),
        coarse: None,
    })
}

/// A version's data map as a value: `{"value": "text"}` is text (or base64 binary when
/// marked so), anything else is the map's JSON.
fn from_map(data: &Json) -> Option<(Value, Shape)> {
    let o = data.as_object()?;
    if o.len() == 1 {
        if let Some(s) = o.get("value").and_then(Json::as_str) {
            return Some((Value::new(s.as_bytes().to_vec()), Shape::Text));
        }
        if let Some(s) = o.get("value_base64").and_then(Json::as_str) {
            let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
            return Some((Value::new(bytes), Shape::Binary));
        }
    }
    let text = serde_json::to_vec(data).ok()?;
    Some((Value::new(text), Shape::Map))
}

fn to_map(value: &Value, shape: Shape) -> Option<Json> {
    match shape {
        Shape::Map => {
            let v: Json = serde_json::from_slice(value.expose()).ok()?;
            v.is_object().then_some(v)
        }
        Shape::Binary => Some(json!({
            "value_base64": base64::engine::general_purpose::STANDARD.encode(value.expose())
        })),
        Shape::Text => match value.as_text() {
            Some(s) => Some(json!({ "value": s })),
            None => Some(json!({
                "value_base64": base64::engine::general_purpose::STANDARD.encode(value.expose())
            })),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_map_to_kv_data_and_back() {
        for (value, shape) in [
            (b"plain".to_vec(), Shape::Text),
            (vec![0xff, 0x00, 0x10], Shape::Binary),
            (br#"{"password":"p","user":"u"}"#.to_vec(), Shape::Map),
        ] {
            let v = Value::new(value.clone());
            let map = to_map(&v, shape).expect("maps");
            let (back, s) = from_map(&map).expect("reads");
            assert_eq!(back.expose(), value.as_slice());
            assert_eq!(s, shape);
        }
    }

    #[test]
    fn deleted_and_destroyed_versions_are_not_live() {
        let m = json!({"versions": {
            "1": {"created_time": "2026-01-01T00:00:00Z", "deletion_time": "", "destroyed": true},
            "2": {"created_time": "2026-01-02T00:00:00Z", "deletion_time": "2026-01-03T00:00:00Z", "destroyed": false},
            "10": {"created_time": "2026-01-04T00:00:00Z", "deletion_time": "", "destroyed": false},
            "3": {"created_time": "2026-01-03T00:00:00Z", "deletion_time": "", "destroyed": false}
        }, "updated_time": "x"});
        let ids: Vec<String> = live_versions(&m).into_iter().map(|v| v.id).collect();
        assert_eq!(ids, ["3", "10"]);
        assert_eq!(entry("a", &m).map(|e| e.fingerprint), Some("10:2:x".into()));
        let gone = json!({"versions": {"1": {"deletion_time": "", "destroyed": true}}});
        assert_eq!(entry("a", &gone), None);
    }
}
