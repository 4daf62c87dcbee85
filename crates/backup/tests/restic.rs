//! A repository written by georep through rustic_core is read by Debian's `restic`:
//! its snapshot is listed, `check --read-data` passes, and a restore is byte-identical.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use georep_backup::StoreBackend;
use georep_storage::{Store, StoreOptions};
use rustic_core::{
    BackupOptions, ConfigOptions, Credentials, KeyOptions, PathList, Repository,
    RepositoryBackends, RepositoryOptions, SnapshotOptions,
};

fn restic(repo: &Path, pw_file: &Path, args: &[&str]) -> std::process::Output {
    Command::new("restic")
        .arg("-r")
        .arg(repo)
        .arg("--password-file")
        .arg(pw_file)
        .arg("--no-cache")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run restic ({e}); install it: apt-get install restic"))
}

fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restic_reads_what_georep_writes() {
    let dir = tempfile::tempdir().expect("tmp");
    let (src, repo) = (dir.path().join("src"), dir.path().join("repo"));
    for i in 0..50u32 {
        let p = src.join(format!("d{}/f{i}.bin", i % 5));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        let body: Vec<u8> = (0..(i * 997 + 13)).map(|b| (b * 31 + i) as u8).collect();
        std::fs::write(p, body).expect("write");
    }
    std::fs::create_dir_all(&repo).expect("mkdir repo");
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "correct horse").expect("pw");
    let url = georep_core::StoreUrl::parse(repo.to_str().expect("utf-8")).expect("url");
    let opts = StoreOptions::default();
    let store = Store::open(&url, &opts).expect("open");
    let backend = StoreBackend::new(store, opts, tokio::runtime::Handle::current(), false);
    let source = src.to_str().expect("utf-8").to_string();
    tokio::task::spawn_blocking(move || {
        let backends = RepositoryBackends::new(Arc::new(backend), None);
        let creds = Credentials::password("correct horse");
        let repo = Repository::new(&RepositoryOptions::default(), &backends)
            .expect("repository")
            .init(&creds, &KeyOptions::default(), &ConfigOptions::default())
            .expect("init");
        let repo = repo.to_indexed_ids().expect("index");
        let snap = SnapshotOptions::default().to_snapshot().expect("snapshot");
        let paths = PathList::from_string(&source)
            .expect("paths")
            .sanitize()
            .expect("sanitize");
        repo.backup(&BackupOptions::default(), &paths, snap)
            .expect("backup");
    })
    .await
    .expect("blocking task");

    let out = restic(&repo, &pw_file, &["snapshots", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(1), "{snaps}");
    let out = restic(&repo, &pw_file, &["check", "--read-data"]);
    assert!(
        out.status.success(),
        "restic check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let target = dir.path().join("restored");
    let out = restic(
        &repo,
        &pw_file,
        &[
            "restore",
            "latest",
            "--target",
            target.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // restic restores the absolute path below the target.
    let restored = target.join(src.strip_prefix("/").expect("absolute"));
    assert_eq!(tree(&restored), tree(&src));
}
