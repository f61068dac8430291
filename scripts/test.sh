#!/usr/bin/env bash
# The whole ArqonBus test suite: lints, every Rust test, the Python and
# TypeScript SDK tests, the browser tests.
# Installs what it needs (redis-server, systemd-analyze, promtool, chromium,
# Python and npm packages) by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# Each run builds from the sources it is given; incremental caches would only
# take disk (several GiB for this workspace) on a machine that builds once.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

step "disk"
# The builds take about 3.5 GiB (README.md); a full disk shows up as a rustc
# I/O error deep in the log, so say it here first.
read -r free_kib mount < <(df -Pk . | awk 'NR == 2 { print $4, $6 }')
echo "free: $((free_kib / 1024)) MiB on $mount"
if [ "$free_kib" -lt $((6 * 1024 * 1024)) ]; then
    echo "warning: under 6 GiB free; the builds need about 3.5 GiB and may run out of disk" >&2
fi

step "tools"
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
fi
if command -v redis-server >/dev/null 2>&1; then
    redis-server --version
elif [ "${CI:-}" = "true" ]; then
    echo "redis-server is required in CI and could not be installed" >&2
    exit 1
else
    echo "note: redis-server not found; Redis tests will say they are skipped" >&2
fi

# The browser tests (tests/browser) drive Debian's chromium headless; nothing
# downloads a browser. They fail under CI=true when it is missing.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# deploy/ checks: `systemd-analyze verify` of the unit, `promtool check rules`
# of the alerts (tests/e2e/deploy.rs; they fail under CI=true when missing);
# nats-server for the load generator's peer mode (`benches/run.sh --peer
# nats`), whose smoke run below fails under CI=true when it is missing.
missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "dependencies: licences, bans, sources (cargo deny)"
# Pinned, and built without LTO (its release profile's fat LTO more than
# doubles the build): about 3 minutes on 2 cores, once per machine.
if ! cargo deny --version >/dev/null 2>&1; then
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        cargo install --locked --quiet cargo-deny --version 0.20.2
fi
# Not `advisories`: it fetches the RustSec database from GitHub, which the
# test machines cannot reach (deny.toml says the same).
cargo deny --locked check --hide-inclusion-graph licenses bans sources

step "every published crate packages and builds from its package"
# One command for the whole workspace: cargo puts the packages in a local
# registry overlay, so a crate whose arqon dependencies are not on crates.io
# yet still verifies (crates.io is asked only for the others). The tools of
# this repository are not published. --allow-dirty: this checks the crates,
# not whether the work tree is committed.
# To cargo, a registry crate never changes: it reuses what it unpacked
# ($CARGO_HOME/registry/src/-HASH/) and compiled (the target dir) of the
# overlay's arqon packages on the next run, though the sources changed. So
# the packages build in a target dir of their own, cleared of arqon
# artifacts each run (the third-party ones stay compiled).
package_target="${CARGO_TARGET_DIR:-target}/package-verify"
rm -rf "$package_target/package" "$package_target"/debug/deps/*arqon* \
    "$package_target"/debug/.fingerprint/arqon* "$package_target"/debug/build/arqon*
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/arqon-*
# A packaged crate has no workspace profile, so no debug info is asked for
# here: the build is checked, not debugged.
CARGO_PROFILE_DEV_DEBUG=false CARGO_TARGET_DIR="$package_target" \
    cargo package --workspace --locked --allow-dirty --quiet \
    --exclude arqon-bench --exclude arqon-benches --exclude arqon-e2e
# In CI the clone is used once: give the disk back.
if [ "${CI:-}" = true ]; then
    rm -rf "$package_target"
fi

step "without the redis feature: storage lints, the bus builds with no fred, refuses Redis config"
# Cheap: the same dependencies as the default build, minus fred and cluster.
cargo clippy --locked -p arqon-storage --no-default-features --all-targets -- -D warnings
cargo build --locked -p arqonbus --no-default-features
if cargo tree --locked -p arqonbus --no-default-features | grep -q fred; then
    echo "fred is in arqonbus's tree without the redis feature" >&2
    exit 1
fi
cargo test --locked -p arqon-server --no-default-features --lib -q

step "each library crate builds on its own (no feature borrowed from a neighbour)"
# A workspace build unifies features: a crate that forgets one it uses (tokio's
# macros, say) still compiles there, and breaks for whoever pins it alone.
for crate in arqon-protocol arqon-config arqon-outbound arqon-storage arqon-storage-conformance \
    arqon-storage-redb arqon-routing arqon-telemetry arqon-transport arqon-client arqon-cluster; do
    cargo check --locked -q -p "$crate" --no-default-features
done

step "build the server binary"
cargo build --locked -p arqonbus

step "cargo test"
cargo test --workspace --locked

echo "disk: target/ holds $(du -sh "${CARGO_TARGET_DIR:-target}" | cut -f1)"

step "benches build, load generator smoke run"
cargo bench --locked -p arqon-benches --no-run
bash benches/run.sh --smoke
if command -v nats-server >/dev/null 2>&1; then
    bash benches/run.sh --smoke --peer nats --out target/bench-results/smoke-nats
elif [ "${CI:-}" = true ]; then
    echo "nats-server is required in CI (the load generator's peer mode) and could not be installed" >&2
    exit 1
else
    echo "note: nats-server not found; the load generator's peer mode smoke run is skipped" >&2
fi

step "WebSocket compliance (Autobahn fuzzingclient)"
# Exit 77: skipped outside CI (no Python 2.7); the script said so loudly.
status=0
bash scripts/autobahn.sh || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 77 ]; then
    exit "$status"
fi

if [ -f sdks/python/run_tests.sh ]; then
    step "python SDK"
    ARQONBUS_BIN="$PWD/target/debug/arqonbus" bash sdks/python/run_tests.sh
fi

if [ -f sdks/typescript/run_tests.sh ]; then
    step "typescript SDK"
    ARQONBUS_BIN="$PWD/target/debug/arqonbus" bash sdks/typescript/run_tests.sh
fi

step "browser tests (headless Chromium): a chat page on the TypeScript SDK, the admin dashboard"
if command -v chromium >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
    ARQONBUS_BIN="$PWD/target/debug/arqonbus" CHROMIUM_BIN="$(command -v chromium)" bash tests/browser/run.sh
elif [ "${CI:-}" = "true" ]; then
    echo "chromium and Node.js are required in CI for the browser tests" >&2
    exit 1
else
    echo "note: chromium or Node.js not found; the browser tests are skipped" >&2
fi
