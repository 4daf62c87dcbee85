//! Device identities kept on every hub, through Mosquitto's dynamic security plugin:
//! JSON commands on `$CONTROL/dynamic-security/v1`, answers on `.../response`. Clients
//! georep manages carry the text description `georep:CONCIERGE`; any other client
//! whose name is a device's is drift, reported and never touched. A device's MQTT
//! password is derived from its key (`mqtt_password`), so the device computes it too
//! and no second secret has to be handed out.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

use crate::identities::Device;

const CONTROL: &str = "$CONTROL/dynamic-security/v1";

/// The MQTT password of a device with `key`: base64(HMAC-SHA256(key, "georep-mqtt")).
pub fn mqtt_password(key: &[u8]) -> String {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    base64::engine::general_purpose::STANDARD.encode(aws_lc_rs::hmac::sign(&k, b"georep-mqtt"))
}

/// Sends `commands` as `admin` to the hub at `url` and gives the answers, in order.
pub async fn call(
    url: &str,
    admin: (&str, &str),
    commands: Vec<Value>,
    timeout: Duration,
) -> Result<Vec<Value>, String> {
    let (host, port) = crate::probe::host_port_of(url)?;
    let mut opts = MqttOptions::new(
        format!("georep-dynsec-{:016x}", crate::probe::rand_u64()),
        host,
        port,
    );
    opts.set_credentials(admin.0, admin.1);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(16 << 20, 16 << 20);
    if url.starts_with("mqtts://") {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            crate::probe::tls_client().into(),
        ));
    }
    let (client, mut events) = AsyncClient::new(opts, 10);
    let response = format!("{CONTROL}/response");
    let body = json!({ "commands": commands }).to_string();
    let run = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => client
                    .subscribe(&response, QoS::AtLeastOnce)
                    .await
                    .map_err(|e| e.to_string())?,
                Ok(Event::Incoming(Packet::SubAck(_))) => client
                    .publish(CONTROL, QoS::AtLeastOnce, false, body.clone())
                    .await
                    .map_err(|e| e.to_string())?,
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == response => {
                    let v: Value = serde_json::from_slice(&p.payload)
                        .map_err(|e| format!("not a dynamic security answer: {e}"))?;
                    return Ok(v["responses"].as_array().cloned().unwrap_or_default());
                }
                Ok(_) => {}
                Err(e) => return Err(format!("{e}")),
            }
        }
    };
    let r = tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| Err(format!("no answer on {response} within {timeout:?}: is the dynamic security plugin loaded, and is the account its admin?")));
    let _ = client.try_disconnect();
    r
}

/// What keeping `fleet` on a hub takes: the commands, and drift to report. `clients`
/// is the hub's `listClients` (verbose) answer; `disabled` the names it has disabled;
/// `set_passwords` the devices whose password must be set (new keys, or every one on
/// the first pass after a start, since a hub never tells a password).
pub fn plan(
    tag: &str,
    fleet: &BTreeMap<String, Device>,
    clients: &[Value],
    disabled: &[String],
    set_passwords: &dyn Fn(&str) -> bool,
) -> (Vec<Value>, Vec<String>) {
    let mut on_hub: BTreeMap<String, bool> = BTreeMap::new();
    for c in clients {
        if let Some(name) = c["username"].as_str() {
            on_hub.insert(name.to_string(), c["textdescription"].as_str() == Some(tag));
        }
    }
    let (mut cmds, mut drift) = (Vec::new(), Vec::new());
    for (id, d) in fleet {
        match on_hub.get(id) {
            None => {
                cmds.push(json!({"command": "createClient", "username": id, "password": mqtt_password(&d.key), "textdescription": tag}));
                if !d.enabled {
                    cmds.push(json!({"command": "disableClient", "username": id}));
                }
            }
            Some(false) => drift.push(format!(
                "client '{id}' exists on the hub but was not made by georep: left alone; delete it or give it the text description '{tag}' to have it managed"
            )),
            Some(true) => {
                if set_passwords(id) {
                    cmds.push(json!({"command": "setClientPassword", "username": id, "password": mqtt_password(&d.key)}));
                }
                let is_disabled = disabled.iter().any(|n| n == id);
                if is_disabled && d.enabled {
                    cmds.push(json!({"command": "enableClient", "username": id}));
                } else if !is_disabled && !d.enabled {
                    cmds.push(json!({"command": "disableClient", "username": id}));
                }
            }
        }
    }
    for (name, ours) in &on_hub {
        if *ours && !fleet.contains_key(name) {
            cmds.push(json!({"command": "deleteClient", "username": name}));
        }
    }
    (cmds, drift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, enabled: bool) -> (String, Device) {
        (
            id.to_string(),
            Device {
                id: id.into(),
                key: vec![1; 16],
                enabled,
                group: None,
            },
        )
    }

    #[test]
    fn the_plan_adds_disables_deletes_and_leaves_strangers_alone() {
        let tag = "georep:devices";
        let fleet: BTreeMap<_, _> = [
            dev("new", true),
            dev("off", false),
            dev("mine", true),
            dev("theirs", true),
        ]
        .into_iter()
        .collect();
        let clients = vec![
            json!({"username": "mine", "textdescription": tag}),
            json!({"username": "theirs"}),
            json!({"username": "gone", "textdescription": tag}),
            json!({"username": "admin"}),
        ];
        let (cmds, drift) = plan(tag, &fleet, &clients, &["mine".to_string()], &|_| false);
        let text: Vec<String> = cmds
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c["command"].as_str().unwrap_or_default(),
                    c["username"].as_str().unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(
            text,
            [
                "enableClient mine",
                "createClient new",
                "createClient off",
                "disableClient off",
                "deleteClient gone"
            ]
        );
        assert_eq!(drift.len(), 1);
        assert!(drift[0].contains("'theirs'"));
        assert_eq!(cmds[1]["password"], mqtt_password(&[1; 16]));
        let (cmds, _) = plan(tag, &fleet, &clients, &[], &|id| id == "mine");
        assert!(cmds
            .iter()
            .any(|c| c["command"] == "setClientPassword" && c["username"] == "mine"));
    }
}
