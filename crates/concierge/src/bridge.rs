//! Bridging (`bridge = [FILTERS]`): messages on the filters, published on any hub, are
//! published on every other hub, so a command sent in one region reaches devices
//! connected in another. One MQTT 5 connection per hub, as the hub's admin account,
//! both subscribes and publishes there: its subscriptions are `no local` (the hub does
//! not hand it back what it published itself) and what it publishes carries the user
//! property `georep-bridge` (so a retained copy read back later, or another georep's
//! bridge, never carries it on again): no loop. Retain flags are kept; QoS 2 is carried
//! as QoS 1. Messages for a hub that is down are dropped and counted (a bridge is not a
//! queue: devices that need every command use retained messages or their own acks).
//! Retained messages already on a hub when the bridge connects are not carried (a
//! reconnect would replay them); new ones are, retained.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, watch};

use crate::shared::Shared;

/// The largest message bridged.
const MAX_PACKET: u32 = 16 << 20;

/// The user property on what georep bridged: the hub it came from.
pub(crate) const MARK: &str = "georep-bridge";

/// Bridges `filters` between every pair of `hubs` (those with an account) until `stop`.
pub(crate) async fn run(
    concierge: String,
    hubs: Vec<georep_core::Hub>,
    filters: Vec<String>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<(usize, rumqttc::v5::mqttbytes::v5::Publish)>(1024);
    let mut clients: Vec<Option<AsyncClient>> = Vec::new();
    let mut pollers = Vec::new();
    for (i, hub) in hubs.iter().enumerate() {
        let (Some(user), Some(pw)) = (hub.username.clone(), hub.password.clone()) else {
            clients.push(None);
            continue;
        };
        let Ok((host, port)) = crate::probe::host_port_of(&hub.url) else {
            clients.push(None);
            continue;
        };
        let mut opts = MqttOptions::new(
            format!(
                "georep-bridge-{concierge}-{i}-{:08x}",
                crate::probe::rand_u64() as u32
            ),
            host,
            port,
        );
        opts.set_credentials(user, pw);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_start(true);
        // Told to the hub (MQTT 5): it never sends more, so a large message is not
        // bridged (the hub drops it for this connection) instead of breaking the
        // connection again and again.
        opts.set_max_packet_size(Some(MAX_PACKET));
        if hub.url.starts_with("mqtts://") {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                crate::probe::tls_client().into(),
            ));
        }
        let (client, el) = AsyncClient::new(opts, 1024);
        clients.push(Some(client.clone()));
        pollers.push(tokio::spawn(poll(
            concierge.clone(),
            hub.name.clone(),
            i,
            client,
            el,
            filters.clone(),
            tx.clone(),
        )));
    }
    drop(tx);
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Some((from, p)) = got else { break };
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                tracing::debug!(concierge = %concierge, from = %hubs[from].name, %topic, "bridging");
                for (j, c) in clients.iter().enumerate() {
                    let Some(c) = c.as_ref().filter(|_| j != from) else { continue };
                    let props = PublishProperties {
                        user_properties: vec![(MARK.into(), hubs[from].name.clone())],
                        ..PublishProperties::default()
                    };
                    let qos = if p.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                    let sent = c
                        .try_publish_with_properties(topic.clone(), qos, p.retain, p.payload.clone(), props)
                        .is_ok();
                    shared.bridged(j, sent);
                }
            }
            _ = stop.changed() => break,
        }
    }
    for p in pollers {
        p.abort();
    }
}

/// Keeps one hub's bridge connection: subscribes on every (re)connect, hands what it
/// hears (not bridged before) to the bridge.
async fn poll(
    concierge: String,
    hub: String,
    place: usize,
    client: AsyncClient,
    mut el: rumqttc::v5::EventLoop,
    filters: Vec<String>,
    tx: mpsc::Sender<(usize, rumqttc::v5::mqttbytes::v5::Publish)>,
) {
    let mut backoff = Duration::from_secs(1);
    let mut down = false;
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack.return_codes.iter().any(|c| {
                    !matches!(
                        c,
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    )
                }) {
                    tracing::warn!(concierge = %concierge, hub = %hub, codes = ?ack.return_codes, "the hub refused a bridge subscription: may the admin account subscribe to the bridged topics?");
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_secs(1);
                if down {
                    tracing::info!(concierge = %concierge, hub = %hub, "bridge connected again");
                    down = false;
                }
                let subs = filters.iter().map(|f| {
                    let mut s = Filter::new(f.clone(), QoS::AtLeastOnce);
                    s.nolocal = true;
                    s.preserve_retain = true;
                    // Retained messages are not sent on subscribing: a reconnect must
                    // not replay old commands, or a stale copy overwrite a newer one.
                    s.retain_forward_rule = rumqttc::v5::mqttbytes::v5::RetainForwardRule::Never;
                    s
                });
                if let Err(e) = client.subscribe_many(subs).await {
                    tracing::warn!(concierge = %concierge, hub = %hub, error = %e, "bridge cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let marked = p
                    .properties
                    .as_ref()
                    .is_some_and(|pr| pr.user_properties.iter().any(|(k, _)| k == MARK));
                if !marked && tx.send((place, p)).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if !down {
                    tracing::warn!(concierge = %concierge, hub = %hub, error = %e, "bridge lost the hub; messages for it are dropped until it is back");
                    down = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
