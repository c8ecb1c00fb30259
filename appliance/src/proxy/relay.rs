//! Moving bytes between the client and the origin once a connection is allowed: the first bytes of each
//! direction through a small buffer, then `splice(2)` through a pipe so bulk payload never enters user
//! space (the peeked ClientHello is still queued in the socket and goes first), half-closing each direction
//! on EOF, with an idle timeout shared by both directions.
//!
//! All helpers take `&TcpStream`: the two directions of one connection run in one task on shared
//! references, driven by tokio's readiness (`readable`/`try_io`), so no split halves or locks are needed.
#![forbid(unsafe_code)]

use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call (the pipe's default capacity).
const CHUNK: usize = 64 * 1024;

/// When either direction last moved a byte, for the idle timeout.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Resolves once nothing has moved for `idle`.
    pub async fn idle(&self, idle: Duration) {
        loop {
            let quiet = self.idle_for();
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)
}

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

/// Bytes a direction copies through a small buffer before it switches to splice: a pipe pair and its
/// syscalls cost more than they save on a short exchange (measured in bench/netns/tls.sh: copying was
/// cheaper per connection, splicing no dearer per byte on bulk).
const SPLICE_AFTER: u64 = 64 * 1024;
/// The copy buffer of the first bytes.
const COPY_CHUNK: usize = 16 * 1024;

/// Moves bytes `from` → `to` until EOF (or `limit` bytes): the first [`SPLICE_AFTER`] through a
/// buffer, the rest with splice(2) without entering user space. Returns the bytes moved; `to` is not
/// shut down (the caller decides).
pub async fn splice_copy(
    from: &TcpStream,
    to: &TcpStream,
    limit: Option<u64>,
    activity: &Activity,
    counter: &AtomicU64,
) -> io::Result<u64> {
    let remaining = |total: u64, chunk: usize| match limit {
        Some(l) => (l - total).min(chunk as u64) as usize,
        None => chunk,
    };
    let mut total = 0u64;
    {
        let mut buf = vec![0u8; COPY_CHUNK];
        while total < SPLICE_AFTER {
            let want = remaining(total, COPY_CHUNK);
            if want == 0 {
                return Ok(total);
            }
            let n = read_some(from, &mut buf[..want]).await?;
            if n == 0 {
                return Ok(total);
            }
            write_all(to, &buf[..n]).await?;
            total += n as u64;
            counter.fetch_add(n as u64, Ordering::Relaxed);
            activity.touch();
        }
    }
    let (pipe_r, pipe_w) = pipe()?;
    loop {
        let want = remaining(total, CHUNK);
        if want == 0 {
            return Ok(total);
        }
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing queued.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from, None, &pipe_w, None, want, flags()).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe_r, None, to, None, left, flags()).map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}

/// Writes all of `buf`.
pub async fn write_all(to: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        to.writable().await?;
        match to.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is available (at least one byte), or 0 at EOF.
pub async fn read_some(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        from.readable().await?;
        match from.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Peeks what is queued into `buf`, waiting until more than `have` bytes are (or EOF: returns `have`
/// or fewer). Never consumes.
pub async fn peek_more(from: &TcpStream, buf: &mut [u8], have: usize) -> io::Result<usize> {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let fd = from.as_raw_fd();
    loop {
        from.readable().await?;
        let r = from.try_io(Interest::READABLE, || {
            let n = recv(fd, buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)?;
            if n > have || n == 0 {
                Ok(n)
            } else {
                // Nothing new: report WouldBlock so tokio waits for the next arrival.
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        match r {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Half-closes `s` for writing (the peer sees EOF); errors mean it is already gone.
pub fn shutdown_write(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).shutdown(Shutdown::Write);
}

/// Closes with a TCP reset (a denied TLS connection): zero linger, then the caller drops the stream.
pub fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}
