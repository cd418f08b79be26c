#!/usr/bin/env bash
# Ingest benchmark: a release `kairos serve` on a local directory (or S3 with
# DATA=s3://...), `kairos-dev loadgen` on the same machine, then a clean stop and
# a count of what the published tables really hold.
#
#   benches/ingest.sh [SECONDS] [CONNECTIONS] [RATE]   (RATE 0 = as fast as acks allow)
#
# Prints the loadgen summary, the staging backlog when the load ended (how far
# publishing lagged), the final publish time and the published row count.
set -euo pipefail
secs=${1:-300}; conns=${2:-16}; rate=${3:-0}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kairos-target}"
cargo build --release -q -p kairos -p kairos-dev
bin="$CARGO_TARGET_DIR/release/kairos"
dev="$CARGO_TARGET_DIR/release/kairos-dev"
work=$(mktemp -d); data="${DATA:-$work/data}"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$bin" serve --data "$data" --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
sleep 1
"$dev" loadgen --url "http://127.0.0.1:$port" --connections "$conns" --duration "$secs" --rate "$rate" --run-id "b$$"
[ -d "$data/_staging" ] && echo "staging backlog at end of load: $(du -sh "$data/_staging" | cut -f1)"
t0=$(date +%s.%N); kill -TERM $pid; wait $pid
echo "final publish and stop: $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s"
[ -d "$data/events" ] && "$dev" loadgen --verify "$data"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem/{print $2}') GiB"
