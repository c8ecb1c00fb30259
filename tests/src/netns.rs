//! Named network namespaces (`ip netns add`) deleted on drop, with every process still inside killed first.
//!
//! Commands run inside a namespace through `nsenter --net=/run/netns/NAME` (not `ip netns exec`, which mounts a
//! private /sys and so hides bpffs at /sys/fs/bpf), under `setpriv --pdeathsig KILL`, so a child dies with the
//! test thread that started it even if the test process is killed before any destructor runs.

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::HarnessError;
use crate::cmd::{self, Output};

/// Bound for `ip` and similar configuration commands.
pub const CONFIG_TIMEOUT: Duration = Duration::from_secs(10);
/// Every namespace this harness creates starts with this prefix, then `<pid>-`.
pub const PREFIX: &str = "pce-";

/// Runs `ip <args>` in the caller's namespace (use `-n NS` to reach into one).
pub fn ip(args: &[&str]) -> Result<String, HarnessError> {
    cmd::run(Command::new("ip").args(args), CONFIG_TIMEOUT)?.ok()
}

/// A named network namespace.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `name` (deleting a leftover of the same name first: it can only come from a dead process that
    /// had our pid).
    pub fn create(name: &str) -> Result<Self, HarnessError> {
        if Path::new(&format!("/run/netns/{name}")).exists() {
            delete(name);
        }
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.to_owned() };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "KILL", "nsenter"])
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `program args…` inside the namespace, bounded by `timeout`.
    pub fn run(&self, program: &str, args: &[&str], timeout: Duration) -> Result<Output, HarnessError> {
        cmd::run(self.command(program).args(args), timeout)
    }

    /// `ip -n NS args…`.
    pub fn ip(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Writes a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), HarnessError> {
        self.run("sysctl", &["-q", "-w", &format!("{key}={value}")], CONFIG_TIMEOUT)?
            .ok()
            .map(drop)
    }

    /// Reads a sysctl inside the namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<String, HarnessError> {
        Ok(self
            .run("sysctl", &["-n", key], CONFIG_TIMEOUT)?
            .ok()?
            .trim()
            .to_owned())
    }

    /// Runs `f` on a new thread that has entered this namespace; sockets created there stay in it (and can be
    /// used from any thread afterwards).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, HarnessError> {
        let path = format!("/run/netns/{}", self.name);
        thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || -> Result<T, HarnessError> {
                let file = File::open(&path).map_err(|e| HarnessError::Io {
                    what: format!("opening {path}"),
                    source: e,
                })?;
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| HarnessError::Io {
                    what: format!("setns {path}"),
                    source: e.into(),
                })?;
                Ok(f())
            })
            .map_err(|e| HarnessError::Io {
                what: "spawning a thread".into(),
                source: e,
            })?
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Names of the interfaces in the namespace.
    pub fn links(&self) -> Result<Vec<String>, HarnessError> {
        let json = self.ip(&["-j", "link", "show"])?;
        let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| HarnessError::Failed {
            command: "ip -j link show".into(),
            detail: e.to_string(),
        })?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect())
    }

    /// The MAC address of `interface`.
    pub fn mac(&self, interface: &str) -> Result<String, HarnessError> {
        let json = self.ip(&["-j", "link", "show", "dev", interface])?;
        let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| HarnessError::Failed {
            command: format!("ip -j link show dev {interface}"),
            detail: e.to_string(),
        })?;
        v[0]["address"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| HarnessError::Failed {
                command: format!("ip -j link show dev {interface}"),
                detail: "no address".into(),
            })
    }
}

/// Kills every process in namespace `name` and deletes it; errors are ignored (best effort, used by drop).
fn delete(name: &str) {
    for _ in 0..3 {
        let pids = ip(&["netns", "pids", name]).unwrap_or_default();
        let pids: Vec<i32> = pids.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = ip(&["netns", "delete", name]);
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Whether `name` is `pce-<pid>-…` of a process that no longer exists.
fn stale(name: &str) -> bool {
    let Some(pid) = name
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return false;
    };
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

fn stale_entries(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| stale(&e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes what a dead test process of this harness left behind (`pce-<pid>-…` whose pid is gone):
/// namespaces (and the processes in them), scratch directories, bpffs pin directories.
pub fn sweep_stale() {
    for path in stale_entries(Path::new("/run/netns")) {
        delete(&path.file_name().unwrap_or_default().to_string_lossy());
    }
    for path in stale_entries(&std::env::temp_dir())
        .into_iter()
        .chain(stale_entries(Path::new("/sys/fs/bpf")))
    {
        let _ = std::fs::remove_dir_all(path);
    }
}
