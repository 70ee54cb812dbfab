#!/usr/bin/env bash
# Throughput into S3: a backfill of SANDBOXES x BACKLOG past events from the bundled simulator
# into a local moto_server (S3-compatible), through the release binary, three ways in one run:
#   s3          the S3 sink, objects of up to 10,000 events as received (COMPRESSION, gzip)
#   s3+ocsf     the same with the sink's ocsf transform (what the lake's events cost to map)
#   lake        the Security Lake sink (ocsf, then Parquet zstd, one class per source)
# Each prints wall time, events/s, CPU seconds and peak memory; the S3 objects are read back
# (events and checksums), the lake's verified by SHA-256 and counted by its manifests. Not a
# timed test: numbers vary with the machine (and moto, a Python server, is far slower than S3).
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
curl -s -X PUT "http://127.0.0.1:$mp/lake" >/dev/null
n=$((SANDBOXES * BACKLOG))
source_toml() {
  cat <<TOML
[source]
base_url = "http://127.0.0.1:$sp/api/v1"
api_key = "msk_sim_demo_key"
sandboxes = [${list%,}]
requests_per_minute = 1000000
[checkpoint]
path = "state-$1/cp.db"
TOML
}
backfill() { # name, pipeline file
  /usr/bin/time -f "%e %M %U %S" -o "time-$1.txt" "$bin" backfill "$2" --since 7d 2>"backfill-$1.log" \
    || { cat "backfill-$1.log"; exit 1; }
  read -r wall rss user sys < "time-$1.txt"
  printf '%-8s backfill: %d events in %.2fs = %.0f events/s, %.2f CPU s (auditship), peak RSS %d MiB\n' \
    "$1" "$n" "$wall" "$(echo "$n / $wall" | bc -l)" "$(echo "$user + $sys" | bc -l)" $((rss / 1024))
}

{ source_toml s3; cat <<TOML
[sinks.cold]
type = "s3"
bucket = "bench"
endpoint = "http://127.0.0.1:$mp"
force_path_style = true
compression = "$COMPRESSION"
TOML
} > s3.toml
backfill "s3 ($COMPRESSION)" s3.toml
printf 'read back: '; "$count" "http://127.0.0.1:$mp" bench

{ source_toml ocsf; cat <<TOML
[sinks.cold]
type = "s3"
bucket = "bench"
endpoint = "http://127.0.0.1:$mp"
force_path_style = true
compression = "$COMPRESSION"
key_prefix = "ocsf/{date}/{resource_id}/"
transforms = ["ocsf"]
TOML
} > ocsf.toml
backfill "s3+ocsf" ocsf.toml

{ source_toml lake; cat <<TOML
[sinks.lake]
type = "security_lake"
source_location = "s3://lake/ext/miosa-http/"
class_uid = 4002
region = "us-east-1"
account_id = "123456789012"
endpoint = "http://127.0.0.1:$mp"
force_path_style = true
transforms = ["ocsf"]
TOML
} > lake.toml
backfill lake lake.toml
printf 'read back: '
"$bin" verify s3://lake/ext/miosa-http/ --s3-endpoint "http://127.0.0.1:$mp" --s3-path-style --format json > verify.json \
  || { cat verify.json; exit 1; }
python3 - verify.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['events']} events in {r['units']} Parquet objects, {r['bytes']} bytes, every SHA-256 matching")
PY
