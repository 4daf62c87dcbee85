//! Route patterns (axum syntax) and how to fill them.

pub const HEALTHZ: &str = "/healthz";
pub const METRICS: &str = "/metrics";
pub const POLICIES: &str = "/api/v1/policies";
pub const POLICY: &str = "/api/v1/policies/{name}";
pub const POLICY_OBJECT: &str = "/api/v1/policies/{name}/objects/{*key}";
pub const POLICY_RESYNC: &str = "/api/v1/policies/{name}/resync";
pub const POLICY_RESUME: &str = "/api/v1/policies/{name}/resume";
pub const POLICY_PAUSE: &str = "/api/v1/policies/{name}/pause";
pub const EVENTS: &str = "/api/v1/events/{name}";
pub const DATABASES: &str = "/api/v1/databases";
pub const DATABASE: &str = "/api/v1/databases/{name}";
pub const GROUPS: &str = "/api/v1/failover-groups";
pub const GROUP: &str = "/api/v1/failover-groups/{name}";
pub const GROUP_FAILOVER: &str = "/api/v1/failover-groups/{name}/failover";
pub const GROUP_RESEED: &str = "/api/v1/failover-groups/{name}/reseed";
pub const BACKUPS: &str = "/api/v1/backups";
pub const BACKUP: &str = "/api/v1/backups/{name}";
/// `POST`: take a point now.
pub const BACKUP_RUN: &str = "/api/v1/backups/{name}/run";
pub const RELAYS: &str = "/api/v1/relays";
pub const RELAY: &str = "/api/v1/relays/{name}";
pub const RELAY_SWITCHOVER: &str = "/api/v1/relays/{name}/switchover";
pub const RELAY_SWITCHBACK: &str = "/api/v1/relays/{name}/switchback";
pub const RELAY_REPLAY: &str = "/api/v1/relays/{name}/replay";
pub const CONCIERGES: &str = "/api/v1/concierges";
pub const CONCIERGE: &str = "/api/v1/concierges/{name}";
/// `POST` [`crate::ConciergeFailoverRequest`]: send devices to another hub and hold them there.
pub const CONCIERGE_FAILOVER: &str = "/api/v1/concierges/{name}/failover";
/// `POST`: send devices back to the preferred hub; automatic failover and failback again.
pub const CONCIERGE_FAILBACK: &str = "/api/v1/concierges/{name}/failback";
/// `GET` (`?group=NAME`): where each device is assigned and connected.
pub const CONCIERGE_DEVICES: &str = "/api/v1/concierges/{name}/devices";
/// `POST` [`crate::ConciergePinRequest`]: pin (or unpin) a device or a group to a hub.
pub const CONCIERGE_PIN: &str = "/api/v1/concierges/{name}/pins";
pub const SECRET_SYNCS: &str = "/api/v1/secret-syncs";
pub const SECRET_SYNC: &str = "/api/v1/secret-syncs/{name}";
/// `POST`: run a pass now; answers its [`crate::SecretPass`].
pub const SECRET_SYNC_RUN: &str = "/api/v1/secret-syncs/{name}/sync";
/// `GET`: what a reload of the daemon's topology file would change; `POST`: do it.
pub const RELOAD: &str = "/api/v1/reload";

/// `route` with `{name}` replaced by `name`, encoded as one path segment.
pub fn fill(route: &str, name: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    route.replace(
        "{name}",
        &percent_encoding::utf8_percent_encode(name, SEGMENT).to_string(),
    )
}
