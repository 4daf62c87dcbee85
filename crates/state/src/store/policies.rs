//! Policy records: each policy's configuration as last applied, its pause and hold
//! notes, the mass-delete override and its scan history.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::State;
use crate::error::Result;

/// A policy as recorded by the daemon.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRecord {
    pub name: String,
    pub config: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
    /// Why the policy's deletes are paused (mass-delete guard), if they are.
    pub paused: Option<String>,
    /// An operator paused the policy (`georep pause`): nothing is copied or deleted
    /// until it is resumed; changes are still recorded. The note given, or a default.
    pub held: Option<String>,
    pub allow_mass_delete: bool,
    pub last_scan_at: Option<i64>,
    pub last_scan_ms: Option<i64>,
    pub last_scan_error: Option<String>,
    pub scans: i64,
    /// Start of the last scan that completed without error.
    pub last_ok_scan_at: Option<i64>,
}

/// How a policy's recorded configuration compares with the one given.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum PolicyChange {
    Added,
    Changed { previous: serde_json::Value },
    Unchanged,
}

impl State {
    /// Records a policy's configuration; says whether it is new or changed. In the same
    /// transaction, a destination added to the policy gets every object of the manifest
    /// queued (so it is filled, not just sent later changes), and a changed source drops
    /// the manifest (so the next scan compares against the new source from scratch).
    /// Destinations are `(name, url)`: a destination whose URL changed is a new place
    /// and is filled like an added one.
    pub fn upsert_policy(
        &self,
        name: &str,
        config: &serde_json::Value,
        source: &str,
        dests: &[(String, String)],
    ) -> Result<PolicyChange> {
        let mut conn = self.lock();
        let now = crate::now_ms();
        let text = serde_json::to_string(config)?;
        let dests_json = serde_json::to_string(dests)?;
        let tx = conn.transaction()?;
        let old: Option<(String, Option<String>, Option<String>)> = tx
            .query_row(
                "SELECT config, source, dests FROM policies WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let change = match old {
            None => {
                tx.execute(
                    "INSERT INTO policies (name, config, created_at, updated_at, source, dests) \
                     VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
                    params![name, text, now, source, dests_json],
                )?;
                PolicyChange::Added
            }
            Some((old, old_source, old_dests)) => {
                if old_source.as_deref().is_some_and(|s| s != source) {
                    tx.execute("DELETE FROM manifest WHERE policy = ?1", [name])?;
                }
                let before = recorded_dests(old_dests.as_deref())?;
                let moved = |(d, url): &&(String, String)| match before.get(d) {
                    None => true,
                    // Recorded before URLs were: a name alone says nothing moved.
                    Some(None) => false,
                    Some(Some(old)) => old != url,
                };
                for (d, _) in dests.iter().filter(moved) {
                    tx.execute(
                        "INSERT INTO items (policy, dest, key, op, status, generation, size, \
                         change_time, enqueued_at, attempts, next_attempt_at) \
                         SELECT policy, ?2, key, 'copy', 'pending', 1, size, ?3, ?3, 0, ?3 \
                         FROM manifest WHERE policy = ?1 \
                         ON CONFLICT (policy, dest, key) DO UPDATE SET status = 'pending', \
                         op = 'copy', generation = generation + 1, next_attempt_at = ?3",
                        params![name, d, now],
                    )?;
                }
                tx.execute(
                    "UPDATE policies SET source = ?2, dests = ?3 WHERE name = ?1",
                    params![name, source, dests_json],
                )?;
                if old == text {
                    PolicyChange::Unchanged
                } else {
                    tx.execute(
                        "UPDATE policies SET config = ?2, updated_at = ?3 WHERE name = ?1",
                        params![name, text, now],
                    )?;
                    PolicyChange::Changed {
                        previous: serde_json::from_str(&old)?,
                    }
                }
            }
        };
        tx.commit()?;
        Ok(change)
    }

    /// Compares without recording (for `georep plan`).
    pub fn policy_change(&self, name: &str, config: &serde_json::Value) -> Result<PolicyChange> {
        let text = serde_json::to_string(config)?;
        match self.policy(name)? {
            None => Ok(PolicyChange::Added),
            Some(p) if serde_json::to_string(&p.config)? == text => Ok(PolicyChange::Unchanged),
            Some(p) => Ok(PolicyChange::Changed { previous: p.config }),
        }
    }

    pub fn policies(&self) -> Result<Vec<PolicyRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT name, config, created_at, updated_at, paused, allow_mass_delete, \
             last_scan_at, last_scan_ms, last_scan_error, scans, last_ok_scan_at, held \
             FROM policies ORDER BY name",
        )?;
        let rows = stmt.query_map([], policy_from_row)?;
        let mut out = Vec::new();
        for r in rows {
            let (rec, config) = r?;
            out.push(PolicyRecord {
                config: serde_json::from_str(&config)?,
                ..rec
            });
        }
        Ok(out)
    }

    pub fn policy(&self, name: &str) -> Result<Option<PolicyRecord>> {
        Ok(self.policies()?.into_iter().find(|p| p.name == name))
    }

    /// Pauses (with a reason) or resumes a policy's deletes.
    pub fn set_paused(&self, name: &str, reason: Option<&str>) -> Result<()> {
        self.lock().execute(
            "UPDATE policies SET paused = ?2 WHERE name = ?1",
            params![name, reason],
        )?;
        Ok(())
    }

    /// An operator's pause of the whole policy (copies and deletes), or its end.
    pub fn set_held(&self, name: &str, note: Option<&str>) -> Result<()> {
        self.lock().execute(
            "UPDATE policies SET held = ?2 WHERE name = ?1",
            params![name, note],
        )?;
        Ok(())
    }

    /// Lets the next pass delete more than the guard allows (operator confirmed).
    pub fn set_allow_mass_delete(&self, name: &str, allow: bool) -> Result<()> {
        self.lock().execute(
            "UPDATE policies SET allow_mass_delete = ?2 WHERE name = ?1",
            params![name, allow as i64],
        )?;
        Ok(())
    }

    pub fn record_scan(&self, name: &str, at: i64, ms: i64, error: Option<&str>) -> Result<()> {
        self.lock().execute(
            "UPDATE policies SET last_scan_at = ?2, last_scan_ms = ?3, last_scan_error = ?4, \
             scans = scans + 1, \
             last_ok_scan_at = CASE WHEN ?4 IS NULL THEN ?2 ELSE last_ok_scan_at END \
             WHERE name = ?1",
            params![name, at, ms, error],
        )?;
        Ok(())
    }
}

type PolicyRow = (PolicyRecord, String);

fn policy_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PolicyRow> {
    Ok((
        PolicyRecord {
            name: r.get(0)?,
            config: serde_json::Value::Null,
            created_at: r.get(2)?,
            updated_at: r.get(3)?,
            paused: r.get(4)?,
            allow_mass_delete: r.get::<_, i64>(5)? != 0,
            last_scan_at: r.get(6)?,
            last_scan_ms: r.get(7)?,
            last_scan_error: r.get(8)?,
            scans: r.get(9)?,
            last_ok_scan_at: r.get(10)?,
            held: r.get(11)?,
        },
        r.get(1)?,
    ))
}

/// The destinations recorded with a policy: `[[name, url], ...]`, or names alone from
/// before URLs were recorded.
fn recorded_dests(json: Option<&str>) -> Result<std::collections::HashMap<String, Option<String>>> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Dest {
        Named(String),
        WithUrl(String, String),
    }
    let list: Vec<Dest> = json
        .map(serde_json::from_str)
        .transpose()?
        .unwrap_or_default();
    Ok(list
        .into_iter()
        .map(|d| match d {
            Dest::Named(n) => (n, None),
            Dest::WithUrl(n, u) => (n, Some(u)),
        })
        .collect())
}
