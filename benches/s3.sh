#!/usr/bin/env bash
# Throughput into S3: a backfill of SANDBOXES x BACKLOG past events from the bundled simulator
# into a local moto_server (S3-compatible), gzip'd objects of up to 10,000 events, through the
# release binary. Prints wall time, events/s, CPU seconds and peak memory, then reads every
# object back and checks events and checksums. Not a timed test: numbers vary with the machine
# (and moto, a Python server, is far slower than S3).
#
#   ./scripts/services install          # once: puts moto_server in the cache
#   benches/s3.sh                       # SANDBOXES=20 BACKLOG=10000 COMPRESSION=gzip by default
set -euo pipefail
cd "$(dirname "$0")/.."
SANDBOXES=${SANDBOXES:-20} BACKLOG=${BACKLOG:-10000} COMPRESSION=${COMPRESSION:-gzip}
./scripts/services install >/dev/null
eval "$(./scripts/services env)"
cargo build --release --quiet --bin auditship --example s3_count
bin=$PWD/target/release/auditship
count=$PWD/target/release/examples/s3_count
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
ids=(); list=""
for i in $(seq 1 "$SANDBOXES"); do ids+=(--sandbox "b$i"); list+="\"b$i\","; done
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cd "$work"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1

mp=$(port)
"$AUDITSHIP_MOTO" -H 127.0.0.1 -p "$mp" >/dev/null 2>&1 &
sp=$(port)
"$bin" sim --port "$sp" "${ids[@]}" --backlog "$BACKLOG" --rate 0 >/dev/null 2>&1 &
sleep 3
curl -s -X PUT "http://127.0.0.1:$mp/bench" >/dev/null
cat > s3.toml <<TOML
[source]
base_url = "http://127.0.0.1:$sp/api/v1"
api_key = "msk_sim_demo_key"
sandboxes = [${list%,}]
requests_per_minute = 1000000
[checkpoint]
path = "state/cp.db"
[sinks.cold]
type = "s3"
bucket = "bench"
endpoint = "http://127.0.0.1:$mp"
force_path_style = true
compression = "$COMPRESSION"
TOML
/usr/bin/time -f "%e %M %U %S" -o time.txt "$bin" backfill s3.toml --since 7d 2>backfill.log \
  || { cat backfill.log; exit 1; }
read -r wall rss user sys < time.txt
n=$((SANDBOXES * BACKLOG))
printf 's3 backfill (%s): %d events in %.2fs = %.0f events/s, %.2f CPU s (auditship), peak RSS %d MiB\n' \
  "$COMPRESSION" "$n" "$wall" "$(echo "$n / $wall" | bc -l)" "$(echo "$user + $sys" | bc -l)" $((rss / 1024))
printf 'read back: '; "$count" "http://127.0.0.1:$mp" bench
