//! Deterministic test data: the same seed always gives the same bytes.

use std::path::Path;

use rand::{RngCore, SeedableRng};

/// `len` pseudo-random bytes from `seed`.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Writes `files` (relative path, content) under `root`, creating folders.
pub fn write_tree(root: &Path, files: &[(&str, Vec<u8>)]) {
    for (rel, content) in files {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create test folder");
        }
        std::fs::write(&p, content).expect("write test file");
    }
}

/// The awkward keys every backend must carry: spaces, non-ASCII, deep paths, empty
/// objects, a percent sign, and a key that sorts between a folder and its siblings.
pub fn awkward_tree() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("plain.txt", b"plain".to_vec()),
        ("with space/file name.txt", b"spaces".to_vec()),
        ("unicodé/naïve ✓.bin", bytes(1, 1000)),
        ("deep/a/b/c/d/e/f/g/h/leaf.dat", bytes(2, 4096)),
        ("empty.bin", Vec::new()),
        ("percent%20sign.txt", b"pct".to_vec()),
        ("a-b.txt", b"dash".to_vec()),
        ("a/b.txt", b"slash".to_vec()),
        ("a.txt", b"dot".to_vec()),
    ]
}

/// Generates `count` files of `size` bytes spread over folders of 1000.
pub fn many_files(root: &Path, count: usize, size: usize) {
    let content = bytes(7, size);
    for i in 0..count {
        let p = root.join(format!("d{:04}/f{:07}.bin", i / 1000, i));
        if i % 1000 == 0 {
            std::fs::create_dir_all(p.parent().expect("has parent")).expect("create folder");
        }
        std::fs::write(&p, &content).expect("write file");
    }
}

/// Every file below `root` (any order), as display strings.
pub fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}
