//! The reference device client: what a device of a concierge does, in a form that runs
//! on a device and, by the hundred, in tests and benchmarks.
//!
//! 1. Ask the concierge for an assignment with a shared access signature; check its
//!    signature against the concierge's public key (pinned, never fetched) and that it
//!    is for this device and not expired.
//! 2. Connect to the assigned hub (MQTT, username = device id, password derived from
//!    the key); if it refuses or cannot be reached, try the fallbacks in the order
//!    given. On connecting: subscribe to the reassign notices and the application's
//!    topics, and publish signed presence (with a signed will for when it dies).
//! 3. When the connection is lost, wait a random time up to the backoff (full jitter,
//!    doubling from `min` to `max` while nothing works, back to `min` after a working
//!    connection) and ask again, so a region's devices do not stampede the concierge or
//!    the next hub. When the concierge cannot be reached, use the last assignment.
//! 4. On a reassign notice for this device (all, its group, or its id), wait a random
//!    part of the notice's spread and ask again; on expiry of the assignment, ask
//!    again; on a fallback it moved to by itself (the assigned hub would not take it),
//!    ask again every `fallback_recheck` (jittered). If the answer names another hub,
//!    say goodbye (offline presence) and move.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event as MqttEvent, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};

use crate::claims::{
    mqtt_password, presence_topic, reassign_topic, Claims, Hub, Presence, Reassign,
};

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// A random wait in `[0, min(max, min × 2^attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self
            .min
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        jitter(cap)
    }
}

fn jitter(up_to: Duration) -> Duration {
    let ms = up_to.as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(if ms == 0 {
        0
    } else {
        rand::random_range(0..=ms)
    })
}

/// How a device reaches its concierge and who it is.
#[derive(Clone)]
pub struct Config {
    /// The concierge's base URL: `https://HOST:PORT` (or `http://` on loopback).
    pub concierge_url: String,
    /// The concierge's name (`[[concierges]] name`): its MQTT topics carry it.
    pub concierge: String,
    pub id: String,
    /// The device's key (its shared access signatures and MQTT password derive from it).
    pub key: Vec<u8>,
    /// The concierge's Ed25519 public key (the `x` of its JWK set, decoded), pinned.
    pub public_key: Vec<u8>,
    /// Topics to subscribe to on every hub.
    pub subscriptions: Vec<String>,
    /// A CA certificate (PEM) to trust besides the system's, for the concierge and hubs.
    pub ca_pem: Option<Vec<u8>>,
    pub backoff: Backoff,
    pub keep_alive: Duration,
    /// How long each shared access signature holds.
    pub sas_ttl: Duration,
    /// On a fallback the device moved to by itself (its hub would not take it), how
    /// often it asks again (jittered between half and all of it), so it goes back once
    /// the concierge names a hub that works.
    pub fallback_recheck: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("concierge_url", &self.concierge_url)
            .field("concierge", &self.concierge)
            .field("id", &self.id)
            .field("key", &"***")
            .finish()
    }
}

impl Config {
    /// A device `id` with `key` of the concierge `concierge` at `url`, trusting
    /// assignments signed with `public_key`; defaults for the rest.
    pub fn new(url: &str, concierge: &str, id: &str, key: &[u8], public_key: &[u8]) -> Self {
        Self {
            concierge_url: url.trim_end_matches('/').to_string(),
            concierge: concierge.into(),
            id: id.into(),
            key: key.to_vec(),
            public_key: public_key.to_vec(),
            subscriptions: Vec::new(),
            ca_pem: None,
            backoff: Backoff::default(),
            keep_alive: Duration::from_secs(5),
            sas_ttl: Duration::from_secs(3600),
            fallback_recheck: Duration::from_secs(20),
        }
    }
}

/// What happens to a device, for the application (and tests) to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The concierge answered (a checked assignment).
    Assigned(Claims),
    /// The concierge could not be reached or refused; the last assignment is used.
    ConciergeUnreachable(String),
    Connected {
        hub: String,
    },
    Disconnected {
        hub: String,
        error: String,
    },
    /// A message on one of the application's subscriptions.
    Message {
        topic: String,
        payload: Bytes,
    },
}

/// A running device.
pub struct Handle {
    out: mpsc::Sender<(String, Vec<u8>)>,
    hub: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// The hub the device is connected to now.
    pub fn hub(&self) -> Option<String> {
        self.hub.borrow().clone()
    }

    /// Waits until the device is connected to a hub; gives its name.
    pub async fn connected(&mut self) -> Option<String> {
        self.hub
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|h| h.clone())
    }

    /// Publishes `payload` on `topic` (QoS 1) through the current connection; queued
    /// while the device moves.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), String> {
        self.out
            .send((topic.to_string(), payload))
            .await
            .map_err(|_| "the device has stopped".to_string())
    }

    /// Stops the device (no goodbye: as if it lost power).
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Starts a device; its events arrive on the receiver (keep reading it: a full channel
/// holds the device back).
pub fn spawn(cfg: Config) -> (Handle, mpsc::Receiver<Event>) {
    let (events, rx) = mpsc::channel(256);
    let (out_tx, out_rx) = mpsc::channel(256);
    let (hub_tx, hub_rx) = watch::channel(None);
    let task = tokio::spawn(run(cfg, events, out_rx, hub_tx));
    (
        Handle {
            out: out_tx,
            hub: hub_rx,
            task,
        },
        rx,
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Asks the concierge; checks the signed answer.
async fn ask(http: &reqwest::Client, cfg: &Config) -> Result<Claims, String> {
    let now = now_ms() / 1000;
    let host = cfg
        .concierge_url
        .split("://")
        .nth(1)
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default();
    let token = crate::sas::token(
        &format!("{host}/devices/{}", cfg.id),
        &cfg.key,
        now + cfg.sas_ttl.as_secs(),
    );
    let r = http
        .get(format!(
            "{}/v1/devices/{}/assignment",
            cfg.concierge_url, cfg.id
        ))
        .header("authorization", token)
        .send()
        .await
        .map_err(|e| format!("cannot reach the concierge: {e}"))?;
    let status = r.status();
    if !status.is_success() {
        return Err(format!(
            "the concierge answered {status}{}",
            if status.as_u16() == 403 {
                ": the device is unknown or disabled, or its key is not the concierge's"
            } else {
                ""
            }
        ));
    }
    let bytes = r
        .bytes()
        .await
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    let body: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("not an assignment: {e}"))?;
    let token = body["token"].as_str().ok_or("the answer has no token")?;
    let claims = crate::claims::verify(token, &cfg.public_key)
        .ok_or("the assignment's signature is not the concierge's: ignored")?;
    let claims: Claims =
        serde_json::from_value(claims).map_err(|e| format!("not an assignment: {e}"))?;
    if claims.device != cfg.id {
        return Err("the assignment is for another device: ignored".into());
    }
    // A minute of clock skew is allowed.
    if claims.exp + 60 <= now {
        return Err("the assignment has expired: ignored".into());
    }
    Ok(claims)
}

fn http_client(cfg: &Config) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(pem) = &cfg.ca_pem {
        if let Ok(c) = reqwest::Certificate::from_pem(pem) {
            b = b.add_root_certificate(c);
        }
    }
    b.build().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot build the HTTP client as configured (the CA certificate?); using the system's roots");
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default()
    })
}

fn tls_client(cfg: &Config) -> tokio_rustls::rustls::ClientConfig {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(pem) = &cfg.ca_pem {
        let mut rd = std::io::Cursor::new(pem);
        for c in rustls_pemfile_certs(&mut rd) {
            let _ = roots.add(c);
        }
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(roots.clone())
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| {
            tokio_rustls::rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
        })
}

/// The certificates of a PEM bundle.
fn rustls_pemfile_certs(
    rd: &mut dyn std::io::BufRead,
) -> Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::pem_reader_iter(rd)
        .filter_map(Result::ok)
        .collect()
}

/// How a session with one hub ended.
enum Ended {
    /// The concierge named another hub: go there.
    Moved(Claims),
    /// Connected, then lost.
    Lost(String),
    /// Never connected.
    Refused(String),
}

async fn run(
    cfg: Config,
    events: mpsc::Sender<Event>,
    mut out: mpsc::Receiver<(String, Vec<u8>)>,
    hub_tx: watch::Sender<Option<String>>,
) {
    let http = http_client(&cfg);
    let mut attempt = 0u32;
    let mut last: Option<Claims> = None;
    let mut next: Option<Claims> = None;
    loop {
        let claims = match next.take() {
            Some(c) => c,
            None => match ask(&http, &cfg).await {
                Ok(c) => {
                    let _ = events.send(Event::Assigned(c.clone())).await;
                    last = Some(c.clone());
                    c
                }
                Err(e) => {
                    let _ = events.send(Event::ConciergeUnreachable(e)).await;
                    match &last {
                        Some(c) => c.clone(),
                        None => {
                            tokio::time::sleep(cfg.backoff.delay(attempt)).await;
                            attempt = attempt.saturating_add(1);
                            continue;
                        }
                    }
                }
            },
        };
        let hubs: Vec<Hub> = std::iter::once(claims.hub.clone())
            .chain(claims.fallbacks.iter().cloned())
            .collect();
        let mut worked = false;
        for hub in &hubs {
            match session(&cfg, &http, &claims, hub, &events, &mut out, &hub_tx).await {
                Ended::Moved(c) => {
                    let _ = events.send(Event::Assigned(c.clone())).await;
                    last = Some(c.clone());
                    next = Some(c);
                    attempt = 0;
                    worked = true;
                    break;
                }
                Ended::Lost(e) => {
                    let _ = events
                        .send(Event::Disconnected {
                            hub: hub.name.clone(),
                            error: e,
                        })
                        .await;
                    attempt = 0;
                    worked = true;
                    tokio::time::sleep(cfg.backoff.delay(0)).await;
                    break;
                }
                Ended::Refused(e) => {
                    tracing::debug!(device = %cfg.id, hub = %hub.name, error = %e, "cannot connect; trying the next hub");
                }
            }
        }
        if !worked {
            tokio::time::sleep(cfg.backoff.delay(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }
}

/// Whether an `mqtt://` or `mqtts://` URL asks for TLS, its host and its port (1883
/// or 8883 when not given; IPv6 hosts in brackets, with or without a port).
pub fn host_port(url: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(format!("{url} is not an mqtt:// or mqtts:// URL"));
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url}: an IPv6 host needs its closing ']'"))?;
            (h, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("{url}: the port is not a number"))?,
        None if tls => 8883,
        None => 1883,
    };
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    Ok((tls, host.to_string(), port))
}

/// One connection to `hub`, until it is lost or the device moves.
async fn session(
    cfg: &Config,
    http: &reqwest::Client,
    claims: &Claims,
    hub: &Hub,
    events: &mpsc::Sender<Event>,
    out: &mut mpsc::Receiver<(String, Vec<u8>)>,
    hub_tx: &watch::Sender<Option<String>>,
) -> Ended {
    let (tls, host, port) = match host_port(&hub.url) {
        Ok(x) => x,
        Err(e) => return Ended::Refused(e),
    };
    let mut opts = MqttOptions::new(cfg.id.clone(), host, port);
    opts.set_credentials(cfg.id.clone(), mqtt_password(&cfg.key));
    opts.set_keep_alive(cfg.keep_alive);
    opts.set_clean_session(true);
    if tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(tls_client(cfg).into()));
    }
    let at = now_ms();
    let presence = |online: bool| {
        serde_json::to_vec(&Presence::signed(&cfg.key, &cfg.id, &hub.name, at, online))
            .unwrap_or_default()
    };
    let ptopic = presence_topic(&cfg.concierge, &cfg.id);
    // Retained, so the concierge learns where devices are even when it connects later.
    opts.set_last_will(LastWill::new(
        &ptopic,
        presence(false),
        QoS::AtLeastOnce,
        true,
    ));
    let reassign = reassign_topic(&cfg.concierge);
    let (client, mut el) = AsyncClient::new(opts, 64);
    let mut connected = false;
    let mut group = claims.group.clone();
    // Ask again when the assignment expires, or soon after a notice; on a fallback the
    // concierge did not name, every `fallback_recheck` too.
    let recheck = || {
        (hub.name != claims.hub.name).then(|| {
            let half = cfg.fallback_recheck / 2;
            Instant::now() + half + jitter(half)
        })
    };
    let expires_in = claims.exp.saturating_sub(now_ms() / 1000).max(5);
    let mut ask_at = Instant::now() + Duration::from_secs(expires_in);
    if let Some(t) = recheck() {
        ask_at = ask_at.min(t);
    }
    loop {
        tokio::select! {
            ev = el.poll() => match ev {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    let mut subs = vec![rumqttc::SubscribeFilter::new(reassign.clone(), QoS::AtLeastOnce)];
                    subs.extend(cfg.subscriptions.iter().map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce)));
                    let _ = client.subscribe_many(subs).await;
                    let _ = client.publish(&ptopic, QoS::AtLeastOnce, true, presence(true)).await;
                    hub_tx.send_replace(Some(hub.name.clone()));
                    let _ = events.send(Event::Connected { hub: hub.name.clone() }).await;
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.topic == reassign => {
                    // What does not parse is ignored; the spread is at least a second, so
                    // a notice can never make a fleet ask all at once.
                    if let Ok(notice) = serde_json::from_slice::<Reassign>(&p.payload) {
                        if notice.concerns(&cfg.id, group.as_deref()) {
                            let spread = Duration::from_millis(notice.spread_ms).max(Duration::from_secs(1));
                            ask_at = ask_at.min(Instant::now() + jitter(spread));
                        }
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let _ = events.send(Event::Message { topic: p.topic.clone(), payload: p.payload.clone() }).await;
                }
                Ok(_) => {}
                Err(e) => {
                    hub_tx.send_replace(None);
                    return if connected { Ended::Lost(e.to_string()) } else { Ended::Refused(e.to_string()) };
                }
            },
            Some((topic, payload)) = out.recv(), if connected => {
                let _ = client.publish(topic, QoS::AtLeastOnce, false, payload).await;
            }
            () = tokio::time::sleep_until(ask_at.into()) => {
                match ask(http, cfg).await {
                    Ok(c) if c.hub.name != hub.name => {
                        // Goodbye here, then move.
                        let _ = client.publish(&ptopic, QoS::AtLeastOnce, true, presence(false)).await;
                        let _ = client.disconnect().await;
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            while el.poll().await.is_ok() {}
                        })
                        .await;
                        hub_tx.send_replace(None);
                        return Ended::Moved(c);
                    }
                    Ok(c) => {
                        group = c.group.clone();
                        let expires_in = c.exp.saturating_sub(now_ms() / 1000).max(5);
                        ask_at = Instant::now() + Duration::from_secs(expires_in);
                        let _ = events.send(Event::Assigned(c)).await;
                    }
                    Err(e) => {
                        let _ = events.send(Event::ConciergeUnreachable(e)).await;
                        ask_at = Instant::now() + cfg.backoff.max.min(Duration::from_secs(30));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_capped() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for attempt in 0..30 {
            let cap = Duration::from_millis(100 * (1u64 << attempt.min(20))).min(b.max);
            let d = b.delay(attempt);
            assert!(d <= cap, "{attempt}: {d:?} > {cap:?}");
        }
        // Jittered: not every wait is the same.
        let waits: std::collections::BTreeSet<Duration> = (0..50).map(|_| b.delay(5)).collect();
        assert!(waits.len() > 10);
        assert_eq!(
            host_port("mqtts://hub.example"),
            Ok((true, "hub.example".into(), 8883))
        );
        assert_eq!(
            host_port("mqtt://127.0.0.1:1884"),
            Ok((false, "127.0.0.1".into(), 1884))
        );
        assert_eq!(host_port("mqtt://[::1]"), Ok((false, "::1".into(), 1883)));
        assert_eq!(
            host_port("mqtt://[::1]:1884"),
            Ok((false, "::1".into(), 1884))
        );
        assert!(host_port("http://x").is_err());
        assert!(host_port("mqtt://[::1").is_err());
        assert!(host_port("mqtt://h:port").is_err());
    }
}
