#!/usr/bin/env bash
# A quick loopback measurement of the release binary against the bundled simulator:
#   1. backfill: SANDBOXES x BACKLOG past events through the list endpoint;
#   2. live: SANDBOXES sockets at RATE events/s each for LIVE events each.
# Prints wall time, events/s, CPU seconds and peak memory. Not a timed test: numbers vary with
# the machine; the full suite with baselines is tracked in the performance issue.
#
# TRANSFORMS picks what the file sink's events go through:
#   none (default) | ocsf | redact-ocsf (HMAC of two fields, then OCSF) |
#   secrets-ocsf (redact-ocsf plus the built-in secret patterns over every string)
set -euo pipefail
cd "$(dirname "$0")/.."
SANDBOXES=${SANDBOXES:-10} BACKLOG=${BACKLOG:-10000} RATE=${RATE:-2500} LIVE=${LIVE:-25000}
TRANSFORMS=${TRANSFORMS:-none}
redact='{ type = "redact", fields = ["metadata.authorization", "path"], mode = "hmac-sha256", hmac_key = "bench-key-0123456789abcdef" }'
case "$TRANSFORMS" in
  none) chain="" ;;
  ocsf) chain='transforms = ["ocsf"]' ;;
  redact-ocsf) chain="transforms = [$redact, \"ocsf\"]" ;;
  secrets-ocsf) chain="transforms = [${redact%\}}, secrets = true }, \"ocsf\"]" ;;
  *) echo "TRANSFORMS=$TRANSFORMS: use none, ocsf, redact-ocsf or secrets-ocsf" >&2; exit 1 ;;
esac
cargo build --release --quiet
bin=$PWD/target/release/auditship
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
ids=(); list=""
for i in $(seq 1 "$SANDBOXES"); do ids+=(--sandbox "b$i"); list+="\"b$i\","; done
pipeline() { # port
  cat <<TOML
[source]
base_url = "http://127.0.0.1:$1/api/v1"
api_key = "msk_sim_demo_key"
sandboxes = [${list%,}]
requests_per_minute = 1000000
start = "earliest"
[checkpoint]
path = "state/cp.db"
[sinks.archive]
type = "file"
path = "archive/{resource_id}/{date}.ndjson"
$chain
TOML
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cd "$work"

p=$(port)
"$bin" sim --port "$p" "${ids[@]}" --backlog "$BACKLOG" --rate 0 >/dev/null 2>&1 &
sim=$!; sleep 2
pipeline "$p" > backfill.toml
/usr/bin/time -f "%e %M %U %S" -o time.txt "$bin" backfill backfill.toml --since 7d 2>/dev/null
read -r wall rss user sys < time.txt
n=$(cat archive/*/* | wc -l)
echo "transforms: $TRANSFORMS"
printf 'backfill: %d events in %.2fs = %.0f events/s, %.2f CPU s, peak RSS %d MiB\n' \
  "$n" "$wall" "$(echo "$n / $wall" | bc -l)" "$(echo "$user + $sys" | bc -l)" $((rss / 1024))
kill $sim; rm -rf archive state

p=$(port)
"$bin" sim --port "$p" "${ids[@]}" --backlog 0 --rate "$RATE" --live-events "$LIVE" >/dev/null 2>&1 &
sim=$!
pipeline "$p" > live.toml
start=$(date +%s.%N)
"$bin" run live.toml 2>/dev/null &
run=$!
want=$((SANDBOXES * LIVE))
while [ "$(cat archive/*/* 2>/dev/null | wc -l)" -lt "$want" ]; do sleep 0.2; done
end=$(date +%s.%N)
cpu=$(awk '{print ($14+$15)/100}' /proc/$run/stat); rss=$(awk '/VmHWM/{print int($2/1024)}' /proc/$run/status)
kill -TERM $run; wait $run || true; kill $sim
printf 'live: %d events at %d/s offered in %.2fs, %.2f CPU s (%.0f events per CPU second), peak RSS %d MiB\n' \
  "$want" $((SANDBOXES * RATE)) "$(echo "$end - $start" | bc -l)" "$cpu" "$(echo "$want / $cpu" | bc -l)" "$rss"
