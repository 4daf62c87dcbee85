//! Secret names across vault kinds. Key Vault takes `[0-9A-Za-z-]`, up to 127, and
//! compares names without case; Secrets Manager takes `[A-Za-z0-9/_+=.@-]`, up to 512;
//! KV v2 takes paths. A name a destination cannot hold is mapped (each other character
//! becomes `-`, `/` becomes `--`) and the first name kept in the `georep-name` tag;
//! the sync refuses two source names that map to the same destination name.

use georep_core::VaultUrl;

/// The name `name` gets in a vault like `url`, or why it cannot have one.
pub fn map_name(url: &VaultUrl, name: &str) -> Result<String, String> {
    match url {
        VaultUrl::KeyVault { .. } => {
            let mut out = String::with_capacity(name.len());
            for c in name.chars() {
                match c {
                    'a'..='z' | 'A'..='Z' | '0'..='9' | '-' => out.push(c),
                    '/' => out.push_str("--"),
                    _ => out.push('-'),
                }
            }
            if out.is_empty() || out.len() > 127 {
                return Err(format!(
                    "Key Vault names are 1 to 127 characters; '{name}' maps to {} characters",
                    out.len()
                ));
            }
            Ok(out)
        }
        VaultUrl::SecretsManager { .. } => {
            let out: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "/_+=.@-".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            if out.is_empty() || out.len() > 512 {
                return Err(format!(
                    "Secrets Manager names are 1 to 512 characters; '{name}' has {}",
                    out.len()
                ));
            }
            Ok(out)
        }
        VaultUrl::Kv { .. } => {
            let out = name.trim_matches('/');
            if out.is_empty()
                || out
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(format!(
                    "'{name}' is not a KV path (an empty, '.' or '..' segment)"
                ));
            }
            Ok(out.to_string())
        }
    }
}

/// How a vault compares names: Key Vault ignores case.
pub fn fold(url: &VaultUrl, name: &str) -> String {
    match url {
        VaultUrl::KeyVault { .. } => name.to_ascii_lowercase(),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_into_each_kind() {
        let kv = VaultUrl::KeyVault {
            endpoint: "https://x.vault.azure.net".into(),
        };
        let sm = VaultUrl::SecretsManager {
            region: "eu-west-1".into(),
        };
        let bao = VaultUrl::Kv {
            endpoint: "http://127.0.0.1:1".into(),
            mount: "secret".into(),
        };
        assert_eq!(
            map_name(&kv, "app/db_password").as_deref(),
            Ok("app--db-password")
        );
        assert_eq!(map_name(&kv, "Plain-Name9").as_deref(), Ok("Plain-Name9"));
        assert!(map_name(&kv, &"a".repeat(128)).is_err());
        assert_eq!(
            map_name(&sm, "app/db password").as_deref(),
            Ok("app/db-password")
        );
        assert_eq!(map_name(&bao, "app/x").as_deref(), Ok("app/x"));
        assert!(map_name(&bao, "a//b").is_err());
        assert_eq!(fold(&kv, "ABC"), "abc");
        assert_eq!(fold(&sm, "ABC"), "ABC");
    }
}
