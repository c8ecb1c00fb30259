#!/bin/bash
# L3/L4 forwarding bench: portcullis vs nftables (conntrack + masquerade) vs plain kernel forwarding,
# same netns topology, same run. Method: bench/README.md.
#
#   bench/netns/l4.sh [--rules 10,10000] [--rounds 3] [--modes plain,nft-linear,nft-concat,portcullis]
#                     [--flow-modes new,est] [--window 10] [--max-minutes 10] ...   (l4bench run --help)
#
# Needs root, clang-19 + libbpf-dev (BPF objects), nftables; PORTCULLIS=path overrides the
# portcullis binary (default target/release/portcullis; absent or without `run` → reported, skipped).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ "$(id -u)" != 0 ]; then
	echo "l4.sh: needs root (namespaces, XDP, BPF_PROG_TEST_RUN)" >&2
	exit 1
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/bench-l4}
PORTCULLIS=${PORTCULLIS:-$root/target/release/portcullis}

exec 9>/run/portcullis-bench-l4.lock
if ! flock -n 9; then
	echo "l4.sh: another l4 bench run holds /run/portcullis-bench-l4.lock" >&2
	exit 1
fi

cleanup() {
	local ns pids
	# Only processes inside the bench's own namespaces.
	for ns in pcl4-cli pcl4-fw pcl4-srv; do
		pids=$(ip netns pids "$ns" 2>/dev/null || true)
		if [ -n "$pids" ]; then
			kill $pids 2>/dev/null || true
		fi
	done
	"$here/topo.sh" down || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bpf_dir=$("$here/build-bpf.sh")
(cd "$root" && cargo build --release --quiet -p portcullis-bench --bin l4gen --bin l4sink --bin l4bench)
# Hard bound on top of l4bench's own --max-minutes budget.
timeout --signal=INT 20m "$CARGO_TARGET_DIR/release/l4bench" run \
	--bpf-dir "$bpf_dir" --topo "$here/topo.sh" --portcullis "$PORTCULLIS" \
	--work "$CARGO_TARGET_DIR/l4bench-run" "$@"
