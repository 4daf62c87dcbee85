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
    ) -> georep_component::Result<georep_db::postgres::SetupReport> {
        Ok(self.group(name)?.reseed(member).await?)
    }

    /// Stops a group once no role change is in progress: its listeners close and its
    /// proxied connections end (the route they follow is gone).
    async fn stop_one(&self, name: &str, r: Running) {
        let _quiet = r.group.idle().await;
        let _ = r.stop.send(true);
        let members: Vec<(String, String)> = std::iter::once(&r.started.1.primary)
            .chain(&r.started.1.replicas)
            .map(|m| (m.name.clone(), m.region.clone()))
            .collect();
        self.metrics.forget(name, &members);
    }

    async fn apply_inner(&self, topo: &Topology) -> Vec<Change> {
        let _one = self.applying.lock().await;
        let changes = self.plan(topo);
        for c in &changes {
            if matches!(c.action, ChangeAction::Change | ChangeAction::Remove) {
                let old = self
                    .running
                    .write()
                    .ok()
                    .and_then(|mut m| m.remove(&c.name));
                if let Some(old) = old {
                    tracing::info!(group = %c.name, action = ?c.action, "stopping failover group");
                    self.stop_one(&c.name, old).await;
                }
            }
        }
        let mut done = Vec::new();
        for mut c in changes {
            if matches!(c.action, ChangeAction::Add | ChangeAction::Change) {
                let started = topo
                    .failover_groups
                    .iter()
                    .find(|g| g.name == c.name)
                    .and_then(|g| settings(topo, g));
                let Some(started) = started else {
                    c.error = Some(format!(
                        "failover group '{}': its database is not in the topology",
                        c.name
                    ));
                    done.push(c);
                    continue;
                };
                let (stop, rx) = watch::channel(false);
                match Group::start(started.0.clone(), started.1.clone(), self.state.clone(), rx)
                    .await
                {
                    Ok(group) => {
                        if let Ok(mut m) = self.running.write() {
                            m.insert(
                                c.name.clone(),
                                Running {
                                    group,
                                    started,
                                    stop,
                                },
                            );
                        }
                    }
                    Err(e) => {
                        tracing::error!(group = %c.name, error = %e, "cannot start failover group");
                        c.error = Some(e.to_string());
                    }
                }
            }
            done.push(c);
        }
        done
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
            FailoverError::InvalidConfig(_) | FailoverError::Bind { .. } => K::Invalid,
            FailoverError::Api(e) if e.exit_class() == 3 => K::Unavailable,
            FailoverError::Db(_) | FailoverError::State(_) | FailoverError::Api(_) => K::Internal,
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
