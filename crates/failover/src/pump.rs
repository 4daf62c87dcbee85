//! The byte pump between a client and its upstream, both ways in one task.
//!
//! `tokio::io::copy_bidirectional` reads again after every read until the socket says
//! EAGAIN: for the small request/response packets of a database session that is one
//! wasted system call per packet and direction. Like HAProxy, the pump takes a read
//! shorter than its buffer to mean the socket is drained (TCP hands over everything
//! queued, up to the buffer) and tells tokio it is not ready. The read runs inside
//! `try_io`, which only clears readiness that no newer event has set since the read
//! began, and the reactor is edge-triggered: data arriving after the read always wakes
//! the pump again.

use std::io::{self, Read};
use std::net::Shutdown;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Per direction: large enough for a result set's packets, small enough that ten
/// thousand connections stay within a few hundred MiB.
const BUF: usize = 16 * 1024;

/// Carries bytes both ways until both sides have closed (or one fails).
pub(crate) async fn pump(client: TcpStream, upstream: TcpStream) -> io::Result<()> {
    tokio::try_join!(one_way(&client, &upstream), one_way(&upstream, &client)).map(|_| ())
}

/// Copies `from` to `to` until `from` closes, then half-closes `to`.
async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        from.readable().await?;
        let mut got = 0;
        let read = from.try_io(Interest::READABLE, || {
            got = (&*SockRef::from(from)).read(&mut buf)?;
            if got > 0 && got < BUF {
                // Drained: the next readiness event wakes us; no EAGAIN read needed.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
        if got == 0 {
            // The peer is done sending; the other way may still carry a reply.
            let _ = SockRef::from(to).shutdown(Shutdown::Write);
            return Ok(());
        }
        let mut off = 0;
        while off < got {
            match to.try_write(&buf[off..got]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => off += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
