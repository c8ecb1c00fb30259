//! The connection logic on loopback, without privileges: a front listener hands each accepted stream to
//! [`conn::handle`] with a made-up original destination (127.0.0.77, where nothing listens), a small DNS
//! responder answers the names, and an origin on 127.0.0.1 records exactly what it received. So these
//! tests see dial-by-name, the bytes forwarded (byte for byte), and every denial; the namespace tests in
//! appliance/tests/proxy_netns.rs do the same with TPROXY, nginx, dnsmasq and real clients.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use super::conn::{self, AppEvent, Compiled, Shared, Timeouts};
use super::resolve::{Resolver, ResolverOptions};

const LIMIT: Duration = Duration::from_secs(10);
/// The destination the client "chose": nothing listens there, so only dial-by-name can succeed.
const CHOSEN: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);

/// Answers A 127.0.0.1 for every name under `.test` except `gone.test` (NXDOMAIN).
async fn dns() -> SocketAddrV4 {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(addr) = sock.local_addr().unwrap() else {
        unreachable!()
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.recursion_available = true;
            r.queries = q.queries.clone();
            let qname = q.queries[0].name().clone();
            if qname.to_ascii().trim_end_matches('.') == "gone.test" {
                r.metadata.response_code = ResponseCode::NXDomain;
            } else {
                r.answers = vec![Record::from_rdata(qname, 60, RData::A(A(Ipv4Addr::LOCALHOST)))];
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    addr
}

/// An origin on 127.0.0.1 that appends what it reads to `log` and, for each request head, answers
/// `200` with the head it received as the body (so a test sees X-Forwarded-For). `raw`: only records.
struct Origin {
    port: u16,
    received: Arc<Mutex<Vec<u8>>>,
    connections: Arc<Mutex<u32>>,
}

async fn origin(raw: bool) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(Mutex::new(0));
    let (rx, cx) = (received.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            *cx.lock().unwrap() += 1;
            let rx = rx.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    rx.lock().unwrap().extend_from_slice(&buf[..n]);
                    if raw {
                        continue;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    // Bodies in these tests are tiny and sent with the head: answer per head seen.
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
                        pending.drain(..end + 4);
                        let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}", head.len());
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Origin {
        port,
        received,
        connections,
    }
}

struct Front {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<AppEvent>>>,
    policy: watch::Sender<Arc<Compiled>>,
    shared: Arc<Shared>,
}

fn policy_text(port: u16) -> String {
    format!(
        r#"policy:
  ruleCollectionGroups:
    - name: g
      priority: 100
      ruleCollections:
        - ruleCollectionType: FirewallPolicyFilterRuleCollection
          name: deny
          priority: 100
          action: {{type: Deny}}
          rules:
            - ruleType: ApplicationRule
              name: no-evil
              sourceAddresses: ["*"]
              protocols: [{{protocolType: Http, port: {port}}}]
              targetFqdns: [evil.test]
        - ruleCollectionType: FirewallPolicyFilterRuleCollection
          name: allow
          priority: 200
          action: {{type: Allow}}
          rules:
            - ruleType: ApplicationRule
              name: ok
              sourceAddresses: [127.0.0.0/8]
              protocols: [{{protocolType: Http, port: {port}}}, {{protocolType: Https, port: {port}}}]
              targetFqdns: [ok.test, other.test, gone.test, y.lab.test]
"#
    )
}

fn compile(port: u16) -> Compiled {
    let loaded = portcullis_rules::load_str("t.yaml", &policy_text(port), &portcullis_rules::MemLoader::default())
        .expect("test policy");
    Compiled::new(loaded.config.policy, None)
}

async fn front(port: u16, handshake: Duration) -> Front {
    let (policy, rx) = watch::channel(Arc::new(compile(port)));
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink_events = events.clone();
    let resolver = Resolver::new(
        vec![dns().await],
        ResolverOptions {
            timeout: Duration::from_millis(500),
            ..ResolverOptions::default()
        },
    );
    let shared = Arc::new(Shared {
        stats: Default::default(),
        resolver,
        timeouts: Timeouts {
            handshake,
            connect: Duration::from_secs(2),
            idle: Duration::from_secs(5),
        },
        source: None,
        sink: Arc::new(move |e| sink_events.lock().unwrap().push(e)),
        policy: rx,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sh = shared.clone();
    tokio::spawn(async move {
        while let Ok((s, SocketAddr::V4(client))) = listener.accept().await {
            let orig = SocketAddrV4::new(CHOSEN, port);
            tokio::spawn(conn::handle(s, client, orig, sh.clone()));
        }
    });
    Front {
        addr,
        events,
        policy,
        shared,
    }
}

/// Sends `bytes`, half-closes, reads to the end (or a reset).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, Option<std::io::ErrorKind>) {
    tokio::time::timeout(LIMIT, async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let _ = s.shutdown().await;
        let mut out = Vec::new();
        match s.read_to_end(&mut out).await {
            Ok(_) => (out, None),
            Err(e) => (out, Some(e.kind())),
        }
    })
    .await
    .expect("exchange took too long")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn http_dials_by_name_adds_xff_and_checks_every_request() {
    let o = origin(false).await;
    let f = front(o.port, Duration::from_secs(2)).await;
    let req = format!(
        "GET /1 HTTP/1.1\r\nHost: ok.test:{p}\r\n\r\nPOST /2 HTTP/1.1\r\nHost: ok.test:{p}\r\nContent-Length: 5\r\n\r\nhelloGET /3 HTTP/1.1\r\nHost: evil.test:{p}\r\n\r\n",
        p = o.port
    );
    let (out, _) = exchange(f.addr, req.as_bytes()).await;
    let out = text(&out);
    // Both allowed requests reached the origin (at 127.0.0.1, not the chosen 127.0.0.77) with
    // X-Forwarded-For; the body went through unchanged; the denied third did not.
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(out.contains("X-Forwarded-For: 127.0.0.1"), "{out}");
    assert!(out.contains("HTTP/1.1 470 status code 470"), "{out}");
    assert!(out.contains("Rule Collection: deny. Rule: no-evil"), "{out}");
    let seen = text(&o.received.lock().unwrap());
    assert!(seen.contains("\r\n\r\nhello"), "{seen}");
    assert!(!seen.contains("evil.test"), "{seen}");
    assert_eq!(
        *o.connections.lock().unwrap(),
        1,
        "one upstream connection for one host"
    );
    let events = f.events.lock().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].upstream.map(|a| *a.ip()), Some(Ipv4Addr::LOCALHOST));
    assert_eq!(
        events[0].target_url.as_deref(),
        Some(format!("http://ok.test:{}/1", o.port).as_str())
    );
    assert_eq!(events[2].decision.rule.as_deref(), Some("no-evil"));
}

#[tokio::test]
async fn http_switching_hosts_opens_a_new_upstream_after_the_first_answer() {
    let o = origin(false).await;
    let f = front(o.port, Duration::from_secs(2)).await;
    let req = format!(
        "GET /a HTTP/1.1\r\nHost: ok.test:{p}\r\n\r\nGET /b HTTP/1.1\r\nHost: other.test:{p}\r\n\r\n",
        p = o.port
    );
    let (out, _) = exchange(f.addr, req.as_bytes()).await;
    let out = text(&out);
    let (a, b) = (out.find("GET /a").unwrap(), out.find("GET /b").unwrap());
    assert!(a < b, "responses in request order: {out}");
    assert_eq!(*o.connections.lock().unwrap(), 2);
}

#[tokio::test]
async fn http_chunked_body_is_forwarded_exactly_then_the_next_request() {
    let o = origin(true).await;
    let f = front(o.port, Duration::from_secs(2)).await;
    let body = "4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\n";
    let req = format!(
        "POST /c HTTP/1.1\r\nHost: ok.test:{p}\r\nTransfer-Encoding: chunked\r\n\r\n{body}GET /next HTTP/1.1\r\nHost: ok.test:{p}\r\n\r\n",
        p = o.port
    );
    exchange(f.addr, req.as_bytes()).await;
    let seen = text(&o.received.lock().unwrap());
    let expected_first = format!(
        "POST /c HTTP/1.1\r\nHost: ok.test:{}\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n{body}",
        o.port
    );
    assert!(seen.starts_with(&expected_first), "{seen}");
    assert!(
        seen[expected_first.len()..].starts_with("GET /next HTTP/1.1\r\n"),
        "{seen}"
    );
}

#[tokio::test]
async fn http_denials_without_a_server() {
    let o = origin(false).await;
    let f = front(o.port, Duration::from_secs(2)).await;
    // Default deny: the 470 page.
    let (out, _) = exchange(
        f.addr,
        format!("GET / HTTP/1.1\r\nHost: nope.test:{}\r\n\r\n", o.port).as_bytes(),
    )
    .await;
    let out = text(&out);
    assert!(out.starts_with("HTTP/1.1 470"), "{out}");
    assert!(
        out.ends_with("Reason: No rule matched. Proceeding with default action."),
        "{out}"
    );
    // Host port not the TCP port: dropped without a page.
    let (out, _) = exchange(f.addr, b"GET / HTTP/1.1\r\nHost: ok.test\r\n\r\n").await;
    assert!(out.is_empty(), "{}", text(&out));
    // Allowed, but the name does not resolve: 502.
    let (out, _) = exchange(
        f.addr,
        format!("GET / HTTP/1.1\r\nHost: gone.test:{}\r\n\r\n", o.port).as_bytes(),
    )
    .await;
    assert!(text(&out).starts_with("HTTP/1.1 502"), "{}", text(&out));
    // Neither TLS nor HTTP: reset, nothing sent.
    let (out, _) = exchange(f.addr, b"\x00\x01binary").await;
    assert!(out.is_empty());
    assert_eq!(*o.connections.lock().unwrap(), 0);
    let s = f.shared.stats.snapshot();
    assert_eq!(
        (s.denied_host_port, s.resolve_failures, s.denied_unparsable),
        (1, 1, 1),
        "{s:?}"
    );
}

#[tokio::test]
async fn tls_hello_is_relayed_byte_for_byte_to_the_resolved_name() {
    let o = origin(true).await;
    let f = front(o.port, Duration::from_secs(2)).await;
    let hello: &[u8] = include_bytes!("testdata/openssl_sni.bin"); // SNI y.lab.test
    let mut s = TcpStream::connect(f.addr).await.unwrap();
    // In three pieces: reassembled by peeking, then spliced untouched.
    for piece in hello.chunks(hello.len().div_ceil(3)) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.write_all(b"after the hello").await.unwrap();
    let want: Vec<u8> = [hello, b"after the hello"].concat();
    let got = tokio::time::timeout(LIMIT, async {
        loop {
            if o.received.lock().unwrap().len() >= want.len() {
                return o.received.lock().unwrap().clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("bytes relayed");
    assert_eq!(got, want);
    let events = f.events.lock().unwrap();
    assert_eq!(events[0].fqdn.as_deref(), Some("y.lab.test"));
    assert_eq!(events[0].protocol, "HTTPS");
}

#[tokio::test]
async fn tls_without_sni_is_reset_and_a_reload_cuts_an_open_relay() {
    let o = origin(true).await;
    let f = front(o.port, Duration::from_secs(2)).await;
    let (out, err) = exchange(f.addr, include_bytes!("testdata/openssl_nosni.bin")).await;
    assert!(out.is_empty());
    assert_eq!(err, Some(std::io::ErrorKind::ConnectionReset));
    assert_eq!(
        f.events.lock().unwrap()[0].decision.reason,
        "SNI TLS extension was missing."
    );
    // An open relay for y.lab.test, then a policy without that name: cut.
    let mut s = TcpStream::connect(f.addr).await.unwrap();
    s.write_all(include_bytes!("testdata/openssl_sni.bin")).await.unwrap();
    tokio::time::timeout(LIMIT, async {
        while *o.connections.lock().unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let narrower = policy_text(o.port).replace(", y.lab.test]", "]");
    let loaded = portcullis_rules::load_str("t.yaml", &narrower, &portcullis_rules::MemLoader::default()).unwrap();
    f.policy
        .send_replace(Arc::new(Compiled::new(loaded.config.policy, None)));
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(LIMIT, s.read(&mut buf))
        .await
        .expect("cut, not left open");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(f.shared.stats.snapshot().cut_by_reload, 1);
}

#[tokio::test]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    let o = origin(false).await;
    let f = front(o.port, Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(f.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(LIMIT, s.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(f.shared.stats.snapshot().handshake_timeouts, 1);
}
