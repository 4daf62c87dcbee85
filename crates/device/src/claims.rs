//! What a concierge and its devices agree on, beside shared access signatures (`sas`):
//! the signed assignment and how a device checks it, the MQTT password a device derives
//! from its key, the topics of reassign notices and presence, and signed presence.

use aws_lc_rs::hmac;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// A hub as an assignment names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hub {
    pub name: String,
    pub region: String,
    pub url: String,
}

/// An assignment's claims: the hub to use, the others in the order to try them, why,
/// and how long it holds (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub device: String,
    /// The device's group, so it knows which reassign notices are for it.
    #[serde(default)]
    pub group: Option<String>,
    pub hub: Hub,
    pub fallbacks: Vec<Hub>,
    pub reason: String,
    pub ttl_seconds: u64,
    pub iat: u64,
    pub exp: u64,
}

/// Checks a JWS compact token (`EdDSA`) against a public key (32 bytes) and gives its
/// claims, or `None` when the signature does not hold.
pub fn verify(token: &str, public_key: &[u8]) -> Option<serde_json::Value> {
    use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
    let (input, sig) = token.rsplit_once('.')?;
    let (header, claims) = input.split_once('.')?;
    let dec = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()
    };
    let h: serde_json::Value = serde_json::from_slice(&dec(header)?).ok()?;
    if h["alg"] != "EdDSA" {
        return None;
    }
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(input.as_bytes(), &dec(sig)?)
        .ok()?;
    serde_json::from_slice(&dec(claims)?).ok()
}

/// The MQTT password of a device with `key`: base64(HMAC-SHA256(key, "georep-mqtt")),
/// so no second secret has to be handed to devices.
pub fn mqtt_password(key: &[u8]) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&k, b"georep-mqtt"))
}

/// Where concierge `concierge` tells devices to ask again.
pub fn reassign_topic(concierge: &str) -> String {
    format!("georep/concierge/{concierge}/reassign")
}

/// Where device `id` of concierge `concierge` says it is connected (or gone).
pub fn presence_topic(concierge: &str, id: &str) -> String {
    format!("georep/concierge/{concierge}/presence/{id}")
}

/// A reassign notice: every device (no device, no group), one group, or some devices.
/// A device waits a random part of `spread_ms` before asking, so that a fleet does not
/// ask all at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassign {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub spread_ms: u64,
}

impl Reassign {
    /// Whether the notice is for device `id` of `group`.
    pub fn concerns(&self, id: &str, group: Option<&str>) -> bool {
        match (&self.group, self.devices.is_empty()) {
            (None, true) => true,
            (g, _) => {
                g.as_deref().is_some_and(|g| Some(g) == group)
                    || self.devices.iter().any(|d| d == id)
            }
        }
    }
}

/// A device's word that it is connected to a hub (or, as its will, that it is gone),
/// signed with its key so that no other device can speak for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub device: String,
    pub hub: String,
    /// When the connection was made, Unix milliseconds (the device's clock).
    pub at: u64,
    pub online: bool,
    pub sig: String,
}

fn presence_mac(key: &[u8], device: &str, hub: &str, at: u64, online: bool) -> hmac::Tag {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(
        &k,
        format!("georep-presence\n{device}\n{hub}\n{at}\n{online}").as_bytes(),
    )
}

impl Presence {
    pub fn signed(key: &[u8], device: &str, hub: &str, at: u64, online: bool) -> Self {
        Self {
            device: device.into(),
            hub: hub.into(),
            at,
            online,
            sig: base64::engine::general_purpose::STANDARD
                .encode(presence_mac(key, device, hub, at, online)),
        }
    }

    /// Whether the signature is the device's (constant time).
    pub fn verify(&self, key: &[u8]) -> bool {
        let Ok(given) = base64::engine::general_purpose::STANDARD.decode(&self.sig) else {
            return false;
        };
        let k = hmac::Key::new(hmac::HMAC_SHA256, key);
        hmac::verify(
            &k,
            format!(
                "georep-presence\n{}\n{}\n{}\n{}",
                self.device, self.hub, self.at, self.online
            )
            .as_bytes(),
            &given,
        )
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_is_the_devices_word_and_notices_find_their_devices() {
        let p = Presence::signed(b"key-of-dev-1-0123", "dev-1", "qc", 5, true);
        assert!(p.verify(b"key-of-dev-1-0123"));
        assert!(!p.verify(b"key-of-dev-2-0123"));
        let mut forged = p.clone();
        forged.hub = "we".into();
        assert!(!forged.verify(b"key-of-dev-1-0123"));

        let all = Reassign::default();
        assert!(all.concerns("x", None));
        let group = Reassign {
            group: Some("plant-a".into()),
            ..Reassign::default()
        };
        assert!(group.concerns("x", Some("plant-a")) && !group.concerns("x", Some("b")));
        assert!(!group.concerns("x", None));
        let some = Reassign {
            devices: vec!["d1".into()],
            ..Reassign::default()
        };
        assert!(some.concerns("d1", None) && !some.concerns("d2", None));
        assert_eq!(mqtt_password(&[1; 16]).len(), 44);
    }
}
