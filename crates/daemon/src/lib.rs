//! georep-daemon: the composition root of `georep serve`.
//!
//! API boundary: [`Daemon`] — started from a topology and a state store, it builds every
//! registered component ([`components`] is the one list), applies the topology to each,
//! refreshes their gauges, reloads the topology file on request (`SIGHUP`,
//! `POST /api/v1/reload`) and shuts them down. Components are reached typed through
//! [`Daemon::get`].
//!
//! Adding a capability: a crate whose component implements
//! [`georep_component::Component`], and one line in [`components`].

pub mod plan;

use std::any::Any;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use georep_api::{Change, Reloaded};
use georep_component::{Component, Context, Error, ErrorKind, Metrics, Result};
use georep_core::Topology;
use georep_state::State;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Every capability the daemon runs, in start order (failover groups record their
/// epoch before the database pollers read it).
fn components(ctx: &Context) -> Result<Vec<Arc<dyn Component>>> {
    Ok(vec![
        Arc::new(georep_replicate::Policies::new(ctx)?),
        Arc::new(georep_failover::Groups::new(ctx)),
        Arc::new(georep_failover::Databases::new(ctx)),
        Arc::new(georep_backup::Backups::new(ctx)),
        Arc::new(georep_relay::Relays::new(ctx)),
        Arc::new(georep_concierge::Concierges::new(ctx)),
        Arc::new(georep_secrets::SecretSyncs::new(ctx)),
    ])
}

/// Reads the topology file again for a reload; `Err` is the message `validate` prints.
pub type Loader = Arc<dyn Fn() -> std::result::Result<Topology, String> + Send + Sync>;

/// Where the running topology came from, so a reload can read it again.
pub struct Source {
    /// Shown in reload reports.
    pub file: PathBuf,
    pub load: Loader,
}

/// The running daemon.
pub struct Daemon {
    ctx: Context,
    components: Vec<Arc<dyn Component>>,
    topo: RwLock<Arc<Topology>>,
    source: Option<Source>,
    /// One reload at a time; shutdown takes it too.
    reloading: tokio::sync::Mutex<()>,
    /// Set by shutdown: reloads are refused from then on.
    stopping: std::sync::atomic::AtomicBool,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Daemon {
    /// Builds every component and applies `topo` to each. Stores and databases are not
    /// required to answer (an unreachable region shows up in status), but a failover
    /// listener that cannot bind stops start-up.
    pub async fn start(
        topo: Topology,
        state: Arc<State>,
        source: Option<Source>,
    ) -> Result<Arc<Self>> {
        let ctx = Context {
            state,
            metrics: Arc::new(Metrics::default()),
        };
        let components = components(&ctx)?;
        // Nothing starts when something would stop the whole topology from starting.
        let blocked: Vec<String> = components.iter().flat_map(|c| c.preflight(&topo)).collect();
        if !blocked.is_empty() {
            return Err(Error::invalid(blocked.join("\n")));
        }
        let mut failed = Vec::new();
        for c in &components {
            for change in c.apply(&topo).await {
                if let Some(e) = change.error {
                    failed.push(format!("{} '{}': {e}", change.section, change.name));
                }
            }
        }
        let (stop, _) = watch::channel(false);
        let daemon = Arc::new(Self {
            ctx,
            components,
            topo: RwLock::new(Arc::new(topo)),
            source,
            reloading: tokio::sync::Mutex::new(()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            stop,
            tasks: Mutex::new(Vec::new()),
        });
        if !failed.is_empty() {
            daemon.shutdown().await;
            return Err(Error::invalid(failed.join("\n")));
        }
        daemon.spawn_refresh();
        Ok(daemon)
    }

    /// Refreshes every component's gauges about once a second (less often when reading
    /// them is slow, e.g. with a very large queue), so RPO breaches are logged as they
    /// start and end even when nobody reads `/metrics`.
    fn spawn_refresh(self: &Arc<Self>) {
        let (me, mut stop) = (Arc::downgrade(self), self.stop.subscribe());
        let t = tokio::spawn(async move {
            loop {
                let Some(d) = me.upgrade() else { break };
                let t = std::time::Instant::now();
                let d2 = d.clone();
                let _ = tokio::task::spawn_blocking(move || d2.refresh()).await;
                drop(d);
                let pause = Duration::from_secs(1).max(t.elapsed() * 20);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => break,
                }
            }
        });
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(t);
        }
    }

    fn refresh(&self) {
        for c in &self.components {
            c.refresh();
        }
    }

    /// A registered component by its type, e.g. `daemon.get::<georep_replicate::Policies>()`.
    pub fn get<T: Component>(&self) -> Option<&T> {
        self.components.iter().find_map(|c| {
            let any: &dyn Any = c.as_ref();
            any.downcast_ref::<T>()
        })
    }

    /// The topology applied last.
    fn topology(&self) -> Arc<Topology> {
        self.topo
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Reads the topology file again and applies the difference: components add, change
    /// or remove items; unchanged ones keep running untouched. A file with any error is
    /// refused with `validate`'s messages and the running configuration stays. With
    /// `dry_run`, only says what it would do.
    pub async fn reload(&self, dry_run: bool) -> Result<Reloaded> {
        let source = self.source.as_ref().ok_or_else(|| {
            Error::invalid(
                "this daemon was started without a topology file; restart it with -c FILE",
            )
        })?;
        let _one = self.reloading.lock().await;
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::refused(
                "the daemon is shutting down; nothing was reloaded",
            ));
        }
        // Reading the file resolves paths on disk: off the async workers.
        let load = source.load.clone();
        let mut new = tokio::task::spawn_blocking(move || load())
            .await
            .map_err(|e| Error::internal(e.to_string()))?
            .map_err(|msg| {
                Error::invalid(format!(
                    "{msg}\nthe reload was refused; the daemon keeps running the configuration it had"
                ))
            })?;
        let old = self.topology();
        let mut restart_needed = Vec::new();
        if new.state != old.state {
            restart_needed.push(format!(
                "[state] url {} → {}: the daemon keeps its state store until it is restarted",
                old.state.redacted_url(),
                new.state.redacted_url()
            ));
        }
        if new.server != old.server {
            restart_needed.push(
                "[server] (listen address or tokens): takes effect when georep serve is restarted"
                    .to_string(),
            );
        }
        let mut changes: Vec<Change> = Vec::new();
        if dry_run {
            for c in &self.components {
                changes.extend(c.plan(&new));
            }
        } else {
            for c in &self.components {
                changes.extend(c.apply(&new).await);
            }
            // `[server]` and `[state]` stay as started, so they are reported at every
            // reload until a restart applies them.
            new.server = old.server.clone();
            new.state = old.state.clone();
            if let Ok(mut t) = self.topo.write() {
                *t = Arc::new(new);
            }
            for c in &changes {
                match &c.error {
                    None => {
                        tracing::info!(section = %c.section, name = %c.name, action = ?c.action, fields = ?c.fields, "reload applied")
                    }
                    Some(e) => {
                        tracing::error!(section = %c.section, name = %c.name, action = ?c.action, error = %e, "reload could not apply this change")
                    }
                }
            }
            for r in &restart_needed {
                tracing::warn!("reload: {r}");
            }
            tracing::info!(changes = changes.len(), "topology reloaded");
        }
        Ok(Reloaded {
            file: source.file.display().to_string(),
            dry_run,
            changes,
            restart_needed,
        })
    }

    /// Reloads on every `SIGHUP` until shutdown; the outcome is logged. `hup` is made
    /// (with [`hangup`]) before the daemon starts, so a SIGHUP during start-up is not
    /// fatal: it is taken as a reload once the daemon runs.
    pub fn reload_on(self: &Arc<Self>, mut hup: tokio::signal::unix::Signal) {
        let (me, mut stop) = (Arc::downgrade(self), self.stop.subscribe());
        let t = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = hup.recv() => {}
                    _ = stop.changed() => break,
                }
                let Some(d) = me.upgrade() else { break };
                tracing::info!("SIGHUP: reloading the topology file");
                if let Err(e) = d.reload(false).await {
                    tracing::error!("{e}");
                }
            }
        });
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(t);
        }
    }

    /// The metrics in Prometheus text format, with gauges refreshed first.
    pub fn metrics_text(&self) -> String {
        self.refresh();
        self.ctx.metrics.encode()
    }

    /// Stops every component (transfers in flight finish briefly; unfinished work is
    /// resumed by the next start).
    pub async fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // A reload in progress finishes first; none starts after this.
        let _one = self.reloading.lock().await;
        let _ = self.stop.send(true);
        for c in &self.components {
            c.shutdown().await;
        }
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// Catches `SIGHUP` from now on (its default would end the process).
pub fn hangup() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Whether an error is the caller's (exit 2) or an unreachable member's (exit 3).
pub fn exit_class(e: &Error) -> u8 {
    match e.kind {
        ErrorKind::Unavailable | ErrorKind::Upstream => 3,
        ErrorKind::Internal => 1,
        _ => 2,
    }
}
