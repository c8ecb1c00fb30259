#!/bin/bash
# Prints the Markdown table of a bench/netns/tls.sh run: tls-table.sh target/bench-tls/latest/results.tsv
# Medians [min-max] over the rounds per variant, then ratios of medians (same run).
set -euo pipefail
py=$(command -v python3)
exec "$py" - "$1" <<'PY'
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t")]
order = ["plain", "portcullis", "haproxy", "squid"]
by = {}
for r in rows:
    by.setdefault(r["variant"], []).append(r)
def num(x):
    try: return float(x)
    except (TypeError, ValueError): return None
def med(v, k):
    xs = [num(r.get(k)) for r in by.get(v, [])]
    xs = [x for x in xs if x is not None and x > 0]
    return (statistics.median(xs), min(xs), max(xs), len(xs)) if xs else None
def fmt(m, d=1):
    if m is None: return "-"
    return f"{m[0]:.{d}f} [{m[1]:.{d}f}–{m[2]:.{d}f}]"
cols = [("conn_s", "new conn/s", 0), ("core_us_conn", "fw core µs/conn", 0), ("thr_us_conn", "fw threads µs/conn", 0),
        ("fw_busy_pct", "fw busy %", 0), ("bulk_MBs", "1 flow MB/s", 0), ("core_ns_B", "fw core ns/B", 2),
        ("thr_ns_B", "fw threads ns/B", 2), ("p50_ms", "p50 ms", 3), ("p99_ms", "p99 ms", 3)]
vs = [v for v in order if v in by] + [v for v in by if v not in order]
print("| variant | " + " | ".join(c[1] for c in cols) + " | errors | rounds |")
print("|---|" + "---|" * (len(cols) + 2))
for v in vs:
    errs = sorted({r.get("errors") or "" for r in by[v]} - {"0", ""})
    failed = sum(1 for r in by[v] if r.get("conns") == "FAILED")
    ok = len(by[v]) - failed
    print(f"| {v} | " + " | ".join(fmt(med(v, k), d) for k, _, d in cols) +
          f" | {'; '.join(errs) or 0}{f' ({failed} FAILED)' if failed else ''} | {ok} |")
print()
def m(v, k):
    x = med(v, k); return x[0] if x else None
print("Ratios of medians (same run). conn/s and MB/s: higher is better; CPU per unit: the inverse, i.e. work per firewall CPU-second relative to the reference.")
print()
print("| ratio | conn/s | per fw CPU-s (threads), conns | 1 flow MB/s | per fw CPU-s (threads), bytes | added p50 ms | added p99 ms |")
print("|---|---|---|---|---|---|---|")
def ratio(a, b, k, inv=False):
    x, y = m(a, k), m(b, k)
    if not x or not y: return "-"
    return f"{(y / x) if inv else (x / y):.2f}"
pairs = [(a, "plain") for a in vs if a != "plain"] + [("portcullis", b) for b in ("haproxy", "squid") if b in by]
for a, b in pairs:
    if a not in by or b not in by: continue
    def added(k):
        x, y = m(a, k), m(b, k)
        return f"{x - y:+.3f}" if x is not None and y is not None else "-"
    print(f"| {a} / {b} | {ratio(a, b, 'conn_s')} | {ratio(a, b, 'thr_us_conn', True)} | {ratio(a, b, 'bulk_MBs')} | "
          f"{ratio(a, b, 'thr_ns_B', True)} | {added('p50_ms')} | {added('p99_ms')} |")
PY
