#!/usr/bin/env bash
# Cross-node benchmark (issue 8): fan-out and latency with one node versus
# two nodes sharing a Redis, and the Redis CPU each message costs.
#
#   bash benches/cluster.sh                  # release build, 3 runs per configuration
#   bash benches/cluster.sh --runs 1 --bin-dir target/release --only latency   # labels containing "latency"
#
# Configurations, each with `fanout 1->100, 20k msgs` and `latency 1k/s ->100`:
#   1 node, memory           the single-node default (the baseline)
#   1 node, redis storage    history in Redis Streams, no cluster
#   1 node, cluster          history in Redis and cluster.enabled (the node
#                            publishes every message to Redis pub/sub too)
#   2 nodes                  publisher on node A; subscribers alternate
#                            between A and B, so 50 of 100 are cross-node
# Every node runs on core 0 (two nodes share it: the same server budget as
# one), redis-server and the generator on core 1. Redis CPU per message is
# the change of redis-server's used_cpu_user + used_cpu_sys (INFO cpu) over
# the run, divided by the messages published. Results go to
# target/bench-results/cluster-<time>/ (results.md, results.jsonl, run.log).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh

runs=3
bin_dir=""
only=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --runs) runs=$2; shift ;;
        --bin-dir) bin_dir=$2; shift ;;
        --only) only=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $bin_dir ]]; then
    cargo build --release -p arqonbus -p arqon-bench
    bin_dir=target/release
fi
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install -y redis-server)" >&2; exit 1; }
out=$PWD/target/bench-results/cluster-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
results=$out/results.jsonl
log=$out/run.log
cpu_table=$out/redis-cpu.md
: >"$results"
: >"$log"

pin0=(); pin1=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
    pin0=(taskset -c 0); pin1=(taskset -c 1)
fi

port=$(free_port)
redis_dir=$(mktemp -d)
"${pin1[@]}" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$redis_dir" \
    --logfile "$out/redis.log" &
redis_pid=$!
redis() { redis-cli -p "$port" "$@"; }
for _ in $(seq 1 100); do redis PING >/dev/null 2>&1 && break; sleep 0.1; done
redis PING >/dev/null || { echo "redis-server did not start (see $out/redis.log)" >&2; exit 1; }

node_pids=()
node_urls=()
cleanup() {
    for pid in "${node_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${node_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    node_pids=()
    node_urls=()
}
trap 'cleanup; kill "$redis_pid" 2>/dev/null || true; rm -rf "$redis_dir"' EXIT

# start_node MODE NAME: MODE is memory, redis (storage only) or cluster.
start_node() {
    local mode=$1 name=$2 stdout=$out/$2.stdout
    : >"$stdout"
    local env=(ARQON_SERVER__HOST=127.0.0.1 ARQON_SERVER__PORT=0 ARQON_MONITORING__PORT=0
        ARQON_LIMITS__RATE_PER_S=0 ARQON_LIMITS__BYTES_PER_S=0 ARQON_LOG=warn)
    if [[ $mode != memory ]]; then
        env+=(ARQON_STORAGE__BACKEND=redis "ARQON_STORAGE__REDIS__URL=redis://127.0.0.1:$port")
    fi
    if [[ $mode == cluster ]]; then
        env+=(ARQON_CLUSTER__ENABLED=true "ARQON_CLUSTER__NODE_ID=$name")
    fi
    env "${env[@]}" "${pin0[@]}" "$bin_dir/arqonbus" >"$stdout" 2>>"$out/$name.stderr" &
    node_pids+=($!)
    local url
    if url=$(bus_url "$stdout"); then
        node_urls+=("$url")
        return 0
    fi
    echo "node $name did not start" >&2
    return 1
}

redis_cpu() {
    redis INFO cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.3f", s}'
}

echo "| configuration | scenario | messages | Redis CPU s | Redis CPU per message |" >"$cpu_table"
echo "|---|---|---|---|---|" >>"$cpu_table"

# run_case LABEL MODE NODES SCENARIO-ARGS...
run_case() {
    local label=$1 mode=$2 nodes=$3
    shift 3
    [[ -n $only && $label != *$only* ]] && return 0
    for run in $(seq 1 "$runs"); do
        echo "=== $label (run $run of $runs)" | tee -a "$log"
        redis FLUSHALL >/dev/null
        start_node "$mode" node-a
        [[ $nodes -ge 2 ]] && start_node "$mode" node-b
        # Let the nodes find each other (a start-up sync; well under a second).
        sleep 1
        local subs=()
        for url in "${node_urls[@]}"; do subs+=(--sub-url "$url"); done
        local before after case_out=$out/case.out rc=0
        before=$(redis_cpu)
        timeout 150 "${pin1[@]}" "$bin_dir/arqon-bench" "$@" --url "${node_urls[0]}" "${subs[@]}" \
            --server-pid "${node_pids[0]}" --label "$label" --timeout 120 >"$case_out" 2>&1 || rc=$?
        after=$(redis_cpu)
        tee -a "$log" <"$case_out" | grep -v '^{' || true
        grep '^{' "$case_out" | tail -1 >>"$results" || true
        local published
        published=$(grep '^{' "$case_out" | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin).get("published", 0))' 2>/dev/null || echo 0)
        python3 - "$label" "$1" "$published" "$before" "$after" >>"$cpu_table" <<'EOF'
import sys
label, scenario, published, before, after = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
cpu = after - before
per = f"{cpu / published * 1e6:.1f} µs" if published else "n/a"
print(f"| {label} | {scenario} | {published} | {cpu:.2f} | {per} |")
EOF
        [[ $rc -ne 0 ]] && echo "!!! $label run $run: generator exit status $rc" | tee -a "$log"
        cleanup
    done
}

for config in "1 node, memory:memory:1" "1 node, redis storage:redis:1" "1 node, cluster:cluster:1" "2 nodes:cluster:2"; do
    IFS=: read -r name mode nodes <<<"$config"
    run_case "$name: fanout 1->100, 20k" "$mode" "$nodes" fanout --subscribers 100 --messages 20000 --payload 256
    run_case "$name: latency 1k/s ->100, 5 s" "$mode" "$nodes" latency --rate 1000 --duration 5 --subscribers 100 --payload 256
done

{
    echo "# ArqonBus cluster benchmark"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), runs per configuration: $runs"
    echo "- nodes: ${pin0[*]} (all on one core), redis-server and generator: ${pin1[*]}"
    echo
    "$bin_dir/arqon-bench" summarize "$results"
    echo
    echo "## Redis CPU"
    echo
    cat "$cpu_table"
} >"$out/results.md"
cat "$out/results.md"
echo "results: $out/results.md"
