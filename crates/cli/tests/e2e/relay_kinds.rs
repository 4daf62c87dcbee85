//! Relays for logs and the other target kinds, end to end through the daemon. Logs come
//! in by the Azure Monitor Logs Ingestion API, Loki push and Elasticsearch bulk, and go
//! to stand-ins for those three (the testkit's receivers: no such server can be
//! installed here) and to gzip NDJSON archives in Azurite; events go to EventBridge
//! (moto, SigV4, delivered on by a rule to an SQS queue), NATS JetStream (a real
//! `nats-server`, killed and restarted) and archives in S3 (moto).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

use georep_api::RelayStatus;
use georep_testkit::{free_port, wait_until, Api, Azurite, Moto, Nats, Receiver, Serve};
use serde_json::{json, Value};

use crate::common::*;

const KEY: &str = "relay-publisher-key-0123";

fn relay(d: &Serve, name: &str) -> RelayStatus {
    d.typed(&format!("/api/v1/relays/{name}"))
}

fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut r = reqwest::blocking::Client::new().post(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.body(body).send().expect("post");
    let (status, h) = (resp.status().as_u16(), resp.headers().clone());
    (status, h, resp.text().unwrap_or_default())
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b).expect("gzip");
    gz.finish().expect("gzip")
}

/// Every line of every `.ndjson.gz` object in `store` (copied down with georep).
fn archived_lines(store: &str, env: &[(String, String)]) -> Vec<Value> {
    let local = tempfile::tempdir().expect("tmp");
    run(&["copy", store, s(local.path())], env).ok();
    let mut out = Vec::new();
    let mut files = Vec::new();
    let mut dirs = vec![local.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    for path in files {
        if path.to_string_lossy().ends_with(".ndjson.gz") {
            let packed = std::fs::read(&path).expect("read");
            let mut text = String::new();
            flate2::read::GzDecoder::new(&packed[..])
                .read_to_string(&mut text)
                .expect("gunzip");
            out.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line")),
            );
        }
    }
    out
}

fn distinct(v: Vec<String>) -> BTreeSet<String> {
    v.into_iter().collect()
}

#[test]
fn log_relays_take_logs_ingestion_loki_and_bulk_and_deliver_to_each_kind_and_archives() {
    let dir = tempfile::tempdir().expect("tmp");
    let law = Receiver::speaking(Api::Logs, "law-token-0123");
    let loki = Receiver::speaking(Api::Loki, "");
    let es = Receiver::speaking(Api::Elasticsearch, "es-api-key-0123");
    let azurite = Azurite::start();
    azurite.create_container("archive");
    let archive = azurite.url("archive/logs");
    let (p_mon, p_loki, p_es) = (free_port(), free_port(), free_port());
    let target = |name: &str, r: &Receiver, kind: &str, key: &str| {
        format!("{{ name = \"{name}\", region = \"we\", kind = \"{kind}\", url = \"{}\"{key}, timeout = \"2s\" }}", r.url())
    };
    let cfg = TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .region("qc")
        .region("we")
        .store("archive", "we", &archive)
        .raw(&format!(
            "[[relays]]\nname = \"monitor-in\"\nlisten = \"127.0.0.1:{p_mon}\"\naccept = \"logs\"\nkey = \"${{RELAY_KEY}}\"\nmode = \"replicate\"\ntargets = [\n  {},\n  {},\n  {{ name = \"keep\", region = \"we\", kind = \"archive\", store = \"archive\" }},\n]\n",
            target("loki", &loki, "loki", ""),
            target("es", &es, "elasticsearch", ", key = \"${ES_KEY}\""),
        ))
        .raw(&format!(
            "[[relays]]\nname = \"loki-in\"\nlisten = \"127.0.0.1:{p_loki}\"\naccept = \"loki\"\nkey = \"${{RELAY_KEY}}\"\nmode = \"failover\"\nfailover_after = 2\nfailback_after = \"1h\"\nprobe_interval = \"200ms\"\ntargets = [\n  {},\n  {},\n]\n",
            target("law", &law, "logs", ", key = \"${LAW_TOKEN}\""),
            target("es", &es, "elasticsearch", ", key = \"${ES_KEY}\""),
        ))
        .raw(&format!(
            "[[relays]]\nname = \"es-in\"\nlisten = \"127.0.0.1:{p_es}\"\naccept = \"elasticsearch\"\nkey = \"${{RELAY_KEY}}\"\nmode = \"replicate\"\ntargets = [\n  {},\n  {},\n]\n",
            // No key: georep gets Microsoft Entra tokens itself.
            target("law", &law, "logs", ""),
            target("loki", &loki, "loki", ""),
        ))
        .write(dir.path());
    let mut env = vec![
        ("RELAY_KEY".to_string(), KEY.to_string()),
        ("LAW_TOKEN".into(), "law-token-0123".into()),
        ("ES_KEY".into(), "es-api-key-0123".into()),
        ("AZURE_TENANT_ID".into(), "tenant-1".into()),
        ("AZURE_CLIENT_ID".into(), "georep-app".into()),
        ("AZURE_CLIENT_SECRET".into(), "app-secret-0123".into()),
        ("AZURE_AUTHORITY_HOST".into(), law.url_base()),
    ];
    law.issue_tokens("georep-app", "app-secret-0123");
    env.extend(azurite.env());
    let d = Serve::start(BIN, &cfg, &env);
    let bearer = format!("Bearer {KEY}");

    // Logs Ingestion in: 300 records, gzip as the Azure SDKs send them; one refused
    // by Elasticsearch as bad data goes to the dead letters.
    es.refuse_ids(&["m6"]);
    let mon =
        |path: &str| format!("http://127.0.0.1:{p_mon}/dataCollectionRules/dcr-a/streams/{path}");
    let records: Vec<Value> = (0..300)
        .map(|i| json!({"TimeGenerated": "2026-12-02T10:00:00Z", "id": format!("m{i}"), "Msg": format!("record {i}")}))
        .collect();
    let body = serde_json::to_vec(&records).expect("json");
    assert_eq!(post(&mon("Custom-App_CL"), &[], body.clone()).0, 401);
    assert_eq!(
        post(
            &mon("Custom-App_CL"),
            &[("authorization", &bearer)],
            b"{}".to_vec()
        )
        .0,
        400
    );
    for chunk in records.chunks(100) {
        let (status, _, text) = post(
            &mon("Custom-App_CL"),
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            gzip(&serde_json::to_vec(chunk).expect("json")),
        );
        assert_eq!(status, 204, "{text}");
    }
    let want: BTreeSet<String> = (0..300).map(|i| format!("m{i}")).collect();
    let lines_with = |r: &Receiver, label: &str| -> BTreeSet<String> {
        r.tagged()
            .into_iter()
            .filter(|(tag, _)| tag.contains(label))
            .filter_map(|(_, v)| {
                let line: Value = serde_json::from_str(v[1].as_str()?).ok()?;
                line["id"].as_str().map(str::to_string)
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || lines_with(
            &loki,
            "dcr-a/Custom-App_CL"
        ) == want),
        "loki: {:?}",
        relay(&d, "monitor-in")
    );
    let docs = |r: &Receiver, index: &str| -> BTreeSet<String> {
        r.tagged()
            .into_iter()
            .filter(|(tag, _)| tag == index)
            .filter_map(|(_, v)| v["id"].as_str().map(str::to_string))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || docs(&es, "logs-georep").len()
            == 299),
        "es: {:?}",
        relay(&d, "monitor-in")
    );
    assert!(
        !docs(&es, "logs-georep").contains("m6"),
        "the refused record (seq 7) is not stored"
    );
    let tagged = es.tagged();
    assert_eq!(tagged[0].1["@timestamp"], "2026-12-02T10:00:00Z");
    let s = relay(&d, "monitor-in");
    assert_eq!(s.dead_letters, 1, "{s:?}");
    assert!(
        s.recent_dead_letters[0]
            .reason
            .contains("mapper_parsing_exception"),
        "{s:?}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            let got: BTreeSet<String> = archived_lines(&archive, &azurite.env())
                .iter()
                .filter_map(|l| l["id"].as_str().map(str::to_string))
                .collect();
            got == want
        }),
        "archive: {:?}",
        relay(&d, "monitor-in")
    );

    // Loki push in (JSON, Basic auth with the key as the password): two streams to
    // the Logs Ingestion API; it goes down, the relay fails over to Elasticsearch.
    let basic = format!(
        "Basic {}",
        base64_encode(format!("promtail:{KEY}").as_bytes())
    );
    let push = |from: usize, n: usize| {
        let values = |job: &str| -> Vec<Value> {
            (from..from + n)
                .filter(|i| (i % 2 == 0) == (job == "api"))
                .map(|i| json!([format!("17646696000000000{i:02}"), format!("line {i}")]))
                .collect()
        };
        json!({"streams": [
            {"stream": {"job": "api", "env": "prod"}, "values": values("api")},
            {"stream": {"job": "web", "env": "prod"}, "values": values("web")},
        ]})
    };
    let loki_url = format!("http://127.0.0.1:{p_loki}/loki/api/v1/push");
    let (status, _, text) = post(
        &loki_url,
        &[
            ("authorization", &basic),
            ("content-type", "application/json"),
        ],
        push(0, 40).to_string().into_bytes(),
    );
    assert_eq!(status, 204, "{text}");
    assert!(wait_until(Duration::from_secs(30), || {
        law.tagged()
            .iter()
            .filter(|(tag, _)| tag == "dcr-test/Custom-Georep_CL")
            .count()
            >= 40
    }));
    let rec = law
        .events()
        .into_iter()
        .find(|r| r["RawData"] == "line 0")
        .expect("line 0 at the Logs Ingestion API");
    assert_eq!(rec["Labels"], json!({"env": "prod", "job": "api"}));
    assert_eq!(rec["TimeGenerated"], "2025-12-02T10:00:00Z");
    law.down();
    assert_eq!(
        post(
            &loki_url,
            &[("authorization", &basic)],
            push(40, 40).to_string().into_bytes()
        )
        .0,
        204
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            es.tagged()
                .iter()
                .filter(|(_, v)| v["labels"]["env"] == "prod")
                .count()
                >= 40
        }),
        "{:?}",
        relay(&d, "loki-in")
    );
    let s = relay(&d, "loki-in");
    assert_eq!(s.current_target.as_deref(), Some("es"));
    assert!(s.failovers >= 1);
    let at_es: BTreeSet<String> = es
        .events()
        .iter()
        .filter_map(|v| v["message"].as_str().map(str::to_string))
        .collect();
    for i in 40..80 {
        assert!(at_es.contains(&format!("line {i}")), "line {i} lost");
    }
    law.up();

    // Elasticsearch bulk in (ApiKey): the client's version check, then documents with
    // and without ids, to the Logs Ingestion API and Loki.
    let apikey = format!("ApiKey {KEY}");
    let info = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{p_es}/"))
        .header("authorization", &apikey)
        .send()
        .expect("GET /");
    assert_eq!(
        info.headers()
            .get("x-elastic-product")
            .and_then(|v| v.to_str().ok()),
        Some("Elasticsearch")
    );
    let mut nd = String::new();
    for i in 0..50 {
        if i % 2 == 0 {
            nd.push_str(&format!("{{\"create\":{{\"_id\":\"d{i}\"}}}}\n"));
        } else {
            nd.push_str("{\"index\":{}}\n");
        }
        nd.push_str(&format!(
            "{{\"@timestamp\":\"2026-12-02T11:00:00Z\",\"id\":\"d{i}\",\"message\":\"doc {i}\"}}\n"
        ));
    }
    let (status, headers, text) = post(
        &format!("http://127.0.0.1:{p_es}/app/_bulk"),
        &[
            ("authorization", &apikey),
            ("content-type", "application/x-ndjson"),
        ],
        nd.into_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    assert!(headers.get("x-elastic-product").is_some());
    let answer: Value = serde_json::from_str(&text).expect("bulk answer");
    assert_eq!(answer["errors"], false);
    assert_eq!(answer["items"].as_array().map(Vec::len), Some(50));
    assert_eq!(answer["items"][0]["create"]["_id"], "d0");
    let want: BTreeSet<String> = (0..50).map(|i| format!("d{i}")).collect();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let at_law: BTreeSet<String> = law
                .events()
                .iter()
                .filter(|r| r["TimeGenerated"] == "2026-12-02T11:00:00Z")
                .filter_map(|r| r["id"].as_str().map(str::to_string))
                .collect();
            at_law == want && lines_with(&loki, "\"index\":\"app\"") == want
        }),
        "{:?}",
        relay(&d, "es-in")
    );
    // The Entra token is revoked: the target answers 401, the relay fetches a new
    // one, and the documents still arrive.
    let issued = law.tokens_issued();
    assert!(issued >= 1);
    law.expire_tokens();
    let mut nd = String::new();
    for i in 50..60 {
        nd.push_str(&format!("{{\"create\":{{\"_id\":\"d{i}\"}}}}\n{{\"@timestamp\":\"2026-12-02T11:00:00Z\",\"id\":\"d{i}\"}}\n"));
    }
    let (status, _, text) = post(
        &format!("http://127.0.0.1:{p_es}/app/_bulk"),
        &[("authorization", &apikey)],
        nd.into_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    assert!(
        wait_until(Duration::from_secs(30), || law
            .events()
            .iter()
            .any(|r| r["id"] == "d59")),
        "{:?}",
        relay(&d, "es-in")
    );
    assert!(law.tokens_issued() > issued);
    let all = format!(
        "{} {}",
        d.log_text(),
        serde_json::to_string(&relay(&d, "es-in")).expect("json")
    );
    for secret in [
        KEY,
        "law-token-0123",
        "es-api-key-0123",
        "app-secret-0123",
        "entra-token-",
    ] {
        assert!(!all.contains(secret), "{secret} shown");
    }
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn an_event_relay_delivers_to_eventbridge_nats_jetstream_and_an_s3_archive_each_at_its_own_pace() {
    let dir = tempfile::tempdir().expect("tmp");
    let moto = Moto::start();
    moto.create_bucket("events-archive");
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    let hook = Receiver::speaking(Api::Webhook, "");
    // EventBridge: a bus, and a rule sending everything on it to an SQS queue.
    let (st, q) = moto.aws_json(
        "sqs",
        "AmazonSQS.CreateQueue",
        &json!({"QueueName": "orders-q"}),
    );
    assert_eq!(st, 200, "{q}");
    let queue_url = q["QueueUrl"].as_str().expect("queue url").to_string();
    let (st, a) = moto.aws_json(
        "sqs",
        "AmazonSQS.GetQueueAttributes",
        &json!({"QueueUrl": queue_url, "AttributeNames": ["QueueArn"]}),
    );
    assert_eq!(st, 200, "{a}");
    let arn = a["Attributes"]["QueueArn"]
        .as_str()
        .expect("arn")
        .to_string();
    assert_eq!(
        moto.aws_json(
            "events",
            "AWSEvents.CreateEventBus",
            &json!({"Name": "orders"})
        )
        .0,
        200
    );
    assert_eq!(
        moto.aws_json(
            "events",
            "AWSEvents.PutRule",
            &json!({"Name": "all", "EventBusName": "orders", "EventPattern": "{\"source\":[\"georep.orders\"]}"}),
        )
        .0,
        200
    );
    assert_eq!(
        moto.aws_json(
            "events",
            "AWSEvents.PutTargets",
            &json!({"Rule": "all", "EventBusName": "orders", "Targets": [{"Id": "q", "Arn": arn}]}),
        )
        .0,
        200
    );

    let port = free_port();
    let cfg = TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .region("qc")
        .region("we")
        .store("archive", "we", "s3://events-archive/relay")
        .raw(&format!(
            "[[relays]]\nname = \"orders\"\nlisten = \"127.0.0.1:{port}\"\naccept = \"eventgrid\"\nkey = \"${{RELAY_KEY}}\"\nmode = \"replicate\"\ntargets = [\n  {{ name = \"eb\", region = \"qc\", kind = \"eventbridge\", url = \"{}\", aws_region = \"us-east-1\", bus = \"orders\", timeout = \"5s\" }},\n  {{ name = \"nats\", region = \"we\", kind = \"nats\", url = \"{}\", subject = \"orders.created\", timeout = \"2s\" }},\n  {{ name = \"keep\", region = \"we\", kind = \"archive\", store = \"archive\" }},\n  {{ name = \"hook\", region = \"we\", kind = \"webhook\", cloudevents = \"binary\", url = \"{}\" }},\n]\n",
            moto.endpoint(),
            nats.url(),
            hook.url()
        ))
        .write(dir.path());
    let mut env = vec![("RELAY_KEY".to_string(), KEY.to_string())];
    env.extend(moto.env());
    let d = Serve::start(BIN, &cfg, &env);
    let publish = |from: usize, n: usize| {
        let events: Vec<Value> = (from..from + n)
            .map(|i| json!({"id": format!("e{i}"), "subject": format!("orders/{}", i % 5), "eventType": "Orders.Created", "eventTime": "2026-12-02T10:00:00Z", "data": {"n": i}, "dataVersion": "1"}))
            .collect();
        let (status, _, text) = post(
            &format!("http://127.0.0.1:{port}/api/events"),
            &[("aeg-sas-key", KEY), ("content-type", "application/json")],
            serde_json::to_vec(&events).expect("json"),
        );
        assert_eq!(status, 200, "{text}");
    };
    publish(0, 100);
    // NATS goes away (kill -9) while 100 more come: EventBridge and the archive are not
    // held back; NATS catches up once it is back, each event stored once.
    nats.down();
    publish(100, 100);
    let in_sqs = std::cell::RefCell::new(BTreeSet::new());
    let sqs_ids = || {
        loop {
            let (_, m) = moto.aws_json(
                "sqs",
                "AmazonSQS.ReceiveMessage",
                &json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10}),
            );
            let msgs = m["Messages"].as_array().cloned().unwrap_or_default();
            if msgs.is_empty() {
                break;
            }
            for msg in msgs {
                let body: Value =
                    serde_json::from_str(msg["Body"].as_str().unwrap_or("{}")).unwrap_or_default();
                assert_eq!(body["detail-type"], "Orders.Created", "{body}");
                assert_eq!(body["source"], "georep.orders", "{body}");
                if let Some(id) = body["detail"]["id"].as_str() {
                    in_sqs.borrow_mut().insert(id.to_string());
                }
                moto.aws_json(
                    "sqs",
                    "AmazonSQS.DeleteMessage",
                    &json!({"QueueUrl": queue_url, "ReceiptHandle": msg["ReceiptHandle"]}),
                );
            }
        }
        in_sqs.borrow().len()
    };
    assert!(
        wait_until(Duration::from_secs(60), || sqs_ids() == 200),
        "eventbridge: {} of 200; {:?}",
        in_sqs.borrow().len(),
        relay(&d, "orders")
    );
    let want: BTreeSet<String> = (0..200).map(|i| format!("e{i}")).collect();
    assert_eq!(*in_sqs.borrow(), want);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let ids: BTreeSet<String> = archived_lines("s3://events-archive/relay", &moto.env())
                .iter()
                .filter_map(|l| l["id"].as_str().map(str::to_string))
                .collect();
            ids == want
        }),
        "{:?}",
        relay(&d, "orders")
    );
    // CloudEvents binary mode: one request per event, Event Grid fields as attributes.
    assert!(
        wait_until(Duration::from_secs(30), || distinct(hook.ids()) == want),
        "{:?}",
        relay(&d, "orders")
    );
    let first = hook.events()[0].clone();
    assert_eq!(
        (first["type"].as_str(), first["subject"].as_str()),
        (Some("Orders.Created"), Some("orders/0"))
    );
    assert_eq!(first["data"], json!({"n": 0}));
    let s = relay(&d, "orders");
    let n = s.targets.iter().find(|t| t.name == "nats").expect("nats");
    assert!(n.pending > 0 && n.last_error.is_some(), "{s:?}");
    nats.up();
    assert!(
        wait_until(Duration::from_secs(60), || {
            relay(&d, "orders")
                .targets
                .iter()
                .find(|t| t.name == "nats")
                .is_some_and(|t| t.pending == 0)
        }),
        "{:?}",
        relay(&d, "orders")
    );
    let msgs = nats.messages("ORDERS");
    let ids: Vec<String> = msgs.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(distinct(ids.clone()), want);
    assert_eq!(ids.len(), 200, "JetStream dropped redelivered ids");
    let first: Value = serde_json::from_slice(&msgs[0].1).expect("payload");
    assert_eq!(first["id"], "e0");
    // In order: events of one subject keep their order.
    let order: Vec<usize> = ids
        .iter()
        .filter_map(|i| i.trim_start_matches('e').parse().ok())
        .filter(|i| i % 5 == 0)
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
}

#[test]
fn a_relay_serves_https_with_its_certificate_and_never_plaintext_off_loopback() {
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, _key) = self_signed(dir.path(), "relay");
    let topic = Receiver::start("topic-key-qc");
    let relay_toml = |listen: &str, tls: &str| {
        format!(
            "[[relays]]\nname = \"orders\"\nlisten = \"{listen}\"\naccept = \"eventgrid\"\nkey = \"${{RELAY_KEY}}\"\nmode = \"replicate\"\n{tls}targets = [{{ name = \"qc\", region = \"qc\", kind = \"eventgrid\", url = \"{}\", key = \"${{EG_QC}}\" }}]\n",
            topic.url()
        )
    };
    let env = vec![
        ("RELAY_KEY".to_string(), KEY.to_string()),
        ("EG_QC".into(), "topic-key-qc".into()),
    ];
    // Off loopback without TLS: refused by validation, with the fix.
    let open = dir.path().join("open");
    std::fs::create_dir_all(&open).expect("mkdir");
    let cfg = TopologyFile::new()
        .region("qc")
        .raw(&relay_toml("0.0.0.0:7999", ""))
        .write(&open);
    let out = run(&["validate", "-c", s(&cfg)], &env);
    assert_eq!(out.code(), 2, "{}", out.stderr());
    assert!(
        out.stderr().contains("is not a loopback address") && out.stderr().contains("tls_cert"),
        "{}",
        out.stderr()
    );

    let port = free_port();
    let cfg = TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .region("qc")
        .raw(&relay_toml(
            &format!("127.0.0.1:{port}"),
            "tls_cert = \"relay.crt\"\ntls_key = \"relay.key\"\n",
        ))
        .write(dir.path());
    let d = Serve::start(BIN, &cfg, &env);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).expect("cert")).expect("pem");
    let https = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let body = json!([{"id": "t1", "subject": "s", "eventType": "t", "eventTime": "2026-12-02T10:00:00Z", "data": {}}]);
    let r = https
        .post(format!("https://localhost:{port}/api/events"))
        .header("aeg-sas-key", KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .expect("publish over https");
    assert_eq!(r.status().as_u16(), 200);
    assert!(wait_until(Duration::from_secs(20), || topic.ids() == ["t1"]));
    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/events"))
        .header("aeg-sas-key", KEY)
        .body(body.to_string())
        .timeout(Duration::from_secs(5))
        .send();
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));
    drop(d);
}

#[test]
fn a_target_refusing_every_record_holds_its_stream_a_few_rounds_then_dead_letters_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let loki = Receiver::speaking(Api::Loki, "");
    let port = free_port();
    let cfg = TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .region("we")
        .raw(&format!(
            "[[relays]]\nname = \"stuck\"\nlisten = \"127.0.0.1:{port}\"\naccept = \"loki\"\nkey = \"${{RELAY_KEY}}\"\nmode = \"replicate\"\ntargets = [{{ name = \"loki\", region = \"we\", kind = \"loki\", url = \"{}\", timeout = \"2s\" }}]\n",
            loki.url()
        ))
        .write(dir.path());
    let env = vec![("RELAY_KEY".to_string(), KEY.to_string())];
    let d = Serve::start(BIN, &cfg, &env);
    // Records Loki refuses whole (too old, say): 400 for every push.
    loki.fail_with(Some(400));
    let push = json!({"streams": [{"stream": {"job": "old"}, "values": [["1", "a"], ["2", "b"], ["3", "c"]]}]});
    let (status, _, text) = post(
        &format!("http://127.0.0.1:{port}/loki/api/v1/push"),
        &[("authorization", &format!("Bearer {KEY}"))],
        push.to_string().into_bytes(),
    );
    assert_eq!(status, 204, "{text}");
    assert!(
        wait_until(Duration::from_secs(60), || relay(&d, "stuck").dead_letters
            == 3),
        "{:?}",
        relay(&d, "stuck")
    );
    let st = relay(&d, "stuck");
    assert_eq!(st.targets[0].pending, 0, "{st:?}");
    assert!(
        st.recent_dead_letters[0]
            .reason
            .contains("refused 5 times in a row"),
        "{st:?}"
    );
    // Fixed, replayed: delivered, with their labels (the partition is kept).
    loki.fail_with(None);
    run(
        &["relay", "replay", "stuck", "-c", s(&cfg), "--api", &d.base],
        &env,
    )
    .ok();
    assert!(
        wait_until(Duration::from_secs(30), || loki.ids().len() == 3),
        "{:?}",
        relay(&d, "stuck")
    );
    assert!(loki
        .tagged()
        .iter()
        .all(|(labels, _)| labels.contains("\"job\":\"old\"")));
}
