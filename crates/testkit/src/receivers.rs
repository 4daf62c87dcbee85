//! Stand-ins for receivers no server can be installed for here, each speaking its API's
//! contract (paths, auth headers, status codes, health endpoint):
//! - an Event Grid topic: `POST /api/events?api-version=2018-01-01` with `aeg-sas-key`
//!   (401 without the right key, 400 without `api-version`), the Event Grid schema (a
//!   JSON array of events with `id`, `subject`, `eventType`, `eventTime`) or
//!   CloudEvents 1.0 by content type, 200; `GET /healthz`;
//! - Azure Monitor's Logs Ingestion API: `POST /dataCollectionRules/{dcr}/streams/
//!   {stream}?api-version=2023-01-01` with a bearer token, a JSON array of objects
//!   (gzip or not), 204; 413 over 1 MB;
//! - Loki: `POST /loki/api/v1/push` (JSON streams), bearer when a key is set, 204;
//!   `GET /ready`;
//! - Elasticsearch: `POST /_bulk` and `/{index}/_bulk` with `Authorization: ApiKey`,
//!   NDJSON actions answered item by item (`create` of an `_id` the index has: 409;
//!   an action without an index refuses the whole request with 400),
//!   `GET /_cluster/health`.
//!
//! Tests can make one fail with a status, go down (connections refused) and come back
//! on the same port, answer slowly, or refuse records by id with 400.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::Value;

/// Which API a receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    #[default]
    EventGrid,
    Logs,
    Loki,
    Elasticsearch,
    /// CloudEvents over HTTP, binary mode: `POST /hook`, attributes as `ce-` headers.
    Webhook,
}

#[derive(Default)]
struct Inner {
    events: Vec<Value>,
    /// Per record: the stream (Logs), label set (Loki) or index (Elasticsearch).
    tags: Vec<String>,
    /// Elasticsearch `_id`s stored.
    es_ids: Vec<String>,
    /// Logs: the app registration tokens are issued to (client id, secret).
    client: Option<(String, String)>,
    /// Logs: tokens issued and still good.
    tokens: Vec<String>,
    /// Logs: every token issued.
    issued: u64,
    /// Answer every publish with this status.
    fail: Option<u16>,
    refuse: HashSet<String>,
    delay: Duration,
    requests: u64,
}

/// One fake topic, on a free loopback port, stopped on drop.
pub struct EventGridTopic {
    pub addr: SocketAddr,
    api: Api,
    key: String,
    inner: Arc<Mutex<Inner>>,
    server: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            std::thread::JoinHandle<()>,
        )>,
    >,
}

/// Any of the receivers (the name is the first one's).
pub type Receiver = EventGridTopic;

type Shared = (Arc<Mutex<Inner>>, String);

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts the request, waits the delay, and answers the set failure, if any.
async fn common(inner: &Mutex<Inner>) -> Option<(StatusCode, String)> {
    let (fail, delay) = {
        let mut i = lock(inner);
        i.requests += 1;
        (i.fail, i.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    fail.map(|s| {
        (
            StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "failing on purpose".to_string(),
        )
    })
}

fn gunzip(headers: &HeaderMap, body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    if headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        == Some("gzip")
    {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .ok()?;
        Some(out)
    } else {
        Some(body.to_vec())
    }
}

fn bearer_ok(headers: &HeaderMap, key: &str) -> bool {
    key.is_empty()
        || headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(format!("Bearer {key}").as_str())
}

async fn logs(
    State((inner, key)): State<Shared>,
    axum::extract::Path((dcr, stream)): axum::extract::Path<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> (StatusCode, String) {
    if let Some(r) = common(&inner).await {
        return r;
    }
    let token_ok = {
        let i = lock(&inner);
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| i.tokens.iter().any(|k| k == t))
    };
    if !token_ok && !bearer_ok(&headers, &key) {
        return (
            StatusCode::UNAUTHORIZED,
            "bearer token missing or wrong".into(),
        );
    }
    if q.get("api-version").map(String::as_str) != Some("2023-01-01") {
        return (
            StatusCode::BAD_REQUEST,
            "api-version must be 2023-01-01".into(),
        );
    }
    if body.len() > 1024 * 1024 {
        return (StatusCode::PAYLOAD_TOO_LARGE, "more than 1 MB".into());
    }
    let Some(Ok(Value::Array(records))) =
        gunzip(&headers, &body).map(|b| serde_json::from_slice::<Value>(&b))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "InvalidContent: expected a JSON array".into(),
        );
    };
    let mut i = lock(&inner);
    for r in &records {
        if !r.is_object() {
            return (
                StatusCode::BAD_REQUEST,
                "InvalidContent: a record is not an object".into(),
            );
        }
        if r.get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| i.refuse.contains(id))
        {
            return (
                StatusCode::BAD_REQUEST,
                "InvalidContent: refused on purpose".into(),
            );
        }
    }
    let tag = format!("{dcr}/{stream}");
    for r in records {
        i.events.push(r);
        i.tags.push(tag.clone());
    }
    (StatusCode::NO_CONTENT, String::new())
}

/// `POST /{tenant}/oauth2/v2.0/token`: Microsoft Entra's client credentials flow for
/// the app registration set by [`EventGridTopic::issue_tokens`].
async fn token(
    State((inner, _)): State<Shared>,
    axum::extract::Path(_tenant): axum::extract::Path<String>,
    body: bytes::Bytes,
) -> axum::response::Response {
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    let mut i = lock(&inner);
    let ok = i.client.as_ref().is_some_and(|(id, secret)| {
        form.get("client_id") == Some(id)
            && form.get("client_secret") == Some(secret)
            && form.get("grant_type").map(String::as_str) == Some("client_credentials")
            && form.get("scope").map(String::as_str) == Some("https://monitor.azure.com//.default")
    });
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."})),
        )
            .into_response();
    }
    i.issued += 1;
    let t = format!("entra-token-{}", i.issued);
    i.tokens.push(t.clone());
    axum::Json(serde_json::json!({"token_type": "Bearer", "expires_in": 3599, "access_token": t}))
        .into_response()
}

async fn loki(
    State((inner, key)): State<Shared>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> (StatusCode, String) {
    if let Some(r) = common(&inner).await {
        return r;
    }
    if !bearer_ok(&headers, &key) {
        return (StatusCode::UNAUTHORIZED, "no org id or token".into());
    }
    let Some(Ok(v)) = gunzip(&headers, &body).map(|b| serde_json::from_slice::<Value>(&b)) else {
        return (StatusCode::BAD_REQUEST, "not JSON".into());
    };
    let Some(streams) = v["streams"].as_array() else {
        return (StatusCode::BAD_REQUEST, "no streams".into());
    };
    let mut entries = Vec::new();
    for s in streams {
        let labels = s["stream"].to_string();
        for value in s["values"].as_array().into_iter().flatten() {
            let ts_ok = value[0].as_str().is_some_and(|t| t.parse::<u128>().is_ok());
            if !ts_ok || !value[1].is_string() {
                return (
                    StatusCode::BAD_REQUEST,
                    "entry must be [\"ns\", \"line\"]".into(),
                );
            }
            entries.push((labels.clone(), value.clone()));
        }
    }
    let mut i = lock(&inner);
    if entries
        .iter()
        .any(|(_, v)| v[1].as_str().is_some_and(|l| i.refuse.contains(l)))
    {
        return (StatusCode::BAD_REQUEST, "entry refused on purpose".into());
    }
    for (labels, value) in entries {
        i.events.push(value);
        i.tags.push(labels);
    }
    (StatusCode::NO_CONTENT, String::new())
}

/// `POST /hook`: one CloudEvent in binary mode, kept as `{attributes..., "data": body}`
/// (the body as JSON when it parses, else as text); 400 without `ce-id`,
/// `ce-specversion`, `ce-source` and `ce-type`.
async fn hook(
    State((inner, key)): State<Shared>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> (StatusCode, String) {
    if let Some(r) = common(&inner).await {
        return r;
    }
    if !bearer_ok(&headers, &key) {
        return (
            StatusCode::UNAUTHORIZED,
            "bearer token missing or wrong".into(),
        );
    }
    let mut e = serde_json::Map::new();
    for (k, v) in &headers {
        if let (Some(name), Ok(v)) = (k.as_str().strip_prefix("ce-"), v.to_str()) {
            let v = percent_decode(v);
            e.insert(name.to_string(), Value::String(v));
        }
    }
    if ["id", "specversion", "source", "type"]
        .iter()
        .any(|k| !e.contains_key(*k))
    {
        return (
            StatusCode::BAD_REQUEST,
            "not a binary-mode CloudEvent".into(),
        );
    }
    let data = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    e.insert("data".into(), data);
    if let Some(ct) = headers.get("content-type").and_then(|v| v.to_str().ok()) {
        e.insert("datacontenttype".into(), Value::String(ct.to_string()));
    }
    let mut i = lock(&inner);
    if e["id"].as_str().is_some_and(|id| i.refuse.contains(id)) {
        return (StatusCode::BAD_REQUEST, "refused on purpose".into());
    }
    i.events.push(Value::Object(e));
    i.tags.push(String::new());
    (StatusCode::ACCEPTED, String::new())
}

fn percent_decode(v: &str) -> String {
    percent_encoding::percent_decode_str(v)
        .decode_utf8_lossy()
        .into_owned()
}

async fn bulk_to(
    State(shared): State<Shared>,
    axum::extract::Path(index): axum::extract::Path<String>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> axum::response::Response {
    bulk_at(shared, Some(index), headers, body).await
}

async fn bulk(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> axum::response::Response {
    bulk_at(shared, None, headers, body).await
}

async fn bulk_at(
    (inner, key): Shared,
    index: Option<String>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> axum::response::Response {
    if let Some(r) = common(&inner).await {
        return r.into_response();
    }
    if !key.is_empty()
        && headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some(format!("ApiKey {key}").as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            "missing authentication credentials",
        )
            .into_response();
    }
    let text = String::from_utf8_lossy(&body).to_string();
    // Elasticsearch refuses the whole request when an action names no index.
    let pairs: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if index.is_none()
        && pairs.iter().step_by(2).any(|a| {
            serde_json::from_str::<Value>(a)
                .ok()
                .and_then(|v| v.as_object().and_then(|o| o.values().next().cloned()))
                .is_none_or(|m| m["_index"].as_str().is_none())
        })
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": {"type": "action_request_validation_exception", "reason": "Validation Failed: 1: index is missing;"}, "status": 400})),
        )
            .into_response();
    }
    let mut lines = pairs.into_iter();
    let mut items = Vec::new();
    let mut errors = false;
    let mut i = lock(&inner);
    while let Some(action) = lines.next() {
        let Ok(a) = serde_json::from_str::<serde_json::Map<String, Value>>(action) else {
            return (StatusCode::BAD_REQUEST, "malformed action").into_response();
        };
        let Some((verb, meta)) = a.iter().next() else {
            return (StatusCode::BAD_REQUEST, "empty action").into_response();
        };
        let Some(doc) = lines
            .next()
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
        else {
            return (StatusCode::BAD_REQUEST, "missing or malformed document").into_response();
        };
        let idx = meta["_index"]
            .as_str()
            .map(str::to_string)
            .or(index.clone())
            .unwrap_or_default();
        let id = meta["_id"].as_str().map(str::to_string);
        let refused = id.as_ref().is_some_and(|id| i.refuse.contains(id))
            || doc["id"].as_str().is_some_and(|d| i.refuse.contains(d));
        let status = if refused {
            400
        } else if verb == "create"
            && id.as_ref().is_some_and(|id| {
                i.es_ids
                    .iter()
                    .zip(&i.tags)
                    .any(|(have, at)| have == id && *at == idx)
            })
        {
            409
        } else {
            201
        };
        errors |= status != 201;
        if status == 201 {
            i.events.push(doc);
            i.tags.push(idx.clone());
            i.es_ids.push(id.clone().unwrap_or_default());
        }
        let error = match status {
            400 => {
                serde_json::json!({"type": "mapper_parsing_exception", "reason": "refused on purpose"})
            }
            409 => {
                serde_json::json!({"type": "version_conflict_engine_exception", "reason": "document already exists"})
            }
            _ => Value::Null,
        };
        let mut m = serde_json::Map::new();
        m.insert(
            verb.clone(),
            serde_json::json!({"_index": idx, "_id": id, "status": status, "error": error}),
        );
        items.push(Value::Object(m));
    }
    (
        [("x-elastic-product", "Elasticsearch")],
        axum::Json(serde_json::json!({"took": 1, "errors": errors, "items": items})),
    )
        .into_response()
}

async fn publish(
    State((inner, key)): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> impl IntoResponse {
    if let Some(r) = common(&inner).await {
        return r;
    }
    let refuse = lock(&inner).refuse.clone();
    if headers.get("aeg-sas-key").and_then(|v| v.to_str().ok()) != Some(key.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            "aeg-sas-key missing or wrong".into(),
        );
    }
    if q.get("api-version").map(String::as_str) != Some("2018-01-01") {
        return (
            StatusCode::BAD_REQUEST,
            "the api-version query parameter must be 2018-01-01".into(),
        );
    }
    if body.len() > 1024 * 1024 {
        return (StatusCode::PAYLOAD_TOO_LARGE, "more than 1 MB".into());
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON".into());
    };
    let items = match (v, ct.starts_with("application/cloudevents+json")) {
        (Value::Object(o), true) => vec![Value::Object(o)],
        (Value::Array(a), _) => a,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "expected an array of events".into(),
            )
        }
    };
    let need: &[&str] = if ct.starts_with("application/cloudevents") {
        &["specversion", "id", "source", "type"]
    } else {
        &["id", "subject", "eventType", "eventTime"]
    };
    for e in &items {
        if need
            .iter()
            .any(|k| e.get(*k).and_then(Value::as_str).is_none())
        {
            return (
                StatusCode::BAD_REQUEST,
                format!("an event lacks one of {need:?}"),
            );
        }
        if let Some(id) = e.get("id").and_then(Value::as_str) {
            if refuse.contains(id) {
                return (StatusCode::BAD_REQUEST, format!("event {id} is invalid"));
            }
        }
    }
    let mut i = lock(&inner);
    for e in items {
        i.events.push(e);
        i.tags.push(String::new());
    }
    (StatusCode::OK, String::new())
}

impl EventGridTopic {
    /// A topic whose access key is `key`.
    pub fn start(key: &str) -> Self {
        Self::speaking(Api::EventGrid, key)
    }

    /// A receiver of `api` whose key is `key` (empty: Loki and Elasticsearch take
    /// requests without one).
    pub fn speaking(api: Api, key: &str) -> Self {
        let port = crate::free_port();
        let me = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            api,
            key: key.to_string(),
            inner: Arc::new(Mutex::new(Inner::default())),
            server: Mutex::new(None),
        };
        me.up();
        me
    }

    /// The URL a target names (without `api-version`): the topic endpoint, the data
    /// collection rule stream `dcr-test/Custom-Georep_CL`, the Loki push endpoint, or
    /// Elasticsearch with the index `logs-georep`.
    pub fn url(&self) -> String {
        match self.api {
            Api::EventGrid => format!("http://{}/api/events", self.addr),
            Api::Logs => format!(
                "http://{}/dataCollectionRules/dcr-test/streams/Custom-Georep_CL",
                self.addr
            ),
            Api::Loki => format!("http://{}/loki/api/v1/push", self.addr),
            Api::Elasticsearch => format!("http://{}/logs-georep", self.addr),
            Api::Webhook => format!("http://{}/hook", self.addr),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts listening again on the same port (after [`Self::down`]).
    pub fn up(&self) {
        let mut server = self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if server.is_some() {
            return;
        }
        // The port was ours a moment ago; retry briefly while the old socket closes.
        let mut listener = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr) {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let listener = listener.unwrap_or_else(|| panic!("cannot listen on {} again", self.addr));
        let _ = listener.set_nonblocking(true);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shared: Shared = (self.inner.clone(), self.key.clone());
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let app = axum::Router::new()
                    .route("/api/events", axum::routing::post(publish))
                    .route(
                        "/dataCollectionRules/{dcr}/streams/{stream}",
                        axum::routing::post(logs),
                    )
                    .route("/loki/api/v1/push", axum::routing::post(loki))
                    .route("/hook", axum::routing::post(hook))
                    .route("/{tenant}/oauth2/v2.0/token", axum::routing::post(token))
                    .route("/_bulk", axum::routing::post(bulk))
                    .route("/{index}/_bulk", axum::routing::post(bulk_to))
                    .route("/healthz", axum::routing::get(|| async { "ok" }))
                    .route("/ready", axum::routing::get(|| async { "ready" }))
                    .route(
                        "/_cluster/health",
                        axum::routing::get(|| async {
                            axum::Json(serde_json::json!({"status": "green"}))
                        }),
                    )
                    .with_state(shared);
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        *server = Some((tx, thread));
    }

    /// Stops listening: connections are refused until [`Self::up`].
    pub fn down(&self) {
        let taken = self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((tx, thread)) = taken {
            let _ = tx.send(());
            let _ = thread.join();
        }
    }

    /// Every publish answers `status` (None: normal service again).
    pub fn fail_with(&self, status: Option<u16>) {
        self.lock().fail = status;
    }

    /// A batch holding one of these ids is refused with 400.
    pub fn refuse_ids(&self, ids: &[&str]) {
        self.lock().refuse = ids.iter().map(|s| s.to_string()).collect();
    }

    /// Logs: issues Entra tokens to this app registration (at `url_base()/TENANT/
    /// oauth2/v2.0/token`), which the ingestion endpoint then takes.
    pub fn issue_tokens(&self, client_id: &str, secret: &str) {
        self.lock().client = Some((client_id.to_string(), secret.to_string()));
    }

    /// Logs: every token issued so far stops being accepted (401).
    pub fn expire_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// Logs: how many tokens were issued.
    pub fn tokens_issued(&self) -> u64 {
        self.lock().issued
    }

    /// `http://ADDR`, what `AZURE_AUTHORITY_HOST` points at for its tokens.
    pub fn url_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn delay(&self, d: Duration) {
        self.lock().delay = d;
    }

    /// Every event received, in order.
    pub fn events(&self) -> Vec<Value> {
        self.lock().events.clone()
    }

    /// The ids of every event received, in order (duplicates included): events' and
    /// records' `id` fields, Loki lines, Elasticsearch `_id`s.
    pub fn ids(&self) -> Vec<String> {
        let i = self.lock();
        match self.api {
            Api::Elasticsearch => i.es_ids.clone(),
            Api::Loki => i
                .events
                .iter()
                .filter_map(|v| v[1].as_str().map(str::to_string))
                .collect(),
            _ => i
                .events
                .iter()
                .filter_map(|e| e.get("id").and_then(Value::as_str).map(str::to_string))
                .collect(),
        }
    }

    /// Every record with its stream, label set (JSON) or index, in order.
    pub fn tagged(&self) -> Vec<(String, Value)> {
        let i = self.lock();
        i.tags
            .iter()
            .cloned()
            .zip(i.events.iter().cloned())
            .collect()
    }

    pub fn requests(&self) -> u64 {
        self.lock().requests
    }
}

impl Drop for EventGridTopic {
    fn drop(&mut self) {
        self.down();
    }
}
