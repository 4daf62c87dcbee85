//! A stand-in for an Event Grid topic's publish endpoint (no Event Grid server can be
//! installed here), speaking its contract: `POST /api/events?api-version=...` with the
//! `aeg-sas-key` header (401 without the right key, 400 without `api-version`), the
//! Event Grid schema (a JSON array of events with `id`, `subject`, `eventType`,
//! `eventTime`: 400 otherwise) or CloudEvents 1.0 by content type, 200 on success, and
//! `GET /healthz`. Tests can make it fail with a status, go down (connections refused)
//! and come back on the same port, answer slowly, or refuse events by id with 400.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::Value;

#[derive(Default)]
struct Inner {
    events: Vec<Value>,
    /// Answer every publish with this status.
    fail: Option<u16>,
    refuse: HashSet<String>,
    delay: Duration,
    requests: u64,
}

/// One fake topic, on a free loopback port, stopped on drop.
pub struct EventGridTopic {
    pub addr: SocketAddr,
    key: String,
    inner: Arc<Mutex<Inner>>,
    server: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            std::thread::JoinHandle<()>,
        )>,
    >,
}

type Shared = (Arc<Mutex<Inner>>, String);

async fn publish(
    State((inner, key)): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> impl IntoResponse {
    let (fail, delay, refuse) = {
        let mut i = inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        i.requests += 1;
        (i.fail, i.delay, i.refuse.clone())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(s) = fail {
        return (
            StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "failing on purpose".to_string(),
        );
    }
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
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .events
        .extend(items);
    (StatusCode::OK, String::new())
}

impl EventGridTopic {
    /// A topic whose access key is `key`.
    pub fn start(key: &str) -> Self {
        let port = crate::free_port();
        let me = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            key: key.to_string(),
            inner: Arc::new(Mutex::new(Inner::default())),
            server: Mutex::new(None),
        };
        me.up();
        me
    }

    /// The publish URL, as a topic endpoint is given (without `api-version`).
    pub fn url(&self) -> String {
        format!("http://{}/api/events", self.addr)
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
                    .route("/healthz", axum::routing::get(|| async { "ok" }))
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

    pub fn delay(&self, d: Duration) {
        self.lock().delay = d;
    }

    /// Every event received, in order.
    pub fn events(&self) -> Vec<Value> {
        self.lock().events.clone()
    }

    /// The ids of every event received, in order (duplicates included).
    pub fn ids(&self) -> Vec<String> {
        self.lock()
            .events
            .iter()
            .filter_map(|e| e.get("id").and_then(Value::as_str).map(str::to_string))
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
