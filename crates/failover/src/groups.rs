//! [`Groups`], the failover-group component: one [`Group`] per `[[failover_groups]]`
//! entry, its listeners bound and its members probed, brought to each topology the
//! daemon applies. A group whose settings (or whose database's) are unchanged keeps
//! running untouched, proxied connections included; a changed one is stopped once no
//! role change is in progress and started again with the new settings.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use georep_component::{changed_fields, BoxFuture, Change, ChangeAction, Component, Context};
use georep_core::{Database, FailoverGroup, Topology};
use georep_state::State;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::{FailoverError, FailoverReport, Group, GroupStatus};

/// The section of the topology this component runs.
const SECTION: &str = "failover_groups";
/// How long a reload waits for a role change in progress before leaving the group as
/// it is.
const RETIRE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// One running group with the settings it was started with.
struct Running {
    group: Arc<Group>,
    started: (FailoverGroup, Database),
    stop: watch::Sender<bool>,
}

/// Every failover group of the topology, listening.
pub struct Groups {
    state: Arc<State>,
    metrics: GroupMetrics,
    running: RwLock<BTreeMap<String, Running>>,
    applying: tokio::sync::Mutex<()>,
}

fn settings(topo: &Topology, g: &FailoverGroup) -> Option<(FailoverGroup, Database)> {
    topo.database(&g.database).map(|d| (g.clone(), d.clone()))
}

fn differences(o: &(FailoverGroup, Database), n: &(FailoverGroup, Database)) -> Vec<String> {
    let mut f = Vec::new();
    if o.0 != n.0 {
        let (a, b) = (&o.0, &n.0);
        f = changed_fields!(a, b; database, read_write_listener, read_only_listener,
            read_only_to_primary, policy, grace_period, max_data_loss, probe_interval,
            probe_timeout, probe_failures, max_connections);
        if f.is_empty() {
            f.push("settings".into());
        }
    }
    if o.1 != n.1 {
        f.push("database".into());
    }
    f.dedup();
    f
}

impl Groups {
    /// Built empty; [`Component::apply`] starts the topology's groups.
    pub fn new(ctx: &Context) -> Self {
        Self {
            state: ctx.state.clone(),
            metrics: GroupMetrics::register(&ctx.metrics),
            running: RwLock::new(BTreeMap::new()),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    fn group(&self, name: &str) -> georep_component::Result<Arc<Group>> {
        self.running
            .read()
            .ok()
            .and_then(|m| m.get(name).map(|r| r.group.clone()))
            .ok_or_else(|| {
                georep_component::Error::not_found(format!(
                    "no failover group named '{name}' in the topology"
                ))
            })
    }

    fn groups(&self) -> Vec<Arc<Group>> {
        self.running
            .read()
            .map(|m| m.values().map(|r| r.group.clone()).collect())
            .unwrap_or_default()
    }

    /// Every group's status.
    pub fn statuses(&self) -> georep_component::Result<Vec<GroupStatus>> {
        self.groups()
            .iter()
            .map(|g| g.status().map_err(Into::into))
            .collect()
    }

    pub fn status(&self, name: &str) -> georep_component::Result<GroupStatus> {
        Ok(self.group(name)?.status()?)
    }

    /// Planned (or, with `force`, forced) failover of a group to `to` (member name or
    /// region; default: a healthy replica).
    pub async fn failover(
        &self,
        name: &str,
        to: Option<&str>,
        force: bool,
    ) -> georep_component::Result<FailoverReport> {
        let g = self.group(name)?;
        let r = if force {
            g.force(to, "forced", None).await
        } else {
            g.failover(to).await
        };
        Ok(r?)
    }

    /// Rebuilds a fenced member of a group as a replica.
    pub async fn reseed(
        &self,
        name: &str,
        member: &str,
    ) -> georep_component::Result<georep_api::ReseedReport> {
        Ok(self.group(name)?.reseed(member).await?)
    }

    /// Retires a running group (waiting up to [`RETIRE_WAIT`] for a role change in
    /// progress), closes its listeners (their proxied sessions end: the route they
    /// follow is gone) and waits for its probe loop to end. `Err`: a role change is
    /// still running; the group was left as it is.
    async fn stop_one(&self, name: &str) -> Result<(), String> {
        let Some(group) = self
            .running
            .read()
            .ok()
            .and_then(|m| m.get(name).map(|r| r.group.clone()))
        else {
            return Ok(());
        };
        if !group.retire(RETIRE_WAIT).await {
            return Err(format!(
                "a role change of '{name}' is in progress; the group keeps running as it was: reload again once it is done"
            ));
        }
        let old = self.running.write().ok().and_then(|mut m| m.remove(name));
        if let Some(old) = old {
            let _ = old.stop.send(true);
            old.group.join().await;
            let members: Vec<(String, String)> = std::iter::once(&old.started.1.primary)
                .chain(&old.started.1.replicas)
                .map(|m| (m.name.clone(), m.region.clone()))
                .collect();
            self.metrics.forget(name, &members);
        }
        Ok(())
    }

    /// Starts a group; `rebinding` when it replaces one that held the same addresses.
    async fn start_one(
        &self,
        name: &str,
        started: (FailoverGroup, Database),
        rebinding: bool,
    ) -> Result<(), String> {
        let (stop, rx) = watch::channel(false);
        let group = Group::start(
            started.0.clone(),
            started.1.clone(),
            self.state.clone(),
            rx,
            rebinding,
        )
        .await
        .map_err(|e| e.to_string())?;
        if let Ok(mut m) = self.running.write() {
            m.insert(
                name.to_string(),
                Running {
                    group,
                    started,
                    stop,
                },
            );
        }
        Ok(())
    }

    /// What must hold before a group is (re)started with `new`, checked while the old
    /// one still runs: its new listener addresses are free, and the member the state
    /// records as primary is still a member (identity is by name).
    fn preflight(
        &self,
        new: &(FailoverGroup, Database),
        old: Option<&FailoverGroup>,
    ) -> Result<(), String> {
        let (g, db) = new;
        let held: Vec<std::net::SocketAddr> = old
            .map(|o| {
                std::iter::once(o.read_write_listener)
                    .chain(o.read_only_listener)
                    .collect()
            })
            .unwrap_or_default();
        for addr in std::iter::once(g.read_write_listener).chain(g.read_only_listener) {
            if !held.contains(&addr) {
                std::net::TcpListener::bind(addr).map_err(|e| {
                    format!("cannot listen on {addr}: {e}; choose a free address for the failover group's listener")
                })?;
            }
        }
        if let Ok(Some(rec)) = self.state.failover(&g.name) {
            if db.member(&rec.primary).is_none() {
                return Err(format!(
                    "failover group '{}' records '{}' as its primary (epoch {}), which is not a member of database '{}' in the new file; keep the member's name, or fail over first",
                    g.name, rec.primary, rec.epoch, db.name
                ));
            }
        }
        Ok(())
    }

    async fn apply_inner(&self, topo: &Topology) -> Vec<Change> {
        let _one = self.applying.lock().await;
        let mut done = Vec::new();
        for mut c in self.plan(topo) {
            let new = topo
                .failover_groups
                .iter()
                .find(|g| g.name == c.name)
                .and_then(|g| settings(topo, g));
            let old = self
                .running
                .read()
                .ok()
                .and_then(|m| m.get(&c.name).map(|r| r.started.clone()));
            let result = match (c.action, new, old) {
                (ChangeAction::Remove, _, _) => {
                    tracing::info!(group = %c.name, "stopping failover group (removed)");
                    self.stop_one(&c.name).await
                }
                (ChangeAction::Add, Some(new), _) => match self.preflight(&new, None) {
                    Ok(()) => self.start_one(&c.name, new, false).await,
                    Err(e) => Err(e),
                },
                (ChangeAction::Change, Some(new), Some(old)) => {
                    match self.preflight(&new, Some(&old.0)) {
                        Err(e) => Err(format!("{e}; the group keeps running as it was")),
                        Ok(()) => match self.stop_one(&c.name).await {
                            Err(e) => Err(e),
                            Ok(()) => match self.start_one(&c.name, new, true).await {
                                Ok(()) => Ok(()),
                                // The old settings worked: bring them back.
                                Err(e) => match self.start_one(&c.name, old, true).await {
                                    Ok(()) => Err(format!("{e}; the group runs again with its previous settings")),
                                    Err(e2) => Err(format!("{e}; restarting it with its previous settings failed too: {e2}")),
                                },
                            },
                        },
                    }
                }
                _ => Err(format!(
                    "failover group '{}': its database is not in the topology",
                    c.name
                )),
            };
            if let Err(e) = result {
                tracing::error!(group = %c.name, error = %e, "failover group change not applied");
                c.error = Some(e);
            }
            done.push(c);
        }
        done
    }

    /// Listener addresses of groups `topo` would start that are taken now (checked
    /// before anything starts, so a daemon that cannot listen starts nothing).
    fn check_listeners(&self, topo: &Topology) -> Vec<String> {
        self.plan(topo)
            .into_iter()
            .filter(|c| c.action == ChangeAction::Add)
            .filter_map(|c| {
                let g = topo.failover_groups.iter().find(|g| g.name == c.name)?;
                let new = settings(topo, g)?;
                self.preflight(&new, None)
                    .err()
                    .map(|e| format!("failover group '{}': {e}", c.name))
            })
            .collect()
    }
}

impl Component for Groups {
    fn section(&self) -> &'static str {
        SECTION
    }

    fn plan(&self, topo: &Topology) -> Vec<Change> {
        let old: Vec<_> = self
            .running
            .read()
            .map(|m| {
                m.iter()
                    .map(|(n, r)| (n.clone(), r.started.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let new: Vec<_> = topo
            .failover_groups
            .iter()
            .filter_map(|g| settings(topo, g).map(|s| (g.name.clone(), s)))
            .collect();
        georep_component::diff(SECTION, &old, &new, differences)
    }

    fn apply<'a>(&'a self, topo: &'a Topology) -> BoxFuture<'a, Vec<Change>> {
        Box::pin(self.apply_inner(topo))
    }

    fn preflight(&self, topo: &Topology) -> Vec<String> {
        self.check_listeners(topo)
    }

    fn refresh(&self) {
        for g in self.groups() {
            if let Ok(s) = g.status() {
                self.metrics.update(&s);
            }
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let all: Vec<(String, Running)> = self
                .running
                .write()
                .map(|mut m| std::mem::take(&mut *m).into_iter().collect())
                .unwrap_or_default();
            for (_, r) in &all {
                let _ = r.stop.send(true);
            }
            for (_, r) in &all {
                r.group.join().await;
            }
        })
    }
}

/// A failover-group error as the API reports it: refusals are conflicts, members that
/// cannot be reached (or time out, or fail a statement) make the service unavailable.
impl From<FailoverError> for georep_component::Error {
    fn from(e: FailoverError) -> Self {
        use georep_component::ErrorKind as K;
        use georep_db::DbError;
        let kind = match &e {
            FailoverError::Refused(_) => K::Refused,
            FailoverError::Db(
                DbError::Unreachable { .. }
                | DbError::Busy { .. }
                | DbError::Auth { .. }
                | DbError::Timeout(_)
                | DbError::Sql { .. },
            ) => K::Unavailable,
            FailoverError::InvalidConfig(_)
            | FailoverError::Bind { .. }
            | FailoverError::Db(
                DbError::InvalidConfig(_) | DbError::Prerequisites(_) | DbError::Tool(_),
            ) => K::Invalid,
            FailoverError::Api(e) if e.exit_class() == 3 => K::Unavailable,
            FailoverError::State(_) | FailoverError::Api(_) => K::Internal,
        };
        georep_component::Error::new(kind, e)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabel {
    group: String,
    member: String,
    region: String,
}

/// Gauges for failover groups.
struct GroupMetrics {
    epoch: Family<GroupLabel, Gauge>,
    healthy: Family<MemberLabel, Gauge>,
    primary: Family<MemberLabel, Gauge>,
    fenced: Family<MemberLabel, Gauge>,
    held: Family<GroupLabel, Gauge>,
    unsettled: Family<GroupLabel, Gauge>,
}

impl GroupMetrics {
    fn register(m: &georep_component::Metrics) -> Self {
        let g = Self {
            epoch: Default::default(),
            healthy: Default::default(),
            primary: Default::default(),
            fenced: Default::default(),
            held: Default::default(),
            unsettled: Default::default(),
        };
        m.register(
            "failover_epoch",
            "A failover group's current epoch (one per role change)",
            g.epoch.clone(),
        );
        m.register(
            "failover_member_healthy",
            "1 while a member passes its health probes",
            g.healthy.clone(),
        );
        m.register(
            "failover_member_primary",
            "1 for the member the read-write listener routes to",
            g.primary.clone(),
        );
        m.register(
            "failover_member_fenced",
            "1 for a member never routed to again until reseeded",
            g.fenced.clone(),
        );
        m.register(
            "failover_connections_held",
            "1 while a role change holds new connections",
            g.held.clone(),
        );
        m.register(
            "failover_unsettled",
            "1 while a role change interrupted by a crash or an error is being rolled back or finished",
            g.unsettled.clone(),
        );
        g
    }

    fn update(&self, s: &GroupStatus) {
        let gl = GroupLabel {
            group: s.name.clone(),
        };
        self.epoch.get_or_create(&gl).set(s.epoch);
        self.held.get_or_create(&gl).set(s.route.held as i64);
        self.unsettled.get_or_create(&gl).set(s.unsettled as i64);
        for m in &s.members {
            let l = MemberLabel {
                group: s.name.clone(),
                member: m.member.clone(),
                region: m.region.clone(),
            };
            self.healthy.get_or_create(&l).set(m.healthy as i64);
            self.primary
                .get_or_create(&l)
                .set((m.member == s.primary) as i64);
            self.fenced
                .get_or_create(&l)
                .set(s.fenced.contains(&m.member) as i64);
        }
    }

    /// Drops a stopped group's series.
    fn forget(&self, group: &str, members: &[(String, String)]) {
        let gl = GroupLabel {
            group: group.to_string(),
        };
        for f in [&self.epoch, &self.held, &self.unsettled] {
            f.remove(&gl);
        }
        for (member, region) in members {
            let l = MemberLabel {
                group: group.to_string(),
                member: member.clone(),
                region: region.clone(),
            };
            for f in [&self.healthy, &self.primary, &self.fenced] {
                f.remove(&l);
            }
        }
    }
}
