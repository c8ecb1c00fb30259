//! Any bytes as the start of an HTTP request: never a panic, and the parser's contracts hold —
//! a parsed head ignores what follows it and its prefixes are Incomplete, Incomplete asks for more
//! than it got, and the X-Forwarded-For rewrite re-parses to the same request with the client address last.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::http_head::{HeadError, MAX_HEAD, parse_head, with_forwarded_for};

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(head) => {
            assert!(head.head_len <= data.len());
            let mut longer = data[..head.head_len].to_vec();
            longer.extend_from_slice(b"GARBAGE\r\n\0\x16");
            assert_eq!(
                parse_head(&longer).as_ref(),
                Ok(&head),
                "bytes after the head changed the parse"
            );
            assert_eq!(parse_head(&data[..head.head_len]).as_ref(), Ok(&head));

            // Every proper prefix of a valid head could still become it.
            for n in [head.head_len - 1, head.head_len / 2, data.len() % head.head_len] {
                match parse_head(&data[..n]) {
                    Err(HeadError::Incomplete { needed_at_least }) => assert!(needed_at_least > n),
                    other => panic!("prefix {n} of a valid head: {other:?}"),
                }
            }

            let client = Ipv4Addr::new(198, 18, 1, 10);
            let rewritten = with_forwarded_for(data, &head, client);
            assert_eq!(
                &rewritten[rewritten.len() - (data.len() - head.head_len)..],
                &data[head.head_len..]
            );
            if head.head_len + 40 > MAX_HEAD {
                return; // the rewrite may outgrow our own bound; the origin has its own
            }
            let again = parse_head(&rewritten).unwrap_or_else(|e| panic!("rewritten head rejected: {e:?}"));
            assert_eq!(again.host, head.host);
            assert_eq!(again.method, head.method);
            assert_eq!(again.target, head.target);
            assert_eq!(again.body, head.body);
            let xff = again.xff.expect("rewritten head has X-Forwarded-For");
            assert!(xff.ends_with("198.18.1.10"), "XFF {xff:?}");
        }
        Err(HeadError::Incomplete { needed_at_least }) => assert!(needed_at_least > data.len()),
        Err(_) => {}
    }
});
