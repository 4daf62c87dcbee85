//! `georep plan` without a daemon: what `serve` would run from a topology file, and
//! what changed against the configuration the state store recorded. Typed here; the CLI
//! only renders it.

use georep_core::{Database, Policy, StoreDef, StoreUrl, Topology};
use georep_state::{PolicyChange, State};
use serde::Serialize;
use serde_json::Value;

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub state: PlanState,
    pub server: PlanServer,
    pub policies: Vec<PolicyPlan>,
    /// Policies recorded in the state but gone from the file (their state is kept).
    pub removed_policies: Vec<String>,
    pub databases: Vec<Database>,
    /// `[[backups]]` (serialized without the password).
    pub backups: Vec<georep_core::Backup>,
    /// `[[relays]]` (serialized without keys).
    pub relays: Vec<georep_core::Relay>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanState {
    /// Redacted.
    pub url: String,
    /// `false`: `serve` would create it.
    pub exists: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanServer {
    pub listen: String,
    /// Whether a bearer token is required (never the token).
    pub token: bool,
}

/// How a policy compares with what the state recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyPlanChange {
    Added,
    Changed,
    Unchanged,
}

/// One policy as `serve` would run it.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyPlan {
    pub name: String,
    pub change: PolicyPlanChange,
    /// `field: before → after`, for a changed policy.
    pub changed_fields: Vec<String>,
    pub source: Option<StoreDef>,
    pub destinations: Vec<Option<StoreDef>>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub since: Option<String>,
    pub deletes: String,
    pub max_delete: String,
    pub rpo: String,
    pub scan_interval: String,
    pub transfers: usize,
    /// How changes are detected, in words.
    pub detection: String,
    /// Work left in the queue by earlier runs.
    pub queue: Queue,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Queue {
    pub pending: u64,
    pub failed: u64,
}

/// How a policy's changes are detected, in words.
pub fn detection(t: &Topology, p: &Policy) -> String {
    let scan = humantime::format_duration(p.scan_interval);
    if let Some(s) = &p.schedule {
        return format!("scheduled ({s}): the source is listed and synced at each tick");
    }
    match t.store(&p.source).map(|s| &s.url) {
        Some(StoreUrl::Local { .. }) => format!("filesystem notifications + scan every {scan}"),
        _ => format!(
            "storage events to POST {} + scan every {scan}",
            georep_api::paths::fill(georep_api::paths::EVENTS, &p.name)
        ),
    }
}

/// Field-by-field differences between two recorded policy configurations.
fn changed_fields(old: &Value, new: &Value) -> Vec<String> {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return vec!["configuration".into()];
    };
    let mut out = Vec::new();
    for (k, v) in n {
        let before = o.get(k).unwrap_or(&Value::Null);
        if before != v {
            out.push(format!("{k}: {before} → {v}"));
        }
    }
    out
}

/// The plan of `t` against `state` (None: no state file yet, so everything is added).
pub fn plan(t: &Topology, state: Option<&State>) -> Result<Plan, georep_state::StateError> {
    let recorded = match state {
        Some(s) => s.policies()?,
        None => Vec::new(),
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut policies = Vec::new();
    for p in &t.policies {
        let config = georep_replicate::policy_record(t, p);
        let change = match state {
            Some(s) => s.policy_change(&p.name, &config)?,
            None => PolicyChange::Added,
        };
        let queue = match state {
            Some(s) => s.lag(&p.name)?.iter().fold(Queue::default(), |q, l| Queue {
                pending: q.pending + l.pending,
                failed: q.failed + l.failed,
            }),
            None => Queue::default(),
        };
        let (change, changed) = match &change {
            PolicyChange::Added => (PolicyPlanChange::Added, Vec::new()),
            PolicyChange::Changed { previous } => {
                (PolicyPlanChange::Changed, changed_fields(previous, &config))
            }
            PolicyChange::Unchanged => (PolicyPlanChange::Unchanged, Vec::new()),
        };
        policies.push(PolicyPlan {
            name: p.name.clone(),
            change,
            changed_fields: changed,
            source: t.store(&p.source).cloned(),
            destinations: p.destinations.iter().map(|d| t.store(d).cloned()).collect(),
            include: p.include.clone(),
            exclude: p.exclude.clone(),
            since: p.since.map(|s| s.to_rfc3339()),
            deletes: text(&config["deletes"]),
            max_delete: text(&config["max_delete"]),
            rpo: text(&config["rpo"]),
            scan_interval: text(&config["scan_interval"]),
            transfers: p.transfers,
            detection: detection(t, p),
            queue,
        });
    }
    Ok(Plan {
        state: PlanState {
            url: t.state.redacted_url(),
            exists: state.is_some(),
        },
        server: PlanServer {
            listen: t.server.listen.to_string(),
            token: t.server.token.is_some(),
        },
        policies,
        removed_policies: recorded
            .iter()
            .filter(|r| t.policy(&r.name).is_none())
            .map(|r| r.name.clone())
            .collect(),
        databases: t.databases.clone(),
        backups: t.backups.clone(),
        relays: t.relays.clone(),
    })
}
