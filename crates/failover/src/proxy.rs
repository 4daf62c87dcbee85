//! The listeners: accept, look up the route in memory, splice bytes both ways.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use georep_api::Route;

/// Which route a listener follows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    ReadWrite,
    ReadOnly,
}

/// The longest a new connection waits for a failover to finish before it is closed.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

/// The data plane: one thread per core (at most 8), each with its own single-threaded
/// runtime. Client bytes never queue behind control-plane work (probes, SQLite,
/// scans); a connection lives on one thread, so its packets wake no other thread (a
/// work-stealing runtime added ~60 µs per round trip at low load), and connections are
/// dealt round robin over the threads so that every core carries them, as HAProxy's
/// threads do (both measured in `bench/failover.sh` and `bench/mysql.sh`).
fn data_plane() -> std::io::Result<Arc<Vec<tokio::runtime::Handle>>> {
    static DATA_PLANE: Mutex<Option<Arc<Vec<tokio::runtime::Handle>>>> = Mutex::new(None);
    let mut slot = DATA_PLANE
        .lock()
        .map_err(|_| std::io::Error::other("data-plane lock poisoned"))?;
    if let Some(h) = slot.as_ref() {
        return Ok(h.clone());
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("georep-listeners-{i}"))
            .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    }
    let handles = Arc::new(handles);
    *slot = Some(handles.clone());
    Ok(handles)
}

/// Serves `listener` on the data plane until `stop` changes.
pub(crate) fn spawn(
    listener: std::net::TcpListener,
    kind: Kind,
    max_connections: usize,
    route: watch::Receiver<Route>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let plane = data_plane()?;
    plane[0].clone().spawn(async move {
        match TcpListener::from_std(listener) {
            Ok(l) => serve(l, kind, max_connections, route, stop, plane).await,
            Err(e) => tracing::error!(error = %e, "cannot serve a failover listener"),
        }
    });
    Ok(())
}

/// Serves one listener until `stop` changes, carrying at most `max_connections` client
/// connections at once: beyond that a new one is closed at once (the client sees a
/// refused session, not a hang), so a flood cannot take every file descriptor.
async fn serve(
    listener: TcpListener,
    kind: Kind,
    max_connections: usize,
    route: watch::Receiver<Route>,
    mut stop: watch::Receiver<bool>,
    plane: Arc<Vec<tokio::runtime::Handle>>,
) {
    let route = Arc::new(route);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    let mut refused_logged = false;
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (client, _) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors (EMFILE) or a transient error: back off a little
                // instead of spinning on a listener that stays readable.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !refused_logged {
                tracing::warn!(
                    max_connections,
                    "a failover listener is at max_connections; new connections are closed until some end"
                );
                refused_logged = true;
            }
            drop(client);
            continue;
        };
        refused_logged = false;
        let rx = (*route).clone();
        // Handed to the next data-plane thread: the socket leaves this thread's
        // reactor and joins that one's.
        let client = match client.into_std() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand over a connection");
                continue;
            }
        };
        next = (next + 1) % plane.len();
        plane[next].spawn(async move {
            let _slot = slot;
            let result = match TcpStream::from_std(client) {
                Ok(client) => handle(client, kind, rx).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
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
        Kind::ReadOnly if route.read_only.is_empty() => None,
        Kind::ReadOnly => {
            // Round robin over the replicas.
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let i = NEXT.fetch_add(1, Ordering::Relaxed) % route.read_only.len();
            Some(route.read_only[i].clone())
        }
    };
    let Some(target) = target else {
        // Nowhere to go: closing tells the client at once.
        return Ok(());
    };
    let upstream = TcpStream::connect(&target).await?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let epoch = route.epoch;
    // A connection lives in the epoch it was routed in: a newer epoch closes it, so no
    // session keeps writing to a demoted primary. A read-write connection is also cut
    // the moment a role change holds the route: a forced failover must not let writes
    // reach a still-live old primary while the new one is being promoted.
    let read_write = matches!(kind, Kind::ReadWrite);
    tokio::select! {
        r = crate::pump::pump(client, upstream) => r,
        _ = rx.wait_for(|r| r.epoch != epoch || (read_write && r.held)) => Ok(()),
    }
}
