#!/usr/bin/env bash
# Short fuzzing runs of the parsers (cargo-fuzz/libFuzzer on the machine's nightly toolchain), seeded
# with the fixture files. Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --quiet
fi
seed() {
    local target=$1; shift
    mkdir -p "fuzz/corpus/$target"
    for f in "$@"; do cp -f "$f" "fuzz/corpus/$target/" 2>/dev/null || true; done
}
seed policy_load appliance/policies/*.yaml tests/fixtures/import/*.yaml
seed import tests/fixtures/import/*.json
seed client_hello appliance/src/proxy/testdata/*.bin
seed http_head appliance/src/proxy/testdata/*.http
seed http_body appliance/src/proxy/testdata/*.http
for target in policy_load import client_hello http_head http_body; do
    echo "fuzz: $target for ${seconds}s" >&2
    (cd fuzz && AYA_BUILD_SKIP=1 cargo +nightly fuzz run --release "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 >/dev/null 2>"../target/fuzz-$target.log") || {
        tail -n 40 "target/fuzz-$target.log" >&2
        echo "fuzz: $target found a failure (artifact in fuzz/artifacts/$target)" >&2
        exit 1
    }
done
