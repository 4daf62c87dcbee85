//! `georep backup ...` end to end: a local source, a repository in another region, the
//! commands' output, exit codes and reports; the password never appears.

use crate::common::*;

const PW: &str = "s3cret-backup-pw";

fn env(pw: &str) -> Vec<(String, String)> {
    vec![("GEOREP_TEST_BACKUP_PW".into(), pw.into())]
}

fn backup_topology(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    TopologyFile::new()
        .raw("[state]\nurl = \"sqlite://state/georep.db\"")
        .store("src", "qc", s(&dir.join("src")))
        .store("vault", "we", s(&dir.join("vault")))
        .raw("[[backups]]\nname = \"photos\"\nsource = \"src\"\nrepository = \"vault\"\npassword = \"${GEOREP_TEST_BACKUP_PW}\"\nevery = \"5m\"")
        .raw(extra)
        .write(dir)
}

#[test]
fn backup_commands_take_list_restore_verify_prune_and_drill() {
    let dir = tempfile::tempdir().expect("tmp");
    for i in 0..20 {
        write(
            &dir.path().join("src"),
            &format!("p/{i}.jpg"),
            format!("photo {i}").repeat(50).as_bytes(),
        );
    }
    let cfg = backup_topology(dir.path(), "retention = { within = \"1h\" }");
    let c = s(&cfg);
    let e = env(PW);
    let mut all_output = String::new();
    let mut seen = |o: &Out| all_output.push_str(&format!("{}{}", o.stdout(), o.stderr()));

    let first = run(
        &["backup", "run", "photos", "-c", c, "--output", "json"],
        &e,
    )
    .ok();
    seen(&first);
    let j = first.json();
    assert_eq!(j["point"]["files"], 20);
    assert_eq!(j["initialized"], true);
    write(&dir.path().join("src"), "p/3.jpg", b"edited");
    let second = run(&["backup", "run", "photos", "-c", c], &e).ok();
    seen(&second);
    assert!(
        second.stdout().contains("20 objects") && second.stdout().contains("1 objects read"),
        "{}",
        second.stdout()
    );

    let list = run(
        &["backup", "list", "photos", "-c", c, "--output", "json"],
        &e,
    )
    .ok();
    seen(&list);
    let points = list.json();
    assert_eq!(points.as_array().map(Vec::len), Some(2), "{points}");
    let first_id = points[0]["id"].as_str().expect("id").to_string();

    let out = dir.path().join("out");
    let r = run(
        &[
            "backup",
            "restore",
            "photos",
            "-c",
            c,
            "--point",
            &first_id[..10],
            "--to",
            s(&out),
        ],
        &e,
    )
    .ok();
    seen(&r);
    assert!(r.stdout().contains("20 objects"), "{}", r.stdout());
    assert_eq!(
        tree(&out)["p/3.jpg"],
        "photo 3".repeat(50).as_bytes(),
        "the first point has the old content"
    );

    let v = run(&["backup", "verify", "photos", "-c", c, "--read-data"], &e).ok();
    seen(&v);
    assert!(v.stdout().contains("no errors"), "{}", v.stdout());

    let p = run(
        &[
            "backup",
            "prune",
            "photos",
            "-c",
            c,
            "--dry-run",
            "--output",
            "json",
        ],
        &e,
    )
    .ok();
    seen(&p);
    assert_eq!(p.json()["dry_run"], true);

    let reports = dir.path().join("reports");
    let d = run(
        &[
            "backup",
            "drill",
            "photos",
            "-c",
            c,
            "--to",
            s(&dir.path().join("scratch")),
            "--report-dir",
            s(&reports),
        ],
        &e,
    )
    .ok();
    seen(&d);
    assert!(d.stdout().contains("PASSED"), "{}", d.stdout());
    let json = std::fs::read_dir(&reports)
        .expect("reports")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a JSON report");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json).expect("read")).expect("json");
    assert_eq!(report["passed"], true);
    assert_eq!(report["verified_files"], 20);
    assert!(report["rto_seconds"].as_f64().is_some_and(|s| s > 0.0));

    // A wrong password: exit 3, one clear line, no password shown.
    let bad = run(&["backup", "list", "photos", "-c", c], &env("wrong-one"));
    let (code, _, err) = bad.parts();
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("wrong password"), "{err}");
    assert!(!err.contains("wrong-one"), "{err}");
    // An unknown backup name: exit 2.
    let (code, _, err) = run(&["backup", "run", "nope", "-c", c], &e).parts();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no backup named 'nope'"), "{err}");
    assert!(!all_output.contains(PW), "the password is never printed");
}

#[test]
fn the_daemon_takes_points_on_schedule_and_reports_them() {
    use georep_testkit::{wait_until, Serve};
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("tmp");
    for i in 0..10 {
        write(
            &dir.path().join("src"),
            &format!("f{i}"),
            format!("file {i}").as_bytes(),
        );
    }
    let cfg = backup_topology(dir.path(), "retention = { within = \"1d\" }");
    let d = Serve::start(BIN, &cfg, &env(PW));
    // Never backed up: the first point is due at once.
    let mut st: georep_api::BackupStatus = d.typed("/api/v1/backups/photos");
    assert!(
        wait_until(Duration::from_secs(60), || {
            st = d.typed("/api/v1/backups/photos");
            st.points == 1 && !st.running
        }),
        "no first point: {st:?}\n{}",
        d.log_text()
    );
    let first = st.last_point.clone().expect("last point");
    assert_eq!(first.files, 10);
    assert_eq!(st.target_seconds, 300.0);
    assert!(!st.rpo_breached && st.last_error.is_none(), "{st:?}");
    assert!(st.rpo_seconds.is_some_and(|r| r < 300.0), "{st:?}");
    assert_eq!(
        st.next_run,
        Some(first.unix + 300),
        "the next point is due 5m after this one started"
    );
    assert!(
        st.dedup_ratio.is_some() && st.repository_bytes > 0,
        "{st:?}"
    );

    // A point on demand reads only what changed.
    write(&dir.path().join("src"), "f3", b"changed");
    let r: georep_api::PointReport =
        serde_json::from_value(d.post("/api/v1/backups/photos/run", &serde_json::json!({})))
            .expect("point report");
    assert_eq!((r.point.files, r.files_read), (10, 1), "{r:?}");
    let st: georep_api::BackupStatus = d.typed("/api/v1/backups/photos");
    assert_eq!(st.points, 2);
    let metrics = d.req(reqwest::Method::GET, "/metrics", None).1;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("georep_backup_points{backup=\"photos\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("georep_backup_rpo_seconds{backup=\"photos\"}"),
        "{metrics}"
    );

    // The CLI reads the same status; all is well: exit 0.
    let out = run(
        &["backup", "status", "-c", s(&cfg), "--api", &d.base],
        &env(PW),
    );
    let (code, text, err) = out.parts();
    assert_eq!(code, 0, "{text}{err}");
    assert!(
        text.contains("photos") && text.contains("every 5m") && text.contains("ok"),
        "{text}"
    );
    // Unknown backups are 404s.
    let (code, _) = d.req(reqwest::Method::GET, "/api/v1/backups/nope", None);
    assert_eq!(code, 404);
    assert!(!d.log_text().contains(PW), "the password is never logged");
}

/// The file names in one folder (none while it does not exist; temp files left out).
fn names(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with(".georep-tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// Deterministic incompressible bytes (xorshift), so every file makes its own packs.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Pack files in `data/XX/`, tolerating folders that appear while it reads.
fn packs(repo: &std::path::Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(repo.join("data")) else {
        return 0;
    };
    dirs.flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|f| f.flatten())
        .filter(|f| !f.file_name().to_string_lossy().contains(".georep-tmp"))
        .count()
}

fn restic_check(repo: &std::path::Path, read_data: bool) -> String {
    let mut cmd = std::process::Command::new("restic");
    cmd.args(["-r", s(repo), "--no-cache", "check"])
        .env("RESTIC_PASSWORD", PW);
    if read_data {
        cmd.arg("--read-data");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run restic ({e}); install it: apt-get install restic"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "restic check failed:\n{text}");
    text
}

#[test]
fn kill_9_mid_point_and_mid_prune_leaves_a_repository_restic_accepts() {
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    let vault = dir.path().join("vault");
    for i in 0..48u64 {
        write(&src, &format!("big/{i}.bin"), &noise(i, 1 << 20));
    }
    let cfg = backup_topology(dir.path(), "retention = { hourly = \"1h\" }");
    let c = s(&cfg);
    let e = env(PW);

    // kill -9 once the first packs are in the repository, before the point is recorded.
    // On a fast machine the point can finish between the first pack and the kill: then
    // the repository is dropped and the source made larger, at most twice.
    let mut killed_mid_point = false;
    let mut files = 48u64;
    for attempt in 1..=3u64 {
        let mut child = georep(&["backup", "run", "photos", "-c", c], &e)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let written = georep_testkit::wait_until(Duration::from_secs(120), || {
            packs(&vault) >= 1 || child.try_wait().ok().flatten().is_some()
        });
        assert!(written, "no pack was written");
        let _ = child.kill();
        let _ = child.wait();
        let listed = run(
            &["backup", "list", "photos", "-c", c, "--output", "json"],
            &e,
        )
        .ok();
        if listed.json().as_array().map(Vec::len) == Some(0) {
            killed_mid_point = true;
            break;
        }
        let _ = std::fs::remove_dir_all(&vault);
        files += 48 * attempt;
        for i in 0..48 * attempt {
            write(
                &src,
                &format!("more{attempt}/{i}.bin"),
                &noise(1000 * attempt + i, 1 << 20),
            );
        }
    }
    assert!(
        killed_mid_point,
        "every point finished before the kill; the test needs a larger source"
    );
    restic_check(&vault, false);
    // The next run completes, reusing what the killed run uploaded.
    let done = run(
        &["backup", "run", "photos", "-c", c, "--output", "json"],
        &e,
    )
    .ok();
    assert_eq!(done.json()["point"]["files"], files);
    restic_check(&vault, true);

    // Points with changing content, so retention forgets some and prune deletes packs.
    for round in 0..5u64 {
        for i in 0..8u64 {
            write(
                &src,
                &format!("big/{i}.bin"),
                &noise(1000 + round * 100 + i, 1 << 20),
            );
        }
        run(&["backup", "run", "photos", "-c", c], &e).ok();
    }
    let mut killed_mid = 0;
    for delay_ms in [0u64, 30, 80, 150, 300, 600, 1200] {
        let mut child = georep(&["backup", "prune", "photos", "-c", c], &e)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn prune");
        // A kill point, not a wait for a state: each delay stops prune at another step.
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().ok().flatten().is_none() {
            child.kill().expect("kill -9");
            killed_mid += 1;
        }
        let _ = child.wait();
        restic_check(&vault, false);
    }
    assert!(killed_mid > 0, "no kill landed while prune ran");
    let p = run(
        &["backup", "prune", "photos", "-c", c, "--output", "json"],
        &e,
    )
    .ok();
    assert!(p.json()["points"]
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p["keep"] == true)));
    restic_check(&vault, true);
    let out = dir.path().join("out");
    run(
        &["backup", "restore", "photos", "-c", c, "--to", s(&out)],
        &e,
    )
    .ok();
    assert_eq!(
        tree(&out),
        tree(&src),
        "the latest point restores byte for byte"
    );
}

#[test]
fn a_scheduled_policy_syncs_at_its_ticks_only() {
    use georep_testkit::{wait_until, Serve};
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("tmp");
    for i in 0..5 {
        write(&dir.path().join("src"), &format!("f{i}"), b"x");
    }
    let cfg = topology(
        dir.path(),
        &[
            ("src", "qc", s(&dir.path().join("src"))),
            ("dst", "we", s(&dir.path().join("dst"))),
        ],
        "name = \"nightly\"\nsource = \"src\"\ndestinations = [\"dst\"]\nevery = \"1h\"",
        "",
    );
    let d = Serve::start(BIN, &cfg, &[]);
    // Never synced: the first sync runs at start.
    assert!(
        wait_until(Duration::from_secs(60), || names(&dir.path().join("dst"))
            .len()
            == 5),
        "the first sync did not run:\n{}",
        d.log_text()
    );
    let st = d.policy("nightly");
    assert_eq!(st.schedule.as_deref(), Some("every 1h"));
    assert_eq!(st.rpo_target_seconds, 7200.0, "default RPO: two intervals");
    assert!(
        st.notifications
            .as_deref()
            .is_some_and(|n| n.starts_with("none: scheduled")),
        "{st:?}"
    );
    let last = chrono::DateTime::parse_from_rfc3339(&st.last_scan.as_ref().expect("scanned").at)
        .expect("time");
    let next = chrono::DateTime::parse_from_rfc3339(st.next_run.as_deref().expect("next run"))
        .expect("time");
    assert_eq!(
        (next - last).num_seconds(),
        3600,
        "the next sync is an interval after the last one began"
    );
    // Changes wait for the tick: no notifications, and events are refused.
    write(&dir.path().join("src"), "late", b"y");
    let (code, body) = d.req(
        reqwest::Method::POST,
        "/api/v1/events/nightly",
        Some(&serde_json::json!([])),
    );
    assert_eq!(code, 409, "{body}");
    assert!(body.to_string().contains("is scheduled"), "{body}");
    assert!(!names(&dir.path().join("dst")).contains("late"));
    // A resync is a tick on demand.
    d.post("/api/v1/policies/nightly/resync", &serde_json::json!({}));
    assert!(
        wait_until(Duration::from_secs(60), || names(&dir.path().join("dst"))
            .contains("late")),
        "the resync did not copy the change"
    );
}

/// A small tmpfs at `at` (root only, as CI runs), unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, opts: &str) -> Self {
        std::fs::create_dir_all(at).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "georep-test", s(at)])
            .status()
            .is_ok_and(|st| st.success());
        assert!(ok, "mounting a {opts} tmpfs failed: this test needs root (CI runs as root); run it as root");
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_or_read_only_repository_store_gives_one_clear_line() {
    let dir = tempfile::tempdir().expect("tmp");
    for i in 0..4u64 {
        write(
            &dir.path().join("src"),
            &format!("f{i}"),
            &noise(i, 1 << 20),
        );
    }
    let cfg = backup_topology(dir.path(), "");
    let c = s(&cfg);
    let vault = dir.path().join("vault");
    {
        let _full = Tmpfs::mount(&vault, "size=1m");
        let (code, out, err) = run(&["backup", "run", "photos", "-c", c], &env(PW)).parts();
        assert_eq!(code, 1, "{out}{err}");
        assert!(err.contains("the store is full"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    {
        let _ro = Tmpfs::mount(&vault, "size=1m,ro");
        let (code, out, err) = run(&["backup", "run", "photos", "-c", c], &env(PW)).parts();
        assert_eq!(code, 2, "{out}{err}");
        assert!(err.contains("read-only"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}
