//! georep-core: the vocabulary every other georep crate shares.
//!
//! Store URLs, byte sizes, rates, durations and key filters are parsed here, once, so
//! the CLI and the topology file (`georep.toml`, [`topology`]) accept exactly the same
//! syntax.
//!
//! Architecture invariant: this crate does no network or disk IO and knows nothing of
//! HTTP, SQL or `object_store`.

mod filter;
mod pg_url;
mod redact;
mod schedule;
mod size;
mod store_url;
pub mod topology;
mod vault_url;

pub use filter::{Filter, FilterError};
pub use pg_url::{pg_connect_url, pg_endpoint, PgEndpoint, PgUrlError};
pub use redact::{constant_time_eq, redact_url};
pub use schedule::Schedule;
pub use size::{parse_duration, parse_size, MaxDelete, SizeError, MAX_DURATION};
pub use store_url::{StoreUrl, StoreUrlError};
pub use topology::{
    Accept, Backup, CalendarSpan, Concierge, ConfigError, ConfigErrors, Database, DbEngine,
    DbMember, DeleteMode, FailoverGroup, FailoverPolicy, Hub, IdentitySource, Policy, Region,
    Relay, RelayMode, RelayTarget, RelayTls, Retention, ServerConfig, StateConfig, StoreDef,
    TargetKind, Topology,
};
pub use topology::{Escrow, OnDrift, SecretDeletes, SecretSync, Vault};
pub use vault_url::VaultUrl;
