//! Unit tests of the state store, each against a fresh SQLite file in a temp folder.

use super::*;

fn open() -> (tempfile::TempDir, State) {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = State::open(&format!("sqlite://{}/s/g.db", dir.path().display())).expect("open");
    (dir, st)
}

fn up(key: &str, size: u64, t: i64) -> Observed {
    Observed {
        key: key.into(),
        kind: ObservedKind::Upsert {
            size,
            etag: None,
            mtime: t,
        },
        change_time: t,
    }
}

#[test]
fn apply_claim_complete_and_requeue() {
    let (_d, st) = open();
    let dests = vec!["a".to_string(), "b".to_string()];
    st.apply("p", &dests, &[up("k1", 10, 1000), up("k2", 20, 2000)])
        .expect("apply");
    assert_eq!(st.manifest_count("p").expect("count"), 2);
    let lag = st.lag("p").expect("lag");
    assert_eq!(lag.len(), 2);
    assert_eq!((lag[0].pending, lag[0].pending_bytes), (2, 30));
    assert_eq!(lag[0].oldest_change, Some(1000));

    let items = st.claim("p", 10, Duration::from_secs(60)).expect("claim");
    assert_eq!(items.len(), 4);
    // Leased items are not handed out twice.
    assert!(st
        .claim("p", 10, Duration::from_secs(60))
        .expect("claim")
        .is_empty());

    // k1 changes again while a worker holds the old version.
    st.apply("p", &dests, &[up("k1", 11, 3000)]).expect("apply");
    let k1a = items
        .iter()
        .find(|i| i.key == "k1" && i.dest == "a")
        .expect("k1a");
    assert!(
        !st.complete(k1a, None).expect("complete"),
        "stale generation"
    );
    let s = st.object_status("p", "k1").expect("status");
    assert_eq!(s[0].status, Status::Pending);
    assert_eq!(
        s[0].change_time, 1000,
        "keeps the oldest unreplicated change"
    );

    for it in items.iter().filter(|i| i.key == "k2") {
        assert!(st.complete(it, None).expect("complete"));
    }
    let s = st.object_status("p", "k2").expect("status");
    assert!(s
        .iter()
        .all(|i| i.status == Status::Complete && i.replicated_at.is_some()));
}

#[test]
fn an_added_destination_is_backfilled_and_requeued_rows_are_released() {
    let (_d, st) = open();
    let a = vec!["a".to_string()];
    let named = |names: &[&str]| -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), format!("/srv/{n}")))
            .collect()
    };
    st.upsert_policy("p", &serde_json::json!({"v": 1}), "src", &named(&["a"]))
        .expect("up");
    st.apply("p", &a, &[up("k1", 1, 1), up("k2", 2, 2)])
        .expect("apply");
    st.upsert_policy(
        "p",
        &serde_json::json!({"v": 2}),
        "src",
        &named(&["a", "b"]),
    )
    .expect("up");
    let lag = st.lag("p").expect("lag");
    assert_eq!(
        lag.iter().find(|l| l.dest == "b").map(|l| l.pending),
        Some(2)
    );

    // A worker finishing an old generation releases the row for the new one.
    let items = st.claim("p", 10, Duration::from_secs(3600)).expect("claim");
    let k1 = items
        .iter()
        .find(|i| i.key == "k1" && i.dest == "a")
        .expect("k1");
    st.apply("p", &a, &[up("k1", 5, 5)]).expect("apply");
    assert!(!st.complete(k1, None).expect("complete"));
    let again = st.claim("p", 10, Duration::from_secs(3600)).expect("claim");
    assert!(
        again.iter().any(|i| i.key == "k1" && i.dest == "a"),
        "{again:?}"
    );

    // A destination whose URL changed is a new place: filled like an added one.
    for i in items.iter().filter(|i| i.dest == "b").chain(&again) {
        st.complete(i, None).expect("complete");
    }
    let pending_at = |st: &State, d: &str| {
        st.lag("p")
            .expect("lag")
            .iter()
            .find(|l| l.dest == d)
            .map(|l| l.pending)
    };
    assert_eq!(pending_at(&st, "b"), Some(0));
    let a_before = pending_at(&st, "a");
    let moved = vec![
        ("a".to_string(), "/srv/a".to_string()),
        ("b".to_string(), "/srv/b-new".to_string()),
    ];
    st.upsert_policy("p", &serde_json::json!({"v": 2}), "src", &moved)
        .expect("up");
    assert_eq!(pending_at(&st, "b"), Some(2), "the new place is filled");
    assert_eq!(pending_at(&st, "a"), a_before, "an unmoved one is not");

    // A new source URL drops the manifest.
    st.upsert_policy("p", &serde_json::json!({"v": 3}), "other", &moved)
        .expect("up");
    assert_eq!(st.manifest_count("p").expect("count"), 0);
}

#[test]
fn failures_back_off_and_turn_failed() {
    let (_d, st) = open();
    st.apply("p", &["a".into()], &[up("k", 1, 1)])
        .expect("apply");
    for n in 0..3 {
        let it = st.claim("p", 1, Duration::from_secs(60)).expect("claim");
        assert_eq!(it.len(), 1, "round {n}");
        st.fail(&it[0], "boom", 0, 3).expect("fail");
    }
    let s = st.object_status("p", "k").expect("status");
    assert_eq!((s[0].status, s[0].attempts), (Status::Failed, 3));
    assert_eq!(s[0].last_error.as_deref(), Some("boom"));
    // Failed items are still retried.
    st.fail(&s[0], "later", crate::now_ms() + 60_000, 3)
        .expect("fail");
    assert!(st
        .claim("p", 1, Duration::from_secs(60))
        .expect("claim")
        .is_empty());
    assert!(st.next_due("p").expect("due").is_some());
}

#[test]
fn removes_respect_propagate_and_manifest_pages_are_ordered() {
    let (_d, st) = open();
    let d = vec!["a".to_string()];
    let keys = ["b", "a/x", "a", "é", "Z"];
    let obs: Vec<_> = keys.iter().map(|k| up(k, 1, 1)).collect();
    st.apply("p", &d, &obs).expect("apply");
    let page1 = st.manifest_page("p", None, 2).expect("page");
    let page2 = st
        .manifest_page("p", Some(&page1[1].key), 10)
        .expect("page");
    let all: Vec<_> = page1.iter().chain(&page2).map(|e| e.key.clone()).collect();
    assert_eq!(all, ["Z", "a", "a/x", "b", "é"]);

    st.apply(
        "p",
        &d,
        &[
            Observed {
                key: "a".into(),
                kind: ObservedKind::Remove { propagate: false },
                change_time: 5,
            },
            Observed {
                key: "b".into(),
                kind: ObservedKind::Remove { propagate: true },
                change_time: 5,
            },
        ],
    )
    .expect("apply");
    assert_eq!(st.manifest_count("p").expect("count"), 3);
    assert_eq!(st.object_status("p", "b").expect("s")[0].op, Op::Delete);
    assert_eq!(st.object_status("p", "a").expect("s")[0].op, Op::Copy);
}

#[test]
fn policies_record_changes_and_refuse_foreign_files() {
    let (d, st) = open();
    let cfg = serde_json::json!({"rpo": "5m"});
    assert_eq!(
        st.upsert_policy("p", &cfg, "src", &[("a".to_string(), "/srv/a".to_string())])
            .expect("up"),
        PolicyChange::Added
    );
    assert_eq!(
        st.upsert_policy("p", &cfg, "src", &[("a".to_string(), "/srv/a".to_string())])
            .expect("up"),
        PolicyChange::Unchanged
    );
    let cfg2 = serde_json::json!({"rpo": "1m"});
    assert!(matches!(
        st.policy_change("p", &cfg2).expect("c"),
        PolicyChange::Changed { .. }
    ));
    st.set_paused("p", Some("guard")).expect("pause");
    assert_eq!(
        st.policy("p").expect("p").expect("some").paused.as_deref(),
        Some("guard")
    );
    drop(st);
    // Reopening keeps everything.
    let st = State::open_path(&d.path().join("s/g.db")).expect("reopen");
    assert_eq!(st.policies().expect("list").len(), 1);

    let foreign = d.path().join("other.db");
    let c = Connection::open(&foreign).expect("create");
    c.execute_batch("CREATE TABLE t (x)").expect("table");
    drop(c);
    let e = State::open_path(&foreign).expect_err("foreign");
    assert!(e.to_string().contains("not a georep database"), "{e}");

    let junk = d.path().join("junk.db");
    std::fs::write(&junk, b"this is not sqlite at all, not even close........").expect("w");
    let e = State::open_path(&junk).expect_err("junk");
    assert!(e.to_string().contains("corrupt"), "{e}");

    let e = State::open("postgres://u:secret@h/db").expect_err("pg");
    assert!(!e.to_string().contains("secret"), "{e}");
}

#[test]
fn an_interrupted_role_change_is_found_and_settled() {
    let (_d, st) = open();
    let rec = st.failover_init("fg", "a").expect("init");
    assert_eq!((rec.epoch, rec.state), (1, georep_api::GroupState::Stable));
    assert!(st.failover_pending("fg").expect("pending").is_none());
    st.failover_begin("fg", 2, "planned", "a", "b")
        .expect("begin");
    let rec = st.failover("fg").expect("read").expect("row");
    assert_eq!(
        (rec.epoch, rec.primary.as_str(), rec.state.as_str()),
        (1, "a", "failing-over")
    );
    let p = st.failover_pending("fg").expect("pending").expect("one");
    assert_eq!(
        (p.epoch, p.kind.as_str(), p.to.as_str()),
        (2, "planned", "b")
    );
    st.failover_rolled_back("fg", 2, "rolled back after a restart")
        .expect("roll back");
    assert!(st.failover_pending("fg").expect("pending").is_none());
    let rec = st.failover("fg").expect("read").expect("row");
    assert_eq!(
        (rec.epoch, rec.primary.as_str(), rec.state.as_str()),
        (2, "a", "stable")
    );

    // The next attempt takes epoch 3 and finishes.
    st.failover_begin("fg", 3, "forced", "a", "b")
        .expect("begin");
    assert!(st
        .failover_advance("fg", 3, "b", "stable", Some("a"))
        .expect("advance"));
    st.failover_history_finish(
        "fg",
        3,
        &FailoverFinish {
            write_gap_ms: 5,
            data_loss: "x",
            outcome: "done",
            left_behind: None,
        },
    )
    .expect("finish");
    assert!(!st
        .failover_advance("fg", 3, "a", "stable", None)
        .expect("stale"));
    let h = st.failover_history("fg", 10).expect("history");
    assert_eq!(h.len(), 2);
    assert_eq!(
        (h[0].outcome.as_deref(), h[0].kind.as_str()),
        (Some("done"), "forced")
    );
    assert_eq!(h[1].outcome.as_deref(), Some("rolled back after a restart"));
    assert!(st.failover_pending("fg").expect("pending").is_none());
}
