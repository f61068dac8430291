#!/usr/bin/env bash
# Runs the TypeScript SDK's test suite against the real server binary.
#
# Installs the locked dev dependencies (`npm ci`), builds the package
# (`npm run build`: ES modules and .d.ts in dist/), compiles the tests, then
# runs them with Node's built-in test runner, one file at a time, and exits
# with its code. The server binary is $ARQONBUS_BIN, or
# <repo>/target/debug/arqonbus (build it with `cargo build -p arqonbus`).
# Needs Node 20+ and npm. Extra arguments go to `node --test`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

bin="${ARQONBUS_BIN:-$here/../../target/debug/arqonbus}"
if [ ! -x "$bin" ]; then
    echo "run_tests.sh: server binary not found at $bin" >&2
    echo "run_tests.sh: build it with 'cargo build -p arqonbus' or set ARQONBUS_BIN" >&2
    exit 2
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "run_tests.sh: Node.js 20+ and npm are needed (e.g. apt-get install nodejs npm)" >&2
    exit 2
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
    echo "run_tests.sh: Node.js 20+ is needed, found $(node --version)" >&2
    exit 2
fi

npm ci --no-audit --no-fund --loglevel=error
npm run --silent build
npm run --silent build:test

export ARQONBUS_BIN="$bin"
set +e
# One file at a time: each starts its own servers, and the machine may be small.
node --test --test-concurrency=1 --test-reporter=spec "$@" build-test/test/*.test.js
status=$?
set -e
exit "$status"
