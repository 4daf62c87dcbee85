//! georep-http: the HTTP(S) endpoints georep serves to clients outside it (relay
//! publishers, concierge devices), their connections guarded: at most [`MAX_CONNECTIONS`] open at
//! once (more wait in the kernel's backlog), TLS handshakes done off the accept loop
//! with a deadline (a slow client cannot stall others), headers read within
//! [`HEADERS`], and a connection that moves no byte either way for [`IDLE`] closed, so
//! neither slow headers, slow bodies nor unread answers hold a slot forever.

pub mod entra;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::rustls;

/// Connections served at once per relay.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection that sends nothing this long is closed.
pub const IDLE: Duration = Duration::from_secs(60);
const HANDSHAKE: Duration = Duration::from_secs(10);
/// A request's headers must arrive within this.
pub const HEADERS: Duration = Duration::from_secs(10);

/// Loads the certificate chain and key publishers are served with.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            format!(
                "tls_cert {}: {e}; give a PEM certificate chain",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "tls_cert {} holds no certificate; give a PEM certificate chain",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("tls_key {}: {e}; give a PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, private))
        .map(|mut c| {
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(c)
        })
        .map_err(|e| {
            format!(
                "tls_cert {} and tls_key {} do not make a TLS identity: {e}",
                cert.display(),
                key.display()
            )
        })
}

enum Inner {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection: holds its slot until dropped, and closes when idle.
pub struct Conn {
    inner: Inner,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_after: Duration,
    /// When the idle timer was last moved.
    moved: tokio::time::Instant,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        let r = match &mut me.inner {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        me.timed(cx, r)
    }
}

impl Conn {
    /// A pending read or write fails once the connection has been idle too long; any
    /// progress resets the clock.
    fn timed<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                // Moving the timer costs a lock on the timer wheel: at most once a
                // second, which the idle limit does not notice.
                let now = tokio::time::Instant::now();
                if now >= self.moved + Duration::from_secs(1) {
                    self.moved = now;
                    self.idle.as_mut().reset(now + self.idle_after);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection moved no byte for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        let r = match &mut me.inner {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        me.timed(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        let r = match &mut me.inner {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        };
        me.timed(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connections ready to serve, for `axum::serve`.
pub struct Guarded {
    ready: mpsc::Receiver<(Conn, SocketAddr)>,
}

impl Guarded {
    /// Accepts on `listener` until `stop`, `tls` handshakes done in tasks of their own.
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        stop: watch::Receiver<bool>,
    ) -> io::Result<Self> {
        Self::with_limits(listener, tls, stop, (MAX_CONNECTIONS, IDLE))
    }

    fn with_limits(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        mut stop: watch::Receiver<bool>,
        (max, idle_after): (usize, Duration),
    ) -> io::Result<Self> {
        let (tx, ready) = mpsc::channel(64);
        let slots = Arc::new(Semaphore::new(max));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let slot = tokio::select! {
                    s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => return },
                    _ = stop.changed() => return,
                };
                let (tcp, peer) = tokio::select! {
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors and the like: wait, do not spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = stop.changed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let idle = Box::pin(tokio::time::sleep(idle_after));
                match &acceptor {
                    None => {
                        let conn = Conn {
                            inner: Inner::Plain(tcp),
                            idle,
                            idle_after,
                            moved: tokio::time::Instant::now(),
                            _slot: slot,
                        };
                        if tx.send((conn, peer)).await.is_err() {
                            return;
                        }
                    }
                    Some(acceptor) => {
                        let (acceptor, tx) = (acceptor.clone(), tx.clone());
                        tokio::spawn(async move {
                            match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                                Ok(Ok(s)) => {
                                    let conn = Conn {
                                        inner: Inner::Tls(Box::new(s)),
                                        idle,
                                        idle_after,
                                        moved: tokio::time::Instant::now(),
                                        _slot: slot,
                                    };
                                    let _ = tx.send((conn, peer)).await;
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed")
                                }
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
        });
        Ok(Self { ready })
    }
}

impl Guarded {
    /// The next connection; `None` once stopped.
    pub async fn accept(&mut self) -> Option<(Conn, SocketAddr)> {
        self.ready.recv().await
    }

    /// Serves `app` on every connection (HTTP/1.1; headers within [`HEADERS`]) until
    /// `stop`; then lets requests in flight finish.
    pub async fn serve(mut self, app: axum::Router, mut stop: watch::Receiver<bool>) {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let next = tokio::select! {
                c = self.accept() => c,
                _ = stop.changed() => None,
            };
            let Some((io, peer)) = next else { break };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let mut stop = stop.clone();
            conns.spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADERS)
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service);
                tokio::pin!(conn);
                let r = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
            });
            // Reap finished connections as we go.
            while conns.try_join_next().is_some() {}
        }
        while conns.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn connections_are_capped_and_idle_ones_closed() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let (_stop, rx) = watch::channel(false);
        let mut g =
            Guarded::with_limits(tcp, None, rx, (2, Duration::from_millis(300))).expect("guarded");
        let _c1 = TcpStream::connect(addr).await.expect("c1");
        let _c2 = TcpStream::connect(addr).await.expect("c2");
        let _c3 = TcpStream::connect(addr).await.expect("c3");
        let (mut a, _) = g.accept().await.expect("a");
        let (b, _) = g.accept().await.expect("b");
        // The third waits for a slot.
        assert!(tokio::time::timeout(Duration::from_millis(200), g.accept())
            .await
            .is_err());
        drop(b);
        let third = tokio::time::timeout(Duration::from_secs(5), g.accept()).await;
        assert!(third.is_ok(), "a freed slot lets the next one in");
        // A connection that sends nothing is closed after its idle time.
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(5), a.read(&mut buf))
            .await
            .expect("the idle deadline ends the read");
        assert_eq!(r.expect_err("idle").kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn bad_tls_files_are_named_with_the_fix() {
        let dir = tempfile::tempdir().expect("tmp");
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, "not a pem").expect("write");
        std::fs::write(&k, "not a pem").expect("write");
        let e = tls_config(&c, &k).expect_err("refused");
        assert!(e.contains("holds no certificate"), "{e}");
        let e = tls_config(&dir.path().join("missing"), &k).expect_err("refused");
        assert!(e.contains("tls_cert") && e.contains("missing"), "{e}");
    }
}
