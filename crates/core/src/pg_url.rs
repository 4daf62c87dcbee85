//! Where a PostgreSQL URL connects, read the same way by every part of georep.
//!
//! The failover listeners route to a member's server, the topology checks compare
//! servers, and connections go wherever tokio-postgres sends them. tokio-postgres *adds*
//! `host=`/`port=` parameters to the URL's own host and port (and tries each in turn),
//! while libpq lets them win: a URL that names its server twice, or more than one
//! server, is refused rather than guessed, so that the listener and the connection can
//! never disagree.

/// The one server and database a member URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgEndpoint {
    /// A host name, an IP address (IPv6 without brackets) or a Unix socket folder.
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

impl PgEndpoint {
    /// `host:port` for a TCP connection (`[v6]:port`).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// A Unix socket folder (`host=/var/run/postgresql`), which no TCP listener can
    /// forward to.
    pub fn is_socket(&self) -> bool {
        self.host.starts_with('/')
    }
}

/// Why a URL does not name exactly one server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgUrlError {
    /// Unreadable, or naming its host or port twice: libpq and tokio-postgres would
    /// connect to different places.
    #[error("{0}")]
    Invalid(String),
    /// Several servers (`h1,h2`, `host=a,b`), tried in turn by the connection: fine for
    /// a connection, not for a listener that forwards to one server.
    #[error("{0}")]
    ManyServers(String),
}

/// Reads the server and database of a `postgres://` URL. Errors never echo the URL (it
/// may hold a password).
pub fn pg_endpoint(text: &str) -> Result<PgEndpoint, PgUrlError> {
    use PgUrlError::{Invalid, ManyServers};
    let url =
        url::Url::parse(text).map_err(|e| Invalid(format!("url is not a valid URL ({e})")))?;
    let params = |key: &str| -> Vec<String> {
        url.query_pairs()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
            .collect()
    };
    if !params("hostaddr").is_empty() {
        return Err(Invalid(
            "url: hostaddr= is not supported; put the server's address in the URL's host part"
                .into(),
        ));
    }
    // libpq decodes the host part: `%2Fvar%2Frun%2Fpostgresql` is a socket folder.
    let url_host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .map(|h| percent_decode(h.trim_start_matches('[').trim_end_matches(']')));
    // An empty parameter is no parameter, as in libpq.
    let host_params: Vec<String> = params("host")
        .into_iter()
        .filter(|h| !h.is_empty())
        .collect();
    let host = match (url_host, host_params.as_slice()) {
        (Some(_), [_, ..]) => {
            return Err(Invalid(
                "url names the server twice (in its host part and as host=); keep one".into(),
            ))
        }
        (Some(h), []) => h,
        (None, [one]) => one.clone(),
        (None, []) => {
            return Err(Invalid(
                "url has no host; write postgres://USER@HOST:PORT/DATABASE".into(),
            ))
        }
        (None, [_, _, ..]) => {
            return Err(ManyServers(
                "url: more than one host= parameter names several servers".into(),
            ))
        }
    };
    if host.contains(',') || host.is_empty() {
        return Err(ManyServers(
            "url names several servers (h1,h2); give exactly one host".into(),
        ));
    }
    let port_params: Vec<String> = params("port")
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    let port =
        match (url.port(), port_params.as_slice()) {
            (Some(_), [_, ..]) => {
                return Err(Invalid(
                    "url gives the port twice (after the host and as port=); keep one".into(),
                ))
            }
            (Some(p), []) => p,
            (None, []) => 5432,
            (None, [one]) => one.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                Invalid(format!("url: port={one:?} is not a port number (1-65535)"))
            })?,
            (None, [_, _, ..]) => {
                return Err(ManyServers(
                    "url: more than one port= parameter names several servers".into(),
                ))
            }
        };
    let path = url.path().trim_start_matches('/');
    let dbname = params("dbname")
        .pop()
        .or_else(|| (!path.is_empty()).then(|| percent_decode(path)))
        .or_else(|| params("user").pop())
        .unwrap_or_else(|| percent_decode(url.username()));
    Ok(PgEndpoint { host, port, dbname })
}

/// The URL as tokio-postgres must see it to connect where libpq (and georep's
/// listeners) would: a `host=`/`port=` parameter moved into the address, since
/// tokio-postgres adds such a parameter to the address instead of replacing it (and
/// then refuses "invalid number of ports"). URLs that name several servers, or a Unix
/// socket, are returned as they are.
pub fn pg_connect_url(text: &str) -> String {
    let Ok(ep) = pg_endpoint(text) else {
        return text.to_string();
    };
    let Ok(mut url) = url::Url::parse(text) else {
        return text.to_string();
    };
    let moved = url.query_pairs().any(|(k, _)| k == "host" || k == "port");
    if ep.is_socket() || !moved {
        return text.to_string();
    }
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "host" && k != "port")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let host = if ep.host.contains(':') {
        format!("[{}]", ep.host)
    } else {
        ep.host.clone()
    };
    if url.set_host(Some(&host)).is_err() || url.set_port(Some(ep.port)).is_err() {
        return text.to_string();
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    url.to_string()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(url: &str) -> String {
        pg_endpoint(url)
            .map(|e| format!("{}/{}", e.address(), e.dbname))
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn connections_get_the_parameters_moved_into_the_address() {
        assert_eq!(
            pg_connect_url("postgres://u:pw@127.0.0.1/shop?port=5999&sslmode=disable"),
            "postgres://u:pw@127.0.0.1:5999/shop?sslmode=disable"
        );
        assert_eq!(
            pg_connect_url("postgres:///shop?host=::1&port=6000"),
            "postgres://[::1]:6000/shop"
        );
        for same in [
            "postgres://u@h:1/shop",
            "postgres://u@h1,h2/shop",
            "postgres:///shop?host=/run/postgresql",
        ] {
            assert_eq!(pg_connect_url(same), same);
        }
    }

    #[test]
    fn host_and_port_come_from_one_place() {
        assert_eq!(at("postgres://u@db1/orders"), "db1:5432/orders");
        assert_eq!(at("postgres://u@db1:6000/orders"), "db1:6000/orders");
        assert_eq!(at("postgres://u@[::1]:6000/orders"), "[::1]:6000/orders");
        assert_eq!(
            at("postgres:///orders?host=127.0.0.1&port=5999"),
            "127.0.0.1:5999/orders"
        );
        assert_eq!(at("postgres://db1?dbname=o%20x&user=u"), "db1:5432/o x");
        assert_eq!(at("postgres://u@db1/Or%22ders"), "db1:5432/Or\"ders");
        assert!(pg_endpoint("postgres:///o?host=/run/postgresql")
            .expect("socket")
            .is_socket());
        assert!(pg_endpoint("postgres://%2Fvar%2Frun%2Fpostgresql/o")
            .expect("socket")
            .is_socket());
        assert_eq!(at("postgres://u@db1:6000/orders?port="), "db1:6000/orders");
        assert!(at("postgres:///orders?host=").contains("no host"));
        for bad in [
            "postgres://u@db1:5432/orders?port=5999",
            "postgres://u@db1/orders?host=db2",
            "postgres:///orders?host=a,b",
            "postgres:///orders?host=a&host=b",
            "postgres://u@db1/orders?port=5432,5433",
            "postgres://u@db1/orders?port=0",
            "postgres://u@db1/orders?hostaddr=10.0.0.1",
            "postgres:///orders",
        ] {
            assert!(at(bad).starts_with("error: "), "{bad} -> {}", at(bad));
        }
        assert!(!at("postgres://u:hunter2@db1:1/o?port=2").contains("hunter2"));
    }
}
