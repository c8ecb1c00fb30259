//! Child processes with bounded waits: [`run`] (run to completion or kill at the deadline) and [`Proc`] (a
//! long-running process killed, with its whole process group, when dropped — also during a panic).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::HarnessError;

/// `program arg arg …` for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `Ok(stdout)` if the command succeeded, else an error with its stderr.
    pub fn ok(self) -> Result<String, HarnessError> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            Err(HarnessError::Failed {
                command: self.command,
                detail: format!("{}: {}", self.status, self.stderr.trim()),
            })
        }
    }
}

fn reader(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` to completion, killing it (and its process group) if it is still running after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, HarnessError> {
    let command = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| HarnessError::Spawn {
            command: command.clone(),
            source: e,
        })?;
    let out = reader(child.stdout.take().expect("piped stdout"));
    let err = reader(child.stderr.take().expect("piped stderr"));
    let status = match wait_until(&mut child, Instant::now() + timeout) {
        Some(s) => s,
        None => {
            kill_group(&mut child);
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            return Err(HarnessError::Timeout {
                what: command,
                after: timeout,
                detail: format!("stdout: {}\nstderr: {}", stdout.trim(), stderr.trim()),
            });
        }
    };
    Ok(Output {
        command,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

fn kill_group(child: &mut Child) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = child.kill();
    let _ = wait_until(child, Instant::now() + Duration::from_secs(5));
}

/// A long-running child process with its stdout and stderr in files. Dropping it kills its process group
/// (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub command: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` in a new process group, stdout/stderr to `<dir>/<name>.out` and `.err`.
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Result<Self, HarnessError> {
        let command = describe(cmd);
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let file = |p: &Path| {
            std::fs::File::create(p).map_err(|e| HarnessError::Io {
                what: format!("creating {}", p.display()),
                source: e,
            })
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file(&stdout)?)
            .stderr(file(&stderr)?)
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError::Spawn {
                command: command.clone(),
                source: e,
            })?;
        Ok(Proc {
            name: name.to_owned(),
            command,
            child,
            stdout,
            stderr,
            status: None,
        })
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends `sig` to the process (not its group).
    pub fn signal(&self, sig: Signal) -> Result<(), HarnessError> {
        kill(self.pid(), sig).map_err(|e| HarnessError::Io {
            what: format!("kill -{sig} {} ({})", self.pid(), self.name),
            source: e.into(),
        })
    }

    /// The exit status if the process has exited, else `None` (does not block).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_until(&mut self.child, Instant::now() + timeout);
        }
        self.status
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Kills the process group now.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            kill_group(&mut self.child);
            self.status = self.child.try_wait().ok().flatten();
        } else {
            // The leader is gone; workers it left in the group (nginx) still get the signal.
            let _ = killpg(self.pid(), Signal::SIGKILL);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
