//! georep-relay: `[[relays]]`. A relay accepts events over HTTP (Event Grid's publish
//! API: Event Grid schema or CloudEvents 1.0) or log records (Azure Monitor Logs
//! Ingestion, Loki push, Elasticsearch bulk: `logs`), makes them durable in an outbox of its
//! own before it answers (`outbox`), and delivers them at least once, in order, with
//! the publisher's ids, to its targets (`deliver`, each target's format in `encode`): to the first healthy one with
//! failover and failback (`mode = "failover"`, client-side failover for publishers in
//! regions without a pair), or to every one at its own pace (`mode = "replicate"`).
//! Targets that refuse data as bad send it to the dead letters, to be replayed.
//! Boundaries: depends on core (the topology), api (status types) and component (the
//! daemon's contract); knows nothing of other capabilities.

mod component;
mod deliver;
mod encode;
mod error;
pub mod events;
pub mod logs;
pub mod outbox;
mod relay;

pub use component::Relays;
pub use error::{RelayError, Result};
pub use relay::{peek, RelayPeek};
