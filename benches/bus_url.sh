# Sourced by the benchmark scripts (not run on its own).
#
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
