//! PostgreSQL geo-replicas over native logical replication, driven through SQL only.
//!
//! One publication on the primary (`georep_<db>`), and per replica one subscription and
//! one slot (`georep_<db>_<replica>`), so every object georep creates is recognisable by
//! name and `teardown` can remove exactly those.

mod conn;
mod copy;
mod ddl;
mod drift;
mod setup;
mod status;
mod switchover;
mod teardown;
mod verify;

pub use conn::{connect, redact};
pub use copy::{copy, CopyOptions, CopyReport, CopyTable};
pub use ddl::{ddl, primary_first, DdlReport};
pub use drift::{schema_drift, sequence_drift, sync_sequences, SchemaDiff, SequenceDrift};
pub use setup::{setup, SetupProgress, SetupReport};
pub use status::{status, ReplicaStatus};
pub use switchover::{prepare_reseed, promote, replica_lag, rotated, switchover, SwitchoverReport};
pub use teardown::{teardown, TeardownReport};
pub use verify::{verify, RangeDiff, TableCheck, VerifyOptions, VerifyReport};

use georep_core::Database;

/// The publication of a database on its primary.
pub fn publication_name(db: &Database) -> String {
    ident(&format!("georep_{}", db.name))
}

/// The subscription on a replica, which is also its slot's name on the primary.
pub fn subscription_name(db: &Database, replica: &str) -> String {
    ident(&format!("georep_{}_{}", db.name, replica))
}

/// A lowercase identifier of at most 63 bytes made of `[a-z0-9_]`.
fn ident(s: &str) -> String {
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

/// `"schema"."table"`, quoted for SQL.
pub(crate) fn quote_table(qualified: &str) -> String {
    let (schema, table) = qualified.split_once('.').unwrap_or(("public", qualified));
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_identifiers() {
        assert_eq!(ident("georep_Orders-EU.1"), "georep_orders_eu_1");
        assert_eq!(ident(&"x".repeat(100)).len(), 63);
        assert_eq!(quote_table("public.t"), "\"public\".\"t\"");
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }
}
