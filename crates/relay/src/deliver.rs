//! Sending a batch to a target and reading the answer: delivered, refused as bad data
//! (not retried, not a reason to fail over: the batch goes to the dead letters), or
//! failed (retried with backoff, and counted towards a failover).

use georep_core::{RelayTarget, TargetKind};

use crate::events;
use crate::outbox::Stored;

/// What a delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered,
    /// The target says the data is bad (400, 413, 422): retrying cannot help.
    BadData(String),
    /// Unreachable, timed out, throttled, a server error, or credentials refused.
    Failed(String),
}

/// An HTTP client for every target of a relay.
#[derive(Clone)]
pub(crate) struct Sender {
    http: reqwest::Client,
}

use georep_core::redact_url as shown;

/// At most 300 bytes of a response, for a reason.
fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)]);
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Sender {
    pub(crate) fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }

    /// Where a batch is posted: Event Grid wants its `api-version`.
    fn endpoint(t: &RelayTarget) -> String {
        if t.kind == TargetKind::EventGrid && !t.url.contains("api-version=") {
            let sep = if t.url.contains('?') { '&' } else { '?' };
            format!("{}{sep}api-version=2018-01-01", t.url)
        } else {
            t.url.clone()
        }
    }

    /// Posts `batch` (one schema) to `t`.
    pub(crate) async fn send(&self, t: &RelayTarget, batch: &[Stored]) -> Outcome {
        let Some(first) = batch.first() else {
            return Outcome::Delivered;
        };
        let bodies: Vec<&[u8]> = batch.iter().map(|e| e.body.as_slice()).collect();
        let (body, ct) = events::batch(&first.schema, &bodies);
        let mut req = self
            .http
            .post(Self::endpoint(t))
            .timeout(t.timeout)
            .header(reqwest::header::CONTENT_TYPE, ct)
            .body(body);
        if let Some(key) = &t.key {
            req = match t.kind {
                TargetKind::EventGrid => req.header("aeg-sas-key", key),
                TargetKind::Webhook => req.bearer_auth(key),
            };
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if resp.status().is_success() {
                    return Outcome::Delivered;
                }
                let text = resp.bytes().await.map(|b| excerpt(&b)).unwrap_or_default();
                let reason = format!("HTTP {status} from {}: {text}", shown(&t.url));
                if matches!(status, 400 | 413 | 422) {
                    Outcome::BadData(reason)
                } else {
                    Outcome::Failed(reason)
                }
            }
            Err(e) => Outcome::Failed(format!(
                "{} {}: {}",
                if e.is_timeout() {
                    "timed out after"
                } else {
                    "cannot reach"
                },
                if e.is_timeout() {
                    format!("{:?}", t.timeout)
                } else {
                    shown(&t.url)
                },
                e.without_url()
            )),
        }
    }

    /// Whether `t` answers: its health URL with 2xx, or without one, a GET on its
    /// endpoint with its key, answered by anything but a server error, throttling, or
    /// a refused key (a GET on a publish endpoint is refused, by a server that is up).
    pub(crate) async fn probe(&self, t: &RelayTarget) -> Result<(), String> {
        let url = t.health.clone().unwrap_or_else(|| Self::endpoint(t));
        let mut req = self.http.get(&url).timeout(t.timeout);
        if let (None, Some(key)) = (&t.health, &t.key) {
            req = match t.kind {
                TargetKind::EventGrid => req.header("aeg-sas-key", key),
                TargetKind::Webhook => req.bearer_auth(key),
            };
        }
        match req.send().await {
            Ok(r) => {
                let s = r.status();
                let ok = if t.health.is_some() {
                    s.is_success()
                } else {
                    !s.is_server_error() && !matches!(s.as_u16(), 401 | 403 | 429)
                };
                if ok {
                    Ok(())
                } else {
                    Err(format!("HTTP {} from {}", s.as_u16(), shown(&url)))
                }
            }
            Err(e) => Err(format!("cannot reach {}: {}", shown(&url), e.without_url())),
        }
    }
}

impl Default for Sender {
    fn default() -> Self {
        Self::new()
    }
}
