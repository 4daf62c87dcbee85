//! Signed assignments: the hub a device should use, its fallbacks and how long the
//! answer holds, as a JWS compact token (`EdDSA`, Ed25519) so that a device can check
//! with any JOSE library that the answer came from its concierge and was not changed
//! on the way. The public key is published as a JWK set (`/.well-known/jwks.json`).

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use serde::Serialize;

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Why a signing key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the signing key is not a 32-byte Ed25519 seed")]
pub struct BadKey;

/// A concierge's signing identity.
pub struct Signer {
    pair: Ed25519KeyPair,
    /// The key's id: the first 16 characters of its public key, base64url.
    kid: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    pub fn from_seed(seed: &[u8]) -> Result<Self, BadKey> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| BadKey)?;
        let kid = b64url(pair.public_key().as_ref())[..16].to_string();
        Ok(Self { pair, kid })
    }

    /// The public key as a JWK set, for devices to verify with.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
            "kid": self.kid, "x": b64url(self.pair.public_key().as_ref()),
        }]})
    }

    /// `claims` as a JWS compact token.
    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(&serde_json::to_vec(claims).unwrap_or_default())
        );
        let sig = self.pair.sign(input.as_bytes());
        format!("{input}.{}", b64url(sig.as_ref()))
    }
}

/// Checks a token made by [`Signer::sign`]: the device side's check.
pub use georep_device::claims::verify;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_verify_with_the_published_key_and_tampering_is_caught() {
        let s = Signer::from_seed(&[7u8; 32]).expect("seed");
        let token =
            s.sign(&serde_json::json!({"device": "dev-1", "hub": "mqtts://qc:8883", "exp": 100}));
        let jwks = s.jwks();
        let x = jwks["keys"][0]["x"].as_str().expect("x");
        let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(x)
            .expect("b64");
        let claims = verify(&token, &public).expect("verifies");
        assert_eq!(claims["hub"], "mqtts://qc:8883");
        // Another hub written into the claims: the signature no longer holds.
        let parts: Vec<&str> = token.split('.').collect();
        let forged = b64url(br#"{"device":"dev-1","hub":"mqtts://evil:8883","exp":100}"#);
        assert!(verify(&format!("{}.{forged}.{}", parts[0], parts[2]), &public).is_none());
        // Another key does not verify it either.
        let other = Signer::from_seed(&[8u8; 32]).expect("seed");
        let other_x = other.jwks()["keys"][0]["x"]
            .as_str()
            .map(str::to_string)
            .expect("x");
        let other_pub = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(other_x)
            .expect("b64");
        assert!(verify(&token, &other_pub).is_none());
        assert!(Signer::from_seed(&[1u8; 5]).is_err());
        // The same seed always makes the same key (a restart keeps devices' trust).
        assert_eq!(Signer::from_seed(&[7u8; 32]).expect("seed").jwks(), jwks);
    }
}
