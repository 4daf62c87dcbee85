//! georep-api: the contract between `georep serve` and everything that talks to it.
//!
//! Route paths and the types that cross HTTP are written here once: the server builds
//! its routes from [`paths`] and answers with these types, and the CLI, the testkit and
//! scripts call [`Client`]. A client depends on this crate alone: no axum, no daemon.
//!
//! API boundary: [`paths`], the request/response types, [`Client`] and [`ClientError`].

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Route patterns (axum syntax) and how to fill them.
pub mod paths {
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
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST` [`paths::GROUP_FAILOVER`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverRequest {
    /// The replica to promote (member name or region); `None`: a healthy replica.
    #[serde(default)]
    pub to: Option<String>,
    /// Promote without the primary: what it had not sent is lost.
    #[serde(default)]
    pub force: bool,
}

/// `POST` [`paths::GROUP_RESEED`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReseedRequest {
    pub member: String,
}

/// How far a replica is behind the primary, as read on the primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// WAL bytes not yet confirmed; `None` when unknown.
    pub bytes: Option<i64>,
    /// Seconds behind; `None` when the replica is not connected (unknown).
    pub seconds: Option<f64>,
}

/// Where a group's listeners send new connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The epoch this route belongs to (as recorded in the state store).
    pub epoch: i64,
    /// `host:port` of the primary.
    pub read_write: Option<String>,
    /// `host:port` of the healthy replicas new read-only connections are spread over
    /// (or of the primary, if configured and none is healthy).
    pub read_only: Vec<String>,
    /// While true, new connections wait (a failover is switching roles).
    pub held: bool,
}

/// A failover group's recorded state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupState {
    Stable,
    /// A role change is recorded as in progress (running, or interrupted and settling).
    FailingOver,
}

impl GroupState {
    /// Parses the state store's column; anything but `stable` is a change in progress.
    pub fn from_record(s: &str) -> Self {
        if s == "stable" {
            Self::Stable
        } else {
            Self::FailingOver
        }
    }
}

/// What kind of role change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverKind {
    Planned,
    Forced,
    Automatic,
}

impl FailoverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Forced => "forced",
            Self::Automatic => "automatic",
        }
    }

    /// Parses the state store's column.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "planned" => Some(Self::Planned),
            "forced" => Some(Self::Forced),
            "automatic" => Some(Self::Automatic),
            _ => None,
        }
    }
}

/// What the probes last saw of one member.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberHealth {
    pub member: String,
    pub region: String,
    pub role: String,
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_ok: Option<String>,
}

/// What a failover did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverReport {
    pub kind: FailoverKind,
    pub from: String,
    pub to: String,
    pub epoch: i64,
    /// From holding new connections to releasing them at the new primary.
    pub write_gap_ms: u64,
    pub catch_up_ms: u64,
    pub data_loss: String,
    pub finished_at: String,
    /// Other replicas now following the new primary.
    pub repointed: Vec<String>,
    /// Members that now need `georep db reseed`, with why.
    pub left_behind: BTreeMap<String, String>,
    /// `done`, or how an interrupted change was finished.
    pub outcome: String,
}

/// One recorded role change (including rolled-back attempts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverEvent {
    pub epoch: i64,
    pub kind: FailoverKind,
    pub from: String,
    pub to: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub write_gap_ms: Option<i64>,
    pub data_loss: Option<String>,
    pub outcome: Option<String>,
    pub left_behind: Option<String>,
}

/// A failover group's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub database: String,
    pub epoch: i64,
    pub primary: String,
    pub state: GroupState,
    pub route: Route,
    pub read_write_listener: String,
    pub read_only_listener: Option<String>,
    pub members: Vec<MemberHealth>,
    /// Members never routed to again (an old primary after a forced failover); each
    /// needs `georep db reseed` before it can serve as a replica.
    pub fenced: BTreeSet<String>,
    /// Last known lag per replica, read on the primary.
    pub last_known_lag: BTreeMap<String, Lag>,
    /// Why automatic failover is not happening, when it is wanted but refused.
    pub automatic: Option<String>,
    pub last_failover: Option<FailoverReport>,
    /// An interrupted role change is being settled; new connections are held meanwhile.
    pub unsettled: bool,
    /// The latest role changes, newest first.
    pub history: Vec<FailoverEvent>,
}

/// `GET` [`paths::GROUPS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupList {
    pub failover_groups: Vec<GroupStatus>,
}

/// What a reseed did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReseedReport {
    /// Tables emptied and copied again from the primary.
    pub tables: Vec<String>,
    pub seconds: f64,
}

/// What one scan of a policy's source found.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanSummary {
    pub listed: u64,
    pub changed: u64,
    pub removed: u64,
    /// Removals held back by the mass-delete guard.
    pub held: u64,
    /// Entries no store can hold (reported once each), left out of the pass.
    pub skipped: u64,
    pub millis: u64,
}

/// `POST` [`paths::POLICY_RESYNC`]: a full scan now, failed items retried, and objects
/// missing or different at a destination queued again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resynced {
    pub scan: ScanSummary,
    /// Items made due now (including failed ones).
    pub retried: u64,
    /// Objects missing or different at a destination, queued again.
    pub repaired: u64,
}

/// `POST` [`paths::POLICY_PAUSE`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PauseRequest {
    /// Why, shown in status (e.g. a change ticket).
    #[serde(default)]
    pub note: Option<String>,
}

/// The answer to a pause: the policy and what status shows while it is paused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    pub paused: String,
    pub held: String,
}

/// `POST` [`paths::POLICY_RESUME`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resumed {
    pub resumed: String,
    pub note: String,
}

/// What a reload does to one item of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeAction {
    /// New in the file: started.
    Add,
    /// Different in the file: restarted with the new settings.
    Change,
    /// Gone from the file: stopped (its recorded state is kept).
    Remove,
}

/// One item a reload adds, changes or removes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The topology section: `policies`, `databases`, `failover_groups`, ...
    pub section: String,
    pub name: String,
    pub action: ChangeAction,
    /// For a change, the settings that differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// Set when applying this change failed (the rest were still applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Change {
    pub fn new(section: &str, name: &str, action: ChangeAction, fields: Vec<String>) -> Self {
        Self {
            section: section.to_string(),
            name: name.to_string(),
            action,
            fields,
            error: None,
        }
    }
}

/// The answer to [`paths::RELOAD`]: what a reload would do (`GET`) or did (`POST`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    /// The topology file the daemon read.
    pub file: String,
    /// `true` when nothing was applied (a plan).
    pub dry_run: bool,
    pub changes: Vec<Change>,
    /// Settings that only take effect at the next start (`[server]`, `[state]`).
    #[serde(default)]
    pub restart_needed: Vec<String>,
}

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the address.
    #[error("cannot reach the georep daemon at {base}: {detail}; is `georep serve` running? (pass --api URL if it listens elsewhere)")]
    Unreachable { base: String, detail: String },
    /// The daemon answered with an error status and its message.
    #[error("{message} (HTTP {status})")]
    Status { status: u16, message: String },
    /// The answer was not what this contract says.
    #[error("unexpected answer from the georep daemon at {base}: {detail}")]
    Decode { base: String, detail: String },
}

impl ClientError {
    /// The exit class for the CLI: 2 refused as asked (unknown name, conflict, bad
    /// request), 3 a member or the daemon unreachable, 1 anything else.
    pub fn exit_class(&self) -> u8 {
        match self {
            Self::Unreachable { .. } => 3,
            Self::Status { status, .. } => match status {
                400 | 404 | 409 => 2,
                401 | 403 | 502 | 503 => 3,
                _ => 1,
            },
            Self::Decode { .. } => 1,
        }
    }
}

/// A typed client of one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `base` is `http://HOST:PORT`; `token` is sent as a bearer when given.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// One call: a JSON body in (for `POST`), a typed answer out.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            let text = serde_json::to_string(b).map_err(|e| ClientError::Decode {
                base: self.base.clone(),
                detail: e.to_string(),
            })?;
            r = r.header("content-type", "application/json").body(text);
        }
        let resp = r.send().await.map_err(|e| ClientError::Unreachable {
            base: self.base.clone(),
            detail: root_cause(&e),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| ClientError::Unreachable {
            base: self.base.clone(),
            detail: root_cause(&e),
        })?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.error)
                .unwrap_or(text);
            return Err(ClientError::Status { status, message });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Decode {
            base: self.base.clone(),
            detail: e.to_string(),
        })
    }

    pub async fn group(&self, name: &str) -> Result<GroupStatus, ClientError> {
        self.call(reqwest::Method::GET, &paths::fill(paths::GROUP, name), NONE)
            .await
    }

    pub async fn failover(
        &self,
        group: &str,
        req: &FailoverRequest,
    ) -> Result<FailoverReport, ClientError> {
        let path = paths::fill(paths::GROUP_FAILOVER, group);
        self.call(reqwest::Method::POST, &path, Some(req)).await
    }

    pub async fn reseed(&self, group: &str, member: &str) -> Result<ReseedReport, ClientError> {
        let path = paths::fill(paths::GROUP_RESEED, group);
        let req = ReseedRequest {
            member: member.to_string(),
        };
        self.call(reqwest::Method::POST, &path, Some(&req)).await
    }

    pub async fn resync(&self, policy: &str) -> Result<Resynced, ClientError> {
        let path = paths::fill(paths::POLICY_RESYNC, policy);
        self.call(reqwest::Method::POST, &path, Some(&serde_json::json!({})))
            .await
    }

    pub async fn pause(&self, policy: &str, note: Option<&str>) -> Result<Paused, ClientError> {
        let path = paths::fill(paths::POLICY_PAUSE, policy);
        let req = PauseRequest {
            note: note.map(str::to_string),
        };
        self.call(reqwest::Method::POST, &path, Some(&req)).await
    }

    /// What a reload of the daemon's topology file would change.
    pub async fn reload_plan(&self) -> Result<Reloaded, ClientError> {
        self.call(reqwest::Method::GET, paths::RELOAD, NONE).await
    }

    /// Reloads the daemon's topology file.
    pub async fn reload(&self) -> Result<Reloaded, ClientError> {
        self.call(
            reqwest::Method::POST,
            paths::RELOAD,
            Some(&serde_json::json!({})),
        )
        .await
    }

    pub async fn resume(&self, policy: &str) -> Result<Resumed, ClientError> {
        let path = paths::fill(paths::POLICY_RESUME, policy);
        self.call(reqwest::Method::POST, &path, Some(&serde_json::json!({})))
            .await
    }
}

/// No body, typed for [`Client::call`].
const NONE: Option<&()> = None;

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

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
