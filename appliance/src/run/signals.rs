//! SIGTERM, SIGINT and SIGHUP as messages on a channel: the signals are blocked in every thread and one thread
//! takes them with `sigwait`, so no handler runs in signal context and the main loop sees them in order.
#![forbid(unsafe_code)]

use std::sync::mpsc::Sender;
use std::thread;

use nix::sys::signal::{SigSet, Signal};

/// What the daemon is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM or SIGINT.
    Stop(Signal),
    /// SIGHUP.
    Reload,
}

fn set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Blocks the three signals in the calling thread; threads spawned afterwards inherit the mask. Call it first
/// thing, before any thread exists, so a signal that arrives during start-up waits for the main loop.
/// (Child processes start with an empty mask: std's `Command` resets it.)
pub fn block() -> nix::Result<()> {
    set().thread_block()
}

/// Starts the thread that turns signals into [`Request`]s. It ends when the receiver is gone (after the next
/// signal) or the process exits.
pub fn spawn(tx: Sender<Request>) -> std::io::Result<()> {
    thread::Builder::new().name("signals".into()).spawn(move || {
        let set = set();
        loop {
            let request = match set.wait() {
                Ok(Signal::SIGHUP) => Request::Reload,
                Ok(sig) => Request::Stop(sig),
                Err(_) => continue,
            };
            if tx.send(request).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}
