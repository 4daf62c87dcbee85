//! Relays end to end, through the daemon: publishers post Event Grid events to a relay,
//! which delivers them to a stand-in Event Grid topic per region (the testkit's
//! `EventGridTopic`: no Event Grid server can be installed here). Covered: keys and bad
//! bodies refused; failover when the primary topic goes down and failback once it is
//! back, with no event lost and ids kept; kill -9 with thousands of accepted,
//! undelivered events; a refused event to the dead letters and replayed; `replicate`
//! mode with one target down; a full outbox answering 503 with Retry-After.

use std::collections::BTreeSet;
use std::time::Duration;

use georep_api::RelayStatus;
use georep_testkit::{free_port, wait_until, EventGridTopic, Serve};
use serde_json::json;

use crate::common::*;

const KEY: &str = "relay-publisher-key-0123";

fn env() -> Vec<(String, String)> {
    vec![
        ("RELAY_KEY".into(), KEY.into()),
        ("EG_QC".into(), "topic-key-qc".into()),
        ("EG_WE".into(), "topic-key-we".into()),
    ]
}

fn events(from: usize, n: usize) -> serde_json::Value {
    json!((from..from + n)
        .map(|i| json!({
            "id": format!("e{i}"),
            "subject": format!("orders/{}", i % 7),
            "eventType": "Orders.Created",
            "eventTime": "2026-12-02T10:00:00Z",
            "data": {"n": i},
            "dataVersion": "1"
        }))
        .collect::<Vec<_>>())
}

fn publish(port: u16, key: &str, body: &serde_json::Value) -> (u16, Option<String>) {
    let r = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/events"))
        .header("aeg-sas-key", key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .expect("publish");
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (r.status().as_u16(), retry)
}

/// A raw publish: its status.
fn post(port: u16, headers: &[(&str, &str)], content_type: &str, body: &str) -> u16 {
    let mut r = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/events"))
        .header("content-type", content_type);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(body.to_string())
        .send()
        .expect("publish")
        .status()
        .as_u16()
}

/// The ids in the order `topic` first received them.
fn first_seen(topic: &EventGridTopic) -> Vec<String> {
    let mut seen = BTreeSet::new();
    topic
        .ids()
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .collect()
}

fn relay(d: &Serve, name: &str) -> RelayStatus {
    d.typed(&format!("/api/v1/relays/{name}"))
}

fn ids_in_order(n: std::ops::Range<usize>) -> Vec<String> {
    n.map(|i| format!("e{i}")).collect()
}

fn ids(n: std::ops::Range<usize>) -> BTreeSet<String> {
    n.map(|i| format!("e{i}")).collect()
}

fn has_all(topic: &EventGridTopic, want: &BTreeSet<String>) -> bool {
    let got: BTreeSet<String> = topic.ids().into_iter().collect();
    want.is_subset(&got)
}

/// A topology with relay `name` (its `settings` lines) over topics qc and we, listening
/// on a free port.
fn relay_topology(
    dir: &std::path::Path,
    name: &str,
    settings: &str,
    (qc, we): (&EventGridTopic, &EventGridTopic),
) -> (std::path::PathBuf, u16) {
    let port = free_port();
    std::fs::create_dir_all(dir.join("dead")).expect("dead-letter folder");
    let cfg = TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .region("qc")
        .region("we")
        .store("dead", "we", s(&dir.join("dead")))
        .raw(&format!(
            "[[relays]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\naccept = \"eventgrid\"\nkey = \"${{RELAY_KEY}}\"\n{settings}\ntargets = [\n  {{ name = \"qc\", region = \"qc\", kind = \"eventgrid\", url = \"{}?sig=topsecret-sig\", key = \"${{EG_QC}}\", timeout = \"2s\" }},\n  {{ name = \"we\", region = \"we\", kind = \"eventgrid\", url = \"{}\", key = \"${{EG_WE}}\", timeout = \"2s\" }},\n]",
            qc.url(),
            we.url()
        ))
        .write(dir);
    (cfg, port)
}

#[test]
fn a_failover_relay_fails_over_fails_back_survives_kill_9_and_dead_letters_bad_events() {
    let dir = tempfile::tempdir().expect("tmp");
    let (qc, we) = (
        EventGridTopic::start("topic-key-qc"),
        EventGridTopic::start("topic-key-we"),
    );
    let (cfg, port) = relay_topology(dir.path(), "orders", "mode = \"failover\"\nfailover_after = 2\nfailback_after = \"1s\"\nprobe_interval = \"200ms\"\nrpo = \"1m\"\ndead_letters = \"dead\"", (&qc, &we));
    let mut d = Serve::start(BIN, &cfg, &env());

    // Refused: no key, a wrong key, a body that is not the Event Grid schema.
    assert_eq!(
        post(port, &[], "application/json", &events(0, 1).to_string()),
        401
    );
    assert_eq!(publish(port, "wrong", &events(0, 1)).0, 401);
    assert_eq!(publish(port, KEY, &json!([{"id": "x"}])).0, 400);
    assert_eq!(publish(port, KEY, &json!({"id": "x"})).0, 400);

    // 1. Primary up: everything reaches qc, ids as published.
    for b in 0..10 {
        assert_eq!(publish(port, KEY, &events(b * 20, 20)).0, 200);
    }
    assert!(
        wait_until(Duration::from_secs(30), || has_all(&qc, &ids(0..200))),
        "qc got {} of 200",
        qc.ids().len()
    );
    assert_eq!(relay(&d, "orders").current_target.as_deref(), Some("qc"));
    // In the order published, once each.
    assert_eq!(first_seen(&qc), ids_in_order(0..200));
    assert_eq!(qc.ids().len(), 200);
    // A bearer token works as well, and CloudEvents travel as CloudEvents.
    let bearer = format!("Bearer {KEY}");
    let ce = json!({"specversion": "1.0", "id": "ce-1", "source": "/orders", "type": "Orders.Created", "data": {"n": 1}});
    assert_eq!(
        post(
            port,
            &[("authorization", bearer.as_str())],
            "application/cloudevents+json",
            &ce.to_string()
        ),
        200
    );
    assert!(wait_until(Duration::from_secs(30), || qc
        .ids()
        .contains(&"ce-1".to_string())));
    let got = qc
        .events()
        .into_iter()
        .find(|e| e["id"] == "ce-1")
        .expect("ce-1");
    assert_eq!(got["specversion"], "1.0");

    // 2. qc goes down: the relay fails over to we; nothing accepted is lost.
    qc.down();
    for b in 0..5 {
        assert_eq!(publish(port, KEY, &events(200 + b * 20, 20)).0, 200);
    }
    assert!(
        wait_until(Duration::from_secs(30), || has_all(&we, &ids(200..300))),
        "we got {:?}; status {:?}",
        we.ids().len(),
        relay(&d, "orders")
    );
    // In order there too (after any the failing target took before the switch).
    let on_we: Vec<usize> = first_seen(&we)
        .iter()
        .filter_map(|i| i.strip_prefix('e')?.parse().ok())
        .collect();
    assert!(on_we.windows(2).all(|w| w[0] < w[1]), "{on_we:?}");
    let st0 = relay(&d, "orders");
    assert_eq!(st0.current_target.as_deref(), Some("we"), "{st0:?}");
    assert!(
        st0.failovers >= 1
            && st0.recent_failovers[0]
                .reason
                .contains("consecutive failures"),
        "{st0:?}"
    );

    // 3. qc back: after 1 s of health the relay fails back; new events go to qc.
    qc.up();
    assert!(
        wait_until(Duration::from_secs(30), || relay(&d, "orders")
            .current_target
            .as_deref()
            == Some("qc")),
        "no failback: {:?}",
        relay(&d, "orders")
    );
    assert_eq!(publish(port, KEY, &events(300, 20)).0, 200);
    assert!(wait_until(Duration::from_secs(30), || has_all(
        &qc,
        &ids(300..320)
    )));
    assert!(relay(&d, "orders").recent_failovers[0]
        .reason
        .contains("failback"));

    // 4. Both topics failing: 2,000 events accepted and held; kill -9; restarted, the
    // relay delivers every one of them.
    qc.fail_with(Some(503));
    we.fail_with(Some(503));
    for b in 0..20 {
        assert_eq!(publish(port, KEY, &events(1000 + b * 100, 100)).0, 200);
    }
    let held = relay(&d, "orders");
    assert_eq!(
        held.targets.iter().map(|t| t.pending).sum::<u64>(),
        2000,
        "{held:?}"
    );
    d.kill9();
    qc.fail_with(None);
    we.fail_with(None);
    let d = Serve::start(BIN, &cfg, &env());
    let cli = |command: &str| {
        run(
            &["relay", command, "orders", "-c", s(&cfg), "--api", &d.base],
            &env(),
        )
    };
    let everywhere = |want: &BTreeSet<String>| {
        let mut got: BTreeSet<String> = qc.ids().into_iter().collect();
        got.extend(we.ids());
        want.is_subset(&got)
    };
    assert!(
        wait_until(Duration::from_secs(60), || everywhere(&ids(1000..3000))),
        "after kill -9: {:?}",
        relay(&d, "orders")
    );
    assert!(
        everywhere(&ids(0..320)),
        "every accepted event was delivered"
    );

    // 5. A refused event goes to the dead letters; the rest of its batch is delivered;
    // replay sends it once the topic takes it.
    qc.refuse_ids(&["e5002"]);
    we.refuse_ids(&["e5002"]);
    assert_eq!(publish(port, KEY, &events(5000, 5)).0, 200);
    assert!(wait_until(Duration::from_secs(30), || relay(&d, "orders")
        .dead_letters
        == 1));
    let mut good = ids(5000..5005);
    good.remove("e5002");
    assert!(wait_until(Duration::from_secs(30), || everywhere(&good)));
    let st = relay(&d, "orders");
    assert_eq!(st.recent_dead_letters[0].event_id, "e5002");
    assert!(
        st.recent_dead_letters[0].reason.contains("HTTP 400"),
        "{st:?}"
    );
    // A copy went to the dead_letters store, with the reason and the event as published.
    let copies = tree(&dir.path().join("dead"));
    assert_eq!(copies.len(), 1, "{copies:?}");
    let (key, body) = copies.iter().next().expect("one copy");
    assert!(key.starts_with("relays/orders/dead-letters/"), "{key}");
    let copy: serde_json::Value = serde_json::from_slice(body).expect("json");
    assert_eq!(copy["events"][0]["id"], "e5002");
    assert!(copy["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("HTTP 400"));
    assert!(!everywhere(&ids(5002..5003)));
    qc.refuse_ids(&[]);
    we.refuse_ids(&[]);
    let out = cli("replay").ok();
    assert!(
        out.stdout().contains("1 dead letters sent again"),
        "{}",
        out.stdout()
    );
    assert!(wait_until(Duration::from_secs(30), || everywhere(&ids(
        5002..5003
    ))));
    assert_eq!(relay(&d, "orders").dead_letters, 0);

    // The CLI's status: all is well, back on the first target.
    assert!(wait_until(Duration::from_secs(30), || relay(&d, "orders")
        .current_target
        .as_deref()
        == Some("qc")));
    let st = cli("status");
    assert_eq!(st.code(), 0, "{} {}", st.stdout(), st.stderr());
    assert!(st.stdout().contains("current target qc"), "{}", st.stdout());
    // Manual switchover pins the relay on we (no failback while pinned); switchback
    // returns to qc.
    let out = cli("switchover").ok();
    assert!(
        out.stdout().contains("events go to 'we'"),
        "{}",
        out.stdout()
    );
    assert_eq!(publish(port, KEY, &events(6000, 3)).0, 200);
    assert!(wait_until(Duration::from_secs(30), || has_all(
        &we,
        &ids(6000..6003)
    )));
    assert!(
        !wait_until(Duration::from_millis(1500), || relay(&d, "orders")
            .current_target
            .as_deref()
            == Some("qc")),
        "a pinned relay failed back"
    );
    assert!(relay(&d, "orders").pinned);
    let out = cli("switchback").ok();
    assert!(
        out.stdout().contains("events go to 'qc'"),
        "{}",
        out.stdout()
    );
    let back = relay(&d, "orders");
    assert!(
        !back.pinned && back.recent_failovers[0].reason == "manual switchback",
        "{back:?}"
    );

    // A target that refuses everything as bad data is misconfigured, not the data:
    // the relay fails over and keeps no dead letter.
    qc.fail_with(Some(400));
    assert_eq!(publish(port, KEY, &events(7000, 5)).0, 200);
    assert!(
        wait_until(Duration::from_secs(30), || has_all(&we, &ids(7000..7005))),
        "{:?}",
        relay(&d, "orders")
    );
    let mis = relay(&d, "orders");
    assert_eq!(mis.dead_letters, 0, "{mis:?}");
    assert!(
        mis.recent_failovers[0]
            .reason
            .contains("refuses every event"),
        "{mis:?}"
    );
    qc.fail_with(None);

    // The keys and the URL's signature never show: CLI, log, API, metrics, plan.
    let (_, api) = d.req(reqwest::Method::GET, "/api/v1/relays", None);
    let metrics = reqwest::blocking::Client::new()
        .get(format!("{}/metrics", d.base))
        .bearer_auth(d.token().unwrap_or_default())
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    assert!(
        metrics.contains("georep_relay_delivered_events"),
        "{metrics}"
    );
    let plan = run(&["plan", "-c", s(&cfg), "--output", "json"], &env());
    let all = format!(
        "{}{}{}{api}{metrics}{}{}",
        st.stdout(),
        st.stderr(),
        d.log_text(),
        plan.stdout(),
        plan.stderr()
    );
    for secret in [KEY, "topic-key-qc", "topic-key-we", "topsecret-sig"] {
        assert!(!all.contains(secret), "{secret} shown");
    }
}

#[test]
fn a_replicate_relay_keeps_each_target_at_its_own_pace_and_pushes_back_when_full() {
    let dir = tempfile::tempdir().expect("tmp");
    let (qc, we) = (
        EventGridTopic::start("topic-key-qc"),
        EventGridTopic::start("topic-key-we"),
    );
    let (cfg, port) = relay_topology(
        dir.path(),
        "logs",
        "mode = \"replicate\"\nmax_outbox = \"1MiB\"\nrpo = \"1s\"",
        (&qc, &we),
    );
    let d = Serve::start(BIN, &cfg, &env());
    we.down();
    for b in 0..10 {
        assert_eq!(publish(port, KEY, &events(b * 50, 50)).0, 200);
    }
    // qc is not held back by we.
    assert!(wait_until(Duration::from_secs(30), || has_all(
        &qc,
        &ids(0..500)
    )));
    let s = relay(&d, "logs");
    let we_s = s.targets.iter().find(|t| t.name == "we").expect("we");
    assert_eq!(we_s.pending, 500, "{s:?}");
    assert!(
        we_s.consecutive_failures > 0 && we_s.last_error.is_some(),
        "{s:?}"
    );
    assert!(wait_until(Duration::from_secs(10), || relay(&d, "logs").rpo_breached));
    // `georep status` reads the outbox itself: the breach is exit 1.
    let st = run(&["status", "-c", crate::common::s(&cfg)], &env());
    assert_eq!(st.code(), 1, "{}", st.stderr());
    let text = st.stdout();
    assert!(
        text.contains("relay logs  pending 500") && text.contains("RPO BREACHED"),
        "{text}"
    );

    // Full: big events until the outbox refuses, with Retry-After.
    let big = |i: usize| json!([{"id": format!("big{i}"), "subject": "s", "eventType": "t", "eventTime": "2026-12-02T10:00:00Z", "data": "x".repeat(200_000)}]);
    let mut refused = None;
    for i in 0..20 {
        let (code, retry) = publish(port, KEY, &big(i));
        if code == 503 {
            refused = Some((i, retry));
            break;
        }
        assert_eq!(code, 200);
    }
    let (at, retry) = refused.expect("a full outbox answers 503");
    assert!(at >= 3, "refused too early ({at})");
    assert_eq!(retry.as_deref(), Some("5"));

    // we comes back and catches up with everything, in order.
    we.up();
    let want: Vec<String> = (0..500)
        .map(|i| format!("e{i}"))
        .chain((0..at).map(|i| format!("big{i}")))
        .collect();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let got = we.ids();
            let mut seen = BTreeSet::new();
            got.into_iter()
                .filter(|i| seen.insert(i.clone()))
                .collect::<Vec<_>>()
                == want
        }),
        "we: {} events; {:?}",
        we.ids().len(),
        relay(&d, "logs")
    );
    assert!(wait_until(Duration::from_secs(10), || !relay(&d, "logs").rpo_breached));
    assert_eq!(
        run(&["status", "-c", crate::common::s(&cfg)], &env()).code(),
        0
    );
    // Room again.
    assert_eq!(publish(port, KEY, &events(900, 1)).0, 200);
}
