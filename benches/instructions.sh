#!/usr/bin/env bash
# Server instructions per fan-in message, counted by valgrind's callgrind: a
# figure that does not move with the machine's speed, for comparing two
# builds whose difference is smaller than the run-to-run noise of
# deliveries/s or CPU time (a few percent; this machine's speed moves by a
# third within the hour).
#
#   bash benches/instructions.sh --bin-dir DIR [--messages N] [--keep FILE]
#
# DIR holds release builds of arqonbus and arqon-bench. The server runs
# under callgrind pinned to core 0, with the benchmark configuration
# (rate limits lifted); the generator, pinned to core 1, warms it up with a
# fan-in 50 -> 1 of 200 messages each, then sends the measured one: 50
# publishers of N messages each (default 1,000), 256-byte payloads. The
# counters are zeroed before and dumped after the measured run
# (callgrind_control), so start-up and the warm-up are not counted. Prints
# instructions per delivered message (user space only: the kernel's share,
# sendto and recvfrom, is not counted). --keep FILE keeps the dump for
# callgrind_annotate.
#
# Needs valgrind (Debian: apt-get install valgrind). Not part of the test
# suite; performance-notes.md says where it was used.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"

bin_dir=""
messages=1000
keep=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin-dir) bin_dir="$2"; shift ;;
        --messages) messages="$2"; shift ;;
        --keep) keep="$2"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "instructions.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[[ -n "$bin_dir" ]] || { echo "instructions.sh: --bin-dir DIR is required" >&2; exit 2; }
for tool in valgrind callgrind_control python3 taskset; do
    command -v "$tool" >/dev/null || { echo "instructions.sh: $tool not found" >&2; exit 2; }
done

work=$(mktemp -d)
server=""
cleanup() {
    [[ -n "$server" ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
ARQON_SERVER__HOST=127.0.0.1 ARQON_SERVER__PORT=$port ARQON_MONITORING__PORT=0 \
    ARQON_LIMITS__RATE_PER_S=0 ARQON_LIMITS__BYTES_PER_S=0 ARQON_LOG=warn \
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "$bin_dir/arqonbus" \
    >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 150); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.2
done

fanin() {
    taskset -c 1 "$bin_dir/arqon-bench" fanin --url "ws://127.0.0.1:$port/ws" \
        --publishers 50 --messages "$1" --payload 256 2>&1 | grep '^{'
}
fanin 200 >/dev/null
callgrind_control -z "$server" >/dev/null 2>&1
result=$(fanin "$messages")
callgrind_control -d "$server" >/dev/null 2>&1
sleep 0.5

dump=$(ls "$work"/cg.*.1 2>/dev/null | head -1)
[[ -n "$dump" ]] || { echo "instructions.sh: no callgrind dump (server log: $(tail -3 "$work/server.log"))" >&2; exit 1; }
[[ -n "$keep" ]] && cp "$dump" "$keep"
python3 - "$result" "$dump" <<'PY'
import json, re, sys
run = json.loads(sys.argv[1])
text = open(sys.argv[2]).read()
total = int(re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M).group(1))
delivered = run["delivered"]
if delivered == 0 or run.get("lost", 0):
    sys.exit(f"instructions.sh: the run lost messages: {run}")
print(f"fan-in 50 -> 1 x {run['params']['messages_per_publisher']}: "
      f"{delivered} delivered, {total / delivered:.0f} server instructions per message")
PY
