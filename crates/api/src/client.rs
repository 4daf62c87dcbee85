//! A small typed async client of one daemon.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::*;

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
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

    pub async fn backups(&self) -> Result<BackupList, ClientError> {
        self.call(reqwest::Method::GET, paths::BACKUPS, NONE).await
    }

    pub async fn backup(&self, name: &str) -> Result<BackupStatus, ClientError> {
        self.call(
            reqwest::Method::GET,
            &paths::fill(paths::BACKUP, name),
            NONE,
        )
        .await
    }

    /// Has the daemon take a point now; answers when it is taken.
    pub async fn backup_run(&self, name: &str) -> Result<PointReport, ClientError> {
        let path = paths::fill(paths::BACKUP_RUN, name);
        self.call(reqwest::Method::POST, &path, Some(&serde_json::json!({})))
            .await
    }

    pub async fn secret_syncs(&self) -> Result<SecretSyncList, ClientError> {
        self.call(reqwest::Method::GET, paths::SECRET_SYNCS, NONE)
            .await
    }

    pub async fn secret_sync(&self, name: &str) -> Result<SecretSyncStatus, ClientError> {
        self.call(
            reqwest::Method::GET,
            &paths::fill(paths::SECRET_SYNC, name),
            NONE,
        )
        .await
    }

    /// Runs a pass of a secret sync in the daemon now.
    pub async fn secret_sync_run(&self, name: &str) -> Result<SecretPass, ClientError> {
        let path = paths::fill(paths::SECRET_SYNC_RUN, name);
        self.call(reqwest::Method::POST, &path, Some(&serde_json::json!({})))
            .await
    }

    pub async fn relays(&self) -> Result<RelayList, ClientError> {
        self.call(reqwest::Method::GET, paths::RELAYS, NONE).await
    }

    pub async fn relay(&self, name: &str) -> Result<RelayStatus, ClientError> {
        self.call(reqwest::Method::GET, &paths::fill(paths::RELAY, name), NONE)
            .await
    }

    /// `route` is one of [`paths::RELAY_SWITCHOVER`], `RELAY_SWITCHBACK`, `RELAY_REPLAY`.
    pub async fn relay_action(
        &self,
        route: &str,
        name: &str,
    ) -> Result<RelayActionReport, ClientError> {
        let path = paths::fill(route, name);
        self.call(reqwest::Method::POST, &path, Some(&serde_json::json!({})))
            .await
    }

    pub async fn concierges(&self) -> Result<ConciergeList, ClientError> {
        self.call(reqwest::Method::GET, paths::CONCIERGES, NONE)
            .await
    }

    pub async fn concierge(&self, name: &str) -> Result<ConciergeStatus, ClientError> {
        self.call(
            reqwest::Method::GET,
            &paths::fill(paths::CONCIERGE, name),
            NONE,
        )
        .await
    }

    /// Where each device (of `group`) is assigned and connected.
    pub async fn concierge_devices(
        &self,
        name: &str,
        group: Option<&str>,
    ) -> Result<ConciergeDevices, ClientError> {
        let mut path = paths::fill(paths::CONCIERGE_DEVICES, name);
        if let Some(g) = group {
            path.push_str("?group=");
            path.push_str(
                &percent_encoding::utf8_percent_encode(g, percent_encoding::NON_ALPHANUMERIC)
                    .to_string(),
            );
        }
        self.call(reqwest::Method::GET, &path, NONE).await
    }

    /// `route` is [`paths::CONCIERGE_FAILOVER`] (with a [`ConciergeFailoverRequest`]),
    /// `CONCIERGE_FAILBACK` or `CONCIERGE_PIN` (with a [`ConciergePinRequest`]).
    pub async fn concierge_action<B: serde::Serialize>(
        &self,
        route: &str,
        name: &str,
        body: &B,
    ) -> Result<ConciergeActionReport, ClientError> {
        let path = paths::fill(route, name);
        self.call(reqwest::Method::POST, &path, Some(body)).await
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
