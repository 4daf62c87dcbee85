//! Points, restores, drills, retention and errors on real stores: local folders, Azurite
//! and S3 (moto); Debian's restic reads what georep writes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use georep_backup::{BackupError, PointSel, RepoSpec};
use georep_core::{CalendarSpan, Filter, Retention, StoreUrl};
use georep_storage::{Store, StoreOptions};
use georep_testkit::{Azurite, Moto};

const PW: &str = "correct horse battery";

fn opts(env: &[(String, String)]) -> StoreOptions {
    StoreOptions {
        env: env.iter().cloned().collect(),
        retry_timeout: std::time::Duration::from_secs(5),
        ..StoreOptions::default()
    }
}

fn spec(name: &str, url: &str, cache: &Path, env: &[(String, String)]) -> RepoSpec {
    RepoSpec {
        name: name.into(),
        url: StoreUrl::parse(url).expect("repository url"),
        password: PW.into(),
        append_only: false,
        cache_dir: cache.to_path_buf(),
        opts: opts(env),
        key_cache: Default::default(),
    }
}

fn store(url: &str, env: &[(String, String)]) -> Arc<Store> {
    Arc::new(Store::open(&StoreUrl::parse(url).expect("url"), &opts(env)).expect("open"))
}

fn write(root: &Path, key: &str, body: &[u8]) {
    let p = root.join(key);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, body).expect("write");
}

fn body(i: u32, len: u32) -> Vec<u8> {
    (0..len).map(|b| (b.wrapping_mul(31) ^ i) as u8).collect()
}

/// Every file under `root`, by relative path.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .expect("under")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

async fn objects(s: &Store) -> BTreeMap<String, Vec<u8>> {
    use futures::StreamExt;
    let mut out = BTreeMap::new();
    let mut l = s.list(georep_storage::ListRole::Source);
    while let Some(e) = l.next().await {
        let e = e.expect("list");
        let b = s
            .get(&e.key, 1 << 20)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("read");
        out.insert(e.key, b.to_vec());
    }
    out
}

async fn put(s: &Store, key: &str, b: &[u8]) {
    let r = georep_storage::ObjectReader::from_bytes(
        bytes::Bytes::copy_from_slice(b),
        Default::default(),
    );
    s.put(key, r, 8 << 20, 2).await.expect("put");
}

fn restic(repo: &str, env: &[(String, String)], args: &[&str]) -> std::process::Output {
    Command::new("restic")
        .arg("-r")
        .arg(repo)
        .arg("--no-cache")
        .env("RESTIC_PASSWORD", PW)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run restic ({e}); install it: apt-get install restic"))
}

fn ok(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "restic failed: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_are_incremental_and_restore_byte_identical_and_restic_agrees() {
    let dir = tempfile::tempdir().expect("tmp");
    let (src, repo, cache) = (
        dir.path().join("src"),
        dir.path().join("repo"),
        dir.path().join("cache"),
    );
    for i in 0..40u32 {
        write(
            &src,
            &format!("d{}/f{i}.bin", i % 4),
            &body(i, i * 1013 + 7),
        );
    }
    // Names whose flat byte order differs from restic's tree order.
    write(&src, "a-b", b"dash");
    write(&src, "a/b", b"slash");
    let first_state = tree(&src);
    let spec = spec("photos", repo.to_str().expect("utf-8"), &cache, &[]);
    let source = store(src.to_str().expect("utf-8"), &[]);

    let r1 = georep_backup::run_point(&spec, source.clone(), &Filter::default(), None)
        .await
        .expect("first point");
    assert!(r1.initialized);
    assert_eq!((r1.point.files, r1.files_read), (42, 42), "{r1:?}");
    let r2 = georep_backup::run_point(&spec, source.clone(), &Filter::default(), None)
        .await
        .expect("second point");
    assert!(!r2.initialized);
    assert_eq!(
        (r2.point.files, r2.files_read, r2.bytes_read),
        (42, 0, 0),
        "nothing changed, nothing read: {r2:?}"
    );

    write(&src, "d1/f1.bin", b"changed");
    write(&src, "new/one.txt", b"new");
    let r3 = georep_backup::run_point(&spec, source.clone(), &Filter::default(), None)
        .await
        .expect("third point");
    assert_eq!((r3.point.files, r3.files_read), (43, 2), "{r3:?}");
    assert_eq!(r3.point.files_new + r3.point.files_changed, 2);

    let points = georep_backup::points(&spec).await.expect("points");
    assert_eq!(points.len(), 3);
    assert_eq!(points[0].id, r1.point.id);

    // Restore the latest and the first point through georep.
    let out = dir.path().join("restored");
    let rep = georep_backup::restore(
        &spec,
        &PointSel::Latest,
        store(out.to_str().expect("utf-8"), &[]),
        &Filter::default(),
        4,
    )
    .await
    .expect("restore latest");
    assert_eq!(rep.files, 43);
    assert_eq!(tree(&out), tree(&src));
    let out1 = dir.path().join("restored-first");
    let prefix = &r1.point.id[..8];
    georep_backup::restore(
        &spec,
        &PointSel::Id(prefix.into()),
        store(out1.to_str().expect("utf-8"), &[]),
        &Filter::default(),
        4,
    )
    .await
    .expect("restore first");
    assert_eq!(tree(&out1), first_state);
    // --include restores part of a point.
    let out2 = dir.path().join("restored-d2");
    let only = Filter::new(&["d2/**".to_string()], &[]).expect("filter");
    let rep = georep_backup::restore(
        &spec,
        &PointSel::Latest,
        store(out2.to_str().expect("utf-8"), &[]),
        &only,
        2,
    )
    .await
    .expect("restore part");
    assert_eq!(rep.files, 10);
    assert!(tree(&out2).keys().all(|k| k.starts_with("d2/")));

    let v = georep_backup::verify(&spec, true).await.expect("verify");
    assert!(v.errors.is_empty(), "{v:?}");
    assert_eq!(v.points, 3);

    // restic reads the same repository.
    let repo_s = repo.to_str().expect("utf-8");
    let snaps = ok(&restic(repo_s, &[], &["snapshots", "--json"]));
    let snaps: serde_json::Value =
        serde_json::from_str(snaps.lines().next().unwrap_or("")).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(3), "{snaps}");
    ok(&restic(repo_s, &[], &["check", "--read-data"]));
    let target = dir.path().join("restic-restored");
    ok(&restic(
        repo_s,
        &[],
        &[
            "restore",
            "latest",
            "--target",
            target.to_str().expect("utf-8"),
        ],
    ));
    assert_eq!(tree(&target), tree(&src));
    // restic keeps the mode and the modification time georep recorded.
    let meta = std::fs::metadata(target.join("a/b")).expect("restored file");
    let src_meta = std::fs::metadata(src.join("a/b")).expect("source file");
    assert_eq!(
        meta.modified().expect("mtime"),
        src_meta.modified().expect("mtime")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);

    // A drill restores to an empty scratch store and compares byte for byte.
    let scratch = dir.path().join("scratch");
    let d = georep_backup::drill(
        &spec,
        &PointSel::Latest,
        store(scratch.to_str().expect("utf-8"), &[]),
        4,
    )
    .await
    .expect("drill");
    assert!(d.passed, "{d:?}");
    assert_eq!(d.verified_files, 43);
    let again = georep_backup::drill(
        &spec,
        &PointSel::Latest,
        store(scratch.to_str().expect("utf-8"), &[]),
        4,
    )
    .await;
    assert!(
        matches!(again, Err(BackupError::Invalid(_))),
        "a non-empty scratch store is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_stores_back_up_into_object_stores_in_another_region() {
    let (az, moto) = (Azurite::start(), Moto::start());
    let dir = tempfile::tempdir().expect("tmp");
    let env: Vec<(String, String)> = az.env().into_iter().chain(moto.env()).collect();
    az.create_container("src");
    az.create_container("points");
    az.create_container("restored");
    moto.create_bucket("src");
    moto.create_bucket("points");
    let mut want = BTreeMap::new();
    let (az_src, s3_src) = (store(&az.url("src"), &env), store("s3://src", &env));
    for i in 0..12u32 {
        let b = body(i, 3000 + i * 777);
        put(&az_src, &format!("in/f{i}"), &b).await;
        put(&s3_src, &format!("in/f{i}"), &b).await;
        want.insert(format!("in/f{i}"), b);
    }

    // Azurite -> S3 repository, restored into another Azurite container.
    let s3_spec = spec(
        "az-to-s3",
        "s3://points/georep",
        &dir.path().join("c1"),
        &env,
    );
    let r = georep_backup::run_point(
        &s3_spec,
        store(&az.url("src"), &env),
        &Filter::default(),
        None,
    )
    .await
    .expect("point of azurite into s3");
    assert_eq!(r.point.files, 12);
    put(&az_src, "in/f3", b"overwritten").await;
    let r = georep_backup::run_point(
        &s3_spec,
        store(&az.url("src"), &env),
        &Filter::default(),
        None,
    )
    .await
    .expect("second point");
    assert_eq!(r.files_read, 1, "only the changed blob is read: {r:?}");
    let restored = store(&az.url("restored"), &env);
    georep_backup::restore(
        &s3_spec,
        &PointSel::Latest,
        restored.clone(),
        &Filter::default(),
        4,
    )
    .await
    .expect("restore into azurite");
    let mut want_now = want.clone();
    want_now.insert("in/f3".into(), b"overwritten".to_vec());
    assert_eq!(objects(&restored).await, want_now);
    // restic reads the S3 repository.
    let s3_repo = format!("s3:{}/points/georep", moto.endpoint());
    ok(&restic(&s3_repo, &moto.env(), &["check", "--read-data"]));

    // S3 -> Azurite repository, drilled into a local folder.
    let az_spec = spec(
        "s3-to-az",
        &az.url("points/repo"),
        &dir.path().join("c2"),
        &env,
    );
    georep_backup::run_point(&az_spec, store("s3://src", &env), &Filter::default(), None)
        .await
        .expect("point of s3 into azurite");
    let scratch = dir.path().join("scratch");
    let d = georep_backup::drill(
        &az_spec,
        &PointSel::Latest,
        store(scratch.to_str().expect("utf-8"), &[]),
        4,
    )
    .await
    .expect("drill");
    assert!(d.passed, "{d:?}");
    assert_eq!(tree(&scratch), want);

    // Keys a point cannot hold are named, the run says so, and the rest is taken.
    moto.create_bucket("odd");
    let odd = store("s3://odd", &env);
    for (k, b) in [("x", &b"file"[..]), ("x/y", b"inner"), ("ok", b"fine")] {
        put(&odd, k, b).await;
    }
    let odd_spec = spec("odd", &az.url("points/odd"), &dir.path().join("c3"), &env);
    let e = georep_backup::run_point(&odd_spec, odd, &Filter::default(), None)
        .await
        .expect_err("a key that is also a folder");
    match &e {
        BackupError::Partial {
            failed,
            skipped,
            first,
            ..
        } => {
            assert_eq!((*failed, *skipped), (0, 1), "{e}");
            assert!(first.starts_with("x: "), "{e}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(e.exit_class(), 1);
    let p = georep_backup::points(&odd_spec).await.expect("points");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].files, 2, "x/y and ok are in the point");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_repositories_say_what_is_wrong_with_their_exit_class() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    write(&src, "f", b"x");
    let source = store(src.to_str().expect("utf-8"), &[]);
    let repo = dir.path().join("repo");
    let good = spec(
        "b",
        repo.to_str().expect("utf-8"),
        &dir.path().join("c"),
        &[],
    );
    georep_backup::run_point(&good, source.clone(), &Filter::default(), None)
        .await
        .expect("point");

    let mut wrong = good.clone();
    wrong.password = "not it".into();
    let e = georep_backup::points(&wrong)
        .await
        .expect_err("wrong password");
    assert!(matches!(e, BackupError::WrongPassword { .. }), "{e}");
    assert_eq!(e.exit_class(), 3);
    assert!(
        !e.to_string().contains("not it"),
        "the password is never printed: {e}"
    );

    let foreign = dir.path().join("foreign");
    write(&foreign, "photos/cat.jpg", b"meow");
    let other = spec(
        "b",
        foreign.to_str().expect("utf-8"),
        &dir.path().join("c"),
        &[],
    );
    let e = georep_backup::run_point(&other, source.clone(), &Filter::default(), None)
        .await
        .expect_err("a folder of something else");
    assert!(matches!(e, BackupError::NotARepository { .. }), "{e}");
    assert_eq!(e.exit_class(), 2);
    assert_eq!(tree(&foreign).len(), 1, "nothing was written into it");

    let empty = spec(
        "b",
        dir.path().join("none").to_str().expect("utf-8"),
        &dir.path().join("c"),
        &[],
    );
    let e = georep_backup::points(&empty)
        .await
        .expect_err("no repository yet");
    assert!(matches!(e, BackupError::NoRepository { .. }), "{e}");
    assert_eq!(e.exit_class(), 2);

    let port = georep_testkit::free_port();
    let down = spec(
        "b",
        "s3://bucket/x",
        &dir.path().join("c"),
        &[
            ("AWS_ACCESS_KEY_ID".into(), "k".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "s".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            (
                "AWS_ENDPOINT_URL".into(),
                format!("http://127.0.0.1:{port}"),
            ),
        ],
    );
    let e = georep_backup::run_point(&down, source, &Filter::default(), None)
        .await
        .expect_err("unreachable");
    assert_eq!(e.exit_class(), 3, "{e}");
}

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    // 2026-01-05 is a Monday, so ISO weeks start on days 0, 7, 14, ...
    Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0)
        .single()
        .expect("date")
        + chrono::Duration::days(i64::from(day))
        + chrono::Duration::hours(i64::from(hour))
}

fn span(s: &str) -> Option<CalendarSpan> {
    Some(CalendarSpan::parse(s).expect("span"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_over_six_weeks_keeps_exactly_the_banded_points() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    let repo = dir.path().join("repo");
    let spec = spec(
        "timeline",
        repo.to_str().expect("utf-8"),
        &dir.path().join("c"),
        &[],
    );
    let source = store(src.to_str().expect("utf-8"), &[]);
    // Two points a day (03:00, 15:00) for 42 days, then one at 21:00 on the last day.
    let mut times: Vec<DateTime<Utc>> = (0..42).flat_map(|d| [at(d, 3), at(d, 15)]).collect();
    times.push(at(41, 21));
    for (i, t) in times.iter().enumerate() {
        write(&src, "file", format!("version {i}").as_bytes());
        georep_backup::run_point(&spec, source.clone(), &Filter::default(), Some(*t))
            .await
            .expect("point");
    }
    let retention = Retention {
        within: span("1d"),
        daily: span("7d"),
        weekly: span("4w"),
        ..Retention::default()
    };
    let now = at(41, 22);
    let dry = georep_backup::prune(&spec, &retention, true, Some(now))
        .await
        .expect("dry run");
    assert!(dry.dry_run);
    assert_eq!(
        georep_backup::points(&spec).await.expect("points").len(),
        times.len(),
        "a dry run keeps everything"
    );
    // Within 1d of the newest (41 21:00): 41 03:00, 41 15:00, 41 21:00. The last point
    // of each day within 7d: days 35..=40 at 15:00 (41 is counted above). The last of
    // each ISO week within 4w: Sundays 20, 27, 34 at 15:00 (day 13 15:00 is 4w+6h old).
    let mut want: Vec<DateTime<Utc>> = vec![at(41, 3), at(41, 15), at(41, 21)];
    want.extend((35..=40).map(|d| at(d, 15)));
    want.extend([at(20, 15), at(27, 15), at(34, 15)]);
    want.sort();
    let kept_dry: Vec<i64> = dry
        .points
        .iter()
        .filter(|p| p.keep)
        .map(|p| {
            DateTime::parse_from_rfc3339(&p.time)
                .expect("time")
                .timestamp()
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let want_unix: Vec<i64> = want.iter().map(DateTime::timestamp).collect();
    assert_eq!(kept_dry, want_unix, "the dry run shows what stays");

    let done = georep_backup::prune(&spec, &retention, false, Some(now))
        .await
        .expect("prune");
    assert_eq!(
        done.points.iter().filter(|p| !p.keep).count(),
        times.len() - want.len(),
        "{done:?}"
    );
    let left: Vec<i64> = georep_backup::points(&spec)
        .await
        .expect("points")
        .iter()
        .map(|p| p.unix)
        .collect();
    assert_eq!(left, want_unix);
    // Every kept point still restores, and restic finds the repository sound.
    let oldest = dir.path().join("oldest");
    georep_backup::restore(
        &spec,
        &PointSel::At(at(20, 16)),
        store(oldest.to_str().expect("utf-8"), &[]),
        &Filter::default(),
        2,
    )
    .await
    .expect("restore the oldest kept point");
    let idx = times.iter().position(|t| *t == at(20, 15)).expect("index");
    assert_eq!(
        std::fs::read(oldest.join("file")).expect("file"),
        format!("version {idx}").as_bytes()
    );
    ok(&restic(
        repo.to_str().expect("utf-8"),
        &[],
        &["check", "--read-data"],
    ));
    // A point dated in the future (a wrong clock) would make every real point look old.
    georep_backup::run_point(&spec, source.clone(), &Filter::default(), Some(at(60, 0)))
        .await
        .expect("a point from a machine with a fast clock");
    let e = georep_backup::prune(&spec, &retention, false, Some(now))
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("in the future"), "{e}");
    assert_eq!(
        georep_backup::points(&spec).await.expect("points").len(),
        want.len() + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_only_repositories_never_lose_anything() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    write(&src, "f", b"one");
    let repo = dir.path().join("repo");
    let mut s = spec(
        "locked",
        repo.to_str().expect("utf-8"),
        &dir.path().join("c"),
        &[],
    );
    s.append_only = true;
    let source = store(src.to_str().expect("utf-8"), &[]);
    georep_backup::run_point(&s, source.clone(), &Filter::default(), None)
        .await
        .expect("point");
    write(&src, "f", b"two");
    georep_backup::run_point(&s, source, &Filter::default(), None)
        .await
        .expect("point");
    let before = tree(&repo);
    let keep_one = Retention {
        within: span("1h"),
        ..Retention::default()
    };
    let e = georep_backup::prune(&s, &keep_one, false, None)
        .await
        .expect_err("refused");
    assert!(matches!(e, BackupError::AppendOnly { .. }), "{e}");
    assert_eq!(tree(&repo), before, "nothing deleted or rewritten");
    // A dry run still shows what retention would do.
    assert!(georep_backup::prune(&s, &keep_one, true, None)
        .await
        .is_ok());
    // restic sees the flag rustic recorded in the config and still reads it.
    ok(&restic(repo.to_str().expect("utf-8"), &[], &["check"]));
}
