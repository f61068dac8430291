#!/usr/bin/env bash
# Peak memory of a burst: the server's RSS growth (VmHWM at the end minus
# VmRSS at the start) while 20,000 messages of 256 bytes go, open loop, to
# 100 subscribers that read like applications (issue 14's memory target).
#
#   bash benches/burst_memory.sh [BIN_DIR] [lean|ordinary]   # default target/release ordinary
#
# Server on core 0, generator on core 1, rate limits lifted as in run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh
bin=${1:-target/release}
subscriber=${2:-ordinary}
out=$(mktemp)
ARQON_SERVER__PORT=0 ARQON_MONITORING__PORT=0 ARQON_LIMITS__RATE_PER_S=0 ARQON_LIMITS__BYTES_PER_S=0 \
    ARQON_LOG=warn taskset -c 0 "$bin/arqonbus" >"$out" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$out"' EXIT
url=$(bus_url "$out") || { echo "server did not start" >&2; exit 1; }
base=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
taskset -c 1 "$bin/arqon-bench" fanout --url "$url" --subscribers 100 --messages 20000 --payload 256 \
    --subscriber "$subscriber" --window 0 --timeout 120 | grep -E '^(delivered|lost|subscribers closed|deliveries/s)'
peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
echo "server RSS at start ${base} KiB, peak ${peak} KiB, growth $(( (peak - base) / 1024 )) MiB"
