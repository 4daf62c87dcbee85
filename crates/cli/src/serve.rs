//! `georep serve`: the replication daemon with its HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use georep_daemon::{Daemon, Source};
use georep_state::State;

use crate::topology::{load, ConfigArg, ConfigFileError};

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Listen here instead of [server] listen (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
}

pub(crate) async fn run(a: ServeArgs) -> Result<u8> {
    // From here on SIGHUP means "reload", never "exit".
    let hup = georep_daemon::hangup().context("cannot catch SIGHUP")?;
    let topo = load(&a.config.config)?;
    // One daemon per state file: a second one would clear the first one's leases and
    // double every transfer and delete decision.
    let _lock = match topo.state.sqlite_path() {
        Some(db) => Some(lock_state(&db)?),
        None => None,
    };
    let state = State::open(&topo.state.url)
        .with_context(|| format!("state {}", topo.state.redacted_url()))?;
    let listen = a.listen.unwrap_or(topo.server.listen);
    let token = topo.server.token.clone();
    if !listen.ip().is_loopback() && token.is_none() {
        tracing::warn!(%listen, "the API listens beyond loopback without a token: anyone who reaches it can read status; set [server] token");
    }
    let (write_token, token_file) = crate::api_token::ensure(&topo, crate::api_token::Kind::Api)?;
    let (events_token, events_file) =
        crate::api_token::ensure(&topo, crate::api_token::Kind::Events)?;
    let listener = georep_server::bind(listen).await.map_err(ConfigFileError)?;
    let addr = listener.local_addr()?;
    let n = topo.policies.len();
    // A reload reads the same file the same way, with the state store it started with.
    let file = std::path::absolute(&a.config.config).unwrap_or(a.config.config.clone());
    let reread = file.clone();
    let source = Source {
        file: file.clone(),
        load: Arc::new(move || load(&reread).map_err(|e| format!("{e:#}"))),
    };
    let daemon = Daemon::start(topo, Arc::new(state), Some(source)).await?;
    daemon.reload_on(hup);
    println!("georep: replicating {n} policies; API on http://{addr}");
    if let Some(f) = &token_file {
        // Where the token is, never the token itself.
        println!(
            "georep: routes that change something need the token in {}",
            f.display()
        );
    }
    if let Some(f) = &events_file {
        println!(
            "georep: storage-event webhooks take ?token= with the token in {}",
            f.display()
        );
    }
    tracing::info!(%addr, policies = n, "serving");
    let access = georep_server::Access {
        token,
        write_token,
        events_token,
        loopback: listen.ip().is_loopback(),
    };
    georep_server::serve(listener, daemon.clone(), access, shutdown_signal()).await?;
    tracing::info!("shutting down: finishing transfers in flight");
    daemon.shutdown().await;
    Ok(0)
}

/// Takes an exclusive lock beside the state database, held until the process exits.
fn lock_state(db: &std::path::Path) -> Result<std::fs::File> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            ConfigFileError(format!("cannot create state folder {}: {e}", dir.display()))
        })?;
    }
    let path = db.with_extension("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ConfigFileError(format!("cannot open {}: {e}", path.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(ConfigFileError(format!(
            "another georep serve is using the state {}; stop it first (one daemon per state file)",
            db.display()
        ))
        .into()),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(ConfigFileError(format!("cannot lock {}: {e}", path.display())).into())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
