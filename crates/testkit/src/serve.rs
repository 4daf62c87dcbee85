//! A running `georep serve` for end-to-end tests: started on a free port, its API
//! reached with a blocking HTTP client, killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use georep_api::paths;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::services::wait_until;

/// A running `georep serve`, killed on drop.
pub struct Serve {
    child: Child,
    pub base: String,
    log: PathBuf,
    token: Option<String>,
    pub http: reqwest::blocking::Client,
}

impl Serve {
    /// Starts `bin serve -c config` on a free port with a scrubbed environment plus `env`
    /// (a `GEOREP_TEST_TOKEN` there becomes the bearer token of every request).
    pub fn start(bin: &str, config: &Path, env: &[(String, String)]) -> Self {
        let log = config.with_extension(format!("{}.log", rand_suffix()));
        let mut child = crate::command(
            bin,
            &[
                "serve",
                "-c",
                config.to_str().expect("utf-8 path"),
                "--listen",
                "127.0.0.1:0",
                "--log-level",
                "info",
            ],
            env,
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn georep serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            // The address line, then (without [server] token) where the write token is.
            for _ in 0..2 {
                if let Some(Ok(l)) = lines.next() {
                    let _ = tx.send(l);
                }
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "georep serve did not start:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let base = line
            .split("API on ")
            .nth(1)
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .trim()
            .to_string();
        let configured = env
            .iter()
            .find(|(k, _)| k == "GEOREP_TEST_TOKEN")
            .map(|(_, v)| v.clone());
        let token = configured.or_else(|| {
            let line = rx.recv_timeout(Duration::from_secs(10)).ok()?;
            let file = line.split("the token in ").nth(1)?;
            std::fs::read_to_string(file.trim())
                .ok()
                .map(|t| t.trim().to_string())
        });
        Self {
            child,
            base,
            log,
            token,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().expect("request to georep serve");
        let code = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The bearer token this client sends: the configured one, or the daemon's generated
    /// write token read from the file it named at start.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn get(&self, path: &str) -> Value {
        let (code, v) = self.req(reqwest::Method::GET, path, None);
        assert_eq!(code, 200, "GET {path}: {v}");
        v
    }

    pub fn post(&self, path: &str, body: &Value) -> Value {
        let (code, v) = self.req(reqwest::Method::POST, path, Some(body));
        assert_eq!(code, 200, "POST {path}: {v}");
        v
    }

    /// `GET path` read as the API contract's type `T` (panics on any other answer).
    pub fn typed<T: DeserializeOwned>(&self, path: &str) -> T {
        let v = self.get(path);
        serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("GET {path}: not the contract's type ({e}): {v:#}"))
    }

    /// A policy's status, typed.
    pub fn policy(&self, name: &str) -> georep_api::PolicyStatus {
        self.typed(&paths::fill(paths::POLICY, name))
    }

    /// A failover group's status, typed.
    pub fn group(&self, name: &str) -> georep_api::GroupStatus {
        self.typed(&paths::fill(paths::GROUP, name))
    }

    /// Waits until no destination of `policy` has pending work and the manifest holds
    /// `objects` objects.
    pub fn converge(&self, policy: &str, objects: Option<u64>) -> georep_api::PolicyStatus {
        let mut last = None;
        let ok = wait_until(Duration::from_secs(120), || {
            let st = self.policy(policy);
            let idle = st.destinations.iter().all(|d| d.pending == 0);
            let done = idle && objects.is_none_or(|n| st.source_objects == n);
            last = Some(st);
            done
        });
        assert!(
            ok,
            "policy {policy} did not converge: {last:#?}\n{}",
            self.log_text()
        );
        last.expect("polled at least once")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the daemon has exited (it crashed, or was told to stop).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, ...) to the daemon.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGTERM and wait: the exit code.
    pub fn terminate(&mut self) -> i32 {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let mut code = None;
        wait_until(Duration::from_secs(60), || {
            code = self.child.try_wait().ok().flatten().and_then(|s| s.code());
            code.is_some()
        });
        code.unwrap_or(-1)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
