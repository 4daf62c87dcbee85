//! What every end-to-end test shares: one way to run the `georep` binary, one topology
//! file builder, and small filesystem helpers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use georep_testkit::data;
use serde_json::Value;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_georep");

/// `georep ARGS` with a scrubbed environment plus `env`.
pub(crate) fn georep(args: &[&str], env: &[(String, String)]) -> Command {
    georep_testkit::command(BIN, args, env)
}

/// Runs to completion; a run that hangs past a generous guard is a failure, not a wait.
pub(crate) fn run(args: &[&str], env: &[(String, String)]) -> Out {
    let child = georep(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn georep");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(out) => Out(out.expect("wait georep")),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("georep {args:?} did not finish (hang)");
        }
    }
}

/// A finished run.
pub(crate) struct Out(Output);

impl Out {
    pub(crate) fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(self.stdout().trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            )
        })
    }
    /// (exit code, stdout, stderr).
    pub(crate) fn parts(&self) -> (i32, String, String) {
        (self.code(), self.stdout(), self.stderr())
    }

    pub(crate) fn ok(self) -> Self {
        assert_eq!(
            self.code(),
            0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

impl From<Output> for Out {
    fn from(o: Output) -> Self {
        Self(o)
    }
}

/// `Out` reads like the `Output` it holds (`out.status`, `out.stdout`).
impl std::ops::Deref for Out {
    type Target = Output;
    fn deref(&self) -> &Output {
        &self.0
    }
}

/// Writes `content` at `root/rel`, creating folders.
pub(crate) fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, content).expect("write");
}

/// Relative path → content of every regular file under `root`, skipping nothing.
pub(crate) fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    data::files_under(root)
        .into_iter()
        .map(|p| {
            let rel = Path::new(&p)
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let content = std::fs::read(&p).unwrap_or_default();
            (rel, content)
        })
        .collect()
}

/// A topology file, built section by section and written as `DIR/georep.toml`.
#[derive(Default)]
pub(crate) struct TopologyFile {
    text: String,
    regions: BTreeSet<String>,
}

impl TopologyFile {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Raw TOML, as is (`[state]`, `[server]`, a `[[policies]]` body, ...).
    pub(crate) fn raw(mut self, toml: &str) -> Self {
        self.text.push_str(toml);
        if !toml.ends_with('\n') {
            self.text.push('\n');
        }
        self
    }

    /// Declares a region once.
    pub(crate) fn region(mut self, r: &str) -> Self {
        if self.regions.insert(r.to_string()) {
            self.text.push_str(&format!("[regions.{r}]\n"));
        }
        self
    }

    pub(crate) fn store(self, name: &str, region: &str, url: &str) -> Self {
        self.region(region).raw(&format!(
            "[stores.{name}]\nregion = \"{region}\"\nurl = \"{url}\"\n"
        ))
    }

    pub(crate) fn write(self, dir: &Path) -> PathBuf {
        let path = dir.join("georep.toml");
        std::fs::write(&path, self.text).expect("write topology");
        path
    }
}

/// Stores (name, region, url) and one policy body, with the state in `DIR/state`.
pub(crate) fn topology(
    dir: &Path,
    stores: &[(&str, &str, &str)],
    policy: &str,
    extra: &str,
) -> PathBuf {
    let mut t = TopologyFile::new().raw(&format!(
        "[state]\nurl = \"sqlite://state/georep.db\"\n{extra}"
    ));
    for (name, region, url) in stores {
        t = t.store(name, region, url);
    }
    t.raw("[[policies]]").raw(policy).write(dir)
}

/// A database `shop` with its primary in region qc and `replicas` (region, url).
pub(crate) fn db_topology(
    dir: &Path,
    primary: &str,
    replicas: &[(&str, String)],
    extra: &str,
) -> PathBuf {
    let mut members = String::new();
    for (region, url) in replicas {
        members.push_str(&format!(
            "  {{ region = \"{region}\", url = \"{url}\" }},\n"
        ));
    }
    TopologyFile::new()
        .region("qc")
        .region("we")
        .region("ne")
        .raw("[[databases]]\nname = \"shop\"\nengine = \"postgres\"")
        .raw(extra)
        .raw(&format!(
            "primary = {{ region = \"qc\", url = \"{primary}\" }}\nreplicas = [\n{members}]"
        ))
        .write(dir)
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (end entity, not a CA) and
/// its key, as `DIR/NAME.crt` and `DIR/NAME.key`, made by openssl.
pub(crate) fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed to make a test certificate (apt-get install openssl)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}
