//! Sending a batch to a target and reading the answer: delivered, refused as bad data
//! (not retried, not a reason to fail over: the batch goes to the dead letters), or
//! failed (retried with backoff, and counted towards a failover). One `Sender` serves
//! every target of a relay: HTTP APIs through one client, EventBridge signed with
//! SigV4 (object_store's signer), NATS JetStream through `async-nats` (one connection
//! per target, kept), archives through georep's stores.

use std::collections::HashMap;
use std::time::Duration;

use georep_core::{redact_url as shown, RelayTarget, TargetKind};
use georep_storage::Store;

use crate::encode;
use crate::outbox::Stored;

/// What a delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered,
    /// Some records (by place in the batch) refused as bad data, one by one, with why;
    /// the others delivered.
    Partial(Vec<(usize, String)>),
    /// The target says the data is bad (400, 413, 422): retrying cannot help.
    BadData(String),
    /// Unreachable, timed out, throttled, a server error, or credentials refused.
    Failed(String),
}

/// Most events and bytes in one delivery to a target of `kind` (`batch`: the relay's).
pub(crate) fn limits(kind: TargetKind, batch: u32) -> (u32, usize) {
    match kind {
        // PutEvents: at most 10 entries and 256 KB per call.
        TargetKind::EventBridge => (batch.min(10), 200 * 1024),
        // Fewer, bigger objects.
        TargetKind::Archive => (batch.max(5000), 16 << 20),
        TargetKind::Loki | TargetKind::Elasticsearch => (batch, 4 << 20),
        // Event Grid and Logs Ingestion take at most 1 MB per request.
        _ => (batch, crate::events::MAX_REQUEST - 2),
    }
}

/// AWS credentials from the standard environment, for EventBridge targets.
#[derive(Clone)]
struct Aws {
    key_id: String,
    secret: String,
    token: Option<String>,
}

/// Delivers to every target of one relay.
pub(crate) struct Sender {
    relay: String,
    /// The prefix of ids the relay makes: `RELAY-INSTANCE`.
    ids: String,
    http: reqwest::Client,
    /// `archive` targets' stores, by target name.
    archives: HashMap<String, Store>,
    aws: Option<Aws>,
    /// NATS connections, by target name; made on first use and kept (the client
    /// reconnects by itself).
    nats: tokio::sync::Mutex<HashMap<String, async_nats::jetstream::Context>>,
    /// Microsoft Entra credentials, for `logs` targets without a key.
    entra: Option<georep_http::entra::Source>,
    /// Their tokens, by target name.
    tokens: tokio::sync::Mutex<HashMap<String, std::sync::Arc<georep_http::entra::Tokens>>>,
}

/// At most 300 bytes of a response, for a reason.
fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)]);
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn with_query(url: &str, pair: &str) -> String {
    let key = pair.split('=').next().unwrap_or(pair);
    if url.contains(&format!("{key}=")) {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{pair}")
}

/// `base` with `path` appended to its path (query kept).
fn join(base: &str, path: &str) -> String {
    match base.split_once('?') {
        Some((b, q)) => format!("{}{path}?{q}", b.trim_end_matches('/')),
        None => format!("{}{path}", base.trim_end_matches('/')),
    }
}

impl Sender {
    pub(crate) fn new(relay: &str, ids: &str, archives: HashMap<String, Store>) -> Self {
        let aws = match (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Ok(key_id), Ok(secret)) if !key_id.is_empty() => Some(Aws {
                key_id,
                secret,
                token: std::env::var("AWS_SESSION_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
            }),
            _ => None,
        };
        Self {
            relay: relay.to_string(),
            ids: ids.to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            archives,
            aws,
            nats: tokio::sync::Mutex::new(HashMap::new()),
            entra: georep_http::entra::Source::from_env().ok(),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Whether `t` authenticates with tokens georep gets from Microsoft Entra.
    fn uses_entra(t: &RelayTarget) -> bool {
        t.kind == TargetKind::Logs && t.key.is_none()
    }

    /// `req` with the target's credentials: its key as its kind expects, or an Entra
    /// token.
    async fn auth(
        &self,
        t: &RelayTarget,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, String> {
        if !Self::uses_entra(t) {
            return Ok(Self::authorize(t, req));
        }
        let Some(c) = &self.entra else {
            return Err(georep_http::entra::Source::from_env()
                .err()
                .unwrap_or_default());
        };
        let tokens = self
            .tokens
            .lock()
            .await
            .entry(t.name.clone())
            .or_insert_with(|| {
                // The Logs Ingestion scope is `https://monitor.azure.com//.default`.
                std::sync::Arc::new(georep_http::entra::Tokens::new(
                    c.clone(),
                    "https://monitor.azure.com/",
                ))
            })
            .clone();
        let token = tokens.get(&self.http, t.timeout).await?;
        Ok(req.bearer_auth(token))
    }

    /// The target refused its credentials: a cached Entra token is fetched anew.
    async fn refused_credentials(&self, t: &RelayTarget) {
        if Self::uses_entra(t) {
            let tokens = self.tokens.lock().await.get(&t.name).cloned();
            if let Some(tk) = tokens {
                tk.drop_token().await;
            }
        }
    }

    /// Where a batch is posted.
    fn endpoint(t: &RelayTarget) -> String {
        match t.kind {
            TargetKind::EventGrid => with_query(&t.url, "api-version=2018-01-01"),
            TargetKind::Logs => with_query(&t.url, "api-version=2023-01-01"),
            TargetKind::Elasticsearch => join(&t.url, "/_bulk"),
            _ => t.url.clone(),
        }
    }

    /// The target's key, sent as its API expects.
    fn authorize(t: &RelayTarget, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (&t.key, t.kind) {
            (None, _) => req,
            (Some(key), TargetKind::EventGrid) => req.header("aeg-sas-key", key),
            (Some(key), TargetKind::Elasticsearch) => {
                req.header(reqwest::header::AUTHORIZATION, format!("ApiKey {key}"))
            }
            (Some(key), _) => req.bearer_auth(key),
        }
    }

    /// Posts `batch` (one schema) to `t`.
    pub(crate) async fn send(&self, t: &RelayTarget, batch: &[Stored]) -> Outcome {
        if batch.is_empty() {
            return Outcome::Delivered;
        }
        let r = &self.relay;
        if t.kind == TargetKind::Webhook && t.binary {
            return self.binary(t, batch).await;
        }
        let (body, ct) = match t.kind {
            TargetKind::EventGrid | TargetKind::Webhook => encode::events_body(batch),
            TargetKind::Logs => (encode::monitor_body(r, batch), "application/json"),
            TargetKind::Loki => (encode::loki_body(r, batch), "application/json"),
            TargetKind::Elasticsearch => (
                encode::bulk_body(r, &self.ids, batch),
                "application/x-ndjson",
            ),
            TargetKind::EventBridge => return self.eventbridge(t, batch).await,
            TargetKind::Nats => return self.nats(t, batch).await,
            TargetKind::Archive => return self.archive(t, batch).await,
        };
        let req = self
            .http
            .post(Self::endpoint(t))
            .timeout(t.timeout)
            .header(reqwest::header::CONTENT_TYPE, ct)
            .body(body);
        let req = match self.auth(t, req).await {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(e),
        };
        let (status, text) = match req.send().await {
            Ok(resp) => (
                resp.status().as_u16(),
                resp.bytes().await.unwrap_or_default(),
            ),
            Err(e) => return Outcome::Failed(Self::unreachable(t, e)),
        };
        if status == 401 {
            self.refused_credentials(t).await;
        }
        if (200..300).contains(&status) {
            return match t.kind {
                TargetKind::Elasticsearch => bulk_outcome(&text, batch.len()),
                _ => Outcome::Delivered,
            };
        }
        let reason = format!("HTTP {status} from {}: {}", shown(&t.url), excerpt(&text));
        if matches!(status, 400 | 413 | 422) {
            Outcome::BadData(reason)
        } else {
            Outcome::Failed(reason)
        }
    }

    /// CloudEvents binary mode: one request per event, in order. A failure stops the
    /// batch (the events before it are sent again with it: at least once); an event
    /// refused as bad data is refused on its own.
    async fn binary(&self, t: &RelayTarget, batch: &[Stored]) -> Outcome {
        let mut bad = Vec::new();
        for (i, e) in batch.iter().enumerate() {
            let b = encode::binary(&self.relay, &self.ids, e);
            let mut req = self
                .http
                .post(&t.url)
                .timeout(t.timeout)
                .header(reqwest::header::CONTENT_TYPE, b.content_type)
                .body(b.body);
            for (k, v) in b.headers {
                req = req.header(k, v);
            }
            let req = Self::authorize(t, req);
            let (status, text) = match req.send().await {
                Ok(resp) => (
                    resp.status().as_u16(),
                    resp.bytes().await.unwrap_or_default(),
                ),
                Err(e) => return Outcome::Failed(Self::unreachable(t, e)),
            };
            if (200..300).contains(&status) {
                continue;
            }
            let reason = format!("HTTP {status} from {}: {}", shown(&t.url), excerpt(&text));
            if matches!(status, 400 | 413 | 422) {
                bad.push((i, reason));
            } else {
                return Outcome::Failed(reason);
            }
        }
        match bad.len() {
            0 => Outcome::Delivered,
            n if n == batch.len() => Outcome::BadData(bad.swap_remove(0).1),
            _ => Outcome::Partial(bad),
        }
    }

    /// Why a request got no answer (reqwest's message names the URL with its query:
    /// the URL is shown redacted instead).
    fn unreachable(t: &RelayTarget, e: reqwest::Error) -> String {
        if e.is_timeout() {
            format!("timed out after {:?}: {}", t.timeout, shown(&t.url))
        } else {
            format!("cannot reach {}: {}", shown(&t.url), e.without_url())
        }
    }

    /// EventBridge `PutEvents` (JSON 1.1, SigV4). Throttling, internal failures and
    /// refused credentials are failures; entries refused as malformed are bad data.
    async fn eventbridge(&self, t: &RelayTarget, batch: &[Stored]) -> Outcome {
        let bus = t.bus.as_deref().unwrap_or("default");
        let body = encode::eventbridge_body(&self.relay, bus, batch);
        let (status, text) = match self.aws_call(t, "AWSEvents.PutEvents", body).await {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(e),
        };
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&text).ok();
        let v = parsed.clone().unwrap_or_default();
        if status == 200 {
            let Some(entries) = parsed.as_ref().and_then(|v| v["Entries"].as_array()) else {
                return Outcome::Failed(format!(
                    "not a PutEvents answer from {}: {}",
                    shown(&t.url),
                    excerpt(&text)
                ));
            };
            if v["FailedEntryCount"].as_u64().unwrap_or(0) == 0 {
                return Outcome::Delivered;
            }
            let mut bad = Vec::new();
            for (i, e) in entries.iter().enumerate() {
                let Some(code) = e["ErrorCode"].as_str() else {
                    continue;
                };
                let why = format!(
                    "EventBridge refused the entry: {code} {}",
                    e["ErrorMessage"].as_str().unwrap_or_default()
                );
                // Throttling, internal failures and refused credentials pass: the
                // whole batch is sent again (EventBridge keeps no ids, so the entries
                // that went in are sent twice).
                let transient = [
                    "Throttl",
                    "InternalFailure",
                    "Unavailable",
                    "AccessDenied",
                    "NotAuthorized",
                    "Unrecognized",
                    "ExpiredToken",
                ];
                if transient.iter().any(|c| code.contains(c)) {
                    return Outcome::Failed(why);
                }
                bad.push((i, why));
            }
            return Outcome::Partial(bad);
        }
        let kind = v["__type"].as_str().unwrap_or_default();
        let reason = format!(
            "HTTP {status} from EventBridge {}: {} {}",
            shown(&t.url),
            kind.rsplit('#').next().unwrap_or(kind),
            v["message"]
                .as_str()
                .or(v["Message"].as_str())
                .unwrap_or_default()
        );
        if status == 400 && kind.ends_with("ValidationException") {
            Outcome::BadData(reason)
        } else {
            Outcome::Failed(reason)
        }
    }

    /// One signed AWS JSON 1.1 call: the status and the body.
    async fn aws_call(
        &self,
        t: &RelayTarget,
        target: &str,
        body: Vec<u8>,
    ) -> Result<(u16, bytes::Bytes), String> {
        use object_store::aws::{AwsAuthorizer, AwsCredential};
        let Some(aws) = &self.aws else {
            return Err(
                "no AWS credentials: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) for georep"
                    .into(),
            );
        };
        let cred = AwsCredential {
            key_id: aws.key_id.clone(),
            secret_key: aws.secret.clone(),
            token: aws.token.clone(),
        };
        let region = t.aws_region.as_deref().unwrap_or("us-east-1");
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri(&t.url)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", target)
            .body(object_store::client::HttpRequestBody::from(
                bytes::Bytes::from(body.clone()),
            ))
            .map_err(|e| format!("cannot build a request to {}: {e}", shown(&t.url)))?;
        AwsAuthorizer::new(&cred, "events", region)
            .try_authorize(&mut req, None)
            .map_err(|e| format!("cannot sign a request to {}: {e}", shown(&t.url)))?;
        let mut out = self.http.post(&t.url).timeout(t.timeout).body(body);
        for (k, v) in req.headers() {
            out = out.header(k, v);
        }
        match out.send().await {
            Ok(resp) => Ok((
                resp.status().as_u16(),
                resp.bytes().await.unwrap_or_default(),
            )),
            Err(e) => Err(Self::unreachable(t, e)),
        }
    }

    /// The JetStream context of a NATS target, connecting on first use.
    async fn jetstream(&self, t: &RelayTarget) -> Result<async_nats::jetstream::Context, String> {
        let mut conns = self.nats.lock().await;
        if let Some(js) = conns.get(&t.name) {
            return Ok(js.clone());
        }
        let mut opts = async_nats::ConnectOptions::new()
            .connection_timeout(t.timeout)
            .name(format!("georep relay {}", self.relay));
        if let Some(token) = &t.key {
            opts = opts.token(token.clone());
        }
        let client = tokio::time::timeout(t.timeout, opts.connect(t.url.as_str()))
            .await
            .map_err(|_| {
                format!(
                    "timed out after {:?} connecting to {}",
                    t.timeout,
                    shown(&t.url)
                )
            })?
            .map_err(|e| format!("cannot connect to NATS at {}: {e}", shown(&t.url)))?;
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(t.timeout);
        conns.insert(t.name.clone(), js.clone());
        Ok(js)
    }

    /// Publishes each event to the subject with its id as `Nats-Msg-Id` (the stream
    /// drops a redelivered one within its duplicate window), then waits for every
    /// acknowledgement.
    async fn nats(&self, t: &RelayTarget, batch: &[Stored]) -> Outcome {
        let js = match self.jetstream(t).await {
            Ok(js) => js,
            Err(e) => return Outcome::Failed(e),
        };
        let subject = t.subject.clone().unwrap_or_default();
        let mut acks = Vec::with_capacity(batch.len());
        let mut bad = Vec::new();
        use async_nats::jetstream::context::PublishErrorKind;
        for (i, e) in batch.iter().enumerate() {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", encode::msg_id(&self.ids, e).as_str());
            h.insert("Content-Type", "application/json");
            match js
                .publish_with_headers(subject.clone(), h, e.body.clone().into())
                .await
            {
                Ok(ack) => acks.push((i, ack)),
                Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    bad.push((
                        i,
                        format!(
                            "larger than the NATS server's max_payload ({})",
                            shown(&t.url)
                        ),
                    ));
                }
                Err(err) => return Outcome::Failed(nats_reason(t, &subject, &err.to_string())),
            }
        }
        for (i, ack) in acks {
            if let Err(err) = ack.await {
                let text = err.to_string();
                // The stream's own limit (max_msg_size): the record, not the server.
                if text.contains("maximum") && text.contains("size") {
                    bad.push((i, format!("refused by the stream: {text}")));
                    continue;
                }
                return Outcome::Failed(nats_reason(t, &subject, &text));
            }
        }
        if bad.is_empty() {
            Outcome::Delivered
        } else {
            bad.sort();
            Outcome::Partial(bad)
        }
    }

    /// Writes the batch as one gzip-compressed NDJSON object; a redelivery writes the
    /// same key again (objects appear whole or not at all).
    async fn archive(&self, t: &RelayTarget, batch: &[Stored]) -> Outcome {
        let Some(store) = self.archives.get(&t.name) else {
            return Outcome::Failed(format!("archive target '{}' has no store open", t.name));
        };
        let body = match encode::archive_body(batch) {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(format!("cannot compress a batch: {e}")),
        };
        let key = encode::archive_key(&self.relay, &t.name, batch);
        let reader = georep_storage::ObjectReader::from_bytes(body.into(), Default::default());
        match tokio::time::timeout(
            t.timeout.max(Duration::from_secs(30)),
            store.put(&key, reader, 8 << 20, 2),
        )
        .await
        {
            Ok(Ok(_)) => Outcome::Delivered,
            Ok(Err(e)) => Outcome::Failed(format!("cannot write {key}: {e}")),
            Err(_) => Outcome::Failed(format!("timed out writing {key}")),
        }
    }

    /// Whether `t` answers: its health URL with 2xx; without one, what its kind
    /// allows cheaply (a GET on the endpoint answered by anything but a server error,
    /// throttling or a refused key; Loki's `/ready`; Elasticsearch's cluster health;
    /// EventBridge `DescribeEventBus`; a NATS round trip; an archive store's HEAD).
    pub(crate) async fn probe(&self, t: &RelayTarget) -> Result<(), String> {
        if t.health.is_none() {
            match t.kind {
                TargetKind::EventBridge => {
                    let body = serde_json::json!({"Name": t.bus.as_deref().unwrap_or("default")});
                    let (status, text) = self
                        .aws_call(
                            t,
                            "AWSEvents.DescribeEventBus",
                            body.to_string().into_bytes(),
                        )
                        .await?;
                    return if status == 200 {
                        Ok(())
                    } else {
                        Err(format!(
                            "HTTP {status} from EventBridge {}: {}",
                            shown(&t.url),
                            excerpt(&text)
                        ))
                    };
                }
                TargetKind::Nats => {
                    let js = self.jetstream(t).await?;
                    return match tokio::time::timeout(t.timeout, js.query_account()).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(format!("JetStream at {}: {e}", shown(&t.url))),
                        Err(_) => Err(format!(
                            "JetStream at {} did not answer in {:?}",
                            shown(&t.url),
                            t.timeout
                        )),
                    };
                }
                TargetKind::Archive => {
                    let Some(store) = self.archives.get(&t.name) else {
                        return Err("no store open".into());
                    };
                    let key = format!("relays/{}/{}/.probe", self.relay, t.name);
                    return match tokio::time::timeout(t.timeout, store.head(&key)).await {
                        Ok(Ok(_) | Err(georep_storage::StorageError::NotFound { .. })) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("the store did not answer in {:?}", t.timeout)),
                    };
                }
                _ => {}
            }
        }
        let (url, strict) = match (&t.health, t.kind) {
            (Some(h), _) => (h.clone(), true),
            (None, TargetKind::Loki) => (t.url.replace("/loki/api/v1/push", "/ready"), true),
            (None, TargetKind::Elasticsearch) => (join(&t.url, "/_cluster/health"), true),
            (None, _) => (Self::endpoint(t), false),
        };
        let mut req = self.http.get(&url).timeout(t.timeout);
        if t.health.is_none() {
            req = self.auth(t, req).await?;
        }
        match req.send().await {
            Ok(r) => {
                let s = r.status();
                let ok = if strict {
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

fn nats_reason(t: &RelayTarget, subject: &str, e: &str) -> String {
    if e.contains("no stream") || e.contains("no responders") {
        format!("no JetStream stream takes subject '{subject}' at {}: create one (nats stream add --subjects {subject})", shown(&t.url))
    } else {
        format!("NATS at {}: {e}", shown(&t.url))
    }
}

/// A bulk answer: every item created, or already there (409 on `create`: a
/// redelivery); throttled or failing items are a failure (the batch is sent again, and
/// what went in answers 409 or is rewritten); items refused otherwise are bad data,
/// each on its own. An answer that does not account for every item is a failure.
fn bulk_outcome(text: &[u8], n: usize) -> Outcome {
    let v: serde_json::Value = match serde_json::from_slice(text) {
        Ok(v) => v,
        Err(_) => return Outcome::Failed(format!("not a bulk answer: {}", excerpt(text))),
    };
    let Some(items) = v["items"].as_array().filter(|i| i.len() == n) else {
        return Outcome::Failed(format!(
            "the bulk answer does not list the {n} items sent (is the URL an Elasticsearch endpoint?): {}",
            excerpt(text)
        ));
    };
    let (mut retry, mut bad) = (Vec::new(), Vec::new());
    for (i, item) in items.iter().enumerate() {
        let Some((_, r)) = item.as_object().and_then(|o| o.iter().next()) else {
            retry.push("an item without an answer".to_string());
            continue;
        };
        let status = r["status"].as_u64().unwrap_or(0);
        let why = format!(
            "Elasticsearch refused the item: {} {}: {}",
            status,
            r["error"]["type"].as_str().unwrap_or_default(),
            r["error"]["reason"].as_str().unwrap_or_default()
        );
        match status {
            200..=299 | 409 => {}
            400..=499 if status != 429 && status != 401 && status != 403 => bad.push((i, why)),
            _ => retry.push(why),
        }
    }
    if let Some(first) = retry.first() {
        Outcome::Failed(format!("{} items failed: {first}", retry.len()))
    } else if bad.is_empty() {
        Outcome::Delivered
    } else {
        Outcome::Partial(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_answers_separate_duplicates_retries_and_bad_data() {
        let ok = br#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":409,"error":{"type":"version_conflict_engine_exception"}}}]}"#;
        assert_eq!(bulk_outcome(ok, 2), Outcome::Delivered);
        let retry = br#"{"errors":true,"items":[{"create":{"status":400,"error":{"type":"x"}}},{"create":{"status":429,"error":{"type":"es_rejected_execution_exception"}}}]}"#;
        assert!(matches!(bulk_outcome(retry, 2), Outcome::Failed(r) if r.contains("es_rejected")));
        let bad = br#"{"errors":true,"items":[{"index":{"status":201}},{"index":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse"}}}]}"#;
        assert!(
            matches!(bulk_outcome(bad, 2), Outcome::Partial(b) if b.len() == 1 && b[0].0 == 1 && b[0].1.contains("mapper_parsing"))
        );
        assert!(matches!(bulk_outcome(b"<html>", 1), Outcome::Failed(_)));
        // An answer that does not account for every item (a proxy's `{}`) is no delivery.
        assert!(matches!(bulk_outcome(b"{}", 1), Outcome::Failed(_)));
        assert!(matches!(bulk_outcome(ok, 3), Outcome::Failed(_)));
        assert_eq!(
            join("http://es:9200/logs/?x=1", "/_bulk"),
            "http://es:9200/logs/_bulk?x=1"
        );
        assert_eq!(
            with_query("http://h/p?api-version=1", "api-version=2"),
            "http://h/p?api-version=1"
        );
        assert_eq!(
            with_query("http://h/p", "api-version=2"),
            "http://h/p?api-version=2"
        );
    }
}
