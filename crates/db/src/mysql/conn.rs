//! Connections to MariaDB and MySQL members, with errors that say which member failed
//! and why. URLs are `mysql://` or `mariadb://USER[:PASSWORD]@HOST:PORT/DATABASE`, with
//! the mysql client's `ssl-mode` (`DISABLED`, `PREFERRED` (default), `REQUIRED`,
//! `VERIFY_CA`, `VERIFY_IDENTITY`) and `ssl-ca=PATH`; the password may come from
//! `MYSQL_PWD`.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};

use crate::error::{DbError, Result};

/// How much TLS a URL asks for, in the mysql client's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disabled,
    Preferred,
    Required,
    VerifyCa,
    VerifyIdentity,
}

/// A member's URL, parsed: the driver's options and what georep adds. No `Debug`: the
/// driver's options would print the password.
#[derive(Clone)]
pub struct MyUrl {
    opts: Opts,
    pub ssl_mode: SslMode,
    ssl_ca: Option<String>,
    /// The URL with its password hidden, for messages.
    pub shown: String,
}

const URL_HELP: &str = "use mysql://USER[:PASSWORD]@HOST:PORT/DATABASE (or mariadb://...), with ?ssl-mode=DISABLED|PREFERRED|REQUIRED|VERIFY_CA|VERIFY_IDENTITY and ssl-ca=PATH";

/// Parses a member URL; the driver accepts only `mysql://` and its own parameters, so
/// `mariadb://` and the mysql client's `ssl-mode`/`ssl-ca` are handled here.
pub fn parse_url(member: &str, url: &str) -> Result<MyUrl> {
    let shown = georep_core::redact_url(url);
    let bad =
        |why: String| DbError::InvalidConfig(format!("{member}: {why} in {shown}; {URL_HELP}"));
    let mut u = url::Url::parse(url).map_err(|e| bad(format!("not a URL ({e})")))?;
    match u.scheme().to_ascii_lowercase().as_str() {
        "mysql" => {}
        "mariadb" => {
            // `set_scheme` refuses some changes between special and other schemes;
            // these two are both non-special.
            u.set_scheme("mysql")
                .map_err(|()| bad("cannot read the scheme".into()))?;
        }
        other => return Err(bad(format!("the scheme '{other}://' is not MySQL's"))),
    }
    let mut ssl_mode = SslMode::Preferred;
    let mut ssl_ca = None;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (k, v) in u.query_pairs() {
        match k.to_ascii_lowercase().replace('_', "-").as_str() {
            "ssl-mode" => {
                ssl_mode = match v.to_ascii_uppercase().as_str() {
                    "DISABLED" => SslMode::Disabled,
                    "PREFERRED" => SslMode::Preferred,
                    "REQUIRED" => SslMode::Required,
                    "VERIFY_CA" => SslMode::VerifyCa,
                    "VERIFY_IDENTITY" => SslMode::VerifyIdentity,
                    _ => return Err(bad(format!("ssl-mode '{v}' is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"))),
                }
            }
            "ssl-ca" => ssl_ca = Some(v.into_owned()),
            // The driver's TLS switches are georep's to set.
            "require-ssl" | "verify-ca" | "verify-identity" | "built-in-roots" | "prefer-socket"
            | "socket" => {
                return Err(bad(format!(
                    "the parameter '{k}' is not accepted (write ssl-mode instead)"
                )))
            }
            _ => kept.push((k.into_owned(), v.into_owned())),
        }
    }
    u.set_query(None);
    if !kept.is_empty() {
        let mut q = u.query_pairs_mut();
        for (k, v) in &kept {
            q.append_pair(k, v);
        }
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    // The driver echoes parameter values in its errors: only the redacted form is shown.
    let opts = Opts::from_url(u.as_str()).map_err(|e| {
        let kind = match e {
            mysql_async::UrlError::UnknownParameter { .. } => "an unknown parameter",
            mysql_async::UrlError::InvalidParamValue { .. } => "a parameter with an invalid value",
            _ => "not a MySQL URL",
        };
        bad(kind.into())
    })?;
    if opts.db_name().is_none_or(str::is_empty) {
        return Err(bad("no database name (the path)".into()));
    }
    Ok(MyUrl {
        opts,
        ssl_mode,
        ssl_ca,
        shown,
    })
}

/// Shows the redacted URL only.
impl std::fmt::Debug for MyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MyUrl")
            .field("url", &self.shown)
            .field("ssl_mode", &self.ssl_mode)
            .finish()
    }
}

impl MyUrl {
    pub fn host(&self) -> &str {
        self.opts.ip_or_hostname()
    }

    /// `localhost`, `127.x` or `::1`: another server would take it as itself.
    pub fn host_is_loopback(&self) -> bool {
        let h = self.host().trim_start_matches('[').trim_end_matches(']');
        h.eq_ignore_ascii_case("localhost")
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    pub fn port(&self) -> u16 {
        self.opts.tcp_port()
    }

    pub fn user(&self) -> Option<&str> {
        self.opts.user()
    }

    pub fn password(&self) -> Option<String> {
        self.opts
            .pass()
            .map(str::to_string)
            .or_else(|| std::env::var("MYSQL_PWD").ok())
    }

    pub fn db_name(&self) -> &str {
        self.opts.db_name().unwrap_or_default()
    }

    fn builder(&self, tls: bool) -> Result<OptsBuilder> {
        let mut b = OptsBuilder::from_opts(self.opts.clone())
            // The driver would otherwise reconnect through the server's Unix socket
            // after a TCP connect, bypassing a failover listener in front of it.
            .prefer_socket(false)
            .pass(self.password());
        if tls {
            let verify = matches!(self.ssl_mode, SslMode::VerifyCa | SslMode::VerifyIdentity);
            // The driver's PathOrBuf is not exported; it converts from bytes.
            // With ssl-ca, that CA alone is trusted (as the mysql client does); else
            // the system's roots, read once per process (reading them takes ~100 ms of
            // CPU: per connection, it was most of a parallel copy's start), and only
            // when certificates are checked at all.
            let mut roots: Vec<Vec<u8>> = if self.ssl_ca.is_some() || !verify {
                Vec::new()
            } else {
                static NATIVE: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
                NATIVE
                    .get_or_init(|| {
                        rustls_native_certs::load_native_certs()
                            .certs
                            .into_iter()
                            .map(|c| c.as_ref().to_vec())
                            .collect()
                    })
                    .clone()
            };
            if let Some(ca) = &self.ssl_ca {
                let pem = std::fs::read(ca).map_err(|e| {
                    DbError::InvalidConfig(format!(
                        "ssl-ca {ca}: {e}; point it at a PEM file of CA certificates"
                    ))
                })?;
                roots.push(pem);
            }
            let ssl = SslOpts::default()
                .with_disable_built_in_roots(self.ssl_ca.is_some())
                .with_root_certs(roots.into_iter().map(Into::into).collect())
                .with_danger_accept_invalid_certs(!verify)
                .with_danger_skip_domain_validation(self.ssl_mode != SslMode::VerifyIdentity);
            b = b.ssl_opts(Some(ssl));
        }
        Ok(b)
    }
}

/// Connects to `url`, naming `member` in any error. `PREFERRED` tries TLS and falls
/// back to a plain session only when the server offers no TLS at all.
pub async fn connect(member: &str, url: &str) -> Result<Conn> {
    let u = parse_url(member, url)?;
    connect_to(member, &u).await
}

pub async fn connect_to(member: &str, u: &MyUrl) -> Result<Conn> {
    let tls = u.ssl_mode != SslMode::Disabled;
    match open(member, u, tls).await {
        Err(Some(e)) => Err(e),
        Ok(c) => Ok(c),
        Err(None) if u.ssl_mode == SslMode::Preferred => match open(member, u, false).await {
            Ok(c) => Ok(c),
            Err(e) => Err(e.unwrap_or_else(|| unreachable_err(member, u, "no answer".into()))),
        },
        Err(None) => Err(DbError::Unreachable {
            member: member.into(),
            url: u.shown.clone(),
            detail: "the server offers no TLS but ssl-mode asks for it".into(),
        }),
    }
}

fn unreachable_err(member: &str, u: &MyUrl, detail: String) -> DbError {
    DbError::Unreachable {
        member: member.into(),
        url: u.shown.clone(),
        detail,
    }
}

/// `Err(None)`: the server has no TLS (the caller may retry without).
async fn open(member: &str, u: &MyUrl, tls: bool) -> std::result::Result<Conn, Option<DbError>> {
    let opts = u.builder(tls).map_err(Some)?;
    match tokio::time::timeout(Duration::from_secs(15), Conn::new(opts)).await {
        Err(_) => Err(Some(unreachable_err(
            member,
            u,
            "no answer within 15 s".into(),
        ))),
        Ok(Err(mysql_async::Error::Driver(
            mysql_async::DriverError::NoClientSslFlagFromServer,
        ))) => Err(None),
        Ok(Err(e)) => Err(Some(classify(member, &u.shown, e))),
        Ok(Ok(mut c)) => {
            // Members of a failover group are read-only for clients; georep's own
            // session still writes the heartbeat and changes roles.
            c.query_drop("SET SESSION time_zone = '+00:00'")
                .await
                .map_err(|e| Some(DbError::mysql(member, e)))?;
            Ok(c)
        }
    }
}

/// A connection error by cause.
pub(crate) fn classify(member: &str, shown: &str, e: mysql_async::Error) -> DbError {
    if let mysql_async::Error::Server(s) = &e {
        let detail = s.message.clone();
        return match s.code {
            1044 | 1045 | 1698 => DbError::Auth {
                member: member.into(),
                url: shown.into(),
                detail,
            },
            1049 => DbError::InvalidConfig(format!(
                "{member} ({shown}): {detail}; create the database or fix its name in the URL"
            )),
            1040 | 1203 | 1226 => DbError::Busy {
                member: member.into(),
                url: shown.into(),
                detail,
                code: s.code.to_string(),
            },
            _ => DbError::Unreachable {
                member: member.into(),
                url: shown.into(),
                detail,
            },
        };
    }
    DbError::Unreachable {
        member: member.into(),
        url: shown.into(),
        detail: e.to_string(),
    }
}
