//! Throwaway MariaDB servers: `mariadb-install-db` into a temp folder (owned by `mysql`
//! when run as root), `mariadbd` on a free loopback port with the binary log, ROW
//! format and GTID strict mode (what a replication source needs), stopped on drop.
//! Options in `extra` override or add to those (`--binlog-format=STATEMENT` makes a
//! server that fails the prerequisites, say).

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::services::{free_port, is_root, wait_until};

/// One server: one "region".
pub struct MariaDb {
    pub port: u16,
    child: Mutex<Child>,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

fn tool(name: &str) -> &'static str {
    let path = match name {
        "install" => "/usr/bin/mariadb-install-db",
        "server" => "/usr/sbin/mariadbd",
        _ => "/usr/bin/mariadb",
    };
    if !std::path::Path::new(path).exists() {
        panic!("{path} not found: MariaDB is missing; install it: apt-get install -y mariadb-server (scripts/test.sh does)");
    }
    path
}

impl MariaDb {
    /// Starts a server with `server_id`; `extra` are more `mariadbd` options.
    pub fn start(server_id: u32, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("georep-maria")
            .tempdir()
            .expect("temp dir for MariaDB");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("datadir");
        // The server's own temporary tables live here, not in the shared /tmp, where a
        // file of theirs was once removed under a running query (error 6 in CI).
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmpdir");
        if is_root() {
            let _ = Command::new("chown")
                .args(["-R", "mysql:mysql"])
                .arg(dir.path())
                .status();
        }
        // Two installs at once can fail to bootstrap on a busy machine: try again once.
        let install = || {
            Command::new(tool("install"))
                .args([
                    "--no-defaults",
                    "--user=mysql",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ])
                .arg(format!("--datadir={}", data.display()))
                .stdin(Stdio::null())
                .output()
                .expect("run mariadb-install-db")
        };
        let mut out = install();
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&data);
            let _ = std::fs::create_dir_all(&data);
            if is_root() {
                let _ = Command::new("chown")
                    .args(["-R", "mysql:mysql"])
                    .arg(dir.path())
                    .status();
            }
            out = install();
        }
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..3 {
            let port = free_port();
            let d = data.display();
            let mut args = vec![
                "--no-defaults".to_string(),
                "--user=mysql".into(),
                format!("--datadir={d}"),
                format!("--port={port}"),
                "--bind-address=127.0.0.1".into(),
                format!("--socket={d}/sock"),
                format!("--pid-file={d}/pid"),
                format!("--log-error={d}/err.log"),
                format!("--tmpdir={}", tmp.display()),
                format!("--server-id={server_id}"),
                format!("--log-bin={d}/binlog"),
                format!("--relay-log={d}/relay"),
                "--binlog-format=ROW".into(),
                "--log-slave-updates".into(),
                "--gtid-strict-mode=1".into(),
                "--skip-name-resolve".into(),
                "--innodb-buffer-pool-size=32M".into(),
                "--innodb-log-file-size=16M".into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            if let Some(child) = spawn(port, &args) {
                return Self {
                    port,
                    child: Mutex::new(child),
                    args,
                    dir,
                };
            }
        }
        panic!("mariadbd did not start (tried 3 ports)");
    }

    /// SIGKILLs the server (a region's database failing).
    pub fn kill9(&self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on its port, with its data (after [`Self::kill9`]).
    pub fn restart(&self) {
        let mut child = spawn(self.port, &self.args).expect("mariadbd did not restart");
        match self.child.lock() {
            Ok(mut c) => *c = child,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// `mysql://root@127.0.0.1:PORT/DB`
    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        sql_at(self.port, sql)
    }

    /// Runs SQL through the `mariadb` client as root; panics on an error.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("SQL failed on :{}: {sql}: {e}", self.port))
    }

    /// One field of `SHOW SLAVE STATUS` (empty when the server has no source).
    pub fn slave_status(&self, field: &str) -> String {
        let out = Command::new(tool("client"))
            .args(["-uroot", "-h127.0.0.1", "--protocol=TCP", "-E"])
            .arg(format!("-P{}", self.port))
            .args(["-e", "SHOW SLAVE STATUS"])
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().split_once(": "))
            .find(|(k, _)| *k == field)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    }

    /// The server's error log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data/err.log")).unwrap_or_default()
    }
}

/// Starts `mariadbd` with `args` and waits until it answers on `port`.
fn spawn(port: u16, args: &[String]) -> Option<Child> {
    let mut child = Command::new(tool("server"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mariadbd");
    if wait_until(Duration::from_secs(60), || {
        child.try_wait().ok().flatten().is_none() && sql_at(port, "SELECT 1").is_ok()
    }) {
        return Some(child);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs SQL as root through the `mariadb` client on `port`.
fn sql_at(port: u16, sql: &str) -> Result<String, String> {
    mariadb_as(port, "root", "", sql)
}

/// Runs SQL through the `mariadb` client on `port` (a server or a listener) as `user`
/// with `password`: its output, or its error text.
pub fn mariadb_as(port: u16, user: &str, password: &str, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new(tool("client"));
    cmd.arg(format!("-u{user}"));
    if !password.is_empty() {
        cmd.arg(format!("-p{password}"));
    }
    let out = cmd
        .args(["-h127.0.0.1", "--protocol=TCP", "-N", "-B"])
        .arg(format!("-P{port}"))
        .arg("-e")
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The server's own account of a failed test, before its folder goes.
            let log = std::fs::read_to_string(self.dir.path().join("data/err.log"))
                .or_else(|_| std::fs::read_to_string(self.dir.path().join("err.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!(
                "--- mariadbd :{} err.log (last lines) ---\n{}",
                self.port,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let Ok(child) = self.child.get_mut() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let stopped = wait_until(Duration::from_secs(20), || {
            child.try_wait().ok().flatten().is_some()
        });
        if !stopped {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}
