//! A secret version in terms every vault kind maps to (docs/config.md has the table):
//! the value's bytes and shape, and the attributes Key Vault has natively (enabled,
//! not-before, expiry, content type, tags). Kinds without an attribute keep it in tags
//! or custom metadata under the reserved `georep-` prefix.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Tags and metadata keys georep reserves for itself.
pub const RESERVED: &str = "georep-";
pub const TAG_SEQ: &str = "georep-seq";
pub const TAG_SHAPE: &str = "georep-shape";
pub const TAG_ENABLED: &str = "georep-enabled";
pub const TAG_NBF: &str = "georep-nbf";
pub const TAG_EXP: &str = "georep-exp";
pub const TAG_CONTENT_TYPE: &str = "georep-content-type";
/// The name at the source, when a destination's rules forced another one.
pub const TAG_NAME: &str = "georep-name";

/// A secret value. Its `Debug` prints `***`; it has no `Display` or `Serialize`, and its
/// bytes are overwritten when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Value(Vec<u8>);

impl Value {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as text, when it is UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            *b = 0;
        }
        std::hint::black_box(&self.0);
    }
}

/// What kind of value it is, so each vault gets it in its own form and gives it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A string (Key Vault's only kind, Secrets Manager's `SecretString`, KV v2's
    /// `{"value": ...}`).
    #[default]
    Text,
    /// A KV v2 map of several fields, carried as its JSON text.
    Map,
    /// Bytes that are not text (Secrets Manager's `SecretBinary`), carried as base64
    /// where the vault takes only strings.
    Binary,
}

impl Shape {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Map => "map",
            Self::Binary => "binary",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(Self::Text),
            "map" => Some(Self::Map),
            "binary" => Some(Self::Binary),
            _ => None,
        }
    }
}

/// A version's attributes: all but the value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Attrs {
    pub enabled: bool,
    pub not_before: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
    pub content_type: Option<String>,
    /// The user's tags (the `georep-` ones left out).
    pub tags: BTreeMap<String, String>,
    pub shape: Shape,
}

impl Attrs {
    pub fn enabled() -> Self {
        Self {
            enabled: true,
            ..Self::default()
        }
    }

    /// The user's tags plus georep's own keys for what the vault has no field for.
    /// `native`: which of enabled, nbf, exp and content type the vault stores itself.
    pub fn to_tags(&self, native: bool) -> BTreeMap<String, String> {
        let mut t = self.tags.clone();
        if self.shape != Shape::Text {
            t.insert(TAG_SHAPE.into(), self.shape.as_str().into());
        }
        if !native {
            if !self.enabled {
                t.insert(TAG_ENABLED.into(), "false".into());
            }
            if let Some(n) = self.not_before {
                t.insert(TAG_NBF.into(), n.to_rfc3339());
            }
            if let Some(e) = self.expires {
                t.insert(TAG_EXP.into(), e.to_rfc3339());
            }
            if let Some(c) = &self.content_type {
                t.insert(TAG_CONTENT_TYPE.into(), c.clone());
            }
        }
        t
    }

    /// The inverse of [`Attrs::to_tags`]: georep's keys read back, the user's kept.
    /// Native fields given by the caller win over tags.
    pub fn from_tags(tags: &BTreeMap<String, String>) -> Self {
        let time = |k: &str| {
            tags.get(k)
                .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Self {
            enabled: tags.get(TAG_ENABLED).is_none_or(|v| v != "false"),
            not_before: time(TAG_NBF),
            expires: time(TAG_EXP),
            content_type: tags.get(TAG_CONTENT_TYPE).cloned(),
            tags: user_tags(tags),
            shape: tags
                .get(TAG_SHAPE)
                .and_then(|s| Shape::parse(s))
                .unwrap_or_default(),
        }
    }
}

/// Tags without georep's own.
pub fn user_tags(tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    tags.iter()
        .filter(|(k, _)| !k.starts_with(RESERVED))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// One version as a listing shows it: no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMeta {
    /// The vault's own id (KV v2: the number; Key Vault: 32 hex; Secrets Manager: the
    /// VersionId).
    pub id: String,
    pub created: Option<DateTime<Utc>>,
    /// `false` when the vault will not give its value (a disabled Key Vault version).
    pub readable: bool,
}

/// One version with its value.
#[derive(Debug, Clone)]
pub struct Version {
    pub id: String,
    pub value: Value,
    pub attrs: Attrs,
    pub created: Option<DateTime<Utc>>,
}

/// A secret as a vault's listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name in the vault.
    pub name: String,
    /// Changes whenever a version is added or the secret's attributes change; compared
    /// with the last pass to skip what did not change (metadata only).
    pub fingerprint: String,
    /// The source's name when georep wrote it under another (the `georep-name` tag), so
    /// a copy can be read back under its first name.
    pub origin: Option<String>,
    /// When the fingerprint's clock has only one-second resolution (Key Vault's
    /// `updated`): the time it shows. A fingerprint this recent may not yet show a
    /// change made in the same second, so it is not trusted to skip a secret.
    pub coarse: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_never_print() {
        let v = Value::new(b"hunter2".to_vec());
        assert_eq!(format!("{v:?}"), "***");
        let ver = Version {
            id: "1".into(),
            value: v,
            attrs: Attrs::enabled(),
            created: None,
        };
        assert!(!format!("{ver:?}").contains("hunter2"));
    }

    #[test]
    fn attributes_round_trip_through_tags() {
        let a = Attrs {
            enabled: false,
            not_before: Some(DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()),
            expires: Some(DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()),
            content_type: Some("application/x-pem-file".into()),
            tags: [("team".to_string(), "payments".to_string())].into(),
            shape: Shape::Map,
        };
        let t = a.to_tags(false);
        assert_eq!(Attrs::from_tags(&t), a);
        let native = a.to_tags(true);
        assert!(!native.contains_key(TAG_ENABLED));
        assert_eq!(native.get(TAG_SHAPE).map(String::as_str), Some("map"));
        assert_eq!(user_tags(&t), a.tags);
    }
}
