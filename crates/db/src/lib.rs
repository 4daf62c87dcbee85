//! georep-db: database geo-replicas.
//!
//! API boundary: the `postgres` module's functions take a `georep_core::Database` (or
//! URLs) and return plain report values; nothing here prints. The `mysql` module
//! (MariaDB and MySQL; issue 13, in progress) has connections, GTIDs and the
//! prerequisite checks so far. Everything goes through
//! SQL connections (plus `pg_dump` for schema text), so it works against managed
//! services where nobody can touch the server's files.

mod crash;
pub mod engine;
mod error;
pub mod mysql;
pub mod postgres;
mod role;

pub use crash::crash_point;
pub use error::{DbError, Result};
pub use role::{rotated, Settled, SwitchoverReport};
