//! The listeners: accept, look up the route in memory, splice bytes both ways.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Where listeners send new connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The epoch this route belongs to (as recorded in the state store).
    pub epoch: i64,
    /// `host:port` of the primary.
    pub read_write: Option<String>,
    /// `host:port` of a healthy replica (or the primary, if configured).
    pub read_only: Option<String>,
    /// While true, new connections wait (a failover is switching roles).
    pub held: bool,
}

/// Which route a listener follows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    ReadWrite,
    ReadOnly,
}

/// The longest a new connection waits for a failover to finish before it is closed.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

/// Serves one listener until `stop` changes.
pub(crate) async fn serve(
    listener: TcpListener,
    kind: Kind,
    route: watch::Receiver<Route>,
    mut stop: watch::Receiver<bool>,
) {
    let route = Arc::new(route);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (client, _) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let rx = (*route).clone();
        tokio::spawn(async move {
            if let Err(e) = handle(client, kind, rx).await {
                tracing::debug!(error = %e, "proxied connection ended");
            }
        });
    }
}

async fn handle(
    client: TcpStream,
    kind: Kind,
    mut rx: watch::Receiver<Route>,
) -> std::io::Result<()> {
    // Wait out a failover in progress: the client sees a slow connect, not an error.
    let route = match tokio::time::timeout(HOLD_LIMIT, rx.wait_for(|r| !r.held)).await {
        Ok(Ok(r)) => r.clone(),
        _ => return Ok(()),
    };
    let target = match kind {
        Kind::ReadWrite => route.read_write.clone(),
        Kind::ReadOnly => route.read_only.clone(),
    };
    let Some(target) = target else {
        // Nowhere to go: closing tells the client at once.
        return Ok(());
    };
    let mut upstream = TcpStream::connect(&target).await?;
    let mut client = client;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let epoch = route.epoch;
    // A connection lives in the epoch it was routed in: a newer epoch closes it, so no
    // session keeps writing to a demoted primary.
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => r.map(|_| ()),
        _ = rx.wait_for(|r| r.epoch != epoch) => Ok(()),
    }
}
