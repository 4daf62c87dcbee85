//! `[[databases]]`: PostgreSQL databases kept as geo-replicas, from a primary in one
//! region to replicas in others. The model, and reading it field by field like the other
//! sections, so that every bad value is reported with its place.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Serialize, Serializer};
use toml::de::DeValue;
use toml::Spanned;

use super::policies::duration;
use super::read::{expand_field, kind, valid_name, Ctx, Section, Span, NAME_RULE};
use super::Region;

/// A database replicated from its primary to replicas in other regions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Database {
    pub name: String,
    pub engine: DbEngine,
    /// The tables replicated, each as `schema.table` in lower case, in file order.
    /// Empty: every table of the schemas in `schemas`.
    pub tables: Vec<String>,
    /// The schemas whose tables are all replicated when `tables` is empty (lower case).
    pub schemas: Vec<String>,
    /// How far behind the primary a replica may be before it is reported as behind.
    #[serde(serialize_with = "super::duration")]
    pub rpo: Duration,
    /// How often the replicas' sequences are pushed ahead of the primary's.
    #[serde(serialize_with = "super::duration")]
    pub sequence_sync_interval: Duration,
    /// How far ahead of the primary's the replicas' sequences are kept (`>= 0`).
    pub sequence_margin: i64,
    pub primary: DbMember,
    /// At least one, in file order, with distinct names and distinct databases.
    pub replicas: Vec<DbMember>,
}

impl Database {
    pub const DEFAULT_RPO: Duration = Duration::from_secs(60);
    pub const DEFAULT_SEQUENCE_SYNC_INTERVAL: Duration = Duration::from_secs(30);
    pub const DEFAULT_SEQUENCE_MARGIN: i64 = 1000;
    pub const DEFAULT_SCHEMA: &'static str = "public";
    /// The name of every database's primary member; no replica may take it.
    pub const PRIMARY_NAME: &'static str = "primary";

    /// `host:port` of the server a member URL reaches over TCP, as a failover
    /// listener forwards to it (`None`: a Unix socket or an unreadable URL).
    pub fn address(&self, url: &str) -> Option<String> {
        if self.engine.is_mysql_family() {
            return mysql_url(url).ok().map(|t| t.0);
        }
        crate::pg_endpoint(url)
            .ok()
            .filter(|e| !e.is_socket())
            .map(|e| e.address())
    }

    /// The member called `name`: `"primary"` or one of the replicas.
    pub fn member(&self, name: &str) -> Option<&DbMember> {
        if name == self.primary.name {
            return Some(&self.primary);
        }
        self.replicas.iter().find(|r| r.name == name)
    }

    /// The publication on the primary: `georep_<db>`.
    pub fn publication_name(&self) -> String {
        publication_name(&self.name)
    }

    /// The subscription on member `member`, which is also its slot's name on the
    /// primary: `georep_<db>_<member>`.
    pub fn subscription_name(&self, member: &str) -> String {
        subscription_name(&self.name, member)
    }

    /// The subscription (and slot) name of every member, primary included: after a
    /// failover any member may follow another. Reseed and teardown match these exactly.
    pub fn subscription_names(&self) -> Vec<String> {
        std::iter::once(&self.primary)
            .chain(&self.replicas)
            .map(|m| self.subscription_name(&m.name))
            .collect()
    }
}

fn publication_name(db: &str) -> String {
    object_name(&format!("georep_{db}"))
}

fn subscription_name(db: &str, member: &str) -> String {
    object_name(&format!("georep_{db}_{member}"))
}

/// A PostgreSQL object name georep creates: lower case, every character other than an
/// ASCII letter or digit read as `_`, at most 63 bytes. Different topology names can give
/// the same object name (`orders` + `eu-west`, `orders-eu` + `west`), so validation
/// refuses a topology where two would.
fn object_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(63);
    out
}

/// The database server software.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DbEngine {
    Postgres,
    /// MariaDB 10.5 or later (native GTID replication).
    #[serde(rename = "mariadb")]
    MariaDb,
    /// MySQL 8.0 or later.
    #[serde(rename = "mysql")]
    MySql,
}

impl DbEngine {
    /// The word used for it in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            DbEngine::Postgres => "postgres",
            DbEngine::MariaDb => "mariadb",
            DbEngine::MySql => "mysql",
        }
    }

    /// MariaDB and MySQL: binlog replication, server-wide, by GTID.
    pub fn is_mysql_family(self) -> bool {
        matches!(self, DbEngine::MariaDb | DbEngine::MySql)
    }
}

impl std::fmt::Display for DbEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The primary or one replica of a [`Database`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DbMember {
    /// `"primary"` for the primary; for a replica its `name`, by default its region.
    pub name: String,
    pub region: String,
    /// `postgres://...` or `postgresql://...` as written, after `${NAME}` expansion; may
    /// hold a password, so show [`DbMember::redacted_url`] instead. Serialized redacted.
    #[serde(serialize_with = "redacted")]
    pub url: String,
}

impl DbMember {
    /// The URL with any password (in the user info or a `password=` parameter) replaced
    /// by `***`, for output and logs.
    pub fn redacted_url(&self) -> String {
        crate::redact_url(&self.url)
    }
}

fn redacted<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::redact_url(url))
}

const DATABASE_FIELDS: &[&str] = &[
    "name",
    "engine",
    "tables",
    "schemas",
    "rpo",
    "sequence_sync_interval",
    "sequence_margin",
    "primary",
    "replicas",
];
const PRIMARY_FIELDS: &[&str] = &["region", "url"];
const REPLICA_FIELDS: &[&str] = &["name", "region", "url"];

const URL_EXAMPLE: &str = "\"postgres://USER@HOST:5432/DATABASE\"";
const URL_HELP: &str = "write postgres://USER@HOST:PORT/DATABASE (or postgresql://...), with any password from ${NAME}";
const MEMBER_SHAPE: &str = "{ region = \"REGION\", url = \"postgres://USER@HOST:5432/DATABASE\" }";
const IDENT_RULE: &str = "each part starts with a letter or '_' and has only letters, digits, '_' and '$' (folded to lower case), or is a \"Quoted Name\" kept exactly (without '\"' or '.' inside)";
/// PostgreSQL cuts longer identifiers short, so a longer name could never match.
const MAX_IDENT: usize = 63;

pub(super) struct DraftDatabase {
    what: String,
    span: Span,
    name: Option<Spanned<String>>,
    engine: Option<DbEngine>,
    tables: Vec<String>,
    schemas: Vec<String>,
    rpo: Duration,
    sequence_sync_interval: Duration,
    sequence_margin: i64,
    primary: Option<DraftMember>,
    replicas: Vec<DraftMember>,
}

struct DraftMember {
    what: String,
    /// For a replica without `name`, its region (so the span is the region's).
    name: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    /// After expansion, when valid; the span is the field's.
    url: Option<Spanned<String>>,
    /// Which server and database the URL points at, for the "same database" checks.
    target: Option<Target>,
}

impl DraftDatabase {
    /// Its name, when it has a valid one.
    pub(super) fn name(&self) -> Option<&str> {
        self.name.as_ref().map(|n| n.get_ref().as_str())
    }

    /// Members a failover group's TCP listeners cannot forward to, with the url's span
    /// and why: a Unix socket, or several servers.
    pub(super) fn unroutable_members(&self) -> Vec<(&str, Span, String)> {
        self.primary
            .iter()
            .chain(&self.replicas)
            .filter_map(|m| {
                let url = m.url.as_ref()?;
                if self.engine.is_some_and(DbEngine::is_mysql_family) {
                    return None;
                }
                let why = match crate::pg_endpoint(url.get_ref()) {
                    Ok(ep) if ep.is_socket() => {
                        "this url reaches its server through a Unix socket (host=/...); give the server's host name or address".to_string()
                    }
                    Ok(_) => return None,
                    Err(e) => format!("{e}; a listener forwards to one server"),
                };
                Some((m.what.as_str(), url.span(), why))
            })
            .collect()
    }

    /// `None` only when a required piece is missing, which has been reported.
    pub(super) fn finish(self) -> Option<Database> {
        Some(Database {
            name: self.name?.into_inner(),
            engine: self.engine?,
            tables: self.tables,
            schemas: self.schemas,
            rpo: self.rpo,
            sequence_sync_interval: self.sequence_sync_interval,
            sequence_margin: self.sequence_margin,
            primary: self.primary?.finish()?,
            replicas: self
                .replicas
                .into_iter()
                .map(DraftMember::finish)
                .collect::<Option<Vec<_>>>()?,
        })
    }
}

impl DraftMember {
    fn finish(self) -> Option<DbMember> {
        Some(DbMember {
            name: self.name?.into_inner(),
            region: self.region?.into_inner(),
            url: self.url?.into_inner(),
        })
    }
}

pub(super) fn read(
    ctx: &mut Ctx<'_>,
    top: &Section<'_, '_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<DraftDatabase> {
    let Some(value) = top.get("databases") else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        ctx.error(
            Some(value.span()),
            "[[databases]]",
            format!(
                "expected a list of databases, found {}; write each database as a [[databases]] table (double brackets)",
                kind(value.get_ref())
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("database #{}", i + 1);
        if let Some(mut sec) = Section::new(ctx, item, what, "[[databases]]") {
            let name = sec.string(ctx, "name", "\"orders\"");
            if let Some(name) = &name {
                sec.what = format!("database '{}'", name.get_ref());
            }
            out.push(database(ctx, &sec, name, env));
        }
    }
    out
}

fn database(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    name: Option<Spanned<String>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> DraftDatabase {
    let what = sec.what.clone();
    sec.check_keys(ctx, "field", DATABASE_FIELDS);
    match &name {
        Some(n) if !valid_name(n.get_ref()) => ctx.error(
            Some(n.span()),
            &what,
            format!("invalid database name: {NAME_RULE}"),
        ),
        Some(_) => {}
        None if sec.get("name").is_none() => ctx.error(
            Some(sec.span.clone()),
            &what,
            "missing `name`; add name = \"NAME\" (it names the database in the CLI, API and metrics)",
        ),
        None => {}
    }
    let mut d = DraftDatabase {
        what: what.clone(),
        span: sec.span.clone(),
        name,
        engine: engine(ctx, sec),
        tables: tables(ctx, sec),
        schemas: schemas(ctx, sec),
        rpo: Database::DEFAULT_RPO,
        sequence_sync_interval: Database::DEFAULT_SEQUENCE_SYNC_INTERVAL,
        sequence_margin: Database::DEFAULT_SEQUENCE_MARGIN,
        primary: None,
        replicas: Vec::new(),
    };
    if d.engine.is_some_and(DbEngine::is_mysql_family) {
        for (key, why) in [
            (
                "tables",
                "MariaDB and MySQL replicate the whole server (every database but the system ones)",
            ),
            (
                "schemas",
                "MariaDB and MySQL replicate the whole server (every database but the system ones)",
            ),
            (
                "sequence_sync_interval",
                "AUTO_INCREMENT values travel with the rows",
            ),
            (
                "sequence_margin",
                "AUTO_INCREMENT values travel with the rows",
            ),
        ] {
            if let Some(v) = sec.get(key) {
                ctx.error(
                    Some(v.span()),
                    &what,
                    format!(
                        "`{key}` does not apply to engine \"{}\": {why}; remove it",
                        d.engine.map(DbEngine::as_str).unwrap_or_default()
                    ),
                );
            }
        }
    }
    if let Some(rpo) = duration(ctx, sec, "rpo", "\"1m\"", Duration::from_secs(1)) {
        d.rpo = rpo;
    }
    let key = "sequence_sync_interval";
    if let Some(every) = duration(ctx, sec, key, "\"30s\"", Duration::from_secs(1)) {
        d.sequence_sync_interval = every;
    }
    if let Some(n) = sec.integer(ctx, "sequence_margin", "1000") {
        if *n.get_ref() < 0 {
            ctx.error(
                Some(n.span()),
                &what,
                format!(
                    "sequence_margin = {} is negative; use 0 or more (default {}): how far ahead of the primary's the replicas' sequences are kept",
                    n.get_ref(),
                    Database::DEFAULT_SEQUENCE_MARGIN
                ),
            );
        } else {
            d.sequence_margin = *n.get_ref();
        }
    }
    match sec.get("primary") {
        Some(value) => {
            let shape = format!("primary = {MEMBER_SHAPE}");
            if let Some(m) = Section::new(ctx, value, format!("{what}, primary"), &shape) {
                d.primary = Some(member(ctx, m, &what, true, d.engine, env));
            }
        }
        None => ctx.error(
            Some(sec.span.clone()),
            &what,
            format!("missing `primary`; add primary = {MEMBER_SHAPE}"),
        ),
    }
    d.replicas = replicas(ctx, sec, d.engine, env);
    same_names(ctx, &d);
    same_databases(ctx, &d);
    d
}

fn engine(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Option<DbEngine> {
    let Some(engine) = sec.string(ctx, "engine", "\"postgres\"") else {
        if sec.get("engine").is_none() {
            ctx.error(
                Some(sec.span.clone()),
                &sec.what,
                "missing `engine`; add engine = \"postgres\", \"mariadb\" or \"mysql\"",
            );
        }
        return None;
    };
    let word = engine.get_ref().as_str();
    let message = match word {
        "postgres" => return Some(DbEngine::Postgres),
        "mariadb" => return Some(DbEngine::MariaDb),
        "mysql" => return Some(DbEngine::MySql),
        _ => format!(
            "engine \"{word}\" is not a database engine georep knows; write engine = \"postgres\", \"mariadb\" or \"mysql\" (lower case)"
        ),
    };
    ctx.error(Some(engine.span()), &sec.what, message);
    None
}

/// `tables`, each normalized to `schema.table`; empty when not given.
fn tables(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Some(list) = sec.strings(ctx, "tables", "[\"public.orders\"]") else {
        return out;
    };
    if list.get_ref().is_empty() {
        ctx.error(
            Some(list.span()),
            &sec.what,
            "`tables` lists no tables; list at least one (e.g. tables = [\"public.orders\"]), or remove `tables` to replicate every table of `schemas`",
        );
    }
    for table in list.into_inner() {
        match table_name(table.get_ref()) {
            Ok(name) if out.contains(&name) => ctx.error(
                Some(table.span()),
                &sec.what,
                format!("table '{name}' is listed twice in `tables`; remove one"),
            ),
            Ok(name) => out.push(name),
            Err(message) => ctx.error(Some(table.span()), &sec.what, message),
        }
    }
    out
}

/// `schemas`, or the default `["public"]`.
fn schemas(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(list) = sec.strings(ctx, "schemas", "[\"public\"]") {
        if sec.get("tables").is_some() {
            ctx.error(
                Some(list.span()),
                &sec.what,
                "`schemas` is only used when `tables` is omitted; remove one of them (a table may name its schema: \"sales.orders\")",
            );
        } else if list.get_ref().is_empty() {
            ctx.error(
                Some(list.span()),
                &sec.what,
                "`schemas` lists no schemas; list at least one, or remove it for the default [\"public\"]",
            );
        }
        for schema in list.into_inner() {
            match identifier(schema.get_ref()) {
                Ok(name) if out.contains(&name) => ctx.error(
                    Some(schema.span()),
                    &sec.what,
                    format!("schema '{name}' is listed twice in `schemas`; remove one"),
                ),
                Ok(name) => out.push(name),
                Err(why) => ctx.error(
                    Some(schema.span()),
                    &sec.what,
                    format!(
                        "schema '{}' is not a schema name ({why}): {IDENT_RULE}",
                        schema.get_ref()
                    ),
                ),
            }
        }
    }
    if out.is_empty() {
        out.push(Database::DEFAULT_SCHEMA.to_string());
    }
    out
}

/// `schema.table`, or `table` in the schema `public`, as the catalog spells it: an
/// unquoted part folded to lower case as PostgreSQL folds it, a `"Quoted"` part exactly.
/// The result joins the two parts with `.`, so no part may contain one.
pub fn table_name(text: &str) -> Result<String, String> {
    let parts = split_qualified(text).map_err(|why| {
        format!("table '{text}' is not `schema.table` or `table` ({why}): {IDENT_RULE}")
    })?;
    let (schema, table) = match parts.as_slice() {
        [table] => (Database::DEFAULT_SCHEMA, table.as_str()),
        [schema, table] => (schema.as_str(), table.as_str()),
        _ => {
            return Err(format!(
                "table '{text}' is not `schema.table` or `table` (which means public.table); {IDENT_RULE}"
            ))
        }
    };
    Ok(format!("{schema}.{table}"))
}

/// The dot-separated parts of a name, each an identifier (see [`identifier`]); dots
/// inside quotes do not separate.
fn split_qualified(text: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => {
                parts.push(identifier(&text[start..i])?);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(identifier(&text[start..])?);
    Ok(parts)
}

/// One identifier as the catalog spells it: unquoted, folded to lower case; in double
/// quotes, exactly as written. The error says what is wrong with it.
fn identifier(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("a name is empty".to_string());
    }
    let name = if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        // `"` and `.` inside would make `schema.table` ambiguous wherever it is read.
        if inner.is_empty() || inner.contains(['"', '.']) || inner.chars().any(char::is_control) {
            return Err(format!(
                "{text} is empty or has a '\"', '.' or control character inside the quotes"
            ));
        }
        inner.to_string()
    } else {
        let mut bytes = text.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') {
            return Err(format!("'{text}' has a character not allowed"));
        }
        text.to_ascii_lowercase()
    };
    if name.len() > MAX_IDENT {
        return Err(format!(
            "'{text}' is longer than {MAX_IDENT} characters, which PostgreSQL cuts short"
        ));
    }
    Ok(name)
}

fn replicas(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
    engine: Option<DbEngine>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<DraftMember> {
    let Some(value) = sec.get("replicas") else {
        ctx.error(
            Some(sec.span.clone()),
            &sec.what,
            format!("has no replicas; add replicas = [{MEMBER_SHAPE}] (one table per replica)"),
        );
        return Vec::new();
    };
    let items = match value.get_ref() {
        DeValue::Array(items) if items.is_empty() => {
            ctx.error(
                Some(value.span()),
                &sec.what,
                format!("has no replicas; list at least one, e.g. replicas = [{MEMBER_SHAPE}]"),
            );
            return Vec::new();
        }
        DeValue::Array(items) => items,
        other => {
            ctx.error(
                Some(value.span()),
                &sec.what,
                format!(
                    "`replicas` must be a list of tables, not {}; e.g. replicas = [{MEMBER_SHAPE}]",
                    kind(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("{}, replica #{}", sec.what, i + 1);
        if let Some(m) = Section::new(ctx, item, what, MEMBER_SHAPE) {
            out.push(member(ctx, m, &sec.what, false, engine, env));
        }
    }
    out
}

/// The primary (`primary`) or one replica; `db` names the database, for messages.
fn member(
    ctx: &mut Ctx<'_>,
    mut sec: Section<'_, '_>,
    db: &str,
    primary: bool,
    engine: Option<DbEngine>,
    env: &dyn Fn(&str) -> Option<String>,
) -> DraftMember {
    let given = if primary {
        None
    } else {
        sec.string(ctx, "name", "\"we\"")
    };
    let region = sec.string(ctx, "region", "\"west-europe\"");
    let name = if primary {
        Some(Spanned::new(
            sec.span.clone(),
            Database::PRIMARY_NAME.to_string(),
        ))
    } else {
        given.clone().or_else(|| region.clone())
    };
    if let (false, Some(n)) = (primary, &name) {
        sec.what = format!("{db}, replica '{}'", n.get_ref());
    }
    let what = sec.what.clone();
    sec.check_keys(
        ctx,
        "field",
        if primary {
            PRIMARY_FIELDS
        } else {
            REPLICA_FIELDS
        },
    );
    if let Some(n) = &given {
        if !valid_name(n.get_ref()) {
            ctx.error(
                Some(n.span()),
                &what,
                format!("invalid replica name: {NAME_RULE}"),
            );
        }
    }
    if let (false, Some(n)) = (primary, &name) {
        if n.get_ref() == Database::PRIMARY_NAME {
            let why = if given.is_some() {
                "the name"
            } else {
                "the name (by default its region)"
            };
            ctx.error(
                Some(n.span()),
                &what,
                format!("{why} 'primary' is reserved for the primary; give the replica another name = \"...\""),
            );
        }
    }
    if region.is_none() && sec.get("region").is_none() {
        ctx.error(
            Some(sec.span.clone()),
            &what,
            "missing `region`; add region = \"NAME\" naming one of the [regions.NAME] tables",
        );
    }
    let mut m = DraftMember {
        what: what.clone(),
        name,
        region,
        url: None,
        target: None,
    };
    let Some(raw) = sec.string(ctx, "url", URL_EXAMPLE) else {
        if sec.get("url").is_none() {
            ctx.error(
                Some(sec.span.clone()),
                &what,
                format!("missing `url`; add url = {URL_EXAMPLE}"),
            );
        }
        return m;
    };
    let Some(text) = expand_field(ctx, &what, "url", &raw, env) else {
        return m;
    };
    if engine.is_some_and(DbEngine::is_mysql_family) {
        match mysql_url(&text) {
            Ok(target) => {
                m.target = Some(target);
                m.url = Some(Spanned::new(raw.span(), text));
            }
            Err(message) => ctx.error(Some(raw.span()), &what, message),
        }
        return m;
    }
    let read = postgres_url(&text).and_then(|_| match crate::pg_endpoint(&text) {
        Ok(ep) => Ok(Some(Target::of(&ep))),
        // Several servers tried in turn: a connection may, a failover group may not.
        Err(crate::PgUrlError::ManyServers(_)) => Ok(None),
        Err(crate::PgUrlError::Invalid(m)) => Err(m),
    });
    match read {
        Ok(target) => {
            m.target = target;
            m.url = Some(Spanned::new(raw.span(), text));
        }
        Err(message) => ctx.error(Some(raw.span()), &what, message),
    }
    m
}

/// Checks the scheme and the syntax. Messages echo the scheme at most: the rest may
/// hold a password.
fn postgres_url(text: &str) -> Result<url::Url, String> {
    let lower = text.to_ascii_lowercase();
    if !(lower.starts_with("postgres://") || lower.starts_with("postgresql://")) {
        let scheme = text.split_once("://").map(|(s, _)| s).filter(|s| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        });
        return Err(match scheme {
            Some(s) if !s.is_empty() => {
                format!("url: unsupported scheme '{s}://' for a PostgreSQL database; {URL_HELP}")
            }
            _ => format!("url is not a postgres:// URL; {URL_HELP}"),
        });
    }
    url::Url::parse(text).map_err(|e| format!("url is not a valid URL ({e}); {URL_HELP}"))
}

const MYSQL_URL_HELP: &str = "write mysql://USER[:PASSWORD]@HOST:PORT/DATABASE or mariadb://... (passwords from ${NAME} or MYSQL_PWD), with ?ssl-mode=... if needed";

/// A MariaDB/MySQL member URL: its scheme, host and database; the server (host and
/// port) it names, since replication is server-wide. Messages never echo the URL.
fn mysql_url(text: &str) -> Result<Target, String> {
    let lower = text.to_ascii_lowercase();
    if !(lower.starts_with("mysql://") || lower.starts_with("mariadb://")) {
        return Err(format!(
            "url is not a mysql:// or mariadb:// URL; {MYSQL_URL_HELP}"
        ));
    }
    let u = url::Url::parse(text)
        .map_err(|e| format!("url is not a valid URL ({e}); {MYSQL_URL_HELP}"))?;
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("url has no host; {MYSQL_URL_HELP}"))?;
    if u.path().trim_start_matches('/').is_empty() {
        return Err(format!(
            "url names no database (the path); {MYSQL_URL_HELP}"
        ));
    }
    Ok(Target(format!(
        "{}:{}",
        host.to_ascii_lowercase(),
        u.port().unwrap_or(3306)
    )))
}

/// The server and database a URL points at, ignoring the user, the password and other
/// options (read by `pg_endpoint`, as connections and listeners read it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target(String);

impl Target {
    fn of(ep: &crate::PgEndpoint) -> Self {
        Self(format!(
            "{}:{}/{}",
            ep.host.to_ascii_lowercase(),
            ep.port,
            ep.dbname
        ))
    }
}

/// Replica names are unique within a database.
fn same_names(ctx: &mut Ctx<'_>, d: &DraftDatabase) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for r in &d.replicas {
        let Some(name) = &r.name else { continue };
        match first.get(name.get_ref().as_str()) {
            Some(line) => ctx.error(
                Some(name.span()),
                &r.what,
                format!(
                    "the replica name '{}' is already used at line {line}; give each replica of a database its own name = \"...\" (it defaults to the region)",
                    name.get_ref()
                ),
            ),
            None => {
                let line = ctx.line_of(&name.span());
                first.insert(name.get_ref(), line);
            }
        }
    }
}

/// Object names georep creates are unique across the topology (slots and subscriptions
/// are per server, and any two databases may share one): two names that differ only in
/// the characters sanitising drops would make teardown or reseed of one remove the
/// other's replication.
fn same_object_names(ctx: &mut Ctx<'_>, databases: &[DraftDatabase]) {
    const RULE: &str = "georep names its objects georep_<database> and georep_<database>_<member>, in lower case with every character other than a letter or digit as '_', cut at 63 characters; rename one";
    let mut publications: HashMap<String, &str> = HashMap::new();
    let mut subscriptions: HashMap<String, String> = HashMap::new();
    for d in databases {
        let Some(name) = &d.name else { continue };
        let db = name.get_ref().as_str();
        let publication = publication_name(db);
        match publications.get(&publication) {
            Some(other) if *other != db => ctx.error(
                Some(name.span()),
                &d.what,
                format!("its publication would be named {publication}, as database '{other}''s is; {RULE}"),
            ),
            Some(_) => {}
            None => {
                publications.insert(publication, db);
            }
        }
        for m in d.primary.iter().chain(&d.replicas) {
            let Some(member) = &m.name else { continue };
            let sub = subscription_name(db, member.get_ref());
            let this = format!("database '{db}', member '{}'", member.get_ref());
            match subscriptions.get(&sub) {
                // The same member listed twice is reported by `same_names`.
                Some(other) if *other != this => ctx.error(
                    Some(member.span()),
                    &m.what,
                    format!("its subscription and slot would be named {sub}, as those of {other}; {RULE}"),
                ),
                Some(_) => {}
                None => {
                    subscriptions.insert(sub, this);
                }
            }
        }
    }
}

/// No replica is the primary's database or another replica's.
fn same_databases(ctx: &mut Ctx<'_>, d: &DraftDatabase) {
    let primary = d.primary.as_ref().and_then(|p| p.target.as_ref());
    let mut seen: Vec<(&Target, &DraftMember)> = Vec::new();
    for r in &d.replicas {
        let (Some(target), Some(url)) = (&r.target, &r.url) else {
            continue;
        };
        if primary == Some(target) {
            ctx.error(
                Some(url.span()),
                &r.what,
                format!(
                    "url points at the same database as the primary ({}); a replica must be another database",
                    target.0
                ),
            );
        } else if let Some((_, other)) = seen.iter().find(|(t, _)| *t == target) {
            let other = other.name.as_ref().map_or("?", |n| n.get_ref().as_str());
            ctx.error(
                Some(url.span()),
                &r.what,
                format!(
                    "url points at the same database as replica '{other}' ({}); each replica must be its own database",
                    target.0
                ),
            );
        } else {
            seen.push((target, r));
        }
    }
}

/// Checks across sections: members' regions are declared, database names are unique,
/// and no two databases or members would share a publication, subscription or slot name.
pub(super) fn check(
    ctx: &mut Ctx<'_>,
    regions: &BTreeMap<String, Region>,
    databases: &[DraftDatabase],
) {
    same_object_names(ctx, databases);
    let mut first: HashMap<&str, usize> = HashMap::new();
    for d in databases {
        for m in d.primary.iter().chain(&d.replicas) {
            let Some(region) = &m.region else { continue };
            let r = region.get_ref();
            if !regions.contains_key(r) {
                ctx.error(
                    Some(region.span()),
                    &m.what,
                    format!(
                        "region '{r}' is not declared; add a [regions.{r}] table or fix the name"
                    ),
                );
            }
        }
        let Some(name) = &d.name else { continue };
        match first.get(name.get_ref().as_str()) {
            Some(line) => ctx.error(
                Some(name.span()),
                &d.what,
                format!(
                    "the name '{}' is already used by the database at line {line}; database names must be unique",
                    name.get_ref()
                ),
            ),
            None => {
                let line = ctx.line_of(&d.span);
                first.insert(name.get_ref(), line);
            }
        }
    }
}
