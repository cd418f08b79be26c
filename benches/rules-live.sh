#!/usr/bin/env bash
# Rules under live load: a release `kairos serve` (rules on, the library in
# sql/) takes `kairos-dev loadgen` traffic at RATE events/s; at the end the
# event-to-firing latency and batch-time histograms are read from /metrics
# and their p50/p99 printed (bucket upper bounds, 25% apart).
#
#   benches/rules-live.sh [SECONDS] [RATE] [INTERVAL_MS]
set -euo pipefail
secs=${1:-60}; rate=${2:-50000}; interval=${3:-500}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kairos-target}"
cargo build --release -q -p kairos -p kairos-dev
bin="$CARGO_TARGET_DIR/release/kairos"
dev="$CARGO_TARGET_DIR/release/kairos-dev"
work=$(mktemp -d); data="$work/data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KAIROS__RULES__INTERVAL_MS=$interval RUST_LOG=warn "$bin" serve --data "$data" --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
sleep 1
"$dev" loadgen --url "http://127.0.0.1:$port" --connections 16 --duration "$secs" --rate "$rate" --run-id "r$$"
curl -s "http://127.0.0.1:$port/metrics" > "$work/metrics.txt"
kill -TERM $pid; wait $pid
python3 - "$work/metrics.txt" <<'PY'
import sys, re
text = open(sys.argv[1]).read()
def quantiles(name):
    buckets = [(float('inf') if m.group(1) == '+Inf' else float(m.group(1)), int(float(m.group(2))))
               for m in re.finditer(name + r'_bucket\{le="([^"]+)"\} (\S+)', text)]
    total = buckets[-1][1] if buckets else 0
    def q(p):
        for le, n in buckets:
            if n >= p * total:
                return le
    return total, q(0.5), q(0.99)
for name, label in [("kairos_rule_latency_seconds", "event-to-firing latency (oldest event of each batch)"),
                    ("kairos_rule_batch_seconds", "batch time")]:
    n, p50, p99 = quantiles(name)
    print(f"{label}: {n} batches, p50 <= {p50} s, p99 <= {p99} s")
firings = sum(float(v) for v in re.findall(r'kairos_rule_firings_total\{[^}]*\} (\S+)', text))
failures = sum(float(v) for v in re.findall(r'kairos_rule_failures_total\{[^}]*\} (\S+)', text))
print(f"firings {int(firings)}, rule failures {int(failures)}")
PY
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem/{print $2}') GiB"
