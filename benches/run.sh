#!/usr/bin/env bash
# ArqonBus load benchmark: builds the server and the load generator, runs
# every scenario of docs/performance.md (three times by default, a fresh
# server for every run) and writes a results table with the median and range.
#
#   bash benches/run.sh                 # the full suite, release build (~7 min once built)
#   bash benches/run.sh --smoke         # tiny scenarios once, debug build (CI; < 60 s once built)
#   bash benches/run.sh --runs 1 --only fanout   # a subset (labels matching a pattern)
#   bash benches/run.sh --out DIR       # where results go [target/bench-results/<UTC time>]
#   bash benches/run.sh --bin-dir DIR   # use arqonbus and arqon-bench already built in DIR; no build
#   bash benches/run.sh --nice N        # scheduling priority of server and generator [-10 where allowed, else 0]
#   bash benches/run.sh --charts        # also draw SVG charts of the results into <out>/charts
#   bash benches/run.sh --peer nats     # the lean pub/sub cases against nats-server's WebSocket
#                                       # listener instead (nats-server on PATH; Debian: apt-get
#                                       # install nats-server), for a comparison measured the same
#                                       # day; with --smoke, three tiny ones (CI)
#
# Progress goes to stderr as it runs: "[k/n] label (client) …" when a run
# starts, and its time, the suite's elapsed time and its headline figure when
# it ends.
#
# The server runs pinned to core 0 (taskset -c 0) and the generator to core 1,
# on 127.0.0.1 only. Benchmark configuration: the per-client rate limits are
# lifted (ARQON_LIMITS__RATE_PER_S=0, ARQON_LIMITS__BYTES_PER_S=0); every
# other limit keeps its default (history 1,000 per channel, a 64 MiB backlog
# per client with a 10 s write timeout and a 1 GiB budget for all backlogs,
# slow-consumer close,
# frame size, heartbeat). Each generator run is bounded by --timeout, and the
# script by `timeout` around each run.
#
# Subscribers: the publish/subscribe cases run with the generator's lean
# subscriber, then again with ordinary ones (--subscriber ordinary: reads like
# an application, a serde_json::Value per message), and `readrate` measures
# one subscriber of each kind reading on its own (docs/performance.md,
# "Ordinary clients").
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh

mode=full
runs=3
only=""
out=""
bin_dir=""
nice_level=""
charts=0
peer=bus
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) mode=smoke ;;
        --runs) runs="$2"; shift ;;
        --only) only="$2"; shift ;;
        --out) out="$2"; shift ;;
        --bin-dir) bin_dir="$2"; shift ;;
        --nice) nice_level="$2"; shift ;;
        --charts) charts=1 ;;
        --peer) peer="$2"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

case $peer in
    bus) ;;
    nats)
        if ! command -v nats-server >/dev/null; then
            echo "run.sh --peer nats: nats-server is not on PATH (Debian: apt-get install nats-server)" >&2
            exit 2
        fi
        ;;
    *) echo "run.sh: --peer $peer: expected bus or nats" >&2; exit 2 ;;
esac

if [[ $mode == smoke ]]; then
    runs=1
    bin=${CARGO_TARGET_DIR:-target}/debug
    [[ -z $bin_dir ]] && cargo build -p arqon-bench -p arqonbus
    out=${out:-target/bench-results/smoke}
else
    bin=${CARGO_TARGET_DIR:-target}/release
    [[ -z $bin_dir ]] && cargo build --release -p arqonbus -p arqon-bench
    out=${out:-target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
fi
bin=${bin_dir:-$bin}
server_bin=$bin/arqonbus
gen_bin=$bin/arqon-bench
mkdir -p "$out"
results=$out/results.jsonl
log=$out/run.log
: >"$results"
: >"$log"

# Pin the server and the generator to different cores when there are two,
# and run both above normal priority where that is allowed, so that other
# work on a shared machine (a compiler, say) disturbs the measurement less.
server_pin=()
gen_pin=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
    server_pin=(taskset -c 0)
    gen_pin=(taskset -c 1)
else
    echo "note: taskset or a second core is missing; server and generator are not pinned" | tee -a "$log"
fi
if [[ -z $nice_level ]]; then
    nice_level=0
    nice -n -10 true 2>/dev/null && [[ $(nice -n -10 nice) == -10 ]] && nice_level=-10
fi
server_pin=(nice -n "$nice_level" "${server_pin[@]}")
gen_pin=(nice -n "$nice_level" "${gen_pin[@]}")

# Every connection costs a file descriptor in the server and one in the
# generator: raise the soft limit as far as the hard limit allows. 100,000
# connections need a hard limit above 100,000 (as root: `ulimit -Hn 200000`,
# or LimitNOFILE= in a systemd unit); a lower one caps the 100k run.
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
[[ $nofile == unlimited ]] && nofile=1048576
max_conns=$((nofile - 100))

server_pid=""
server_url=""

# The server API's key for the `api` cases (a file: keys are TOML only).
api_key=bench-api-key-0123456789abcdef
bench_config=$out/bench.toml
printf '[[api.keys]]\nname = "bench"\nkey = "%s"\nrole = "user"\n' "$api_key" >"$bench_config"

# await_start WHAT CHECK...: runs CHECK every 50 ms, for at most 10 s, while
# the server process lives.
await_start() {
    local what=$1
    shift
    for _ in $(seq 1 200); do
        "$@" && return 0
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "$what exited at start-up:" >&2
            tail -5 "$out/server.stderr" >&2
            return 1
        fi
        sleep 0.05
    done
    echo "$what did not start within 10 s" >&2
    return 1
}

# The bus prints its address once it listens.
bus_listening() {
    server_url=$(sed -n 's|^ArqonBus listening on \(ws://[^ ]*\)$|\1|p' "$out/server.stdout")
    [[ -n $server_url ]]
}

nats_port=""
nats_listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null
}

# nats-server with its WebSocket listener on a free loopback port, pinned
# and prioritised like the bus (GOMAXPROCS follows the pinning: one core).
start_nats() {
    local conf=$out/nats.conf
    nats_port=$(free_port)
    nats_config "$conf" "$nats_port"
    "${server_pin[@]}" nats-server -c "$conf" >>"$out/server.stderr" 2>&1 &
    server_pid=$!
    server_url=ws://127.0.0.1:$nats_port/
    await_start nats-server nats_listening
}

start_server() {
    [[ $peer == nats ]] && { start_nats; return; }
    : >"$out/server.stdout"
    ARQON_SERVER__HOST=127.0.0.1 ARQON_SERVER__PORT=0 ARQON_MONITORING__PORT=0 \
        ARQON_LIMITS__RATE_PER_S=0 ARQON_LIMITS__BYTES_PER_S=0 ARQON_LOG=warn \
        "${server_pin[@]}" "$server_bin" --config "$bench_config" >"$out/server.stdout" 2>>"$out/server.stderr" &
    server_pid=$!
    await_start server bus_listening
}

stop_server() {
    [[ -z $server_pid ]] && return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}
trap stop_server EXIT

failed=0

# Progress: the cases are listed twice, first only counted (so that each run
# can say "k of n"), then run.
counting=0
total=0
done_runs=0
started=$SECONDS

# client_of GENERATOR-ARGS...: the subscriber kind of a publish/subscribe
# case (the generator's default is lean), nothing for the others.
client_of() {
    case "$1" in
        fanout|fanin|latency|readrate|api) ;;
        *) return 0 ;;
    esac
    local kind=lean
    while [[ $# -gt 0 ]]; do
        [[ $1 == --subscriber ]] && kind=$2
        shift
    done
    echo " ($kind)"
}

# headline JSON-LINE: the figure a run is judged by first, for the progress
# line (the results table has them all).
headline() {
    local line=$1 value
    value=$(grep -o '"deliveries_per_s":[0-9.e+-]*' <<<"$line" | head -1 | cut -d: -f2 || true)
    if [[ $line == *'"scenario":"latency"'* || $line == *'"scenario":"commands"'* ]]; then
        value=$(grep -o '"p99_us":[0-9.e+-]*' <<<"$line" | head -1 | cut -d: -f2 || true)
        [[ -n $value ]] && awk -v v="$value" 'BEGIN { printf "p99 %.3f ms", v / 1000 }' && return 0
    fi
    if [[ $line == *'"scenario":"conns"'* ]]; then
        value=$(grep -o '"rss_per_conn_kib":[0-9.e+-]*' <<<"$line" | cut -d: -f2 || true)
        [[ -n $value ]] && awk -v v="$value" 'BEGIN { printf "%.2f KiB per connection", v }' && return 0
    fi
    if [[ $line == *'"scenario":"readrate"'* ]]; then
        value=$(grep -o '"socket_per_s":[0-9.e+-]*' <<<"$line" | cut -d: -f2 || true)
        [[ -n $value ]] && awk -v v="$value" 'BEGIN { if (v >= 1e6) printf "%.2f M/s", v / 1e6; else printf "%.0f k/s", v / 1e3; printf " read from a socket" }' && return 0
    fi
    if [[ -n $value ]]; then
        awk -v v="$value" 'BEGIN { if (v >= 1e6) printf "%.2f M deliveries/s", v / 1e6; else printf "%.0f k deliveries/s", v / 1e3 }'
        return 0
    fi
    grep -o '"failure":"[^"]*"' <<<"$line" | cut -d'"' -f4 || echo "no figure"
}

# run_case LABEL TARGET TIMEOUT_S GENERATOR-ARGS...
run_case() {
    local label=$1 target=$2 limit=$3
    shift 3
    if [[ -n $only && $label != *$only* ]]; then
        return 0
    fi
    if [[ $counting -eq 1 ]]; then
        total=$((total + runs))
        return 0
    fi
    local client case_start
    client=$(client_of "$@")
    for run in $(seq 1 "$runs"); do
        done_runs=$((done_runs + 1))
        case_start=$SECONDS
        local step="[$done_runs/$total] $label$client"
        [[ $runs -gt 1 ]] && step="$step, run $run of $runs"
        echo "$step … elapsed $((SECONDS - started)) s" >&2
        echo "=== $label (run $run of $runs)" | tee -a "$log"
        if ! start_server; then
            echo "{\"scenario\":\"$1\",\"label\":\"$label\",\"target\":\"$target\",\"failure\":\"server did not start\"}" >>"$results"
            failed=1
            stop_server
            continue
        fi
        local case_out=$out/case.out rc=0
        timeout $((limit + 30)) "${gen_pin[@]}" "$gen_bin" "$@" --url "$server_url" --server-pid "$server_pid" \
            --label "$label" --target "$target" --timeout "$limit" >"$case_out" 2>&1 || rc=$?
        tee -a "$log" <"$case_out" | grep -v '^{' || true
        if grep -q '^{' "$case_out"; then
            grep '^{' "$case_out" | tail -1 >>"$results"
        else
            echo "{\"scenario\":\"$1\",\"label\":\"$label\",\"target\":\"$target\",\"failure\":\"generator exited with status $rc and no result\"}" >>"$results"
        fi
        if [[ $rc -ne 0 ]]; then
            echo "!!! $label run $run: generator exit status $rc" | tee -a "$log"
            failed=1
        fi
        stop_server
        echo "$step: $((SECONDS - case_start)) s, elapsed $((SECONDS - started)) s, last: $(headline "$(tail -1 "$results")")" >&2
    done
}

cases() {
    if [[ $peer == nats && $mode == smoke ]]; then
        run_case "smoke nats-server: fanout 1->10" "no loss" 20 fanout --subscribers 10 --messages 500 --drain 2 --peer nats
        run_case "smoke nats-server: fanin 5->1" "no loss" 20 fanin --publishers 5 --messages 200 --drain 2 --peer nats
        run_case "smoke nats-server: latency 200/s ->10" "no loss" 20 \
            latency --rate 200 --duration 1 --subscribers 10 --drain 2 --peer nats
    elif [[ $peer == nats ]]; then
        # The lean cases of the full set whose scenario nats-server has, with
        # the same arguments.
        run_case "nats-server: fanout 1->100, 20k msgs" "reported" 120 \
            fanout --subscribers 100 --messages 20000 --payload 256 --peer nats
        run_case "nats-server: fanout 1->1000, 20k msgs" "reported" 240 \
            fanout --subscribers 1000 --messages 20000 --payload 256 --peer nats
        run_case "nats-server: fanin 50->1, 2k each" "reported" 120 \
            fanin --publishers 50 --messages 2000 --payload 256 --peer nats
        run_case "nats-server: fanin 50->1, 20k each" "reported" 120 \
            fanin --publishers 50 --messages 20000 --payload 256 --peer nats
        run_case "nats-server: latency 1k/s ->100, 5 s" "reported" 60 \
            latency --rate 1000 --duration 5 --subscribers 100 --payload 256 --peer nats
        run_case "nats-server: latency 10k/s ->100, 5 s" "reported" 60 \
            latency --rate 10000 --duration 5 --subscribers 100 --payload 256 --peer nats
    elif [[ $mode == smoke ]]; then
        run_case "smoke fanout 1->10" "no loss" 20 fanout --subscribers 10 --messages 500 --drain 2
        run_case "smoke fanin 5->1" "no loss" 20 fanin --publishers 5 --messages 200 --drain 2
        run_case "smoke latency 200/s ->10" "no loss" 20 latency --rate 200 --duration 1 --subscribers 10 --drain 2
        run_case "smoke conns 200" "all open" 20 conns --connections 200 --settle 0.2
        run_case "smoke fanout 1->10, 1 KiB text, compressed" "no loss" 20 fanout --subscribers 10 --messages 500 \
            --drain 2 --payload 1024 --text --compress
        run_case "smoke commands ping" "all answered" 20 commands --command ping --rate 200 --duration 1 --drain 2
        run_case "smoke commands join" "all answered" 20 commands --command join --rate 200 --duration 1 --drain 2
        run_case "smoke fanout 1->10, ordinary" "no loss" 20 fanout --subscribers 10 --messages 500 --drain 2 \
            --subscriber ordinary
        run_case "smoke fanin 5->1, ordinary" "no loss" 20 fanin --publishers 5 --messages 200 --drain 2 \
            --subscriber ordinary
        run_case "smoke latency 200/s ->10, ordinary" "no loss" 20 latency --rate 200 --duration 1 --subscribers 10 \
            --drain 2 --subscriber ordinary
        run_case "smoke readrate ordinary" "reported" 20 readrate --subscriber ordinary --messages 5000
        run_case "smoke readrate lean" "reported" 20 readrate --subscriber lean --messages 5000
        run_case "smoke api 4->10" "no loss" 20 api --publishers 4 --subscribers 10 --messages 200 --drain 2 \
            --api-key "$api_key"
    else
        run_case "fanout 1->100, 20k msgs" ">= 6 M deliveries/s (issue 14; NATS: --peer nats)" 120 \
            fanout --subscribers 100 --messages 20000 --payload 256
        run_case "fanout 1->1000, 20k msgs" "reported (NATS: n/a)" 240 \
            fanout --subscribers 1000 --messages 20000 --payload 256
        # 60,000 messages: enough to fill the stalled client's socket buffers, so
        # that the bus holds a backlog for it (closed by the write timeout, 10 s
        # after its socket stops, which is after this run); the same run without
        # the stalled client is the baseline it is held to.
        run_case "fanout 1->100, 60k msgs" "baseline of the stalled run" 120 \
            fanout --subscribers 100 --messages 60000 --payload 256
        run_case "fanout 1->100 + 1 stalled, 60k msgs" "within 10% of 1->100" 120 \
            fanout --subscribers 100 --stalled 1 --messages 60000 --payload 256
        run_case "fanin 50->1, 2k each" ">= 1.5 M deliveries/s (NATS: --peer nats)" 120 \
            fanin --publishers 50 --messages 2000 --payload 256
        # The same over a million messages (about a second): a run of 0.1 s
        # moves by a third from run to run on a shared machine.
        run_case "fanin 50->1, 20k each" ">= 1.5 M deliveries/s" 120 \
            fanin --publishers 50 --messages 20000 --payload 256
        run_case "latency 1k/s ->100, 5 s" "p99 <= 1 ms (NATS: --peer nats)" 60 \
            latency --rate 1000 --duration 5 --subscribers 100 --payload 256
        run_case "latency 10k/s ->100, 5 s" "reported" 60 \
            latency --rate 10000 --duration 5 --subscribers 100 --payload 256
        run_case "api 16->100, 2k each" ">= 50,000 publishes/s" 120 \
            api --publishers 16 --subscribers 100 --messages 2000 --payload 256 --api-key "$api_key"
        run_case "api 16x312.5/s ->100, 5 s" "p99 <= 2 ms at 5,000/s" 60 \
            api --publishers 16 --subscribers 100 --rate 312.5 --duration 5 --payload 256 --api-key "$api_key"
        run_case "conns 5000 idle" "<= 8 KiB each (NATS 25 KiB, issue 7)" 120 conns --connections 5000
        run_case "conns 5000 idle, compression negotiated" "<= 8 KiB each" 120 conns --connections 5000 --compress
        # permessage-deflate: the same 1 KiB payloads of varied words (they
        # compress about as real JSON does), plain and compressed; the
        # subscribers inflate every compressed frame, as a browser does.
        run_case "fanout 1->100, 1 KiB text, 20k msgs" "reported (wire bytes)" 120 \
            fanout --subscribers 100 --messages 20000 --payload 1024 --text
        run_case "fanout 1->100, 1 KiB text, 20k msgs, compressed" "fewer wire bytes; deliveries/s reported" 120 \
            fanout --subscribers 100 --messages 20000 --payload 1024 --text --compress
        if [[ $max_conns -ge 100000 ]]; then
            run_case "conns 100000 idle" "open and idle in < 1 GiB" 300 conns --connections 100000
        else
            if [[ $counting -eq 0 ]]; then
                echo "note: RLIMIT_NOFILE is $nofile here (hard limit $(ulimit -Hn)); the 100,000-connection run is capped at $max_conns" | tee -a "$log"
            fi
            run_case "conns 100000 idle (capped at $max_conns: nofile $nofile)" "open and idle in < 1 GiB" 300 \
                conns --connections "$max_conns"
        fi
        run_case "commands ping 1k/s, 5 s" "p99 <= 0.5 ms" 60 commands --command ping --rate 1000 --duration 5
        run_case "commands join+leave 1k/s, 5 s" "p99 <= 0.5 ms" 60 commands --command join --rate 1000 --duration 5
        # Ordinary subscribers (a serde_json::Value per message). Windowed runs
        # measure the rate the whole path sustains with them; open-loop runs
        # (--window 0) measure what the bus does when they fall behind: every
        # message must still arrive, with no slow-consumer close.
        run_case "fanout 1->100, 20k msgs, ordinary" "reported" 120 \
            fanout --subscribers 100 --messages 20000 --payload 256 --subscriber ordinary
        run_case "fanout 1->100, 20k msgs, ordinary, open loop" "no loss, no close" 120 \
            fanout --subscribers 100 --messages 20000 --payload 256 --subscriber ordinary --window 0
        run_case "fanin 100->1, 200 each (one burst), ordinary, open loop" "no loss, no close" 120 \
            fanin --publishers 100 --messages 200 --payload 256 --subscriber ordinary --window 0
        run_case "latency 1k/s ->100, 5 s, ordinary" "reported" 60 \
            latency --rate 1000 --duration 5 --subscribers 100 --payload 256 --subscriber ordinary
        run_case "readrate ordinary, 100k msgs" "reported" 60 readrate --subscriber ordinary --messages 100000 --payload 256
        run_case "readrate lean, 100k msgs" "reported" 60 readrate --subscriber lean --messages 100000 --payload 256
    fi
}

counting=1
cases
counting=0
echo "$total runs to go ($mode)" >&2
cases

{
    echo "# ArqonBus load benchmark ($mode)"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
    echo "- server: ${server_pin[*]} $server_bin, generator: ${gen_pin[*]} $gen_bin, runs per configuration: $runs"
    if [[ $peer == nats ]]; then
        echo "- peer: $(nats-server --version) over its WebSocket listener, defaults otherwise (subject bench.c)"
    else
        echo "- configuration: ARQON_LIMITS__RATE_PER_S=0 ARQON_LIMITS__BYTES_PER_S=0 (per-client rate limits lifted); every other limit at its default"
    fi
    echo "- RLIMIT_NOFILE: $nofile"
    echo
    "$gen_bin" summarize "$results"
} >"$out/results.md"
cat "$out/results.md"
echo
echo "results: $out/results.md (raw: $results, log: $log)"
if [[ $charts -eq 1 ]]; then
    # The peers and targets come from benches/reference.json (cwd is the
    # repository root); the charts go beside the results.
    "$gen_bin" summarize "$results" --out "$out/charts" >/dev/null
    echo "charts: $out/charts (deliveries.svg, latency.svg, memory.svg, summary.md)"
fi
if [[ $failed -ne 0 ]]; then
    echo "some runs lost messages, failed or timed out: see the table and $log" >&2
    exit 1
fi
