#!/usr/bin/env bash
# Runs every test of Backlight: unit tests and the end-to-end tests that run the real binaries
# against a real, throwaway ClickHouse. Installs ClickHouse first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v clickhouse-server >/dev/null 2>&1 && [ ! -x /usr/sbin/clickhouse-server ] && [ -z "${BACKLIGHT_CLICKHOUSE_BINARY:-}" ]; then
  echo "==> ClickHouse is missing; installing it"
  bash deploy/install-clickhouse.sh
fi

echo "==> building the binaries the end-to-end tests run"
cargo build --workspace --bins --locked

echo "==> running the tests"
cargo test --workspace --locked "$@"
