//! Real peers and clients in the lab: nginx (answers every request with the client address it sees), curl,
//! ping, socat UDP/TCP echo servers, iperf3, and TCP/UDP probes from a thread inside a namespace.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::HarnessError;
use crate::cmd::{self, Proc};
use crate::lab::Lab;
use crate::netns::Netns;

/// How long servers get to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until a TCP connection to `addr` from inside `ns` succeeds.
pub fn wait_tcp(ns: &Netns, addr: SocketAddrV4, timeout: Duration) -> Result<(), HarnessError> {
    let ok = ns.enter(move || {
        cmd::eventually(timeout, || {
            TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_millis(200))
                .ok()
                .map(drop)
        })
        .is_some()
    })?;
    if ok {
        Ok(())
    } else {
        Err(HarnessError::Timeout {
            what: format!("a listener on {addr} in {}", ns.name),
            after: timeout,
            detail: String::new(),
        })
    }
}

impl Lab {
    /// nginx in `ns` on each of `listen`; every request gets `$remote_addr\n` (the client address as the
    /// server sees it). Returns once it accepts connections.
    pub fn nginx(&self, ns: &Netns, listen: &[SocketAddrV4]) -> Result<Proc, HarnessError> {
        let name = self.unique("nginx");
        let prefix = self.dir.join(&name);
        std::fs::create_dir_all(&prefix).map_err(|e| HarnessError::Io {
            what: format!("creating {}", prefix.display()),
            source: e,
        })?;
        let p = prefix.display();
        let servers: String = listen
            .iter()
            .map(|a| {
                format!(
                    "  server {{\n    listen {a};\n    location / {{\n      default_type text/plain;\n      \
                     return 200 \"$remote_addr\\n\";\n    }}\n  }}\n"
                )
            })
            .collect();
        let conf = format!(
            "worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\nevents {{ worker_connections 512; }}\n\
             http {{\n  access_log {p}/access.log;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  \
             fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n{servers}}}\n"
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| HarnessError::Io {
            what: format!("writing {}", conf_path.display()),
            source: e,
        })?;
        let prefix_arg = format!("{p}/");
        let err_log = format!("{p}/startup.log");
        let conf_arg = conf_path.to_string_lossy().into_owned();
        let proc = Proc::spawn(
            &name,
            ns.command("nginx")
                .args(["-p", &prefix_arg, "-e", &err_log, "-c", &conf_arg])
                .args(["-g", "daemon off;"]),
            &self.dir,
        )?;
        for a in listen {
            wait_tcp(ns, *a, START_TIMEOUT).map_err(|e| HarnessError::Failed {
                command: proc.command.clone(),
                detail: format!("{e}; stderr: {}", proc.stderr()),
            })?;
        }
        Ok(proc)
    }

    /// socat UDP echo server in `ns` on `addr`.
    pub fn udp_echo(&self, ns: &Netns, addr: SocketAddrV4) -> Result<Proc, HarnessError> {
        let listen = format!("UDP4-RECVFROM:{},bind={},fork,reuseaddr", addr.port(), addr.ip());
        let proc = self.spawn(ns, "udp-echo", "socat", &[&listen, "PIPE"])?;
        // No readiness signal for UDP: wait until the socket is bound.
        let bound = cmd::eventually(START_TIMEOUT, || {
            let out = ns
                .run("ss", &["-Hlun", &format!("sport = :{}", addr.port())], START_TIMEOUT)
                .ok()?;
            out.stdout.contains(&addr.port().to_string()).then_some(())
        });
        bound.map(|()| proc).ok_or_else(|| HarnessError::Timeout {
            what: format!("socat UDP echo on {addr}"),
            after: START_TIMEOUT,
            detail: String::new(),
        })
    }

    /// socat TCP echo server in `ns` on `addr`.
    pub fn tcp_echo(&self, ns: &Netns, addr: SocketAddrV4) -> Result<Proc, HarnessError> {
        let listen = format!("TCP4-LISTEN:{},bind={},fork,reuseaddr", addr.port(), addr.ip());
        let proc = self.spawn(ns, "tcp-echo", "socat", &[&listen, "PIPE"])?;
        wait_tcp(ns, addr, START_TIMEOUT)?;
        Ok(proc)
    }

    /// iperf3 server in `ns` on `addr`.
    pub fn iperf3_server(&self, ns: &Netns, addr: SocketAddrV4) -> Result<Proc, HarnessError> {
        let proc = self.spawn(
            ns,
            "iperf3-server",
            "iperf3",
            &["-s", "-B", &addr.ip().to_string(), "-p", &addr.port().to_string()],
        )?;
        wait_tcp(ns, addr, START_TIMEOUT)?;
        Ok(proc)
    }

    /// iperf3 client in `ns` toward `server` for `seconds` (JSON output); wait for it with [`Iperf::finish`].
    pub fn iperf3_client(&self, ns: &Netns, server: SocketAddrV4, seconds: u32) -> Result<Iperf, HarnessError> {
        let proc = self.spawn(
            ns,
            "iperf3-client",
            "iperf3",
            &[
                "-c",
                &server.ip().to_string(),
                "-p",
                &server.port().to_string(),
                "-t",
                &seconds.to_string(),
                "-J",
                "--connect-timeout",
                "3000",
            ],
        )?;
        Ok(Iperf {
            proc,
            deadline: Instant::now() + Duration::from_secs(u64::from(seconds) + 20),
        })
    }
}

/// A running iperf3 client.
pub struct Iperf {
    pub proc: Proc,
    deadline: Instant,
}

/// What an iperf3 client reported.
#[derive(Debug, Clone)]
pub struct IperfResult {
    pub success: bool,
    pub error: Option<String>,
    /// Bytes the server received.
    pub bytes_received: u64,
    /// Bytes sent in each interval (normally one per second).
    pub intervals: Vec<u64>,
    pub json: String,
}

impl Iperf {
    /// Waits for the client (bounded: its duration + 20 s) and parses its JSON report.
    pub fn finish(mut self) -> Result<IperfResult, HarnessError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let Some(status) = self.proc.wait_timeout(left) else {
            return Err(HarnessError::Timeout {
                what: self.proc.command.clone(),
                after: left,
                detail: self.proc.stdout(),
            });
        };
        let json = self.proc.stdout();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let error = v["error"].as_str().map(str::to_owned);
        Ok(IperfResult {
            success: status.success() && error.is_none(),
            error,
            bytes_received: v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0),
            intervals: v["intervals"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i["sum"]["bytes"].as_u64().unwrap_or(0))
                .collect(),
            json,
        })
    }
}

/// What curl got.
#[derive(Debug, Clone)]
pub struct Curl {
    /// curl's exit code (0 = a response; 28 = timeout; 7 = refused …).
    pub exit: Option<i32>,
    pub body: String,
    pub stderr: String,
}

impl Curl {
    pub fn ok(&self) -> bool {
        self.exit == Some(0)
    }
}

/// `curl http://ADDR/` from `ns` (optionally from source address `from`), at most `timeout`.
pub fn curl(ns: &Netns, addr: SocketAddrV4, from: Option<Ipv4Addr>, timeout: Duration) -> Result<Curl, HarnessError> {
    let secs = format!("{:.1}", timeout.as_secs_f64());
    let url = format!("http://{addr}/");
    let mut args = vec!["-sS", "--max-time", &secs, "--connect-timeout", &secs];
    let from_s = from.map(|f| f.to_string());
    if let Some(f) = &from_s {
        args.extend(["--interface", f.as_str()]);
    }
    args.push(&url);
    let out = ns.run("curl", &args, timeout + Duration::from_secs(5))?;
    Ok(Curl {
        exit: out.status.code(),
        body: out.stdout,
        stderr: out.stderr,
    })
}

/// `ping -c COUNT` from `ns`; whether every echo was answered.
pub fn ping(ns: &Netns, to: Ipv4Addr, count: u32) -> Result<bool, HarnessError> {
    let out = ns.run(
        "ping",
        &[
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            &to.to_string(),
        ],
        Duration::from_secs(u64::from(count) + 5),
    )?;
    Ok(out.success())
}

/// Sends one UDP datagram from inside `ns` to `to` and returns the answer, if one came within `timeout`.
pub fn udp_exchange(
    ns: &Netns,
    to: SocketAddrV4,
    payload: &[u8],
    timeout: Duration,
) -> Result<Option<Vec<u8>>, HarnessError> {
    let payload = payload.to_vec();
    ns.enter(move || -> Result<Option<Vec<u8>>, HarnessError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |e| HarnessError::Io { what, source: e }
        };
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(io("udp bind"))?;
        s.set_read_timeout(Some(timeout)).map_err(io("udp timeout"))?;
        s.send_to(&payload, to).map_err(io("udp send"))?;
        let mut buf = [0u8; 2048];
        match s.recv_from(&mut buf) {
            Ok((n, _)) => Ok(Some(buf[..n].to_vec())),
            Err(_) => Ok(None),
        }
    })?
}

/// A TCP connection opened from inside a namespace to an echo server, to check that an established flow
/// keeps (or stops) working.
pub struct TcpFlow {
    stream: TcpStream,
    n: u64,
}

impl TcpFlow {
    pub fn connect(ns: &Netns, to: SocketAddrV4, timeout: Duration) -> Result<Self, HarnessError> {
        let stream = ns.enter(move || TcpStream::connect_timeout(&SocketAddr::V4(to), timeout))?;
        let stream = stream.map_err(|e| HarnessError::Io {
            what: format!("connecting to {to}"),
            source: e,
        })?;
        Ok(TcpFlow { stream, n: 0 })
    }

    /// Sends a line and waits up to `timeout` for the echo. `Ok(false)` if it did not come back.
    pub fn echo(&mut self, timeout: Duration) -> bool {
        self.n += 1;
        let line = format!("ping {}\n", self.n);
        if self.stream.set_read_timeout(Some(timeout)).is_err() || self.stream.write_all(line.as_bytes()).is_err() {
            return false;
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 256];
        while got.len() < line.len() && Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got == line.as_bytes()
    }
}
