//! georep-device: the device side of a concierge (`[[concierges]]`). What a concierge
//! and its devices agree on — shared access signatures (`sas`), signed assignments,
//! the MQTT password derived from a device's key, reassign notices and signed presence
//! (`claims`) — and the reference MQTT client that asks the concierge which hub to use,
//! connects, and moves when its hub fails or the concierge says so (`client`).
//! Boundaries: knows nothing of georep's topology or daemon; the concierge depends on
//! this crate, never the other way.

pub mod claims;
pub mod client;
pub mod sas;

pub use claims::{Claims, Hub, Presence, Reassign};
pub use client::{spawn, Backoff, Config, Event, Handle};
