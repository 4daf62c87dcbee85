//! Regression tests for the hardening issue: links, modes, odd names and overlapping
//! locations, through the `georep` binary against real local folders and moto S3.

use crate::common::*;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use georep_testkit::{data, Azurite, Moto};
use serde_json::Value;

fn skipped(v: &Value) -> Vec<(String, String)> {
    v["skipped_keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["key"].as_str().unwrap_or_default().to_string(),
                        f["error"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn destination_links_are_never_written_through() {
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    data::write_tree(
        src.path(),
        &[
            ("sub/evil.txt", b"evil".to_vec()),
            ("deep/a/b/evil.txt", b"evil".to_vec()),
            ("target.txt", b"new".to_vec()),
            ("fine.txt", b"fine".to_vec()),
        ],
    );
    data::write_tree(outside.path(), &[("precious", b"keep".to_vec())]);
    std::fs::create_dir_all(dst.path().join("deep/a")).expect("mkdir");
    symlink(outside.path(), dst.path().join("sub")).expect("symlink");
    symlink(outside.path(), dst.path().join("deep/a/b")).expect("symlink");
    symlink(
        outside.path().join("precious"),
        dst.path().join("target.txt"),
    )
    .expect("symlink");
    let out = run(
        &["copy", s(src.path()), s(dst.path()), "--output", "json"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr());
    let v = out.json();
    let keys: Vec<String> = skipped(&v).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        ["deep/a/b/evil.txt", "sub/evil.txt", "target.txt"],
        "{v}"
    );
    assert!(skipped(&v).iter().all(|(_, e)| e.contains("symbolic link")));
    assert!(
        !outside.path().join("evil.txt").exists(),
        "written through a link"
    );
    assert_eq!(
        std::fs::read(outside.path().join("precious")).expect("read"),
        b"keep",
        "a link at the key itself was written through"
    );
    assert!(std::fs::symlink_metadata(dst.path().join("target.txt"))
        .expect("stat")
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read(dst.path().join("fine.txt")).expect("read"),
        b"fine"
    );
    // Nothing half-written is left beside the links.
    let leftovers: Vec<_> = walk(outside.path());
    assert_eq!(leftovers, ["precious"], "{leftovers:?}");
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if e.file_type().expect("type").is_dir() {
                stack.push(p);
            } else {
                out.push(s(p.strip_prefix(root).expect("prefix")).to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn source_links_are_skipped_or_followed_only_inside() {
    let src = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    data::write_tree(src.path(), &[("real/a.txt", b"a".to_vec())]);
    data::write_tree(outside.path(), &[("passwd", b"root:x:0:0".to_vec())]);
    symlink(outside.path().join("passwd"), src.path().join("leak")).expect("symlink");
    symlink(outside.path(), src.path().join("leakdir")).expect("symlink");
    symlink(src.path().join("real/a.txt"), src.path().join("inner")).expect("symlink");
    symlink(src.path(), src.path().join("real/loop")).expect("symlink");

    let dst = tempfile::tempdir().expect("tempdir");
    // A replica of what a link holds is not deleted: the link was not looked into.
    data::write_tree(dst.path(), &[("leakdir/passwd", b"replica".to_vec())]);
    let out = run(
        &[
            "sync",
            s(src.path()),
            s(dst.path()),
            "--delete",
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr());
    let v = out.json();
    assert_eq!(v["deleted"], 0, "{v}");
    assert!(
        v["delete_refused"]
            .as_str()
            .is_some_and(|r| r.contains("symbolic link")),
        "{v}"
    );
    assert_eq!(walk(dst.path()), ["leakdir/passwd", "real/a.txt"]);
    std::fs::remove_dir_all(dst.path().join("leakdir")).expect("rm");
    assert_eq!(
        out.stderr().matches("symbolic links in the source").count(),
        1,
        "reported once: {}",
        out.stderr()
    );

    let dst = tempfile::tempdir().expect("tempdir");
    let out = run(
        &[
            "copy",
            s(src.path()),
            s(dst.path()),
            "--follow-symlinks",
            "--output",
            "json",
        ],
        &[],
    );
    let v = out.json();
    // The link inside the folder is copied as a file; links leading out never are; the
    // loop is reported by name and does not stop the listing.
    assert_eq!(walk(dst.path()), ["inner", "real/a.txt"], "{v}");
    assert_eq!(std::fs::read(dst.path().join("inner")).expect("read"), b"a");
    assert!(
        skipped(&v)
            .iter()
            .any(|(k, e)| k.ends_with("real/loop") && e.contains("loop")),
        "{v}"
    );
    assert!(!walk(dst.path())
        .iter()
        .any(|k| k.contains("passwd") || k == "leak"));
}

#[test]
fn followed_links_keep_key_order_and_a_dangling_one_is_skipped_by_name() {
    let src = tempfile::tempdir().expect("tempdir");
    data::write_tree(
        src.path(),
        &[
            ("d-x", b"dash".to_vec()),
            ("real/f", b"f".to_vec()),
            ("z.txt", b"z".to_vec()),
        ],
    );
    // `d` sorts as `d/`, after `d-x`: the listing must say so even for a link.
    symlink(src.path().join("real"), src.path().join("d")).expect("symlink");
    symlink(src.path().join("gone"), src.path().join("m-dangling")).expect("symlink");
    let dst = tempfile::tempdir().expect("tempdir");
    data::write_tree(
        dst.path(),
        &[
            ("m-dangling", b"replica".to_vec()),
            ("gone.txt", b"old".to_vec()),
        ],
    );
    let out = run(
        &[
            "sync",
            s(src.path()),
            s(dst.path()),
            "--delete",
            "--follow-symlinks",
            "--output",
            "json",
        ],
        &[],
    );
    let v = out.json();
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(v["copied"], 4, "{v}");
    let sk = skipped(&v);
    assert_eq!(sk.len(), 1, "{v}");
    assert!(
        sk[0].0 == "m-dangling" && sk[0].1.contains("points nowhere"),
        "{v}"
    );
    // What the dangling link held is unknown: its replica stays; other deletes go on.
    assert_eq!(v["deleted"], 1, "{v}");
    assert_eq!(v["deletes_held"], 1, "{v}");
    assert!(out.stderr().contains("deletes held"), "{}", out.stderr());
    assert!(!out.stderr().contains("order"), "{}", out.stderr());
    assert_eq!(
        walk(dst.path()),
        ["d-x", "d/f", "m-dangling", "real/f", "z.txt"]
    );
    let out = run(
        &["check", s(src.path()), s(dst.path()), "--follow-symlinks"],
        &[],
    );
    // The only difference is the replica of what the dangling link held.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 differences") && text.contains("m-dangling"),
        "{text}"
    );
}

#[test]
fn modes_are_kept_never_widened() {
    let src = tempfile::tempdir().expect("tempdir");
    data::write_tree(
        src.path(),
        &[
            ("secret.key", b"k".to_vec()),
            ("run.sh", b"#!/bin/sh".to_vec()),
            ("private/notes", b"n".to_vec()),
        ],
    );
    let set = |p: &str, m: u32| {
        std::fs::set_permissions(src.path().join(p), std::fs::Permissions::from_mode(m))
            .expect("chmod")
    };
    set("secret.key", 0o600);
    set("run.sh", 0o700);
    data::write_tree(src.path(), &[("suid", b"x".to_vec())]);
    set("suid", 0o4755);
    set("private/notes", 0o640);
    set("private", 0o700);
    let dst = tempfile::tempdir().expect("tempdir");
    let out = run(&["copy", s(src.path()), s(dst.path())], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr());
    assert_eq!(mode(&dst.path().join("secret.key")), 0o600);
    assert_eq!(mode(&dst.path().join("run.sh")), 0o700);
    assert_eq!(
        mode(&dst.path().join("suid")),
        0o755,
        "a setuid bit is never carried onto a file georep owns"
    );
    assert_eq!(mode(&dst.path().join("private/notes")), 0o640);
    assert_eq!(mode(&dst.path().join("private")), 0o700);
    // A destination folder georep makes is as closed as the source folder.
    std::fs::set_permissions(src.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let fresh = dst.path().join("new/root");
    let out = run(&["copy", s(src.path()), s(&fresh)], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr());
    assert_eq!(mode(&fresh), 0o700);
    // A replaced file keeps a mode an operator narrowed when the source has none to give
    // (object stores): checked in the storage tests.
}

#[test]
fn one_bad_name_never_stops_the_others() {
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    data::write_tree(
        src.path(),
        &[
            ("a.txt", b"a".to_vec()),
            ("m-bad\nname", b"x".to_vec()),
            ("report#1", b"r1".to_vec()),
            ("z.txt", b"z".to_vec()),
        ],
    );
    data::write_tree(dst.path(), &[("extra.txt", b"e".to_vec())]);
    let out = run(
        &[
            "sync",
            s(src.path()),
            s(dst.path()),
            "--delete",
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr());
    let v = out.json();
    assert_eq!(v["copied"], 3, "{v}");
    // A delete is held only for a key the skipped name could be; others go ahead.
    assert_eq!(v["deleted"], 1, "{v}");
    assert!(v["delete_refused"].is_null(), "{v}");
    let sk = skipped(&v);
    assert_eq!(sk.len(), 1, "{v}");
    assert!(sk[0].0.contains("m-bad\\nname") && sk[0].1.contains("control character"));
    assert_eq!(walk(dst.path()), ["a.txt", "report#1", "z.txt"]);
    // The next run has nothing to copy and reports the bad name once again, by key.
    let out = run(
        &["copy", s(src.path()), s(dst.path()), "--output", "json"],
        &[],
    );
    let v = out.json();
    assert_eq!(v["copied"], 0, "{v}");
    assert_eq!(skipped(&v).len(), 1, "{v}");
}

#[test]
fn overlap_is_judged_on_disk_not_on_text() {
    let base = tempfile::tempdir().expect("tempdir");
    data::write_tree(base.path(), &[("data/f.txt", b"f".to_vec())]);
    std::fs::create_dir_all(base.path().join("data/backup")).expect("mkdir");
    symlink(base.path().join("data/backup"), base.path().join("bk")).expect("symlink");
    let out = run(
        &[
            "copy",
            s(&base.path().join("data")),
            s(&base.path().join("bk")),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr());
    assert!(out.stderr().contains("overlap"), "{}", out.stderr());
    assert!(!base.path().join("data/backup/f.txt").exists());

    let cfg = base.path().join("georep.toml");
    std::fs::write(
        &cfg,
        r#"
[regions.a]
[regions.b]
[stores.data]
region = "a"
url = "./data"
[stores.bk]
region = "b"
url = "./bk"
[[policies]]
name = "p"
source = "data"
destinations = ["bk"]
"#,
    )
    .expect("write config");
    let out = run(&["validate", "-c", s(&cfg)], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr());
    assert!(
        out.stderr().contains("overlaps the source"),
        "{}",
        out.stderr()
    );
}

#[test]
fn s3_folder_markers_and_file_folder_clashes_are_reported_once_not_forever() {
    let moto = Moto::start();
    moto.create_bucket("mkb");
    moto.put_raw("mkb", "dir/", b"");
    moto.put_raw("mkb", "dir/x.txt", b"x");
    moto.put_raw("mkb", "empty-marker/", b"");
    moto.put_raw("mkb", "a", b"file a");
    moto.put_raw("mkb", "a/b", b"under a");
    moto.put_raw("mkb", "ok.txt", b"ok");
    let long = "l".repeat(300);
    moto.put_raw("mkb", &long, b"too long for a file name");
    let dst = tempfile::tempdir().expect("tempdir");
    data::write_tree(dst.path(), &[("stale.txt", b"old".to_vec())]);
    let env = moto.env();
    let out = run(
        &[
            "sync",
            "s3://mkb",
            s(dst.path()),
            "--delete",
            "--output",
            "json",
        ],
        &env,
    );
    let v = out.json();
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(v["failed"], 0, "markers are not failures: {v}");
    let mut sk = skipped(&v);
    let too_long = sk.iter().position(|(k, _)| *k == long);
    let (_, why) = sk.remove(too_long.unwrap_or_else(|| panic!("{long} not skipped: {v}")));
    assert!(why.contains("cannot hold the name"), "{why}");
    assert_eq!(sk.len(), 1, "{v}");
    // Copies run in parallel: whichever of `a` and `a/b` lands first stays, the other
    // is reported by key.
    let (kept, lost) = if sk[0].0 == "a" {
        ("a/b", "a")
    } else {
        ("a", "a/b")
    };
    assert_eq!(sk[0].0, lost, "{v}");
    assert!(sk[0].1.contains("cannot"), "{v}");
    assert_eq!(v["deleted"], 1, "the clash does not hold back deletes: {v}");
    assert_eq!(v["vanished"], 0, "markers are never objects: {v}");
    let mut want = vec![kept, "dir/x.txt", "ok.txt"];
    want.sort();
    assert_eq!(walk(dst.path()), want);
}

/// Lists, copies and syncs from `url` whose store holds `a.txt`, `b//x` and `c.txt`:
/// the odd name is reported by key and the others are copied.
fn one_bad_object_name_is_reported_and_the_rest_copied(url: &str, env: &[(String, String)]) {
    let out = run(&["ls", url], env);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr());
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let keys: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split('\t').next())
        .collect();
    assert_eq!(keys, ["a.txt", "c.txt"], "{listed}");
    assert!(out.stderr().contains("b//x"), "{}", out.stderr());

    let dst = tempfile::tempdir().expect("tempdir");
    data::write_tree(dst.path(), &[("stale.txt", b"old".to_vec())]);
    let out = run(
        &["sync", url, s(dst.path()), "--delete", "--output", "json"],
        env,
    );
    let v = out.json();
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(v["copied"], 2, "{v}");
    let sk = skipped(&v);
    assert_eq!(sk.len(), 1, "{v}");
    assert_eq!(sk[0].0, "b//x", "{v}");
    assert!(sk[0].1.contains("rename"), "{v}");
    // No destination key can be what the odd name holds: other deletes go ahead.
    assert_eq!(v["deleted"], 1, "{v}");
    assert_eq!(walk(dst.path()), ["a.txt", "c.txt"]);
}

#[test]
fn one_bad_object_name_never_stops_an_s3_listing() {
    let moto = Moto::start();
    moto.create_bucket("odd");
    moto.put_raw("odd", "a.txt", b"a");
    moto.put_raw("odd", "b//x", b"x");
    moto.put_raw("odd", "c.txt", b"c");
    one_bad_object_name_is_reported_and_the_rest_copied("s3://odd", &moto.env());
}

#[test]
fn one_bad_blob_name_never_stops_an_azure_listing() {
    let az = Azurite::start();
    az.create_container("odd");
    az.put_raw("odd", "a.txt", b"a");
    az.put_raw("odd", "b//x", b"x");
    az.put_raw("odd", "c.txt", b"c");
    one_bad_object_name_is_reported_and_the_rest_copied(&az.url("odd"), &az.env());
}

/// A daemon over two local folders, with no `[server] token`.
fn local_daemon(dir: &Path, extra: &str) -> georep_testkit::Serve {
    std::fs::create_dir_all(dir.join("a")).expect("mkdir");
    let cfg = dir.join("georep.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[regions.r1]
[regions.r2]
[stores.a]
region = "r1"
url = "./a"
[stores.b]
region = "r2"
url = "./b"
[[policies]]
name = "p"
source = "a"
destinations = ["b"]
scan_interval = "1h"
{extra}
"#
        ),
    )
    .expect("write config");
    georep_testkit::Serve::start(env!("CARGO_BIN_EXE_georep"), &cfg, &[])
}

#[test]
fn changing_routes_need_a_token_json_and_no_foreign_origin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = local_daemon(dir.path(), "");
    let token_file = dir.path().join("georep-state/georep.api-token");
    let meta = std::fs::metadata(&token_file).expect("token file beside the state");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file)
        .expect("read")
        .trim()
        .to_string();
    assert_eq!(token.len(), 64);
    assert!(
        !s.log_text().contains(&token),
        "the token itself is never logged"
    );

    let http = reqwest::blocking::Client::new();
    let post = |path: &str, token: Option<&str>, ctype: &str, origin: Option<&str>| {
        let mut r = http
            .post(format!("{}{path}", s.base))
            .header("content-type", ctype)
            .body("{}");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send().expect("post").status().as_u16()
    };
    let json = "application/json";
    for path in [
        "/api/v1/policies/p/resync",
        "/api/v1/policies/p/resume",
        "/api/v1/failover-groups/g/failover",
        "/api/v1/failover-groups/g/reseed",
    ] {
        assert_eq!(post(path, None, json, None), 401, "{path} without a token");
        assert_eq!(post(path, Some("wrong"), json, None), 401, "{path}");
        assert_eq!(post(path, Some(&token), "text/plain", None), 415, "{path}");
        assert_eq!(
            post(path, Some(&token), json, Some("http://evil.example")),
            403,
            "{path} from another origin"
        );
    }
    let host = s.base.trim_start_matches("http://").to_string();
    assert_eq!(
        post(
            "/api/v1/policies/p/resync",
            Some(&token),
            json,
            Some(&format!("http://{host}"))
        ),
        200
    );
    assert_eq!(
        post("/api/v1/policies/p/resync", Some(&token), json, None),
        200
    );
    // Reading stays open on loopback when no token is configured.
    let r = http
        .get(format!("{}/api/v1/policies", s.base))
        .send()
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    // ... but only for loopback names: a page whose DNS name was rebound to 127.0.0.1
    // sends its own name as Host.
    let port = host.rsplit(':').next().unwrap_or_default();
    for (name, want) in [
        (format!("evil.example:{port}"), 403),
        (format!("localhost:{port}"), 200),
        (host.clone(), 200),
    ] {
        let r = http
            .get(format!("{}/api/v1/policies", s.base))
            .header("host", &name)
            .send()
            .expect("get");
        assert_eq!(r.status().as_u16(), want, "Host: {name}");
    }
    // The event webhook needs the token too, as a bearer or in the endpoint URL that
    // Event Grid or SNS is given. (Past the guard, a local source is refused: 400.)
    let event = |query: &str, token: Option<&str>, origin: Option<&str>| {
        let mut r = http
            .post(format!("{}/api/v1/events/p{query}", s.base))
            .header("content-type", json)
            .body("[]");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send().expect("post").status().as_u16()
    };
    // The webhook has its own token, good for nothing else; the write token never
    // travels in a URL.
    let events_file = dir.path().join("georep-state/georep.events-token");
    assert_eq!(
        std::fs::metadata(&events_file)
            .expect("events token file")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let events = std::fs::read_to_string(&events_file)
        .expect("read")
        .trim()
        .to_string();
    assert_ne!(events, token);
    assert_eq!(event("", None, None), 401);
    assert_eq!(event("?token=wrong", None, None), 401);
    assert_eq!(event(&format!("?token={token}"), None, None), 401);
    assert_eq!(event(&format!("?token={events}"), None, None), 400);
    assert_eq!(event("", Some(&events), None), 400);
    assert_eq!(event("", Some(&token), None), 400);
    assert_eq!(
        post("/api/v1/policies/p/resync", Some(&events), json, None),
        401
    );
    assert_eq!(event("", Some(&token), Some("http://evil.example")), 403);
    drop(s);
    // A restart keeps the same token.
    let s = local_daemon(dir.path(), "");
    assert_eq!(
        std::fs::read_to_string(&token_file).expect("read").trim(),
        token
    );
    assert_eq!(post2(&s, &token), 200);
}

fn post2(s: &georep_testkit::Serve, token: &str) -> u16 {
    reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/policies/p/resync", s.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .expect("post")
        .status()
        .as_u16()
}

#[test]
fn the_daemon_skips_bad_names_and_holds_deletes_of_an_empty_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a");
    data::write_tree(
        &a,
        &[
            ("a.txt", b"a".to_vec()),
            ("m-bad\nname", b"x".to_vec()),
            ("report#1", b"r".to_vec()),
            ("z.txt", b"z".to_vec()),
        ],
    );
    let s = local_daemon(dir.path(), "deletes = \"propagate\"");
    // Everything but the bad name arrives, `report#1` included; the scan does not fail.
    let st = s.converge("p", Some(3));
    assert!(
        st.last_scan.as_ref().is_some_and(|l| l.error.is_none()),
        "{st:#?}"
    );
    assert_eq!(walk(&dir.path().join("b")), ["a.txt", "report#1", "z.txt"]);
    assert_eq!(
        s.log_text().matches("control character").count(),
        1,
        "reported once:\n{}",
        s.log_text()
    );
    // The source folder is emptied (as an unmounted volume would look): no delete runs,
    // though 3 is below the percentage guard's floor.
    for k in ["a.txt", "report#1", "z.txt", "m-bad\nname"] {
        std::fs::remove_file(a.join(k)).expect("rm");
    }
    s.post("/api/v1/policies/p/resync", &serde_json::json!({}));
    let held = georep_testkit::wait_until(std::time::Duration::from_secs(30), || {
        let st = s.get("/api/v1/policies/p");
        st["paused"]
            .as_str()
            .is_some_and(|r| r.contains("empty-source guard"))
    });
    assert!(held, "{:#}", s.get("/api/v1/policies/p"));
    assert_eq!(walk(&dir.path().join("b")), ["a.txt", "report#1", "z.txt"]);
}

#[test]
fn files_from_an_object_store_follow_the_umask() {
    let moto = Moto::start();
    moto.create_bucket("umask");
    moto.put_raw("umask", "sub/f.txt", b"f");
    let dst = tempfile::tempdir().expect("tempdir");
    let root = dst.path().join("fresh");
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "umask 077; exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_georep"),
        "copy",
        "s3://umask",
        s(&root),
    ]);
    for (k, v) in moto.env() {
        cmd.env(k, v);
    }
    let out = Out::from(cmd.output().expect("run georep under sh"));
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr());
    assert_eq!(mode(&root.join("sub/f.txt")), 0o600);
    assert_eq!(mode(&root.join("sub")), 0o700);
    assert_eq!(mode(&root), 0o700);
}

/// An S3 endpoint that says every listing goes on but never says where (servers that
/// only speak the old ListObjects behave so): each reply holds one key.
fn endless_s3() -> (String, std::thread::JoinHandle<()>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(false).expect("blocking");
    let handle = std::thread::spawn(move || {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>fake</Name><IsTruncated>true</IsTruncated><Contents><Key>k1</Key><LastModified>2026-11-30T10:00:00.000Z</LastModified><ETag>\"e\"</ETag><Size>1</Size></Contents></ListBucketResult>";
        listener.set_nonblocking(true).expect("nonblocking accept");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let (mut c, _) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::park_timeout(std::time::Duration::from_millis(20));
                    continue;
                }
                Err(_) => return,
            };
            let _ = c.set_nonblocking(false);
            let mut r = BufReader::new(c.try_clone().expect("clone"));
            let mut line = String::new();
            let mut first = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                if first.is_empty() {
                    first = line.clone();
                }
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            if first.starts_with("QUIT") {
                return;
            }
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (format!("http://{addr}"), handle)
}

#[test]
fn a_listing_cut_short_by_the_endpoint_never_deletes() {
    let (endpoint, server) = endless_s3();
    let dst = tempfile::tempdir().expect("tempdir");
    data::write_tree(
        dst.path(),
        &[
            ("k1", b"1".to_vec()),
            ("k2", b"2".to_vec()),
            ("k3", b"3".to_vec()),
        ],
    );
    let env = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), "t".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "s".to_string()),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL".to_string(), endpoint.clone()),
    ];
    let out = run(
        &[
            "sync",
            "s3://fake",
            s(dst.path()),
            "--delete",
            "--output",
            "json",
        ],
        &env,
    );
    assert_ne!(out.status.code(), Some(0), "{}", out.stderr());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), out.stderr());
    assert!(text.contains("cut short"), "{text}");
    assert_eq!(walk(dst.path()), ["k1", "k2", "k3"]);
    if let Ok(mut c) = std::net::TcpStream::connect(endpoint.trim_start_matches("http://")) {
        use std::io::Write;
        let _ = c.write_all(b"QUIT / HTTP/1.1\r\n\r\n");
    }
    let _ = server.join();
}
