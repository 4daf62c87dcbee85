//! georep-api: the contract between `georep serve` and everything that talks to it.
//!
//! Route paths and the types that cross HTTP are written here once: the server builds
//! its routes from [`paths`] and answers with these types, and the CLI, the testkit and
//! scripts call [`Client`]. A client depends on this crate alone: no axum, no daemon.
//!
//! API boundary: [`paths`], the request/response types, [`Client`] and [`ClientError`].

mod backups;
mod client;
mod concierges;
mod databases;
mod failover;
pub mod paths;
mod policies;
mod relays;
mod reload;
mod secrets;

pub use backups::*;
pub use client::*;
pub use concierges::*;
pub use databases::*;
pub use failover::*;
pub use policies::*;
pub use relays::*;
pub use reload::*;
pub use secrets::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(
            paths::fill(paths::GROUP_FAILOVER, "orders fg/x"),
            "/api/v1/failover-groups/orders%20fg%2Fx/failover"
        );
        assert_eq!(
            paths::fill(paths::POLICY, "p-1_a.b"),
            "/api/v1/policies/p-1_a.b"
        );
    }

    #[test]
    fn states_and_kinds_read_as_the_store_writes_them() {
        assert_eq!(GroupState::from_record("stable"), GroupState::Stable);
        assert_eq!(
            GroupState::from_record("failing-over"),
            GroupState::FailingOver
        );
        for k in [
            FailoverKind::Planned,
            FailoverKind::Forced,
            FailoverKind::Automatic,
        ] {
            assert_eq!(FailoverKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_string(&k).expect("json"),
                format!("\"{}\"", k.as_str())
            );
        }
        assert_eq!(
            serde_json::to_string(&GroupState::FailingOver).expect("json"),
            "\"failing-over\""
        );
    }
}
