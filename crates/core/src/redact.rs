//! The one place URLs are made safe to show: every URL georep prints, logs, serializes
//! or puts in an error goes through [`redact_url`].

/// Compares two secrets without an early exit, so response time does not leak how much
/// of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a secret is replaced with.
const MASK: &str = "***";

/// Parts of a query key that mark its value as secret (matched in the lowercased,
/// percent-decoded key, so `sslpassword`, `X-Amz-Signature` and `pass%77ord` all count).
const SECRET_KEY_PARTS: &[&str] = &[
    "password", "passwd", "pwd", "secret", "token", "key", "sig", "sas",
];

/// `url` with every secret in it replaced by `***`: the password in the user info
/// (`postgres://u:***@h/db`) and the value of every query or fragment parameter whose key
/// looks secret ([`SECRET_KEY_PARTS`]). Everything else is kept as written, so the result
/// still says which server and database is meant.
///
/// Works on the text rather than a parsed URL: a URL that a parser refuses (libpq's
/// multi-host `h1:5432,h2:5433`, a stray space) must not come out unredacted. A string
/// without `://` is read as a libpq `key=value` connection string.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_conninfo(url);
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    // The path holds no parameters; the query and the fragment may.
    let (path, params) = match tail.find(['?', '#']) {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    out.push_str(path);
    let mut rest = params;
    while let Some(sep) = rest.chars().next() {
        // `sep` is '?', '#' or '&' (or ';'), then one `key=value` up to the next one.
        out.push(sep);
        rest = &rest[1..];
        let end = rest.find(['&', ';', '#', '?']).unwrap_or(rest.len());
        let (pair, next) = rest.split_at(end);
        out.push_str(&redact_pair(pair));
        rest = next;
    }
    out
}

/// One `key=value` of a query, with the value masked when the key looks secret.
fn redact_pair(pair: &str) -> String {
    match pair.split_once('=') {
        Some((key, _)) if is_secret_key(key) => format!("{key}={MASK}"),
        _ => pair.to_string(),
    }
}

/// Whether a parameter named `key` (possibly percent-encoded) holds a secret.
fn is_secret_key(key: &str) -> bool {
    let key = percent_decode_lossy(key).to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|p| key.contains(p))
}

/// `host=h password='a b' dbname=d` with secret values masked (quoted values included).
fn redact_conninfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else {
            out.push_str(rest);
            break;
        };
        let before = rest[..eq].trim_end();
        let key = &before[before.rfind(char::is_whitespace).map_or(0, |i| i + 1)..];
        out.push_str(&rest[..=eq]);
        let value = rest[eq + 1..].trim_start_matches([' ', '\t']);
        out.push_str(&rest[eq + 1..rest.len() - value.len()]);
        let end = value_end(value);
        let secret = is_secret_key(key);
        if secret {
            out.push_str(MASK);
        } else {
            out.push_str(&value[..end]);
        }
        rest = &value[end..];
    }
    out
}

/// Where a conninfo value ends: after its closing quote, or at the next whitespace.
fn value_end(value: &str) -> usize {
    if let Some(quoted) = value.strip_prefix('\'') {
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '\'' if !escaped => return i + 2,
                _ => escaped = false,
            }
        }
        value.len()
    } else {
        value.find(char::is_whitespace).unwrap_or(value.len())
    }
}

/// `%XX` decoded (bytes that do not decode are kept), `+` read as a space.
fn percent_decode_lossy(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (c, None) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn every_secret_is_masked_and_the_rest_kept() {
        let cases: &[(&str, &str)] = &[
            (
                "postgres://app:s3cret@h:5432/db",
                "postgres://app:***@h:5432/db",
            ),
            ("postgres://app@h/db", "postgres://app@h/db"),
            ("postgres://h/db", "postgres://h/db"),
            ("postgres://h/db?password=x", "postgres://h/db?password=***"),
            (
                "postgres://app@h:5433/orders?sslmode=require&password=pw2",
                "postgres://app@h:5433/orders?sslmode=require&password=***",
            ),
            (
                "postgresql://u:p@h/db?sslpassword=k&application_name=a",
                "postgresql://u:***@h/db?sslpassword=***&application_name=a",
            ),
            ("postgres://h/db?PassWord=x", "postgres://h/db?PassWord=***"),
            (
                "postgres://h/db?pass%77ord=x",
                "postgres://h/db?pass%77ord=***",
            ),
            (
                "postgres://h/db?%70assword=x&a=b",
                "postgres://h/db?%70assword=***&a=b",
            ),
            (
                "postgres://u:p%40ss@h1:5432,h2:5433/db?target_session_attrs=read-write",
                "postgres://u:***@h1:5432,h2:5433/db?target_session_attrs=read-write",
            ),
            ("postgres://u:a@b@h/db", "postgres://u:***@h/db"),
            ("postgres://u:pw@h", "postgres://u:***@h"),
            ("postgres://u:pw@", "postgres://u:***@"),
            (
                "sqlite:///var/lib/georep/state.db",
                "sqlite:///var/lib/georep/state.db",
            ),
            (
                "https://a.blob.core.windows.net/c?sv=2022&sig=abc%2Bd&se=x",
                "https://a.blob.core.windows.net/c?sv=2022&sig=***&se=x",
            ),
            (
                "s3://b/k?X-Amz-Credential=c&X-Amz-Signature=s&X-Amz-Security-Token=t",
                "s3://b/k?X-Amz-Credential=c&X-Amz-Signature=***&X-Amz-Security-Token=***",
            ),
            (
                "x://h/p?passwd=1&pwd=2&secret=3&token=4&apikey=5&sas=6&sslkey=7",
                "x://h/p?passwd=***&pwd=***&secret=***&token=***&apikey=***&sas=***&sslkey=***",
            ),
            ("x://h/p#token=abc", "x://h/p#token=***"),
            ("x://h/p?password", "x://h/p?password"),
            ("x://h/a@b?user=me", "x://h/a@b?user=me"),
            (
                "host=h password=pw dbname=d",
                "host=h password=*** dbname=d",
            ),
            (
                "host=h password = 'a b\\' c' dbname=d",
                "host=h password = *** dbname=d",
            ),
            ("host=h sslpassword=k", "host=h sslpassword=***"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(&redact_url(input), want, "{input}");
        }
    }
}
