#!/usr/bin/env bash
# benches/idle-tick.sh KAIROS_BIN: the mean live tick cost while idle (no
# events), from kairos_rule_batch_seconds in /metrics after 40 s of
# `kairos serve` with rules.interval_ms = 20 on a fresh data root.
set -euo pipefail
bin=$(realpath "$1")
d=$(mktemp -d)
repo=$(cd "$(dirname "$0")/.." && pwd)
cp -r "$repo/sql" "$repo/templates" "$d"/
cat > "$d/kairos.toml" <<T
[server]
listen = "127.0.0.1:18931"
insecure_local = true
[rules]
interval_ms = 20
T
cd "$d"
"$bin" serve --config kairos.toml > serve.out 2> serve.err &
pid=$!
sleep 40
curl -s http://127.0.0.1:18931/metrics | grep -E "rule_batch_seconds_(sum|count)"
kill -TERM $pid; wait $pid || true
rm -rf "$d"
