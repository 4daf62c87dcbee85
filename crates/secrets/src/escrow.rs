//! Escrow bundles: every secret a sync carries (the newest versions, values and
//! attributes) in one JSON document, encrypted with age for the configured recipients
//! (any one of their identities opens it; Debian's `age -d` too), written as one object
//! per point in time (`SYNC/YYYYMMDDTHHMMSSZ.age`, whole or not at all), the newest
//! `keep` kept. The plaintext exists only in memory.

use std::io::{Read, Write};
use std::str::FromStr;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use georep_storage::{ListRole, ObjectReader, Store};
use serde_json::{json, Value as Json};

use crate::error::{Result, SecretsError};
use crate::model::{Attrs, Value, Version};

pub const FORMAT: &str = "georep-secrets-escrow/1";

/// One secret in a bundle: its name at the source and its versions, oldest first.
#[derive(Debug)]
pub struct Held {
    pub name: String,
    pub versions: Vec<Version>,
}

/// A bundle's object key for a point in time.
pub fn key_for(at: DateTime<Utc>) -> String {
    format!("{}.age", at.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// The plaintext document (kept in memory only). `mac` authenticates its secrets with
/// the sync's key: age proves nothing about who wrote a bundle, since anyone may
/// encrypt to the public recipients.
fn document(
    sync: &str,
    source: &str,
    at: DateTime<Utc>,
    held: &[Held],
    key: &crate::ledger::MacKey,
) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let secrets: Vec<Json> = held
        .iter()
        .map(|h| {
            let versions: Vec<Json> = h
                .versions
                .iter()
                .map(|v| {
                    json!({
                        "id": v.id,
                        "value_base64": b64.encode(v.value.expose()),
                        "created": v.created.map(|t| t.to_rfc3339()),
                        "attributes": v.attrs,
                    })
                })
                .collect();
            json!({"name": h.name, "versions": versions})
        })
        .collect();
    let secrets = Json::Array(secrets);
    let mac = bundle_mac(key, sync, source, &at.to_rfc3339(), &secrets);
    serde_json::to_vec(&json!({
        "format": FORMAT,
        "sync": sync,
        "source": source,
        "taken": at.to_rfc3339(),
        "secrets": secrets,
        "mac": mac,
    }))
    .unwrap_or_default()
}

/// What the MAC covers: the sync, the source, the time and the secrets.
fn bundle_mac(
    key: &crate::ledger::MacKey,
    sync: &str,
    source: &str,
    taken: &str,
    secrets: &Json,
) -> String {
    let mut data = format!("{sync}\n{source}\n{taken}\n").into_bytes();
    data.extend(serde_json::to_vec(secrets).unwrap_or_default());
    key.mac("escrow-bundle", &data)
}

/// Encrypts `plain` for `recipients` (age X25519 public keys), binary age format.
pub fn seal(recipients: &[String], plain: &[u8]) -> Result<Vec<u8>> {
    let rs = recipients
        .iter()
        .map(|r| {
            age::x25519::Recipient::from_str(r.trim())
                .map_err(|e| SecretsError::Config(format!("escrow recipient '{r}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let enc = age::Encryptor::with_recipients(rs.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| SecretsError::Escrow(format!("cannot encrypt: {e}")))?;
    let mut out = Vec::new();
    let mut w = enc
        .wrap_output(&mut out)
        .map_err(|e| SecretsError::Escrow(format!("cannot encrypt: {e}")))?;
    w.write_all(plain)
        .and_then(|()| w.finish().map(|_| ()))
        .map_err(|e| SecretsError::Escrow(format!("cannot encrypt: {e}")))?;
    Ok(out)
}

/// Decrypts with the identities in an age identity file's text.
pub fn open(identity_file: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let ids = age::IdentityFile::from_buffer(identity_file.as_bytes())
        .map_err(|e| {
            SecretsError::Config(format!(
                "the identity file is not an age identity file: {e}"
            ))
        })?
        .into_identities()
        .map_err(|e| SecretsError::Config(format!("the identity file: {e}")))?;
    let dec = age::Decryptor::new(age::armor::ArmoredReader::new(sealed))
        .map_err(|e| SecretsError::Escrow(format!("not an age file: {e}")))?;
    let mut r = dec
        .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| {
            SecretsError::Escrow(format!(
                "cannot decrypt with this identity (is it one of the recipients?): {e}"
            ))
        })?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)
        .map_err(|e| SecretsError::Escrow(format!("the bundle is damaged: {e}")))?;
    Ok(out)
}

/// Writes one bundle and prunes to `keep`; returns its key.
pub async fn write(
    store: &Store,
    recipients: &[String],
    keep: u32,
    sync: &str,
    source: &str,
    held: &[Held],
    key: &crate::ledger::MacKey,
) -> Result<String> {
    let at = Utc::now();
    let plain = Value::new(document(sync, source, at, held, key));
    let sealed = seal(recipients, plain.expose())?;
    drop(plain);
    let key = key_for(at);
    let reader = ObjectReader::from_bytes(sealed.into(), Default::default());
    store
        .put(&key, reader, 64 << 20, 2)
        .await
        .map_err(|e| SecretsError::Escrow(format!("cannot write {key}: {e}")))?;
    let all = bundles(store).await?;
    if all.len() > keep as usize {
        for old in &all[..all.len() - keep as usize] {
            store.delete(old).await.map_err(|e| {
                SecretsError::Escrow(format!("cannot delete the old bundle {old}: {e}"))
            })?;
        }
    }
    Ok(key)
}

/// The bundles in a store, oldest first.
pub async fn bundles(store: &Store) -> Result<Vec<String>> {
    let mut list = store.list(ListRole::Destination);
    let mut out = Vec::new();
    while let Some(e) = list.next().await {
        let e = e.map_err(|e| SecretsError::Escrow(format!("cannot list the bundles: {e}")))?;
        if e.key.ends_with(".age") && !e.key.contains('/') {
            out.push(e.key);
        }
    }
    out.sort();
    Ok(out)
}

/// What a bundle holds.
#[derive(Debug)]
pub struct Opened {
    pub sync: String,
    pub source: String,
    pub taken: String,
    pub secrets: Vec<Held>,
}

/// Reads and decrypts bundle `key` (the newest when `None`) and checks that the sync's
/// key made it (`mac_key`; `None` restores an unauthenticated bundle).
pub async fn read(
    store: &Store,
    key: Option<&str>,
    identity_file: &str,
    mac_key: Option<&crate::ledger::MacKey>,
) -> Result<(String, Opened)> {
    let key = match key {
        Some(k) => k.to_string(),
        None => bundles(store)
            .await?
            .pop()
            .ok_or_else(|| SecretsError::Escrow("the escrow store holds no bundle".into()))?,
    };
    let sealed = store
        .get(&key, 1 << 20)
        .await
        .map_err(|e| SecretsError::Escrow(format!("cannot read {key}: {e}")))?
        .bytes()
        .await
        .map_err(|e| SecretsError::Escrow(format!("cannot read {key}: {e}")))?;
    let plain = Value::new(open(identity_file, &sealed)?);
    let doc: Json = serde_json::from_slice(plain.expose())
        .map_err(|_| SecretsError::Escrow(format!("{key} is not a georep escrow bundle")))?;
    if doc["format"] != FORMAT {
        return Err(SecretsError::Escrow(format!(
            "{key} is not a {FORMAT} bundle"
        )));
    }
    if let Some(k) = mac_key {
        let text = |f: &str| doc[f].as_str().unwrap_or_default().to_string();
        let want = bundle_mac(
            k,
            &text("sync"),
            &text("source"),
            &text("taken"),
            &doc["secrets"],
        );
        // The name is the time it was taken: a bundle copied to a newer name is refused.
        let named = chrono::DateTime::parse_from_rfc3339(&text("taken"))
            .map(|t| key_for(t.with_timezone(&Utc)) == key)
            .unwrap_or(false);
        if doc["mac"].as_str() != Some(want.as_str()) || !named {
            return Err(SecretsError::Escrow(format!(
                "{key} was not written with this GEOREP_SECRETS_KEY (anyone can encrypt to the recipients, so a planted bundle looks the same); export the sync's key, or pass --unverified if you know where the bundle came from"
            )));
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut secrets = Vec::new();
    for s in doc["secrets"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or_default().to_string();
        let mut versions = Vec::new();
        for v in s["versions"].as_array().into_iter().flatten() {
            let bytes = v["value_base64"]
                .as_str()
                .and_then(|t| b64.decode(t).ok())
                .ok_or_else(|| {
                    SecretsError::Escrow(format!("{key}: '{name}' has a damaged value"))
                })?;
            let attrs: Attrs = serde_json::from_value(v["attributes"].clone())
                .unwrap_or_else(|_| Attrs::enabled());
            versions.push(Version {
                id: v["id"].as_str().unwrap_or_default().to_string(),
                value: Value::new(bytes),
                attrs,
                created: v["created"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
            });
        }
        secrets.push(Held { name, versions });
    }
    let text = |k: &str| doc[k].as_str().unwrap_or_default().to_string();
    Ok((
        key,
        Opened {
            sync: text("sync"),
            source: text("source"),
            taken: text("taken"),
            secrets,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn any_recipient_opens_a_sealed_bundle_and_others_cannot() {
        let a = age::x25519::Identity::generate();
        let b = age::x25519::Identity::generate();
        let stranger = age::x25519::Identity::generate();
        let recipients = vec![a.to_public().to_string(), b.to_public().to_string()];
        let sealed = seal(&recipients, b"top secret").expect("seals");
        assert!(!sealed.windows(10).any(|w| w == b"top secret"));
        for id in [&a, &b] {
            let file = format!("# key\n{}\n", id.to_string().expose_secret());
            assert_eq!(open(&file, &sealed).expect("opens"), b"top secret");
        }
        let other = format!("{}\n", stranger.to_string().expose_secret());
        assert!(open(&other, &sealed).is_err());
        assert!(seal(&["age1nope".to_string()], b"x").is_err());
    }
}
