//! Throwaway PostgreSQL clusters: `initdb` into a temp folder (as the `postgres` user when
//! run as root, since initdb refuses root), started with `pg_ctl` on a free loopback port
//! with `wal_level=logical`, stopped (immediately) on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::services::{free_port, is_root, wait_until};

/// One cluster: one "region".
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

fn find_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GEOREP_PG_BIN") {
        return PathBuf::from(p);
    }
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(base)
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|p| p.join("initdb").is_file())
        .unwrap_or_else(|| {
            panic!("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: apt-get install -y postgresql (or set GEOREP_PG_BIN)")
        })
}

impl Postgres {
    /// Starts a new cluster; `conf` lines are added to postgresql.conf.
    pub fn start(conf: &[&str]) -> Self {
        let bin = find_bin();
        let dir = tempfile::Builder::new()
            .prefix("georep-pg")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        let as_postgres = is_root();
        if as_postgres {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status();
        }
        let data = dir.path().join("data");
        let mut pg = Self {
            port: 0,
            dir,
            bin,
            as_postgres,
        };
        let out = pg
            .cmd("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut extra = String::from(
            "listen_addresses = '127.0.0.1'\nwal_level = logical\nfsync = off\nmax_replication_slots = 10\nmax_wal_senders = 10\nmax_logical_replication_workers = 8\nmax_sync_workers_per_subscription = 4\nwal_sender_timeout = 10s\nwal_receiver_timeout = 10s\n",
        );
        for c in conf {
            extra.push_str(c);
            extra.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text.push_str(&extra);
        std::fs::write(&conf_path, text).expect("write postgresql.conf");
        for _ in 0..3 {
            pg.port = free_port();
            if pg.try_start() {
                return pg;
            }
        }
        panic!(
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(pg.log()).unwrap_or_default()
        );
    }

    fn cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        c.stdin(Stdio::null());
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("pg.log")
    }

    fn try_start(&self) -> bool {
        let opts = format!("-p {} -k {}", self.port, self.dir.path().display());
        let ok = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok && wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        })
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with psql against `db`, panicking with psql's output on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        psql_at(&self.url(db), sql, true).unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
    }

    /// Creates a database.
    pub fn create_db(&self, db: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
    }

    /// Creates superuser `role`, which must log in over TCP with `password` (SCRAM)
    /// while every other role keeps `trust`: for tests of how passwords reach clients.
    pub fn password_role(&self, role: &str, password: &str) {
        self.psql(
            "postgres",
            &format!("SET password_encryption = 'scram-sha-256'; CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'"),
        );
        let hba = self.data().join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(
            &hba,
            format!("host all {role} 127.0.0.1/32 scram-sha-256\n{text}"),
        )
        .expect("write pg_hba.conf");
        self.psql("postgres", "SELECT pg_reload_conf()");
        let wrong = format!(
            "postgres://{role}:not-{password}@127.0.0.1:{}/postgres",
            self.port
        );
        assert!(
            wait_until(Duration::from_secs(30), || psql_at(
                &wrong, "SELECT 1", false
            )
            .is_err()),
            "pg_hba.conf change not applied"
        );
    }

    /// Stops the server (fast shutdown), keeping its data.
    pub fn stop(&self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        assert!(self.try_start(), "PostgreSQL did not restart");
    }

    /// SIGKILLs the postmaster (a region's database failing).
    pub fn kill9(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.data().join("postmaster.pid")) {
            if let Some(pid) = pid.lines().next() {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs SQL with psql at `url`: its trimmed output, or its error text. As `admin`, a
/// replica's read-only default does not bind the session (the test acts as an
/// operator); otherwise the session is an ordinary client's.
pub fn psql_at(url: &str, sql: &str, admin: bool) -> Result<String, String> {
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        url,
        "-c",
        sql,
    ])
    .stdin(Stdio::null());
    if admin {
        cmd.env("PGOPTIONS", "-c default_transaction_read_only=off");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run psql ({e}); apt-get install -y postgresql-client"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
