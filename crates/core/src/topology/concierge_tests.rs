//! `[[concierges]]`: the model, defaults, every error class.

use std::path::Path;
use std::time::Duration;

use super::tests::refused;
use super::*;

const BASE: &str = r#"
[regions.qatar-central]
[regions.west-europe]

[stores.fleet-we]
region = "west-europe"
url = "s3://fleet"
"#;

/// 32 bytes, base64.
const SEED: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn env(k: &str) -> Option<String> {
    match k {
        "SIGNING_KEY" => Some(SEED.into()),
        "SHORT_KEY" => Some("c2hvcnQ=".into()),
        "HUB_PW" => Some("hub-s3cret".into()),
        _ => None,
    }
}

#[test]
fn a_concierge_parses_with_defaults_and_never_shows_its_secrets() {
    let t = Topology::parse(
        &format!(
            r#"{BASE}
[[concierges]]
name = "devices"
listen = "127.0.0.1:7450"
signing_key = "${{SIGNING_KEY}}"
identities = {{ store = "fleet-we", object = "devices.json" }}
ttl = "2m"
bridge = ["commands/#", "config/+/set"]
hubs = [
  {{ name = "qc", region = "qatar-central", url = "mqtts://hub-qc.example:8883", username = "georep", password = "${{HUB_PW}}" }},
  {{ name = "we", region = "west-europe", url = "mqtt://10.0.0.9:1883" }},
]
"#
        ),
        Path::new("/etc/georep"),
        &env,
    )
    .expect("a concierge parses");
    let c = t.concierge("devices").expect("concierge");
    assert_eq!(c.signing_key, (0u8..32).collect::<Vec<_>>());
    assert_eq!(c.hubs.len(), 2);
    assert_eq!(c.hubs[0].password.as_deref(), Some("hub-s3cret"));
    assert_eq!(c.hubs[1].username, None);
    assert_eq!(c.identities.object, "devices.json");
    assert_eq!(c.identities.poll, Concierge::DEFAULT_POLL);
    assert_eq!(c.ttl, Duration::from_secs(120));
    assert_eq!(c.bridge, ["commands/#", "config/+/set"]);
    assert_eq!(c.failover_after, Concierge::DEFAULT_FAILOVER_AFTER);
    assert_eq!(c.probe_timeout, Concierge::DEFAULT_PROBE_TIMEOUT);
    let shown = format!("{t:?} {}", serde_json::to_string(&t).expect("json"));
    for secret in ["hub-s3cret", SEED] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
    }
}

#[test]
fn every_bad_concierge_field_is_reported_with_its_fix() {
    refused(
        "bad concierges",
        &format!(
            r#"{BASE}
[[concierges]]
name = "a b"
listen = "0.0.0.0:7451"
signing_key = "written-in-the-file"
identities = {{ store = "nowhere" }}
color = "blue"
bridge = ["georep/x", "$SYS/#", "a/#/b", "a+/b", "cmd/#", "cmd/#"]
hubs = [
  {{ name = "qc", region = "mars", url = "http://hub:1883", username = "georep" }},
]

[[concierges]]
name = "b"
listen = "127.0.0.1:7452"
hubs = [
  {{ name = "x", region = "qatar-central", url = "mqtt://u:p@hub:1883" }},
  {{ name = "x", region = "west-europe", url = "mqtt://hub2:1883" }},
]
"#
        ),
        &[
            "invalid concierge name",
            "is not a loopback address",
            "the signing_key is written in the file",
            "missing `object`",
            "unknown field",
            "`hubs` needs at least two hubs",
            "region 'mars' is not declared",
            "url is not an mqtt:// or mqtts:// URL",
            "give username and password together",
            "identities store 'nowhere' is not declared",
            "missing `signing_key`",
            "missing `identities`",
            "url holds credentials",
            "the hub name 'x' is used twice",
            "bridge filter 'georep/x': the filter would take in georep's own topics",
            "bridge filter '$SYS/#': topics starting with '$'",
            "bridge filter 'a/#/b': '#' must be a whole level, and the last",
            "bridge filter 'a+/b': '+' must be a whole level",
            "bridge filter 'cmd/#' is listed twice",
        ],
    );
}

#[test]
fn an_admin_password_never_crosses_the_network_in_the_clear() {
    let text = |url: &str| {
        format!(
            r#"{BASE}
[[concierges]]
name = "devices"
listen = "127.0.0.1:7450"
signing_key = "${{SIGNING_KEY}}"
identities = {{ store = "fleet-we", object = "devices.json" }}
hubs = [
  {{ name = "qc", region = "qatar-central", url = "{url}", username = "georep", password = "${{HUB_PW}}" }},
  {{ name = "we", region = "west-europe", url = "mqtts://hub-we.example:8883" }},
]
"#
        )
    };
    let e = Topology::parse(
        &text("mqtt://10.0.0.9:1883"),
        Path::new("/etc/georep"),
        &env,
    )
    .expect_err("cleartext credentials off the machine")
    .render("g.toml");
    assert!(e.contains("would cross the network in the clear"), "{e}");
    for fine in [
        "mqtt://127.0.0.1:1883",
        "mqtt://localhost",
        "mqtt://[::1]:1883",
        "mqtts://10.0.0.9:8883",
    ] {
        Topology::parse(&text(fine), Path::new("/etc/georep"), &env).expect(fine);
    }
}
