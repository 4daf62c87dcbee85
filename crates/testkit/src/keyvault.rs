//! A stand-in for Azure Key Vault's secrets data plane (no emulator exists), speaking
//! its REST contract at api-version 7.5: `?api-version=` required (400 without);
//! `Authorization: Bearer` with a token from its own Entra endpoint (`POST
//! /{tenant}/oauth2/v2.0/token`, client credentials, scope
//! `https://vault.azure.net/.default`), 401 with a `WWW-Authenticate` challenge
//! otherwise; `PUT /secrets/{name}` (a new 32-hex version), `GET /secrets/{name}[/
//! {version}]` (403 `SecretDisabled` for a disabled version), `PATCH
//! /secrets/{name}/{version}`, `GET /secrets` and `/secrets/{name}/versions` paged by
//! `maxresults` with `nextLink`, soft delete (`DELETE /secrets/{name}`, 409
//! `ObjectIsDeletedButRecoverable` on reuse, `GET /deletedsecrets/{name}`, `POST
//! /deletedsecrets/{name}/recover`, `DELETE /deletedsecrets/{name}` to purge), `GET
//! /keys` (keys, never exportable); names compared without case; errors as
//! `{"error": {"code", "message", "innererror"}}`. Tests can throttle it (429 with
//! `Retry-After`).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct Ver {
    id: String,
    value: String,
    content_type: Option<String>,
    tags: BTreeMap<String, String>,
    enabled: bool,
    nbf: Option<i64>,
    exp: Option<i64>,
    created: i64,
    updated: i64,
}

#[derive(Default)]
struct Secret {
    /// The name as first written (Key Vault keeps its case).
    name: String,
    versions: Vec<Ver>,
    deleted: bool,
}

#[derive(Default)]
struct Inner {
    /// By lower-case name.
    secrets: BTreeMap<String, Secret>,
    /// Key names and whether each is HSM-backed.
    keys: Vec<(String, bool)>,
    client: Option<(String, String)>,
    issued: u64,
    /// The next this many requests answer 429 with `Retry-After: 1`.
    throttle: u32,
    throttled: u64,
}

type Shared = (Arc<Mutex<Inner>>, String);

/// Tokens issued by any test vault's Entra endpoint: one tenant, as in Azure, whose
/// tokens every vault of the process accepts.
static ISSUED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn issued() -> std::sync::MutexGuard<'static, Vec<String>> {
    ISSUED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One fake vault on a free loopback port, stopped with the test.
pub struct KeyVault {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    _thread: std::thread::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for KeyVault {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn err(status: StatusCode, code: &str, inner: Option<&str>, message: &str) -> Response {
    let mut e = json!({"error": {"code": code, "message": message}});
    if let Some(i) = inner {
        e["error"]["innererror"] = json!({"code": i});
    }
    (
        status,
        [("x-ms-error-code", code.to_string())],
        axum::Json(e),
    )
        .into_response()
}

impl KeyVault {
    /// Starts a vault that issues tokens to `client_id`/`secret`.
    pub fn start(client_id: &str, secret: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let inner = Arc::new(Mutex::new(Inner {
            client: Some((client_id.to_string(), secret.to_string())),
            ..Inner::default()
        }));
        let shared: Shared = (inner.clone(), format!("http://{addr}"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
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
                    .route("/{tenant}/oauth2/v2.0/token", axum::routing::post(token))
                    .route("/msi/token", axum::routing::get(msi_token))
                    .route("/secrets", axum::routing::get(list))
                    .route("/keys", axum::routing::get(keys))
                    .route(
                        "/secrets/{name}",
                        axum::routing::put(set).get(latest).delete(delete),
                    )
                    .route("/secrets/{name}/", axum::routing::get(latest))
                    .route("/secrets/{name}/versions", axum::routing::get(versions))
                    .route(
                        "/secrets/{name}/{version}",
                        axum::routing::get(get_version).patch(patch),
                    )
                    .route(
                        "/deletedsecrets/{name}",
                        axum::routing::get(get_deleted).delete(purge),
                    )
                    .route(
                        "/deletedsecrets/{name}/recover",
                        axum::routing::post(recover),
                    )
                    .with_state(shared);
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        Self {
            addr,
            inner,
            _thread: thread,
            stop: Some(tx),
        }
    }

    /// The topology URL (`keyvault+http://127.0.0.1:PORT`).
    pub fn vault_url(&self) -> String {
        format!("keyvault+http://{}", self.addr)
    }

    /// What `AZURE_AUTHORITY_HOST` points at for tokens.
    pub fn url_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A managed identity endpoint (App Service's `IDENTITY_ENDPOINT` and
    /// `IDENTITY_HEADER`) that issues tokens for this vault.
    pub fn identity_endpoint(&self) -> (String, String) {
        (
            format!("http://{}/msi/token", self.addr),
            MSI_HEADER.to_string(),
        )
    }

    /// Writes a version directly (as someone using the portal would).
    pub fn set(&self, name: &str, value: &str) -> String {
        let mut i = lock(&self.inner);
        put_version(
            &mut i,
            name,
            value.to_string(),
            None,
            BTreeMap::new(),
            true,
            None,
            None,
        )
    }

    /// Writes a version with a content type (a certificate's secret: PEM or PFX).
    pub fn set_typed(&self, name: &str, value: &str, content_type: &str) -> String {
        let mut i = lock(&self.inner);
        put_version(
            &mut i,
            name,
            value.to_string(),
            Some(content_type.to_string()),
            BTreeMap::new(),
            true,
            None,
            None,
        )
    }

    /// The values of a secret's live versions, oldest first (empty if none).
    pub fn values(&self, name: &str) -> Vec<String> {
        let i = lock(&self.inner);
        i.secrets
            .get(&name.to_ascii_lowercase())
            .filter(|s| !s.deleted)
            .map(|s| s.versions.iter().map(|v| v.value.clone()).collect())
            .unwrap_or_default()
    }

    /// The newest version's tags and enabled flag.
    pub fn newest(&self, name: &str) -> Option<(BTreeMap<String, String>, bool, Option<String>)> {
        let i = lock(&self.inner);
        let s = i.secrets.get(&name.to_ascii_lowercase())?;
        let v = s.versions.last()?;
        Some((v.tags.clone(), v.enabled, v.content_type.clone()))
    }

    pub fn add_key(&self, name: &str, hsm: bool) {
        lock(&self.inner).keys.push((name.to_string(), hsm));
    }

    /// The next `n` requests are answered 429 with `Retry-After: 1`.
    pub fn throttle(&self, n: u32) {
        lock(&self.inner).throttle = n;
    }

    /// How many requests were answered 429.
    pub fn throttled(&self) -> u64 {
        lock(&self.inner).throttled
    }
}

#[allow(clippy::too_many_arguments)]
fn put_version(
    i: &mut Inner,
    name: &str,
    value: String,
    content_type: Option<String>,
    tags: BTreeMap<String, String>,
    enabled: bool,
    nbf: Option<i64>,
    exp: Option<i64>,
) -> String {
    let id = format!("{:032x}", rand::random::<u128>());
    let s = i
        .secrets
        .entry(name.to_ascii_lowercase())
        .or_insert_with(|| Secret {
            name: name.to_string(),
            ..Secret::default()
        });
    s.versions.push(Ver {
        id: id.clone(),
        value,
        content_type,
        tags,
        enabled,
        nbf,
        exp,
        created: now(),
        updated: now(),
    });
    id
}

/// Checks api-version, the bearer token and throttling; `Some` is the answer to give.
fn gate(i: &mut Inner, headers: &HeaderMap, q: &BTreeMap<String, String>) -> Option<Response> {
    if i.throttle > 0 {
        i.throttle -= 1;
        i.throttled += 1;
        let mut r = err(
            StatusCode::TOO_MANY_REQUESTS,
            "Throttled",
            None,
            "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached",
        );
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        return Some(r);
    }
    if q.get("api-version").is_none() {
        return Some(err(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            None,
            "The request URI contains an invalid or missing api-version",
        ));
    }
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| issued().iter().any(|x| x == t));
    if !ok {
        let mut r = err(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            None,
            "AKV10000: Request is missing a Bearer or PoP token.",
        );
        r.headers_mut().insert(
            "www-authenticate",
            axum::http::HeaderValue::from_static(
                "Bearer authorization=\"https://login.microsoftonline.com/tenant\", resource=\"https://vault.azure.net\"",
            ),
        );
        return Some(r);
    }
    None
}

fn bundle(base: &str, s: &Secret, v: &Ver, with_value: bool) -> Value {
    let mut attrs = json!({
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.updated,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": 90,
    });
    if let Some(n) = v.nbf {
        attrs["nbf"] = json!(n);
    }
    if let Some(e) = v.exp {
        attrs["exp"] = json!(e);
    }
    let mut b = json!({
        "id": format!("{base}/secrets/{}/{}", s.name, v.id),
        "attributes": attrs,
        "tags": v.tags,
    });
    if with_value {
        b["value"] = json!(v.value);
    }
    if let Some(c) = &v.content_type {
        b["contentType"] = json!(c);
    }
    b
}

fn not_found(name: &str) -> Response {
    err(
        StatusCode::NOT_FOUND,
        "SecretNotFound",
        None,
        &format!("A secret with (name/id) {name} was not found in this key vault."),
    )
}

/// One page of `items` from `skip`, with a nextLink when more follow.
fn page(base: &str, path: &str, items: Vec<Value>, q: &BTreeMap<String, String>) -> Response {
    let max: usize = q
        .get("maxresults")
        .and_then(|m| m.parse().ok())
        .unwrap_or(25)
        .clamp(1, 25);
    let skip: usize = q
        .get("$skiptoken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rest: Vec<Value> = items.iter().skip(skip).take(max).cloned().collect();
    let next = if skip + max < items.len() {
        // Like Key Vault's: the host with :443-style explicit port, and the token.
        json!(format!(
            "{base}/{path}?api-version=7.5&$skiptoken={}&maxresults={max}",
            skip + max
        ))
    } else {
        Value::Null
    };
    axum::Json(json!({"value": rest, "nextLink": next})).into_response()
}

async fn token(
    State((inner, _)): State<Shared>,
    Path(_tenant): Path<String>,
    body: bytes::Bytes,
) -> Response {
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    let mut i = lock(&inner);
    let ok = i.client.as_ref().is_some_and(|(id, secret)| {
        form.get("client_id") == Some(id)
            && form.get("client_secret") == Some(secret)
            && form.get("grant_type").map(String::as_str) == Some("client_credentials")
            && form.get("scope").map(String::as_str) == Some("https://vault.azure.net/.default")
    });
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."})),
        )
            .into_response();
    }
    i.issued += 1;
    let t = format!("kv-token-{:032x}", rand::random::<u128>());
    issued().push(t.clone());
    axum::Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": t}))
        .into_response()
}

/// The `X-IDENTITY-HEADER` the managed identity endpoint wants.
const MSI_HEADER: &str = "msi-header-7d1c";

/// `GET /msi/token?api-version=2019-08-01&resource=...` with `X-IDENTITY-HEADER`, as
/// App Service's identity endpoint: `expires_on` is a string of Unix seconds.
async fn msi_token(
    State((inner, _)): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ok = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        == Some(MSI_HEADER)
        && q.get("api-version").map(String::as_str) == Some("2019-08-01")
        && q.get("resource").map(String::as_str) == Some("https://vault.azure.net");
    if !ok {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request", "error_description": "missing or wrong X-IDENTITY-HEADER, api-version or resource"})),
        )
            .into_response();
    }
    lock(&inner).issued += 1;
    let t = format!("kv-msi-token-{:032x}", rand::random::<u128>());
    issued().push(t.clone());
    axum::Json(json!({
        "access_token": t,
        "expires_on": (now() + 3600).to_string(),
        "resource": "https://vault.azure.net",
        "token_type": "Bearer",
    }))
    .into_response()
}

async fn list(
    State((inner, base)): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut i = lock(&inner);
    if let Some(r) = gate(&mut i, &headers, &q) {
        return r;
    }
    let items: Vec<Value> = i
        .secrets
        .values()
        .filter(|s| !s.deleted)
        .filter_map(|s| {
            let v = s.versions.last()?;
            let mut b = bundle(&base, s, v, false);
            b["id"] = json!(format!("{base}/secrets/{}", s.name));
            Some(b)
        })
        .collect();
    page(&base, "secrets", items, &q)
}

async fn keys(
    State((inner, base)): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut i = lock(&inner);
    if let Some(r) = gate(&mut i, &headers, &q) {
        return r;
    }
    let items: Vec<Value> = i
        .keys
        .iter()
        .map(|(n, hsm)| {
            json!({"kid": format!("{base}/keys/{n}"), "kty": if *hsm { "RSA-HSM" } else { "RSA" }, "attributes": {"enabled": true, "exportable": false}})
        })
        .collect();
    page(&base, "keys", items, &q)
}

async fn set(
    State((inner, base)): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut i = lock(&inner);
    if let Some(r) = gate(&mut i, &headers, &q) {
        return r;
    }
    let valid = !name.is_empty()
        && name.len() <= 127
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid {
        return err(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            None,
            "The request URI contains an invalid name",
        );
    }
    if i.secrets
        .get(&name.to_ascii_lowercase())
        .is_some_and(|s| s.deleted)
    {
        return err(
            StatusCode::CONFLICT,
            "Conflict",
            Some("ObjectIsDeletedButRecoverable"),
            &format!("Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."),
        );
    }
    let Some(value) = body["value"].as_str() else {
        return err(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            None,
            "value is required",
        );
    };
    if value.len() > 25 * 1024 {
        return err(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            None,
            "the value is too long",
        );
    }
    let tags: BTreeMap<String, String> =
        serde_json::from_value(body["tags"].clone()).unwrap_or_default();
    if tags.len() > 15 {
        return err(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            None,
            "too many tags (at most 15)",
        );
    }
    put_version(
        &mut i,
        &name,
        value.to_string(),
        body["contentType"].as_str().map(str::to_string),
        tags,
        body["attributes"]["enabled"].as_bool().unwrap_or(true),
        body["attributes"]["nbf"].as_i64(),
        body["attributes"]["exp"].as_i64(),
    );
    let s = &i.secrets[&name.to_ascii_lowercase()];
    let v = s.versions.last().cloned().unwrap_or_default();
    axum::Json(bundle(&base, s, &v, true)).into_response()
}

async fn latest(
    State((inner, base)): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut i = lock(&inner);
    if let Some(r) = gate(&mut i, &headers, &q) {
        return r;
    }
    let Some(s) = i
        .secrets
        .get(&name.to_ascii_lowercase())
        .filter(|s| !s.deleted)
    else {
        return not_found(&name);
    };
    let Some(v) = s.versions.last() else {
        return not_found(&name);
    };
    if !v.enabled {
        return err(
            StatusCode::FORBIDDEN,
            "Forbidden",
            Some("SecretDisabled"),
            "Operation get is not allowed on a disabled secret.",
        );
    }
    axum::Json(bundle(&base, s, v, true)).into_response()
}

async fn get_version(
    State((inner, base)): State<Shared>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut i = lock(&inner);
    if let Some(r) = gate(&mut i, &headers, &q) {
        return r;
    }
    let Some(s) = i
        .secrets
        .get(&name.to_ascii_lowercase())
        .filter(|s| !s.deleted)
    else {
        return not_found(&name);
    };
    let Some(v) = s.versions.iter().find(|v| v.id == version) else {
        return not_found(&format!("{name}/{version}"));
    };
    if !v.enabled {
        return err(
            StatusCode::FORBIDDEN,
            "Forbidden",
            Some("SecretDisabled"),
            "Operation get is not allowed on a disabled secret.",
        );
    }
    axum::Json(bundle(&base, s, v, true)).into_response()
}

async fn versions(
    State((inner, base)): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut i = lock(&inner);
    if let Some(r) = gate(&mut i, &headers, &q) {
        return r;
    }
    let Some(s) = i
        .secrets
        .get(&name.to_ascii_lowercase())
        .filter(|s| !s.deleted)
    else {
        return not_found(&name);
    };
    // Key Vault lists versions in no promised order; newest first here, so clients
    // must sort.
    let items: Vec<Value> = s
        .versions
        .iter()
        .rev()
        .map(|v| bundle(&base, s, v, false))
        .collect();
    page(&base, &format!("secrets/{}/versions", s.name), items, &q)
}

async fn patch(
    State((inner, base)): State<Shared>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut i = lock(&inner);
    if let Some(r) = gate(&mut i, &headers, &q) {
        return r;
    }
    let Some(s) = i
        .secrets
        .get_mut(&name.to_ascii_lowercase())
        .filter(|s| !s.deleted)
    else {
        return not_found(&name);
    };
    let Some(v) = s.versions.iter_mut().find(|v| v.id == version) else {
        return not_found(&format!("{name}/{version}"));
    };
    if let Some(e) = body["attributes"]["enabled"].as_bool() {
        v.enabled = e;
    }
    if body["attributes"].get("nbf").is_some() {
        v.nbf = body["attributes"]["nbf"].as_i64();
    }
    if body["attributes"].get("exp").is_some() {
        v.exp = body["attributes"]["exp"].as_i64();
    }
    if let Some(c) = body.get("contentType") {
        v.content_type = c.as_str().map(str::to_string);
    }
    if let Ok(t) = serde_json::from_value::<BTreeMap<String, String>>(body["tags"].clone()) {
        if body.get("tags").is_some() {
            v.tags = t;
        }
    }
    v.updated = now();
    let v = v.clone();
    let s = &i.secrets[&name.to_ascii_lowercase()];
    axum::Json(bundle(&base, s, &v, false)).into_response()
}

async fn delete(
    State((inner, base)): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut i = lock(&inner);
    if let Some(r) = gate(&mut i, &headers, &q) {
        return r;
    }
    let Some(s) = i
        .secrets
        .get_mut(&name.to_ascii_lowercase())
        .filter(|s| !s.deleted)
    else {
        return not_found(&name);
    };
    s.deleted = true;
    let mut b = newest_bundle(&base, s);
    b["recoveryId"] = json!(format!("{base}/deletedsecrets/{}", s.name));
    b["deletedDate"] = json!(now());
    b["scheduledPurgeDate"] = json!(now() + 90 * 86400);
    axum::Json(b).into_response()
}

async fn get_deleted(
    State((inner, base)): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    deleted(&inner, &base, &headers, &name, &q, false)
}

async fn recover(
    State((inner, base)): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    deleted(&inner, &base, &headers, &name, &q, true)
}

/// A deleted secret's bundle (its newest version), recovered first when asked.
fn deleted(
    inner: &Mutex<Inner>,
    base: &str,
    headers: &HeaderMap,
    name: &str,
    q: &BTreeMap<String, String>,
    recover: bool,
) -> Response {
    let mut i = lock(inner);
    if let Some(r) = gate(&mut i, headers, q) {
        return r;
    }
    match i
        .secrets
        .get_mut(&name.to_ascii_lowercase())
        .filter(|s| s.deleted)
    {
        Some(s) => {
            if recover {
                s.deleted = false;
            }
            axum::Json(newest_bundle(base, s)).into_response()
        }
        None => err(
            StatusCode::NOT_FOUND,
            "SecretNotFound",
            None,
            &format!("Deleted Secret not found: {name}"),
        ),
    }
}

fn newest_bundle(base: &str, s: &Secret) -> Value {
    s.versions
        .last()
        .map(|v| bundle(base, s, v, false))
        .unwrap_or_default()
}

async fn purge(
    State((inner, _)): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut i = lock(&inner);
    if let Some(r) = gate(&mut i, &headers, &q) {
        return r;
    }
    let key = name.to_ascii_lowercase();
    if i.secrets.get(&key).is_some_and(|s| s.deleted) {
        i.secrets.remove(&key);
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(&name)
    }
}
