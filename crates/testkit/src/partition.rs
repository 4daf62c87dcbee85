//! A TCP link a test can cut and heal, standing for the network between two regions.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Forwards `127.0.0.1:port` to `127.0.0.1:upstream`. While cut, bytes stop both ways
/// and new connections get no answer (silent drops, as a partition looks from either
/// side); healing closes what was held and forwards new connections again.
pub struct Partition {
    pub port: u16,
    cut: Arc<AtomicBool>,
    heals: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

#[derive(Clone)]
struct Link {
    cut: Arc<AtomicBool>,
    heals: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Link {
    /// Whether a connection made in heal era `era` must be dropped.
    fn over(&self, era: u64) -> bool {
        self.stop.load(Ordering::SeqCst) || self.heals.load(Ordering::SeqCst) != era
    }
}

impl Partition {
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind partition proxy");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let link = Link {
            cut: Arc::new(AtomicBool::new(false)),
            heals: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let l = link.clone();
        std::thread::spawn(move || {
            while !l.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let l = l.clone();
                        std::thread::spawn(move || handle(c, upstream, l));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            port,
            cut: link.cut,
            heals: link.heals,
            stop: link.stop,
        }
    }

    /// Stops every byte both ways, silently.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Restores the link; connections held through the cut are closed.
    pub fn heal(&self) {
        self.heals.fetch_add(1, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn handle(client: TcpStream, upstream: u16, link: Link) {
    let era = link.heals.load(Ordering::SeqCst);
    while link.cut.load(Ordering::SeqCst) {
        if link.over(era) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if link.over(era) {
        return;
    }
    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (Ok(c2), Ok(u2)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let l2 = link.clone();
    std::thread::spawn(move || pump(c2, u2, l2, era));
    pump(up, client, link, era);
}

fn pump(mut from: TcpStream, mut to: TcpStream, link: Link, era: u64) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if link.over(era) {
            break;
        }
        if link.cut.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
