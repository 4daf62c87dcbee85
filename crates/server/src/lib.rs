//! georep-server: the daemon's HTTP surface — JSON API, storage-event webhook and
//! Prometheus metrics. The only crate that knows HTTP routes.
//!
//! API boundary: [`router`] builds the axum router over a running [`Daemon`] (each
//! route reaches its component through [`Daemon::get`]); [`serve`] binds and runs it
//! until a shutdown future resolves.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use georep_api::{paths, FailoverRequest, ReseedRequest};
use georep_backup::Backups;
use georep_component::Error;
use georep_concierge::Concierges;
use georep_daemon::Daemon;
use georep_failover::{Databases, Groups};
use georep_relay::Relays;
use georep_replicate::events::{self, Parsed};
use georep_replicate::Policies;
use georep_secrets::SecretSyncs;
use serde_json::json;

/// Who may call the API.
#[derive(Clone)]
pub struct Access {
    /// `[server] token`: when set, every route but `/healthz` needs it.
    pub token: Option<String>,
    /// The token that routes which change something always need: the configured one,
    /// or one generated at first start into a 0600 file beside the state.
    pub write_token: String,
    /// The webhook's own token (`?token=` or bearer), good for nothing else: it travels
    /// in the endpoint URL given to Event Grid or SNS and may end up in their settings
    /// and in proxy logs.
    pub events_token: String,
    /// The API listens on a loopback address only: requests must then name a loopback
    /// `Host` too, so a web page whose DNS name was rebound to 127.0.0.1 cannot read it.
    pub loopback: bool,
}

/// Shared by every handler.
struct App {
    daemon: Arc<Daemon>,
    access: Access,
}

/// Errors as JSON bodies with a status that says whose fault it is.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// The status follows the error's kind: the request (400), a missing name (404), a
/// refusal (409), a store's error (502), an unreachable member (503), georep (500).
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code =
            StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError(code, e.to_string())
    }
}

impl From<georep_replicate::ReplicateError> for ApiError {
    fn from(e: georep_replicate::ReplicateError) -> Self {
        Error::from(e).into()
    }
}

type ApiResult<T> = Result<T, ApiError>;

impl App {
    /// A registered component; missing only if the daemon's registration list lost it.
    fn get<T: georep_component::Component>(&self) -> ApiResult<&T> {
        self.daemon.get::<T>().ok_or_else(|| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("component {} is not running", std::any::type_name::<T>()),
            )
        })
    }
}

/// Runs a blocking read of a component off the async workers.
async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&Daemon) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let d = app.daemon.clone();
    tokio::task::spawn_blocking(move || f(&d))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

fn policies_of(d: &Daemon) -> ApiResult<&Policies> {
    d.get::<Policies>().ok_or_else(|| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the policies component is not running".into(),
        )
    })
}

/// The router: `/healthz` is open; reading routes need the bearer token when one is
/// configured; routes that change something (resync, resume, failover, reseed) always
/// need the write token, a JSON body type and no foreign `Origin`, so neither another
/// local process nor a web page in a browser on the same machine can drive them.
pub fn router(daemon: Arc<Daemon>, access: Access) -> Router {
    let app = Arc::new(App { daemon, access });
    let changes = Router::new()
        .route(paths::POLICY_RESYNC, post(resync))
        .route(paths::POLICY_RESUME, post(resume))
        .route(paths::POLICY_PAUSE, post(pause))
        .route(paths::GROUP_FAILOVER, post(failover))
        .route(paths::GROUP_RESEED, post(reseed))
        .route(paths::RELOAD, post(reload).get(reload_plan))
        .route(paths::BACKUP_RUN, post(backup_run))
        .route(paths::SECRET_SYNC_RUN, post(secret_sync_run))
        .route(paths::RELAY_SWITCHOVER, post(relay_switchover))
        .route(paths::RELAY_SWITCHBACK, post(relay_switchback))
        .route(paths::RELAY_REPLAY, post(relay_replay))
        .route(paths::CONCIERGE_FAILOVER, post(concierge_failover))
        .route(paths::CONCIERGE_FAILBACK, post(concierge_failback))
        .route(paths::CONCIERGE_PIN, post(concierge_pin))
        .route_layer(middleware::from_fn_with_state(app.clone(), guard_change));
    let api = Router::new()
        .route(paths::POLICIES, get(policies))
        .route(paths::POLICY, get(policy))
        .route(paths::POLICY_OBJECT, get(object))
        .merge(changes)
        .route(paths::DATABASES, get(databases))
        .route(paths::DATABASE, get(database))
        .route(paths::BACKUPS, get(backups))
        .route(paths::BACKUP, get(backup))
        .route(paths::SECRET_SYNCS, get(secret_syncs))
        .route(paths::SECRET_SYNC, get(secret_sync))
        .route(paths::RELAYS, get(relays))
        .route(paths::RELAY, get(relay))
        .route(paths::CONCIERGES, get(concierges))
        .route(paths::CONCIERGE, get(concierge))
        .route(paths::CONCIERGE_DEVICES, get(concierge_devices))
        .route(paths::GROUPS, get(groups))
        .route(paths::GROUP, get(group))
        .route(paths::METRICS, get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth));
    let events = Router::new()
        .route(paths::EVENTS, post(event).options(event_handshake))
        .route_layer(middleware::from_fn_with_state(app.clone(), guard_event));
    Router::new()
        .route(
            paths::HEALTHZ,
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .merge(api)
        .merge(events)
        .layer(middleware::from_fn_with_state(app.clone(), guard_host))
        .with_state(app)
}

/// On a loopback-only API, a `Host` that is not a loopback name or address comes from
/// a browser tricked by DNS rebinding: refused before any route runs.
async fn guard_host(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if app.access.loopback {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !is_loopback_host(host) {
            return ApiError(
                StatusCode::FORBIDDEN,
                "this API listens on loopback only and answers requests for localhost or a loopback address; use http://127.0.0.1:PORT".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// `localhost`, `127.x.x.x` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The storage-event webhook only makes the daemon look at its source again, but an
/// open one would let anyone make it read objects at will: it needs the events token,
/// as `?token=` in the endpoint URL given to Event Grid or SNS (they deliver to a fixed
/// URL and cannot add a header) or as a bearer, or the write token as a bearer; and no
/// foreign `Origin`. The write token is never accepted in the URL.
async fn guard_event(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let in_query = req.uri().query().is_some_and(|q| {
        q.split('&').any(|pair| {
            pair.strip_prefix("token=").is_some_and(|t| {
                percent_encoding::percent_decode_str(t)
                    .decode_utf8()
                    .is_ok_and(|t| {
                        georep_core::constant_time_eq(
                            t.as_bytes(),
                            app.access.events_token.as_bytes(),
                        )
                    })
            })
        })
    });
    let bearer = bearer_is(req.headers(), &app.access.events_token)
        || bearer_is(req.headers(), &app.access.write_token);
    if !(in_query || bearer) {
        return unauthorized(concat!(
            "the event webhook needs its token: subscribe with the endpoint ",
            "https://HOST/api/v1/events/POLICY?token=<token> (the token from [server] events_token, ",
            "or the events-token file beside the state that `georep serve` named at start)"
        ));
    }
    if let Some(refused) = foreign_origin(&req) {
        return refused;
    }
    next.run(req).await
}

/// A browser's cross-site request: its `Origin` is not this server's `Host`.
fn foreign_origin(req: &Request) -> Option<Response> {
    let origin = req.headers().get(header::ORIGIN)?;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let same = origin.to_str().ok().zip(host).is_some_and(|(o, h)| {
        o.strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(h))
    });
    (!same).then(|| {
        ApiError(
            StatusCode::FORBIDDEN,
            "requests from a web page of another origin are refused on routes that change something".into(),
        )
        .into_response()
    })
}

/// Binds `listen` and serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    daemon: Arc<Daemon>,
    access: Access,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(daemon, access))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds an address with a message that names it and the fix.
pub async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        format!("cannot listen on {listen}: {e}; set [server] listen to a free address or stop the process using it")
    })
}

async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(token) = &app.access.token {
        if !bearer_is(req.headers(), token) {
            return unauthorized(
                "missing or wrong bearer token; send Authorization: Bearer <token from [server] token>",
            );
        }
    }
    next.run(req).await
}

/// Routes that change something: the write token always, a JSON body, and no request
/// from a web page of another origin (a browser sends `Origin` on cross-site POSTs).
async fn guard_change(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if !bearer_is(req.headers(), &app.access.write_token) {
        return unauthorized(
            "this route changes something and needs the API token: send Authorization: Bearer <token> \
             (from [server] token, or the api-token file beside the state that `georep serve` printed at start; \
             georep commands on this machine read it themselves)",
        );
    }
    // A read that only the write token may make (a reload plan re-reads the file).
    if req.method() == axum::http::Method::GET {
        return next.run(req).await;
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON with Content-Type: application/json (an empty object {} when there is nothing to say)".into(),
        )
        .into_response();
    }
    if let Some(refused) = foreign_origin(&req) {
        return refused;
    }
    next.run(req).await
}

fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|g| georep_core::constant_time_eq(g.as_bytes(), token.as_bytes()))
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError(StatusCode::UNAUTHORIZED, message.into()).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

async fn policies(State(app): State<Arc<App>>) -> ApiResult<impl IntoResponse> {
    let policies = blocking(&app, |d| Ok(policies_of(d)?.statuses()?)).await?;
    Ok(Json(georep_api::PolicyList { policies }))
}

async fn policy(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let s = blocking(&app, move |d| Ok(policies_of(d)?.status(&name)?)).await?;
    Ok(Json(s))
}

async fn object(
    State(app): State<Arc<App>>,
    Path((name, key)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let k = key.trim_start_matches('/').to_string();
    let n = name.clone();
    let s = blocking(&app, move |d| Ok(policies_of(d)?.object(&n, &k)?)).await?;
    if s.source.is_none() && s.destinations.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "policy '{name}' has never seen object '{key}'; check the key (relative to the source store) and the policy's filters"
            ),
        ));
    }
    Ok(Json(s))
}

async fn resync(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.get::<Policies>()?.resync(&name).await?))
}

async fn resume(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let note = app.get::<Policies>()?.resume(&name).await?;
    Ok(Json(georep_api::Resumed {
        resumed: name,
        note: note.to_string(),
    }))
}

async fn pause(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: georep_api::PauseRequest = if body.is_empty() {
        Default::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("body must be {{}} or {{\"note\": \"why\"}}: {e}"),
            )
        })?
    };
    let held = app
        .get::<Policies>()?
        .pause(&name, req.note.as_deref())
        .await?;
    Ok(Json(georep_api::Paused { paused: name, held }))
}

/// What a reload of the daemon's topology file would change.
async fn reload_plan(State(app): State<Arc<App>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.daemon.reload(true).await?))
}

/// Reloads the topology file: the difference is applied, the rest keeps running.
async fn reload(State(app): State<Arc<App>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.daemon.reload(false).await?))
}

async fn event(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let parsed =
        events::parse(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    match parsed {
        Parsed::Validation { code } => {
            tracing::info!(policy = %name, "Event Grid subscription validated");
            Ok(Json(json!({ "validationResponse": code })).into_response())
        }
        Parsed::SnsConfirmation { subscribe_url } => {
            // Escaped: a URL with a line break must not forge a log line.
            let shown = subscribe_url.escape_debug().to_string();
            tracing::warn!(policy = %name, subscribe_url = %shown, "SNS subscription needs confirmation: open the SubscribeURL to confirm it");
            Ok(Json(json!({ "confirm": subscribe_url })).into_response())
        }
        p @ Parsed::Changes { .. } => {
            let done = app.get::<Policies>()?.ingest(&name, p).await?;
            Ok(Json(done).into_response())
        }
    }
}

/// The CloudEvents webhook handshake: echo the origin back as allowed.
async fn event_handshake(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if !app.get::<Policies>()?.has_policy(&name) {
        return Err(georep_replicate::ReplicateError::UnknownPolicy(name).into());
    }
    let origin = headers
        .get(events::WEBHOOK_REQUEST_ORIGIN)
        .and_then(|v| v.to_str().ok());
    let Some(allowed) = events::cloudevents_allowed_origin(origin) else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "OPTIONS on the event webhook is the CloudEvents handshake and needs a WebHook-Request-Origin header".into(),
        ));
    };
    let mut r = StatusCode::OK.into_response();
    if let Ok(v) = HeaderValue::from_str(&allowed) {
        r.headers_mut().insert(events::WEBHOOK_ALLOWED_ORIGIN, v);
    }
    r.headers_mut().insert(
        events::WEBHOOK_ALLOWED_RATE,
        HeaderValue::from_static(events::ALLOWED_RATE_UNLIMITED),
    );
    Ok(r)
}

async fn databases(State(app): State<Arc<App>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(georep_api::DatabaseList {
        databases: app.get::<Databases>()?.statuses(),
    }))
}

async fn database(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    match app.get::<Databases>()?.status(&name)? {
        None => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database '{name}' has not been checked yet; retry in a few seconds"),
        )),
        Some(s) => Ok(Json(s)),
    }
}

async fn backups(State(app): State<Arc<App>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(georep_api::BackupList {
        backups: app.get::<Backups>()?.statuses(),
    }))
}

async fn backup(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.get::<Backups>()?.status(&name)?))
}

async fn backup_run(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.get::<Backups>()?.run_now(&name).await?))
}

async fn secret_syncs(State(app): State<Arc<App>>) -> ApiResult<impl IntoResponse> {
    let s = app.get::<SecretSyncs>()?;
    Ok(Json(georep_api::SecretSyncList {
        secret_syncs: s.statuses(),
    }))
}

async fn secret_sync(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.get::<SecretSyncs>()?.status(&name)?))
}

async fn secret_sync_run(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.get::<SecretSyncs>()?.run_now(&name).await?))
}

async fn relays(State(app): State<Arc<App>>) -> ApiResult<impl IntoResponse> {
    let all = blocking(&app, |d| Ok(relays_of(d)?.statuses()?)).await?;
    Ok(Json(all))
}

fn relays_of(d: &Daemon) -> ApiResult<&Relays> {
    d.get::<Relays>().ok_or_else(|| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the relays component is not running".into(),
        )
    })
}

async fn relay(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let one = blocking(&app, move |d| Ok(relays_of(d)?.status(&name)?)).await?;
    Ok(Json(one))
}

async fn relay_switchover(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.get::<Relays>()?.act(&name, "switchover").await?))
}

async fn relay_switchback(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.get::<Relays>()?.act(&name, "switchback").await?))
}

async fn relay_replay(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.get::<Relays>()?.act(&name, "replay").await?))
}

async fn concierges(State(app): State<Arc<App>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.get::<Concierges>()?.statuses()))
}

async fn concierge(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.get::<Concierges>()?.status(&name)?))
}

#[derive(serde::Deserialize)]
struct GroupQuery {
    group: Option<String>,
}

async fn concierge_devices(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<GroupQuery>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        app.get::<Concierges>()?
            .devices(&name, q.group.as_deref())?,
    ))
}

/// A JSON body of type `T`, or `T::default()` when there is none.
fn body_or_default<T: serde::de::DeserializeOwned + Default>(
    body: &Bytes,
    shape: &str,
) -> ApiResult<T> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("body must be {shape}: {e}"),
        )
    })
}

fn concierges_of(d: &Daemon) -> ApiResult<&Concierges> {
    d.get::<Concierges>()
        .ok_or_else(|| Error::internal("the concierges component is not running").into())
}

async fn concierge_failover(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: georep_api::ConciergeFailoverRequest = body_or_default(&body, "{\"to\": \"HUB\"}")?;
    let r = blocking(&app, move |d| {
        Ok(concierges_of(d)?.failover(&name, req.to.as_deref())?)
    })
    .await?;
    Ok(Json(r))
}

async fn concierge_failback(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let r = blocking(&app, move |d| Ok(concierges_of(d)?.failback(&name)?)).await?;
    Ok(Json(r))
}

async fn concierge_pin(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: georep_api::ConciergePinRequest = body_or_default(
        &body,
        "{\"device\": \"ID\"} or {\"group\": \"NAME\"}, with \"hub\": \"HUB\" to pin",
    )?;
    let r = blocking(&app, move |d| Ok(concierges_of(d)?.pin(&name, &req)?)).await?;
    Ok(Json(r))
}

async fn groups(State(app): State<Arc<App>>) -> ApiResult<impl IntoResponse> {
    let all = blocking(&app, |d| {
        Ok(d.get::<Groups>()
            .ok_or_else(|| Error::internal("the failover groups component is not running"))?
            .statuses()?)
    })
    .await?;
    Ok(Json(georep_api::GroupList {
        failover_groups: all,
    }))
}

async fn group(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(app.get::<Groups>()?.status(&name)?))
}

async fn failover(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: FailoverRequest = if body.is_empty() {
        FailoverRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"to\": \"MEMBER\"}}: {e}"),
            )
        })?
    };
    Ok(Json(
        app.get::<Groups>()?
            .failover(&name, req.to.as_deref(), req.force)
            .await?,
    ))
}

async fn reseed(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: ReseedRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("body must be {{\"member\": \"NAME\"}}: {e}"),
        )
    })?;
    Ok(Json(app.get::<Groups>()?.reseed(&name, &req.member).await?))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let d = app.daemon.clone();
    let text = tokio::task::spawn_blocking(move || d.metrics_text())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

#[cfg(test)]
mod tests {
    use georep_core::constant_time_eq;

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
