//! The TLS ClientHello inspector behind the proxy's peek loop: pure (no I/O), bounded, strict.
//!
//! [`inspect`] is given every byte peeked so far from the start of a connection and answers either
//! `Err(Incomplete)` — a longer prefix could still change the answer, peek more — or a definite
//! [`Hello`]. Once an answer is given, appending bytes never changes it (the fuzz target checks
//! this), and `Incomplete::needed_at_least` is always greater than the input length and never
//! greater than [`MAX_CLIENT_HELLO`], so the peek buffer is bounded and the loop cannot wait forever.
//!
//! Decisions (reference: azure-firewall.md §3 — HTTPS is matched on the SNI only, no SNI is denied):
//! - The handshake message may be fragmented over several handshake records (type 22) and, of
//!   course, over TCP segments; other record types interleaved with it are [`Hello::Malformed`].
//! - The first record header decides TLS or not: a type other than 22, or a version other than
//!   0x0301–0x0304, is [`Hello::NotTls`] as soon as the offending byte is seen (`GET ` is NotTls
//!   after one byte). Anything later that breaks the grammar is [`Hello::Malformed`].
//! - The ClientHello must end on a record boundary (TLS 1.3 servers — OpenSSL, rustls — require it
//!   too); bytes after it (ChangeCipherSpec, early data) are not looked at.
//! - A declared handshake length beyond [`MAX_HANDSHAKE`], or records that would carry the
//!   ClientHello past [`MAX_CLIENT_HELLO`] bytes of the stream, is [`Hello::TooLarge`].
//! - Extensions are walked completely (at most 16 KiB, so bounded) and duplicates are Malformed
//!   (RFC 8446 §4.2). The answer is only given once the whole ClientHello has been seen, so a late
//!   ECH extension or a broken tail can't be missed.
//! - server_name (RFC 6066): the list must hold exactly one entry, of name_type host_name (0); other
//!   name types are Malformed, as OpenSSL treats them. An empty list or name is Malformed.
//! - A host name that is not a valid [`Name`] — also an IP literal (RFC 6066 forbids them), a
//!   trailing dot (RFC 6066: "without a trailing dot"), or bytes `Name::parse` would trim or
//!   normalise away — is [`Hello::InvalidSni`], not NotTls: the connection is TLS, and the deny log
//!   should say why (it carries the escaped bytes).
//! - ECH (encrypted_client_hello 0xfe0d; also the older ESNI draft 0xffce) gives [`Hello::Ech`] with
//!   the outer (public) SNI. NB: Chrome and Firefox send *GREASE* ECH on every connection without
//!   an ECH config, indistinguishable from real ECH by design, and then the outer SNI is the real
//!   one. Denying every `Ech` would deny those browsers; the proxy decides (matching the outer name
//!   is what an SNI-only firewall like Azure's effectively does). An invalid outer SNI is
//!   InvalidSni whether or not ECH is present.

use portcullis_rules::Name;

/// The most stream bytes the proxy ever needs to peek: a 16 KiB handshake message in up to four
/// records (ClientHellos with post-quantum key shares are 1.5–2 KB, far below).
pub const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5 * 4;
/// The largest handshake message (4-byte header included) accepted.
pub const MAX_HANDSHAKE: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const MAX_FRAGMENT: usize = 1 << 14;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: usize = 0;
const EXT_ECH: usize = 0xfe0d;
const EXT_ESNI_DRAFT: usize = 0xffce;
/// Longest raw SNI kept for the deny log.
const MAX_LOGGED_SNI: usize = 255;

/// What the first bytes of a connection say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// A well-formed ClientHello naming this host.
    Sni(Name),
    /// A well-formed ClientHello without server_name (Azure: "SNI TLS extension was missing").
    NoSni,
    /// A well-formed ClientHello carrying encrypted_client_hello; `outer_sni` is the cleartext
    /// (public) name, if any. See the module notes on GREASE ECH.
    Ech { outer_sni: Option<Name> },
    /// A well-formed ClientHello whose host name is not a valid DNS name (escaped, truncated).
    InvalidSni(String),
    /// The declared ClientHello exceeds the bounds.
    TooLarge,
    /// Starts like TLS, then breaks the grammar.
    Malformed(&'static str),
    /// Not a TLS handshake record at all (e.g. plain HTTP).
    NotTls,
}

/// More bytes are needed: the answer cannot change before the input has this many bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incomplete {
    pub needed_at_least: usize,
}

/// Why a parse step stopped.
enum Stop {
    /// Handshake-message bytes up to this index (exclusive) are needed.
    Need(usize),
    Done(Hello),
}

fn malformed<T>(why: &'static str) -> Result<T, Stop> {
    Err(Stop::Done(Hello::Malformed(why)))
}

/// Where the record layer stopped.
enum RecordStop {
    /// The ClientHello's last record has been reached (its bytes may still be arriving).
    HelloEnds,
    /// The handshake header already decides (not a ClientHello, too large).
    HeaderDecides,
    /// A definite answer at a record header (after whatever the message bytes before it decide).
    At(Hello),
    /// The input ends in a record header; the stream needs this many bytes.
    NeedHeader(usize),
    /// The input ends inside the data of the last record.
    InRecord,
}

/// Inspect the bytes peeked so far from the start of a connection.
pub fn inspect(buf: &[u8]) -> Result<Hello, Incomplete> {
    // Nothing past the bound is ever looked at, so longer inputs answer like their bound prefix.
    let buf = &buf[..buf.len().min(MAX_CLIENT_HELLO)];
    let mut msg: Vec<u8> = Vec::new();
    let mut declared = 0usize; // handshake bytes declared by the records seen
    let mut last = (0usize, 0usize); // (message index, stream offset) where the last record's data starts
    let mut pos = 0usize;
    let stop = loop {
        let total = if msg.len() >= 4 {
            if msg[0] != HANDSHAKE_CLIENT_HELLO {
                break RecordStop::HeaderDecides;
            }
            let t = 4 + u24(&msg[1..4]);
            if t > MAX_HANDSHAKE {
                break RecordStop::HeaderDecides;
            }
            if declared >= t {
                break RecordStop::HelloEnds;
            }
            Some(t)
        } else {
            None
        };
        if pos + RECORD_HEADER > MAX_CLIENT_HELLO {
            break RecordStop::At(Hello::TooLarge);
        }
        match record_header(&buf[pos..], pos == 0) {
            Err(RecordHeader::Need(n)) => break RecordStop::NeedHeader(pos + n),
            Err(RecordHeader::Done(h)) => break RecordStop::At(h),
            Ok(len) => {
                let data = pos + RECORD_HEADER;
                if data + len > MAX_CLIENT_HELLO || total.is_some_and(|t| data + (t - declared) > MAX_CLIENT_HELLO) {
                    break RecordStop::At(Hello::TooLarge);
                }
                let have = len.min(buf.len() - data);
                last = (declared, data);
                msg.extend_from_slice(&buf[data..data + have]);
                declared += len;
                pos = data + len;
                if have < len {
                    break RecordStop::InRecord;
                }
            }
        }
    };
    // The message bytes all precede the point where the record layer stopped, so what they decide
    // comes first.
    match parse_client_hello(&msg) {
        Ok(hello) => {
            // Complete: the loop only appends past the message end within its last record.
            if declared != 4 + u24(&msg[1..4]) {
                return Ok(Hello::Malformed("ClientHello does not end at a record boundary"));
            }
            Ok(hello)
        }
        Err(Stop::Done(hello)) => Ok(hello),
        Err(Stop::Need(end)) => {
            let needed_at_least = match stop {
                RecordStop::At(hello) => return Ok(hello),
                // The missing byte `end - 1` lies beyond the records seen: the next header first.
                RecordStop::NeedHeader(n) if end > declared => n,
                _ if end > declared => pos + 1,
                // ... or in the last record seen.
                _ => last.1 + (end - 1 - last.0) + 1,
            }
            .min(MAX_CLIENT_HELLO);
            debug_assert!(needed_at_least > buf.len() && needed_at_least <= MAX_CLIENT_HELLO);
            Err(Incomplete { needed_at_least })
        }
    }
}

enum RecordHeader {
    /// This many bytes of the header are needed.
    Need(usize),
    Done(Hello),
}

/// Check a record header byte by byte (so `GET ` is rejected at once); returns the data length.
fn record_header(b: &[u8], first: bool) -> Result<usize, RecordHeader> {
    let reject = |why| RecordHeader::Done(if first { Hello::NotTls } else { Hello::Malformed(why) });
    let need = |n: usize| {
        if b.len() < n {
            Err(RecordHeader::Need(n))
        } else {
            Ok(())
        }
    };
    need(1)?;
    if b[0] != CONTENT_HANDSHAKE {
        return Err(reject("a non-handshake record inside the ClientHello"));
    }
    need(2)?;
    if b[1] != 3 {
        return Err(reject("record version major is not 3"));
    }
    need(3)?;
    if !(1..=4).contains(&b[2]) {
        return Err(reject("record version is not 0x0301-0x0304"));
    }
    need(5)?;
    let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
    if len == 0 {
        return Err(RecordHeader::Done(Hello::Malformed("empty handshake record")));
    }
    if len > MAX_FRAGMENT {
        return Err(RecordHeader::Done(Hello::Malformed("record longer than 2^14 bytes")));
    }
    Ok(len)
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// A cursor over the handshake bytes received so far (`buf`), bounded by a declared `end`: reading
/// past `end` is Malformed, reading past the bytes received is `Need`.
#[derive(Clone, Copy)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Stop> {
        let end = self.pos + n;
        if end > self.end {
            return malformed("a field runs past the end of its vector");
        }
        if end > self.buf.len() {
            return Err(Stop::Need(end));
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<usize, Stop> {
        Ok(usize::from(self.take(1)?[0]))
    }

    fn u16(&mut self) -> Result<usize, Stop> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// Split off the next `n` bytes as a nested vector (they need not have arrived yet).
    fn sub(&mut self, n: usize) -> Result<Reader<'a>, Stop> {
        if self.pos + n > self.end {
            return malformed("a vector runs past the end of its container");
        }
        let sub = Reader {
            buf: self.buf,
            pos: self.pos,
            end: self.pos + n,
        };
        self.pos += n;
        Ok(sub)
    }

    fn skip(&mut self, n: usize) -> Result<(), Stop> {
        self.sub(n).map(drop)
    }

    /// Answers are only given once every byte up to `end` has arrived, skipped ones included.
    fn complete(&self) -> Result<(), Stop> {
        if self.buf.len() < self.end {
            Err(Stop::Need(self.end))
        } else {
            Ok(())
        }
    }

    fn at_end(&self) -> bool {
        self.pos == self.end
    }
}

/// Parse the handshake message (4-byte header included) from the bytes received so far.
fn parse_client_hello(msg: &[u8]) -> Result<Hello, Stop> {
    let mut r = Reader {
        buf: msg,
        pos: 0,
        end: usize::MAX,
    };
    if r.u8()? != usize::from(HANDSHAKE_CLIENT_HELLO) {
        return malformed("the first handshake message is not a ClientHello");
    }
    let len = u24(r.take(3)?);
    if 4 + len > MAX_HANDSHAKE {
        return Err(Stop::Done(Hello::TooLarge));
    }
    r.end = 4 + len;
    let version = r.u16()?;
    if !(0x0301..=0x0304).contains(&version) {
        return malformed("ClientHello version is not 0x0301-0x0304");
    }
    r.skip(32)?; // random
    let session_id = r.u8()?;
    if session_id > 32 {
        return malformed("session id longer than 32 bytes");
    }
    r.skip(session_id)?;
    let suites = r.u16()?;
    if suites == 0 || suites % 2 != 0 {
        return malformed("bad cipher_suites length");
    }
    r.skip(suites)?;
    let compression = r.u8()?;
    if compression == 0 {
        return malformed("empty compression_methods");
    }
    r.skip(compression)?;
    if r.at_end() {
        r.complete()?;
        return Ok(Hello::NoSni); // no extensions block (TLS 1.0–1.2)
    }
    let ext_len = r.u16()?;
    if r.pos + ext_len != r.end {
        return malformed("extensions length does not match the ClientHello length");
    }
    let mut seen = [0u64; 1024]; // one bit per extension type
    let mut sni: Option<&[u8]> = None;
    let mut ech = false;
    while !r.at_end() {
        let typ = r.u16()?;
        let len = r.u16()?;
        let mut data = r.sub(len)?;
        let (word, bit) = (typ / 64, 1u64 << (typ % 64));
        if seen[word] & bit != 0 {
            return malformed("duplicate extension");
        }
        seen[word] |= bit;
        match typ {
            EXT_SERVER_NAME => sni = Some(server_name(&mut data)?),
            EXT_ECH | EXT_ESNI_DRAFT => ech = true,
            _ => {}
        }
    }
    r.complete()?;
    let sni = match sni {
        None => None,
        Some(raw) => match host_name(raw) {
            Some(name) => Some(name),
            None => return Ok(Hello::InvalidSni(escape(raw))),
        },
    };
    Ok(match (ech, sni) {
        (true, outer_sni) => Hello::Ech { outer_sni },
        (false, Some(name)) => Hello::Sni(name),
        (false, None) => Hello::NoSni,
    })
}

/// The server_name extension body: exactly one host_name entry. Returns its raw bytes.
fn server_name<'a>(data: &mut Reader<'a>) -> Result<&'a [u8], Stop> {
    let list = data.u16()?;
    if data.pos + list != data.end {
        return malformed("server_name list length does not match the extension length");
    }
    if list == 0 {
        return malformed("empty server_name list");
    }
    if data.u8()? != 0 {
        return malformed("server_name entry is not a host_name");
    }
    let len = data.u16()?;
    if len == 0 {
        return malformed("empty host_name");
    }
    let name = data.take(len)?;
    if !data.at_end() {
        return malformed("more than one server_name entry");
    }
    Ok(name)
}

/// A host name as RFC 6066 allows it: a DNS name in ASCII, no trailing dot, not an IP literal.
fn host_name(raw: &[u8]) -> Option<Name> {
    if !raw
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        || raw.ends_with(b".")
    {
        return None;
    }
    let text = std::str::from_utf8(raw).ok()?;
    // IPv4 literals in any inet_aton spelling end in a numeric label (the WHATWG URL rule).
    let last = text.rsplit('.').next().unwrap_or(text);
    let numeric = last.bytes().all(|c| c.is_ascii_digit())
        || (last.len() > 1 && last[..2].eq_ignore_ascii_case("0x") && last[2..].bytes().all(|c| c.is_ascii_hexdigit()));
    if numeric {
        return None;
    }
    Name::parse(text).ok()
}

fn escape(raw: &[u8]) -> String {
    raw[..raw.len().min(MAX_LOGGED_SNI)].escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURL_SNI: &[u8] = include_bytes!("testdata/curl_sni.bin");
    const OPENSSL_SNI: &[u8] = include_bytes!("testdata/openssl_sni.bin");
    const OPENSSL_NOSNI: &[u8] = include_bytes!("testdata/openssl_nosni.bin");
    const OPENSSL_LARGE: &[u8] = include_bytes!("testdata/openssl_large.bin");

    fn name(s: &str) -> Hello {
        Hello::Sni(Name::parse(s).unwrap())
    }

    fn captures() -> Vec<(&'static str, &'static [u8], Hello)> {
        vec![
            ("curl", CURL_SNI, name("x.lab.test")),
            ("openssl", OPENSSL_SNI, name("y.lab.test")),
            ("openssl -noservername", OPENSSL_NOSNI, Hello::NoSni),
            ("openssl large", OPENSSL_LARGE, name("big.lab.test")),
        ]
    }

    /// The handshake message inside a single-record capture.
    fn handshake(capture: &[u8]) -> &[u8] {
        let len = usize::from(u16::from_be_bytes([capture[3], capture[4]]));
        let msg = &capture[5..5 + len];
        assert_eq!(
            msg.len(),
            4 + u24(&msg[1..4]),
            "capture is one record holding one ClientHello"
        );
        msg
    }

    /// Wrap a handshake message into handshake records whose sizes cycle through `sizes`.
    fn records(msg: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = msg;
        for &n in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (frag, tail) = rest.split_at(n.min(rest.len()));
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(frag.len() as u16).to_be_bytes());
            out.extend_from_slice(frag);
            rest = tail;
        }
        out
    }

    /// Every strict prefix is Incomplete with a sane bound; the whole parses as expected.
    fn check_prefixes(label: &str, wire: &[u8], want: &Hello) {
        assert_eq!(inspect(wire).as_ref(), Ok(want), "{label}: whole");
        for n in 0..wire.len() {
            match inspect(&wire[..n]) {
                Err(Incomplete { needed_at_least }) => {
                    assert!(
                        needed_at_least > n && needed_at_least <= wire.len(),
                        "{label}: prefix {n}: {needed_at_least}"
                    )
                }
                Ok(h) => panic!("{label}: prefix {n} of {} answered {h:?}", wire.len()),
            }
        }
    }

    /// A synthetic ClientHello with the given extensions (type, body).
    fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        let mut ext = Vec::new();
        for (t, d) in exts {
            ext.extend_from_slice(&t.to_be_bytes());
            ext.extend_from_slice(&(d.len() as u16).to_be_bytes());
            ext.extend_from_slice(d);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    fn sni_ext(host: &[u8]) -> (u16, Vec<u8>) {
        let mut d = ((host.len() + 3) as u16).to_be_bytes().to_vec();
        d.push(0);
        d.extend_from_slice(&(host.len() as u16).to_be_bytes());
        d.extend_from_slice(host);
        (0, d)
    }

    fn one_record(msg: &[u8]) -> Vec<u8> {
        records(msg, &[MAX_FRAGMENT])
    }

    #[test]
    fn captures_parse_whole_and_every_prefix_is_incomplete() {
        for (label, wire, want) in captures() {
            check_prefixes(label, wire, &want);
        }
        assert!(OPENSSL_LARGE.len() > 1500, "the large capture exceeds one MTU");
    }

    #[test]
    fn captures_refragmented_into_many_records() {
        for (label, wire, want) in captures() {
            let msg = handshake(wire);
            for sizes in [&[1][..], &[2], &[3], &[4], &[5], &[1, 7, 300], &[511], &[1000, 1]] {
                let re = records(msg, sizes);
                if re.len() > MAX_CLIENT_HELLO {
                    assert_eq!(inspect(&re), Ok(Hello::TooLarge), "{label} {sizes:?}");
                    continue;
                }
                assert_eq!(inspect(&re).as_ref(), Ok(&want), "{label} {sizes:?}");
            }
            // Every prefix of a finely fragmented stream, too.
            check_prefixes(label, &records(msg, &[1, 2, 3, 50]), &want);
        }
    }

    #[test]
    fn bytes_after_the_hello_are_ignored() {
        for (label, wire, want) in captures() {
            let mut more = wire.to_vec();
            more.extend_from_slice(&[20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 9]); // CCS + early data header
            assert_eq!(inspect(&more), Ok(want), "{label}");
        }
    }

    #[test]
    fn not_tls_is_answered_at_once() {
        assert_eq!(inspect(b"G"), Ok(Hello::NotTls));
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), Ok(Hello::NotTls));
        assert_eq!(inspect(&[0x80, 0x2e, 0x01]), Ok(Hello::NotTls)); // SSLv2-style hello
        assert_eq!(inspect(&[22, 2]), Ok(Hello::NotTls));
        assert_eq!(inspect(&[22, 3, 0]), Ok(Hello::NotTls));
        assert_eq!(inspect(&[22, 3, 5]), Ok(Hello::NotTls));
        assert_eq!(inspect(&[]), Err(Incomplete { needed_at_least: 1 }));
        assert_eq!(inspect(&[22, 3, 1, 0]), Err(Incomplete { needed_at_least: 5 }));
    }

    #[test]
    fn no_sni_and_ech() {
        let nosni = one_record(&hello(&[(10, vec![0, 2, 0, 29])]));
        assert_eq!(inspect(&nosni), Ok(Hello::NoSni));
        // No extensions block at all.
        let mut bare = hello(&[]);
        bare.truncate(bare.len() - 2);
        bare[3] -= 2;
        assert_eq!(inspect(&one_record(&bare)), Ok(Hello::NoSni));

        let ech = one_record(&hello(&[sni_ext(b"public.example"), (EXT_ECH as u16, vec![0; 40])]));
        let want = Hello::Ech {
            outer_sni: Some(Name::parse("public.example").unwrap()),
        };
        check_prefixes("ech", &ech, &want);
        let ech_first = one_record(&hello(&[(EXT_ECH as u16, vec![0; 40]), sni_ext(b"public.example")]));
        assert_eq!(inspect(&ech_first), Ok(want));
        let ech_nosni = one_record(&hello(&[(EXT_ECH as u16, vec![1, 2, 3])]));
        assert_eq!(inspect(&ech_nosni), Ok(Hello::Ech { outer_sni: None }));
    }

    #[test]
    fn large_post_quantum_style_hello() {
        // OpenSSL 3.0 here has no ML-KEM: a hand-built browser-like hello with an
        // X25519MLKEM768 (0x11ec) key share of 1216 bytes plus x25519, GREASE, ALPN, padding.
        let mut ks = Vec::new();
        for (group, n) in [(0x0a0au16, 1usize), (0x11ec, 1216), (0x001d, 32)] {
            ks.extend_from_slice(&group.to_be_bytes());
            ks.extend_from_slice(&(n as u16).to_be_bytes());
            ks.extend(std::iter::repeat_n(0x42, n));
        }
        let mut key_share = (ks.len() as u16).to_be_bytes().to_vec();
        key_share.extend_from_slice(&ks);
        let msg = hello(&[
            (0x1a1a, vec![]),
            sni_ext(b"www.Example.COM"),
            (10, vec![0, 6, 0x0a, 0x0a, 0x11, 0xec, 0, 0x1d]),
            (16, b"\x00\x0c\x02h2\x08http/1.1".to_vec()),
            (51, key_share),
            (43, vec![4, 3, 4, 3, 3]),
            (EXT_ECH as u16, vec![0; 200]),
            (0x2a2a, vec![0]),
            (21, vec![0; 100]),
        ]);
        assert!(msg.len() > 1500);
        let want = Hello::Ech {
            outer_sni: Some(Name::parse("www.example.com").unwrap()),
        };
        check_prefixes("pq", &one_record(&msg), &want);
        // Fragmented over TCP segments is just more bytes; over records too.
        check_prefixes("pq/records", &records(&msg, &[1400]), &want);
    }

    #[test]
    fn sni_validation() {
        let sni = |h: &[u8]| inspect(&one_record(&hello(&[sni_ext(h)])));
        assert_eq!(sni(b"A.Lab.Test"), Ok(name("a.lab.test")));
        assert_eq!(sni(b"xn--bcher-kva.example"), Ok(name("xn--bcher-kva.example")));
        for bad in [
            &b"127.0.0.1"[..],
            b"10.1",
            b"0x7f.1",
            b"2130706433",
            b"::1",
            b"[::1]",
            b"a.lab.test.",
            b" a.lab.test",
            b"a..b",
            b"-a.b",
            b"a b",
            b"a\0b",
            b"caf\xc3\xa9.example",
            b"a.b/c",
            b"a:443",
        ] {
            assert!(
                matches!(sni(bad), Ok(Hello::InvalidSni(_))),
                "{:?}: {:?}",
                bad.escape_ascii().to_string(),
                sni(bad)
            );
        }
        let long = vec![b'a'; 300];
        assert!(matches!(sni(&long), Ok(Hello::InvalidSni(s)) if s.len() == MAX_LOGGED_SNI));
    }

    #[test]
    fn malformed_inputs_are_definite() {
        let good = one_record(&hello(&[sni_ext(b"a.b")]));
        let m = |wire: &[u8]| matches!(inspect(wire), Ok(Hello::Malformed(_)));
        let edit = |i: usize, v: u8| {
            let mut w = good.clone();
            w[i] = v;
            w
        };
        assert!(m(&edit(4, 0)), "empty record");
        assert!(m(&edit(3, 0x40)), "record > 2^14");
        assert!(m(&edit(5, 2)), "not a ClientHello");
        assert!(m(&edit(9, 2)), "client version 0x0203");
        assert!(m(&edit(5 + 4 + 34, 33)), "session id > 32");
        // A record longer than the message: the hello doesn't end at a record boundary.
        let mut long_rec = good.clone();
        long_rec[4] += 1;
        long_rec.push(0);
        assert_eq!(
            inspect(&long_rec),
            Ok(Hello::Malformed("ClientHello does not end at a record boundary"))
        );
        // Inconsistent extension lengths.
        let body_end = good.len();
        let ext_len_at = body_end - (4 + 5 + 3) - 2;
        assert!(m(&edit(ext_len_at + 1, good[ext_len_at + 1] + 1)));
        assert!(m(&edit(ext_len_at + 1, good[ext_len_at + 1] - 1)));
        // Duplicate extensions, bad server_name lists.
        assert!(m(&one_record(&hello(&[(5, vec![]), (5, vec![])]))));
        assert!(m(&one_record(&hello(&[sni_ext(b"a.b"), sni_ext(b"c.d")]))));
        assert!(m(&one_record(&hello(&[(0, vec![])]))));
        assert!(m(&one_record(&hello(&[(0, vec![0, 0])]))));
        assert!(m(&one_record(&hello(&[(0, vec![0, 3, 1, 0, 0])]))), "name_type 1");
        assert!(m(&one_record(&hello(&[(0, vec![0, 3, 0, 0, 0])]))), "empty host_name");
        let mut two = sni_ext(b"a.b");
        two.1.extend_from_slice(&[0, 0, 1, b'c']);
        two.1[1] += 4;
        assert!(m(&one_record(&hello(&[two]))), "two entries");
        // A second record of another type in the middle of the hello.
        let msg = hello(&[sni_ext(b"a.b")]);
        let mut split = records(&msg[..10], &[10]);
        split.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
        assert!(m(&split));
        // Truncated garbage: Incomplete prefixes, definite when the grammar breaks.
        assert!(m(&[22, 3, 1, 0, 5, 1, 0, 0, 1, 9]));
        assert_eq!(
            inspect(&[22, 3, 1, 0, 5, 1, 0, 0]),
            Err(Incomplete { needed_at_least: 9 })
        );
    }

    #[test]
    fn bounds() {
        // A declared handshake length beyond the bound: TooLarge from the header alone.
        assert_eq!(inspect(&[22, 3, 1, 0x40, 0, 1, 0, 0x40, 0]), Ok(Hello::TooLarge));
        assert_eq!(inspect(&[22, 3, 1, 0x40, 0, 1, 0xff, 0xff, 0xff]), Ok(Hello::TooLarge));
        // Exactly at the handshake bound is fine (4 + 16380).
        let mut big = hello(&[sni_ext(b"a.b")]);
        let pad = MAX_HANDSHAKE - big.len() - 4;
        big = hello(&[sni_ext(b"a.b"), (21, vec![0; pad])]);
        assert_eq!(big.len(), MAX_HANDSHAKE);
        assert_eq!(inspect(&records(&big, &[MAX_FRAGMENT])), Ok(name("a.b")));
        // ... but in small records it would need more than MAX_CLIENT_HELLO stream bytes.
        let tiny = records(&big, &[100]);
        assert_eq!(inspect(&tiny), Ok(Hello::TooLarge));
        let mut first_too_large = None;
        for n in 0..tiny.len() {
            match inspect(&tiny[..n]) {
                Err(i) => assert!(i.needed_at_least > n && i.needed_at_least <= MAX_CLIENT_HELLO),
                Ok(h) => {
                    assert_eq!(h, Hello::TooLarge);
                    first_too_large.get_or_insert(n);
                }
            }
        }
        assert!(
            first_too_large.unwrap() < 1000,
            "known too large from the first records"
        );
        // A hello fragmented into 1-byte records reaches the stream bound and stops.
        let one = records(&big, &[1]);
        assert_eq!(inspect(&one), Ok(Hello::TooLarge));
        assert_eq!(inspect(&one[..MAX_CLIENT_HELLO]), Ok(Hello::TooLarge));
    }

    /// A small deterministic stand-in for the fuzz target: mutated captures keep the properties
    /// (definite answers are stable under appended bytes; Incomplete asks for more, within bound).
    #[test]
    fn mutated_captures_keep_the_properties() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for (_, wire, _) in captures() {
            for _ in 0..300 {
                let mut w = records(handshake(wire), &[1 + rand(600)]);
                for _ in 0..1 + rand(3) {
                    let i = rand(w.len());
                    w[i] = rand(256) as u8;
                }
                w.truncate(1 + rand(w.len()));
                let whole = inspect(&w);
                let mut cut = 0;
                while cut < w.len() {
                    match inspect(&w[..cut]) {
                        Ok(h) => assert_eq!(whole.as_ref(), Ok(&h), "{:?}", &w[..cut]),
                        Err(i) => assert!(i.needed_at_least > cut && i.needed_at_least <= MAX_CLIENT_HELLO),
                    }
                    cut += 1 + rand(40);
                }
            }
        }
    }
}
