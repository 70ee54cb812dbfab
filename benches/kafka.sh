#!/usr/bin/env bash
# Throughput into Kafka: a backfill of SANDBOXES x BACKLOG past events from the bundled
# simulator into a local tansu broker (in-memory storage), through the release binary.
# Prints wall time, events/s, CPU seconds and peak memory, then reads the topic back and checks
# that every event arrived once. Not a timed test: numbers vary with the machine.
#
#   ./scripts/services install          # once: puts tansu in the cache
#   benches/kafka.sh                    # SANDBOXES=20 BACKLOG=25000 COMPRESSION=zstd by default
#   AUDITSHIP_BIN=/tmp/old/auditship benches/kafka.sh   # another build, for a before/after pair
set -euo pipefail
cd "$(dirname "$0")/.."
SANDBOXES=${SANDBOXES:-20} BACKLOG=${BACKLOG:-25000} COMPRESSION=${COMPRESSION:-zstd}
./scripts/services install >/dev/null
eval "$(./scripts/services env)"
cargo build --release --quiet --bin auditship --example kafka_count
bin=${AUDITSHIP_BIN:-$PWD/target/release/auditship}
count=$PWD/target/release/examples/kafka_count
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
ids=(); list=""
for i in $(seq 1 "$SANDBOXES"); do ids+=(--sandbox "b$i"); list+="\"b$i\","; done
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cd "$work"

kp=$(port)
"$AUDITSHIP_TANSU" broker --listener-url "tcp://127.0.0.1:$kp" --advertised-listener-url "tcp://127.0.0.1:$kp" \
  --storage-engine memory://tansu/ >/dev/null 2>&1 &
sp=$(port)
"$bin" sim --port "$sp" "${ids[@]}" --backlog "$BACKLOG" --rate 0 >/dev/null 2>&1 &
sleep 2
cat > kafka.toml <<TOML
[source]
base_url = "http://127.0.0.1:$sp/api/v1"
api_key = "msk_sim_demo_key"
sandboxes = [${list%,}]
requests_per_minute = 1000000
[checkpoint]
path = "state/cp.db"
[sinks.siem]
type = "kafka"
brokers = "127.0.0.1:$kp"
topic = "miosa.audit"
compression = "$COMPRESSION"
TOML
/usr/bin/time -f "%e %M %U %S" -o time.txt "$bin" backfill kafka.toml --since 7d 2>backfill.log \
  || { cat backfill.log; exit 1; }
read -r wall rss user sys < time.txt
n=$((SANDBOXES * BACKLOG))
printf 'kafka backfill (%s): %d events in %.2fs = %.0f events/s, %.2f CPU s, peak RSS %d MiB\n' \
  "$COMPRESSION" "$n" "$wall" "$(echo "$n / $wall" | bc -l)" "$(echo "$user + $sys" | bc -l)" $((rss / 1024))
printf 'read back: '; "$count" "127.0.0.1:$kp" miosa.audit "$n"
