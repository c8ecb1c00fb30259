//! The HTTP/1.x request body framer: pure, sans-IO, bounded, no buffering, no allocation.
//!
//! The proxy checks every request of a keep-alive connection against the application rules, so it
//! must know exactly where a body ends and the next request head begins, while forwarding the body
//! bytes unchanged. [`BodyFramer`] is fed the stream after the head ([`parse_head`]'s `head_len`) in
//! pieces of any size and says how many of the bytes offered belong to the body; it never copies them.
//!
//! Chunked bodies follow RFC 9112 §7.1 strictly, for the same reason as the head parser: wherever we
//! and the origin could disagree about where the body ends, a client could smuggle a request past
//! the rule check. So CRLF only (bare LF or CR is an error), nothing but CRLF after chunk data, no
//! whitespace after a chunk size unless an extension follows, hex sizes that fit a `u64`, and every
//! line bounded ([`MAX_CHUNK_LINE`], [`MAX_TRAILERS`]). Whatever we reject, the proxy denies (closing
//! the connection). The state machine moves one byte at a time outside chunk data, so the result does
//! not depend on where the input is split.
//!
//! [`parse_head`]: super::http_head::parse_head

use super::http_head::Body;

/// The longest chunk-size line we accept (size, extensions and CRLF).
pub const MAX_CHUNK_LINE: usize = 4096;

/// The most hex digits in a chunk size, leading zeros included (the value itself must fit a `u64`).
pub const MAX_SIZE_DIGITS: usize = 32;

/// The longest trailer section we accept (every field line with its CRLF, plus the final CRLF).
pub const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("chunked body: empty chunk size")]
    EmptyChunkSize,
    #[error("chunked body: invalid byte in chunk size")]
    BadChunkSize,
    #[error("chunked body: chunk size does not fit 64 bits")]
    ChunkSizeOverflow,
    #[error("chunked body: chunk size longer than {MAX_SIZE_DIGITS} hex digits")]
    ChunkSizeTooLong,
    #[error("chunked body: chunk-size line longer than {MAX_CHUNK_LINE} bytes")]
    ChunkLineTooLong,
    #[error("chunked body: malformed chunk extension")]
    BadChunkExtension,
    #[error("chunked body: bare LF line ending")]
    BareLf,
    #[error("chunked body: CR not followed by LF")]
    BareCr,
    #[error("chunked body: chunk data not followed by CRLF")]
    MissingDataCrlf,
    #[error("chunked body: malformed trailer field line")]
    BadTrailer,
    #[error("chunked body: trailer section longer than {MAX_TRAILERS} bytes")]
    TrailersTooLarge,
}

/// Frames one request body; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFramer {
    state: State,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// `Body::None`, or the end of a chunked body.
    Done,
    /// A Content-Length body; done at 0.
    Fixed {
        remaining: u64,
    },
    Chunked(Chunked),
    /// Sticky: every later `feed` returns the same error.
    Failed(BodyError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Chunked {
    phase: Phase,
    /// The chunk size being read (valid once its line ends).
    size: u64,
    /// Hex digits of `size` read so far, leading zeros included.
    digits: usize,
    /// Bytes of the current chunk-size line so far.
    line_len: usize,
    /// Bytes of the trailer section so far.
    trailer_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Chunk-size hex digits.
    Size,
    /// BWS after the size: only more whitespace or `;` may follow.
    SizeWs,
    /// After `;` (and BWS): the extension name must start.
    ExtNameStart,
    /// In an extension name.
    ExtName,
    /// BWS after a name: only whitespace, `=` or `;` may follow.
    ExtNameWs,
    /// After `=` (and BWS): a token or quoted-string value must start.
    ExtValueStart,
    /// In a token value.
    ExtToken,
    /// In a quoted-string value.
    ExtQuoted,
    /// After a backslash in a quoted-string.
    ExtQuotedPair,
    /// Right after a quoted-string's closing quote.
    ExtQuotedEnd,
    /// BWS after a value: only whitespace or `;` may follow.
    ExtValueWs,
    /// The CR ending the chunk-size line was read.
    SizeLf,
    /// Chunk data; `remaining` > 0.
    Data { remaining: u64 },
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// The start of a trailer field line, or of the final CRLF.
    TrailerStart,
    /// In a trailer field name.
    TrailerName,
    /// In a trailer field value.
    TrailerValue,
    /// The CR ending a trailer field line was read.
    TrailerLf,
    /// The CR of the final CRLF was read.
    FinalLf,
}

impl BodyFramer {
    pub fn new(body: Body) -> Self {
        let state = match body {
            Body::None => State::Done,
            Body::ContentLength(n) => State::Fixed { remaining: n },
            Body::Chunked => State::Chunked(Chunked::new()),
        };
        Self { state }
    }

    /// Offer the next bytes of the stream (after the head). Returns how many of them belong to the
    /// body (forward exactly those, unchanged): all of them until [`done`](Self::done) becomes true,
    /// then the rest of `input` is the start of the next request. After the body, returns 0; after
    /// an error, returns the same error again.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, BodyError> {
        match &mut self.state {
            State::Done => Ok(0),
            State::Failed(e) => Err(e.clone()),
            State::Fixed { remaining } => Ok(take(remaining, input.len())),
            State::Chunked(c) => match c.feed(input) {
                Ok((n, done)) => {
                    if done {
                        self.state = State::Done;
                    }
                    Ok(n)
                }
                Err(e) => {
                    self.state = State::Failed(e.clone());
                    Err(e)
                }
            },
        }
    }

    /// The whole body has been consumed.
    pub fn done(&self) -> bool {
        matches!(self.state, State::Done | State::Fixed { remaining: 0 })
    }

    /// For Content-Length bodies: bytes still to come (lets the caller splice/copy them without
    /// parsing). `None` for chunked and absent bodies.
    pub fn remaining_fixed(&self) -> Option<u64> {
        match self.state {
            State::Fixed { remaining } => Some(remaining),
            _ => None,
        }
    }
}

/// Takes up to `available` bytes off `remaining`; returns how many.
fn take(remaining: &mut u64, available: usize) -> usize {
    let n = usize::try_from(*remaining).map_or(available, |r| r.min(available));
    *remaining -= n as u64;
    n
}

impl Chunked {
    fn new() -> Self {
        Self {
            phase: Phase::Size,
            size: 0,
            digits: 0,
            line_len: 0,
            trailer_len: 0,
        }
    }

    /// Returns the bytes consumed and whether the body ended.
    fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), BodyError> {
        let mut i = 0;
        while i < input.len() {
            if let Phase::Data { remaining } = &mut self.phase {
                i += take(remaining, input.len() - i);
                if *remaining == 0 {
                    self.phase = Phase::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            if self.step(b)? {
                return Ok((i, true));
            }
        }
        Ok((i, false))
    }

    /// One byte outside chunk data; returns whether it ended the body.
    fn step(&mut self, b: u8) -> Result<bool, BodyError> {
        use BodyError as E;
        use Phase as P;

        if self.in_size_line() {
            self.line_len += 1;
            if self.line_len > MAX_CHUNK_LINE {
                return Err(E::ChunkLineTooLong);
            }
        } else if self.in_trailers() {
            self.trailer_len += 1;
            if self.trailer_len > MAX_TRAILERS {
                return Err(E::TrailersTooLarge);
            }
        }

        self.phase = match (self.phase, b) {
            // Chunk size.
            (P::Size, _) if b.is_ascii_hexdigit() => {
                self.digits += 1;
                if self.digits > MAX_SIZE_DIGITS {
                    return Err(E::ChunkSizeTooLong);
                }
                let digit = u64::from(hex_value(b));
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or(E::ChunkSizeOverflow)?;
                P::Size
            }
            (P::Size, _) if self.digits == 0 => {
                return Err(match b {
                    b'\r' | b'\n' | b';' => E::EmptyChunkSize,
                    _ => E::BadChunkSize,
                });
            }
            (P::Size | P::SizeWs, b' ' | b'\t') => P::SizeWs,
            (P::Size | P::SizeWs, b';') => P::ExtNameStart,
            (P::Size, b'\r') => P::SizeLf,
            (P::Size, b'\n') => return Err(E::BareLf),
            (P::Size, _) => return Err(E::BadChunkSize),
            (P::SizeWs, _) => return Err(E::BadChunkSize),

            // Chunk extensions: *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] ).
            (P::ExtNameStart, b' ' | b'\t') => P::ExtNameStart,
            (P::ExtNameStart, _) if is_tchar(b) => P::ExtName,
            (P::ExtName, _) if is_tchar(b) => P::ExtName,
            (P::ExtName | P::ExtNameWs, b' ' | b'\t') => P::ExtNameWs,
            (P::ExtName | P::ExtNameWs, b'=') => P::ExtValueStart,
            (P::ExtName | P::ExtNameWs, b';') => P::ExtNameStart,
            (P::ExtName, b'\r') => P::SizeLf,
            (P::ExtValueStart, b' ' | b'\t') => P::ExtValueStart,
            (P::ExtValueStart, b'"') => P::ExtQuoted,
            (P::ExtValueStart, _) if is_tchar(b) => P::ExtToken,
            (P::ExtToken, _) if is_tchar(b) => P::ExtToken,
            (P::ExtQuoted, b'"') => P::ExtQuotedEnd,
            (P::ExtQuoted, b'\\') => P::ExtQuotedPair,
            (P::ExtQuoted, _) if is_qdtext(b) => P::ExtQuoted,
            (P::ExtQuotedPair, _) if b == b'\t' || b == b' ' || is_vchar_or_obs(b) => P::ExtQuoted,
            (P::ExtToken | P::ExtQuotedEnd | P::ExtValueWs, b' ' | b'\t') => P::ExtValueWs,
            (P::ExtToken | P::ExtQuotedEnd | P::ExtValueWs, b';') => P::ExtNameStart,
            (P::ExtToken | P::ExtQuotedEnd, b'\r') => P::SizeLf,
            (
                P::ExtNameStart
                | P::ExtName
                | P::ExtNameWs
                | P::ExtValueStart
                | P::ExtToken
                | P::ExtQuoted
                | P::ExtQuotedPair
                | P::ExtQuotedEnd
                | P::ExtValueWs,
                b'\n',
            ) => return Err(E::BareLf),
            (
                P::ExtNameStart
                | P::ExtName
                | P::ExtNameWs
                | P::ExtValueStart
                | P::ExtToken
                | P::ExtQuoted
                | P::ExtQuotedPair
                | P::ExtQuotedEnd
                | P::ExtValueWs,
                _,
            ) => return Err(E::BadChunkExtension),

            // End of the chunk-size line.
            (P::SizeLf, b'\n') if self.size == 0 => P::TrailerStart,
            (P::SizeLf, b'\n') => {
                let remaining = self.size;
                self.size = 0;
                self.digits = 0;
                self.line_len = 0;
                P::Data { remaining }
            }
            (P::SizeLf, _) => return Err(E::BareCr),

            // After chunk data.
            (P::DataCr, b'\r') => P::DataLf,
            (P::DataCr, _) => return Err(E::MissingDataCrlf),
            (P::DataLf, b'\n') => P::Size,
            (P::DataLf, _) => return Err(E::MissingDataCrlf),

            // Trailer section: *( field-name ":" field-value CRLF ) CRLF.
            (P::TrailerStart, b'\r') => P::FinalLf,
            (P::TrailerStart, b'\n') => return Err(E::BareLf),
            (P::TrailerStart, _) if is_tchar(b) => P::TrailerName,
            (P::TrailerStart, _) => return Err(E::BadTrailer),
            (P::TrailerName, _) if is_tchar(b) => P::TrailerName,
            (P::TrailerName, b':') => P::TrailerValue,
            (P::TrailerName, b'\n') => return Err(E::BareLf),
            (P::TrailerName, _) => return Err(E::BadTrailer),
            (P::TrailerValue, b'\r') => P::TrailerLf,
            (P::TrailerValue, b'\n') => return Err(E::BareLf),
            (P::TrailerValue, _) if b == b'\t' || (b >= 0x20 && b != 0x7f) => P::TrailerValue,
            (P::TrailerValue, _) => return Err(E::BadTrailer),
            (P::TrailerLf, b'\n') => P::TrailerStart,
            (P::FinalLf, b'\n') => return Ok(true),
            (P::TrailerLf | P::FinalLf, _) => return Err(E::BareCr),

            (P::Data { .. }, _) => unreachable!("chunk data is consumed in bulk"),
        };
        Ok(false)
    }

    /// The current byte belongs to a chunk-size line (chunk or last-chunk), CRLF included.
    fn in_size_line(&self) -> bool {
        matches!(
            self.phase,
            Phase::Size
                | Phase::SizeWs
                | Phase::ExtNameStart
                | Phase::ExtName
                | Phase::ExtNameWs
                | Phase::ExtValueStart
                | Phase::ExtToken
                | Phase::ExtQuoted
                | Phase::ExtQuotedPair
                | Phase::ExtQuotedEnd
                | Phase::ExtValueWs
                | Phase::SizeLf
        )
    }

    /// The current byte belongs to the trailer section, final CRLF included.
    fn in_trailers(&self) -> bool {
        matches!(
            self.phase,
            Phase::TrailerStart | Phase::TrailerName | Phase::TrailerValue | Phase::TrailerLf | Phase::FinalLf
        )
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => unreachable!("not a hex digit"),
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff)
}

fn is_vchar_or_obs(b: u8) -> bool {
    matches!(b, 0x21..=0x7e | 0x80..=0xff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http_head::parse_head;

    const NEXT: &[u8] = b"GET / HTTP/1.1\r\nHost: allowed.lab.test\r\n\r\n";

    /// Feeds `input` in pieces of `piece` bytes (one call if 0) until done or an error; returns the
    /// total consumed and whether the body ended.
    fn frame(body: Body, input: &[u8], piece: usize) -> Result<(usize, bool), BodyError> {
        let mut f = BodyFramer::new(body);
        let mut total = 0;
        let step = if piece == 0 { input.len().max(1) } else { piece };
        for part in input.chunks(step) {
            let n = f.feed(part)?;
            assert!(n <= part.len());
            total += n;
            if f.done() {
                return Ok((total, true));
            }
            assert_eq!(n, part.len(), "consumed less without ending the body");
        }
        Ok((total, f.done()))
    }

    /// Frames `input` whole, byte by byte, and split at every single point (about 300 evenly spread
    /// points for long inputs, to keep the tests fast): all must agree.
    fn frame_all(body: Body, input: &[u8]) -> Result<(usize, bool), BodyError> {
        let whole = frame(body, input, 0);
        assert_eq!(frame(body, input, 1), whole, "byte by byte");
        let stride = (input.len() / 256).max(1);
        let points = (0..=input.len())
            .step_by(stride)
            .chain(input.len().saturating_sub(40)..=input.len());
        for at in points {
            let mut f = BodyFramer::new(body);
            let split = (|| -> Result<(usize, bool), BodyError> {
                let mut total = 0;
                for part in [&input[..at], &input[at..]] {
                    let n = f.feed(part)?;
                    total += n;
                    if f.done() {
                        return Ok((total, true));
                    }
                }
                Ok((total, f.done()))
            })();
            assert_eq!(split, whole, "split at {at}");
        }
        whole
    }

    /// A complete chunked body followed by the next request: returns the body length.
    fn chunked_len(body: &[u8]) -> usize {
        let mut stream = body.to_vec();
        stream.extend_from_slice(NEXT);
        let (n, done) = frame_all(Body::Chunked, &stream).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        assert!(done);
        assert_eq!(n, body.len(), "{:?}", String::from_utf8_lossy(body));
        n
    }

    fn chunked_err(body: &[u8]) -> BodyError {
        match frame_all(Body::Chunked, body) {
            Err(e) => e,
            ok => panic!("{:?} accepted: {ok:?}", String::from_utf8_lossy(body)),
        }
    }

    #[test]
    fn no_body_is_done_at_once() {
        let mut f = BodyFramer::new(Body::None);
        assert!(f.done());
        assert_eq!(f.remaining_fixed(), None);
        assert_eq!(f.feed(NEXT), Ok(0));
        assert_eq!(f.feed(b""), Ok(0));
        assert!(f.done());
    }

    #[test]
    fn content_length_exact() {
        let mut f = BodyFramer::new(Body::ContentLength(9));
        assert!(!f.done());
        assert_eq!(f.remaining_fixed(), Some(9));
        let mut stream = b"a=1&b=two".to_vec();
        stream.extend_from_slice(NEXT);
        assert_eq!(f.feed(&stream), Ok(9));
        assert!(f.done());
        assert_eq!(f.remaining_fixed(), Some(0));
        assert_eq!(f.feed(NEXT), Ok(0));

        assert_eq!(frame_all(Body::ContentLength(9), &stream), Ok((9, true)));
        assert_eq!(frame_all(Body::ContentLength(0), &stream), Ok((0, true)));
        assert!(BodyFramer::new(Body::ContentLength(0)).done());
    }

    #[test]
    fn content_length_split() {
        let mut f = BodyFramer::new(Body::ContentLength(10));
        assert_eq!(f.feed(b"0123"), Ok(4));
        assert_eq!(f.remaining_fixed(), Some(6));
        assert_eq!(f.feed(b""), Ok(0));
        assert_eq!(f.feed(b"456"), Ok(3));
        assert!(!f.done());
        assert_eq!(f.feed(b"789GET"), Ok(3));
        assert!(f.done());
        // Short input: all consumed, not done.
        assert_eq!(frame_all(Body::ContentLength(100), b"short"), Ok((5, false)));
    }

    #[test]
    fn content_length_huge_never_allocates() {
        let mut f = BodyFramer::new(Body::ContentLength(u64::MAX));
        let block = [0u8; 4096];
        for _ in 0..100 {
            assert_eq!(f.feed(&block), Ok(block.len()));
        }
        assert_eq!(f.remaining_fixed(), Some(u64::MAX - 409_600));
        assert!(!f.done());
    }

    #[test]
    fn chunked_rfc_examples() {
        // RFC 9112 §7.1 grammar; the classic example of RFC 2616 §3.6.1 / MDN.
        chunked_len(b"7\r\nMozilla\r\n11\r\nDeveloper Network\r\n0\r\n\r\n");
        chunked_len(b"4\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\n\r\n");
        chunked_len(b"0\r\n\r\n");
        chunked_len(b"000\r\n\r\n"); // last-chunk = 1*("0")
        chunked_len(b"a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n");
        chunked_len(b"00000005\r\nhello\r\n0\r\n\r\n"); // fixed-width size, as some clients write
        chunked_len(b"1\r\n\n\r\n1\r\n\r\r\n0\r\n\r\n"); // CR/LF inside data are data
    }

    #[test]
    fn chunked_real_capture() {
        let capture: &[u8] = include_bytes!("testdata/curl_chunked.http");
        let head = parse_head(capture).unwrap();
        assert_eq!(head.body, Body::Chunked);
        assert_eq!(chunked_len(&capture[head.head_len..]), b"5\r\nhello\r\n0\r\n\r\n".len());

        let post: &[u8] = include_bytes!("testdata/curl_post.http");
        let head = parse_head(post).unwrap();
        assert_eq!(head.body, Body::ContentLength(9));
        let mut stream = post[head.head_len..].to_vec();
        stream.extend_from_slice(NEXT);
        assert_eq!(frame_all(head.body, &stream), Ok((9, true)));
    }

    #[test]
    fn chunked_extensions() {
        chunked_len(b"5;name\r\nhello\r\n0\r\n\r\n");
        chunked_len(b"5;name=value\r\nhello\r\n0\r\n\r\n");
        chunked_len(b"5;a=1;b;c=\"quoted; \\\"string\\\" \\\\ \"\r\nhello\r\n0;last\r\n\r\n");
        chunked_len(b"5 ;a = 1 ; b\t;\tc=\"\"\r\nhello\r\n0\r\n\r\n"); // BWS around ";" and "="
        chunked_len(b"5;x=\"\xe9\"\r\nhello\r\n0\r\n\r\n"); // obs-text
        chunked_len(b"5;!#$%&'*+-.^_`|~=ok\r\nhello\r\n0\r\n\r\n");

        assert_eq!(chunked_err(b"5;\r\nhello\r\n0\r\n\r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;;a\r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;a=\r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;a==b\r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;a b\r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;a \r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;a=b \r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;a=b c\r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;a=\"b\"c\r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;a=\"b\r\n"), BodyError::BadChunkExtension); // unterminated quote
        assert_eq!(chunked_err(b"5;a=\"b\x01\"\r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;a=\"\\\x01\"\r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;a=\"\x7f\"\r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;a@b\r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;a=b@\r\n"), BodyError::BadChunkExtension);
        assert_eq!(chunked_err(b"5;a\0\r\n"), BodyError::BadChunkExtension);
    }

    #[test]
    fn chunk_line_bound() {
        // Exactly MAX_CHUNK_LINE bytes, CRLF included, is fine; one more is not.
        let line = |len: usize| {
            let mut l = b"5;x=".to_vec();
            l.resize(len - 2, b'a');
            l.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
            l
        };
        chunked_len(&line(MAX_CHUNK_LINE));
        assert_eq!(chunked_err(&line(MAX_CHUNK_LINE + 1)), BodyError::ChunkLineTooLong);
        // The bound is per line: many long lines are fine.
        let mut many = Vec::new();
        for _ in 0..10 {
            many.extend_from_slice(&line(MAX_CHUNK_LINE)[..MAX_CHUNK_LINE + 7]);
        }
        many.extend_from_slice(b"0\r\n\r\n");
        chunked_len(&many);
        // The last-chunk line too.
        let mut last = b"0;x=".to_vec();
        last.resize(MAX_CHUNK_LINE - 1, b'a');
        last.extend_from_slice(b"\r\n\r\n");
        assert_eq!(chunked_err(&last), BodyError::ChunkLineTooLong);
        // Whitespace cannot bypass it.
        let mut ws = b"5".to_vec();
        ws.resize(MAX_CHUNK_LINE + 1, b' ');
        assert_eq!(chunked_err(&ws), BodyError::ChunkLineTooLong);
    }

    #[test]
    fn chunk_sizes() {
        // The largest size is a valid value: consumed as it comes, never buffered.
        let mut f = BodyFramer::new(Body::Chunked);
        assert_eq!(f.feed(b"ffffffffffffffff\r\n"), Ok(18));
        let block = [b'x'; 8192];
        for _ in 0..100 {
            assert_eq!(f.feed(&block), Ok(block.len()));
        }
        assert!(!f.done());
        assert_eq!(f.remaining_fixed(), None);
        assert_eq!(frame_all(Body::Chunked, b"FFFFFFFFFFFFFFFF\r\nabc"), Ok((21, false)));

        assert_eq!(chunked_err(b"1ffffffffffffffff\r\n"), BodyError::ChunkSizeOverflow);
        assert_eq!(chunked_err(b"10000000000000000\r\n"), BodyError::ChunkSizeOverflow);
        // Leading zeros up to MAX_SIZE_DIGITS digits in all.
        let mut zeros = vec![b'0'; MAX_SIZE_DIGITS - 1];
        zeros.extend_from_slice(b"1\r\nx\r\n0\r\n\r\n");
        chunked_len(&zeros);
        let mut zeros = vec![b'0'; MAX_SIZE_DIGITS];
        zeros.extend_from_slice(b"1\r\nx\r\n0\r\n\r\n");
        assert_eq!(chunked_err(&zeros), BodyError::ChunkSizeTooLong);
        let mut zeros = vec![b'0'; MAX_SIZE_DIGITS + 1];
        zeros.extend_from_slice(b"\r\n\r\n");
        assert_eq!(chunked_err(&zeros), BodyError::ChunkSizeTooLong);
    }

    #[test]
    fn chunk_size_errors() {
        use BodyError as E;
        assert_eq!(chunked_err(b"\r\n"), E::EmptyChunkSize);
        assert_eq!(chunked_err(b";a\r\n"), E::EmptyChunkSize);
        assert_eq!(chunked_err(b" 5\r\n"), E::BadChunkSize);
        assert_eq!(chunked_err(b"\n"), E::EmptyChunkSize);
        assert_eq!(chunked_err(b"5\r\nhello\r\n\r\n"), E::EmptyChunkSize); // missing last-chunk
        assert_eq!(chunked_err(b"+5\r\n"), E::BadChunkSize);
        assert_eq!(chunked_err(b"-5\r\n"), E::BadChunkSize);
        assert_eq!(chunked_err(b"0x5\r\n"), E::BadChunkSize);
        assert_eq!(chunked_err(b"5g\r\n"), E::BadChunkSize);
        assert_eq!(chunked_err(b"5 \r\n"), E::BadChunkSize); // trailing whitespace
        assert_eq!(chunked_err(b"5 5\r\n"), E::BadChunkSize);
        assert_eq!(chunked_err(b"5,5\r\n"), E::BadChunkSize);
        assert_eq!(chunked_err(b"5\0\r\n"), E::BadChunkSize);
        assert_eq!(chunked_err(b"\xff5\r\n"), E::BadChunkSize);
        assert_eq!(chunked_err(b"GET / HTTP/1.1\r\n"), E::BadChunkSize);
    }

    #[test]
    fn line_ending_errors() {
        use BodyError as E;
        assert_eq!(chunked_err(b"5\nhello\r\n0\r\n\r\n"), E::BareLf);
        assert_eq!(chunked_err(b"5;a\n"), E::BareLf);
        assert_eq!(chunked_err(b"5;a=b\n"), E::BareLf);
        assert_eq!(chunked_err(b"5;a=\"b\"\n"), E::BareLf);
        assert_eq!(chunked_err(b"5\rhello"), E::BareCr);
        assert_eq!(chunked_err(b"5\r\r\n"), E::BareCr);
        assert_eq!(chunked_err(b"0\r\n\n"), E::BareLf);
        assert_eq!(chunked_err(b"0\r\n\rX"), E::BareCr);
        assert_eq!(chunked_err(b"0\r\nA: b\n\r\n"), E::BareLf);
        assert_eq!(chunked_err(b"0\r\nA\n"), E::BareLf);
        assert_eq!(chunked_err(b"0\r\nA: b\rc\r\n\r\n"), E::BareCr);
        // After chunk data: exactly CRLF.
        assert_eq!(chunked_err(b"5\r\nhello\n0\r\n\r\n"), E::MissingDataCrlf);
        assert_eq!(chunked_err(b"5\r\nhelloX\r\n0\r\n\r\n"), E::MissingDataCrlf); // data longer than size
        assert_eq!(chunked_err(b"5\r\nhello\rX"), E::MissingDataCrlf);
        assert_eq!(chunked_err(b"5\r\nhello\r\r\n"), E::MissingDataCrlf);
        assert_eq!(chunked_err(b"5\r\nhello0\r\n\r\n"), E::MissingDataCrlf);
    }

    #[test]
    fn trailers() {
        chunked_len(b"5\r\nhello\r\n0\r\nExpires: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n");
        chunked_len(b"0\r\nA: 1\r\nB-2:\r\nc:  spaced  value \t\r\nd:\xe9t\xe9\r\n\r\n");
        chunked_len(b"0\r\nx:\"quoted\"\r\n\r\n");

        use BodyError as E;
        assert_eq!(chunked_err(b"0\r\nNoColon\r\n\r\n"), E::BadTrailer);
        assert_eq!(chunked_err(b"0\r\n: value\r\n\r\n"), E::BadTrailer);
        assert_eq!(chunked_err(b"0\r\nA : b\r\n\r\n"), E::BadTrailer); // whitespace before colon
        assert_eq!(chunked_err(b"0\r\nA: b\r\n c\r\n\r\n"), E::BadTrailer); // obs-fold
        assert_eq!(chunked_err(b"0\r\n\tA: b\r\n\r\n"), E::BadTrailer);
        assert_eq!(chunked_err(b"0\r\nA: b\0\r\n\r\n"), E::BadTrailer);
        assert_eq!(chunked_err(b"0\r\nA: \x7f\r\n\r\n"), E::BadTrailer);
        assert_eq!(chunked_err(b"0\r\nA(b): c\r\n\r\n"), E::BadTrailer);
        assert_eq!(chunked_err(b"0\r\nGET / HTTP/1.1\r\n\r\n"), E::BadTrailer);
    }

    #[test]
    fn trailer_bound() {
        use BodyError as E;
        // MAX_TRAILERS counts every trailer byte, the final CRLF included.
        let section = |len: usize| {
            let mut t = b"0\r\n".to_vec();
            let mut left = len - 2;
            while left > 0 {
                let line = left.min(1000);
                assert!(line >= 5, "test layout");
                let mut l = b"x:".to_vec();
                l.resize(line - 2, b'v');
                l.extend_from_slice(b"\r\n");
                t.extend_from_slice(&l);
                left -= line;
            }
            t.extend_from_slice(b"\r\n");
            t
        };
        chunked_len(&section(MAX_TRAILERS));
        assert_eq!(chunked_err(&section(MAX_TRAILERS + 5)), E::TrailersTooLarge);
    }

    #[test]
    fn incomplete_chunked_consumes_everything() {
        for prefix in [
            &b""[..],
            b"5",
            b"5\r",
            b"5\r\nhel",
            b"5\r\nhello",
            b"5\r\nhello\r",
            b"5\r\nhello\r\n",
            b"5;a=\"x",
            b"0\r\n",
            b"0\r\nA: b",
            b"0\r\nA: b\r\n",
            b"0\r\n\r",
        ] {
            assert_eq!(
                frame_all(Body::Chunked, prefix),
                Ok((prefix.len(), false)),
                "{prefix:?}"
            );
        }
    }

    #[test]
    fn errors_are_sticky_and_done_is_final() {
        let mut f = BodyFramer::new(Body::Chunked);
        assert_eq!(f.feed(b"5\nhello"), Err(BodyError::BareLf));
        assert_eq!(f.feed(b"\r\n0\r\n\r\n"), Err(BodyError::BareLf));
        assert!(!f.done());

        let mut f = BodyFramer::new(Body::Chunked);
        assert_eq!(f.feed(b"0\r\n\r\nGET"), Ok(5));
        assert!(f.done());
        assert_eq!(f.feed(b"0\r\n\r\n"), Ok(0));
    }

    #[test]
    fn every_split_gives_the_same_body_length() {
        let bodies: &[&[u8]] = &[
            b"0\r\n\r\n",
            b"1\r\na\r\n0\r\n\r\n",
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"3;ext=\"a;b\\\"c\"\r\nabc\r\n0;done\r\nTrailer: x\r\nOther:\r\n\r\n",
            b"0000a\r\n\r\n\r\n\r\n\r\n\r\n\r\n0\r\n\r\n", // data that looks like line ends
            b"5\r\n0\r\n\r\n\r\n0\r\n\r\n",                // data that looks like a last-chunk
            b"1\r\nG\r\n0\r\nGET: / HTTP/1.1\r\n\r\n",     // a trailer that looks like a request line
        ];
        for body in bodies {
            // chunked_len checks whole, byte by byte, every single split point, and the length.
            chunked_len(body);
            // Also every two-point split, with the next request after the body.
            let mut stream = body.to_vec();
            stream.extend_from_slice(NEXT);
            for a in 0..=stream.len() {
                for b in a..=stream.len() {
                    let mut f = BodyFramer::new(Body::Chunked);
                    let mut total = 0;
                    for part in [&stream[..a], &stream[a..b], &stream[b..]] {
                        total += f.feed(part).unwrap();
                        if f.done() {
                            break;
                        }
                    }
                    assert!(f.done());
                    assert_eq!(total, body.len(), "splits at {a}, {b}");
                }
            }
        }
    }
}
