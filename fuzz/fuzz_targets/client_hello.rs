//! Any bytes as the start of a connection: `inspect` never panics, a definite answer never changes
//! when more bytes arrive, and `Incomplete` always asks for more than it was given (and no more than
//! the bound).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::client_hello::{Incomplete, MAX_CLIENT_HELLO, inspect};

fuzz_target!(|data: &[u8]| {
    let whole = inspect(data);
    check_incomplete(&whole, data.len());
    // A prefix is what had been peeked; the rest arrives later. Short inputs: every prefix.
    let n = data.len();
    let cuts: Vec<usize> = if n <= 512 {
        (0..n).collect()
    } else {
        vec![n / 4, n / 2, 3 * n / 4, n - 1]
    };
    for cut in cuts {
        let prefix = &data[..cut];
        let early = inspect(prefix);
        check_incomplete(&early, prefix.len());
        if let Ok(answer) = &early {
            assert_eq!(
                whole.as_ref(),
                Ok(answer),
                "answer changed when bytes were appended to {prefix:?}"
            );
        }
    }
});

fn check_incomplete<T>(r: &Result<T, Incomplete>, len: usize) {
    if let Err(Incomplete { needed_at_least }) = r {
        assert!(
            *needed_at_least > len,
            "Incomplete asks for {needed_at_least} with {len} bytes"
        );
        assert!(
            *needed_at_least <= MAX_CLIENT_HELLO,
            "Incomplete beyond the bound: {needed_at_least}"
        );
    }
}
