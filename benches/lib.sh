# Shell functions the benchmark scripts share; sourced, not run on its own.

# bus_url LOG: waits up to 10 s for the line the bus prints once it listens
# ("ArqonBus listening on ws://..."), then prints its URL; fails if the line
# never came. With port 0 that line is the only way to learn the port.
bus_url() {
    local url
    for _ in $(seq 1 200); do
        url=$(sed -n 's|^ArqonBus listening on \(ws://[^ ]*\)$|\1|p' "$1")
        if [[ -n $url ]]; then
            echo "$url"
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# free_port: a loopback TCP port nothing listens on now, for a server that
# cannot be given port 0.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# nats_config FILE PORT: nats-server's configuration for the comparisons:
# its WebSocket listener on 127.0.0.1:PORT without TLS, its own client port
# on any free loopback port.
nats_config() {
    printf 'listen: "127.0.0.1:-1"\nwebsocket {\n  listen: "127.0.0.1:%s"\n  no_tls: true\n}\n' "$2" >"$1"
}
