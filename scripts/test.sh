#!/usr/bin/env bash
# Runs every test of portcullis: formatting and lints, the unit and integration tests (as root also the
# BPF_PROG_TEST_RUN and network-namespace tests; with CI=true those fail instead of skipping when they
# cannot run), and short fuzzing runs of the parsers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="/opt/bpf-linker/bin:$PATH"

step() { printf '\n== %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (userspace crates; the eBPF crate is linted by its own build)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo nextest (all tests)"
profile=default
[ "${CI:-}" = "true" ] && profile=ci
cargo nextest run --workspace --locked --profile "$profile"

if [ -x scripts/fuzz.sh ]; then
    step "fuzz (short runs)"
    scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
fi
step "all tests passed"
