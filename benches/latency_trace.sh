#!/usr/bin/env bash
# Where the time of a latency run goes, from the kernel's own record of
# each send and read (perf's syscall tracepoints): the gaps between the
# generator's publishes, and per message the wait from the publish to the
# server's read, from that read to its first send, and from the first send
# to the last of the fan-out. Not part of the test suite; the figures are in
# docs/performance-notes.md ("Where a latency run's time goes").
#
#   bash benches/latency_trace.sh --bin-dir DIR [--peer nats] [--rate N] [--subscribers N]
#
# DIR holds release builds of arqonbus and arqon-bench. As in run.sh, the
# server runs on core 0 and the generator on core 1; the generator's
# `latency` scenario runs for 5 s, and 0.3 s of its middle are traced.
# Tracing costs each syscall about a microsecond, so the traced spans are
# longer than untraced ones: compare two traced runs, not a traced run with
# run.sh's figures. Needs perf (Debian: linux-perf) and root, or
# kernel.perf_event_paranoid <= -1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh

bin_dir=""
peer=bus
rate=1000
subscribers=100
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin-dir) bin_dir="$2"; shift ;;
        --peer) peer="$2"; shift ;;
        --rate) rate="$2"; shift ;;
        --subscribers) subscribers="$2"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "latency_trace.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[[ -n $bin_dir ]] || { echo "latency_trace.sh: --bin-dir DIR is required" >&2; exit 2; }
command -v perf >/dev/null || { echo "latency_trace.sh: needs perf on PATH" >&2; exit 2; }

work=$(mktemp -d)
server_pid=""
cleanup() {
    [[ -n $server_pid ]] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

if [[ $peer == nats ]]; then
    port=$(free_port)
    nats_config "$work/nats.conf" "$port"
    taskset -c 0 nats-server -c "$work/nats.conf" >"$work/server.log" 2>&1 &
    server_pid=$!
    url=ws://127.0.0.1:$port/
    for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    peer_args=(--peer nats)
else
    printf '[[api.keys]]\nname = "bench"\nkey = "trace-%s-0123456789abcdef"\nrole = "user"\n' "$RANDOM" >"$work/bench.toml"
    ARQON_SERVER__HOST=127.0.0.1 ARQON_SERVER__PORT=0 ARQON_MONITORING__PORT=0 \
        ARQON_LIMITS__RATE_PER_S=0 ARQON_LIMITS__BYTES_PER_S=0 ARQON_LOG=warn \
        taskset -c 0 "$bin_dir/arqonbus" --config "$work/bench.toml" >"$work/server.log" 2>&1 &
    server_pid=$!
    url=$(bus_url "$work/server.log") || url=""
    peer_args=()
fi
[[ -n $url ]] || { echo "latency_trace.sh: the server did not start" >&2; exit 1; }

taskset -c 1 "$bin_dir/arqon-bench" latency --rate "$rate" --duration 5 --subscribers "$subscribers" --payload 256 \
    "${peer_args[@]}" --url "$url" --server-pid "$server_pid" >"$work/result.json" 2>"$work/generator.log" &
generator_pid=$!
sleep 2
# Rust sends with sendto and reads with recvfrom; Go (nats-server) with
# writev and read.
if [[ $peer == nats ]]; then
    server_events=(-e syscalls:sys_enter_writev -e syscalls:sys_exit_read)
else
    server_events=(-e syscalls:sys_exit_recvfrom)
fi
perf record -q -o "$work/trace.data" -C 0,1 \
    -e syscalls:sys_enter_sendto "${server_events[@]}" \
    -- sleep 0.3 >/dev/null 2>&1
wait "$generator_pid"
perf script -i "$work/trace.data" -F pid,cpu,time,event 2>/dev/null >"$work/trace.txt"

python3 - "$work/trace.txt" "$server_pid" "$generator_pid" "$subscribers" "$peer" <<'PY'
import bisect, statistics, sys

path, server_pid, generator_pid, fanout, peer = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
server_send, server_read = ("writev", "read") if peer == "nats" else ("sendto", "recvfrom")
publishes, server_reads, server_sends = [], [], []
for line in open(path):
    fields = line.split()
    if len(fields) < 4:
        continue
    pid, time, event = fields[0], float(fields[2].rstrip(":")), fields[3]
    if pid == server_pid and event.endswith(f"sys_enter_{server_send}:"):
        server_sends.append(time)
    elif pid == server_pid and event.endswith(f"sys_exit_{server_read}:"):
        server_reads.append(time)
    elif pid == generator_pid and event.endswith("sys_enter_sendto:"):
        publishes.append(time)

def show(name, values, unit="us"):
    values = sorted(values)
    if not values:
        print(f"{name:34} none")
        return
    pick = lambda q: values[min(len(values) - 1, int(len(values) * q))]
    print(f"{name:34} median {statistics.median(values):7.1f} {unit}  p10 {pick(0.1):7.1f}  p90 {pick(0.9):7.1f}  ({len(values)})")

show("gap between two publishes", [(b - a) * 1e6 for a, b in zip(publishes, publishes[1:])])
waits, firsts, spans = [], [], []
for publish in publishes[1:-1]:
    i = bisect.bisect_left(server_reads, publish)
    if i >= len(server_reads):
        break
    j = bisect.bisect_left(server_sends, server_reads[i])
    if j + fanout - 1 >= len(server_sends):
        break
    waits.append((server_reads[i] - publish) * 1e6)
    firsts.append((server_sends[j] - server_reads[i]) * 1e6)
    spans.append((server_sends[j + fanout - 1] - server_sends[j]) * 1e6)
show("publish -> server's read", waits)
show("server's read -> its first send", firsts)
show(f"first send -> send {fanout}", spans)
show("one send (span / sends)", [s / (fanout - 1) for s in spans])
PY
grep -o '"p50_us":[0-9.]*\|"p99_us":[0-9.]*' "$work/result.json" | tr '\n' ' '
echo "(latency of this traced run)"
