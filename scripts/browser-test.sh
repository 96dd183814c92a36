#!/usr/bin/env bash
# Browser tests of the pages (lookup at /, dashboard at /dashboard) in headless Chromium.
#
# Installs what is missing (Debian's `chromium` via apt, ClickHouse via
# deploy/install-clickhouse.sh, `npm ci` in tests/browser: playwright-core only, which downloads
# no browser), builds backlight-server, starts it on a free loopback port with a temporary data
# directory (so it runs its own embedded ClickHouse), creates a tenant with cc_agent / wfm /
# admin keys and an enrollment key, then runs tests/browser/run.mjs. Screenshots land in
# tests/artifacts/. Everything started here is stopped on exit; the whole run is bounded by
# BROWSER_TEST_TIMEOUT seconds (default 300) for the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TIMEOUT="${BROWSER_TEST_TIMEOUT:-300}"
ARTIFACTS="$ROOT/tests/artifacts"
mkdir -p "$ARTIFACTS"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- tools -----------------------------------------------------------------------------------
if [ -z "${CHROMIUM:-}" ]; then
  if ! command -v chromium >/dev/null 2>&1; then
    echo "==> installing Debian's chromium"
    as_root apt-get install -y chromium || { as_root apt-get update && as_root apt-get install -y chromium; }
  fi
  export CHROMIUM
  CHROMIUM=$(command -v chromium)
fi
if ! command -v clickhouse-server >/dev/null 2>&1 && [ ! -x /usr/sbin/clickhouse-server ] \
   && [ -z "${BACKLIGHT_CLICKHOUSE_BINARY:-}" ]; then
  echo "==> ClickHouse is missing; installing it"
  bash deploy/install-clickhouse.sh
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "==> installing Node.js and npm"
  as_root apt-get install -y nodejs npm || { as_root apt-get update && as_root apt-get install -y nodejs npm; }
fi
echo "==> npm ci (tests/browser)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

echo "==> building backlight-server"
cargo build -p backlight-server
SERVER="$ROOT/target/debug/backlight-server"

# --- a throwaway server ------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/backlight-browser.XXXXXX")
DATA="$WORK/data"
SERVER_PID=""
cleanup() {
  local rc=$?
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    # The server stops its embedded ClickHouse on SIGTERM; give it a moment, then insist.
    for _ in $(seq 1 40); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  cp "$WORK/server.log" "$ARTIFACTS/browser-server.log" 2>/dev/null || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=$(node -e "const s=require('net').createServer();s.listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
BASE_URL="http://127.0.0.1:$PORT"
echo "==> starting backlight-server on $BASE_URL (data: $DATA)"
"$SERVER" --data-dir "$DATA" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
ready=""
for _ in $(seq 1 240); do
  if curl -fsS "$BASE_URL/readyz" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.5
done
if [ -z "$ready" ]; then
  echo "server did not become ready; end of its log:" >&2
  tail -30 "$WORK/server.log" >&2
  exit 1
fi

admin() { "$SERVER" admin --data-dir "$DATA" "$@" 2>/dev/null; }
TENANT=browser-test
admin tenant create "$TENANT" --name "Browser test" >/dev/null
KEY_CC=$(admin api-key create --tenant "$TENANT" --role cc_agent --name browser-cc)
KEY_WFM=$(admin api-key create --tenant "$TENANT" --role wfm --name browser-wfm)
KEY_ADMIN=$(admin api-key create --tenant "$TENANT" --role admin --name browser-admin)
ENROLL_KEY=$(admin enrollment-key create --tenant "$TENANT" --note "browser test")
export BASE_URL KEY_CC KEY_WFM KEY_ADMIN ENROLL_KEY TENANT DATA_DIR="$DATA" SERVER_BIN="$SERVER"

echo "==> running the browser tests (limit ${TIMEOUT}s)"
timeout --kill-after=10 "$TIMEOUT" node tests/browser/run.mjs
