#!/usr/bin/env bash
# Takes a fresh machine of the build kind (Debian 12, kernel 6.18, root) to everything portcullis needs to
# build and test: Debian's Rust 1.96 with prebuilt bpf core (the eBPF toolchain), bpf-linker against
# Debian's libLLVM 22, and the packages the tests drive. Idempotent; silent when everything is present.
set -euo pipefail

RUST_WEB_VERSION="1.96.0+dfsg1-1~deb12u2"
BPF_LINKER_VERSION="0.13.0"
BPF_LINKER_ROOT="/opt/bpf-linker"
# Packages the privileged and end-to-end tests use as real peers and clients.
TEST_PACKAGES=(nftables curl dnsutils dnsmasq-base nginx socat iperf3 iproute2 iputils-ping ethtool openssl bpftool)

log() { printf 'bootstrap: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get update -qq >/dev/null
        apt_updated=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

installed_version() { dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null | awk '/install ok installed/ {print $4}'; }

# 1. Debian's eBPF-capable Rust toolchain; the four packages must share one version (E0514 otherwise).
need=()
for p in rustc-web cargo-web libstd-rust-web-dev-bpf; do
    [ "$(installed_version "$p")" = "$RUST_WEB_VERSION" ] || need+=("$p=$RUST_WEB_VERSION")
done
[ -n "$(installed_version llvm-22-dev)" ] || need+=(llvm-22-dev)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

# 2. Test peers and tools.
missing=()
for p in "${TEST_PACKAGES[@]}"; do
    [ -n "$(installed_version "$p")" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
# nginx from the package starts a default server on :80 of the host; the tests start their own instances.
if [ ${#missing[@]} -gt 0 ] && command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --now nginx >/dev/null 2>&1 || true
fi

# 3. rustup toolchain name the eBPF build (aya-build) uses.
if ! rustup toolchain list | grep -q '^debian-web'; then
    log "rustup toolchain link debian-web /usr"
    rustup toolchain link debian-web /usr
fi

# 4. bpf-linker linked against Debian's libLLVM 22 (the LLVM major of rustc-web).
if ! "$BPF_LINKER_ROOT/bin/bpf-linker" --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    log "building bpf-linker $BPF_LINKER_VERSION (about a minute)"
    as_root env LLVM_PREFIX=/usr/lib/llvm-22 rustup run debian-web cargo install "bpf-linker@$BPF_LINKER_VERSION" \
        --locked --no-default-features --features llvm-22 --root "$BPF_LINKER_ROOT" --quiet
fi

# 5. cargo-nextest runs the test suite (one process per test: namespace tests cannot leak into each other).
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install cargo-nextest --locked --quiet
fi
