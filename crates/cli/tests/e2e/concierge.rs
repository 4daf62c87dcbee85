//! The device concierge through the daemon, against two real Mosquitto 2 hubs (the
//! testkit's, with dynamic security): a device with a valid shared access signature is
//! sent to the preferred hub with a signed assignment; the hub is killed and devices
//! are sent to the other after `failover_after` failed round trips; it comes back and
//! devices are sent back after `failback_after`; strangers get 403.

use std::time::Duration;

use georep_testkit::{free_port, wait_until, Mosquitto, Serve};
use serde_json::Value;

use crate::common::*;

const SEED: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const DEVICE_KEY: &str = "ZGV2aWNlLWtleS0wMTIzNDU2Nzg5YWJjZGVm";

fn assignment(port: u16, id: &str, key: &[u8]) -> (u16, Value) {
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        + 600;
    let token = georep_concierge::sas::token(&format!("hub.example/devices/{id}"), key, expiry);
    let r = reqwest::blocking::Client::new()
        .get(format!(
            "http://127.0.0.1:{port}/v1/devices/{id}/assignment"
        ))
        .header("authorization", token)
        .send()
        .expect("assignment");
    let status = r.status().as_u16();
    (status, r.json_value())
}

trait JsonValue {
    fn json_value(self) -> Value;
}

impl JsonValue for reqwest::blocking::Response {
    fn json_value(self) -> Value {
        serde_json::from_str(&self.text().unwrap_or_default()).unwrap_or_default()
    }
}

fn hub_of(port: u16, key: &[u8]) -> Option<String> {
    let (status, v) = assignment(port, "dev-1", key);
    (status == 200).then(|| {
        v["assignment"]["hub"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    })
}

#[test]
fn devices_are_sent_to_a_healthy_hub_and_back_by_the_rules() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("tmp");
    let (qc, we) = (Mosquitto::start(), Mosquitto::start());
    qc.allow_probes();
    we.allow_probes();
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).expect("fleet");
    std::fs::write(
        fleet.join("devices.json"),
        format!(r#"{{"devices": [{{"id": "dev-1", "key": "{DEVICE_KEY}"}}, {{"id": "dev-2", "key": "{DEVICE_KEY}", "enabled": false}}]}}"#),
    )
    .expect("devices");
    let port = free_port();
    let cfg = TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .region("qc")
        .region("we")
        .store("fleet", "we", s(&fleet))
        .raw(&format!(
            "[[concierges]]\nname = \"devices\"\nlisten = \"127.0.0.1:{port}\"\nsigning_key = \"${{SIGNING_KEY}}\"\nidentities = {{ store = \"fleet\", object = \"devices.json\" }}\nfailover_after = 2\nfailback_after = \"1s\"\nprobe_interval = \"200ms\"\nprobe_timeout = \"1s\"\nhubs = [\n  {{ name = \"qc\", region = \"qc\", url = \"{}\", username = \"admin\", password = \"${{QC_PW}}\" }},\n  {{ name = \"we\", region = \"we\", url = \"{}\", username = \"admin\", password = \"${{WE_PW}}\" }},\n]\n",
            qc.url(),
            we.url()
        ))
        .write(dir.path());
    let env = vec![
        ("SIGNING_KEY".to_string(), SEED.to_string()),
        ("QC_PW".into(), qc.admin().1),
        ("WE_PW".into(), we.admin().1),
    ];
    let d = Serve::start(BIN, &cfg, &env);
    let key = base64::engine::general_purpose::STANDARD
        .decode(DEVICE_KEY)
        .expect("key");
    assert!(wait_until(Duration::from_secs(20), || hub_of(port, &key)
        .as_deref()
        == Some("qc")));
    let (_, v) = assignment(port, "dev-1", &key);
    assert_eq!(v["assignment"]["reason"], "preferred");
    assert_eq!(v["assignment"]["fallbacks"][0]["url"], we.url());
    // Signed: it verifies with the key the concierge publishes.
    let jwks: Value =
        reqwest::blocking::get(format!("http://127.0.0.1:{port}/.well-known/jwks.json"))
            .expect("jwks")
            .json_value();
    let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().expect("x"))
        .expect("b64");
    let claims = georep_concierge::assign::verify(v["token"].as_str().expect("token"), &public)
        .expect("verifies");
    assert_eq!(claims["hub"]["name"], "qc");
    // Strangers and disabled devices: 403, nothing about the hubs.
    for (id, k) in [
        ("dev-1", &b"not the key of dev-1 at all"[..]),
        ("dev-2", &key[..]),
        ("ghost", &key[..]),
    ] {
        let (status, v) = assignment(port, id, k);
        assert_eq!(status, 403, "{id}");
        assert!(!v.to_string().contains("mqtt"), "{v}");
    }

    // Identities are kept on both hubs: dev-1 with the password derived from its key,
    // dev-2 disabled; a device logs in to either with it.
    let on = |hub: &Mosquitto, id: &str| !hub.dynsec(&["getClient", id]).contains("not found");
    assert!(
        wait_until(Duration::from_secs(30), || on(&qc, "dev-1")
            && on(&we, "dev-1")),
        "{}",
        d.log_text()
    );
    assert!(wait_until(Duration::from_secs(15), || we
        .dynsec(&["getClient", "dev-2"])
        .contains("Disabled: true")));
    let pw = georep_concierge::dynsec::mqtt_password(&key);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let login = |url: &str, pw: &str| {
        rt.block_on(georep_concierge::probe::round_trip(
            url,
            Some(("dev-1", pw)),
            Duration::from_secs(2),
        ))
        .err()
        .map(|e| e.0)
        .unwrap_or_default()
    };
    // Logged in (the device may not use the probe topic: no round trip, but no refusal).
    assert!(!login(&we.url(), &pw).contains("username and password"));
    assert!(login(&we.url(), "not-the-password").contains("username and password"));
    // The fleet changes: dev-2 removed, dev-3 added, and dev-9 is a client someone made
    // by hand on qc: reported as drift, left alone.
    qc.dynsec(&["createClient", "dev-9", "-p", "hand-made"]);
    std::fs::write(
        fleet.join("devices.json"),
        format!(r#"{{"devices": [{{"id": "dev-1", "key": "{DEVICE_KEY}"}}, {{"id": "dev-3", "key": "{DEVICE_KEY}"}}, {{"id": "dev-9", "key": "{DEVICE_KEY}"}}]}}"#),
    )
    .expect("devices");
    assert!(
        wait_until(Duration::from_secs(30), || on(&qc, "dev-3")
            && on(&we, "dev-3")
            && !on(&qc, "dev-2")
            && !on(&we, "dev-2")),
        "{}",
        d.log_text()
    );
    assert!(wait_until(Duration::from_secs(15), || d
        .log_text()
        .contains(
            "client 'dev-9' exists on the hub but was not made by georep"
        )));
    assert!(on(&qc, "dev-9") && on(&we, "dev-9"));

    // The preferred hub dies: devices are sent to the other.
    qc.down();
    assert!(
        wait_until(Duration::from_secs(30), || hub_of(port, &key).as_deref()
            == Some("we")),
        "{}",
        d.log_text()
    );
    assert_eq!(
        assignment(port, "dev-1", &key).1["assignment"]["reason"],
        "failover"
    );
    // Metrics: the hub's health, where devices are sent, the fleet.
    let metrics = || {
        reqwest::blocking::Client::new()
            .get(format!("{}/metrics", d.base))
            .bearer_auth(d.token().unwrap_or_default())
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            let m = metrics();
            m.contains(r#"georep_concierge_hub_healthy{concierge="devices",hub="qc"} 0"#)
                && m.contains(r#"georep_concierge_current_hub{concierge="devices",hub="we"} 1"#)
                && m.contains(r#"georep_concierge_devices{concierge="devices"} 3"#)
        }),
        "{}",
        metrics()
    );
    // It comes back: after failback_after of health, devices go back.
    qc.up();
    assert!(
        wait_until(Duration::from_secs(30), || hub_of(port, &key).as_deref()
            == Some("qc")),
        "{}",
        d.log_text()
    );
    // An empty fleet (a cut-short upload) deletes nothing: the mass-delete guard.
    std::fs::write(fleet.join("devices.json"), r#"{"devices": []}"#).expect("devices");
    assert!(
        wait_until(Duration::from_secs(30), || d
            .log_text()
            .contains("more than max_delete (50%): nothing was changed")),
        "{}",
        d.log_text()
    );
    assert!(on(&qc, "dev-1") && on(&we, "dev-3"));
    let logs = d.log_text();
    for secret in [SEED, &qc.admin().1, DEVICE_KEY] {
        assert!(!logs.contains(secret), "a secret in the logs");
    }
}

#[test]
fn a_concierge_with_a_certificate_speaks_https_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, _) = self_signed(dir.path(), "concierge");
    let (qc, we) = (Mosquitto::start(), Mosquitto::start());
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).expect("fleet");
    // No identities object yet: the concierge starts anyway and asks devices to come
    // back.
    let port = free_port();
    let cfg = TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .region("qc")
        .region("we")
        .store("fleet", "we", s(&fleet))
        .raw(&format!(
            "[[concierges]]\nname = \"devices\"\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"concierge.crt\"\ntls_key = \"concierge.key\"\nsigning_key = \"${{SIGNING_KEY}}\"\nidentities = {{ store = \"fleet\", object = \"devices.json\" }}\nhubs = [\n  {{ name = \"qc\", region = \"qc\", url = \"{}\" }},\n  {{ name = \"we\", region = \"we\", url = \"{}\" }},\n]\n",
            qc.url(),
            we.url()
        ))
        .write(dir.path());
    let env = vec![("SIGNING_KEY".to_string(), SEED.to_string())];
    let _d = Serve::start(BIN, &cfg, &env);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).expect("cert")).expect("pem");
    let https = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    assert!(wait_until(Duration::from_secs(20), || https
        .get(format!("https://localhost:{port}/.well-known/jwks.json"))
        .send()
        .is_ok_and(|r| r.status().as_u16() == 200)));
    let ask = || {
        https
            .get(format!(
                "https://localhost:{port}/v1/devices/dev-1/assignment"
            ))
            .header(
                "authorization",
                "SharedAccessSignature sr=x%2Fdevices%2Fdev-1&sig=AAAA&se=1",
            )
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or_default()
    };
    assert_eq!(ask(), 503);
    std::fs::write(fleet.join("devices.json"), r#"{"devices": []}"#).expect("devices");
    assert!(wait_until(Duration::from_secs(20), || ask() == 403));
    let plain = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}/.well-known/jwks.json"))
        .timeout(Duration::from_secs(5))
        .send();
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));
}

/// Bridged topics: a command published on one hub reaches a device on the other, once
/// (no loop back), both ways; and nothing outside the filters is carried.
#[test]
fn bridged_commands_reach_devices_on_the_other_hub_once() {
    use base64::Engine as _;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().expect("tmp");
    let (qc, we) = (Mosquitto::start(), Mosquitto::start());
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).expect("fleet");
    let key = |id: &str| format!("key-of-{id}-0123456789").into_bytes();
    let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
    std::fs::write(
        fleet.join("devices.json"),
        serde_json::json!({
            "roles": [{"name": "commander", "acls": [
                {"type": "publishClientSend", "topic": "commands/#"},
                {"type": "subscribePattern", "topic": "commands/#"},
                {"type": "publishClientSend", "topic": "private/#"},
                {"type": "subscribePattern", "topic": "private/#"}
            ]}],
            "devices": [
                {"id": "at-qc", "key": b64(&key("at-qc")), "roles": ["commander"]},
                {"id": "at-we", "key": b64(&key("at-we")), "roles": ["commander"]}
            ]
        })
        .to_string(),
    )
    .expect("devices");
    let port = free_port();
    let cfg = TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .region("qc")
        .region("we")
        .store("fleet", "we", s(&fleet))
        .raw(&format!(
            "[[concierges]]\nname = \"devices\"\nlisten = \"127.0.0.1:{port}\"\nsigning_key = \"${{SIGNING_KEY}}\"\nidentities = {{ store = \"fleet\", object = \"devices.json\", poll = \"200ms\" }}\nprobe_interval = \"300ms\"\nbridge = [\"commands/#\"]\nhubs = [\n  {{ name = \"qc\", region = \"qc\", url = \"{}\", username = \"admin\", password = \"${{QC_PW}}\" }},\n  {{ name = \"we\", region = \"we\", url = \"{}\", username = \"admin\", password = \"${{WE_PW}}\" }},\n]\n",
            qc.url(),
            we.url()
        ))
        .write(dir.path());
    let env = vec![
        ("SIGNING_KEY".to_string(), SEED.to_string()),
        ("QC_PW".into(), qc.admin().1),
        ("WE_PW".into(), we.admin().1),
    ];
    let d = Serve::start(BIN, &cfg, &env);
    let on = |hub: &Mosquitto, id: &str| !hub.dynsec(&["getClient", id]).contains("not found");
    assert!(
        wait_until(Duration::from_secs(30), || on(&qc, "at-we")
            && on(&we, "at-we")),
        "{}",
        d.log_text()
    );
    let out = run(
        &[
            "concierge",
            "pin",
            "devices",
            "--device",
            "at-we",
            "--hub",
            "we",
            "-c",
            s(&cfg),
            "--api",
            &d.base,
        ],
        &env,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let jwks: Value = serde_json::from_str(
        &reqwest::blocking::get(format!("http://127.0.0.1:{port}/.well-known/jwks.json"))
            .and_then(|r| r.text())
            .expect("jwks"),
    )
    .expect("json");
    let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().expect("x"))
        .expect("b64");
    // Each device: what it heard, as (topic, payload).
    let start = |id: &str| {
        let mut c = georep_device::Config::new(
            &format!("http://127.0.0.1:{port}"),
            "devices",
            id,
            &key(id),
            &public,
        );
        c.subscriptions = vec!["commands/#".into(), "private/#".into()];
        let (h, mut events) = georep_device::spawn(c);
        let heard = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
        let sink = heard.clone();
        rt.spawn(async move {
            while let Some(e) = events.recv().await {
                if let georep_device::Event::Message { topic, payload } = e {
                    sink.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((topic, String::from_utf8_lossy(&payload).into_owned()));
                }
            }
        });
        (h, heard)
    };
    let (at_qc, heard_qc) = start("at-qc");
    let (at_we, heard_we) = start("at-we");
    assert!(wait_until(Duration::from_secs(30), || at_qc
        .hub()
        .as_deref()
        == Some("qc")
        && at_we.hub().as_deref() == Some("we")));
    let count = |heard: &Arc<Mutex<Vec<(String, String)>>>, payload: &str| {
        heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, p)| p == payload)
            .count()
    };
    // Subscriptions and the bridge settle: send until one arrives, each way.
    for (from, to, tag) in [
        (&at_qc, &heard_we, "warm-qc"),
        (&at_we, &heard_qc, "warm-we"),
    ] {
        let mut n = 0;
        assert!(
            wait_until(Duration::from_secs(30), || {
                n += 1;
                let _ =
                    rt.block_on(from.publish("commands/warmup", format!("{tag}-{n}").into_bytes()));
                (1..=n).any(|i| count(to, &format!("{tag}-{i}")) > 0)
            }),
            "no command crossed the bridge ({tag})\n{}",
            d.log_text()
        );
    }
    // One command each way: heard once on each side, never echoed back.
    rt.block_on(at_qc.publish("commands/at-we", b"from-qc".to_vec()))
        .expect("publish");
    rt.block_on(at_we.publish("commands/at-qc", b"from-we".to_vec()))
        .expect("publish");
    rt.block_on(at_qc.publish("private/at-we", b"not-bridged".to_vec()))
        .expect("publish");
    let shown = || {
        format!(
            "qc {:?} we {:?}",
            heard_qc.lock().map(|v| v.clone()).unwrap_or_default(),
            heard_we.lock().map(|v| v.clone()).unwrap_or_default()
        )
    };
    assert!(
        wait_until(Duration::from_secs(10), || count(&heard_we, "from-qc") == 1
            && count(&heard_qc, "from-we") == 1
            && count(&heard_qc, "not-bridged") == 1),
        "{}\n{}",
        shown(),
        d.log_text()
    );
    assert!(
        !wait_until(Duration::from_secs(2), || count(&heard_we, "from-qc") > 1
            || count(&heard_qc, "from-qc") > 1
            || count(&heard_qc, "from-we") > 1
            || count(&heard_we, "from-we") > 1
            || count(&heard_we, "not-bridged") > 0),
        "a bridged message looped or a private one crossed: qc {:?} we {:?}",
        heard_qc.lock().map(|v| v.clone()).unwrap_or_default(),
        heard_we.lock().map(|v| v.clone()).unwrap_or_default()
    );
    let st: Value = d.get("/api/v1/concierges/devices");
    assert!(st["hubs"][1]["bridged_in"].as_u64() >= Some(1), "{st}");
    assert!(st["hubs"][0]["bridged_in"].as_u64() >= Some(1), "{st}");
}
