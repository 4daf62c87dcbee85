//! Connections with errors that say which member failed and why.

use std::time::Duration;

use std::sync::OnceLock;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{DbError, Result};

/// Connects to `url`, naming `member` in any error.
pub async fn connect(member: &str, url: &str) -> Result<Client> {
    let shown = georep_core::redact_url(url);
    let mut cfg: Config = georep_core::pg_connect_url(url).parse().map_err(|e| {
        DbError::InvalidConfig(format!(
            "{member}: invalid PostgreSQL URL {shown}: {e}; use postgres://USER[:PASSWORD]@HOST:PORT/DATABASE"
        ))
    })?;
    if cfg.get_password().is_none() {
        if let Ok(p) = std::env::var("PGPASSWORD") {
            cfg.password(p);
        }
    }
    cfg.connect_timeout(Duration::from_secs(10));
    cfg.application_name("georep");
    // TLS as the URL's sslmode asks (default `prefer`); `disable` skips it entirely.
    let tls = match cfg.get_ssl_mode() {
        SslMode::Disable => None,
        _ => Some(tls().map_err(DbError::InvalidConfig)?),
    };
    let fut = async {
        match tls {
            None => cfg
                .connect(NoTls)
                .await
                .map(|(c, conn)| (c, tokio::spawn(conn))),
            Some(t) => cfg
                .connect(t)
                .await
                .map(|(c, conn)| (c, tokio::spawn(conn))),
        }
    };
    let (client, connection) = match tokio::time::timeout(Duration::from_secs(15), fut).await {
        Err(_) => {
            return Err(DbError::Unreachable {
                member: member.into(),
                url: shown,
                detail: "no answer within 15 s".into(),
            })
        }
        Ok(Err(e)) => return Err(classify(member, &shown, e)),
        Ok(Ok(c)) => c,
    };
    tokio::spawn(async move {
        if let Ok(Err(e)) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    // Replicas in a failover group are read-only for client sessions; georep's own
    // session still sets sequences, applies DDL and changes roles there.
    client
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .map_err(|e| DbError::sql(member, e))?;
    Ok(client)
}

fn classify(member: &str, shown: &str, e: tokio_postgres::Error) -> DbError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let detail = db.message().to_string();
        return match code {
            // invalid_password, invalid_authorization_specification
            "28P01" | "28000" => DbError::Auth {
                member: member.into(),
                url: shown.into(),
                detail,
            },
            // invalid_catalog_name: the database does not exist
            "3D000" => DbError::InvalidConfig(format!(
                "{member} ({shown}): {detail}; create it or fix the database name in the URL"
            )),
            c if c.starts_with("53") => DbError::Busy {
                member: member.into(),
                url: shown.into(),
                detail,
                code: c.to_string(),
            },
            _ => DbError::Unreachable {
                member: member.into(),
                url: shown.into(),
                detail,
            },
        };
    }
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        detail = format!("{detail}: {s}");
        src = s.source();
    }
    DbError::Unreachable {
        member: member.into(),
        url: shown.into(),
        detail,
    }
}

/// The TLS connector: system root certificates plus the PEM bundle in `PGSSLROOTCERT`
/// (e.g. a cloud provider's database CA). Certificates are always verified.
fn tls() -> Result<MakeRustlsConnect, String> {
    static CONFIG: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if let Ok(path) = std::env::var("PGSSLROOTCERT") {
                use rustls::pki_types::pem::PemObject;
                let bad = |e: &dyn std::fmt::Display| {
                    format!("PGSSLROOTCERT {path}: {e}; point it at a PEM file of CA certificates")
                };
                let certs =
                    rustls::pki_types::CertificateDer::pem_file_iter(&path).map_err(|e| bad(&e))?;
                for c in certs {
                    roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
                }
            }
            let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth())
                .map_err(|e| format!("TLS set-up failed: {e}"))
        })
        .clone()
        .map(MakeRustlsConnect::new)
}
