//! `georep serve` end to end: the daemon as a child process against local folders, two
//! Azurite instances and moto S3; kill -9 and restart under writes; the HTTP API,
//! webhooks and token; `validate`, `plan` and `status`.

use crate::common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use georep_testkit::{data, wait_until, Azurite, Moto, Serve};
use serde_json::{json, Value};

#[test]
fn local_regions_converge_under_writes_keep_deletes_and_stop_cleanly() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    for i in 0..40 {
        write(&a, &format!("old/{i:03}.bin"), &data::bytes(i, 3000));
    }
    // A long scan interval: after the first scan only notifications can be at work.
    let cfg = topology(
        dir.path(),
        &[("a", "region-a", "a"), ("b", "region-b", "b")],
        "name = \"p\"\nsource = \"a\"\ndestinations = [\"b\"]\nexclude = [\"**/*.tmp\"]\nscan_interval = \"1h\"\nrpo = \"1m\"\n",
        "",
    );
    let mut s = Serve::start(BIN, &cfg, &[]);
    // Writes while the first scan and its copies are running.
    for i in 0..150u64 {
        write(
            &a,
            &format!("new/{:02}/{i:03}.bin", i % 7),
            &data::bytes(100 + i, 500 + (i as usize) * 37),
        );
        if i % 10 == 0 {
            write(
                &a,
                &format!("old/{:03}.bin", i / 10),
                &data::bytes(1000 + i, 777),
            );
        }
    }
    write(&a, "skip/me.tmp", b"excluded");
    s.converge("p", Some(190));
    let mut want = tree(&a);
    want.remove("skip/me.tmp");
    assert!(
        wait_until(Duration::from_secs(30), || tree(&b) == want),
        "destination differs from source"
    );

    // Per-object status from the API and from the CLI (which reads the state directly).
    let o = s.get("/api/v1/policies/p/objects/new/03/003.bin");
    assert_eq!(o["destinations"][0]["status"], "complete", "{o}");
    assert!(o["destinations"][0]["replicated_at"].is_i64(), "{o}");
    let (code, out, err) = run(
        &[
            "status",
            "-c",
            cfg.to_str().expect("utf-8"),
            "--object",
            "old/001.bin",
            "--output",
            "json",
        ],
        &[],
    )
    .parts();
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v[0]["destinations"][0]["status"], "complete");
    let (code, out, err) = run(&["status", "-c", cfg.to_str().expect("utf-8")], &[]).parts();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("policy p") && out.contains("region-b"),
        "{out}"
    );

    // deletes = keep: a source delete is forgotten, never done at the destination.
    std::fs::remove_file(a.join("old/005.bin")).expect("rm");
    assert!(wait_until(Duration::from_secs(30), || {
        s.get("/api/v1/policies/p")["source_objects"] == 189
    }));
    assert!(
        b.join("old/005.bin").exists(),
        "keep mode deleted at the destination"
    );

    // The latency histogram saw every copy.
    let (code, metrics) = s.req(reqwest::Method::GET, "/metrics", None);
    assert_eq!(code, 200);
    let m = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        m.contains("georep_replication_latency_seconds_count{policy=\"p\",destination=\"b\"}"),
        "{m}"
    );
    assert!(
        m.contains("georep_replication_pending_objects{policy=\"p\",destination=\"b\"} 0"),
        "{m}"
    );

    assert_eq!(s.terminate(), 0, "SIGTERM must exit 0:\n{}", s.log_text());
}

#[test]
fn propagate_deletes_and_the_mass_delete_guard() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for i in 0..60 {
        write(&a, &format!("f/{i:03}"), &data::bytes(i, 100));
    }
    let cfg = topology(
        dir.path(),
        &[("a", "r1", "a"), ("b", "r2", "b")],
        "name = \"p\"\nsource = \"a\"\ndestinations = [\"b\"]\ndeletes = \"propagate\"\nmax_delete = \"20%\"\nscan_interval = \"1h\"\n",
        "",
    );
    let s = Serve::start(BIN, &cfg, &[]);
    s.converge("p", Some(60));
    // A few deletes propagate.
    for i in 0..3 {
        std::fs::remove_file(a.join(format!("f/{i:03}"))).expect("rm");
    }
    assert!(wait_until(Duration::from_secs(30), || !b
        .join("f/000")
        .exists()
        && !b.join("f/002").exists()));
    s.converge("p", Some(57));

    // Deleting most of the source trips the guard: the policy pauses, the destination
    // keeps (at least) what exceeds the allowance.
    for i in 3..50 {
        std::fs::remove_file(a.join(format!("f/{i:03}"))).expect("rm");
    }
    let mut st = Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            st = s.get("/api/v1/policies/p");
            st["paused"].is_string()
        }),
        "guard did not pause: {st:#}\n{}",
        s.log_text()
    );
    assert!(
        st["paused"]
            .as_str()
            .unwrap_or_default()
            .contains("mass-delete guard"),
        "{st}"
    );
    let kept = (3..50)
        .filter(|i| b.join(format!("f/{i:03}")).exists())
        .count();
    assert!(
        kept >= 47 - 10,
        "only {kept} of 47 kept: the guard let too much through"
    );
    let (code, _, _) = run(&["status", "-c", cfg.to_str().expect("utf-8")], &[]).parts();
    assert_eq!(code, 1, "status exits 1 while a policy is paused");

    // The operator confirms: the rest goes.
    let cfg_s = cfg.to_str().expect("utf-8");
    let (code, out, err) = run(&["resume", "p", "-c", cfg_s, "--api", &s.base], &[]).parts();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("p: resumed"), "{out}");
    assert!(
        wait_until(Duration::from_secs(60), || tree(&b) == tree(&a)),
        "deletes did not complete after resume:\n{}",
        s.log_text()
    );
    assert!(s.get("/api/v1/policies/p")["paused"].is_null());
    // Nothing is paused any more: refused as a conflict, exit 2, saying why.
    let (code, _, err) = run(&["resume", "p", "-c", cfg_s, "--api", &s.base], &[]).parts();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not paused") && err.contains("409"), "{err}");
    let (code, _, err) = run(&["resume", "nope", "-c", cfg_s, "--api", &s.base], &[]).parts();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no policy named 'nope'"), "{err}");
}

#[test]
fn since_skips_older_objects() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write(&a, "old.txt", b"old");
    let old = std::time::SystemTime::now() - Duration::from_secs(3 * 86400);
    std::fs::File::options()
        .write(true)
        .open(a.join("old.txt"))
        .and_then(|f| f.set_modified(old))
        .expect("set mtime");
    write(&a, "new.txt", b"new");
    let since = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let cfg = topology(
        dir.path(),
        &[("a", "r1", "a"), ("b", "r2", "b")],
        &format!("name = \"p\"\nsource = \"a\"\ndestinations = [\"b\"]\nsince = \"{since}\"\nscan_interval = \"1s\"\n"),
        "",
    );
    let s = Serve::start(BIN, &cfg, &[]);
    s.converge("p", Some(1));
    assert!(wait_until(Duration::from_secs(30), || b
        .join("new.txt")
        .exists()));
    // Several scans later the old object is still not copied.
    let scans = |v: &Value| v["last_scan"]["scans"].as_i64().unwrap_or(0);
    let copies = || {
        let m = s.req(reqwest::Method::GET, "/metrics", None).1;
        m.as_str()
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("georep_replicated_objects_total{"))
            .map(str::to_string)
    };
    let before = copies();
    let first = scans(&s.get("/api/v1/policies/p"));
    assert!(wait_until(Duration::from_secs(30), || scans(
        &s.get("/api/v1/policies/p")
    ) >= first + 2));
    assert!(
        !b.join("old.txt").exists(),
        "an object older than `since` was copied"
    );
    assert_eq!(
        copies(),
        before,
        "scans of an unchanged source transferred something"
    );
    // Touching it makes it a new change.
    write(&a, "old.txt", b"old, changed");
    assert!(wait_until(Duration::from_secs(30), || std::fs::read(
        b.join("old.txt")
    )
    .ok()
    .as_deref()
        == Some(b"old, changed".as_slice())));
}

fn event_grid(container: &str, blob: &str, kind: &str) -> Value {
    json!([{
        "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
        "subject": format!("/blobServices/default/containers/{container}/blobs/{blob}"),
        "eventType": kind,
        "eventTime": chrono::Utc::now().to_rfc3339(),
        "id": "831e1650-001e-001b-66ab-eeb76e069631",
        "data": {
            "api": "PutBlob",
            "contentType": "application/octet-stream",
            "contentLength": 524288,
            "blobType": "BlockBlob",
            "url": format!("https://devstoreaccount1.blob.core.windows.net/{container}/{blob}"),
        },
        "dataVersion": "",
        "metadataVersion": "1"
    }])
}

#[test]
fn azurite_regions_event_grid_webhook_token_and_api() {
    let (az_a, az_b) = (Azurite::start(), Azurite::start());
    az_a.create_container("src");
    az_b.create_container("dst");
    let dir = tempfile::tempdir().expect("tmp");
    let up = dir.path().join("upload");
    for i in 0..5 {
        write(&up, &format!("pre/{i}.bin"), &data::bytes(i, 10_000));
    }
    let mut env = az_a.env();
    env.push(("GEOREP_TEST_TOKEN".into(), "t0ps3cret".into()));
    let (code, _, err) = run(
        &["copy", up.to_str().expect("utf-8"), &az_a.url("src")],
        &env,
    )
    .parts();
    assert_eq!(code, 0, "{err}");
    let cfg = topology(
        dir.path(),
        &[
            ("qc", "qatar-central", &az_a.url("src")),
            ("we", "west-europe", &az_b.url("dst")),
        ],
        "name = \"photos\"\nsource = \"qc\"\ndestinations = [\"we\"]\nscan_interval = \"1h\"\n",
        "[server]\ntoken = \"${GEOREP_TEST_TOKEN}\"\n",
    );
    let s = Serve::start(BIN, &cfg, &env);
    s.converge("photos", Some(5));

    // The token: /healthz is open, everything else needs it.
    let anon = reqwest::blocking::Client::new();
    let r = anon
        .get(format!("{}/healthz", s.base))
        .send()
        .expect("healthz");
    assert_eq!(r.status().as_u16(), 200);
    for path in ["/api/v1/policies", "/metrics", "/api/v1/policies/photos"] {
        let r = anon.get(format!("{}{path}", s.base)).send().expect("get");
        assert_eq!(r.status().as_u16(), 401, "{path} without a token");
    }
    let r = anon
        .get(format!("{}/api/v1/policies", s.base))
        .bearer_auth("wrong")
        .send()
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    let (code, v) = s.req(reqwest::Method::GET, "/api/v1/policies/nope", None);
    assert_eq!(code, 404, "{v}");
    let list = s.get("/api/v1/policies");
    assert_eq!(list["policies"][0]["name"], "photos");

    // Event Grid subscription validation handshake.
    let v = s.post(
        "/api/v1/events/photos",
        &json!([{
            "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
            "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
            "subject": "",
            "data": { "validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6", "validationUrl": "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/x/validate?id=512d38b6" },
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": "2018-01-25T22:12:19.4556811Z",
            "metadataVersion": "1",
            "dataVersion": "1"
        }]),
    );
    assert_eq!(
        v["validationResponse"],
        "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
    );
    // CloudEvents OPTIONS handshake.
    let r = s
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v1/events/photos", s.base),
        )
        .bearer_auth("t0ps3cret")
        .header("WebHook-Request-Origin", "eventgrid.azure.net")
        .send()
        .expect("options");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()
            .get("webhook-allowed-origin")
            .and_then(|v| v.to_str().ok()),
        Some("eventgrid.azure.net")
    );

    // A blob written at the source, announced by Event Grid, is replicated at once
    // (the next scan is an hour away).
    write(&up, "live/new one.bin", &data::bytes(42, 300_000));
    std::fs::remove_dir_all(up.join("pre")).expect("rm");
    let (code, _, err) = run(
        &["copy", up.to_str().expect("utf-8"), &az_a.url("src")],
        &env,
    )
    .parts();
    assert_eq!(code, 0, "{err}");
    let v = s.post(
        "/api/v1/events/photos",
        &event_grid("src", "live/new one.bin", "Microsoft.Storage.BlobCreated"),
    );
    assert_eq!(v["queued"], 1, "{v}");
    let mut o = Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (_, v) = s.req(
                reqwest::Method::GET,
                "/api/v1/policies/photos/objects/live/new%20one.bin",
                None,
            );
            o = v;
            o["destinations"][0]["status"] == "complete"
        }),
        "not replicated: {o:#}"
    );
    let d = &o["destinations"][0];
    let took =
        d["replicated_at"].as_i64().unwrap_or(i64::MAX) - d["enqueued_at"].as_i64().unwrap_or(0);
    assert!(took <= 1000, "event to replica took {took} ms");
    let (code, out, err) = run(
        &["check", &az_a.url("src"), &az_b.url("dst"), "--checksum"],
        &env,
    )
    .parts();
    assert_eq!(code, 0, "{out}{err}");

    // An event for another container is not ours.
    let v = s.post(
        "/api/v1/events/photos",
        &event_grid("other", "x.bin", "Microsoft.Storage.BlobCreated"),
    );
    assert_eq!(
        (v["accepted"].clone(), v["outside"].clone()),
        (json!(0), json!(1))
    );

    // CloudEvents schema, single event.
    write(&up, "live/ce.bin", b"cloud events");
    let (code, _, err) = run(
        &["copy", up.to_str().expect("utf-8"), &az_a.url("src")],
        &env,
    )
    .parts();
    assert_eq!(code, 0, "{err}");
    let v = s.post("/api/v1/events/photos", &json!({
        "specversion": "1.0",
        "type": "Microsoft.Storage.BlobCreated",
        "source": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
        "id": "9aeb0fdf-c01e-0131-0922-9eb54906e209",
        "time": chrono::Utc::now().to_rfc3339(),
        "subject": "/blobServices/default/containers/src/blobs/live/ce.bin",
        "data": { "api": "PutBlob", "blobType": "BlockBlob", "contentLength": 12, "url": "https://devstoreaccount1.blob.core.windows.net/src/live/ce.bin" }
    }));
    assert_eq!(v["queued"], 1, "{v}");

    // Resync repairs a destination object removed behind georep's back.
    s.converge("photos", Some(7));
    let (code, _, err) = run(
        &[
            "sync",
            &az_b.url("dst/nothing-here"),
            &az_b.url("dst/pre"),
            "--delete",
            "--max-delete",
            "100%",
        ],
        &env,
    )
    .parts();
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(
        &[
            "resync",
            "photos",
            "-c",
            cfg.to_str().expect("utf-8"),
            "--api",
            &s.base,
            "--output",
            "json",
        ],
        &env,
    )
    .parts();
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["repaired"], 5, "{v}");
    s.converge("photos", Some(7));
    let (code, out, err) = run(&["check", &az_a.url("src"), &az_b.url("dst")], &env).parts();
    assert_eq!(code, 0, "{out}{err}");
    let m = s.req(reqwest::Method::GET, "/metrics", None).1;
    assert!(
        m.as_str()
            .unwrap_or_default()
            .contains("georep_source_changes_total{policy=\"photos\",via=\"webhook\"} 2"),
        "{m}"
    );
}

#[test]
fn s3_event_notification_replicates_to_a_local_region() {
    let moto = Moto::start();
    moto.create_bucket("src");
    let dir = tempfile::tempdir().expect("tmp");
    let up = dir.path().join("upload");
    write(&up, "in/a b+c.txt", b"spaces and plus");
    let env = moto.env();
    let cfg = topology(
        dir.path(),
        &[("s3", "us-east-1", "s3://src/in"), ("dr", "onprem", "dr")],
        "name = \"s\"\nsource = \"s3\"\ndestinations = [\"dr\"]\nscan_interval = \"1h\"\ndeletes = \"propagate\"\n",
        "",
    );
    let s = Serve::start(BIN, &cfg, &env);
    s.converge("s", Some(0));
    let (code, _, err) = run(&["copy", up.to_str().expect("utf-8"), "s3://src"], &env).parts();
    assert_eq!(code, 0, "{err}");
    let v = s.post("/api/v1/events/s", &json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": chrono::Utc::now().to_rfc3339(), "eventName": "ObjectCreated:Put",
        "s3": { "s3SchemaVersion": "1.0", "configurationId": "georep",
                "bucket": { "name": "src", "arn": "arn:aws:s3:::src" },
                "object": { "key": "in/a+b%2Bc.txt", "size": 15, "eTag": "x", "sequencer": "0A1B2C3D4E5F678901" } }
    }]}));
    assert_eq!(v["queued"], 1, "{v}");
    let f = dir.path().join("dr/a b+c.txt");
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read(&f)
            .ok()
            .as_deref()
            == Some(b"spaces and plus".as_slice())),
        "{}",
        s.log_text()
    );
    // Deleted at the source and announced: deleted at the destination (propagate).
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let (code, _, err) = run(
        &[
            "sync",
            empty.to_str().expect("utf-8"),
            "s3://src/in",
            "--delete",
            "--max-delete",
            "100%",
        ],
        &env,
    )
    .parts();
    assert_eq!(code, 0, "{err}");
    let v = s.post(
        "/api/v1/events/s",
        &json!({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": chrono::Utc::now().to_rfc3339(), "eventName": "ObjectRemoved:Delete",
            "s3": { "s3SchemaVersion": "1.0", "bucket": { "name": "src" },
                    "object": { "key": "in/a+b%2Bc.txt", "sequencer": "0A1B2C3D4E5F678902" } }
        }]}),
    );
    assert_eq!(v["queued"], 1, "{v}");
    assert!(
        wait_until(Duration::from_secs(20), || !f.exists()),
        "delete not propagated:\n{}",
        s.log_text()
    );
    let o = s.get("/api/v1/policies/s/objects/a%20b+c.txt");
    assert_eq!(
        (
            o["destinations"][0]["op"].clone(),
            o["destinations"][0]["status"].clone()
        ),
        (json!("delete"), json!("complete")),
        "{o}"
    );
}

#[test]
fn an_unreachable_region_breaches_the_rpo_visibly() {
    let az = Azurite::start();
    az.create_container("drsite");
    let dir = tempfile::tempdir().expect("tmp");
    let a = dir.path().join("a");
    write(&a, "first.txt", b"first");
    let cfg = topology(
        dir.path(),
        &[("a", "r1", "a"), ("az", "r2", &az.url("drsite"))],
        "name = \"p\"\nsource = \"a\"\ndestinations = [\"az\"]\nrpo = \"1s\"\nscan_interval = \"1h\"\n",
        "",
    );
    let env = az.env();
    let s = Serve::start(BIN, &cfg, &env);
    s.converge("p", Some(1));
    // The destination region goes away; a new change cannot be replicated.
    let port = az.port;
    drop(az);
    write(&a, "second.txt", b"second");
    let mut st = Value::Null;
    assert!(
        wait_until(Duration::from_secs(90), || {
            st = s.get("/api/v1/policies/p");
            st["rpo_breached"] == true && st["destinations"][0]["pending"] == 1
        }),
        "no RPO breach reported: {st:#}"
    );
    let mut o = Value::Null;
    assert!(
        wait_until(Duration::from_secs(120), || {
            o = s.get("/api/v1/policies/p/objects/second.txt");
            o["destinations"][0]["attempts"].as_u64().unwrap_or(0) >= 1
        }),
        "no failed attempt recorded: {o:#}"
    );
    let err = o["destinations"][0]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        err.contains(&port.to_string()),
        "error does not name the endpoint: {err}"
    );
    let m = s.req(reqwest::Method::GET, "/metrics", None).1;
    assert!(
        m.as_str()
            .unwrap_or_default()
            .contains("georep_replication_rpo_breached{policy=\"p\",destination=\"az\"} 1"),
        "{m}"
    );
    let (code, out, _) = run(&["status", "-c", cfg.to_str().expect("utf-8")], &env).parts();
    assert_eq!(
        code, 1,
        "status must fail while the RPO is breached:\n{out}"
    );
    assert!(out.contains("RPO BREACHED"), "{out}");
}

#[test]
fn kill_9_and_restart_under_continuous_writes_loses_nothing() {
    let az = Azurite::start();
    az.create_container("drsite");
    let dir = tempfile::tempdir().expect("tmp");
    let a = dir.path().join("a");
    std::fs::create_dir_all(&a).expect("mkdir");
    let cfg = topology(
        dir.path(),
        &[("a", "r1", "a"), ("b", "r2", "b"), ("az", "r3", &az.url("drsite"))],
        "name = \"p\"\nsource = \"a\"\ndestinations = [\"b\", \"az\"]\nscan_interval = \"2s\"\ntransfers = 4\n",
        "",
    );
    let env = az.env();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (a, stop) = (a.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // New files of up to 256 KiB, and rewrites of earlier ones, written in place
                // (not atomically), so the daemon also meets files mid-write.
                let name = if i % 4 == 3 {
                    format!("w/{:04}.bin", i / 2)
                } else {
                    format!("w/{i:04}.bin")
                };
                write(
                    &a,
                    &name,
                    &data::bytes(i, 1000 + (i as usize * 7919) % 250_000),
                );
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            i
        })
    };
    let mut s = Serve::start(BIN, &cfg, &env);
    for round in 0..5 {
        // Kill at different moments: mid-copy, mid-scan, while queueing.
        let before = s.get("/api/v1/policies/p")["destinations"][1]["complete"]
            .as_u64()
            .unwrap_or(0);
        wait_until(Duration::from_secs(30), || {
            s.get("/api/v1/policies/p")["destinations"][1]["complete"]
                .as_u64()
                .unwrap_or(0)
                > before + 5 + round * 3
        });
        s.kill9();
        s = Serve::start(BIN, &cfg, &env);
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer");
    assert!(written > 50, "writer wrote only {written} files");
    let n = data::files_under(&a).len() as u64;
    s.converge("p", Some(n));
    // Temp files of killed runs are cleared by the restarted daemon, never visible as keys.
    assert!(
        wait_until(Duration::from_secs(30), || !data::files_under(
            &dir.path().join("b")
        )
        .iter()
        .any(|p| p.contains(".georep-tmp-"))),
        "temp files of killed runs were left behind"
    );
    let (code, out, err) = run(
        &[
            "check",
            a.to_str().expect("utf-8"),
            dir.path().join("b").to_str().expect("utf-8"),
            "--checksum",
        ],
        &env,
    )
    .parts();
    assert_eq!(
        code,
        0,
        "local replica differs: {out}{err}\n{}",
        s.log_text()
    );
    let (code, out, err) = run(
        &[
            "check",
            a.to_str().expect("utf-8"),
            &az.url("drsite"),
            "--checksum",
        ],
        &env,
    )
    .parts();
    assert_eq!(
        code,
        0,
        "Azurite replica differs: {out}{err}\n{}",
        s.log_text()
    );
}

#[test]
fn validate_reports_every_error_and_plan_shows_changes() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"[regions.r1]
[regions.r2]
[stores.a]
region = "r1"
url = "/data/a"
[stores.b]
region = "r9"
url = "/data/b"
[stores.c]
region = "r2"
url = "ftp://nope"
[[policies]]
name = "p1"
source = "a"
destinations = ["a", "zz"]
rpo = "five minutes"
include = ["[oops"]
colour = "blue"
[[policies]]
name = "p2"
source = "b"
destinations = ["a"]
[[policies]]
name = "p3"
source = "a"
destinations = ["b"]
"#,
    )
    .expect("write");
    let (code, out, err) = run(&["validate", "-c", bad.to_str().expect("utf-8")], &[]).parts();
    assert_eq!(code, 2, "{out}{err}");
    for want in [
        "r9",
        "ftp://",
        "zz",
        "five minutes",
        "[oops",
        "colour",
        "cycle",
        "also the source",
        "both write into",
        "bad.toml:",
    ] {
        assert!(
            err.to_lowercase().contains(&want.to_lowercase()),
            "missing {want:?} in:\n{err}"
        );
    }
    let syntax = dir.path().join("syntax.toml");
    std::fs::write(&syntax, "[regions.r1]\n[stores.a\nregion = 1\n").expect("write");
    let (code, _, err) = run(&["validate", "-c", syntax.to_str().expect("utf-8")], &[]).parts();
    assert_eq!(code, 2);
    assert!(err.contains("syntax.toml:2:"), "{err}");
    let (code, _, err) = run(
        &[
            "validate",
            "-c",
            dir.path().join("missing.toml").to_str().expect("utf-8"),
        ],
        &[],
    )
    .parts();
    assert_eq!(code, 2);
    assert!(err.contains("missing.toml"), "{err}");

    // plan: everything new, then unchanged after a daemon ran, then a changed field.
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write(&a, "x", b"x");
    let cfg = topology(
        dir.path(),
        &[("a", "r1", "a"), ("b", "r2", "b")],
        "name = \"p\"\nsource = \"a\"\ndestinations = [\"b\"]\nrpo = \"5m\"\n",
        "",
    );
    let c = cfg.to_str().expect("utf-8");
    let (code, out, _) = run(&["validate", "-c", c], &[]).parts();
    assert_eq!(code, 0, "{out}");
    let (code, out, err) = run(&["plan", "-c", c], &[]).parts();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("policy p [added]") && out.contains("filesystem notifications"),
        "{out}"
    );
    assert!(
        !dir.path().join("state/georep.db").exists(),
        "plan must not create state"
    );
    let mut s = Serve::start(BIN, &cfg, &[]);
    s.converge("p", Some(1));
    assert_eq!(s.terminate(), 0);
    assert!(b.join("x").exists());
    let (_, out, _) = run(&["plan", "-c", c, "--output", "json"], &[]).parts();
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["policies"][0]["change"], "unchanged", "{v:#}");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .expect("read")
            .replace("rpo = \"5m\"", "rpo = \"1m\""),
    )
    .expect("write");
    let (_, out, _) = run(&["plan", "-c", c], &[]).parts();
    assert!(out.contains("[changed]") && out.contains("rpo"), "{out}");

    // One daemon per state file.
    let s = Serve::start(BIN, &cfg, &[]);
    let (code, _, err) = run(&["serve", "-c", c, "--listen", "127.0.0.1:0"], &[]).parts();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("another georep serve"), "{err}");
    // Resuming a policy that is not paused is a conflict, not a silent override.
    let (code, v) = s.req(
        reqwest::Method::POST,
        "/api/v1/policies/p/resume",
        Some(&json!({})),
    );
    assert_eq!(code, 409, "{v}");
    drop(s);

    // A destination added to the policy is filled with what already exists.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .expect("read")
            .replace("destinations = [\"b\"]", "destinations = [\"b\", \"c\"]")
            .replace(
                "[stores.b]",
                "[stores.c]\nregion = \"r2\"\nurl = \"c\"\n[stores.b]",
            ),
    )
    .expect("write");
    let s = Serve::start(BIN, &cfg, &[]);
    s.converge("p", Some(1));
    assert!(
        wait_until(Duration::from_secs(30), || dir.path().join("c/x").exists()),
        "new destination not backfilled:\n{}",
        s.log_text()
    );
}

#[test]
fn an_operator_pause_stops_copies_and_deletes_survives_a_restart_and_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for i in 0..5 {
        write(&a, &format!("f/{i}"), &data::bytes(i, 100));
    }
    let cfg = topology(
        dir.path(),
        &[("a", "r1", "a"), ("b", "r2", "b")],
        "name = \"p\"\nsource = \"a\"\ndestinations = [\"b\"]\ndeletes = \"propagate\"\nscan_interval = \"1s\"\n",
        "",
    );
    let cfg_s = cfg.to_str().expect("utf-8");
    let s = Serve::start(BIN, &cfg, &[]);
    s.converge("p", Some(5));
    let (code, out, err) = run(
        &[
            "pause", "p", "-c", cfg_s, "--api", &s.base, "--note", "CHG-42",
        ],
        &[],
    )
    .parts();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("paused by an operator") && out.contains("CHG-42"),
        "{out}"
    );
    // A change is recorded (it shows as pending) but neither copied nor deleted, even
    // after further full scans.
    write(&a, "f/new", b"new");
    std::fs::remove_file(a.join("f/0")).expect("rm");
    let pending = |v: &Value| v["destinations"][0]["pending"].as_u64().unwrap_or(0);
    let mut st = Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            st = s.get("/api/v1/policies/p");
            pending(&st) >= 2
        }),
        "changes not recorded while paused: {st:#}"
    );
    let scans = st["last_scan"]["scans"].as_i64().unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(30), || {
            st = s.get("/api/v1/policies/p");
            st["last_scan"]["scans"].as_i64().unwrap_or(0) >= scans + 2
        }),
        "no scan ran: {st:#}"
    );
    assert!(!b.join("f/new").exists() && b.join("f/0").exists());
    assert!(
        st["held"].as_str().is_some_and(|h| h.contains("CHG-42")),
        "{st:#}"
    );
    let (code, out, _) = run(&["status", "-c", cfg_s], &[]).parts();
    assert_eq!(code, 1, "status exits 1 while paused: {out}");
    assert!(out.contains("PAUSED"), "{out}");
    // The pause outlives a restart.
    drop(s);
    let s = Serve::start(BIN, &cfg, &[]);
    assert!(s.get("/api/v1/policies/p")["held"].is_string());
    assert!(!b.join("f/new").exists());
    let (code, out, err) = run(&["resume", "p", "-c", cfg_s, "--api", &s.base], &[]).parts();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("go on"), "{out}");
    assert!(
        wait_until(Duration::from_secs(30), || tree(&b) == tree(&a)),
        "not replicated after resume:\n{}",
        s.log_text()
    );
    assert!(s.get("/api/v1/policies/p")["held"].is_null());
}

/// A live reload: `plan --daemon` shows what would change, `georep reload` starts an
/// added policy without a restart, a broken file is refused with validate's message and
/// changes nothing, and SIGHUP applies a removal while the other policy keeps running.
#[test]
fn a_reload_applies_the_difference_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (a2, c) = (dir.path().join("a2"), dir.path().join("c"));
    write(&a, "p/1", b"one");
    write(&a2, "q/1", b"two");
    let stores = [
        ("a", "r1", "a"),
        ("a2", "r1", "a2"),
        ("b", "r2", "b"),
        ("c", "r2", "c"),
    ];
    let p = "name = \"p\"\nsource = \"a\"\ndestinations = [\"b\"]\nscan_interval = \"1s\"\n";
    let q = "[[policies]]\nname = \"q\"\nsource = \"a2\"\ndestinations = [\"c\"]\nscan_interval = \"1s\"\n";
    let cfg = topology(dir.path(), &stores, p, "");
    let cfg_s = cfg.to_str().expect("utf-8");
    let s = Serve::start(BIN, &cfg, &[]);
    s.converge("p", Some(1));
    assert_eq!(
        s.req(reqwest::Method::GET, "/api/v1/policies/q", None).0,
        404
    );

    // Add q: the plan shows it, the reload starts it, p is untouched.
    topology(dir.path(), &stores, &format!("{p}{q}"), "");
    let (code, out, err) = run(&["plan", "--daemon", "-c", cfg_s, "--api", &s.base], &[]).parts();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("+ policies q: would start"), "{out}");
    assert!(!out.contains("policies p"), "p is unchanged: {out}");
    assert_eq!(
        s.req(reqwest::Method::GET, "/api/v1/policies/q", None).0,
        404,
        "a plan applies nothing"
    );
    let (code, out, err) = run(&["reload", "-c", cfg_s, "--api", &s.base], &[]).parts();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("+ policies q: started"), "{out}");
    s.converge("q", Some(1));
    assert!(
        wait_until(Duration::from_secs(30), || tree(&c) == tree(&a2)),
        "q did not replicate"
    );
    let scans_p = s.get("/api/v1/policies/p")["last_scan"]["scans"]
        .as_i64()
        .unwrap_or(0);

    // A change restarts only the changed policy; its field is named.
    topology(dir.path(), &stores, &format!("{p}{q}transfers = 2\n"), "");
    let (code, out, err) = run(
        &["reload", "-c", cfg_s, "--api", &s.base, "--output", "json"],
        &[],
    )
    .parts();
    assert_eq!(code, 0, "{out}{err}");
    let r: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        r["changes"],
        json!([{"section": "policies", "name": "q", "action": "change", "fields": ["transfers"]}]),
        "{r:#}"
    );
    // p kept running through both reloads (its scan count only grew).
    assert!(
        s.get("/api/v1/policies/p")["last_scan"]["scans"]
            .as_i64()
            .unwrap_or(0)
            >= scans_p
    );

    // A broken file is refused with validate's message; everything keeps running.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .expect("read")
            .replace("destinations = [\"c\"]", "destinations = [\"nowhere\"]"),
    )
    .expect("write");
    let (vcode, vout, verr) = run(&["validate", "-c", cfg_s], &[]).parts();
    assert_eq!(vcode, 2, "{vout}{verr}");
    let first = verr.lines().next().expect("a validate message").to_string();
    let (code, out, err) = run(&["reload", "-c", cfg_s, "--api", &s.base], &[]).parts();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&first) && err.contains("keeps running"),
        "validate says {first:?}; reload said {err}"
    );
    // The daemon itself refuses it the same way (SIGHUP and the API take this path).
    let (code, body) = s.req(reqwest::Method::POST, "/api/v1/reload", Some(&json!({})));
    assert_eq!(code, 400, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&first) && msg.contains("keeps running"),
        "{msg}"
    );
    write(&a2, "q/2", b"still replicating");
    assert!(
        wait_until(Duration::from_secs(30), || tree(&c) == tree(&a2)),
        "q stopped after a refused reload"
    );

    // SIGHUP: p removed from the file is stopped; q goes on; p's state is kept.
    topology(
        dir.path(),
        &stores,
        &q.replacen("[[policies]]\n", "", 1),
        "",
    );
    s.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(30), || s
            .req(reqwest::Method::GET, "/api/v1/policies/p", None)
            .0
            == 404),
        "SIGHUP did not remove p:\n{}",
        s.log_text()
    );
    write(&a, "p/2", b"not replicated any more");
    write(&a2, "q/3", b"replicated");
    assert!(
        wait_until(Duration::from_secs(30), || tree(&c) == tree(&a2)),
        "q stopped after SIGHUP"
    );
    assert!(!b.join("p/2").exists(), "a removed policy still replicates");
    assert!(s.log_text().contains("reload applied"), "{}", s.log_text());

    // A change that cannot be applied (an Azure store without credentials in the
    // daemon's environment) leaves q running as it was, and says so.
    let q_to_z = q
        .replacen("[[policies]]\n", "", 1)
        .replace("destinations = [\"c\"]", "destinations = [\"z\"]");
    let mut with_z = stores.to_vec();
    with_z.push(("z", "r2", "az://dr-container"));
    topology(dir.path(), &with_z, &q_to_z, "");
    let (code, out, err) = run(&["reload", "-c", cfg_s, "--api", &s.base], &[]).parts();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("! policies q: FAILED")
            && out.contains("keeps running with its previous settings"),
        "{out}"
    );
    write(&a2, "q/4", b"still to c");
    assert!(
        wait_until(Duration::from_secs(30), || tree(&c) == tree(&a2)),
        "q stopped after a change that could not be applied"
    );
    assert_eq!(s.policy("q").destinations[0].store.store, "c");
    // Still not running as written: the next plan shows the change again.
    let (code, out, err) = run(&["plan", "--daemon", "-c", cfg_s, "--api", &s.base], &[]).parts();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("~ policies q: would restart (destinations, stores)"),
        "{out}"
    );
}
