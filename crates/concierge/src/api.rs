//! The concierge's HTTP API, for devices:
//! - `GET /v1/devices/{id}/assignment` with the device's shared access signature:
//!   the hub to use, its fallbacks, how long the answer holds, and the same as a
//!   signed JWS (`token`). No token: 401. An unknown or disabled device, a bad
//!   signature: 403, the same answer each time, saying nothing about the hubs.
//! - `GET /.well-known/jwks.json`: the key assignments are signed with.
//! - `GET /healthz`.
//!
//! Which hub: the one pinned for the device or its group (drills), else the current
//! one of the concierge (moved by failover and failback); fallbacks are the other hubs,
//! healthy ones first, in the order of preference.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::shared::now;
pub use crate::shared::{Assignment, HubView, Shared};

/// Shared access signatures may be made for at most this long ahead.
const MAX_SAS_TTL: u64 = 24 * 3600;

/// The API's routes over `shared`.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route(
            "/v1/devices/{id}/assignment",
            axum::routing::get(assignment),
        )
        .route("/.well-known/jwks.json", axum::routing::get(jwks))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(shared)
}

async fn jwks(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(s.signer.jwks()).into_response()
}

fn forbidden(s: &Shared) -> Response {
    s.refused.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({"error": "forbidden"})),
    )
        .into_response()
}

async fn assignment(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(auth) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        s.refused.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "SharedAccessSignature")],
            axum::Json(serde_json::json!({"error": "send Authorization: SharedAccessSignature sr=HOST%2Fdevices%2FID&sig=...&se=..."})),
        )
            .into_response();
    };
    if !s.loaded() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "5")],
            axum::Json(serde_json::json!({"error": "the concierge has not read its identities yet; ask again later"})),
        )
            .into_response();
    }
    let device = s.device(&id);
    let at = now();
    // Unknown, disabled or a bad signature: one answer, so nothing is learnt from it.
    // The signature is checked for strangers too (against a key no token was made
    // with), so an unknown device costs as much time as a known one.
    let known = device.filter(|d| d.enabled);
    let key: &[u8] = known.as_ref().map_or(&[0u8; 32][..], |d| &d.key[..]);
    let checked = crate::sas::verify(auth, &id, key, at, MAX_SAS_TTL).is_ok();
    let Some(device) = known.filter(|_| checked) else {
        return forbidden(&s);
    };
    let Some(a) = s.assignment(&device, at) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no hub").into_response();
    };
    s.given(&a);
    let token = s.signer.sign(&a);
    axum::Json(serde_json::json!({"assignment": a, "token": token})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assign::Signer;
    use base64::Engine as _;
    use std::time::Duration;

    fn hub(name: &str) -> HubView {
        HubView {
            name: name.into(),
            region: format!("r-{name}"),
            url: format!("mqtt://{name}:1883"),
            healthy: true,
        }
    }

    async fn get(url: &str, auth: Option<&str>) -> (u16, serde_json::Value) {
        let mut r = reqwest::Client::new().get(url);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let resp = r.send().await.expect("get");
        let status = resp.status().as_u16();
        let body = resp.bytes().await.expect("body");
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    #[tokio::test]
    async fn devices_get_signed_assignments_and_strangers_learn_nothing() {
        let key = vec![3u8; 32];
        let devices = crate::identities::parse(
            format!(
                r#"{{"devices": [
                    {{"id": "dev-1", "key": "{k}", "group": "plant-a"}},
                    {{"id": "dev-2", "key": "{k}", "enabled": false}}
                ]}}"#,
                k = base64::engine::general_purpose::STANDARD.encode(&key)
            )
            .as_bytes(),
        )
        .expect("identities");
        let s = Shared::new(
            Signer::from_seed(&[9u8; 32]).expect("seed"),
            vec![hub("qc"), hub("we"), hub("ne")],
            crate::shared::About {
                name: "devices".into(),
                listen: "127.0.0.1:0".into(),
                identities: "fleet/devices.json".into(),
                ttl: Duration::from_secs(300),
            },
        );
        s.set_devices(devices.devices);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", l.local_addr().expect("addr"));
        tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
            l,
            router(s.clone()),
        )));
        let at = now() + 600;
        let tok =
            |id: &str, k: &[u8]| crate::sas::token(&format!("hub.example/devices/{id}"), k, at);

        let (status, body) = get(
            &format!("{base}/v1/devices/dev-1/assignment"),
            Some(&tok("dev-1", &key)),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["assignment"]["hub"]["name"], "qc");
        assert_eq!(body["assignment"]["reason"], "preferred");
        assert_eq!(body["assignment"]["fallbacks"][0]["name"], "we");
        // The token verifies with the published key and says the same.
        let (_, jwks) = get(&format!("{base}/.well-known/jwks.json"), None).await;
        let x = jwks["keys"][0]["x"].as_str().expect("x");
        let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(x)
            .expect("b64");
        let claims = crate::assign::verify(body["token"].as_str().expect("token"), &public)
            .expect("verifies");
        assert_eq!(claims, body["assignment"]);

        // Failover: qc unhealthy, devices sent to we; ne first among fallbacks? no: the
        // healthy ones first (ne), then qc.
        s.set_healthy(0, false);
        s.set_current(1);
        let (_, body) = get(
            &format!("{base}/v1/devices/dev-1/assignment"),
            Some(&tok("dev-1", &key)),
        )
        .await;
        assert_eq!(
            (
                body["assignment"]["hub"]["name"].as_str(),
                body["assignment"]["reason"].as_str()
            ),
            (Some("we"), Some("failover"))
        );
        let order: Vec<&str> = body["assignment"]["fallbacks"]
            .as_array()
            .expect("fallbacks")
            .iter()
            .filter_map(|h| h["name"].as_str())
            .collect();
        assert_eq!(order, ["ne", "qc"]);
        // A group pinned for a drill.
        s.pin("group:plant-a", Some("ne"));
        let (_, body) = get(
            &format!("{base}/v1/devices/dev-1/assignment"),
            Some(&tok("dev-1", &key)),
        )
        .await;
        assert_eq!(
            (
                body["assignment"]["hub"]["name"].as_str(),
                body["assignment"]["reason"].as_str()
            ),
            (Some("ne"), Some("pinned"))
        );

        // Strangers: the same 403, nothing about hubs.
        let (no_auth, _) = get(&format!("{base}/v1/devices/dev-1/assignment"), None).await;
        assert_eq!(no_auth, 401);
        let mut answers = Vec::new();
        for (id, token) in [
            ("dev-1", tok("dev-1", b"a wrong key for dev-1 ....")),
            ("dev-2", tok("dev-2", &key)),
            ("nobody", tok("nobody", &key)),
            ("dev-1", tok("dev-2", &key)),
        ] {
            let (status, body) =
                get(&format!("{base}/v1/devices/{id}/assignment"), Some(&token)).await;
            assert_eq!(status, 403, "{id}");
            assert!(!body.to_string().contains("mqtt"), "{body}");
            answers.push(body);
        }
        assert!(answers.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(s.served.load(Ordering::Relaxed), 3);
        // Devices per hub: dev-1's last assignment (pinned to ne).
        let st = s.status();
        let per: Vec<(String, u64)> = st
            .hubs
            .iter()
            .map(|h| (h.name.clone(), h.assigned_devices))
            .collect();
        assert_eq!(per, [("qc".into(), 0), ("we".into(), 0), ("ne".into(), 1)]);
        assert_eq!(st.refused_requests, 5);
    }
}
