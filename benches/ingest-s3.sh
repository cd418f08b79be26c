#!/usr/bin/env bash
# Ingest benchmark against S3: like benches/ingest.sh, with the data root on a
# real S3-compatible server (s3s-fs from .ci/setup-test-env) on loopback.
#
#   benches/ingest-s3.sh [SECONDS] [CONNECTIONS] [RATE]
set -euo pipefail
secs=${1:-300}; conns=${2:-16}; rate=${3:-0}
cd "$(dirname "$0")/.."
.ci/setup-test-env >/dev/null
source "${KAIROS_CACHE:-$HOME/.cache/kairos}/test-env.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kairos-target}"
cargo build --release -q -p kairos -p kairos-dev
bin="$CARGO_TARGET_DIR/release/kairos"
dev="$CARGO_TARGET_DIR/release/kairos-dev"
work=$(mktemp -d); mkdir -p "$work/s3/bench"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3port=$(free_port); port=$(free_port)
"$KAIROS_TEST_S3S_FS" --host 127.0.0.1 --port "$s3port" --access-key bench --secret-key bench-secret "$work/s3" >/dev/null 2>&1 &
s3pid=$!
export AWS_ENDPOINT="http://127.0.0.1:$s3port" AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
sleep 1
RUST_LOG=warn "$bin" serve --data s3://bench/lake --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
pid=$!
trap 'kill $pid $s3pid 2>/dev/null || true; rm -rf "$work"' EXIT
sleep 1
"$dev" loadgen --url "http://127.0.0.1:$port" --connections "$conns" --duration "$secs" --rate "$rate" --run-id "s$$"
echo "staging backlog at end of load: $(du -sh "$work/s3/bench/lake/_staging" 2>/dev/null | cut -f1)"
t0=$(date +%s.%N); kill -TERM $pid; wait $pid
echo "final publish and stop: $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s"
"$dev" loadgen --verify "$work/s3/bench/lake"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem/{print $2}') GiB"
