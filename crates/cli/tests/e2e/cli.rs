//! End-to-end runs of the `georep` binary against real stores: local folders, two
//! Azurite instances (two regions), moto S3. One test target, small helpers.

use crate::common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use georep_testkit::{data, free_port, wait_until, Azurite, Moto};
use serde_json::Value;

fn count(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no {field}: {v}"))
}

fn awkward_source() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    data::write_tree(dir.path(), &data::awkward_tree());
    dir
}

fn both_env(a: &[(String, String)], b: &[(String, String)]) -> Vec<(String, String)> {
    a.iter().chain(b).cloned().collect()
}

#[test]
fn local_sync_copies_then_skips_and_checks_equal() {
    let src = awkward_source();
    let dst = tempfile::tempdir().expect("tempdir");
    let n = data::awkward_tree().len() as u64;
    let first = run(
        &[
            "sync",
            s(src.path()),
            s(dst.path()),
            "--output",
            "json",
            "--fsync",
        ],
        &[],
    )
    .ok()
    .json();
    assert_eq!(count(&first, "copied"), n);
    assert_eq!(count(&first, "failed"), 0);
    for field in [
        "checked",
        "skipped",
        "deleted",
        "bytes_copied",
        "elapsed_secs",
    ] {
        assert!(
            first.get(field).is_some(),
            "json summary lacks {field}: {first}"
        );
    }
    let second = run(
        &["sync", s(src.path()), s(dst.path()), "--output", "json"],
        &[],
    )
    .ok()
    .json();
    assert_eq!(count(&second, "copied"), 0, "{second}");
    assert_eq!(count(&second, "skipped"), n);
    let check = run(
        &[
            "check",
            s(src.path()),
            s(dst.path()),
            "--checksum",
            "--output",
            "json",
        ],
        &[],
    )
    .ok()
    .json();
    assert_eq!(check["differences"].as_array().map(Vec::len), Some(0));
    for (key, content) in data::awkward_tree() {
        assert_eq!(
            std::fs::read(dst.path().join(key)).expect("copied file"),
            content,
            "{key}"
        );
    }
}

#[test]
fn chain_local_azurite_azurite_s3_local_is_byte_identical() {
    let west = Azurite::start();
    let east = Azurite::start();
    let moto = Moto::start();
    west.create_container("photos");
    east.create_container("photos-dr");
    moto.create_bucket("photos-s3");
    let src = awkward_source();
    let back = tempfile::tempdir().expect("tempdir");
    let n = data::awkward_tree().len() as u64;
    type Hop = (String, String, Vec<(String, String)>);
    let hops: Vec<Hop> = vec![
        (s(src.path()).into(), west.url("photos/in"), west.env()),
        (
            west.url("photos/in"),
            east.url("photos-dr/copy"),
            west.env(),
        ),
        (
            east.url("photos-dr/copy"),
            "s3://photos-s3/x/y".into(),
            both_env(&east.env(), &moto.env()),
        ),
        (
            "s3://photos-s3/x/y".into(),
            s(back.path()).into(),
            moto.env(),
        ),
    ];
    for (from, to, env) in &hops {
        let out = run(&["copy", from, to, "--output", "json"], env)
            .ok()
            .json();
        assert_eq!(count(&out, "copied"), n, "{from} -> {to}: {out}");
        assert_eq!(count(&out, "failed"), 0, "{from} -> {to}: {out}");
        let again = run(&["copy", from, to, "--output", "json"], env)
            .ok()
            .json();
        assert_eq!(count(&again, "copied"), 0, "second {from} -> {to}: {again}");
        let check = run(&["check", from, to, "--checksum"], env);
        assert_eq!(check.code(), 0, "check {from} -> {to}: {}", check.stdout());
    }
    run(&["check", s(src.path()), s(back.path()), "--checksum"], &[]).ok();

    // Deletions propagate through object stores too: Azurite -> Azurite, then S3.
    std::fs::remove_file(src.path().join("plain.txt")).expect("remove");
    std::fs::remove_file(src.path().join("a/b.txt")).expect("remove");
    let both = both_env(&west.env(), &east.env());
    for (from, to, env) in [
        (s(src.path()).to_string(), west.url("photos/in"), west.env()),
        (
            west.url("photos/in"),
            east.url("photos-dr/copy"),
            both.clone(),
        ),
        (
            east.url("photos-dr/copy"),
            "s3://photos-s3/x/y".to_string(),
            both_env(&east.env(), &moto.env()),
        ),
    ] {
        let out = run(&["sync", &from, &to, "--delete", "--output", "json"], &env)
            .ok()
            .json();
        assert_eq!(count(&out, "deleted"), 2, "{from} -> {to}: {out}");
        assert_eq!(count(&out, "copied"), 0, "{from} -> {to}: {out}");
    }
    let left = run(&["ls", "s3://photos-s3/x/y"], &moto.env())
        .ok()
        .stdout();
    assert_eq!(left.lines().count() as u64, n - 2, "{left}");
    assert!(!left.contains("plain.txt"), "{left}");
}

#[test]
fn metadata_survives_azure_to_s3_to_azure() {
    use georep_storage::{ObjectReader, Store, StoreOptions};
    use object_store::{Attribute, Attributes};
    let west = Azurite::start();
    let east = Azurite::start();
    let moto = Moto::start();
    west.create_container("meta");
    east.create_container("meta");
    moto.create_bucket("meta");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let open = |url: &str, env: Vec<(String, String)>| {
        let opts = StoreOptions {
            env: env.into_iter().collect(),
            ..Default::default()
        };
        Store::open(&georep_core::StoreUrl::parse(url).expect("url"), &opts).expect("open")
    };
    let mut attrs = Attributes::new();
    attrs.insert(Attribute::ContentType, "image/webp".into());
    attrs.insert(Attribute::ContentEncoding, "identity".into());
    attrs.insert(Attribute::CacheControl, "public, max-age=3600".into());
    attrs.insert(Attribute::ContentDisposition, "inline".into());
    attrs.insert(Attribute::ContentLanguage, "ar-QA".into());
    attrs.insert(Attribute::Metadata("owner".into()), "sre-team".into());
    let src = open(&west.url("meta"), west.env());
    rt.block_on(src.put(
        "img/a.webp",
        ObjectReader::from_bytes(bytes::Bytes::from_static(b"webp!"), attrs.clone()),
        8 << 20,
        2,
    ))
    .expect("seed object");
    run(
        &["copy", &west.url("meta"), "s3://meta/p"],
        &both_env(&west.env(), &moto.env()),
    )
    .ok();
    run(
        &["copy", "s3://meta/p", &east.url("meta")],
        &both_env(&east.env(), &moto.env()),
    )
    .ok();
    for (store, what) in [
        (open("s3://meta/p", moto.env()), "s3"),
        (open(&east.url("meta"), east.env()), "east azurite"),
    ] {
        let got = rt
            .block_on(store.get("img/a.webp", 1 << 20))
            .expect("get copy");
        for (k, v) in attrs.iter() {
            assert_eq!(got.attributes.get(k), Some(v), "{what}: attribute {k:?}");
        }
    }
    // From local disk, the content type is taken from the extension.
    let dir = tempfile::tempdir().expect("tempdir");
    data::write_tree(dir.path(), &[("page.html", b"<p>hi</p>".to_vec())]);
    run(
        &["copy", s(dir.path()), &east.url("meta/site")],
        &east.env(),
    )
    .ok();
    let got = rt
        .block_on(open(&east.url("meta/site"), east.env()).get("page.html", 1 << 20))
        .expect("get page");
    assert_eq!(
        got.attributes
            .get(&Attribute::ContentType)
            .map(|v| v.as_ref()),
        Some("text/html")
    );
}

#[test]
fn sync_delete_respects_max_delete_dry_run_and_empty_source() {
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    data::write_tree(
        src.path(),
        &[("keep/a", b"a".to_vec()), ("keep/b", b"b".to_vec())],
    );
    data::write_tree(
        dst.path(),
        &[
            ("old/1", b"1".to_vec()),
            ("old/2", b"2".to_vec()),
            ("old/3", b"3".to_vec()),
        ],
    );
    let (sp, dp) = (s(src.path()), s(dst.path()));
    // Without --delete nothing is removed.
    run(&["sync", sp, dp], &[]).ok();
    assert!(dst.path().join("old/1").exists());
    // Dry run lists what would go and changes nothing.
    let dry = run(&["sync", sp, dp, "--delete", "--dry-run"], &[]).ok();
    assert!(
        dry.stdout().contains("would delete old/2"),
        "{}",
        dry.stdout()
    );
    assert!(dst.path().join("old/2").exists());
    // Over the limit: refused, exit 1, nothing deleted.
    for limit in ["2", "50%"] {
        let refused = run(
            &[
                "sync",
                sp,
                dp,
                "--delete",
                "--max-delete",
                limit,
                "--output",
                "json",
            ],
            &[],
        );
        assert_eq!(refused.code(), 1, "limit {limit}");
        let v = refused.json();
        assert_eq!(count(&v, "deleted"), 0);
        assert!(
            v["delete_refused"]
                .as_str()
                .is_some_and(|m| m.contains("max-delete")),
            "{v}"
        );
        assert!(dst.path().join("old/3").exists());
    }
    // Within the limit: deleted.
    let ok = run(
        &[
            "sync",
            sp,
            dp,
            "--delete",
            "--max-delete",
            "3",
            "--output",
            "json",
        ],
        &[],
    )
    .ok()
    .json();
    assert_eq!(count(&ok, "deleted"), 3);
    assert!(!dst.path().join("old/1").exists());
    // An empty source never empties the destination by accident.
    let empty = tempfile::tempdir().expect("tempdir");
    let guarded = run(&["sync", s(empty.path()), dp, "--delete"], &[]);
    assert_eq!(guarded.code(), 1);
    assert!(
        guarded.stderr().contains("source listed no objects"),
        "{}",
        guarded.stderr()
    );
    assert!(dst.path().join("keep/a").exists());
    // ... not even when a count limit would allow it; only 100% says "empty it".
    let guarded = run(
        &[
            "sync",
            s(empty.path()),
            dp,
            "--delete",
            "--max-delete",
            "1000",
        ],
        &[],
    );
    assert_eq!(guarded.code(), 1, "{}", guarded.stderr());
    assert!(dst.path().join("keep/a").exists());
    let emptied = run(
        &[
            "sync",
            s(empty.path()),
            dp,
            "--delete",
            "--max-delete",
            "100%",
            "--output",
            "json",
        ],
        &[],
    )
    .ok()
    .json();
    assert_eq!(count(&emptied, "deleted"), 2);
}

#[test]
fn destination_symlinks_are_never_followed_and_odd_names_never_block_deletes() {
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    data::write_tree(src.path(), &[("a.txt", b"a".to_vec())]);
    data::write_tree(outside.path(), &[("precious.db", b"keep me".to_vec())]);
    std::os::unix::fs::symlink(outside.path(), dst.path().join("linked")).expect("symlink");
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
    )
    .ok()
    .json();
    assert_eq!(count(&out, "deleted"), 0, "{out}");
    assert!(
        outside.path().join("precious.db").exists(),
        "a delete reached through a symlink"
    );

    // A file name with a newline is reported by key; the other keys go on, and so do
    // deletes of keys it cannot be.
    data::write_tree(src.path(), &[("bad\nname", b"x".to_vec())]);
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
    assert_eq!(out.code(), 1, "{}", out.stderr());
    let v = out.json();
    assert!(
        v["skipped_keys"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("control character")),
        "{v}"
    );
    assert!(v["delete_refused"].is_null(), "{v}");
    assert_eq!(v["deleted"], 1, "{v}");
    assert!(!dst.path().join("extra.txt").exists());
}

#[test]
fn include_exclude_and_overwrite_modes() {
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    data::write_tree(
        src.path(),
        &[
            ("images/a.png", b"png".to_vec()),
            ("images/tmp/b.tmp", b"tmp".to_vec()),
            ("docs/c.txt", b"txt".to_vec()),
        ],
    );
    let (sp, dp) = (s(src.path()), s(dst.path()));
    let out = run(
        &[
            "copy",
            sp,
            dp,
            "--include",
            "images/**",
            "--exclude",
            "**/*.tmp",
            "--output",
            "json",
        ],
        &[],
    )
    .ok()
    .json();
    assert_eq!(count(&out, "copied"), 1, "{out}");
    assert!(dst.path().join("images/a.png").exists());
    assert!(!dst.path().join("images/tmp/b.tmp").exists());
    assert!(!dst.path().join("docs/c.txt").exists());

    // Destination changed to different content of the same size and a newer mtime.
    std::fs::write(dst.path().join("images/a.png"), b"PNG").expect("write");
    let never = run(
        &["copy", sp, dp, "--overwrite", "never", "--output", "json"],
        &[],
    )
    .ok()
    .json();
    assert_eq!(count(&never, "copied"), 2, "new files only: {never}");
    assert_eq!(
        std::fs::read(dst.path().join("images/a.png")).expect("read"),
        b"PNG"
    );
    let default = run(&["copy", sp, dp, "--output", "json"], &[]).ok().json();
    assert_eq!(
        count(&default, "copied"),
        0,
        "same size, destination newer: {default}"
    );
    let if_newer = run(
        &[
            "copy",
            sp,
            dp,
            "--overwrite",
            "if-newer",
            "--output",
            "json",
        ],
        &[],
    )
    .ok()
    .json();
    assert_eq!(count(&if_newer, "copied"), 0);
    let checksum = run(&["copy", sp, dp, "--checksum", "--output", "json"], &[])
        .ok()
        .json();
    assert_eq!(count(&checksum, "copied"), 1, "content differs: {checksum}");
    assert_eq!(
        std::fs::read(dst.path().join("images/a.png")).expect("read"),
        b"png"
    );
    let always = run(
        &["copy", sp, dp, "--overwrite", "always", "--output", "json"],
        &[],
    )
    .ok()
    .json();
    assert_eq!(count(&always, "copied"), 3);
}

#[test]
fn check_reports_missing_extra_differs() {
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    data::write_tree(
        src.path(),
        &[
            ("same", b"s".to_vec()),
            ("missing", b"m".to_vec()),
            ("size", b"12".to_vec()),
            ("content", b"ab".to_vec()),
        ],
    );
    data::write_tree(
        dst.path(),
        &[
            ("same", b"s".to_vec()),
            ("extra", b"e".to_vec()),
            ("size", b"123".to_vec()),
            ("content", b"ba".to_vec()),
        ],
    );
    let (sp, dp) = (s(src.path()), s(dst.path()));
    let out = run(&["check", sp, dp, "--output", "json"], &[]);
    assert_eq!(out.code(), 1);
    let v = out.json();
    let kinds: Vec<(String, String)> = v["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            (
                d["key"].as_str().unwrap_or("").into(),
                d["kind"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let want = [
        ("extra", "extra"),
        ("missing", "missing"),
        ("size", "differs"),
    ];
    assert_eq!(
        kinds,
        want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
    );
    let with_sum = run(&["check", sp, dp, "--checksum", "--output", "json"], &[]).json();
    let n = with_sum["differences"].as_array().map(Vec::len);
    assert_eq!(
        n,
        Some(4),
        "content difference found by --checksum: {with_sum}"
    );
    let text = run(&["check", sp, dp], &[]);
    assert!(
        text.stdout().contains("missing missing"),
        "{}",
        text.stdout()
    );
    assert!(text.stdout().contains("NOT equal"), "{}", text.stdout());
}

#[test]
fn ls_lists_key_size_mtime() {
    let src = awkward_source();
    let text = run(&["ls", s(src.path())], &[]).ok().stdout();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), data::awkward_tree().len());
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("deep/a/b/c/d/e/f/g/h/leaf.dat\t4096\t")),
        "{text}"
    );
    let json = run(
        &[
            "ls",
            s(src.path()),
            "--output",
            "json",
            "--include",
            "**/*.txt",
        ],
        &[],
    )
    .ok()
    .stdout();
    for line in json.lines() {
        let v: Value = serde_json::from_str(line).expect("json line");
        assert!(
            v["key"].as_str().is_some_and(|k| k.ends_with(".txt")),
            "{v}"
        );
        assert!(v["size"].is_u64() && v["last_modified"].is_string(), "{v}");
    }
    assert_eq!(json.lines().count(), 6);
}

#[test]
fn bad_input_exits_2_with_clear_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = s(dir.path());
    let inner = format!("{d}/inner");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["sync", d, &inner], "overlap"),
        (vec!["copy", "memory://m/a", "memory://m/a/b"], "overlap"),
        (vec!["copy", "ftp://x/y", d], "unsupported scheme"),
        (vec!["copy", d, "az://"], "names no container"),
        (vec!["copy", d, "s3://Bad_Bucket"], "invalid bucket name"),
        (vec!["copy", d, d, "--include", "a[b"], "invalid glob"),
        (
            vec!["sync", d, d, "--max-delete", "lots"],
            "invalid delete limit",
        ),
        (vec!["copy", d, d, "--bwlimit", "fast"], "invalid size"),
        (vec!["copy", "/definitely/not/here", d], "does not exist"),
        (
            vec![
                "copy",
                d,
                "https://acct.blob.core.windows.net/c1x/p?sv=1&sig=TOPSECRET",
            ],
            "AZURE_STORAGE_SAS_TOKEN",
        ),
        (vec!["copy", d, "az://photos"], "AZURE_STORAGE_ACCOUNT_NAME"),
        (vec!["copy", d, "s3://bucket"], "AWS_ACCESS_KEY_ID"),
        (vec!["nonsense"], "unrecognized subcommand"),
    ];
    for (args, want) in cases {
        let out = run(&args, &[]);
        assert_eq!(out.code(), 2, "{args:?}: stderr {}", out.stderr());
        assert!(
            out.stderr().contains(want),
            "{args:?}: want {want:?} in {}",
            out.stderr()
        );
        assert!(!out.stderr().contains("TOPSECRET") && !out.stdout().contains("TOPSECRET"));
        assert_eq!(
            out.stderr()
                .trim()
                .lines()
                .filter(|l| l.starts_with("georep:"))
                .count()
                .min(1),
            out.stderr().contains("georep:") as usize
        );
    }
}

#[test]
fn unreachable_endpoint_fails_with_exit_3_and_no_secret() {
    let port = free_port(); // nothing listens here
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{port}/acct1/cont/p");
    let env = vec![(
        "AZURE_STORAGE_SAS_TOKEN".to_string(),
        "sv=2022-11-02&ss=b&sig=SUPERSECRETSIG".to_string(),
    )];
    // As source or as destination (even with nothing to copy, it must be listed).
    for args in [["copy", s(dir.path()), &url], ["copy", &url, s(dir.path())]] {
        let out = run(&[&args[..], &["--retry-timeout", "2s"]].concat(), &env);
        assert_eq!(out.code(), 3, "stderr: {}", out.stderr());
        assert!(
            out.stderr().contains("cannot reach store"),
            "{}",
            out.stderr()
        );
        assert!(
            out.stderr().contains(&format!("127.0.0.1:{port}")),
            "names the store: {}",
            out.stderr()
        );
        assert!(
            !out.stderr().contains("SUPERSECRETSIG"),
            "secret leaked: {}",
            out.stderr()
        );
    }
    let s3 = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), "id".to_string()),
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            "S3SECRETVALUE".to_string(),
        ),
        (
            "AWS_ENDPOINT_URL".to_string(),
            format!("http://127.0.0.1:{port}"),
        ),
    ];
    let out = run(&["ls", "s3://bucket/p", "--retry-timeout", "2s"], &s3);
    assert_eq!(out.code(), 3, "stderr: {}", out.stderr());
    assert!(!out.stderr().contains("S3SECRETVALUE"));
}

#[test]
fn refused_credentials_and_missing_containers() {
    let az = Azurite::start();
    let moto = Moto::start();
    az.create_container("exists");
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = vec![(
        "AZURE_STORAGE_ACCOUNT_KEY".to_string(),
        "d3JvbmcgbXkgZnJpZW5kIHdyb25nIGtleSB2YWx1ZSBoZXJlIQ==".to_string(),
    )];
    let out = run(&["ls", &az.url("exists"), "--retry-timeout", "5s"], &wrong);
    assert_eq!(out.code(), 3, "stderr: {}", out.stderr());
    assert!(
        out.stderr().contains("credentials refused"),
        "{}",
        out.stderr()
    );
    assert!(
        !out.stderr().contains("d3JvbmcgbXkg"),
        "key leaked: {}",
        out.stderr()
    );

    let out = run(&["copy", s(dir.path()), &az.url("nosuch")], &az.env());
    let out2 = run(&["ls", &az.url("nosuch")], &az.env());
    for o in [&out, &out2] {
        assert_eq!(o.code(), 2, "stderr: {}", o.stderr());
        assert!(
            o.stderr().contains("container 'nosuch' does not exist"),
            "{}",
            o.stderr()
        );
    }
    let out = run(&["ls", "s3://nosuchbucket"], &moto.env());
    assert_eq!(out.code(), 2, "stderr: {}", out.stderr());
    assert!(
        out.stderr()
            .contains("bucket 'nosuchbucket' does not exist"),
        "{}",
        out.stderr()
    );
}

#[test]
fn unreadable_file_is_listed_as_failed_and_the_rest_copied() {
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    data::write_tree(
        src.path(),
        &[("ok.txt", b"fine".to_vec()), ("secret.txt", b"no".to_vec())],
    );
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    set(&src.path().join("secret.txt"), 0o000);
    set(src.path(), 0o755);
    set(dst.path(), 0o777);
    // root reads anything: run as an unprivileged user when we are root.
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    // The checkout may sit where `nobody` cannot reach (e.g. under /root): run a copy of
    // the binary from a world-readable temp folder.
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let bin = bin_dir.path().join("georep");
    std::fs::copy(env!("CARGO_BIN_EXE_georep"), &bin).expect("copy the binary");
    set(bin_dir.path(), 0o755);
    set(&bin, 0o755);
    let as_user = |args: &[&str]| {
        if is_root {
            Out::from(
                Command::new("runuser")
                    .args(["-u", "nobody", "--", s(&bin)])
                    .args(args)
                    .output()
                    .expect("runuser (util-linux) to run georep as nobody"),
            )
        } else {
            run(args, &[])
        }
    };
    let out = as_user(&["copy", s(src.path()), s(dst.path()), "--output", "json"]);
    assert_eq!(out.code(), 1, "stderr: {}", out.stderr());
    let v = out.json();
    assert_eq!(count(&v, "copied"), 1, "{v}");
    let failures = v["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 1, "{v}");
    assert_eq!(failures[0]["key"], "secret.txt");
    assert!(
        failures[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("ermission")),
        "{v}"
    );
    assert!(!dst.path().join("secret.txt").exists());
    // A failed copy blocks deletes: the destination keeps what it cannot replace.
    data::write_tree(dst.path(), &[("old.txt", b"o".to_vec())]);
    set(&dst.path().join("old.txt"), 0o666);
    let out = as_user(&[
        "sync",
        s(src.path()),
        s(dst.path()),
        "--delete",
        "--output",
        "json",
    ]);
    assert_eq!(out.code(), 1, "stderr: {}", out.stderr());
    let v = out.json();
    assert!(
        v["delete_refused"]
            .as_str()
            .is_some_and(|m| m.contains("failed")),
        "{v}"
    );
    assert!(dst.path().join("old.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_are_retried() {
    let az = Azurite::start();
    az.create_container("flaky");
    let src = awkward_source();
    for status in [503u16, 429] {
        let proxy = georep_testkit::FlakyProxy::start(az.port, 3, status).await;
        let url = format!(
            "http://127.0.0.1:{}/devstoreaccount1/flaky/{status}",
            proxy.port
        );
        let args = [
            "copy".to_string(),
            s(src.path()).to_string(),
            url,
            "--output".into(),
            "json".into(),
        ];
        let env = az.env();
        let out = tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&a, &env)
        })
        .await
        .expect("join");
        let v = out.ok().json();
        assert_eq!(
            count(&v, "copied"),
            data::awkward_tree().len() as u64,
            "{status}: {v}"
        );
        assert_eq!(
            proxy.errors_served(3),
            3,
            "{status}: the proxy really failed requests"
        );
    }
}

/// kill -9 in the middle of a copy, then run it again: no partial object is ever
/// visible, and the re-run moves only what is missing.
fn kill_and_resume(
    dst_url: &str,
    env: &[(String, String)],
    list_dst: &dyn Fn() -> Vec<(String, u64)>,
) {
    let src = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for i in 0..40 {
        files.push((format!("small/{i:03}.bin"), data::bytes(i, 256 * 1024)));
    }
    for i in 0..3 {
        files.push((format!("big/{i}.bin"), data::bytes(100 + i, 24 << 20)));
    }
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    data::write_tree(src.path(), &refs);
    let total = files.len() as u64;
    let mut child = georep(
        &[
            "copy",
            s(src.path()),
            dst_url,
            "--transfers",
            "2",
            "--bwlimit",
            "8M",
            "--part-size",
            "5M",
        ],
        env,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn");
    // Keys sort big/ first: the first object visible means the third big file is mid-upload.
    let started = wait_until(Duration::from_secs(60), || !list_dst().is_empty());
    child.kill().expect("kill -9"); // SIGKILL
    let _ = child.wait();
    assert!(started, "the copy made progress before the kill");
    let after_kill = list_dst();
    assert!(
        (after_kill.len() as u64) < total,
        "killed before the end ({} objects)",
        after_kill.len()
    );
    for (key, size) in &after_kill {
        let want = files
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.len() as u64);
        assert_eq!(Some(*size), want, "visible object {key} is complete");
    }
    let rerun = run(&["copy", s(src.path()), dst_url, "--output", "json"], env)
        .ok()
        .json();
    // A commit already sent when the process died may still land in the store after
    // the listing above, so what was visible is a floor for what is skipped.
    assert_eq!(
        count(&rerun, "copied") + count(&rerun, "skipped"),
        total,
        "every object either copied or skipped: {rerun}"
    );
    assert!(
        count(&rerun, "skipped") >= after_kill.len() as u64,
        "what was visible is not copied again: {rerun}"
    );
    run(&["check", s(src.path()), dst_url, "--checksum"], env).ok();
}

/// `georep ls --output json` as (key, size) pairs.
fn ls_keys(url: &str, env: &[(String, String)]) -> Vec<(String, u64)> {
    run(&["ls", url, "--output", "json"], env)
        .stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            (
                v["key"].as_str().unwrap_or("").to_string(),
                v["size"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn kill_9_mid_copy_to_local_then_resume() {
    let dst = tempfile::tempdir().expect("tempdir");
    let root = s(dst.path()).to_string();
    kill_and_resume(&root, &[], &|| ls_keys(&root, &[]));
    // The killed run's temp files were removed by the re-run (it saw their writer dead).
    let leftovers = data::files_under(dst.path())
        .into_iter()
        .filter(|p| p.contains(georep_storage::TEMP_PREFIX))
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn kill_9_mid_copy_to_azurite_then_resume() {
    let az = Azurite::start();
    az.create_container("resume");
    let url = az.url("resume/job");
    let env = az.env();
    kill_and_resume(&url, &env, &|| ls_keys(&url, &env));
}

/// Every `georep …` command a message or a doc comment tells a user to run exists: its
/// `--help` succeeds.
#[test]
fn every_command_the_code_tells_users_to_run_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    let crates = std::fs::read_dir(root.join("crates")).expect("crates folder");
    for c in crates.flatten() {
        sources(&c.path().join("src"), &mut files);
    }
    let mut hints = std::collections::BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read source");
        for part in text.split('`').skip(1).step_by(2) {
            let Some(rest) = part.strip_prefix("georep ") else {
                continue;
            };
            let words: Vec<&str> = rest
                .split_whitespace()
                .take_while(|w| {
                    w.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                        && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                })
                .collect();
            if !words.is_empty() {
                hints.insert(words.join(" "));
            }
        }
    }
    assert!(hints.len() >= 10, "too few hints found: {hints:?}");
    assert!(hints.contains("resume"), "{hints:?}");
    for h in &hints {
        let mut args: Vec<&str> = h.split(' ').collect();
        args.push("--help");
        let out = georep(&args, &[]).output().expect("run georep");
        assert!(
            out.status.success(),
            "`georep {h}` is named in a message but does not exist: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// ARCHITECTURE.md's crate graph is the one cargo sees.
#[test]
fn the_crate_graph_in_architecture_md_matches_cargo_metadata() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let table = doc
        .split("<!-- crate-graph:start -->")
        .nth(1)
        .and_then(|t| t.split("<!-- crate-graph:end -->").next())
        .expect("crate-graph markers in ARCHITECTURE.md");
    let mut documented = std::collections::BTreeMap::new();
    for line in table.lines().filter(|l| l.starts_with("| georep")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        documented.insert(
            cells[1].to_string(),
            cells[2].replace('—', "").trim().to_string(),
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let mut actual = std::collections::BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let deps = |dev: bool| {
            let mut v: Vec<String> = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| {
                    d["name"].as_str().is_some_and(|n| n.starts_with("georep"))
                        && (d["kind"].as_str() == Some("dev")) == dev
                        && d["kind"].as_str() != Some("build")
                })
                .filter_map(|d| d["name"].as_str().map(str::to_string))
                .collect();
            v.sort();
            v
        };
        let mut cell = deps(false).join(", ");
        let dev = deps(true);
        if !dev.is_empty() {
            cell = format!("{cell} [{}]", dev.join(", ")).trim().to_string();
        }
        actual.insert(p["name"].as_str().unwrap_or_default().to_string(), cell);
    }
    assert_eq!(
        documented, actual,
        "update the crate graph in ARCHITECTURE.md"
    );
}
