//! Any bytes as the stream after a request head, cut into fuzzer-chosen pieces, through the body
//! framer for each kind of body: never a panic, and the framer's contracts hold — it consumes at most
//! the piece offered, all of it until the body ends, nothing after, errors are sticky, and the total
//! consumed (or the error) is the same whatever the cuts.
//!
//! Input: if it parses as a request head, the rest is that head's body (so the `*.http` captures are
//! seeds) and the head's bytes choose the cuts; otherwise `[ncuts, cuts.., len_hi, len_lo, stream..]`
//! (the Content-Length is `u64::MAX - len` when `len_hi` has its top bit set) for all three kinds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::http_body::{BodyError, BodyFramer};
use portcullis::proxy::http_head::{Body, parse_head};

type Outcome = Result<(usize, bool), BodyError>;

/// Frames `stream` cut into pieces of the lengths `lens` yields (0 is an empty piece, the last piece
/// is cut short); `lens` must yield a non-zero length now and then.
fn frame(body: Body, stream: &[u8], lens: impl IntoIterator<Item = usize>) -> Outcome {
    let mut f = BodyFramer::new(body);
    let mut lens = lens.into_iter();
    let (mut pos, mut total) = (0, 0);
    loop {
        let len = lens.next().unwrap_or(usize::MAX).min(stream.len() - pos);
        let piece = &stream[pos..pos + len];
        let n = match f.feed(piece) {
            Ok(n) => n,
            Err(e) => {
                assert_eq!(f.feed(b"0\r\n\r\n"), Err(e.clone()), "error not sticky");
                assert!(!f.done());
                return Err(e);
            }
        };
        assert!(n <= piece.len(), "consumed {n} of {}", piece.len());
        pos += len;
        total += n;
        if f.done() {
            assert_eq!(f.feed(&stream[total..]), Ok(0), "consumed after the end");
            return Ok((total, true));
        }
        assert_eq!(n, piece.len(), "consumed part of a piece without ending the body");
        if pos == stream.len() {
            return Ok((total, false));
        }
    }
}

fn check(body: Body, stream: &[u8], cuts: &[u8]) {
    let whole = frame(body, stream, [stream.len()]);
    assert_eq!(
        frame(body, stream, std::iter::repeat(1)),
        whole,
        "{body:?}: byte by byte"
    );
    let mid = stream.len() / 2;
    assert_eq!(frame(body, stream, [mid]), whole, "{body:?}: halves");
    if cuts.iter().any(|&c| c != 0) {
        let lens = cuts.iter().map(|&c| usize::from(c)).cycle();
        assert_eq!(frame(body, stream, lens), whole, "{body:?}: cuts {cuts:?}");
        // The cuts as split points instead: a few big pieces.
        let points = cuts.iter().map(|&c| usize::from(c) * stream.len() / 256);
        assert_eq!(frame(body, stream, points), whole, "{body:?}: points {cuts:?}");
    }

    match body {
        Body::None => assert_eq!(whole, Ok((0, true))),
        Body::ContentLength(n) => {
            let len = usize::try_from(n).map_or(stream.len(), |n| n.min(stream.len()));
            assert_eq!(whole, Ok((len, len as u64 == n)));
        }
        Body::Chunked => {
            if let Ok((total, true)) = whole {
                // The shortest body is `0\r\n\r\n`; every one ends with a CRLF line and the final CRLF.
                assert!(total >= 5 && stream[..total].ends_with(b"\r\n\r\n"));
                // The body alone is the same body, and one byte less is not one.
                assert_eq!(frame(body, &stream[..total], [total]), Ok((total, true)));
                assert_eq!(frame(body, &stream[..total - 1], [total]), Ok((total - 1, false)));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = parse_head(data) {
        let cuts = &data[..head.head_len.min(8)];
        check(head.body, &data[head.head_len..], cuts);
        return;
    }
    let Some((&ncuts, rest)) = data.split_first() else {
        return;
    };
    let ncuts = usize::from(ncuts % 16).min(rest.len());
    let (cuts, rest) = rest.split_at(ncuts);
    let [hi, lo, stream @ ..] = rest else {
        return;
    };
    let len = u64::from(u16::from_be_bytes([hi & 0x7f, *lo]));
    let len = if hi & 0x80 != 0 { u64::MAX - len } else { len };
    for body in [Body::None, Body::ContentLength(len), Body::Chunked] {
        check(body, stream, cuts);
    }
});
