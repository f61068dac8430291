#!/usr/bin/env bash
# Runs the Python SDK's test suite against the real server binary.
#
# Creates sdks/python/.venv if it is missing, installs the SDK (editable) with
# its test extras, then runs pytest from sdks/python and exits with its code.
# The server binary is $ARQONBUS_BIN, or <repo>/target/debug/arqonbus
# (build it with `cargo build -p arqonbus`). Extra arguments go to pytest.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

bin="${ARQONBUS_BIN:-$here/../../target/debug/arqonbus}"
if [ ! -x "$bin" ]; then
    echo "run_tests.sh: server binary not found at $bin" >&2
    echo "run_tests.sh: build it with 'cargo build -p arqonbus' or set ARQONBUS_BIN" >&2
    exit 2
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

set +e
.venv/bin/python -m pytest -q "$@"
status=$?
set -e
exit "$status"
