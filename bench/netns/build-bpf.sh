#!/bin/bash
# Compiles the bench's C BPF programs (generator, sink) to $OUT (default $CARGO_TARGET_DIR/bench-bpf).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
OUT=${OUT:-${CARGO_TARGET_DIR:-$root/target}/bench-bpf}
CLANG=${CLANG:-$(command -v clang-19 || command -v clang || true)}
if [ -z "$CLANG" ]; then
	echo "build-bpf.sh: clang not found (apt-get install clang-19 libbpf-dev)" >&2
	exit 1
fi
if [ ! -e /usr/include/bpf/bpf_helpers.h ]; then
	echo "build-bpf.sh: bpf/bpf_helpers.h not found (apt-get install libbpf-dev)" >&2
	exit 1
fi
mkdir -p "$OUT"
for src in "$here"/bpf/*.bpf.c; do
	obj="$OUT/$(basename "${src%.c}").o"
	if [ ! -e "$obj" ] || [ "$src" -nt "$obj" ]; then
		"$CLANG" -O2 -g -target bpf -Wall -Werror -I/usr/include/x86_64-linux-gnu -c "$src" -o "$obj"
	fi
done
echo "$OUT"
