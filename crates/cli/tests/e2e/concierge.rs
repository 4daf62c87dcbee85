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
    std::fs::write(fleet.join("devices.json"), r#"{"devices": []}"#).expect("devices");
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
    let plain = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}/.well-known/jwks.json"))
        .timeout(Duration::from_secs(5))
        .send();
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));
}
