//! Device identities kept on every hub, through Mosquitto's dynamic security plugin:
//! JSON commands on `$CONTROL/dynamic-security/v1`, answers on `.../response`. Clients
//! georep manages carry the text description `georep:CONCIERGE`; any other client
//! whose name is a device's is drift, reported and never touched. A device's MQTT
//! password is derived from its key (`mqtt_password`), so the device computes it too
//! and no second secret has to be handed out.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

use crate::identities::{Acl, Device, Fleet};

const CONTROL: &str = "$CONTROL/dynamic-security/v1";

/// The MQTT password a device derives from its key.
pub use georep_device::claims::mqtt_password;

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

/// What georep last set on a hub: per device a keyed digest of its key, whether it
/// was enabled and its roles; per role its ACLs. Saved beside the state (the digest
/// tells nothing of the key), so a restart does not set every password again: a hub
/// disconnects a client whose password or roles are set, and a whole fleet would
/// reconnect at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub devices: BTreeMap<String, (String, bool, Vec<String>)>,
    pub roles: BTreeMap<String, Vec<Acl>>,
    /// The digests' key: random, made with the file and kept in it, so neither a new
    /// signing key nor a restart changes the digests (which would set every password
    /// again). Keys of 16 random bytes or more cannot be found from their digests.
    #[serde(default)]
    salt: Vec<u8>,
}

impl Applied {
    /// Nothing set yet; digests keyed with `salt`.
    pub fn new(salt: &[u8]) -> Self {
        Self {
            salt: salt.to_vec(),
            ..Self::default()
        }
    }

    /// Keyed with `salt` when it was read back without one.
    pub fn salted(mut self, salt: &[u8]) -> Self {
        if self.salt.is_empty() {
            self.salt = salt.to_vec();
        }
        self
    }

    /// The keyed digest of a device key.
    pub fn digest(&self, key: &[u8]) -> String {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.salt);
        let tag = aws_lc_rs::hmac::sign(&k, key);
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// As `fleet` says, keeping the salt.
    pub fn set(&mut self, fleet: &Fleet) {
        self.devices = fleet
            .devices
            .iter()
            .map(|(id, d)| {
                (
                    id.clone(),
                    (self.digest(&d.key), d.enabled, d.roles.clone()),
                )
            })
            .collect();
        self.roles = fleet.roles.clone();
    }

    /// Records what the commands `done` (that went through) set, as `fleet` says.
    pub fn record(&mut self, fleet: &Fleet, done: &[Value]) {
        for c in done {
            if let Some(id) = c["username"].as_str() {
                match fleet.devices.get(id) {
                    Some(d) => {
                        let e = (self.digest(&d.key), d.enabled, d.roles.clone());
                        self.devices.insert(id.to_string(), e);
                    }
                    None => {
                        self.devices.remove(id);
                    }
                }
            } else if let Some(r) = c["rolename"].as_str() {
                match fleet.roles.get(r) {
                    Some(acls) => {
                        self.roles.insert(r.to_string(), acls.clone());
                    }
                    None => {
                        self.roles.remove(r);
                    }
                }
            }
        }
    }

    /// Whether `d` is on the hub as georep last set it.
    pub fn has(&self, d: &Device) -> bool {
        self.devices
            .get(&d.id)
            .is_some_and(|(k, e, r)| *k == self.digest(&d.key) && *e == d.enabled && r == &d.roles)
    }
}

/// `cmds` in batches of about `size`, never splitting the commands of one client or
/// role (so a batch that went through leaves each of them as planned).
pub fn batches(cmds: Vec<Value>, size: usize) -> Vec<Vec<Value>> {
    let key = |c: &Value| {
        c["username"]
            .as_str()
            .map(|u| format!("u:{u}"))
            .or_else(|| c["rolename"].as_str().map(|r| format!("r:{r}")))
    };
    let mut out: Vec<Vec<Value>> = Vec::new();
    let mut cur: Vec<Value> = Vec::new();
    for c in cmds {
        let same = cur.last().is_some_and(|l| key(l) == key(&c));
        if cur.len() >= size.max(1) && !same {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The role georep gives every device of concierge `concierge`: it may receive the
/// concierge's reassign notices and publish its (signed) presence.
pub fn device_role(concierge: &str) -> (String, Vec<Acl>) {
    let acl = |t: &str, topic: String| Acl {
        acltype: t.into(),
        topic,
        allow: true,
        priority: 0,
    };
    let base = format!("georep/concierge/{concierge}");
    let mut acls = vec![
        acl("subscribePattern", format!("{base}/reassign")),
        acl("publishClientReceive", format!("{base}/reassign")),
        acl("publishClientSend", format!("{base}/presence/#")),
    ];
    acls.sort();
    (format!("georep-devices-{concierge}"), acls)
}

/// `fleet` as it is kept on hubs: every device also has georep's device role.
pub fn with_device_role(fleet: &Fleet, concierge: &str) -> Fleet {
    let (name, acls) = device_role(concierge);
    let mut f = fleet.clone();
    f.roles.insert(name.clone(), acls);
    for d in f.devices.values_mut() {
        d.roles.push(name.clone());
        d.roles.sort();
        d.roles.dedup();
    }
    f
}

/// georep's own role, given to the admin account: probes, the hub's count of connected
/// clients, reassign notices out and devices' presence in.
pub const SERVICE_ROLE: &str = "georep-service";

/// The commands that make or mend [`SERVICE_ROLE`] and give it to `admin`; none when
/// all is in place (giving a role disconnects the client, so it is done only when
/// missing).
pub fn service(admin: &str, clients: &[Value], roles: &[Value], bridge: &[String]) -> Vec<Value> {
    let mut want: Vec<Acl> = [
        ("publishClientSend", "georep/probe/#"),
        ("subscribePattern", "georep/probe/#"),
        ("publishClientReceive", "georep/probe/#"),
        ("subscribePattern", "$SYS/broker/clients/connected"),
        ("publishClientSend", "georep/concierge/+/reassign"),
        ("subscribePattern", "georep/concierge/+/presence/#"),
        ("publishClientReceive", "georep/concierge/+/presence/#"),
    ]
    .into_iter()
    .map(|(t, topic)| (t, topic.to_string()))
    .chain(bridge.iter().flat_map(|f| {
        [
            "subscribePattern",
            "publishClientSend",
            "publishClientReceive",
        ]
        .map(|t| (t, f.clone()))
    }))
    .map(|(t, topic)| Acl {
        acltype: t.into(),
        topic,
        allow: true,
        priority: 0,
    })
    .collect();
    want.sort();
    want.dedup();
    let mut cmds = Vec::new();
    match roles.iter().find(|r| r["rolename"] == SERVICE_ROLE) {
        None => {
            cmds.push(json!({"command": "createRole", "rolename": SERVICE_ROLE}));
            cmds.extend(
                want.iter()
                    .map(|a| acl_command("addRoleACL", SERVICE_ROLE, a)),
            );
        }
        Some(r) => {
            let has = acls_of(r);
            cmds.extend(
                want.iter()
                    .filter(|a| !has.contains(a))
                    .map(|a| acl_command("addRoleACL", SERVICE_ROLE, a)),
            );
        }
    }
    let given = clients.iter().any(|c| {
        c["username"] == admin
            && c["roles"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|r| r["rolename"] == SERVICE_ROLE))
    });
    if !given {
        cmds.push(json!({"command": "addClientRole", "username": admin, "rolename": SERVICE_ROLE}));
    }
    cmds
}

fn acls_of(v: &Value) -> Vec<Acl> {
    let mut acls: Vec<Acl> = v["acls"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| Acl {
                    acltype: x["acltype"].as_str().unwrap_or_default().to_string(),
                    topic: x["topic"].as_str().unwrap_or_default().to_string(),
                    allow: x["allow"].as_bool().unwrap_or(false),
                    priority: x["priority"].as_i64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    acls.sort();
    acls
}

fn acl_command(command: &str, role: &str, a: &Acl) -> Value {
    json!({"command": command, "rolename": role, "acltype": a.acltype, "topic": a.topic, "priority": a.priority, "allow": a.allow})
}

/// What keeping `fleet` on a hub takes: the commands, in an order the hub accepts
/// (roles made before clients use them, deleted last), and drift to report.
/// `clients` and `roles` are the hub's `listClients` and `listRoles` (verbose)
/// answers; `last` what georep set on this hub since it started (empty at first: every
/// password is set, since a hub never tells one).
///
/// Drift is a client or role with a fleet name that georep did not make (it carries
/// no `tag`), or one it made and someone changed by hand (enabled or disabled, roles,
/// ACLs) while the fleet did not change: reported and left as it is. A missing client
/// or role is made again: the fleet says it exists, and a hub rebuilt empty must be
/// refilled.
pub fn plan(
    tag: &str,
    fleet: &Fleet,
    clients: &[Value],
    roles: &[Value],
    last: &Applied,
) -> (Vec<Value>, Vec<String>) {
    let (mut cmds, mut drift, mut tail) = (Vec::new(), Vec::new(), Vec::new());
    let ours = |v: &Value| v["textdescription"].as_str() == Some(tag);

    let hub_roles: BTreeMap<&str, &Value> = roles
        .iter()
        .filter_map(|r| r["rolename"].as_str().map(|n| (n, r)))
        .collect();
    for (name, acls) in &fleet.roles {
        match hub_roles.get(name.as_str()) {
            None => {
                cmds.push(json!({"command": "createRole", "rolename": name, "textdescription": tag}));
                cmds.extend(acls.iter().map(|a| acl_command("addRoleACL", name, a)));
            }
            Some(r) if !ours(r) => drift.push(format!(
                "role '{name}' exists on the hub but was not made by georep: left alone; delete it or give it the text description '{tag}' to have it managed"
            )),
            Some(r) => {
                let on_hub = acls_of(r);
                if &on_hub == acls {
                } else if last.roles.get(name) == Some(acls) {
                    drift.push(format!(
                        "role '{name}': its ACLs were changed on the hub by hand: left so; undo it on the hub, or change the role in the fleet"
                    ));
                } else {
                    for a in on_hub.iter().filter(|a| !acls.contains(a)) {
                        cmds.push(json!({"command": "removeRoleACL", "rolename": name, "acltype": a.acltype, "topic": a.topic}));
                    }
                    for a in acls.iter().filter(|a| !on_hub.contains(a)) {
                        cmds.push(acl_command("addRoleACL", name, a));
                    }
                }
            }
        }
    }
    for (name, r) in &hub_roles {
        if ours(r) && !fleet.roles.contains_key(*name) {
            tail.push(json!({"command": "deleteRole", "rolename": name}));
        }
    }

    let hub_clients: BTreeMap<&str, &Value> = clients
        .iter()
        .filter_map(|c| c["username"].as_str().map(|n| (n, c)))
        .collect();
    for (id, d) in &fleet.devices {
        let Some(c) = hub_clients.get(id.as_str()) else {
            // Roles given as it is made: one command (one save on the hub) a device.
            let roles: Vec<Value> = d.roles.iter().map(|r| json!({"rolename": r})).collect();
            cmds.push(json!({"command": "createClient", "username": id, "password": mqtt_password(&d.key), "textdescription": tag, "roles": roles}));
            if !d.enabled {
                cmds.push(json!({"command": "disableClient", "username": id}));
            }
            continue;
        };
        if !ours(c) {
            drift.push(format!(
                "client '{id}' exists on the hub but was not made by georep: left alone; delete it or give it the text description '{tag}' to have it managed"
            ));
            continue;
        }
        let before = last.devices.get(id);
        if before.map(|(k, _, _)| k) != Some(&last.digest(&d.key)) {
            cmds.push(json!({"command": "setClientPassword", "username": id, "password": mqtt_password(&d.key)}));
        }
        let disabled = c["disabled"] == json!(true);
        if disabled == d.enabled {
            if before.is_some_and(|(_, e, _)| *e == d.enabled) {
                drift.push(format!(
                    "client '{id}' was {} on the hub by hand while the fleet says {}: left so; undo it on the hub, or change the device in the fleet",
                    if disabled { "disabled" } else { "enabled" },
                    if d.enabled { "enabled" } else { "disabled" },
                ));
            } else if d.enabled {
                cmds.push(json!({"command": "enableClient", "username": id}));
            } else {
                cmds.push(json!({"command": "disableClient", "username": id}));
            }
        }
        let mut has: Vec<String> = c["roles"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["rolename"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        has.sort();
        if has != d.roles {
            if before.is_some_and(|(_, _, r)| r == &d.roles) {
                drift.push(format!(
                    "client '{id}': its roles were changed on the hub by hand ({} instead of {}): left so; undo it on the hub, or change the device in the fleet",
                    has.join(", "),
                    d.roles.join(", ")
                ));
            } else {
                for r in has.iter().filter(|r| !d.roles.contains(r)) {
                    cmds.push(
                        json!({"command": "removeClientRole", "username": id, "rolename": r}),
                    );
                }
                for r in d.roles.iter().filter(|r| !has.contains(r)) {
                    cmds.push(json!({"command": "addClientRole", "username": id, "rolename": r}));
                }
            }
        }
    }
    for (name, c) in &hub_clients {
        if ours(c) && !fleet.devices.contains_key(*name) {
            cmds.push(json!({"command": "deleteClient", "username": name}));
        }
    }
    cmds.extend(tail);
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
                roles: vec!["sensor".into()],
            },
        )
    }

    fn acl(t: &str, topic: &str) -> Acl {
        Acl {
            acltype: t.into(),
            topic: topic.into(),
            allow: true,
            priority: 0,
        }
    }

    fn shown(cmds: &[Value]) -> Vec<String> {
        cmds.iter()
            .map(|c| {
                format!(
                    "{} {}{}",
                    c["command"].as_str().unwrap_or_default(),
                    c["username"]
                        .as_str()
                        .or(c["rolename"].as_str())
                        .unwrap_or_default(),
                    c["rolename"]
                        .as_str()
                        .filter(|_| c["username"].is_string())
                        .map(|r| format!(" {r}"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn the_plan_adds_disables_deletes_and_leaves_strangers_alone() {
        let tag = "georep:devices";
        let fleet = Fleet {
            devices: [
                dev("new", true),
                dev("off", false),
                dev("mine", true),
                dev("theirs", true),
            ]
            .into_iter()
            .collect(),
            roles: [("sensor".to_string(), vec![acl("publishClientSend", "t/#")])].into(),
        };
        let clients = vec![
            json!({"username": "mine", "textdescription": tag, "disabled": true, "roles": [{"rolename": "sensor"}]}),
            json!({"username": "theirs"}),
            json!({"username": "gone", "textdescription": tag}),
            json!({"username": "admin"}),
        ];
        let roles = vec![
            json!({"rolename": "old", "textdescription": tag}),
            json!({"rolename": "admin"}),
        ];
        // As if georep had disabled "mine" itself: the fleet now enables it.
        let mut last = Applied::new(b"salt");
        last.set(&fleet);
        if let Some(m) = last.devices.get_mut("mine") {
            m.1 = false;
        }
        let (cmds, drift) = plan(tag, &fleet, &clients, &roles, &last);
        assert_eq!(
            shown(&cmds),
            [
                "createRole sensor",
                "addRoleACL sensor",
                "enableClient mine",
                "createClient new",
                "createClient off",
                "disableClient off",
                "deleteClient gone",
                "deleteRole old"
            ]
        );
        assert_eq!(drift.len(), 1);
        assert!(drift[0].contains("'theirs'"));
        assert_eq!(cmds[3]["password"], mqtt_password(&[1; 16]));
        assert_eq!(cmds[3]["roles"][0]["rolename"], "sensor");
        // Batches never split one client's commands.
        let b = batches(cmds.clone(), 4);
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), cmds.len());
        assert!(b.iter().all(|x| x.len() <= 5));
        let off = b
            .iter()
            .filter(|x| x.iter().any(|c| c["username"] == "off"))
            .count();
        assert_eq!(off, 1, "{b:?}");

        // A new key for "mine": its password is set again.
        let mut rekeyed = last.clone();
        if let Some(m) = rekeyed.devices.get_mut("mine") {
            m.0 = "an older key's digest".into();
        }
        let (cmds, _) = plan(tag, &fleet, &clients, &roles, &rekeyed);
        assert!(cmds
            .iter()
            .any(|c| c["command"] == "setClientPassword" && c["username"] == "mine"));

        // Changed by hand while the fleet stayed as it was: drift, untouched.
        let mut steady = Applied::new(b"salt");
        steady.set(&fleet);
        assert!(steady.has(&fleet.devices["mine"]));
        let text = serde_json::to_string(&steady).expect("json");
        assert!(!text.contains(&mqtt_password(&[1; 16])) && !text.contains("AQEB"));
        let back: Applied = serde_json::from_str(&text).expect("read back");
        assert_eq!(back.salted(b"salt"), steady);
        let roles = vec![
            json!({"rolename": "sensor", "textdescription": tag, "acls": [{"acltype": "publishClientSend", "topic": "everything/#", "allow": true, "priority": 0}]}),
        ];
        let clients = vec![
            json!({"username": "mine", "textdescription": tag, "disabled": true, "roles": []}),
        ];
        let (cmds, drift) = plan(tag, &fleet, &clients, &roles, &steady);
        assert!(
            !cmds.iter().any(|c| c["username"] == "mine"
                || (c["rolename"] == "sensor" && c["username"].is_null())),
            "{cmds:?}"
        );
        for want in [
            "'mine' was disabled on the hub by hand",
            "'mine': its roles were changed",
            "role 'sensor': its ACLs were changed",
        ] {
            assert!(drift.iter().any(|d| d.contains(want)), "{want}: {drift:?}");
        }
        // The fleet changes the role: the hub's ACLs are replaced.
        let mut wider = fleet.clone();
        wider
            .roles
            .insert("sensor".into(), vec![acl("publishClientSend", "t2/#")]);
        let (cmds, _) = plan(tag, &wider, &clients, &roles, &steady);
        let acl_cmds: Vec<(String, String)> = cmds
            .iter()
            .filter(|c| c["rolename"] == "sensor" && c["username"].is_null())
            .map(|c| (c["command"].to_string(), c["topic"].to_string()))
            .collect();
        assert_eq!(
            acl_cmds,
            [
                ("\"removeRoleACL\"".into(), "\"everything/#\"".into()),
                ("\"addRoleACL\"".into(), "\"t2/#\"".into())
            ]
        );
    }

    #[test]
    fn georeps_own_role_is_made_once() {
        let none = service("admin", &[json!({"username": "admin"})], &[], &[]);
        assert_eq!(none.len(), 9, "{none:?}");
        let role = json!({"rolename": SERVICE_ROLE, "acls": none[1..8].iter().map(|c| json!({
            "acltype": c["acltype"], "topic": c["topic"], "allow": true, "priority": 0
        })).collect::<Vec<_>>()});
        let admin = json!({"username": "admin", "roles": [{"rolename": SERVICE_ROLE}]});
        assert!(service(
            "admin",
            std::slice::from_ref(&admin),
            std::slice::from_ref(&role),
            &[]
        )
        .is_empty());
        // A bridged filter is added to the role, nothing else changes.
        let more = service("admin", &[admin], &[role], &["commands/#".to_string()]);
        assert_eq!(more.len(), 3, "{more:?}");
        assert!(more.iter().all(|c| c["topic"] == "commands/#"));
    }

    #[test]
    fn every_device_gets_the_concierge_role() {
        let fleet = Fleet {
            devices: [dev("a", true)].into_iter().collect(),
            roles: [("sensor".to_string(), vec![])].into(),
        };
        let f = with_device_role(&fleet, "devices");
        assert_eq!(f.devices["a"].roles, ["georep-devices-devices", "sensor"]);
        assert!(f.roles["georep-devices-devices"]
            .iter()
            .any(|a| a.topic == "georep/concierge/devices/reassign"));
    }
}
