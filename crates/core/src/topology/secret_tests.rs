//! `[vaults.NAME]` and `[[secret_syncs]]`: the model, defaults, every error class.

use std::path::Path;
use std::time::Duration;

use super::tests::refused;
use super::*;

const BASE: &str = r#"
[regions.qatar-central]
[regions.west-europe]
[regions.onprem]

[stores.escrow-we]
region = "west-europe"
url = "s3://escrow"

[stores.escrow-dc]
region = "onprem"
url = "/var/escrow"

[vaults.bao-dc1]
region = "onprem"
url = "vault://bao.dc1.example:8200/secret"
token = "${BAO_TOKEN}"

[vaults.kv-qc]
region = "qatar-central"
url = "https://kv-qc.vault.azure.net"

[vaults.sm-we]
region = "west-europe"
url = "aws-sm://eu-west-1"
"#;

const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

fn env(k: &str) -> Option<String> {
    match k {
        "BAO_TOKEN" => Some("s.bao-t0ken".into()),
        _ => None,
    }
}

#[test]
fn vaults_and_a_sync_parse_with_defaults_and_never_show_the_token() {
    let t = Topology::parse(
        &format!(
            r#"{BASE}
[[secret_syncs]]
name = "app"
source = "bao-dc1"
destinations = ["kv-qc", "sm-we"]
include = ["app/**"]
escrow = {{ store = "escrow-we", recipients = ["{RECIPIENT}"] }}
"#
        ),
        Path::new("/etc/georep"),
        &env,
    )
    .expect("parses");
    let bao = &t.vaults["bao-dc1"];
    assert_eq!(bao.token.as_deref(), Some("s.bao-t0ken"));
    assert_eq!(
        bao.url,
        crate::VaultUrl::Kv {
            endpoint: "https://bao.dc1.example:8200".into(),
            mount: "secret".into()
        }
    );
    let s = t.secret_sync("app").expect("sync");
    assert_eq!(s.versions, SecretSync::DEFAULT_VERSIONS);
    assert_eq!(s.deletes, SecretDeletes::Keep);
    assert_eq!(s.on_drift, OnDrift::Report);
    assert_eq!(s.interval, Duration::from_secs(300));
    assert!(s.filter.matches("app/db/password"));
    assert!(!s.filter.matches("other"));
    let e = s.escrow.as_ref().expect("escrow");
    assert_eq!(e.recipients, [RECIPIENT]);
    assert_eq!(e.keep, SecretSync::DEFAULT_ESCROW_KEEP);
    let json = serde_json::to_string(&t).expect("json");
    let debug = format!("{t:?}");
    for shown in [&json, &debug] {
        assert!(!shown.contains("bao-t0ken"), "{shown}");
    }
    assert!(
        json.contains("vault://bao.dc1.example:8200/secret"),
        "{json}"
    );
}

#[test]
fn every_sync_field_is_read() {
    let t = Topology::parse(
        &format!(
            r#"{BASE}
[[secret_syncs]]
name = "app"
source = "kv-qc"
destinations = ["sm-we"]
versions = 5
deletes = "propagate"
on_drift = "overwrite"
interval = "30s"
max_delete = 3
escrow = {{ store = "escrow-dc", recipients = ["{RECIPIENT}"], keep = 7 }}
"#
        ),
        Path::new("/etc/georep"),
        &env,
    )
    .expect("parses");
    let s = t.secret_sync("app").expect("sync");
    assert_eq!(s.versions, 5);
    assert_eq!(s.deletes, SecretDeletes::Propagate);
    assert_eq!(s.on_drift, OnDrift::Overwrite);
    assert_eq!(s.interval, Duration::from_secs(30));
    assert_eq!(s.max_delete, crate::MaxDelete::Count(3));
    assert_eq!(s.escrow.as_ref().map(|e| e.keep), Some(7));
}

#[test]
fn bad_vaults_are_refused_with_the_fix() {
    let text = r#"
[regions.r1]
[vaults.a]
region = "nowhere"
url = "vault+http://10.1.2.3:8200/secret"
[vaults.b]
region = "r1"
url = "aws-sm://eu-west-1"
token = "${BAO_TOKEN}"
[vaults.c]
region = "r1"
url = "vault://bao:8200/secret"
token = "plain-text-token"
[vaults.d]
region = "r1"
url = "vault://bao:8200/secret"
token = "${BAO_TOKEN}"
token_file = "/run/token"
[vaults.e]
url = "https://example.com"
color = "red"
[vaults.f]
region = "r1"
url = "vault://f.example:8200/secret"
[vaults.g]
region = "r1"
url = "vault://g.example:8200/secret"
"#;
    let msg = refused("bad vaults", text, &[]);
    for want in [
        "region 'nowhere' is not declared",
        "in clear",
        "`token` is for Vault/OpenBao",
        "AWS_ACCESS_KEY_ID",
        "the token is written in the file",
        "not both",
        "missing `region`",
        "not a Key Vault address",
        "unknown field `color`",
        "would share VAULT_TOKEN/BAO_TOKEN",
    ] {
        assert!(msg.contains(want), "missing {want:?} in:\n{msg}");
    }
    assert!(!msg.contains("s.bao-t0ken"), "{msg}");
}

#[test]
fn bad_syncs_are_refused_with_the_fix() {
    let text = format!(
        r#"{BASE}
[[secret_syncs]]
name = "one"
source = "bao-dc1"
destinations = ["kv-qc", "kv-qc", "bao-dc1", "missing"]
versions = 50
deletes = "erase"
on_drift = "ignore"
include = ["[bad"]
escrow = {{ store = "escrow-dc", recipients = ["age1short", "ssh-ed25519 AAAA"] }}

[[secret_syncs]]
name = "one"
source = "nope"
destinations = []

[[secret_syncs]]
name = "back"
source = "kv-qc"
destinations = ["bao-dc1"]
escrow = {{ store = "nowhere", recipients = [] }}
"#
    );
    let msg = refused("bad syncs", &text, &[]);
    for want in [
        "destination 'kv-qc' is listed twice",
        "'bao-dc1' is both the source and a destination",
        "destination vault 'missing' is not declared",
        "versions",
        "deletes \"erase\" is not one georep knows",
        "on_drift \"ignore\"",
        "include",
        "is not an age X25519 public key",
        "like the source vault",
        "already used by the secret sync",
        "source vault 'nope' is not declared",
        "destinations is empty",
        "a loop",
        "escrow store 'nowhere' is not declared",
        "recipients is empty",
    ] {
        assert!(msg.contains(want), "missing {want:?} in:\n{msg}");
    }
}
