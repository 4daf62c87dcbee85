//! Mapping backend errors to [`StorageError`]: each names the store, says what to fix
//! (a missing container, the credentials to set), tells retryable causes from others,
//! and has its secrets scrubbed.

use georep_core::StoreUrl;

use super::scrub::scrub_query_secrets;
use super::Store;
use crate::error::StorageError;

impl Store {
    pub(crate) fn error_mapper(&self) -> ErrorMapper {
        ErrorMapper {
            store: self.shown.clone(),
            secrets: self.secrets.clone(),
            container: match &self.url {
                StoreUrl::Azure { container, .. } => Some(("container", container.clone())),
                StoreUrl::S3 { bucket, .. } | StoreUrl::Gcs { bucket, .. } => {
                    Some(("bucket", bucket.clone()))
                }
                _ => None,
            },
            env_hint: match &self.url {
                StoreUrl::Azure { .. } => "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN",
                StoreUrl::S3 { .. } => "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                StoreUrl::Gcs { .. } => "GOOGLE_APPLICATION_CREDENTIALS",
                _ => "the file permissions",
            },
        }
    }
}

/// Turns backend errors into `StorageError`s that name the store, and scrubs secrets.
#[derive(Debug, Clone)]
pub(crate) struct ErrorMapper {
    store: String,
    secrets: Vec<String>,
    container: Option<(&'static str, String)>,
    env_hint: &'static str,
}

impl ErrorMapper {
    pub(crate) fn map(&self, e: object_store::Error) -> StorageError {
        let text = self.scrub(&chain_text(&e));
        let store = self.store.clone();
        let container_missing = [
            "ContainerNotFound",
            "NoSuchBucket",
            "The specified container does not exist",
            "bucket does not exist",
        ]
        .iter()
        .any(|m| text.contains(m));
        if container_missing {
            if let Some((what, name)) = &self.container {
                return StorageError::ContainerNotFound {
                    store,
                    what,
                    name: name.clone(),
                };
            }
        }
        match &e {
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                store,
                detail: short(&text),
            },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => StorageError::PermissionDenied {
                store,
                detail: short(&text),
                env: self.env_hint,
            },
            _ => {
                if let Some(kind) = http_kind(&e) {
                    use object_store::client::HttpErrorKind as K;
                    if matches!(kind, K::Connect | K::Timeout | K::Request) {
                        return StorageError::Unreachable {
                            store,
                            detail: unreachable_detail(&e, &text),
                        };
                    }
                }
                let status = retry_status(&e);
                if matches!(status, Some(401 | 403)) {
                    return StorageError::PermissionDenied {
                        store,
                        detail: short(&text),
                        env: self.env_hint,
                    };
                }
                let retryable = status.is_none_or(|s| s >= 500 || s == 429 || s == 408);
                StorageError::Backend {
                    store,
                    detail: short(&text),
                    retryable,
                }
            }
        }
    }

    pub(crate) fn store(&self) -> &str {
        &self.store
    }

    /// An HTTP error status from a request georep signed and sent itself.
    pub(crate) fn map_status(&self, status: u16, body: &str) -> StorageError {
        let text = self.scrub(body);
        let store = self.store.clone();
        let container_missing = [
            "ContainerNotFound",
            "NoSuchBucket",
            "The specified container does not exist",
        ]
        .iter()
        .any(|m| text.contains(m));
        if status == 404 && container_missing {
            if let Some((what, name)) = &self.container {
                return StorageError::ContainerNotFound {
                    store,
                    what,
                    name: name.clone(),
                };
            }
        }
        let detail = short(&format!("HTTP {status}: {}", text.trim()));
        match status {
            401 | 403 => StorageError::PermissionDenied {
                store,
                detail,
                env: self.env_hint,
            },
            404 => StorageError::NotFound { store, detail },
            _ => StorageError::Backend {
                store,
                detail,
                retryable: status >= 500 || status == 429 || status == 408,
            },
        }
    }

    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            out = out.replace(s.as_str(), "***");
        }
        scrub_query_secrets(&out)
    }
}

fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cur = s.source();
    }
    text
}

fn http_kind(e: &(dyn std::error::Error + 'static)) -> Option<object_store::client::HttpErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = cur {
        if let Some(h) = s.downcast_ref::<object_store::client::HttpError>() {
            return Some(h.kind());
        }
        cur = s.source();
    }
    None
}

/// The HTTP status in an object_store error's text ("... status code: 503 ..."); the
/// retry error type that holds it is private.
fn retry_status(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let text = chain_text(e);
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// The root cause of a transport failure and how long georep kept trying, instead of
/// the whole chain of wrappers.
fn unreachable_detail(e: &(dyn std::error::Error + 'static), text: &str) -> String {
    let mut root = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        root = s.to_string();
        cur = s.source();
    }
    // object_store says "... in 1.067797403s, after 6 retries, max_retries: ...".
    let elapsed = text
        .split(" in ")
        .nth(1)
        .and_then(|t| t.split("s,").next())
        .and_then(|t| t.parse::<f64>().ok());
    let retries = text
        .split(", after ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse::<u32>().ok());
    match (retries, elapsed) {
        (Some(n), Some(secs)) => {
            short(&format!("{root} (gave up after {n} retries in {secs:.1}s)"))
        }
        _ => short(&root),
    }
}

/// Keeps error text to one readable line.
fn short(text: &str) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.len() > 400 {
        let mut cut = 400;
        while !one_line.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &one_line[..cut])
    } else {
        one_line
    }
}
