//! Store URLs: the one parser for every place a store is named (CLI arguments, config).
//!
//! | form | backend |
//! | --- | --- |
//! | `/abs/path`, `./rel/path`, `file:///abs/path` | local filesystem |
//! | `az://container/prefix`, `https://ACCOUNT.blob.core.windows.net/container/prefix` | Azure Blob |
//! | `http(s)://HOST:PORT/ACCOUNT/container/prefix` | Azure-compatible endpoint (Azurite) |
//! | `s3://bucket/prefix` | S3 and S3-compatible |
//! | `gs://bucket/prefix` | Google Cloud Storage |
//! | `memory://name/prefix` | in-process store, for tests |
//!
//! Credentials are never part of a store URL: a URL carrying a query string (a SAS) or
//! a password is refused, so nothing georep prints can leak one.

use std::fmt;
use std::path::PathBuf;

/// A parsed store location. `prefix` never starts or ends with `/`; empty means the
/// whole container or bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Local {
        path: PathBuf,
    },
    Azure {
        /// From the URL's host or path; `None` means `AZURE_STORAGE_ACCOUNT_NAME`.
        account: Option<String>,
        container: String,
        prefix: String,
        /// `scheme://host:port/account` for a custom endpoint such as Azurite.
        endpoint: Option<String>,
    },
    S3 {
        bucket: String,
        prefix: String,
    },
    Gcs {
        bucket: String,
        prefix: String,
    },
    Memory {
        name: String,
        prefix: String,
    },
}

/// Why a store URL was refused; every message says what is accepted instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreUrlError {
    #[error("empty store URL: give a local path, az://, s3://, gs://, http(s)://HOST/ACCOUNT/CONTAINER or memory://")]
    Empty,
    #[error("unsupported scheme '{0}://': use a local path, file://, az://, https://ACCOUNT.blob.core.windows.net/, http(s)://HOST:PORT/ACCOUNT/CONTAINER, s3://, gs:// or memory://")]
    UnknownScheme(String),
    #[error("'{url}' names no {what}: write it as {example}")]
    MissingPart {
        url: String,
        what: &'static str,
        example: &'static str,
    },
    #[error("invalid {what} name '{name}' in '{url}': {rule}")]
    BadName {
        url: String,
        what: &'static str,
        name: String,
        rule: &'static str,
    },
    #[error("store URL '{0}' carries credentials (a query string, or user or password before '@'); remove them: credentials come only from the environment ({ENV_CREDENTIALS})")]
    CredentialsInUrl(String),
    #[error("file URL '{0}' has a host; use file:///absolute/path")]
    FileHost(String),
    #[error("invalid URL '{url}': {reason}")]
    Invalid { url: String, reason: String },
}

/// Where credentials come from instead, named in the refusal of a URL that carries some.
const ENV_CREDENTIALS: &str = "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; GOOGLE_APPLICATION_CREDENTIALS";

impl StoreUrl {
    pub fn parse(input: &str) -> Result<Self, StoreUrlError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(StoreUrlError::Empty);
        }
        if let Some((scheme, rest)) = input.split_once("://") {
            // `s3://KEY:SECRET@bucket`: everything up to the last '@' of the host part
            // is a credential; refuse it before any message can echo the host.
            let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            if let Some(at) = rest[..host_end].rfind('@') {
                let cut = rest.find(['?', '#']).unwrap_or(rest.len());
                return Err(StoreUrlError::CredentialsInUrl(format!(
                    "{scheme}://{}",
                    &rest[at + 1..cut]
                )));
            }
            // A query or fragment is where SAS tokens and signatures travel: refuse it
            // for every scheme, and never echo what follows it.
            let lower = scheme.to_ascii_lowercase();
            if lower != "file" && (rest.contains('?') || rest.contains('#')) {
                let cut = rest.find(['?', '#']).unwrap_or(rest.len());
                return Err(StoreUrlError::CredentialsInUrl(format!(
                    "{scheme}://{}",
                    &rest[..cut]
                )));
            }
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            return Ok(Self::Local {
                path: PathBuf::from(input),
            });
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(StoreUrlError::FileHost(input.to_string()));
                }
                Ok(Self::Local {
                    path: PathBuf::from(percent_decode(rest, input)?),
                })
            }
            "az" | "azure" => {
                let (container, prefix) = split_first(rest);
                let container = container_name(input, container)?;
                Ok(Self::Azure {
                    account: None,
                    container,
                    prefix: clean_prefix(prefix),
                    endpoint: None,
                })
            }
            "s3" => {
                let (bucket, prefix) = split_first(rest);
                Ok(Self::S3 {
                    bucket: bucket_name(input, bucket, "s3://bucket/prefix")?,
                    prefix: clean_prefix(prefix),
                })
            }
            "gs" => {
                let (bucket, prefix) = split_first(rest);
                Ok(Self::Gcs {
                    bucket: bucket_name(input, bucket, "gs://bucket/prefix")?,
                    prefix: clean_prefix(prefix),
                })
            }
            "memory" => {
                let (name, prefix) = split_first(rest);
                let name = if name.is_empty() { "default" } else { name };
                Ok(Self::Memory {
                    name: name.to_string(),
                    prefix: clean_prefix(prefix),
                })
            }
            s @ ("http" | "https") => parse_http(input, s),
            other => Err(StoreUrlError::UnknownScheme(other.to_string())),
        }
    }

    /// The scheme-like name of the backend, for messages and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Local { .. } => "local",
            Self::Azure { .. } => "azure",
            Self::S3 { .. } => "s3",
            Self::Gcs { .. } => "gcs",
            Self::Memory { .. } => "memory",
        }
    }

    /// Whether one location contains the other, so a copy would read its own output
    /// (`sync /data /data/backup`) or a sync would delete its own source. Relative local
    /// paths are compared after joining them to `cwd`.
    pub fn overlaps(&self, other: &StoreUrl, cwd: &std::path::Path) -> bool {
        use StoreUrl as U;
        let nested = |a: &str, b: &str| {
            a.is_empty()
                || b.is_empty()
                || a == b
                || a.starts_with(&format!("{b}/"))
                || b.starts_with(&format!("{a}/"))
        };
        match (self, other) {
            (U::Local { path: a }, U::Local { path: b }) => {
                let (a, b) = (normalize(&cwd.join(a)), normalize(&cwd.join(b)));
                a.starts_with(&b) || b.starts_with(&a)
            }
            (
                U::Azure {
                    account: a1,
                    container: c1,
                    prefix: p1,
                    endpoint: e1,
                },
                U::Azure {
                    account: a2,
                    container: c2,
                    prefix: p2,
                    endpoint: e2,
                },
            ) => {
                // `az://` leaves the account to the environment: it may be the same one.
                let same_account = a1.is_none() || a2.is_none() || (a1 == a2 && e1 == e2);
                same_account && c1 == c2 && nested(p1, p2)
            }
            (
                U::S3 {
                    bucket: b1,
                    prefix: p1,
                },
                U::S3 {
                    bucket: b2,
                    prefix: p2,
                },
            )
            | (
                U::Gcs {
                    bucket: b1,
                    prefix: p1,
                },
                U::Gcs {
                    bucket: b2,
                    prefix: p2,
                },
            )
            | (
                U::Memory {
                    name: b1,
                    prefix: p1,
                },
                U::Memory {
                    name: b2,
                    prefix: p2,
                },
            ) => b1 == b2 && nested(p1, p2),
            _ => false,
        }
    }

    /// The same store one folder down: `folder` (relative, `/`-separated, no `..`) is
    /// added to the path or the key prefix. For stores laid out in folders, such as a
    /// backup repository's `data/`, `index/` and `snapshots/`.
    pub fn join(&self, folder: &str) -> Result<Self, StoreUrlError> {
        let folder = folder.trim_matches('/');
        if folder.is_empty()
            || folder
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(StoreUrlError::MissingPart {
                url: format!("{self}/{folder}"),
                what: "folder below the store",
                example: "a relative folder such as data/ab",
            });
        }
        let add = |prefix: &str| {
            if prefix.is_empty() {
                folder.to_string()
            } else {
                format!("{prefix}/{folder}")
            }
        };
        let mut out = self.clone();
        match &mut out {
            Self::Local { path } => *path = path.join(folder),
            Self::Azure { prefix, .. }
            | Self::S3 { prefix, .. }
            | Self::Gcs { prefix, .. }
            | Self::Memory { prefix, .. } => *prefix = add(prefix),
        }
        Ok(out)
    }

    /// The key prefix inside the container or bucket (empty for local paths).
    pub fn prefix(&self) -> &str {
        match self {
            Self::Local { .. } => "",
            Self::Azure { prefix, .. }
            | Self::S3 { prefix, .. }
            | Self::Gcs { prefix, .. }
            | Self::Memory { prefix, .. } => prefix,
        }
    }
}

/// The canonical form; it never contains a secret because a parsed URL never holds one.
impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (base, prefix) = match self {
            Self::Local { path } => return write!(f, "{}", path.display()),
            Self::Azure {
                account,
                container,
                prefix,
                endpoint,
            } => {
                let base = match (endpoint, account) {
                    (Some(e), _) => format!("{e}/{container}"),
                    (None, Some(a)) => format!("https://{a}.blob.core.windows.net/{container}"),
                    (None, None) => format!("az://{container}"),
                };
                (base, prefix)
            }
            Self::S3 { bucket, prefix } => (format!("s3://{bucket}"), prefix),
            Self::Gcs { bucket, prefix } => (format!("gs://{bucket}"), prefix),
            Self::Memory { name, prefix } => (format!("memory://{name}"), prefix),
        };
        if prefix.is_empty() {
            write!(f, "{base}")
        } else {
            write!(f, "{base}/{prefix}")
        }
    }
}

/// Removes `.` and resolves `..` lexically (the destination may not exist yet, so the
/// filesystem cannot canonicalize it).
fn normalize(p: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn parse_http(input: &str, scheme: &str) -> Result<StoreUrl, StoreUrlError> {
    let url = url::Url::parse(input).map_err(|e| StoreUrlError::Invalid {
        // Cut at '@' too: a password may sit in the authority.
        url: input
            .rsplit_once('@')
            .map_or(input, |(_, host)| host)
            .to_string(),
        reason: e.to_string(),
    })?;
    if url.query().is_some() || url.password().is_some() {
        // Never echo the input: it holds the secret.
        let mut shown = url.clone();
        shown.set_query(None);
        let _ = shown.set_password(None);
        return Err(StoreUrlError::CredentialsInUrl(shown.to_string()));
    }
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let path = percent_decode(url.path().trim_start_matches('/'), input)?;
    if let Some(account) = host.strip_suffix(".blob.core.windows.net") {
        let (container, prefix) = split_first(&path);
        return Ok(StoreUrl::Azure {
            account: Some(account.to_string()),
            container: container_name(input, container)?,
            prefix: clean_prefix(prefix),
            endpoint: None,
        });
    }
    // Path-style Azure endpoint (Azurite, Azure Stack): /ACCOUNT/CONTAINER/prefix.
    let (account, rest) = split_first(&path);
    if account.is_empty() {
        return Err(StoreUrlError::MissingPart {
            url: input.to_string(),
            what: "account",
            example: "http://127.0.0.1:10000/devstoreaccount1/container/prefix",
        });
    }
    let (container, prefix) = split_first(rest);
    let container = container_name(input, container)?;
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    Ok(StoreUrl::Azure {
        account: Some(account.to_string()),
        container,
        prefix: clean_prefix(prefix),
        endpoint: Some(format!("{scheme}://{host}{port}/{account}")),
    })
}

fn split_first(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches('/');
    s.split_once('/').unwrap_or((s, ""))
}

fn clean_prefix(p: &str) -> String {
    p.trim_matches('/').to_string()
}

fn percent_decode(s: &str, input: &str) -> Result<String, StoreUrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => {
                    return Err(StoreUrlError::Invalid {
                        url: input.to_string(),
                        reason: "bad %-escape".into(),
                    })
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| StoreUrlError::Invalid {
        url: input.to_string(),
        reason: "%-escapes do not decode to UTF-8".into(),
    })
}

fn container_name(url: &str, name: &str) -> Result<String, StoreUrlError> {
    if name.is_empty() {
        return Err(StoreUrlError::MissingPart {
            url: url.to_string(),
            what: "container",
            example: "az://container/prefix",
        });
    }
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok || name == "$root" || name == "$web" {
        Ok(name.to_string())
    } else {
        Err(StoreUrlError::BadName {
            url: url.to_string(),
            what: "container",
            name: name.to_string(),
            rule: "Azure container names are 3-63 lowercase letters, digits and single hyphens",
        })
    }
}

fn bucket_name(url: &str, name: &str, example: &'static str) -> Result<String, StoreUrlError> {
    if name.is_empty() {
        return Err(StoreUrlError::MissingPart {
            url: url.to_string(),
            what: "bucket",
            example,
        });
    }
    let ok = (3..=63).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
        });
    if ok {
        Ok(name.to_string())
    } else {
        Err(StoreUrlError::BadName {
            url: url.to_string(),
            what: "bucket",
            name: name.to_string(),
            rule: "bucket names are 3-63 lowercase letters, digits, dots and hyphens",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn az(account: Option<&str>, c: &str, p: &str, e: Option<&str>) -> StoreUrl {
        StoreUrl::Azure {
            account: account.map(str::to_string),
            container: c.into(),
            prefix: p.into(),
            endpoint: e.map(str::to_string),
        }
    }

    #[test]
    fn parses_every_form() {
        let cases: Vec<(&str, StoreUrl, &str)> = vec![
            (
                "/srv/dr",
                StoreUrl::Local {
                    path: "/srv/dr".into(),
                },
                "/srv/dr",
            ),
            (
                "./rel/x",
                StoreUrl::Local {
                    path: "./rel/x".into(),
                },
                "./rel/x",
            ),
            (
                "file:///srv/a%20b",
                StoreUrl::Local {
                    path: "/srv/a b".into(),
                },
                "/srv/a b",
            ),
            ("az://photos", az(None, "photos", "", None), "az://photos"),
            (
                "az://photos/2024/jan/",
                az(None, "photos", "2024/jan", None),
                "az://photos/2024/jan",
            ),
            (
                "https://acct.blob.core.windows.net/photos/x",
                az(Some("acct"), "photos", "x", None),
                "https://acct.blob.core.windows.net/photos/x",
            ),
            (
                "s3://bkt/p/q",
                StoreUrl::S3 {
                    bucket: "bkt".into(),
                    prefix: "p/q".into(),
                },
                "s3://bkt/p/q",
            ),
            (
                "gs://bkt",
                StoreUrl::Gcs {
                    bucket: "bkt".into(),
                    prefix: "".into(),
                },
                "gs://bkt",
            ),
            (
                "memory://t1/k",
                StoreUrl::Memory {
                    name: "t1".into(),
                    prefix: "k".into(),
                },
                "memory://t1/k",
            ),
        ];
        for (input, want, shown) in cases {
            let got = StoreUrl::parse(input).expect(input);
            assert_eq!(got, want, "{input}");
            assert_eq!(got.to_string(), shown, "{input}");
        }
        let got =
            StoreUrl::parse("http://127.0.0.1:10000/devstoreaccount1/c1x/a%20b").expect("azurite");
        assert_eq!(
            got,
            az(
                Some("devstoreaccount1"),
                "c1x",
                "a b",
                Some("http://127.0.0.1:10000/devstoreaccount1")
            )
        );
        assert_eq!(
            got.to_string(),
            "http://127.0.0.1:10000/devstoreaccount1/c1x/a b"
        );
    }

    #[test]
    fn refuses_bad_urls() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("ftp://x/y", "unsupported scheme 'ftp://'"),
            ("az://", "names no container"),
            ("az://Photos", "invalid container name 'Photos'"),
            ("s3://", "names no bucket"),
            ("s3://B", "invalid bucket name"),
            ("http://127.0.0.1:1/", "names no account"),
            ("http://127.0.0.1:1/acct", "names no container"),
            ("file://host/x", "has a host"),
        ];
        for (input, want) in cases {
            let err = StoreUrl::parse(input).expect_err(input).to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn overlap() {
        let cwd = std::path::Path::new("/work");
        let cases = [
            ("/data", "/data/backup", true),
            ("/data/backup", "/data", true),
            ("./x", "/work/x/y", true),
            ("/data", "/data2", false),
            ("/a/../data", "/data", true),
            ("az://c1x/a", "az://c1x/a/b", true),
            ("az://c1x/a", "az://c1x/ab", false),
            ("az://c1x", "az://c2x", false),
            (
                "https://acct.blob.core.windows.net/c1x/site",
                "az://c1x",
                true,
            ),
            ("s3://bkt/a", "s3://bkt", true),
            ("s3://bkt/a", "gs://bkt/a", false),
            ("memory://m/a", "memory://m/b", false),
        ];
        for (a, b, want) in cases {
            let (ua, ub) = (StoreUrl::parse(a).expect(a), StoreUrl::parse(b).expect(b));
            assert_eq!(ua.overlaps(&ub, cwd), want, "{a} vs {b}");
        }
    }

    #[test]
    fn never_echoes_a_sas() {
        let err = StoreUrl::parse("https://acct.blob.core.windows.net/c1x?sv=2022&sig=S3CR3T")
            .expect_err("sas refused")
            .to_string();
        assert!(!err.contains("S3CR3T"), "{err}");
        assert!(err.contains("AZURE_STORAGE_SAS_TOKEN"), "{err}");
        for url in [
            "az://c1x/p?sv=1&sig=S3CR3T",
            "s3://bkt/p?X-Amz-Signature=S3CR3T",
            "gs://bkt#S3CR3T",
            "https://user:S3CR3T@[bad/",
        ] {
            let err = StoreUrl::parse(url).expect_err(url).to_string();
            assert!(!err.contains("S3CR3T"), "{url}: {err}");
        }
    }

    #[test]
    fn never_echoes_credentials_in_the_host_part() {
        let cases: &[(&str, &str)] = &[
            ("s3://AKIAEXAMPLE:S3CR3T@bucket/p", "'s3://bucket/p'"),
            ("s3://AKIAEXAMPLE:S3CR3T@B/p", "'s3://B/p'"),
            ("gs://S3CR3T@bkt", "'gs://bkt'"),
            ("az://acct:S3CR3T@photos/x", "'az://photos/x'"),
            ("az://a:b@c:S3CR3T@photos", "'az://photos'"),
            ("file://user:S3CR3T@/srv/x", "'file:///srv/x'"),
            ("file://S3CR3T@host/srv/x", "'file://host/srv/x'"),
            ("memory://S3CR3T@m", "'memory://m'"),
            (
                "http://u:S3CR3T@127.0.0.1:10000/acct/c1x",
                "'http://127.0.0.1:10000/acct/c1x'",
            ),
            (
                "https://AKIA:S3CR3T@acct.blob.core.windows.net/c1x?sig=S3CR3T",
                "'https://acct.blob.core.windows.net/c1x'",
            ),
            ("s3://AKIAEXAMPLE%3AS3CR3T@bucket", "'s3://bucket'"),
        ];
        for (url, shown) in cases {
            let err = StoreUrl::parse(url).expect_err(url).to_string();
            assert!(
                !err.contains("S3CR3T") && !err.contains("AKIA"),
                "{url}: {err}"
            );
            assert!(err.contains(shown), "{url}: {err}");
            for var in [
                "AWS_SECRET_ACCESS_KEY",
                "AZURE_STORAGE_ACCOUNT_KEY",
                "GOOGLE_APPLICATION_CREDENTIALS",
            ] {
                assert!(err.contains(var), "{url}: {err}");
            }
        }
        // An '@' in the key prefix is not a credential.
        assert_eq!(
            StoreUrl::parse("s3://bkt/user@example.com/x").expect("@ in the prefix"),
            StoreUrl::S3 {
                bucket: "bkt".into(),
                prefix: "user@example.com/x".into()
            }
        );
    }

    #[test]
    fn join_goes_one_folder_down_and_never_up() {
        let s3 = StoreUrl::parse("s3://bkt/repo").expect("url");
        assert_eq!(s3.join("data/ab").expect("join").prefix(), "repo/data/ab");
        let bare = StoreUrl::parse("s3://bkt").expect("url");
        assert_eq!(bare.join("/index/").expect("join").prefix(), "index");
        let local = StoreUrl::parse("/srv/repo").expect("url");
        assert_eq!(
            local.join("keys").expect("join"),
            StoreUrl::Local {
                path: "/srv/repo/keys".into()
            }
        );
        for bad in ["", "..", "a/../b", "a//b", "./a"] {
            assert!(s3.join(bad).is_err(), "{bad:?} accepted");
        }
    }
}
