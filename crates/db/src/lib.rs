//! georep-db: database geo-replicas.
//!
//! API boundary: the `postgres` module's functions take a `georep_core::Database` (or
//! URLs) and return plain report values; nothing here prints. The `mysql` module
//! (MariaDB and MySQL; issue 13, in progress) has connections, GTIDs and the
//! prerequisite checks so far. Everything goes through
//! SQL connections (plus `pg_dump` for schema text), so it works against managed
//! services where nobody can touch the server's files.

mod crash;
mod error;
pub mod mysql;
pub mod postgres;

pub use crash::crash_point;
pub use error::{DbError, Result};
