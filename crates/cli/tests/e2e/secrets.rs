//! `georep secrets ...` end to end with real parts: two OpenBao dev servers, Secrets
//! Manager in two regions of one moto server, the testkit's Key Vault (no emulator
//! exists), escrow bundles in Azurite and moto S3 opened by Debian's `age`. No value
//! may appear in any output, log line or state file.

use std::path::Path;

use georep_testkit::{Azurite, Bao, KeyVault, Moto};
use serde_json::{json, Value};

use crate::common::*;

const KEY: &str = "0123456789abcdef0123456789abcdef-test-key";
const KV_CLIENT: &str = "georep-app";
const KV_SECRET: &str = "kv-client-s3cret";

/// A value no code path should ever print: unique, recognisable.
fn value(tag: &str) -> String {
    format!("SECRETVALUE-{tag}-{:016x}", rand::random::<u64>())
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

fn bao_put(b: &Bao, path: &str, data: Value) {
    let r = http()
        .post(format!("{}/v1/secret/data/{path}", b.addr()))
        .header("X-Vault-Token", Bao::TOKEN)
        .body(json!({ "data": data }).to_string())
        .send()
        .expect("bao put");
    assert!(r.status().is_success(), "bao put {path}: {}", r.status());
}

fn bao_delete_all(b: &Bao, path: &str) {
    let r = http()
        .delete(format!("{}/v1/secret/metadata/{path}", b.addr()))
        .header("X-Vault-Token", Bao::TOKEN)
        .send()
        .expect("bao delete");
    assert!(r.status().is_success(), "bao delete {path}: {}", r.status());
}

/// The data maps of a key's live versions, oldest first.
fn bao_versions(b: &Bao, path: &str) -> Vec<Value> {
    let m: Value = http()
        .get(format!("{}/v1/secret/metadata/{path}", b.addr()))
        .header("X-Vault-Token", Bao::TOKEN)
        .send()
        .expect("bao metadata")
        .text()
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut nums: Vec<u64> = m["data"]["versions"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v["deletion_time"] == "" && v["destroyed"] == false)
                .filter_map(|(k, _)| k.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    nums.sort();
    nums.iter()
        .map(|n| {
            let v: Value = http()
                .get(format!("{}/v1/secret/data/{path}?version={n}", b.addr()))
                .header("X-Vault-Token", Bao::TOKEN)
                .send()
                .expect("bao read")
                .text()
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            v["data"]["data"].clone()
        })
        .collect()
}

/// A key's custom metadata.
fn bao_custom(b: &Bao, path: &str) -> Value {
    let m: Value = http()
        .get(format!("{}/v1/secret/metadata/{path}", b.addr()))
        .header("X-Vault-Token", Bao::TOKEN)
        .send()
        .ok()
        .and_then(|r| r.text().ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    m["data"]["custom_metadata"].clone()
}

fn texts(vs: &[Value]) -> Vec<String> {
    vs.iter()
        .map(|v| v["value"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A secret's values in Secrets Manager, in the order georep's labels give (AWSCURRENT
/// last).
fn sm_values(m: &Moto, region: &str, name: &str) -> Vec<String> {
    let (st, d) = m.aws_json_in(
        region,
        "secretsmanager",
        "secretsmanager.DescribeSecret",
        &json!({"SecretId": name}),
    );
    assert_eq!(st, 200, "describe {name} in {region}: {d}");
    let mut labelled: Vec<(u64, String)> = Vec::new();
    for (id, stages) in d["VersionIdsToStages"].as_object().into_iter().flatten() {
        let seq = stages
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str()?.strip_prefix("georep-")?.parse::<u64>().ok())
            .max();
        if let Some(seq) = seq {
            labelled.push((seq, id.clone()));
        }
    }
    labelled.sort();
    labelled
        .into_iter()
        .map(|(_, id)| {
            let (_, v) = m.aws_json_in(
                region,
                "secretsmanager",
                "secretsmanager.GetSecretValue",
                &json!({"SecretId": name, "VersionId": id}),
            );
            v["SecretString"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

struct World {
    bao1: Bao,
    bao2: Bao,
    moto: Moto,
    kv: KeyVault,
    kv_restore: KeyVault,
    azurite: Azurite,
}

fn env(w: &World) -> Vec<(String, String)> {
    let mut e = w.moto.env();
    e.retain(|(k, _)| k != "AWS_REGION");
    e.push(("GEOREP_SECRETS_KEY".into(), KEY.into()));
    e.push(("BAO_TOKEN".into(), Bao::TOKEN.into()));
    e.push(("AWS_ENDPOINT_URL_SECRETS_MANAGER".into(), w.moto.endpoint()));
    e.push(("AZURE_TENANT_ID".into(), "tenant".into()));
    e.push(("AZURE_CLIENT_ID".into(), KV_CLIENT.into()));
    e.push(("AZURE_CLIENT_SECRET".into(), KV_SECRET.into()));
    e.push(("AZURE_AUTHORITY_HOST".into(), w.kv.url_base()));
    e.extend(w.azurite.env());
    e
}

fn topology(dir: &Path, w: &World, recipient: &str) -> std::path::PathBuf {
    w.moto.create_bucket("escrow");
    w.azurite.create_container("escrow");
    TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .region("dc1")
        .region("dc2")
        .region("we")
        .region("me")
        .region("qc")
        .store("escrow-az", "we", &w.azurite.url("escrow"))
        .store("escrow-s3", "me", "s3://escrow/bundles")
        .raw(&format!(
            "[vaults.bao1]\nregion = \"dc1\"\nurl = \"{}\"\ntoken = \"${{BAO_TOKEN}}\"\n[vaults.bao2]\nregion = \"dc2\"\nurl = \"{}\"\ntoken = \"${{BAO_TOKEN}}\"\n\
             [vaults.sm-we]\nregion = \"we\"\nurl = \"aws-sm://eu-west-1\"\n[vaults.sm-me]\nregion = \"me\"\nurl = \"aws-sm://me-central-1\"\n\
             [vaults.kv-qc]\nregion = \"qc\"\nurl = \"{}\"\n[vaults.kv-restore]\nregion = \"qc\"\nurl = \"{}\"\n",
            w.bao1.vault_url(),
            w.bao2.vault_url(),
            w.kv.vault_url(),
            w.kv_restore.vault_url()
        ))
        .raw(&format!(
            "[[secret_syncs]]\nname = \"edge\"\nsource = \"bao1\"\ndestinations = [\"bao2\", \"sm-we\"]\ninclude = [\"app/**\"]\nversions = 3\n\
             escrow = {{ store = \"escrow-az\", recipients = [\"{recipient}\"] }}\n\
             [[secret_syncs]]\nname = \"certs\"\nsource = \"kv-qc\"\ndestinations = [\"bao2\"]\ninclude = [\"tls-*\"]\n\
             [[secret_syncs]]\nname = \"chain\"\nsource = \"sm-we\"\ndestinations = [\"kv-qc\", \"sm-me\"]\nversions = 3\n\
             escrow = {{ store = \"escrow-s3\", recipients = [\"{recipient}\"], keep = 2 }}\n"
        ))
        .write(dir)
}

/// Every byte of every file under `dir`.
fn all_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p.display().to_string(), b));
            }
        }
    }
    out
}

fn age_keygen(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("escrow.key");
    let o = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap_or_else(|e| {
            panic!("age-keygen is missing ({e}): apt-get install age (bash .ci/run installs it)")
        });
    assert!(o.status.success(), "age-keygen: {o:?}");
    let text = std::fs::read_to_string(&key).expect("key file");
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .trim()
        .to_string();
    (key, public)
}

#[test]
fn a_chain_carries_versions_in_order_reports_drift_escrows_and_never_shows_a_value() {
    let w = World {
        bao1: Bao::start(),
        bao2: Bao::start(),
        moto: Moto::start(),
        kv: KeyVault::start(KV_CLIENT, KV_SECRET),
        kv_restore: KeyVault::start(KV_CLIENT, KV_SECRET),
        azurite: Azurite::start(),
    };
    let dir = tempfile::tempdir().expect("tmp");
    let (keyfile, recipient) = age_keygen(dir.path());
    let cfg = topology(dir.path(), &w, &recipient);
    let c = s(&cfg);
    let e = env(&w);
    let mut seen = String::new();
    let mut values: Vec<String> = Vec::new();

    let db: Vec<String> = (1..=4).map(|i| value(&format!("db{i}"))).collect();
    for v in &db {
        bao_put(&w.bao1, "app/db", json!({ "value": v }));
    }
    let (user, pw) = (value("user"), value("pw"));
    bao_put(&w.bao1, "app/api", json!({ "user": user, "password": pw }));
    let other = value("other");
    bao_put(&w.bao1, "other/x", json!({ "value": other }));
    values.extend(db.iter().cloned());
    values.extend([user.clone(), pw.clone(), other.clone()]);

    // OpenBao -> OpenBao and Secrets Manager: the newest 3 versions, in order.
    let first = run(
        &["secrets", "sync", "edge", "-c", c, "--output", "json"],
        &e,
    );
    seen.push_str(&format!("{}{}", first.stdout(), first.stderr()));
    assert_eq!(first.code(), 0, "{}{}", first.stdout(), first.stderr());
    let j = first.json();
    assert_eq!(j["secrets"], 2, "{j}");
    assert!(j["escrow"].is_string(), "{j}");
    assert_eq!(texts(&bao_versions(&w.bao2, "app/db")), db[1..]);
    assert_eq!(
        bao_versions(&w.bao2, "app/api"),
        [json!({"user": user, "password": pw})]
    );
    assert!(
        bao_versions(&w.bao2, "other/x").is_empty(),
        "excluded by include"
    );
    assert_eq!(sm_values(&w.moto, "eu-west-1", "app/db"), db[1..]);

    // Secrets Manager -> Key Vault (names mapped, first name kept) and another region.
    let chain = run(
        &["secrets", "sync", "chain", "-c", c, "--output", "json"],
        &e,
    );
    seen.push_str(&format!("{}{}", chain.stdout(), chain.stderr()));
    assert_eq!(chain.code(), 0, "{}{}", chain.stdout(), chain.stderr());
    assert_eq!(w.kv.values("app--db"), db[1..]);
    let (tags, enabled, _) = w.kv.newest("app--db").expect("in key vault");
    assert!(enabled);
    assert_eq!(tags.get("georep-name").map(String::as_str), Some("app/db"));
    assert_eq!(sm_values(&w.moto, "me-central-1", "app/db"), db[1..]);
    let api_kv = w.kv.values("app--api");
    assert_eq!(api_kv.len(), 1);
    assert_eq!(
        serde_json::from_str::<Value>(&api_kv[0]).expect("json"),
        json!({"user": user, "password": pw}),
        "a map travels as its JSON"
    );

    // A certificate's secret travels with its content type; a key cannot travel and
    // is named; Key Vault's throttling is waited out as it asks.
    let pem = value("pem");
    values.push(pem.clone());
    w.kv.set_typed("tls-cert", &pem, "application/x-pem-file");
    w.kv.add_key("tls-signing-key", true);
    w.kv.throttle(3);
    let certs = run(
        &["secrets", "sync", "certs", "-c", c, "--output", "json"],
        &e,
    );
    seen.push_str(&format!("{}{}", certs.stdout(), certs.stderr()));
    assert_eq!(
        certs.code(),
        1,
        "a key that cannot travel is exit 1: {}",
        certs.stdout()
    );
    let items = certs.json()["items"].clone();
    assert!(
        items
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["name"] == "tls-signing-key"
                && i["outcome"] == "not_exportable"
                && i["detail"].as_str().is_some_and(|d| d.contains("re-wrap"))),
        "{items}"
    );
    assert!(w.kv.throttled() >= 3, "the test vault throttled");
    let st = run(&["secrets", "status", "certs", "-c", c], &e);
    assert_eq!(st.code(), 1);
    assert!(
        st.stdout().contains("tls-signing-key") && st.stdout().contains("not_exportable"),
        "{}",
        st.stdout()
    );
    assert_eq!(texts(&bao_versions(&w.bao2, "tls-cert")), [pem.as_str()]);
    assert_eq!(
        bao_custom(&w.bao2, "tls-cert")["georep-content-type"],
        "application/x-pem-file"
    );
    // A new version in the same second as the last pass (Key Vault's clock has whole
    // seconds) is still seen by the next pass.
    let pem2 = value("pem2");
    values.push(pem2.clone());
    w.kv.set_typed("tls-cert", &pem2, "application/x-pem-file");
    run(&["secrets", "sync", "certs", "-c", c], &e);
    assert_eq!(
        texts(&bao_versions(&w.bao2, "tls-cert")),
        [pem.as_str(), pem2.as_str()]
    );

    // Nothing changed: metadata only, nothing written.
    let again = run(
        &["secrets", "sync", "edge", "-c", c, "--output", "json"],
        &e,
    );
    assert_eq!(again.code(), 0, "{}", again.stdout());
    let j = again.json();
    assert_eq!(j["unchanged"], 4, "{j}");
    assert_eq!(j["items"], json!([]), "{j}");
    assert!(j["escrow"].is_null(), "no new bundle without a change: {j}");

    // A new version at the source flows down the chain.
    let db5 = value("db5");
    values.push(db5.clone());
    bao_put(&w.bao1, "app/db", json!({ "value": db5 }));
    run(&["secrets", "sync", "edge", "-c", c], &e).ok();
    run(&["secrets", "sync", "chain", "-c", c], &e).ok();
    assert_eq!(texts(&bao_versions(&w.bao2, "app/db")).last(), Some(&db5));
    assert_eq!(w.kv.values("app--db").last(), Some(&db5));
    assert_eq!(
        w.kv.values("app--db").len(),
        4,
        "one version added, none repeated"
    );

    // Drift: changed by hand in Key Vault, reported, left alone.
    let hand = value("hand");
    values.push(hand.clone());
    w.kv.set("app--db", &hand);
    let db6 = value("db6");
    values.push(db6.clone());
    bao_put(&w.bao1, "app/db", json!({ "value": db6 }));
    run(&["secrets", "sync", "edge", "-c", c], &e).ok();
    let drift = run(
        &["secrets", "sync", "chain", "-c", c, "--output", "json"],
        &e,
    );
    seen.push_str(&format!("{}{}", drift.stdout(), drift.stderr()));
    assert_eq!(drift.code(), 1, "{}", drift.stdout());
    let items = drift.json()["items"].clone();
    assert!(
        items
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["name"] == "app/db"
                && i["destination"] == "kv-qc"
                && i["outcome"] == "drifted"),
        "{items}"
    );
    assert_eq!(
        w.kv.values("app--db").last(),
        Some(&hand),
        "not overwritten"
    );
    assert_eq!(
        sm_values(&w.moto, "me-central-1", "app/db").last(),
        Some(&db6),
        "the other destination went on"
    );
    let status = run(&["secrets", "status", "chain", "-c", c], &e);
    seen.push_str(&format!("{}{}", status.stdout(), status.stderr()));
    assert_eq!(status.code(), 1);
    assert!(status.stdout().contains("drifted"), "{}", status.stdout());
    let diff = run(&["secrets", "diff", "chain", "-c", c], &e);
    seen.push_str(&format!("{}{}", diff.stdout(), diff.stderr()));
    assert_eq!(diff.code(), 1, "{}", diff.stdout());

    // The chain's bundles in S3: one per pass that saw a change, the newest 2 kept.
    let chain_bundles = run(
        &[
            "secrets", "escrow", "list", "chain", "-c", c, "--output", "json",
        ],
        &e,
    )
    .ok();
    assert_eq!(
        chain_bundles.json().as_array().map(Vec::len),
        Some(2),
        "{}",
        chain_bundles.stdout()
    );

    // The escrow bundle opens with Debian's age and holds the versions.
    let bundles = run(
        &[
            "secrets", "escrow", "list", "edge", "-c", c, "--output", "json",
        ],
        &e,
    )
    .ok();
    let names = bundles.json();
    let newest = names
        .as_array()
        .and_then(|a| a.last())
        .and_then(Value::as_str)
        .expect("a bundle")
        .to_string();
    let local = dir.path().join("fetched");
    run(&["copy", &w.azurite.url("escrow/edge"), s(&local)], &e).ok();
    let bundle = local.join(&newest);
    let o = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&keyfile)
        .arg(&bundle)
        .output()
        .expect("age runs");
    assert!(
        o.status.success(),
        "age -d: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let doc: Value = serde_json::from_slice(&o.stdout).expect("a JSON bundle");
    assert_eq!(doc["format"], "georep-secrets-escrow/1");
    let db_held = doc["secrets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "app/db")
        .expect("app/db in the bundle");
    use base64::Engine as _;
    let held: Vec<String> = db_held["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(v["value_base64"].as_str().unwrap_or_default())
                    .unwrap_or_default(),
            )
            .unwrap_or_default()
        })
        .collect();
    assert_eq!(held, [db[3].clone(), db5.clone(), db6.clone()]);

    // Restore into an empty vault from the bundle.
    std::fs::set_permissions(
        &keyfile,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let restored = run(
        &[
            "secrets",
            "escrow",
            "restore",
            "edge",
            "-c",
            c,
            "--to",
            "kv-restore",
            "--identity",
            s(&keyfile),
        ],
        &e,
    );
    seen.push_str(&format!("{}{}", restored.stdout(), restored.stderr()));
    assert_eq!(
        restored.code(),
        0,
        "{}{}",
        restored.stdout(),
        restored.stderr()
    );
    assert_eq!(
        w.kv_restore.values("app--db"),
        [db[3].clone(), db5.clone(), db6.clone()]
    );

    // deletes = "keep" (the default): gone at the source, kept at the destinations.
    bao_delete_all(&w.bao1, "app/api");
    let kept = run(
        &["secrets", "sync", "edge", "-c", c, "--output", "json"],
        &e,
    );
    assert_eq!(kept.code(), 0, "{}", kept.stdout());
    assert!(
        kept.json()["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["name"] == "app/api" && i["outcome"] == "kept"),
        "{}",
        kept.stdout()
    );
    assert_eq!(bao_versions(&w.bao2, "app/api").len(), 1, "kept");

    // The source's region is lost: promote a destination; the others and the old
    // source are written from it, nothing twice.
    let p = run(&["secrets", "promote", "edge", "-c", c, "--to", "bao2"], &e).ok();
    assert!(
        p.stdout().contains("source is now 'bao2'"),
        "{}",
        p.stdout()
    );
    let db7 = value("db7");
    values.push(db7.clone());
    bao_put(&w.bao2, "app/db", json!({ "value": db7 }));
    let promoted = run(
        &["secrets", "sync", "edge", "-c", c, "--output", "json"],
        &e,
    );
    seen.push_str(&format!("{}{}", promoted.stdout(), promoted.stderr()));
    assert_eq!(
        promoted.code(),
        0,
        "{}{}",
        promoted.stdout(),
        promoted.stderr()
    );
    assert_eq!(promoted.json()["source"], "bao2");
    assert_eq!(
        sm_values(&w.moto, "eu-west-1", "app/db"),
        [db5.clone(), db6.clone(), db7.clone()]
    );
    let old_source = texts(&bao_versions(&w.bao1, "app/db"));
    assert_eq!(old_source.last(), Some(&db7));
    assert_eq!(old_source.len(), 7, "db1..db6 kept, db7 added once");
    run(&["secrets", "promote", "edge", "-c", c, "--to", "bao1"], &e).ok();

    // Never a value: not in any output, not in any state file.
    for v in &values {
        assert!(!seen.contains(v.as_str()), "a value was printed:\n{seen}");
        for (path, bytes) in all_files(&dir.path().join("state")) {
            assert!(
                !bytes.windows(v.len()).any(|w| w == v.as_bytes()),
                "a value is in {path}"
            );
        }
    }
    assert!(!seen.contains(KV_SECRET) && !seen.contains(KEY));
}

#[test]
fn a_bad_token_is_exit_3_naming_the_vault_and_a_missing_key_is_exit_2() {
    let (bao1, bao2) = (Bao::start(), Bao::start());
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .region("dc1")
        .region("dc2")
        .raw(&format!(
            "[vaults.bao1]\nregion = \"dc1\"\nurl = \"{}\"\ntoken = \"${{T1}}\"\n[vaults.bao2]\nregion = \"dc2\"\nurl = \"{}\"\ntoken = \"${{T2}}\"\n\
             [[secret_syncs]]\nname = \"s\"\nsource = \"bao1\"\ndestinations = [\"bao2\"]\n",
            bao1.vault_url(),
            bao2.vault_url()
        ))
        .write(dir.path());
    let c = s(&cfg);
    let env = |t1: &str, key: &str| {
        vec![
            ("T1".to_string(), t1.to_string()),
            ("T2".to_string(), Bao::TOKEN.to_string()),
            ("GEOREP_SECRETS_KEY".to_string(), key.to_string()),
        ]
    };
    let bad = run(
        &["secrets", "sync", "s", "-c", c],
        &env("wrong-token-123", KEY),
    );
    assert_eq!(bad.code(), 3, "{}{}", bad.stdout(), bad.stderr());
    assert!(bad.stderr().contains("vault 'bao1'"), "{}", bad.stderr());
    assert!(
        !bad.stderr().contains("wrong-token-123"),
        "{}",
        bad.stderr()
    );
    let nokey = run(&["secrets", "sync", "s", "-c", c], &env(Bao::TOKEN, ""));
    assert_eq!(nokey.code(), 2, "{}", nokey.stderr());
    assert!(
        nokey.stderr().contains("GEOREP_SECRETS_KEY"),
        "{}",
        nokey.stderr()
    );
}

/// Sync `s` from `bao1` to `bao2` (with `extra` sync fields), the state in `dir/state`.
fn bao_pair(dir: &Path, bao1: &Bao, bao2: &Bao, extra: &str) -> std::path::PathBuf {
    TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .region("dc1")
        .region("dc2")
        .raw(&format!(
            "[vaults.bao1]\nregion = \"dc1\"\nurl = \"{}\"\ntoken = \"${{BAO_TOKEN}}\"\n[vaults.bao2]\nregion = \"dc2\"\nurl = \"{}\"\ntoken = \"${{BAO_TOKEN}}\"\n\
             [[secret_syncs]]\nname = \"s\"\nsource = \"bao1\"\ndestinations = [\"bao2\"]\n{extra}",
            bao1.vault_url(),
            bao2.vault_url()
        ))
        .write(dir)
}

fn bao_env() -> Vec<(String, String)> {
    vec![
        ("BAO_TOKEN".to_string(), Bao::TOKEN.to_string()),
        ("GEOREP_SECRETS_KEY".to_string(), KEY.to_string()),
    ]
}

/// Keys in the root folder `d/` of a dev server's KV engine.
fn bao_count(b: &Bao) -> usize {
    let v: Value = http()
        .get(format!("{}/v1/secret/metadata/d/?list=true", b.addr()))
        .header("X-Vault-Token", Bao::TOKEN)
        .send()
        .ok()
        .and_then(|r| r.text().ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    v["data"]["keys"].as_array().map_or(0, Vec::len)
}

#[test]
fn a_killed_pass_converges_without_duplicates_and_deletes_stay_within_the_guard() {
    let (bao1, bao2) = (Bao::start(), Bao::start());
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = bao_pair(
        dir.path(),
        &bao1,
        &bao2,
        "versions = 2\ndeletes = \"propagate\"\nmax_delete = \"10%\"\n",
    );
    let c = s(&cfg);
    let e = bao_env();
    const N: usize = 600;
    let client = http();
    for i in 0..N {
        for v in 0..2 {
            let r = client
                .post(format!("{}/v1/secret/data/d/k{i:04}", bao1.addr()))
                .header("X-Vault-Token", Bao::TOKEN)
                .body(json!({"data": {"value": format!("v{v}-of-{i}")}}).to_string())
                .send()
                .expect("put");
            assert!(r.status().is_success());
        }
    }

    // kill -9 in the middle of the first pass.
    let mut child = georep(&["secrets", "sync", "s", "-c", c, "--parallel", "2"], &e)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    assert!(
        georep_testkit::wait_until(std::time::Duration::from_secs(60), || bao_count(&bao2)
            >= 20),
        "the pass wrote nothing"
    );
    child.kill().expect("kill -9");
    let _ = child.wait();
    let at_kill = bao_count(&bao2);
    assert!(
        at_kill < N,
        "the pass ended before the kill ({at_kill} of {N}); raise N"
    );

    let resumed = run(&["secrets", "sync", "s", "-c", c, "--output", "json"], &e);
    assert_eq!(
        resumed.code(),
        0,
        "{}{}",
        resumed.stdout(),
        resumed.stderr()
    );
    assert_eq!(bao_count(&bao2), N);
    for i in (0..N).step_by(7).chain([N - 1]) {
        let got = texts(&bao_versions(&bao2, &format!("d/k{i:04}")));
        assert_eq!(
            got,
            [format!("v0-of-{i}"), format!("v1-of-{i}")],
            "d/k{i:04}: each version once, in order"
        );
    }
    let again = run(&["secrets", "sync", "s", "-c", c, "--output", "json"], &e).ok();
    assert_eq!(again.json()["unchanged"], N as u64);

    // A few deletes propagate (recoverably: soft-deleted versions).
    for i in 0..3 {
        bao_delete_all(&bao1, &format!("d/k{i:04}"));
    }
    let del = run(&["secrets", "sync", "s", "-c", c, "--output", "json"], &e).ok();
    let items = del.json()["items"].clone();
    assert_eq!(
        items
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["outcome"] == "deleted")
            .count(),
        3,
        "{items}"
    );
    assert!(bao_versions(&bao2, "d/k0000").is_empty());

    // Many at once trip max_delete: nothing is removed, exit 1.
    for i in 3..200 {
        bao_delete_all(&bao1, &format!("d/k{i:04}"));
    }
    let guarded = run(&["secrets", "sync", "s", "-c", c, "--output", "json"], &e);
    assert_eq!(guarded.code(), 1, "{}", guarded.stdout());
    assert!(
        guarded.stdout().contains("max_delete"),
        "{}",
        guarded.stdout()
    );
    assert_eq!(texts(&bao_versions(&bao2, "d/k0100")).len(), 2, "kept");
}

#[test]
fn the_daemon_keeps_a_sync_in_step_and_shows_lag_and_drift_without_a_value() {
    let (bao1, bao2) = (Bao::start(), Bao::start());
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = bao_pair(dir.path(), &bao1, &bao2, "interval = \"1s\"\n");
    let e = bao_env();
    let mut values = Vec::new();
    for i in 0..5 {
        let v = value(&format!("d{i}"));
        bao_put(&bao1, &format!("d/k{i}"), json!({ "value": v }));
        values.push(v);
    }
    let d = georep_testkit::Serve::start(BIN, &cfg, &e);
    let in_sync = |want: usize| {
        georep_testkit::wait_until(std::time::Duration::from_secs(60), || {
            d.get("/api/v1/secret-syncs/s")["in_sync"] == want
        })
    };
    assert!(in_sync(5), "{}", d.get("/api/v1/secret-syncs/s"));

    // A new version at the source arrives on the interval.
    let newer = value("newer");
    values.push(newer.clone());
    bao_put(&bao1, "d/k0", json!({ "value": newer }));
    assert!(
        georep_testkit::wait_until(std::time::Duration::from_secs(60), || {
            texts(&bao_versions(&bao2, "d/k0")).last() == Some(&newer)
        }),
        "the daemon did not carry the new version"
    );

    // Drift at the destination shows in the status and the metrics.
    let hand = value("hand");
    values.push(hand.clone());
    bao_put(&bao2, "d/k1", json!({ "value": hand }));
    let newer1 = value("newer1");
    values.push(newer1.clone());
    bao_put(&bao1, "d/k1", json!({ "value": newer1 }));
    assert!(
        georep_testkit::wait_until(std::time::Duration::from_secs(60), || {
            d.get("/api/v1/secret-syncs/s")["drifted"] == 1
        }),
        "{}",
        d.get("/api/v1/secret-syncs/s")
    );
    assert_eq!(texts(&bao_versions(&bao2, "d/k1")).last(), Some(&hand));
    let st = d.get("/api/v1/secret-syncs/s");
    assert!(st["lag_seconds"].as_f64().is_some_and(|l| l < 60.0), "{st}");
    let (code, metrics) = d.req(reqwest::Method::GET, "/metrics", None);
    assert_eq!(code, 200);
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("georep_secret_sync_drifted{sync=\"s\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("georep_secret_sync_lag_seconds{sync=\"s\"}"));

    // A pass on demand needs the write token.
    let (code, _) = d.req(
        reqwest::Method::POST,
        "/api/v1/secret-syncs/s/sync",
        Some(&json!({})),
    );
    assert_eq!(code, 200);
    let anonymous = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/secret-syncs/s/sync", d.base))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .expect("post");
    assert_eq!(anonymous.status().as_u16(), 401);

    let everything = format!("{metrics}{}{}", d.get("/api/v1/secret-syncs"), d.log_text());
    for v in &values {
        assert!(
            !everything.contains(v.as_str()),
            "a value leaked:\n{everything}"
        );
    }
}

#[test]
fn disable_and_overwrite_reach_key_vault_through_a_managed_identity_and_secrets_manager() {
    let bao = Bao::start();
    let moto = Moto::start();
    let kv = KeyVault::start(KV_CLIENT, KV_SECRET);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .region("dc1")
        .region("qc")
        .region("we")
        .raw(&format!(
            "[vaults.bao]\nregion = \"dc1\"\nurl = \"{}\"\n[vaults.kv]\nregion = \"qc\"\nurl = \"{}\"\n\
             [vaults.sm]\nregion = \"we\"\nurl = \"aws-sm://eu-west-1\"\n\
             [[secret_syncs]]\nname = \"s\"\nsource = \"bao\"\ndestinations = [\"kv\", \"sm\"]\ndeletes = \"disable\"\non_drift = \"overwrite\"\nmax_delete = 5\n",
            bao.vault_url(),
            kv.vault_url()
        ))
        .write(dir.path());
    let c = s(&cfg);
    let (endpoint, header) = kv.identity_endpoint();
    let mut e = moto.env();
    e.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    e.extend([
        (
            "AWS_ENDPOINT_URL_SECRETS_MANAGER".to_string(),
            moto.endpoint(),
        ),
        ("BAO_TOKEN".to_string(), Bao::TOKEN.to_string()),
        ("GEOREP_SECRETS_KEY".to_string(), KEY.to_string()),
        ("IDENTITY_ENDPOINT".to_string(), endpoint),
        ("IDENTITY_HEADER".to_string(), header),
    ]);
    let sm_deleted = |name: &str| {
        let (_, d) = moto.aws_json_in(
            "eu-west-1",
            "secretsmanager",
            "secretsmanager.DescribeSecret",
            &json!({"SecretId": name}),
        );
        !d["DeletedDate"].is_null()
    };
    for k in ["a", "b", "c"] {
        bao_put(&bao, k, json!({ "value": format!("{k}-1") }));
    }
    run(&["secrets", "sync", "s", "-c", c], &e).ok();
    assert_eq!(
        kv.values("a"),
        ["a-1"],
        "written with a managed identity's token"
    );
    assert_eq!(sm_values(&moto, "eu-west-1", "c"), ["c-1"]);

    // on_drift = "overwrite": a hand edit is written over with the source's version.
    kv.set("b", "by-hand");
    bao_put(&bao, "b", json!({ "value": "b-2" }));
    let o = run(&["secrets", "sync", "s", "-c", c, "--output", "json"], &e);
    assert_eq!(o.code(), 0, "{}{}", o.stdout(), o.stderr());
    assert_eq!(kv.values("b").last().map(String::as_str), Some("b-2"));

    // deletes = "disable": Key Vault's copy disabled, Secrets Manager's scheduled for
    // deletion (restorable) and tagged.
    bao_delete_all(&bao, "c");
    let d = run(&["secrets", "sync", "s", "-c", c, "--output", "json"], &e);
    assert_eq!(d.code(), 0, "{}{}", d.stdout(), d.stderr());
    let (_, enabled, _) = kv.newest("c").expect("kept in key vault");
    assert!(!enabled, "disabled in key vault");
    assert!(sm_deleted("c"), "scheduled for deletion in secrets manager");
    let st = run(&["secrets", "status", "s", "-c", c], &e);
    assert!(st.stdout().contains("disabled"), "{}", st.stdout());

    // Back at the source: written again, usable again.
    bao_put(&bao, "c", json!({ "value": "c-2" }));
    let back = run(&["secrets", "sync", "s", "-c", c, "--output", "json"], &e);
    assert_eq!(back.code(), 0, "{}{}", back.stdout(), back.stderr());
    let (_, enabled, _) = kv.newest("c").expect("in key vault");
    assert!(enabled);
    assert_eq!(kv.values("c").last().map(String::as_str), Some("c-2"));
    assert!(!sm_deleted("c"), "restored in secrets manager");
    assert_eq!(
        sm_values(&moto, "eu-west-1", "c")
            .last()
            .map(String::as_str),
        Some("c-2")
    );
}

#[test]
fn a_source_that_goes_back_is_reported_never_rolled_back_and_a_remade_secret_is_copied() {
    let (bao1, bao2) = (Bao::start(), Bao::start());
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = bao_pair(dir.path(), &bao1, &bao2, "versions = 2\n");
    let c = s(&cfg);
    let e = bao_env();
    for v in ["a1", "a2", "a3"] {
        bao_put(&bao1, "x", json!({ "value": v }));
    }
    bao_put(&bao1, "y", json!({ "value": "b1" }));
    run(&["secrets", "sync", "s", "-c", c], &e).ok();
    assert_eq!(texts(&bao_versions(&bao2, "x")), ["a2", "a3"]);

    // The source's newest version is deleted (a compromised value withdrawn): the
    // destination is not rolled back to a2; the pass says so and exits 1.
    let r = http()
        .delete(format!("{}/v1/secret/data/x", bao1.addr()))
        .header("X-Vault-Token", Bao::TOKEN)
        .send()
        .expect("delete newest");
    assert!(r.status().is_success());
    let behind = run(&["secrets", "sync", "s", "-c", c, "--output", "json"], &e);
    assert_eq!(behind.code(), 1, "{}", behind.stdout());
    assert!(
        behind.stdout().contains("source_behind"),
        "{}",
        behind.stdout()
    );
    assert_eq!(
        texts(&bao_versions(&bao2, "x")),
        ["a2", "a3"],
        "not rolled back"
    );
    bao_put(&bao1, "x", json!({ "value": "a4" }));
    run(&["secrets", "sync", "s", "-c", c], &e).ok();
    assert_eq!(texts(&bao_versions(&bao2, "x")), ["a2", "a3", "a4"]);

    // A secret deleted whole and made again restarts its version numbers at 1: it is
    // still copied (its versions are told apart by their creation time).
    bao_delete_all(&bao1, "y");
    run(&["secrets", "sync", "s", "-c", c], &e).ok();
    bao_put(&bao1, "y", json!({ "value": "b2" }));
    let again = run(&["secrets", "sync", "s", "-c", c, "--output", "json"], &e);
    assert_eq!(again.code(), 0, "{}", again.stdout());
    assert_eq!(texts(&bao_versions(&bao2, "y")), ["b1", "b2"]);
}
