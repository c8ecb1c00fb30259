//! The HTTP/1.x request head inspector (reference: azure-firewall.md §3): pure, bounded, no I/O.
//!
//! The proxy calls [`parse_head`] on the bytes buffered so far for each request of a keep-alive
//! connection, matches `host` against the application rules, checks the Host port against the TCP
//! port (80 when absent), rewrites the head with [`with_forwarded_for`] and forwards it; after the
//! body (`body`), it parses the next request from `head_len + body` onwards.
//!
//! The parser is deliberately stricter than RFC 9112 where leniency lets a client smuggle a second
//! request past the rule check or make us and the origin disagree about the target: duplicate or
//! invalid Host, Host ≠ absolute-form authority, Content-Length with Transfer-Encoding, differing
//! Content-Lengths, any Transfer-Encoding but a single `chunked`, obs-fold, bare LF/CR, whitespace
//! before the colon, control bytes. Whatever we reject, the proxy denies (closing the connection).
//!
//! Non-HTTP bytes (a TLS ClientHello, binary) are recognised from the first byte that cannot start a
//! method, without waiting for more input. `Incomplete` is returned only while a longer buffer could
//! still be a valid head.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use portcullis_rules::fqdn::Name;

/// The longest head we buffer: request line + headers + CRLFCRLF.
pub const MAX_HEAD: usize = 16 * 1024;

/// Longest method we accept as HTTP (`PROPPATCH`, `MKCALENDAR`, … fit).
const MAX_METHOD: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// The request's Host (or absolute-form authority): the name lower-cased without trailing dot, and the
/// port if one was written (the proxy assumes 80 when `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostHeader {
    pub name: Name,
    pub port: Option<u16>,
}

impl HostHeader {
    /// The port the request is for: as written, else 80.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(80)
    }
}

/// How the request body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    ContentLength(u64),
    Chunked,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub version: Version,
    /// `None` only when the request has neither a Host header nor an absolute-form target (the proxy
    /// denies it: "no Host"). This holds for HTTP/1.1 too; RFC 9112 would answer 400, we deny.
    pub host: Option<HostHeader>,
    /// Bytes up to and including the CRLFCRLF that ends the head.
    pub head_len: usize,
    pub body: Body,
    /// The connection ends after this request (`Connection: close`, or HTTP/1.0 without keep-alive).
    pub connection_close: bool,
    /// The existing X-Forwarded-For value (several lines joined with ", "), if any non-empty.
    pub xff: Option<String>,
    /// The client asks to switch protocols (`Connection: upgrade` with an `Upgrade` header, e.g. WebSocket):
    /// after a 101 the connection carries something else, which the proxy then tunnels.
    pub upgrade: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// No complete head yet, and the bytes so far could still start a valid one. A lower bound on
    /// the total buffer length needed (always more than the length given).
    Incomplete { needed_at_least: usize },
    /// [`MAX_HEAD`] bytes without the end of the head.
    TooLarge,
    /// Not HTTP/1.x: TLS, binary, HTTP/0.9, the HTTP/2 preface, a lower-case or over-long method.
    NotHttp,
    /// HTTP/1.x that the proxy does not serve: CONNECT (transparent mode has no tunnels), an IPv6
    /// literal host (cannot match an FQDN rule), `Upgrade: h2c`.
    Unsupported(&'static str),
    /// HTTP/1.x-looking but invalid or ambiguous (smuggling, rule bypass); the reason is for logs.
    Malformed(&'static str),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Incomplete { needed_at_least } => {
                write!(f, "incomplete request head (need ≥ {needed_at_least} bytes)")
            }
            Self::TooLarge => write!(f, "request head longer than {MAX_HEAD} bytes"),
            Self::NotHttp => f.write_str("not HTTP/1.x"),
            Self::Unsupported(why) => write!(f, "unsupported HTTP request: {why}"),
            Self::Malformed(why) => write!(f, "malformed HTTP request: {why}"),
        }
    }
}

impl std::error::Error for HeadError {}

/// Parses the request head at the start of `buf` (bytes after the head are ignored).
pub fn parse_head(buf: &[u8]) -> Result<RequestHead, HeadError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut pos = 0;
    let mut request_line: Option<RequestLine> = None;
    let mut headers: Vec<Field<'_>> = Vec::new();
    loop {
        let rest = &window[pos..];
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            // The partial last line must still be able to become valid.
            // After its CR, a line is finished: check it as a whole.
            let (partial, finished) = match rest.iter().position(|&b| b == b'\r') {
                Some(cr) if cr + 1 == rest.len() => (&rest[..cr], true),
                Some(_) => return Err(HeadError::Malformed("CR not followed by LF")),
                None => (rest, false),
            };
            match (&request_line, finished) {
                (None, false) => check_request_line_prefix(partial)?,
                (None, true) if partial.is_empty() => return Err(EMPTY_FIRST_LINE),
                (None, true) => drop(parse_request_line(partial)?),
                (Some(_), _) if finished && partial.is_empty() => {}
                (Some(_), _) => drop(check_header_line(partial, finished)?),
            }
            if buf.len() >= MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            // At least the rest of the CRLFCRLF is missing.
            let have = if window.ends_with(b"\r\n\r") {
                3
            } else if window.ends_with(b"\r\n") {
                2
            } else if window.ends_with(b"\r") {
                1
            } else {
                0
            };
            return Err(HeadError::Incomplete {
                needed_at_least: buf.len() + 4 - have,
            });
        };
        if lf == 0 || rest[lf - 1] != b'\r' {
            return Err(HeadError::Malformed("bare LF line ending"));
        }
        let line = &rest[..lf - 1];
        if line.contains(&b'\r') {
            return Err(HeadError::Malformed("CR not followed by LF"));
        }
        pos += lf + 1;
        match &request_line {
            None => {
                if line.is_empty() {
                    // RFC 9112 §2.2 lets a server skip empty lines before the request line; we don't
                    // (nothing legitimate sends them on a fresh request).
                    return Err(EMPTY_FIRST_LINE);
                }
                request_line = Some(parse_request_line(line)?);
            }
            Some(_) if line.is_empty() => break,
            Some(_) => {
                let (name, value) = check_header_line(line, true)?.expect("complete header line");
                headers.push((name, value));
            }
        }
    }
    let head_len = pos;
    let rl = request_line.expect("request line parsed before the end of the head");
    interpret(rl, &headers, head_len)
}

const EMPTY_FIRST_LINE: HeadError = HeadError::Malformed("empty line before the request line");

struct RequestLine {
    method: String,
    target: String,
    version: Version,
}

fn is_method_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

/// Checks the method of a (possibly partial) request line; returns the method and what follows
/// the space after it (as a [`Field`] pair), or `None` if the method isn't finished yet.
fn split_method(line: &[u8]) -> Result<Option<Field<'_>>, HeadError> {
    let end = line.iter().position(|&b| !is_method_byte(b)).unwrap_or(line.len());
    let method = &line[..end];
    if method.len() > MAX_METHOD {
        return Err(HeadError::NotHttp);
    }
    if end == line.len() {
        return Ok(None);
    }
    if end == 0 || line[end] != b' ' {
        return Err(HeadError::NotHttp);
    }
    match method {
        b"PRI" => return Err(HeadError::NotHttp),
        b"CONNECT" => return Err(HeadError::Unsupported("CONNECT")),
        _ => {}
    }
    Ok(Some((method, &line[end + 1..])))
}

fn check_target_bytes(target: &[u8]) -> Result<(), HeadError> {
    if target.iter().any(|&b| !(0x21..=0x7e).contains(&b)) {
        return Err(HeadError::Malformed(
            "control, space or non-ASCII byte in request target",
        ));
    }
    Ok(())
}

const V10: &[u8] = b"HTTP/1.0";
const V11: &[u8] = b"HTTP/1.1";

fn check_request_line_prefix(line: &[u8]) -> Result<(), HeadError> {
    let Some((_, rest)) = split_method(line)? else {
        return Ok(());
    };
    let Some(sp) = rest.iter().position(|&b| b == b' ') else {
        return check_target_bytes(rest);
    };
    if sp == 0 {
        return Err(HeadError::Malformed("empty request target"));
    }
    check_target_bytes(&rest[..sp])?;
    let version = &rest[sp + 1..];
    if V10.starts_with(version) || V11.starts_with(version) {
        return Ok(());
    }
    Err(version_error(version))
}

fn version_error(version: &[u8]) -> HeadError {
    if version.starts_with(b"HTTP/2") || version.starts_with(b"HTTP/0") || b"HTTP/".starts_with(version) {
        HeadError::NotHttp
    } else if version.starts_with(b"HTTP/") {
        HeadError::Malformed("unsupported HTTP version")
    } else {
        HeadError::NotHttp
    }
}

fn parse_request_line(line: &[u8]) -> Result<RequestLine, HeadError> {
    let Some((method, rest)) = split_method(line)? else {
        return Err(HeadError::NotHttp);
    };
    let Some(sp) = rest.iter().position(|&b| b == b' ') else {
        check_target_bytes(rest)?;
        return Err(HeadError::NotHttp); // HTTP/0.9: `GET /path` without a version
    };
    if sp == 0 {
        return Err(HeadError::Malformed("empty request target"));
    }
    let target = &rest[..sp];
    check_target_bytes(target)?;
    let version = match &rest[sp + 1..] {
        v if v == V11 => Version::Http11,
        v if v == V10 => Version::Http10,
        v => return Err(version_error(v)),
    };
    Ok(RequestLine {
        method: ascii(method),
        target: ascii(target),
        version,
    })
}

fn ascii(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A header's name and OWS-trimmed value.
type Field<'a> = (&'a [u8], &'a [u8]);

/// Checks a header line (without CRLF). Complete lines return the name and the OWS-trimmed value.
fn check_header_line(line: &[u8], complete: bool) -> Result<Option<Field<'_>>, HeadError> {
    if line.first().is_some_and(|&b| is_ows(b)) {
        return Err(HeadError::Malformed("obs-fold (header line folding)"));
    }
    let colon = line.iter().position(|&b| !is_tchar(b));
    let Some(colon) = colon else {
        return if complete {
            Err(HeadError::Malformed("header line without colon"))
        } else {
            Ok(None)
        };
    };
    match line[colon] {
        b':' if colon == 0 => return Err(HeadError::Malformed("empty header name")),
        b':' => {}
        b' ' | b'\t' => return Err(HeadError::Malformed("whitespace between header name and colon")),
        _ => return Err(HeadError::Malformed("invalid byte in header name")),
    }
    let value = &line[colon + 1..];
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(HeadError::Malformed("control byte in header value"));
    }
    if !complete {
        return Ok(None);
    }
    Ok(Some((&line[..colon], trim_ows(value))))
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if !is_ows(*first) {
            break;
        }
        v = rest;
    }
    while let [rest @ .., last] = v {
        if !is_ows(*last) {
            break;
        }
        v = rest;
    }
    v
}

fn interpret(rl: RequestLine, headers: &[Field<'_>], head_len: usize) -> Result<RequestHead, HeadError> {
    let mut host: Option<HostHeader> = None;
    let mut content_length: Option<u64> = None;
    let mut transfer_codings: Vec<String> = Vec::new();
    let mut close = false;
    let mut keep_alive = false;
    let mut connection_upgrade = false;
    let mut upgrade_header = false;
    let mut xff: Vec<String> = Vec::new();
    for &(name, value) in headers {
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(HeadError::Malformed("duplicate Host header"));
            }
            host = Some(parse_host(value)?);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // `Content-Length: 5, 5` and repeated equal lines are allowed (RFC 9110 §8.6); anything
            // that differs is a smuggling attempt.
            for item in value.split(|&b| b == b',') {
                let item = trim_ows(item);
                if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                    return Err(HeadError::Malformed("invalid Content-Length"));
                }
                let n: u64 = ascii(item)
                    .parse()
                    .map_err(|_| HeadError::Malformed("invalid Content-Length"))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(HeadError::Malformed("differing Content-Length values"));
                }
                content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for item in value.split(|&b| b == b',') {
                transfer_codings.push(ascii(trim_ows(item)).to_ascii_lowercase());
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for item in value.split(|&b| b == b',') {
                let item = trim_ows(item);
                close |= item.eq_ignore_ascii_case(b"close");
                keep_alive |= item.eq_ignore_ascii_case(b"keep-alive");
                connection_upgrade |= item.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            // h2c would let later requests on this connection name any :authority without passing
            // through this parser again (h2c smuggling). WebSocket and other upgrades are left to the
            // proxy, which tunnels after a 101.
            if value
                .split(|&b| b == b',')
                .any(|p| trim_ows(p).eq_ignore_ascii_case(b"h2c"))
            {
                return Err(HeadError::Unsupported("Upgrade: h2c"));
            }
            upgrade_header |= !trim_ows(value).is_empty();
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for") && !value.is_empty() {
            xff.push(String::from_utf8_lossy(value).into_owned());
        }
    }
    let body = match (content_length, transfer_codings.is_empty()) {
        (Some(_), false) => return Err(HeadError::Malformed("both Content-Length and Transfer-Encoding")),
        (Some(n), true) => Body::ContentLength(n),
        (None, true) => Body::None,
        (None, false) => {
            if rl.version == Version::Http10 {
                return Err(HeadError::Malformed("Transfer-Encoding in an HTTP/1.0 request"));
            }
            if transfer_codings != ["chunked"] {
                return Err(HeadError::Malformed("Transfer-Encoding other than a single `chunked`"));
            }
            Body::Chunked
        }
    };
    // The target: origin-form, absolute-form (its authority wins over Host and must agree with it),
    // or `*` for OPTIONS.
    let target = rl.target.as_bytes();
    if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        let rest = &target[7..];
        let end = rest
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(rest.len());
        let authority = parse_host(&rest[..end])?;
        match &host {
            Some(h) if h.name != authority.name || h.port_or_default() != authority.port_or_default() => {
                return Err(HeadError::Malformed("absolute-form authority differs from Host"));
            }
            _ => host = Some(authority),
        }
    } else if target[0] == b'/' || (target == b"*" && rl.method == "OPTIONS") {
        // origin-form / asterisk-form: Host alone names the destination
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        return Err(HeadError::Malformed("absolute-form https target on plain HTTP"));
    } else {
        return Err(HeadError::Malformed(
            "request target is neither origin-form nor absolute-form",
        ));
    }
    let connection_close = close || (rl.version == Version::Http10 && !keep_alive);
    Ok(RequestHead {
        method: rl.method,
        target: rl.target,
        version: rl.version,
        host,
        head_len,
        body,
        connection_close,
        xff: if xff.is_empty() { None } else { Some(xff.join(", ")) },
        upgrade: connection_upgrade && upgrade_header,
    })
}

/// Parses a Host value or absolute-form authority: `name` or `name:port`.
fn parse_host(value: &[u8]) -> Result<HostHeader, HeadError> {
    if value.is_empty() {
        return Err(HeadError::Malformed("empty Host"));
    }
    if value.iter().any(|&b| is_ows(b)) {
        return Err(HeadError::Malformed("whitespace in Host"));
    }
    if value.contains(&b'@') {
        return Err(HeadError::Malformed("userinfo in Host"));
    }
    if value[0] == b'[' {
        return Err(HeadError::Unsupported("IPv6 literal host"));
    }
    if !value.is_ascii() {
        return Err(HeadError::Malformed("non-ASCII Host"));
    }
    let text = ascii(value);
    let (name, port) = match text.split_once(':') {
        None => (text.as_str(), None),
        Some((name, port)) => {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::Malformed("invalid port in Host"));
            }
            match port.parse::<u16>() {
                Ok(p) if p != 0 => (name, Some(p)),
                _ => return Err(HeadError::Malformed("invalid port in Host")),
            }
        }
    };
    let name = Name::parse(name).map_err(|_| HeadError::Malformed("invalid host name in Host"))?;
    Ok(HostHeader { name, port })
}

/// The head rewritten for the origin: `X-Forwarded-For: <client>` added before the blank line, or
/// `, <client>` appended to the last existing X-Forwarded-For line (azure-firewall.md §3). Bytes after
/// `parsed.head_len` (body, next request) are copied unchanged, as is everything else in the head.
pub fn with_forwarded_for(head: &[u8], parsed: &RequestHead, client: Ipv4Addr) -> Vec<u8> {
    let head_len = parsed.head_len.min(head.len());
    let mut out = Vec::with_capacity(head.len() + 40);
    // The last X-Forwarded-For line: where its (OWS-trimmed) value ends, and whether it is empty.
    let mut insert: Option<(usize, bool)> = None;
    let mut pos = 0;
    while let Some(lf) = head[pos..head_len].iter().position(|&b| b == b'\n') {
        let line_end = pos + lf;
        let line = &head[pos..line_end.saturating_sub(1).max(pos)];
        if pos > 0
            && let Some(colon) = line.iter().position(|&b| b == b':')
            && line[..colon].eq_ignore_ascii_case(b"x-forwarded-for")
        {
            let value = &line[colon + 1..];
            let trailing = value.iter().rev().take_while(|&&b| is_ows(b)).count();
            let value_end = pos + line.len() - trailing;
            insert = Some((value_end, trim_ows(value).is_empty()));
        }
        pos = line_end + 1;
    }
    match insert {
        Some((at, empty)) => {
            out.extend_from_slice(&head[..at]);
            if empty {
                if head[at - 1] == b':' {
                    out.push(b' ');
                }
                write!(ByteWriter(&mut out), "{client}").expect("writing to a Vec");
            } else {
                write!(ByteWriter(&mut out), ", {client}").expect("writing to a Vec");
            }
            out.extend_from_slice(&head[at..]);
        }
        None => {
            let at = head_len.saturating_sub(2);
            out.extend_from_slice(&head[..at]);
            write!(ByteWriter(&mut out), "X-Forwarded-For: {client}\r\n").expect("writing to a Vec");
            out.extend_from_slice(&head[at..]);
        }
    }
    out
}

struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The response to a denied HTTP request: status 470 with Azure Firewall's text (azure-firewall.md §3;
/// the explicit-deny wording follows the §7.3 log format). `detail` is (rule collection group, rule
/// collection, rule) for a deny rule, `None` for the default action. The proxy closes the connection.
pub fn deny_page(client: SocketAddrV4, host: &str, port: u16, detail: Option<(&str, &str, &str)>) -> Vec<u8> {
    let mut body = format!("HTTP request from {client} to {host}:{port}. Action: Deny. ");
    match detail {
        None => body.push_str("Reason: No rule matched. Proceeding with default action."),
        Some((rcg, rc, rule)) => {
            let _ = write!(
                body,
                "Rule Collection Group: {rcg}. Rule Collection: {rc}. Rule: {rule}"
            );
        }
    }
    let mut out = format!(
        "HTTP/1.1 470 status code 470\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.push_str(&body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn host(s: &str, port: Option<u16>) -> Option<HostHeader> {
        Some(HostHeader { name: name(s), port })
    }

    const CURL_PLAIN: &[u8] = include_bytes!("testdata/curl_plain.http");
    const CURL_XFF: &[u8] = include_bytes!("testdata/curl_xff.http");
    const CURL_HTTP10: &[u8] = include_bytes!("testdata/curl_http10.http");
    const CURL_POST: &[u8] = include_bytes!("testdata/curl_post.http");
    const CURL_CHUNKED: &[u8] = include_bytes!("testdata/curl_chunked.http");
    const CURL_ABSOLUTE: &[u8] = include_bytes!("testdata/curl_absolute.http");
    const WGET: &[u8] = include_bytes!("testdata/wget.http");
    const PYTHON: &[u8] = include_bytes!("testdata/python_urllib.http");

    const ALL: &[(&str, &[u8])] = &[
        ("curl_plain", CURL_PLAIN),
        ("curl_xff", CURL_XFF),
        ("curl_http10", CURL_HTTP10),
        ("curl_post", CURL_POST),
        ("curl_chunked", CURL_CHUNKED),
        ("curl_absolute", CURL_ABSOLUTE),
        ("wget", WGET),
        ("python_urllib", PYTHON),
    ];

    fn head_end(b: &[u8]) -> usize {
        b.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for (file, bytes) in ALL {
            let end = head_end(bytes);
            for n in 0..end {
                match parse_head(&bytes[..n]) {
                    Err(HeadError::Incomplete { needed_at_least }) => {
                        assert!(
                            needed_at_least > n && needed_at_least <= end,
                            "{file} prefix {n}: {needed_at_least}"
                        )
                    }
                    other => panic!("{file} prefix {n}: {other:?}"),
                }
            }
            let h = parse_head(bytes).unwrap_or_else(|e| panic!("{file}: {e:?}"));
            assert_eq!(h.head_len, end, "{file}");
            assert_eq!(
                h.host,
                host(
                    "allowed.lab.test",
                    if *file == "curl_http10" { Some(18083) } else { None }
                )
            );
        }
    }

    #[test]
    fn captured_fields() {
        let h = parse_head(CURL_PLAIN).unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.version),
            ("GET", "/index.html", Version::Http11)
        );
        assert_eq!((h.body, h.connection_close, h.xff), (Body::None, false, None));

        let h = parse_head(CURL_XFF).unwrap();
        assert_eq!(h.xff.as_deref(), Some("203.0.113.9"));

        let h = parse_head(CURL_HTTP10).unwrap();
        assert_eq!(h.version, Version::Http10);
        assert!(h.connection_close);
        assert_eq!(h.host.unwrap().port_or_default(), 18083);

        let h = parse_head(CURL_POST).unwrap();
        assert_eq!((h.method.as_str(), h.body), ("POST", Body::ContentLength(9)));
        assert_eq!(&CURL_POST[h.head_len..], b"a=1&b=two");

        let h = parse_head(CURL_CHUNKED).unwrap();
        assert_eq!(h.body, Body::Chunked);

        let h = parse_head(CURL_ABSOLUTE).unwrap();
        assert_eq!(h.target, "http://allowed.lab.test/path?q=1");
        assert!(!h.connection_close);

        assert!(!parse_head(WGET).unwrap().connection_close);
        assert!(parse_head(PYTHON).unwrap().connection_close);
    }

    #[test]
    fn forwarded_for_insert_and_append() {
        let client = Ipv4Addr::new(198, 18, 1, 10);
        let h = parse_head(CURL_PLAIN).unwrap();
        assert_eq!(
            with_forwarded_for(CURL_PLAIN, &h, client),
            b"GET /index.html HTTP/1.1\r\nHost: allowed.lab.test\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\
              X-Forwarded-For: 198.18.1.10\r\n\r\n"
        );
        let h = parse_head(CURL_XFF).unwrap();
        assert_eq!(
            with_forwarded_for(CURL_XFF, &h, client),
            b"GET / HTTP/1.1\r\nHost: allowed.lab.test\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\
              X-Forwarded-For: 203.0.113.9, 198.18.1.10\r\n\r\n"
        );
        // The body after the head is carried over untouched.
        let h = parse_head(CURL_POST).unwrap();
        let out = with_forwarded_for(CURL_POST, &h, client);
        assert!(out.ends_with(b"X-Forwarded-For: 198.18.1.10\r\n\r\na=1&b=two"));
        // Trailing OWS and an empty value.
        let raw = b"GET / HTTP/1.1\r\nHost: a.test\r\nx-forwarded-for: 1.2.3.4  \r\nX-Other: 1\r\n\r\n";
        let out = with_forwarded_for(raw, &parse_head(raw).unwrap(), client);
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nHost: a.test\r\nx-forwarded-for: 1.2.3.4, 198.18.1.10  \r\nX-Other: 1\r\n\r\n"
        );
        let raw = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For:\r\n\r\n";
        let out = with_forwarded_for(raw, &parse_head(raw).unwrap(), client);
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 198.18.1.10\r\n\r\n"
        );
        for (file, bytes) in ALL {
            let h = parse_head(bytes).unwrap();
            let re = parse_head(&with_forwarded_for(bytes, &h, client)).unwrap();
            assert_eq!(re.host, h.host, "{file}");
            assert!(re.xff.unwrap().ends_with("198.18.1.10"), "{file}");
            assert_eq!(
                re.head_len,
                h.head_len + if h.xff.is_some() { 13 } else { 30 },
                "{file}"
            );
        }
    }

    #[test]
    fn deny_page_bytes() {
        let client = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 10), 40000);
        assert_eq!(
            String::from_utf8(deny_page(client, "denied.lab.test", 80, None)).unwrap(),
            "HTTP/1.1 470 status code 470\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 129\r\n\
             Connection: close\r\n\r\nHTTP request from 198.18.1.10:40000 to denied.lab.test:80. Action: Deny. \
             Reason: No rule matched. Proceeding with default action."
        );
        let page = deny_page(
            client,
            "denied.lab.test",
            8080,
            Some(("rcg-app", "block-sites", "block-denied")),
        );
        assert_eq!(
            String::from_utf8(page).unwrap(),
            "HTTP/1.1 470 status code 470\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 155\r\n\
             Connection: close\r\n\r\nHTTP request from 198.18.1.10:40000 to denied.lab.test:8080. Action: Deny. \
             Rule Collection Group: rcg-app. Rule Collection: block-sites. Rule: block-denied"
        );
    }

    fn err(raw: &[u8]) -> HeadError {
        match parse_head(raw) {
            Ok(h) => panic!("accepted {:?}: {h:?}", String::from_utf8_lossy(raw)),
            Err(e) => e,
        }
    }

    fn malformed(raw: &[u8]) {
        assert!(
            matches!(err(raw), HeadError::Malformed(_)),
            "{:?}: {:?}",
            String::from_utf8_lossy(raw),
            err(raw)
        );
    }

    #[test]
    fn smuggling_and_bypass_rejected() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a.test\r\nhost: a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test b.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.\ttest\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a_test/\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a..test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test:\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test:0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test:65536\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test:80:80\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: ::1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5, 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: -5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0x5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: xchunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n\tHost: b.test\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a.test\n\n",
            b"GET / HTTP/1.1\r\nHost: a.test\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\rX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost\t: a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\n: a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nX: \x01\r\n\r\n",
            b"GET /\0 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET / HTTP/1.1 \r\nHost: a.test\r\n\r\n",
            b"GET / HTTP/1.2\r\nHost: a.test\r\n\r\n",
            b"GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET http://a.test:8080/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET http://user@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET https://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ] {
            malformed(raw);
        }
        // Some are decided before the head is complete.
        malformed(b"GET / HTTP/1.1\r\nHost : a");
        malformed(b"GET / HTTP/1.1\r\nHost: a.test\r\n x");
        malformed(b"GET / HTTP/1.1\n");
        malformed(b"GET /\x01");
        // A line is judged whole once its CR arrives.
        malformed(b"\r");
        malformed(b"GET / HTTP/1.\r");
        malformed(b"GET / HTTP/1.1\r\nX-A\r");
        assert_eq!(err(b"GET /index.html\r"), HeadError::NotHttp);
    }

    #[test]
    fn not_http_and_unsupported() {
        let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        for n in 1..=tls.len() {
            assert_eq!(err(&tls[..n]), HeadError::NotHttp);
        }
        for raw in [
            &b"\0\0\0\0"[..],
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"get / HTTP/1.1\r\n",
            b"GET\r\n",
            b"GET /index.html\r\n",
            b"GET / HTTP/0.9\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"PRI ",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1\r\n",
            b"GET / FTP/1.1\r\n",
        ] {
            assert_eq!(err(raw), HeadError::NotHttp, "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(err(b"CONNECT "), HeadError::Unsupported("CONNECT"));
        assert_eq!(
            err(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n"),
            HeadError::Unsupported("CONNECT")
        );
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"),
            HeadError::Unsupported(_)
        ));
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: H2C\r\n\r\n"),
            HeadError::Unsupported("Upgrade: h2c")
        );
        let ws = b"GET /chat HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert!(parse_head(ws).unwrap().upgrade);
        // Both headers are needed: an Upgrade without `Connection: upgrade` is not a request to switch.
        assert!(
            !parse_head(b"GET / HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\n\r\n")
                .unwrap()
                .upgrade
        );
        assert!(
            !parse_head(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, Upgrade\r\n\r\n")
                .unwrap()
                .upgrade
        );
        assert!(!parse_head(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap().upgrade);
    }

    #[test]
    fn hosts_and_forms() {
        let ok = |raw: &[u8]| parse_head(raw).unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(raw)));
        assert_eq!(
            ok(b"GET / HTTP/1.1\r\nHOST: Allowed.Lab.Test.\r\n\r\n").host,
            host("allowed.lab.test", None)
        );
        assert_eq!(
            ok(b"GET / HTTP/1.1\r\nHost:a.test:8080 \r\n\r\n").host,
            host("a.test", Some(8080))
        );
        assert_eq!(ok(b"GET / HTTP/1.0\r\n\r\n").host, None);
        assert_eq!(ok(b"GET / HTTP/1.1\r\n\r\n").host, None);
        // Absolute-form: the authority is the host; it must agree with Host (default port 80).
        assert_eq!(ok(b"GET http://A.test/x HTTP/1.0\r\n\r\n").host, host("a.test", None));
        assert_eq!(
            ok(b"GET HTTP://a.test:81?q HTTP/1.1\r\n\r\n").host,
            host("a.test", Some(81))
        );
        assert_eq!(
            ok(b"GET http://a.test:80/ HTTP/1.1\r\nHost: a.test\r\n\r\n").host,
            host("a.test", Some(80))
        );
        assert_eq!(ok(b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n").target, "*");
        // Equal Content-Length repeats are fine; keep-alive on 1.0.
        let h = ok(b"POST / HTTP/1.0\r\nHost: a.test\r\nContent-Length: 3\r\ncontent-length: 3, 3\r\nConnection: Keep-Alive\r\n\r\n");
        assert_eq!((h.body, h.connection_close), (Body::ContentLength(3), false));
        assert!(ok(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, Close\r\n\r\n").connection_close);
        let h = ok(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n");
        assert_eq!(h.xff.as_deref(), Some("1.1.1.1, 2.2.2.2"));
        assert_eq!(
            ok(b"GET / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: Chunked\r\n\r\n").body,
            Body::Chunked
        );
    }

    #[test]
    fn pipelined_requests() {
        let mut buf = CURL_POST.to_vec();
        buf.extend_from_slice(WGET);
        let first = parse_head(&buf).unwrap();
        assert_eq!(first, parse_head(CURL_POST).unwrap());
        let Body::ContentLength(n) = first.body else { panic!() };
        let next = first.head_len + n as usize;
        let second = parse_head(&buf[next..]).unwrap();
        assert_eq!(second.head_len, WGET.len());
        assert_eq!(second.target, "/file.txt");
    }

    #[test]
    fn bounded() {
        let mut big = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Pad: ".to_vec();
        big.resize(MAX_HEAD - 4, b'a');
        assert!(matches!(parse_head(&big), Err(HeadError::Incomplete { .. })));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_head(&big).unwrap().head_len, MAX_HEAD);
        big.truncate(MAX_HEAD - 4);
        big.push(b'a');
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(err(&big), HeadError::TooLarge);
        big.truncate(MAX_HEAD);
        assert_eq!(err(&big), HeadError::TooLarge);
    }
}
