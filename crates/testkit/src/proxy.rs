//! A TCP proxy that fails the first N connections with an HTTP error status.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Answers the first `failures` connections with `status` (and `Connection: close`),
/// then forwards bytes both ways to `127.0.0.1:upstream`. Runs until dropped.
pub struct FlakyProxy {
    pub port: u16,
    served_errors: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FlakyProxy {
    pub async fn start(upstream: u16, failures: usize, status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let n = counter.fetch_add(1, Ordering::SeqCst);
                if n < failures {
                    tokio::spawn(async move {
                        // Read the request head first so the client sees a clean answer.
                        let mut buf = [0u8; 16384];
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                            let _ = tokio::io::AsyncReadExt::read(&mut client, &mut buf).await;
                        })
                        .await;
                        let reason = if status == 429 {
                            "Too Many Requests"
                        } else {
                            "Service Unavailable"
                        };
                        let resp = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        let _ = client.write_all(resp.as_bytes()).await;
                        let _ = client.shutdown().await;
                    });
                } else {
                    tokio::spawn(async move {
                        if let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                        }
                    });
                }
            }
        });
        Self {
            port,
            served_errors: served,
            task,
        }
    }

    /// How many connections got the error answer so far.
    pub fn errors_served(&self, failures: usize) -> usize {
        self.served_errors.load(Ordering::SeqCst).min(failures)
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
