//! Real peers and clients in the lab: nginx (answers every request with the client address it sees), curl,
//! ping, socat UDP/TCP echo servers, iperf3, and TCP/UDP probes from a thread inside a namespace.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::HarnessError;
use crate::cmd::{self, Proc};
use crate::lab::Lab;
use crate::netns::Netns;
use crate::tls::LabCa;

/// How long servers get to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Programs the application-proxy fixtures need besides [`crate::TOOLS`].
pub const PROXY_TOOLS: &[&str] = &["openssl", "dig", "dnsmasq"];

/// [`crate::lab_available`] plus [`PROXY_TOOLS`] (dnsmasq is the `dnsmasq-base` package, dig `dnsutils`).
pub fn proxy_fixtures_available() -> Result<(), String> {
    crate::lab_available()?;
    tools_missing(PROXY_TOOLS)
}

/// `Err` naming whichever of `tools` is not on PATH (or in /usr/sbin, /sbin).
pub fn tools_missing(tools: &[&str]) -> Result<(), String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .collect();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !dirs.iter().any(|d| d.join(t).is_file()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing tools: {} (packages openssl, dnsutils, dnsmasq-base)",
            missing.join(", ")
        ))
    }
}

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

    /// nginx in `ns` serving HTTPS on each of `https` (one vhost per name of `names`, each with its own
    /// certificate from `ca`, plus a `default_server` with a certificate for [`DEFAULT_VHOST_CERT_NAME`]) and HTTP
    /// on each of `http` (see [`vhosts_conf`] for the answers), and `/big` (`big_mib` MiB of zeros) everywhere.
    /// One worker, in the foreground; returns once every address accepts connections.
    pub fn nginx_vhosts(
        &self,
        ns: &Netns,
        ca: &LabCa,
        https: &[SocketAddrV4],
        names: &[&str],
        http: &[SocketAddrV4],
        big_mib: u32,
    ) -> Result<Vhosts, HarnessError> {
        let name = self.unique("nginx-vhosts");
        let prefix = self.dir.join(&name);
        let www = prefix.join("www");
        let io = |what: String| move |e| HarnessError::Io { what, source: e };
        std::fs::create_dir_all(&www).map_err(io(format!("creating {}", www.display())))?;
        let big_bytes = u64::from(big_mib) << 20;
        let big = std::fs::File::create(www.join("big")).map_err(io(format!("creating {}/big", www.display())))?;
        big.set_len(big_bytes)
            .map_err(io(format!("sizing {}/big", www.display())))?;
        let vhost = |server_name: &str, cert_names: &[&str]| -> Result<TlsVhost, HarnessError> {
            let (cert, key) = ca.issue(cert_names)?;
            Ok(TlsVhost {
                server_name: server_name.to_owned(),
                cert,
                key,
            })
        };
        let default = vhost("default", &[DEFAULT_VHOST_CERT_NAME])?;
        let vhosts = names.iter().map(|n| vhost(n, &[n])).collect::<Result<Vec<_>, _>>()?;
        let conf = vhosts_conf(&prefix, https, &vhosts, &default, http);
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(io(format!("writing {}", conf_path.display())))?;
        let prefix_arg = format!("{}/", prefix.display());
        let err_log = format!("{}/startup.log", prefix.display());
        let conf_arg = conf_path.to_string_lossy().into_owned();
        let mut proc = Proc::spawn(
            &name,
            ns.command("nginx")
                .args(["-p", &prefix_arg, "-e", &err_log, "-c", &conf_arg])
                .args(["-g", "daemon off;"]),
            &self.dir,
        )?;
        for a in https.iter().chain(http) {
            if let Err(e) = wait_tcp(ns, *a, START_TIMEOUT) {
                let _ = proc.try_status();
                let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
                let startup = std::fs::read_to_string(&err_log).unwrap_or_default();
                return Err(HarnessError::Failed {
                    command: proc.command.clone(),
                    detail: format!("{e}; stderr: {}{startup}\nerror.log: {log}", proc.stderr()),
                });
            }
        }
        Ok(Vhosts {
            proc,
            prefix,
            big_bytes,
        })
    }

    /// An authoritative-only dnsmasq in `ns` on `listen` (UDP and TCP): no upstream, no /etc/hosts, only
    /// `records` — `("a.lab.test", ip)` is `--host-record` (that name only; repeat a name for several
    /// addresses), `("*.wild.lab.test", ip)` is `--address=/wild.lab.test/ip` (the name and everything under
    /// it). Other names get REFUSED. Foreground (`-k`), runs as root, queries logged to its stderr
    /// (`Proc::stderr`). Returns once it answers.
    pub fn dnsmasq(
        &self,
        ns: &Netns,
        listen: SocketAddrV4,
        records: &[(&str, Ipv4Addr)],
    ) -> Result<Proc, HarnessError> {
        let name = self.unique("dnsmasq");
        let pid_file = self.dir.join(format!("{name}.pid"));
        let mut args = vec![
            "-k".to_owned(),
            "--conf-file=/dev/null".to_owned(),
            "--no-resolv".to_owned(),
            "--no-hosts".to_owned(),
            "--no-poll".to_owned(),
            "--bind-interfaces".to_owned(),
            format!("--listen-address={}", listen.ip()),
            format!("--port={}", listen.port()),
            "--log-queries".to_owned(),
            "--log-facility=-".to_owned(),
            "--user=root".to_owned(),
            format!("--pid-file={}", pid_file.display()),
        ];
        args.extend(dnsmasq_record_args(records));
        let mut proc = Proc::spawn(&name, ns.command("dnsmasq").args(&args), &self.dir)?;
        let up = cmd::eventually(START_TIMEOUT, || {
            if proc.try_status().is_some() {
                return Some(false);
            }
            dig(ns, listen, DNS_PROBE).is_ok().then_some(true)
        });
        match up {
            Some(true) => Ok(proc),
            _ => Err(HarnessError::Failed {
                command: proc.command.clone(),
                detail: format!("not answering on {listen}: {}", proc.stderr()),
            }),
        }
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
    /// curl's exit code (0 = a response; 28 = timeout; 7 = refused; 35 = TLS handshake failed (also a reset
    /// during it); 56 = failure receiving (reset); 52 = empty reply; 60 = certificate not verified …).
    pub exit: Option<i32>,
    /// HTTP status of the last response; `None` if there was none (curl's `000`).
    pub status: Option<u16>,
    pub body: String,
    /// Body bytes received in the last transfer (also counted with `-o /dev/null`).
    pub downloaded: u64,
    /// New connections opened over all transfers (several URLs over one keep-alive connection: 1).
    pub connects: u32,
    /// curl's stderr (its `curl: (N) …` message), without the harness's `-w` report lines.
    pub stderr: String,
}

impl Curl {
    pub fn ok(&self) -> bool {
        self.exit == Some(0)
    }
}

/// Prefix of the per-transfer report curl writes to stderr (`-w`), parsed into [`Curl`] and removed.
const CURL_REPORT: &str = "@pce-curl ";

/// `curl -sS --max-time T --connect-timeout T ARGS…` from `ns` (ARGS include the URL(s)), at most `timeout`
/// (+5 s for the process). The building block of the other curl helpers.
pub fn curl_with(ns: &Netns, args: &[&str], timeout: Duration) -> Result<Curl, HarnessError> {
    let secs = format!("{:.1}", timeout.as_secs_f64());
    let report =
        format!("%{{stderr}}\n{CURL_REPORT}status=%{{http_code}} size=%{{size_download}} connects=%{{num_connects}}\n");
    let mut full = vec!["-sS", "--max-time", &secs, "--connect-timeout", &secs, "-w", &report];
    full.extend_from_slice(args);
    let out = ns.run("curl", &full, timeout + Duration::from_secs(5))?;
    let mut curl = Curl {
        exit: out.status.code(),
        status: None,
        body: out.stdout,
        downloaded: 0,
        connects: 0,
        stderr: String::new(),
    };
    let mut rest = Vec::new();
    for line in out.stderr.lines() {
        let Some(report) = line.strip_prefix(CURL_REPORT) else {
            if !line.is_empty() {
                rest.push(line);
            }
            continue;
        };
        let num = |key: &str| field(report, key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        curl.status = u16::try_from(num("status")).ok().filter(|s| *s != 0);
        curl.downloaded = num("size");
        curl.connects += u32::try_from(num("connects")).unwrap_or(0);
    }
    curl.stderr = rest.join("\n");
    Ok(curl)
}

/// `curl http://ADDR/` from `ns` (optionally from source address `from`), at most `timeout`.
pub fn curl(ns: &Netns, addr: SocketAddrV4, from: Option<Ipv4Addr>, timeout: Duration) -> Result<Curl, HarnessError> {
    let url = format!("http://{addr}/");
    let mut args = Vec::new();
    let from_s = from.map(|f| f.to_string());
    if let Some(f) = &from_s {
        args.extend(["--interface", f.as_str()]);
    }
    args.push(&url);
    curl_with(ns, &args, timeout)
}

/// `curl URL` (https) from `ns`: `resolve` = `--resolve NAME:PORT:IP` (connect there, SNI and Host stay the
/// URL's name); `cacert` = the CA to verify with (`None`: `--insecure`). At most `timeout`.
pub fn curl_https(
    ns: &Netns,
    url: &str,
    resolve: Option<(&str, u16, Ipv4Addr)>,
    cacert: Option<&Path>,
    timeout: Duration,
) -> Result<Curl, HarnessError> {
    let resolve = resolve.map(|(name, port, ip)| format!("{name}:{port}:{ip}"));
    let cacert = cacert.map(|p| p.to_string_lossy().into_owned());
    let mut args = Vec::new();
    if let Some(r) = &resolve {
        args.extend(["--resolve", r.as_str()]);
    }
    match &cacert {
        Some(c) => args.extend(["--cacert", c.as_str()]),
        None => args.push("--insecure"),
    }
    args.push(url);
    curl_with(ns, &args, timeout)
}

/// `curl URL` (http) from `ns` with extra request headers (`"Host: a.lab.test"`, `"X-Forwarded-For: 1.2.3.4"`).
pub fn curl_http(ns: &Netns, url: &str, extra_headers: &[&str], timeout: Duration) -> Result<Curl, HarnessError> {
    let mut args = Vec::new();
    for h in extra_headers {
        args.extend(["-H", h]);
    }
    args.push(url);
    curl_with(ns, &args, timeout)
}

/// The value of `key` in a lab echo body (`vhost=a.lab.test sni=a.lab.test client=203.0.113.10 host=…`): the
/// first line's space-separated `key=value` fields; a value may be empty (`sni=`) or contain spaces
/// (`xff=1.2.3.4, 5.6.7.8`: a token without `key=` continues the previous value).
pub fn field(body: &str, key: &str) -> Option<String> {
    let line = body.lines().next().unwrap_or_default();
    let mut fields: Vec<(&str, String)> = Vec::new();
    for token in line.split(' ') {
        match token.split_once('=') {
            Some((k, v)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                fields.push((k, v.to_owned()));
            }
            _ => {
                if let Some((_, v)) = fields.last_mut() {
                    v.push(' ');
                    v.push_str(token);
                }
            }
        }
    }
    fields.into_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// What `openssl s_client` did.
#[derive(Debug, Clone)]
pub struct SClient {
    /// Exit code (0 after a completed handshake; 1 if it failed, e.g. reset after the ClientHello); `None` if it
    /// was killed at the deadline.
    pub exit: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl SClient {
    /// Whether a TLS session was established (`New, TLSv1.3, Cipher is …`, not `(NONE)`).
    pub fn handshake_ok(&self) -> bool {
        self.exit == Some(0)
            && self
                .stdout
                .lines()
                .any(|l| l.starts_with("New, ") && !l.contains("(NONE)"))
    }

    /// The server certificate's subject line (`CN = default.lab.test`).
    pub fn subject(&self) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("subject="))
            .map(str::trim)
    }
}

/// `openssl s_client -connect ADDR` from `ns` with SNI `servername` (`None`: `-noservername`, a ClientHello
/// without SNI); stdin is empty, so it closes right after the handshake. At most `timeout`.
pub fn openssl_s_client(
    ns: &Netns,
    connect: SocketAddrV4,
    servername: Option<&str>,
    timeout: Duration,
) -> Result<SClient, HarnessError> {
    openssl_s_client_with(ns, connect, servername, &[], timeout)
}

/// [`openssl_s_client`] with extra arguments (`-CAfile ca.crt`, `-tls1_2`, `-alpn h2` …).
pub fn openssl_s_client_with(
    ns: &Netns,
    connect: SocketAddrV4,
    servername: Option<&str>,
    extra: &[&str],
    timeout: Duration,
) -> Result<SClient, HarnessError> {
    let connect_s = connect.to_string();
    let mut args = vec!["s_client", "-connect", &connect_s];
    match servername {
        Some(n) => args.extend(["-servername", n]),
        None => args.push("-noservername"),
    }
    args.extend_from_slice(extra);
    match ns.run("openssl", &args, timeout) {
        Ok(out) => Ok(SClient {
            exit: out.status.code(),
            timed_out: false,
            stdout: out.stdout,
            stderr: out.stderr,
        }),
        Err(HarnessError::Timeout { detail, .. }) => Ok(SClient {
            exit: None,
            timed_out: true,
            stdout: String::new(),
            stderr: detail,
        }),
        Err(e) => Err(e),
    }
}

/// `dig @SERVER -p PORT +short NAME A` from `ns` (1 s, one try): the A records. An error if no answer came
/// (dig's exit 9); an empty list for NXDOMAIN/REFUSED/no A record.
pub fn dig(ns: &Netns, server: SocketAddrV4, name: &str) -> Result<Vec<Ipv4Addr>, HarnessError> {
    let at = format!("@{}", server.ip());
    let port = server.port().to_string();
    let out = ns.run(
        "dig",
        &[&at, "-p", &port, "+short", "+time=1", "+tries=1", name, "A"],
        Duration::from_secs(5),
    )?;
    if !out.success() {
        return Err(HarnessError::Failed {
            command: out.command,
            detail: format!("{}: {}{}", out.status, out.stdout.trim(), out.stderr.trim()),
        });
    }
    Ok(out.stdout.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// One HTTPS virtual host of [`Lab::nginx_vhosts`].
#[derive(Debug, Clone)]
pub struct TlsVhost {
    /// nginx `server_name` (`a.lab.test`, `*.wild.lab.test`); `default` for the default server.
    pub server_name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The name in the default server's certificate (and `vhost=default` in its answers).
pub const DEFAULT_VHOST_CERT_NAME: &str = "default.lab.test";

/// The nginx.conf of [`Lab::nginx_vhosts`] (pure, for unit tests): prefix `prefix` (logs, temp paths, `www/big`);
/// on each `https` address every vhost of `vhosts` plus `default` as the `default_server`, each answering
/// `vhost=<server_name> sni=$ssl_server_name client=$remote_addr host=$http_host`; on each `http` address an
/// echo `host=$http_host client=$remote_addr xff=$http_x_forwarded_for uri=$request_uri` (keep-alive). Every
/// server also serves `/big`. No TLS session resumption (each connection is a full handshake with SNI).
pub fn vhosts_conf(
    prefix: &Path,
    https: &[SocketAddrV4],
    vhosts: &[TlsVhost],
    default: &TlsVhost,
    http: &[SocketAddrV4],
) -> String {
    let p = prefix.display();
    let big =
        format!("    location = /big {{\n      root {p}/www;\n      default_type application/octet-stream;\n    }}\n");
    let tls_server = |v: &TlsVhost, name: &str, default_server: bool| {
        let listens: String = https
            .iter()
            .map(|a| {
                let d = if default_server { " default_server" } else { "" };
                format!("    listen {a} ssl{d};\n")
            })
            .collect();
        format!(
            "  server {{\n{listens}    server_name {server_name};\n    ssl_certificate {cert};\n    \
             ssl_certificate_key {key};\n{big}    location / {{\n      default_type text/plain;\n      \
             return 200 \"vhost={name} sni=$ssl_server_name client=$remote_addr host=$http_host\\n\";\n    }}\n  }}\n",
            server_name = if default_server { "_" } else { &v.server_name },
            cert = v.cert.display(),
            key = v.key.display(),
        )
    };
    let mut servers = String::new();
    if !https.is_empty() {
        servers.push_str(&tls_server(default, "default", true));
        for v in vhosts {
            servers.push_str(&tls_server(v, &v.server_name, false));
        }
    }
    if !http.is_empty() {
        let listens: String = http
            .iter()
            .map(|a| format!("    listen {a} default_server;\n"))
            .collect();
        servers.push_str(&format!(
            "  server {{\n{listens}    server_name _;\n{big}    location / {{\n      default_type text/plain;\n      \
             return 200 \"host=$http_host client=$remote_addr xff=$http_x_forwarded_for uri=$request_uri\\n\";\n    \
             }}\n  }}\n"
        ));
    }
    format!(
        "worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\nevents {{ worker_connections 1024; }}\n\
         http {{\n  log_format lab '$remote_addr $server_name sni=$ssl_server_name host=$http_host \"$request\" \
         $status $bytes_sent';\n  access_log {p}/access.log lab;\n  client_body_temp_path {p}/body;\n  \
         proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  \
         scgi_temp_path {p}/scgi;\n  sendfile on;\n  keepalive_timeout 60s;\n  keepalive_requests 10000;\n  \
         ssl_protocols TLSv1.2 TLSv1.3;\n  ssl_session_cache off;\n  ssl_session_tickets off;\n{servers}}}\n"
    )
}

/// A running [`Lab::nginx_vhosts`] (killed on drop).
#[derive(Debug)]
pub struct Vhosts {
    pub proc: Proc,
    /// Its prefix: `nginx.conf`, `access.log`, `error.log`, `www/big`.
    pub prefix: PathBuf,
    /// Size of `/big` in bytes.
    pub big_bytes: u64,
}

impl Vhosts {
    /// The access log so far (`client server_name sni=… host=… "request" status bytes`).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("access.log")).unwrap_or_default()
    }
}

/// The name of the readiness query [`Lab::dnsmasq`] sends (any answer, even REFUSED, means it is up).
const DNS_PROBE: &str = "pce-probe.invalid";
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

/// dnsmasq arguments for `records` (see [`Lab::dnsmasq`]).
pub fn dnsmasq_record_args(records: &[(&str, Ipv4Addr)]) -> Vec<String> {
    records
        .iter()
        .map(|(name, ip)| match name.strip_prefix("*.") {
            Some(domain) => format!("--address=/{domain}/{ip}"),
            None => format!("--host-record={name},{ip}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_echo_bodies() {
        let b = "host=a.lab.test client=192.0.2.1 xff=198.18.1.10, 192.0.2.1 uri=/x?y=1\n";
        assert_eq!(field(b, "host").as_deref(), Some("a.lab.test"));
        assert_eq!(field(b, "client").as_deref(), Some("192.0.2.1"));
        assert_eq!(field(b, "xff").as_deref(), Some("198.18.1.10, 192.0.2.1"));
        assert_eq!(field(b, "uri").as_deref(), Some("/x?y=1"));
        let b = "vhost=default sni= client=203.0.113.10 host=\n";
        assert_eq!(field(b, "sni").as_deref(), Some(""));
        assert_eq!(field(b, "vhost").as_deref(), Some("default"));
        assert_eq!(field(b, "host").as_deref(), Some(""));
        assert_eq!(field(b, "nope"), None);
    }

    #[test]
    fn dnsmasq_records() {
        let ip = Ipv4Addr::new(203, 0, 113, 10);
        assert_eq!(
            dnsmasq_record_args(&[("a.lab.test", ip), ("*.wild.lab.test", ip)]),
            [
                "--host-record=a.lab.test,203.0.113.10",
                "--address=/wild.lab.test/203.0.113.10"
            ]
        );
    }

    #[test]
    fn vhosts_conf_shape() {
        let v = |n: &str| TlsVhost {
            server_name: n.into(),
            cert: format!("/ca/{n}.crt").into(),
            key: format!("/ca/{n}.key").into(),
        };
        let s1 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 443);
        let s2 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 8443);
        let h = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
        let conf = vhosts_conf(
            Path::new("/lab/nginx-1"),
            &[s1, s2],
            &[v("a.lab.test"), v("*.wild.lab.test")],
            &v("default"),
            &[h],
        );
        assert_eq!(conf.matches("listen 203.0.113.10:443 ssl default_server;").count(), 1);
        assert_eq!(conf.matches("listen 203.0.113.10:8443 ssl default_server;").count(), 1);
        assert_eq!(conf.matches("listen 203.0.113.10:443 ssl;").count(), 2);
        assert!(conf.contains("server_name *.wild.lab.test;"));
        assert!(conf.contains("ssl_certificate /ca/*.wild.lab.test.crt;"));
        assert!(conf.contains("\"vhost=a.lab.test sni=$ssl_server_name client=$remote_addr host=$http_host\\n\""));
        assert!(conf.contains("\"vhost=default sni="));
        assert!(conf.contains("listen 203.0.113.10:80 default_server;"));
        assert!(conf.contains("xff=$http_x_forwarded_for uri=$request_uri"));
        assert!(conf.contains("ssl_session_cache off;") && conf.contains("ssl_session_tickets off;"));
        assert!(conf.contains("root /lab/nginx-1/www;"));
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
        assert!(!conf.contains("daemon"), "daemon off comes from -g");
        // No HTTP server without HTTP addresses, no TLS servers without HTTPS addresses.
        let tls_only = vhosts_conf(Path::new("/p"), &[s1], &[v("a.lab.test")], &v("default"), &[]);
        assert!(!tls_only.contains("xff="));
        let http_only = vhosts_conf(Path::new("/p"), &[], &[v("a.lab.test")], &v("default"), &[h]);
        assert!(!http_only.contains("ssl_certificate "));
    }
}
