//! Device identities as the concierge reads them: a JSON object (in a georep store)
//! listing each device's id, key, whether it is enabled, and its group:
//!
//! ```json
//! {"roles": [{"name": "sensor", "acls": [{"type": "publishClientSend", "topic": "telemetry/#"}]}],
//!  "devices": [{"id": "sensor-0001", "key": "BASE64 (16+ bytes)", "enabled": true,
//!               "group": "plant-a", "roles": ["sensor"]}]}
//! ```
//!
//! Roles are the ACLs devices get on every hub (Mosquitto dynamic security's ACL
//! types). Checked whole before it replaces the previous set: a bad file never empties
//! the fleet.

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
    /// Names of roles of the fleet, sorted.
    pub roles: Vec<String>,
}

/// The ACL types of Mosquitto's dynamic security.
pub const ACL_TYPES: &[&str] = &[
    "publishClientSend",
    "publishClientReceive",
    "subscribeLiteral",
    "subscribePattern",
    "unsubscribeLiteral",
    "unsubscribePattern",
];

/// One ACL of a role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    #[serde(rename = "type")]
    pub acltype: String,
    pub topic: String,
    #[serde(default = "yes")]
    pub allow: bool,
    #[serde(default)]
    pub priority: i64,
}

/// Every device by id, and every role by name (its ACLs, sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fleet {
    pub devices: BTreeMap<String, Device>,
    pub roles: BTreeMap<String, Vec<Acl>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("id", &self.id)
            .field("key", &"***")
            .field("enabled", &self.enabled)
            .field("group", &self.group)
            .field("roles", &self.roles)
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
    #[serde(default)]
    roles: Vec<Role>,
    devices: Vec<Entry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Role {
    name: String,
    #[serde(default)]
    acls: Vec<Acl>,
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
    #[serde(default)]
    roles: Vec<String>,
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

/// Why a role may not have an ACL on `topic`: it reaches the hub's own topics
/// (`$CONTROL` would make a device the hub's administrator, `$SYS`) or georep's.
fn reserved(topic: &str) -> Option<&'static str> {
    let first = topic.split('/').next().unwrap_or_default();
    if first.starts_with('$') {
        Some("reaches the hub's own topics ($CONTROL, $SYS): a device must never have them")
    } else if matches!(first, "#" | "+" | "georep") {
        Some("reaches georep's own topics (georep/...); name the device topics, e.g. telemetry/#")
    } else {
        None
    }
}

/// Every device and role; every problem is reported at once.
pub fn parse(bytes: &[u8]) -> Result<Fleet, IdentityError> {
    let file: File = serde_json::from_slice(bytes).map_err(|e| {
        IdentityError(format!(
            "not the expected JSON ({e}); write {{\"devices\": [{{\"id\": \"...\", \"key\": \"BASE64\", \"enabled\": true}}]}}"
        ))
    })?;
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    let mut roles = BTreeMap::new();
    for (i, r) in file.roles.into_iter().enumerate() {
        let at = format!("role #{} ('{}')", i + 1, r.name);
        if !valid_id(&r.name) || r.name.starts_with("georep") {
            problems.push(format!(
                "{at}: a role name is 1 to 128 of letters, digits, '.', '_', ':' and '-', and does not start with 'georep' (georep's own roles do)"
            ));
            continue;
        }
        for a in &r.acls {
            if !ACL_TYPES.contains(&a.acltype.as_str()) {
                problems.push(format!(
                    "{at}: ACL type '{}' is not one of {}",
                    a.acltype,
                    ACL_TYPES.join(", ")
                ));
            }
            if a.topic.is_empty() || a.topic.len() > 65_535 || a.topic.contains('\0') {
                problems.push(format!(
                    "{at}: an ACL topic is 1 to 65,535 bytes without NUL"
                ));
            }
            if let Some(why) = reserved(&a.topic) {
                problems.push(format!("{at}: ACL topic '{}' {why}", a.topic));
            }
        }
        let mut acls = r.acls;
        acls.sort();
        acls.dedup();
        if roles.insert(r.name, acls).is_some() {
            problems.push(format!("{at}: the role is listed twice"));
        }
    }
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
        let mut device_roles = e.roles;
        device_roles.sort();
        device_roles.dedup();
        if let Some(r) = device_roles.iter().find(|r| !roles.contains_key(*r)) {
            problems.push(format!(
                "{at}: role '{r}' is not in the file's \"roles\"; add {{\"name\": \"{r}\", \"acls\": [...]}}"
            ));
            continue;
        }
        out.insert(
            e.id.clone(),
            Device {
                id: e.id,
                key,
                enabled: e.enabled,
                group: e.group.filter(|g| !g.is_empty()),
                roles: device_roles,
            },
        );
    }
    if problems.is_empty() {
        Ok(Fleet {
            devices: out,
            roles,
        })
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
        let d = parse(ok).expect("parses").devices;
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

        let roles = br#"{"roles": [
            {"name": "sensor", "acls": [{"type": "publishClientSend", "topic": "t/#"}, {"type": "subscribePattern", "topic": "c/#", "allow": false}]},
            {"name": "georep-x"},
            {"name": "odd", "acls": [{"type": "publish", "topic": ""}]},
            {"name": "greedy", "acls": [{"type": "publishClientSend", "topic": "$CONTROL/dynamic-security/v1"}, {"type": "subscribePattern", "topic": "+/x"}]}
        ], "devices": [
            {"id": "d1", "key": "AAECAwQFBgcICQoLDA0ODw==", "roles": ["sensor", "sensor"]},
            {"id": "d2", "key": "AAECAwQFBgcICQoLDA0ODw==", "roles": ["nope"]}
        ]}"#;
        let e = parse(roles).expect_err("refused").0;
        for want in [
            "role #2 ('georep-x'): a role name",
            "role #3 ('odd'): ACL type 'publish' is not one of",
            "role #3 ('odd'): an ACL topic",
            "device #2 ('d2'): role 'nope' is not in the file's",
            "role #4 ('greedy'): ACL topic '$CONTROL/dynamic-security/v1' reaches the hub's own topics",
            "role #4 ('greedy'): ACL topic '+/x' reaches georep's own topics",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let ok = br#"{"roles": [{"name": "sensor", "acls": [{"type": "publishClientSend", "topic": "t/#"}]}],
            "devices": [{"id": "d1", "key": "AAECAwQFBgcICQoLDA0ODw==", "roles": ["sensor", "sensor"]}]}"#;
        let f = parse(ok).expect("roles parse");
        assert_eq!(f.devices["d1"].roles, ["sensor"]);
        assert!(f.roles["sensor"][0].allow);
    }
}
