#!/usr/bin/env bash
# The browser tests: headless Chromium (Debian's /usr/bin/chromium, or
# $CHROMIUM_BIN) driven by puppeteer-core, against the real server binary.
#
# - chat.test.mjs: a chat page on the TypeScript SDK (sdks/typescript/dist,
#   plain ES modules), two pages, the bus killed and restarted, with memory
#   and with Redis storage;
# - dashboard.test.mjs: the admin dashboard the monitoring listener serves.
#
# Installs the locked dev dependencies (`npm ci`; nothing downloads a
# browser), builds the SDK, runs the tests with Node's test runner one file
# at a time. The server binary is $ARQONBUS_BIN, or <repo>/target/debug/arqonbus.
# Screenshots go to $BROWSER_TEST_ARTIFACTS (default: $TMPDIR/arqonbus-browser-artifacts);
# with UPDATE_SCREENSHOTS=1 they also replace the committed ones in docs/img/.
# Extra arguments go to `node --test`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

bin="${ARQONBUS_BIN:-$repo/target/debug/arqonbus}"
if [ ! -x "$bin" ]; then
    echo "run.sh: server binary not found at $bin; build it with 'cargo build -p arqonbus' or set ARQONBUS_BIN" >&2
    exit 2
fi
chromium="${CHROMIUM_BIN:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
    echo "run.sh: $chromium not found: apt-get install chromium, or set CHROMIUM_BIN" >&2
    exit 2
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "run.sh: Node.js 20+ and npm are needed" >&2
    exit 2
fi

export PUPPETEER_SKIP_DOWNLOAD=1 PUPPETEER_SKIP_CHROME_DOWNLOAD=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
# The SDK as the chat page imports it.
(
    cd "$repo/sdks/typescript"
    [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error
    npm run --silent build
)
npm ci --no-audit --no-fund --loglevel=error

export ARQONBUS_BIN="$bin" CHROMIUM_BIN="$chromium"
"$chromium" --version 2>/dev/null || true
node --test --test-concurrency=1 --test-reporter=spec "$@" ./*.test.mjs
