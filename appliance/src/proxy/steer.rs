//! Steering intercepted connections to the proxy's listener: an nftables TPROXY rule for the TCP ports of
//! application rules (a set, rewritten atomically on reload), a fwmark policy route that delivers the marked
//! packets locally, and a drop rule behind the TPROXY rule so that, whenever the listener is missing, nothing
//! on those ports is ever forwarded by the kernel unfiltered. Set up by `portcullis run`, removed on exit.
//!
//! Only packets that cross the appliance are steered: a local source (a flow the data plane already
//! SNATed and handed to the kernel while ARP resolves) or a local destination (replies to the proxy's own
//! upstream sockets, traffic to the appliance itself) is left alone.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The nftables table (family `ip`) the proxy owns.
pub const TABLE: &str = "portcullis_proxy";
/// Packet mark of steered packets, and the routing table / rule preference that delivers them locally.
pub const MARK: u32 = 0x0050_4301;
pub const ROUTE_TABLE: u32 = 5043;
pub const RULE_PREF: u32 = 5043;
/// How long an `nft`/`ip` invocation may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("running {command}: {source} (is the nftables package installed?)")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{command} did not finish within {COMMAND_TIMEOUT:?}")]
    Timeout { command: String },
}

/// What to steer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Interfaces clients' traffic arrives on (the internal one; in one-arm mode the only one).
    pub interfaces: Vec<String>,
    /// The transparent listener's port.
    pub listen_port: u16,
}

/// The whole table, replacing any earlier one in one transaction.
pub fn ruleset(spec: &Spec, ports: &BTreeSet<u16>) -> String {
    let ifaces = spec
        .interfaces
        .iter()
        .map(|i| format!("\"{}\"", i.replace('"', "")))
        .collect::<Vec<_>>()
        .join(", ");
    let elements = if ports.is_empty() {
        String::new()
    } else {
        format!(
            "\n        elements = {{ {} }}",
            ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        )
    };
    let m = "fib saddr type != local fib daddr type != local";
    format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n    set app_ports {{\n        type inet_service{elements}\n    }}\n    chain prerouting {{\n        type filter hook prerouting priority mangle; policy accept;\n        iifname {{ {ifaces} }} {m} tcp dport @app_ports tproxy to :{port} meta mark set {MARK:#x} counter accept\n        iifname {{ {ifaces} }} {m} tcp dport @app_ports counter drop\n    }}\n}}\n",
        port = spec.listen_port
    )
}

/// The set rewritten atomically (a reload that changes the application-rule ports).
pub fn set_ports_script(ports: &BTreeSet<u16>) -> String {
    let mut s = format!("flush set ip {TABLE} app_ports\n");
    if !ports.is_empty() {
        s.push_str(&format!(
            "add element ip {TABLE} app_ports {{ {} }}\n",
            ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        ));
    }
    s
}

/// Installed steering; [`Steering::remove`] undoes it (also the leftovers of a killed earlier process,
/// which [`Steering::install`] replaces).
#[derive(Debug)]
pub struct Steering {
    spec: Spec,
    ports: BTreeSet<u16>,
}

impl Steering {
    pub fn install(spec: Spec, ports: BTreeSet<u16>) -> Result<Self, SteerError> {
        nft(&ruleset(&spec, &ports))?;
        remove_route();
        let mark = format!("{MARK:#x}");
        let (table, pref) = (ROUTE_TABLE.to_string(), RULE_PREF.to_string());
        let installed = ip(&["rule", "add", "fwmark", &mark, "lookup", &table, "pref", &pref])
            .and_then(|_| ip(&["route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", &table]));
        if let Err(e) = installed {
            remove_route();
            let _ = nft(&format!("delete table ip {TABLE}\n"));
            return Err(e);
        }
        Ok(Self { spec, ports })
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn ports(&self) -> &BTreeSet<u16> {
        &self.ports
    }

    pub fn set_ports(&mut self, ports: BTreeSet<u16>) -> Result<(), SteerError> {
        if ports != self.ports {
            nft(&set_ports_script(&ports))?;
            self.ports = ports;
        }
        Ok(())
    }

    pub fn remove(self) -> Result<(), SteerError> {
        remove_route();
        nft(&format!("delete table ip {TABLE}\n"))
    }
}

/// Removes the policy route (every copy; errors mean there is none left).
fn remove_route() {
    let mark = format!("{MARK:#x}");
    let (table, pref) = (ROUTE_TABLE.to_string(), RULE_PREF.to_string());
    for _ in 0..8 {
        if ip(&["rule", "del", "fwmark", &mark, "lookup", &table, "pref", &pref]).is_err() {
            break;
        }
    }
    let _ = ip(&["route", "flush", "table", &table]);
}

fn nft(script: &str) -> Result<(), SteerError> {
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"]);
    run(cmd, Some(script), "nft -f -")
}

fn ip(args: &[&str]) -> Result<(), SteerError> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run(cmd, None, &format!("ip {}", args.join(" ")))
}

fn run(mut cmd: Command, stdin: Option<&str>, what: &str) -> Result<(), SteerError> {
    let spawn = |source| SteerError::Spawn {
        command: what.to_owned(),
        source,
    };
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        match child.try_wait().map_err(spawn)? {
            Some(status) => {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                return if status.success() {
                    Ok(())
                } else {
                    Err(SteerError::Failed {
                        command: what.to_owned(),
                        stderr: stderr.trim().to_owned(),
                    })
                };
            }
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SteerError::Timeout {
                    command: what.to_owned(),
                });
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            interfaces: vec!["in0".into()],
            listen_port: 15001,
        }
    }

    #[test]
    fn ruleset_replaces_the_table_and_lists_ports() {
        let s = ruleset(&spec(), &BTreeSet::from([443, 80, 8443]));
        assert!(s.starts_with("table ip portcullis_proxy\ndelete table ip portcullis_proxy\n"));
        assert!(s.contains("elements = { 80, 443, 8443 }"), "{s}");
        assert!(s.contains("tproxy to :15001 meta mark set 0x504301"), "{s}");
        // The drop rule follows the steering rule: with no listener nothing is forwarded.
        let tproxy = s.find("tproxy").unwrap();
        let drop = s.find("counter drop").unwrap();
        assert!(drop > tproxy);
        assert!(s.contains("iifname { \"in0\" }"));
    }

    #[test]
    fn empty_port_set_has_no_elements_line() {
        let s = ruleset(&spec(), &BTreeSet::new());
        assert!(!s.contains("elements"));
        assert_eq!(
            set_ports_script(&BTreeSet::new()),
            "flush set ip portcullis_proxy app_ports\n"
        );
        assert_eq!(
            set_ports_script(&BTreeSet::from([80])),
            "flush set ip portcullis_proxy app_ports\nadd element ip portcullis_proxy app_ports { 80 }\n"
        );
    }
}
