//! Device identities as the concierge reads them: a JSON object (in a georep store)
//! listing each device's id, key, whether it is enabled, and its group:
//!
//! ```json
//! {"devices": [{"id": "sensor-0001", "key": "BASE64 (16+ bytes)", "enabled": true, "group": "plant-a"}]}
//! ```
//!
//! Checked whole before it replaces the previous set: a bad file never empties the
//! fleet.

use std::collections::BTreeMap;

use base64::Engine as _;

/// One device.
#[derive(Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    /// The symmetric key its SAS tokens are signed with.
    pub key: Vec<u8>,
    pub enabled: bool,
    pub group: Option<String>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("id", &self.id)
            .field("key", &"***")
            .field("enabled", &self.enabled)
            .field("group", &self.group)
            .finish()
    }
}

/// Why an identities object was refused, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("identities: {0}")]
pub struct IdentityError(pub String);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    devices: Vec<Entry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    key: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    group: Option<String>,
}

fn yes() -> bool {
    true
}

/// A device id as MQTT client ids and URLs take it: 1 to 128 of `[A-Za-z0-9._:-]`.
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// Every device, by id; every problem is reported at once.
pub fn parse(bytes: &[u8]) -> Result<BTreeMap<String, Device>, IdentityError> {
    let file: File = serde_json::from_slice(bytes).map_err(|e| {
        IdentityError(format!(
            "not the expected JSON ({e}); write {{\"devices\": [{{\"id\": \"...\", \"key\": \"BASE64\", \"enabled\": true}}]}}"
        ))
    })?;
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, e) in file.devices.into_iter().enumerate() {
        let at = format!("device #{} ('{}')", i + 1, e.id);
        if !valid_id(&e.id) {
            problems.push(format!(
                "{at}: an id is 1 to 128 of letters, digits, '.', '_', ':' and '-'"
            ));
            continue;
        }
        let key = match base64::engine::general_purpose::STANDARD.decode(e.key.trim()) {
            Ok(k) if k.len() >= 16 => k,
            _ => {
                problems.push(format!(
                    "{at}: the key must be base64 of at least 16 bytes (openssl rand -base64 32)"
                ));
                continue;
            }
        };
        if out.contains_key(&e.id) {
            problems.push(format!("{at}: the id is listed twice"));
            continue;
        }
        out.insert(
            e.id.clone(),
            Device {
                id: e.id,
                key,
                enabled: e.enabled,
                group: e.group.filter(|g| !g.is_empty()),
            },
        );
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(IdentityError(problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_checked_whole_and_keys_never_shown() {
        let ok = br#"{"devices": [
            {"id": "dev-1", "key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "group": "plant-a"},
            {"id": "dev-2", "key": "AAECAwQFBgcICQoLDA0ODw==", "enabled": false}
        ]}"#;
        let d = parse(ok).expect("parses");
        assert_eq!(d.len(), 2);
        assert!(d["dev-1"].enabled && !d["dev-2"].enabled);
        assert_eq!(d["dev-1"].group.as_deref(), Some("plant-a"));
        assert!(!format!("{:?}", d["dev-1"]).contains("AAEC"));
        let bad = br#"{"devices": [
            {"id": "bad id", "key": "AAECAwQFBgcICQoLDA0ODw=="},
            {"id": "short", "key": "c2hvcnQ="},
            {"id": "dup", "key": "AAECAwQFBgcICQoLDA0ODw=="},
            {"id": "dup", "key": "AAECAwQFBgcICQoLDA0ODw=="}
        ]}"#;
        let e = parse(bad).expect_err("refused").0;
        for want in [
            "device #1 ('bad id')",
            "device #2 ('short'): the key",
            "device #4 ('dup'): the id is listed twice",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        assert!(parse(br#"{"devices": [], "extra": 1}"#).is_err());
    }
}
