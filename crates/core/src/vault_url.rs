//! Where a secret vault is: the one reader of `[vaults.NAME] url`, so the topology, the
//! CLI and the secrets crate agree on what each form means.
//!
//! | form | vault |
//! |---|---|
//! | `https://NAME.vault.azure.net` (and the sovereign clouds' suffixes) | Azure Key Vault |
//! | `keyvault+https://HOST[:PORT]`, `keyvault+http://127.0.0.1:PORT` | Key Vault's API at another address (private endpoints; a test server on loopback) |
//! | `aws-sm://REGION` | AWS Secrets Manager (`AWS_*` environment; `AWS_ENDPOINT_URL_SECRETS_MANAGER` for another endpoint) |
//! | `vault://HOST[:PORT]/MOUNT` | HashiCorp Vault or OpenBao, a KV v2 engine, over HTTPS (port 8200 by default) |
//! | `vault+http://127.0.0.1:PORT/MOUNT` | the same over plain HTTP: loopback only (the token would cross the network in clear) |

use std::fmt;

/// Key Vault's DNS suffixes, public and sovereign clouds.
const KEYVAULT_SUFFIXES: &[&str] = &[
    ".vault.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
    ".vault.microsoftazure.de",
];

/// A parsed vault URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultUrl {
    /// Azure Key Vault's data plane at `endpoint` (`https://NAME.vault.azure.net`, no
    /// trailing slash).
    KeyVault { endpoint: String },
    /// AWS Secrets Manager in `region`.
    SecretsManager { region: String },
    /// A Vault or OpenBao KV version 2 engine mounted at `mount` (no slashes at either
    /// end), served at `endpoint` (`https://HOST:PORT`).
    Kv { endpoint: String, mount: String },
}

impl VaultUrl {
    /// Parses one of the forms in the module documentation; the error says which forms
    /// exist (it never echoes more than the scheme, in case the text holds a secret).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let forms = "write https://NAME.vault.azure.net (Key Vault), aws-sm://REGION (Secrets Manager) or vault://HOST:PORT/MOUNT (Vault or OpenBao KV v2)";
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!("not a vault URL; {forms}"));
        };
        match scheme {
            "https" => {
                let u = url::Url::parse(text).map_err(|e| format!("not a URL ({e}); {forms}"))?;
                let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
                if !KEYVAULT_SUFFIXES.iter().any(|s| host.ends_with(s)) {
                    return Err(format!("https://{host} is not a Key Vault address (NAME.vault.azure.net); for Key Vault's API behind another name write keyvault+https://{host}; otherwise {forms}"));
                }
                no_extras(&u, "https://NAME.vault.azure.net")?;
                Ok(Self::KeyVault {
                    endpoint: format!("https://{host}"),
                })
            }
            "keyvault+https" | "keyvault+http" => {
                let plain = scheme == "keyvault+http";
                let u = url::Url::parse(&format!("{}://{rest}", &scheme[9..]))
                    .map_err(|e| format!("not a URL ({e}); write keyvault+https://HOST[:PORT]"))?;
                no_extras(&u, "keyvault+https://HOST[:PORT]")?;
                let endpoint = endpoint(&u, plain)?;
                Ok(Self::KeyVault { endpoint })
            }
            "aws-sm" => {
                let region = rest.trim_end_matches('/');
                let ok = !region.is_empty()
                    && region.len() <= 32
                    && region
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if !ok {
                    return Err(
                        "aws-sm:// takes an AWS region, e.g. aws-sm://me-central-1".to_string()
                    );
                }
                Ok(Self::SecretsManager {
                    region: region.to_string(),
                })
            }
            "vault" | "vault+https" | "vault+http" => {
                let plain = scheme == "vault+http";
                // The URL parser folds `..` away; refuse it as written.
                let raw_path = rest.split_once('/').map_or("", |(_, p)| p);
                let raw_path = raw_path.split(['?', '#']).next().unwrap_or_default();
                if raw_path.split('/').any(|s| s == "." || s == "..") {
                    return Err(format!("mount '{raw_path}' has a '.' or '..' segment"));
                }
                let u = url::Url::parse(&format!("http://{rest}"))
                    .map_err(|e| format!("not a URL ({e}); write vault://HOST:PORT/MOUNT"))?;
                if !u.username().is_empty() || u.password().is_some() {
                    return Err("the URL holds credentials; the token comes from the environment (token_env)".into());
                }
                if u.query().is_some() || u.fragment().is_some() {
                    return Err(
                        "a vault URL takes no query or fragment; write vault://HOST:PORT/MOUNT"
                            .into(),
                    );
                }
                let mount = u.path().trim_matches('/').to_string();
                if mount.is_empty() {
                    return Err("the URL names no mount; write vault://HOST:PORT/MOUNT, e.g. vault://bao.example:8200/secret".into());
                }
                if mount
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
                {
                    return Err(format!("mount '{mount}' has an empty, '.' or '..' segment"));
                }
                let host = u.host_str().unwrap_or_default();
                let port = u.port().unwrap_or(8200);
                let scheme = if plain { "http" } else { "https" };
                let base = url::Url::parse(&format!("{scheme}://{host}:{port}"))
                    .map_err(|e| format!("not a URL ({e})"))?;
                Ok(Self::Kv {
                    endpoint: endpoint(&base, plain)?,
                    mount,
                })
            }
            other => Err(format!("'{other}://' is not a vault scheme; {forms}")),
        }
    }

    /// `keyvault`, `secretsmanager` or `kv`: the kind, for output and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::KeyVault { .. } => "keyvault",
            Self::SecretsManager { .. } => "secretsmanager",
            Self::Kv { .. } => "kv",
        }
    }
}

impl fmt::Display for VaultUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeyVault { endpoint } => match endpoint.strip_prefix("https://") {
                Some(h) if KEYVAULT_SUFFIXES.iter().any(|s| h.ends_with(s)) => {
                    f.write_str(endpoint)
                }
                _ => write!(f, "keyvault+{endpoint}"),
            },
            Self::SecretsManager { region } => write!(f, "aws-sm://{region}"),
            Self::Kv { endpoint, mount } => match endpoint.strip_prefix("https://") {
                Some(h) => write!(f, "vault://{h}/{mount}"),
                None => write!(f, "vault+{endpoint}/{mount}"),
            },
        }
    }
}

/// No path, query, fragment or credentials: the URL is only an address.
fn no_extras(u: &url::Url, form: &str) -> Result<(), String> {
    if !u.username().is_empty() || u.password().is_some() {
        return Err("the URL holds credentials; they come from the environment".into());
    }
    if !u.path().trim_matches('/').is_empty() || u.query().is_some() || u.fragment().is_some() {
        return Err(format!(
            "a vault address takes no path or query; write {form}"
        ));
    }
    Ok(())
}

/// `scheme://host[:port]`; plain HTTP only to a loopback host.
fn endpoint(u: &url::Url, plain: bool) -> Result<String, String> {
    let Some(host) = u.host_str().filter(|h| !h.is_empty()) else {
        return Err("the URL names no host".into());
    };
    if plain {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare == "localhost"
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!("plain HTTP to {host} would send the vault token across the network in clear; use the https form (vault:// or keyvault+https://), or a loopback address"));
        }
    }
    let scheme = if plain { "http" } else { "https" };
    Ok(match u.port() {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::VaultUrl;

    #[test]
    fn every_form_reads_and_prints_back() {
        for (text, kind) in [
            ("https://kv-qc.vault.azure.net", "keyvault"),
            ("keyvault+http://127.0.0.1:8443", "keyvault"),
            ("keyvault+https://kv.internal.example", "keyvault"),
            ("aws-sm://me-central-1", "secretsmanager"),
            ("vault://bao.dc1.example:8200/secret", "kv"),
            ("vault+http://127.0.0.1:18200/kv/team-a", "kv"),
        ] {
            let u = VaultUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(u.kind(), kind, "{text}");
            assert_eq!(u.to_string(), text, "{text}");
        }
        assert_eq!(
            VaultUrl::parse("https://KV-QC.vault.azure.net/").map(|u| u.to_string()),
            Ok("https://kv-qc.vault.azure.net".to_string())
        );
        assert_eq!(
            VaultUrl::parse("vault://bao.example/secret"),
            Ok(VaultUrl::Kv {
                endpoint: "https://bao.example:8200".into(),
                mount: "secret".into()
            })
        );
    }

    #[test]
    fn bad_urls_say_why() {
        for (text, want) in [
            ("https://example.com", "not a Key Vault address"),
            ("vault+http://10.0.0.5:8200/secret", "in clear"),
            ("keyvault+http://kv.example:80", "in clear"),
            ("vault://bao.example:8200", "names no mount"),
            ("vault://bao.example:8200/a/../b", "'..'"),
            ("vault://root:pw@bao.example/secret", "credentials"),
            ("aws-sm://", "AWS region"),
            ("aws-sm://Me_Central", "AWS region"),
            ("s3://bucket", "not a vault scheme"),
            ("kv-qc", "not a vault URL"),
            ("https://kv.vault.azure.net/secrets/x", "no path"),
        ] {
            let e = VaultUrl::parse(text).expect_err(text);
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains("pw"), "{text}: {e}");
        }
    }
}
