//! Live reloads of the topology: what changes, item by item.

use serde::{Deserialize, Serialize};

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
