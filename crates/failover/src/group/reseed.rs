//! Reseeding a fenced member: rebuilt as a replica of the current primary from a fresh
//! copy, then routed to again.

use georep_api::ReseedReport;
use georep_db::engine;

use super::Group;
use crate::{FailoverError, Result};

impl Group {
    /// Rebuilds a fenced member as a replica of the current primary (its data is
    /// replaced by a fresh copy), then lets it be routed to again.
    pub async fn reseed(&self, member: &str) -> Result<ReseedReport> {
        let _one = self.op().await?;
        let fenced = self.fenced.lock().map(|f| f.clone()).unwrap_or_default();
        if !fenced.contains(member) {
            return Err(FailoverError::Refused(format!(
                "member '{member}' is not fenced; only a fenced former primary needs a reseed (fenced: {})",
                if fenced.is_empty() { "none".to_string() } else { fenced.iter().cloned().collect::<Vec<_>>().join(", ") }
            )));
        }
        let db = self.current_db();
        let m = db
            .replicas
            .iter()
            .find(|r| r.name == member)
            .cloned()
            .ok_or_else(|| {
                FailoverError::Refused(format!("'{member}' is not a member of '{}'", db.name))
            })?;
        let report = engine::reseed(&db, &m).await?;
        let mut left = fenced;
        left.remove(member);
        let text = left.iter().cloned().collect::<Vec<_>>().join(",");
        self.state
            .failover_set_fenced(&self.cfg.name, (!text.is_empty()).then_some(text.as_str()))?;
        if let Ok(mut f) = self.fenced.lock() {
            *f = left;
        }
        tracing::info!(group = %self.cfg.name, member, "reseeded: the member follows the primary again");
        Ok(report)
    }
}
