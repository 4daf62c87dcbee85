//! A fleet of simulated devices (the reference client, `georep-device`) behind a
//! concierge, against two real Mosquitto 2 hubs: identities and roles reach both hubs;
//! every device connects to the preferred hub and its messages flow; the hub is killed
//! and every device is on the other within seconds, messages flowing again; it comes
//! back and the concierge sends them back (reassign notices); operators see it all in
//! `georep concierge status`, fail over by hand (held: no failback), pin a group, and
//! drill a group there and back with per-device times. A device with a bad key gets
//! 403; an assignment that is not the concierge's fails the device's check.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use georep_testkit::{free_port, wait_until, Mosquitto, Serve};
use serde_json::Value;

use crate::common::*;

const SEED: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const DEVICES: usize = 200;
const GROUP_A: usize = 50;

fn key_of(i: usize) -> Vec<u8> {
    format!("device-key-{i:05}-0123456789abcdef").into_bytes()
}

fn id_of(i: usize) -> String {
    format!("dev-{i:04}")
}

/// The fleet: devices 0..GROUP_A in plant-a, the rest in plant-b, all "sensor"s; one
/// observer that may read all telemetry.
fn fleet_json(disabled: &[usize]) -> String {
    let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
    let mut devices: Vec<Value> = (0..DEVICES)
        .map(|i| {
            serde_json::json!({
                "id": id_of(i),
                "key": b64(&key_of(i)),
                "group": if i < GROUP_A { "plant-a" } else { "plant-b" },
                "roles": ["sensor"],
                "enabled": !disabled.contains(&i),
            })
        })
        .collect();
    devices.push(serde_json::json!({
        "id": "observer", "key": b64(&key_of(99_999)), "group": "ops", "roles": ["observer"]
    }));
    serde_json::json!({
        "roles": [
            {"name": "sensor", "acls": [{"type": "publishClientSend", "topic": "telemetry/#"}]},
            {"name": "observer", "acls": [{"type": "subscribePattern", "topic": "telemetry/#"}]}
        ],
        "devices": devices,
    })
    .to_string()
}

/// What the test's devices saw.
#[derive(Default)]
struct Seen {
    /// Telemetry the observer received: (topic, payload).
    telemetry: BTreeSet<(String, String)>,
    /// Devices' refusals from the concierge.
    refusals: Vec<String>,
}

fn device_config(port: u16, id: &str, key: &[u8], public: &[u8]) -> georep_device::Config {
    let mut c = georep_device::Config::new(
        &format!("http://127.0.0.1:{port}"),
        "devices",
        id,
        key,
        public,
    );
    c.backoff = georep_device::Backoff {
        min: Duration::from_millis(300),
        max: Duration::from_secs(3),
    };
    c.keep_alive = Duration::from_secs(2);
    c
}

#[test]
fn a_fleet_follows_its_concierge_through_failover_failback_and_a_drill() {
    let dir = tempfile::tempdir().expect("tmp");
    let (qc, we) = (Mosquitto::start(), Mosquitto::start());
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(&fleet).expect("fleet");
    std::fs::write(fleet.join("devices.json"), fleet_json(&[])).expect("devices");
    let port = free_port();
    let cfg = TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .region("qc")
        .region("we")
        .store("fleet", "we", s(&fleet))
        .raw(&format!(
            "[[concierges]]\nname = \"devices\"\nlisten = \"127.0.0.1:{port}\"\nsigning_key = \"${{SIGNING_KEY}}\"\nidentities = {{ store = \"fleet\", object = \"devices.json\", poll = \"200ms\" }}\nfailover_after = 2\nfailback_after = \"2s\"\nprobe_interval = \"300ms\"\nprobe_timeout = \"1s\"\nttl = \"5m\"\nhubs = [\n  {{ name = \"qc\", region = \"qc\", url = \"{}\", username = \"admin\", password = \"${{QC_PW}}\" }},\n  {{ name = \"we\", region = \"we\", url = \"{}\", username = \"admin\", password = \"${{WE_PW}}\" }},\n]\n",
            qc.url(),
            we.url()
        ))
        .write(dir.path());
    let env = vec![
        ("SIGNING_KEY".to_string(), SEED.to_string()),
        ("QC_PW".into(), qc.admin().1),
        ("WE_PW".into(), we.admin().1),
    ];
    let mut d = Serve::start(BIN, &cfg, &env);
    // The daemon's API, which a restart moves.
    let api = std::cell::RefCell::new(d.base.clone());
    let cli = |args: &[&str]| {
        let base = api.borrow().clone();
        let mut all = vec!["concierge"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-c", s(&cfg), "--api", &base, "--output", "json"]);
        run(&all, &env)
    };
    let status = || {
        let out = cli(&["status", "devices"]);
        (out.code(), out.json()[0].clone())
    };
    // Every identity on both hubs, in sync.
    assert!(
        wait_until(Duration::from_secs(60), || {
            let (_, st) = status();
            st["hubs"].as_array().is_some_and(|hubs| {
                hubs.iter().all(|h| {
                    h["identities"]["in_sync"] == DEVICES + 1 && h["identities"]["pending"] == 0
                })
            })
        }),
        "{:?}\n{}",
        status(),
        d.log_text()
    );
    assert_eq!(status().0, 0, "{:?}", status());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let jwks: Value = serde_json::from_str(
        &reqwest::blocking::get(format!("http://127.0.0.1:{port}/.well-known/jwks.json"))
            .and_then(|r| r.text())
            .expect("jwks"),
    )
    .expect("json");
    let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().expect("x"))
        .expect("b64");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let _guard = rt.enter();
    // The observer, then the fleet.
    let mut observer = device_config(port, "observer", &key_of(99_999), &public);
    observer.subscriptions = vec!["telemetry/#".into()];
    let (obs, mut obs_events) = georep_device::spawn(observer);
    {
        let seen = seen.clone();
        rt.spawn(async move {
            while let Some(e) = obs_events.recv().await {
                if let georep_device::Event::Message { topic, payload } = e {
                    seen.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .telemetry
                        .insert((topic, String::from_utf8_lossy(&payload).into_owned()));
                }
            }
        });
    }
    let devices: Vec<georep_device::Handle> = (0..DEVICES)
        .map(|i| {
            let (h, mut events) =
                georep_device::spawn(device_config(port, &id_of(i), &key_of(i), &public));
            let seen = seen.clone();
            rt.spawn(async move {
                while let Some(e) = events.recv().await {
                    if let georep_device::Event::ConciergeUnreachable(why) = e {
                        seen.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .refusals
                            .push(why);
                    }
                }
            });
            h
        })
        .collect();
    let all_on = |hub: &str| {
        devices.iter().all(|h| h.hub().as_deref() == Some(hub)) && obs.hub().as_deref() == Some(hub)
    };
    assert!(
        wait_until(Duration::from_secs(60), || all_on("qc")),
        "{} of {DEVICES} on qc",
        devices
            .iter()
            .filter(|h| h.hub().as_deref() == Some("qc"))
            .count()
    );
    // Messages flow: every device's telemetry reaches the observer.
    let round = |n: &str| {
        for (i, h) in devices.iter().enumerate() {
            rt.block_on(h.publish(&format!("telemetry/{}", id_of(i)), n.as_bytes().to_vec()))
                .expect("publish");
        }
    };
    let heard = |n: &str| {
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .telemetry
            .iter()
            .filter(|(_, p)| p == n)
            .count()
    };
    // The observer's subscription may trail its connection: publish until heard.
    assert!(
        wait_until(Duration::from_secs(30), || {
            round("r1");
            heard("r1") == DEVICES
        }),
        "{} of {DEVICES} heard",
        heard("r1")
    );
    // Status: presence says where devices are.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (_, st) = status();
            st["hubs"][0]["connected_devices"] == DEVICES + 1
                && st["hubs"][1]["connected_devices"] == 0
        }),
        "{:?}",
        status()
    );

    // The preferred hub dies: every device is on the other, messages flowing.
    qc.down();
    assert!(
        wait_until(Duration::from_secs(60), || all_on("we")),
        "{} of {DEVICES} on we",
        devices
            .iter()
            .filter(|h| h.hub().as_deref() == Some("we"))
            .count()
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            round("r2");
            heard("r2") == DEVICES
        }),
        "{} of {DEVICES} heard after the failover",
        heard("r2")
    );
    assert!(
        wait_until(Duration::from_secs(20), || status().1["current_hub"]
            == "we"),
        "{:?}",
        status()
    );
    // It comes back: after failback_after, the concierge sends everyone back.
    qc.up();
    assert!(
        wait_until(Duration::from_secs(90), || all_on("qc")),
        "{} of {DEVICES} back on qc\n{:?}",
        devices
            .iter()
            .filter(|h| h.hub().as_deref() == Some("qc"))
            .count(),
        status()
    );
    let (_, st) = status();
    let reasons: Vec<&str> = st["recent_failovers"]
        .as_array()
        .expect("failovers")
        .iter()
        .filter_map(|f| f["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["failback", "failover"], "{st}");

    // A drill: plant-a to we and back, every device timed.
    let reports = dir.path().join("reports");
    let out = run(
        &[
            "drill",
            "concierge",
            "devices",
            "--group",
            "plant-a",
            "--to",
            "we",
            "--timeout",
            "60",
            "--report-dir",
            s(&reports),
            "-c",
            s(&cfg),
            "--api",
            &api.borrow(),
        ],
        &env,
    );
    assert_eq!(out.code(), 0, "{}\n{}", out.stdout(), out.stderr());
    let report: Value = std::fs::read_dir(&reports)
        .expect("reports")
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).expect("read")).expect("json"))
        .expect("a JSON report");
    assert_eq!(report["there"]["moved"], GROUP_A, "{report}");
    assert_eq!(report["back"]["moved"], GROUP_A, "{report}");
    assert!(report["there"]["p99_ms"].as_u64().is_some(), "{report}");
    assert!(
        out.stdout().contains("| there | 50 of 50 |"),
        "{}",
        out.stdout()
    );
    assert!(wait_until(Duration::from_secs(30), || all_on("qc")));

    // By hand: a failover holds devices on we (no failback while held).
    let out = cli(&["failover", "devices", "--to", "we"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert_eq!(out.json()["held"], true);
    assert!(wait_until(Duration::from_secs(60), || all_on("we")));
    // For longer than failback_after (qc is healthy), no device leaves we.
    assert!(
        !wait_until(Duration::from_secs(4), || !all_on("we")),
        "a held failover was failed back"
    );
    assert_eq!(status().1["held"], true);
    // A pin wins over it; a bad hub or device is named.
    let out = cli(&["pin", "devices", "--device", "dev-0007", "--hub", "qc"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(wait_until(Duration::from_secs(30), || devices[7]
        .hub()
        .as_deref()
        == Some("qc")));
    let out = cli(&["pin", "devices", "--group", "plant-a", "--hub", "mars"]);
    assert_ne!(out.code(), 0);
    assert!(out.stderr().contains("no hub 'mars'"), "{}", out.stderr());
    let out = cli(&["pin", "devices", "--device", "nobody", "--hub", "qc"]);
    assert!(
        out.stderr().contains("no device 'nobody'"),
        "{}",
        out.stderr()
    );
    // The hold and the pin survive a restart of the daemon.
    d.kill9();
    d = Serve::start(BIN, &cfg, &env);
    *api.borrow_mut() = d.base.clone();
    assert!(wait_until(Duration::from_secs(20), || {
        let out = run(
            &[
                "concierge",
                "status",
                "devices",
                "-c",
                s(&cfg),
                "--api",
                &d.base,
                "--output",
                "json",
            ],
            &env,
        );
        out.code() >= 0
            && serde_json::from_str::<Value>(out.stdout().trim()).is_ok_and(|v| {
                v[0]["held"] == true
                    && v[0]["current_hub"] == "we"
                    && v[0]["pins"][0]["who"] == "device:dev-0007"
            })
    }));
    let out = run(
        &[
            "concierge",
            "unpin",
            "devices",
            "--device",
            "dev-0007",
            "-c",
            s(&cfg),
            "--api",
            &d.base,
        ],
        &env,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let out = run(
        &[
            "concierge",
            "failback",
            "devices",
            "-c",
            s(&cfg),
            "--api",
            &d.base,
        ],
        &env,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(
        out.stdout().contains("devices go to 'qc'"),
        "{}",
        out.stdout()
    );
    assert!(wait_until(Duration::from_secs(60), || all_on("qc")));

    // A device disabled in the fleet is refused by the concierge and by the hubs.
    std::fs::write(fleet.join("devices.json"), fleet_json(&[3])).expect("devices");
    assert!(
        wait_until(Duration::from_secs(10), || we
            .dynsec(&["getClient", &id_of(3)])
            .contains("Disabled: true")
            && qc
                .dynsec(&["getClient", &id_of(3)])
                .contains("Disabled: true")),
        "{}",
        d.log_text()
    );
    assert!(wait_until(Duration::from_secs(20), || devices[3]
        .hub()
        .is_none()));
    // Drift: a client disabled by hand on we is reported (exit 1), not undone.
    we.dynsec(&["disableClient", &id_of(5)]);
    assert!(
        wait_until(Duration::from_secs(40), || {
            let (code, st) = status();
            code == 1
                && st["hubs"][1]["identities"]["drifted"] == 1
                && st["hubs"][1]["identities"]["drift"][0]
                    .as_str()
                    .is_some_and(|t| t.contains("was disabled on the hub by hand"))
        }),
        "{:?}",
        status()
    );
    assert!(we
        .dynsec(&["getClient", &id_of(5)])
        .contains("Disabled: true"));

    // A stranger's key: 403 at the concierge, never connected.
    let (bad, mut bad_events) = georep_device::spawn(device_config(
        port,
        &id_of(9),
        b"not the key of dev-0009!",
        &public,
    ));
    let first_refusal = |events: &mut tokio::sync::mpsc::Receiver<georep_device::Event>| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(e) = events.recv().await {
                    if let georep_device::Event::ConciergeUnreachable(w) = e {
                        return w;
                    }
                }
                String::new()
            })
            .await
            .unwrap_or_default()
        })
    };
    let why = first_refusal(&mut bad_events);
    assert!(why.contains("403"), "{why}");
    // An assignment checked against another key: refused by the device itself.
    let other = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
        .expect("b64");
    let (forged, mut forged_events) =
        georep_device::spawn(device_config(port, &id_of(10), &key_of(10), &other));
    let why = first_refusal(&mut forged_events);
    assert!(why.contains("signature is not the concierge's"), "{why}");
    // The device disabled in the fleet was refused too.
    assert!(seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .refusals
        .iter()
        .any(|r| r.contains("403")));
    assert!(bad.hub().is_none() && forged.hub().is_none());
    let logs = d.log_text();
    for secret in [SEED, &qc.admin().1] {
        assert!(!logs.contains(secret), "a secret in the logs");
    }
}
