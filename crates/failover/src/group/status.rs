//! A group's status as the API shows it: the recorded epoch and primary, the route,
//! member health, fenced members, last known lags and recent history.

use std::sync::atomic::Ordering;

use super::{Group, GroupStatus};
use crate::{FailoverError, Result};

impl Group {
    pub fn status(&self) -> Result<GroupStatus> {
        let rec = self
            .state
            .failover(&self.cfg.name)?
            .ok_or_else(|| FailoverError::InvalidConfig("failover group not recorded".into()))?;
        Ok(GroupStatus {
            name: self.cfg.name.clone(),
            database: self.cfg.database.clone(),
            epoch: rec.epoch,
            primary: rec.primary,
            state: rec.state,
            route: self.route.borrow().clone(),
            read_write_listener: self.cfg.read_write_listener.to_string(),
            read_only_listener: self.cfg.read_only_listener.map(|a| a.to_string()),
            members: self
                .health
                .lock()
                .map(|h| h.values().cloned().collect())
                .unwrap_or_default(),
            fenced: self.fenced.lock().map(|f| f.clone()).unwrap_or_default(),
            last_known_lag: self.lag.lock().map(|l| l.clone()).unwrap_or_default(),
            automatic: self.automatic.lock().ok().and_then(|a| a.clone()),
            last_failover: self.last.lock().ok().and_then(|l| l.clone()),
            unsettled: self.unsettled.load(Ordering::SeqCst),
            history: self.state.failover_history(&self.cfg.name, 20)?,
        })
    }
}
