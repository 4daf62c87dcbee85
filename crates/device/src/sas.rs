//! Device authentication as IoT Hub does it: a shared access signature
//! `SharedAccessSignature sr=RESOURCE&sig=SIGNATURE&se=EXPIRY`, where the signature is
//! base64(HMAC-SHA256(device key, url-encoded RESOURCE + "\n" + EXPIRY)) and the
//! resource names the device (`HOST/devices/ID`). Devices already make these with their
//! SDKs; the concierge checks them against the device's key, in constant time.

use aws_lc_rs::hmac;
use base64::Engine as _;
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};

/// Why a token was refused. Deliberately coarse towards the device: the concierge
/// answers 401 or 403 without saying which part failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("not a SharedAccessSignature token (SharedAccessSignature sr=...&sig=...&se=...)")]
    Malformed,
    #[error("the token is for another resource than this device")]
    WrongResource,
    #[error("the token has expired")]
    Expired,
    #[error("the token expires too far ahead (at most {0} s)")]
    TooLong(u64),
    #[error("the signature does not match the device's key")]
    BadSignature,
}

fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn mac(key: &[u8], resource: &str, expiry: u64) -> hmac::Tag {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&k, format!("{}\n{expiry}", url_encode(resource)).as_bytes())
}

/// A token for `resource` signed with `key`, good until `expiry` (Unix seconds): what
/// a device's SDK makes.
pub fn token(resource: &str, key: &[u8], expiry: u64) -> String {
    let sig = base64::engine::general_purpose::STANDARD.encode(mac(key, resource, expiry));
    format!(
        "SharedAccessSignature sr={}&sig={}&se={expiry}",
        url_encode(resource),
        url_encode(&sig)
    )
}

/// Checks `header` (the `Authorization` value) for device `id` with its `key` at `now`
/// (Unix seconds); tokens may live at most `max_ttl` seconds ahead.
pub fn verify(header: &str, id: &str, key: &[u8], now: u64, max_ttl: u64) -> Result<(), SasError> {
    let fields = header
        .trim()
        .strip_prefix("SharedAccessSignature ")
        .ok_or(SasError::Malformed)?;
    let (mut sr, mut raw_sr, mut sig, mut se) = (None, None, None, None);
    for pair in fields.split('&') {
        let (k, v) = pair.split_once('=').ok_or(SasError::Malformed)?;
        let raw = v;
        let v = percent_decode_str(v)
            .decode_utf8()
            .map_err(|_| SasError::Malformed)?
            .into_owned();
        match k {
            "sr" => {
                sr = Some(v);
                raw_sr = Some(raw.to_string());
            }
            "sig" => sig = Some(v),
            "se" => se = Some(v),
            // `skn` (a policy name) is for hub-level keys, not devices.
            _ => return Err(SasError::Malformed),
        }
    }
    let raw_sr = raw_sr.ok_or(SasError::Malformed)?;
    let (sr, sig, se) = (
        sr.ok_or(SasError::Malformed)?,
        sig.ok_or(SasError::Malformed)?,
        se.ok_or(SasError::Malformed)?,
    );
    let expiry: u64 = se.parse().map_err(|_| SasError::Malformed)?;
    let wanted = format!("devices/{id}");
    if !(sr == wanted || sr.ends_with(&format!("/{wanted}"))) {
        return Err(SasError::WrongResource);
    }
    if expiry <= now {
        return Err(SasError::Expired);
    }
    if expiry - now > max_ttl {
        return Err(SasError::TooLong(max_ttl));
    }
    let given = base64::engine::general_purpose::STANDARD
        .decode(sig.as_bytes())
        .map_err(|_| SasError::BadSignature)?;
    // Signed as the device encoded it (SDKs leave `-_.~` and more unencoded): the
    // resource exactly as it stands in the token.
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::verify(&k, format!("{raw_sr}\n{expiry}").as_bytes(), &given)
        .map_err(|_| SasError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_as_iot_hub_checks_them() {
        let key = b"device-key-0123456789abcdef01234";
        let t = token("hub.example/devices/dev-1", key, 1_000_100);
        assert_eq!(verify(&t, "dev-1", key, 1_000_000, 3600), Ok(()));
        // The bare resource form works too.
        let t2 = token("devices/dev-1", key, 1_000_100);
        assert_eq!(verify(&t2, "dev-1", key, 1_000_000, 3600), Ok(()));
        assert_eq!(
            verify(&t, "dev-2", key, 1_000_000, 3600),
            Err(SasError::WrongResource)
        );
        assert_eq!(
            verify(&t, "dev-1", b"another key", 1_000_000, 3600),
            Err(SasError::BadSignature)
        );
        assert_eq!(
            verify(&t, "dev-1", key, 1_000_100, 3600),
            Err(SasError::Expired)
        );
        assert_eq!(
            verify(&t, "dev-1", key, 1_000_000, 50),
            Err(SasError::TooLong(50))
        );
        // A prefix of another device's id is not the device.
        let t3 = token("hub.example/devices/dev-10", key, 1_000_100);
        assert_eq!(
            verify(&t3, "dev-1", key, 1_000_000, 3600),
            Err(SasError::WrongResource)
        );
        // A token as an SDK makes it (`.` and `-` left as they are) verifies.
        let sdk_sr = "myhub.azure-devices.net%2Fdevices%2Fdev-1";
        let mac = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, key),
            format!("{sdk_sr}\n1000100").as_bytes(),
        );
        let sdk = format!(
            "SharedAccessSignature sr={sdk_sr}&sig={}&se=1000100",
            url_encode(&base64::engine::general_purpose::STANDARD.encode(mac))
        );
        assert_eq!(verify(&sdk, "dev-1", key, 1_000_000, 3600), Ok(()));
        // The expiry is signed: moving it breaks the signature.
        let moved = t.replace("se=1000100", "se=1000200");
        assert_eq!(
            verify(&moved, "dev-1", key, 1_000_000, 3600),
            Err(SasError::BadSignature)
        );
        for bad in [
            "Bearer x",
            "SharedAccessSignature sr=a",
            "SharedAccessSignature sr=devices%2Fdev-1&sig=x&se=notanumber",
            "SharedAccessSignature sr=devices%2Fdev-1&sig=x&se=1&skn=owner",
        ] {
            assert_eq!(
                verify(bad, "dev-1", key, 0, 3600),
                Err(SasError::Malformed),
                "{bad}"
            );
        }
    }
}
