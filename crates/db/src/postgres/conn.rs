//! Connections with errors that say which member failed and why.

use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

use crate::error::{DbError, Result};

/// The URL with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Connects to `url`, naming `member` in any error.
pub async fn connect(member: &str, url: &str) -> Result<Client> {
    let shown = redact(url);
    let mut cfg: Config = url.parse().map_err(|e| {
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
    let fut = cfg.connect(NoTls);
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
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
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

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://app:s3cret@h:5432/db"),
            "postgres://app:***@h:5432/db"
        );
        assert_eq!(redact("postgres://app@h/db"), "postgres://app@h/db");
    }
}
