//! Whether a hub really works for devices: an MQTT round trip, not a TCP connect. The
//! probe connects with the hub's account, subscribes to a topic of its own, publishes
//! a message there and waits to receive it, all within a deadline; a broker that
//! accepts connections but does not route messages is unhealthy.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};

/// A failed probe, with what went wrong for status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(pub String);

fn host_port(url: &str) -> Result<(bool, String, u16), ProbeError> {
    georep_device::client::host_port(url).map_err(ProbeError)
}

/// The host and port of an `mqtt://` or `mqtts://` URL.
pub(crate) fn host_port_of(url: &str) -> Result<(String, u16), String> {
    host_port(url).map(|(_, h, p)| (h, p)).map_err(|e| e.0)
}

/// The hub's count of connected clients, when the account may read it.
const CONNECTED: &str = "$SYS/broker/clients/connected";

/// What a successful probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probed {
    /// How long the round trip took, connect included.
    pub took: Duration,
    /// The hub's own count of connected clients (`$SYS`, retained), when it tells it.
    pub connected: Option<u64>,
}

/// One round trip to the hub at `url` as `account` (user, password).
pub async fn round_trip(
    url: &str,
    account: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<Probed, ProbeError> {
    let (tls, host, port) = host_port(url)?;
    let nonce = format!("{:016x}", rand_u64());
    let mut opts = MqttOptions::new(format!("georep-probe-{nonce}"), host, port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_clean_session(true);
    if let Some((user, password)) = account {
        opts.set_credentials(user, password);
    }
    if tls {
        opts.set_transport(Transport::tls_with_config(tls_client().into()));
    }
    let topic = format!("georep/probe/{nonce}");
    let started = Instant::now();
    let (client, mut events) = AsyncClient::new(opts, 10);
    let run = async {
        let mut connected = None;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // The retained count arrives after the SUBACK, before the echo; a
                    // hub that refuses `$SYS` to the account just does not tell it.
                    client
                        .subscribe_many([
                            rumqttc::SubscribeFilter::new(topic.clone(), QoS::AtLeastOnce),
                            rumqttc::SubscribeFilter::new(CONNECTED.into(), QoS::AtMostOnce),
                        ])
                        .await
                        .map_err(|e| ProbeError(format!("cannot subscribe: {e}")))?;
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if matches!(
                        ack.return_codes.first(),
                        Some(rumqttc::SubscribeReasonCode::Failure) | None
                    ) {
                        return Err(ProbeError(format!(
                            "the hub refused the subscription to {topic}: give the account read and write access to georep/probe/#"
                        )));
                    }
                    client
                        .publish(&topic, QoS::AtLeastOnce, false, nonce.clone())
                        .await
                        .map_err(|e| ProbeError(format!("cannot publish: {e}")))?;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == CONNECTED => {
                    connected = std::str::from_utf8(&p.payload)
                        .ok()
                        .and_then(|t| t.trim().parse().ok());
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                    return Ok(Probed {
                        took: started.elapsed(),
                        connected,
                    });
                }
                Ok(_) => {}
                Err(e) => return Err(ProbeError(describe(&e))),
            }
        }
    };
    let r = match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError(format!(
            "no round trip within {timeout:?} (connect, subscribe, publish, receive): is the hub routing messages, and may the account publish and subscribe to georep/probe/#?"
        ))),
    };
    let _ = client.try_disconnect();
    r
}

fn describe(e: &rumqttc::ConnectionError) -> String {
    match e {
        rumqttc::ConnectionError::ConnectionRefused(code) => format!(
            "the hub refused the connection ({code:?}){}",
            if matches!(
                code,
                rumqttc::ConnectReturnCode::NotAuthorized
                    | rumqttc::ConnectReturnCode::BadUserNamePassword
            ) {
                ": check the hub's username and password"
            } else {
                ""
            }
        ),
        rumqttc::ConnectionError::Io(io) => format!("cannot reach the hub: {io}"),
        other => format!("{other}"),
    }
}

pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// TLS to `mqtts://` hubs with the system's roots.
pub(crate) fn tls_client() -> tokio_rustls::rustls::ClientConfig {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            tokio_rustls::rustls::ClientConfig::builder()
                .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_give_host_port_and_tls() {
        assert_eq!(
            host_port("mqtt://10.0.0.9:1884").expect("ok"),
            (false, "10.0.0.9".into(), 1884)
        );
        assert_eq!(
            host_port("mqtts://hub.example").expect("ok"),
            (true, "hub.example".into(), 8883)
        );
        assert_eq!(
            host_port("mqtt://[::1]:1883").expect("ok"),
            (false, "::1".into(), 1883)
        );
        assert!(host_port("http://x").is_err());
    }
}
