//! One watcher per hub with an account: a standing MQTT connection that hears devices'
//! signed presence (retained, so a watcher that connects late still learns where every
//! device is) and publishes the concierge's reassign notices. Presence is taken only
//! when the device's key signed it and it names this hub; when the watcher loses the
//! hub, where devices are there becomes unknown.

use std::sync::Arc;
use std::time::Duration;

use georep_device::claims::{presence_topic, reassign_topic};
use georep_device::Presence;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;

use crate::shared::Shared;

/// Watches hub `place` until `stop`; reconnects after 1 s, doubling to 30 s.
pub(crate) async fn watch(
    concierge: String,
    place: usize,
    hub: georep_core::Hub,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let (Some(user), Some(pw)) = (hub.username.clone(), hub.password.clone()) else {
        return;
    };
    let Ok((host, port)) = crate::probe::host_port_of(&hub.url) else {
        return;
    };
    let filter = presence_topic(&concierge, "+");
    let reassign = reassign_topic(&concierge);
    let mut notices = shared.notices();
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut opts = MqttOptions::new(
            format!(
                "georep-watch-{concierge}-{place}-{:08x}",
                crate::probe::rand_u64() as u32
            ),
            host.clone(),
            port,
        );
        opts.set_credentials(user.clone(), pw.clone());
        opts.set_keep_alive(Duration::from_secs(5));
        // Any device may publish on the presence topics (Mosquitto 2.0's dynamic
        // security cannot limit a device to its own): accept what the hub accepts
        // (its default limit, 256 MiB) so an oversized message is read and ignored
        // rather than breaking the watch again and again.
        opts.set_max_packet_size(256 << 20, 1 << 20);
        if hub.url.starts_with("mqtts://") {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                crate::probe::tls_client().into(),
            ));
        }
        let (client, mut events) = AsyncClient::new(opts, 256);
        let mut up = false;
        let lost = loop {
            tokio::select! {
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        up = true;
                        backoff = Duration::from_secs(1);
                        shared.watched(place, true);
                        let _ = client.subscribe(&filter, QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let taken = serde_json::from_slice::<Presence>(&p.payload)
                            .ok()
                            .filter(|pr| p.topic == presence_topic(&concierge, &pr.device))
                            .is_some_and(|pr| shared.present(place, &pr));
                        if !taken {
                            tracing::debug!(concierge = %concierge, hub = %hub.name, topic = %p.topic, "presence ignored: not signed by the device, or not for this hub");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break e.to_string(),
                },
                n = notices.recv() => match n {
                    Ok(notice) => {
                        if up {
                            let body = serde_json::to_vec(&notice).unwrap_or_default();
                            if let Err(e) = client.publish(&reassign, QoS::AtLeastOnce, false, body).await {
                                tracing::warn!(concierge = %concierge, hub = %hub.name, error = %e, "cannot publish a reassign notice");
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = stop.changed() => {
                    let _ = client.try_disconnect();
                    return;
                }
            }
        };
        if up {
            tracing::warn!(concierge = %concierge, hub = %hub.name, error = %lost, "lost the hub's presence watch; reconnecting");
        }
        shared.watched(place, false);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
