#!/usr/bin/env bash
# Replay timing: `kairos replay` of an NDJSON file into a fresh data root with
# this repo's rules, under /usr/bin/time, and one summary line.
#
#   benches/replay.sh KAIROS_BIN NDJSON [SPAN]     (SPAN: --batch-span, default 30m)
#
# The replay runs in a new temp directory holding copies of sql/ (passed as
# --rules sql) and templates/ (the default templates folder, which delivery
# needs) and no kairos.toml, so defaults apply and nothing of the checkout is
# read or written. KEEP=1 keeps that directory (data root in
# data/, outbox in data/outbox/) and prints its path.
#
# Prints: items, rejected, wall s, items/s, max RSS, the replay's own time,
# rule failures and per-rule firings. Exits nonzero when the replay fails or
# prints no summary.
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 KAIROS_BIN NDJSON [SPAN]" >&2
  exit 2
fi
span=${3:-30m}
bin=$(realpath "$1")
input=$(realpath "$2")
repo=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$bin" ] || { echo "$0: $1 is not an executable" >&2; exit 2; }
[ -f "$input" ] || { echo "$0: $2 is not a file" >&2; exit 2; }
case "$input" in
  *.ndjson | *.jsonl | *.json) ;;
  *) echo "$0: $2 must end in .ndjson, .jsonl or .json (kairos replay reads by extension)" >&2; exit 2 ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/kairos-replay.XXXXXX")
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
cp -r "$repo/sql" "$work/sql"
cp -r "$repo/templates" "$work/templates"

status=0
(
  cd "$work"
  /usr/bin/time -f "%e %M" -o "$work/time" \
    "$bin" replay --data "$work/data" --rules sql --input "$input" --batch-span "$span" \
    >"$work/stdout" 2>"$work/stderr"
) || status=$?
if [ "$status" -ne 0 ]; then
  echo "$0: kairos replay exited $status; its output:" >&2
  tail -n 20 "$work/stdout" "$work/stderr" >&2 || true
  exit 1
fi

# replayed N items into URL in S s (R rejected, D duplicates dropped at publish); F rule failure(s)
summary=$(grep -m1 '^replayed [0-9]* items into ' "$work/stdout" || true)
if [ -z "$summary" ]; then
  echo "$0: no summary line in the replay's output:" >&2
  tail -n 20 "$work/stdout" "$work/stderr" >&2 || true
  exit 1
fi
# Rejected items are printed as FILE:LINE: FIELD: REASON (the first 20).
grep -E '^[^ ]+:[0-9]+: ' "$work/stderr" | head -n 5 >&2 || true

read -r wall rss_kb <"$work/time"
items=$(sed -E 's/^replayed ([0-9]+) items .*/\1/' <<<"$summary")
replay_s=$(sed -E 's/.* in ([0-9.]+) s \(.*/\1/' <<<"$summary")
rejected=$(sed -E 's/.*\(([0-9]+) rejected.*/\1/' <<<"$summary")
dups=$(sed -E 's/.* ([0-9]+) duplicates dropped.*/\1/' <<<"$summary")
failures=$(sed -E 's/.*; ([0-9]+) rule failure.*/\1/' <<<"$summary")
# Per-rule lines: "  RULE: N firing(s)".
firings=$(sed -nE 's/^  ([^:]+): ([0-9]+) firing.*/\1=\2/p' "$work/stdout" | paste -sd' ' -)
rate=$(awk -v n="$items" -v s="$wall" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
rss_mb=$(awk -v k="$rss_kb" 'BEGIN { printf "%.0f", k / 1024 }')

echo "items=$items rejected=$rejected duplicates=$dups wall_s=$wall items_per_s=$rate max_rss_mb=$rss_mb replay_s=$replay_s span=$span rule_failures=$failures firings: ${firings:-none}"
