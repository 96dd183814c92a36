#!/usr/bin/env bash
# The attack benchmark (docs/BENCHMARKS.md, "Hostile clients"): what the other devices get
# while one client attacks.
#
#   1. builds the release binaries (backlight-server, backlight-attackgen),
#   2. starts a release backlight-server on a free loopback port with a throwaway data
#      directory (mktemp); it runs its own embedded ClickHouse under that directory,
#   3. creates a tenant and an enrollment key with `backlight-server admin`,
#   4. runs backlight-attackgen: a fleet of well-behaved devices, a probe and /healthz are
#      measured with no attack (the baseline, same run), then during each attack (budget
#      starvation, decompression bombs, slowloris, a flood from one device),
#   5. prints the table and one JSON line, and stops everything it started.
#
# Knobs (environment): AGENTS=32 BATCH_EVENTS=200 WARMUP=3s DURATION=15s
#   ATTACKS=starvation,bombs,slowloris,flood SLOWLORIS=2000
#   SERVER_BIN= (another build's backlight-server, e.g. before a fix: an A/B with the same
#   attack generator) SKIP_BUILD=0 KEEP=0 RESULTS= (write the JSON there)
#   SERVER_ARGS= (extra flags for the server)
#
# Run it alone on the machine: `flock /work/wt/bench.lock scripts/bench-attacks.sh` where
# several people share one. About 2 minutes plus the build.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=bench-attacks
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

AGENTS="${AGENTS:-32}"
BATCH_EVENTS="${BATCH_EVENTS:-200}"
WARMUP="${WARMUP:-3s}"
DURATION="${DURATION:-15s}"
ATTACKS="${ATTACKS:-starvation,bombs,slowloris,flood}"
SLOWLORIS="${SLOWLORIS:-2000}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP="${KEEP:-0}"
RESULTS="${RESULTS:-}"
SERVER_ARGS="${SERVER_ARGS:-}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

for tool in curl timeout; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench-attacks: $tool is required" >&2; exit 1; }
done

WORK="$(mktemp -d -t backlight-attacks.XXXXXX)"
DATA="$WORK/data"
SERVER_PID=""
CHILD_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$CHILD_PID" ] && kill -0 "$CHILD_PID" 2>/dev/null; then
    kill -TERM "$CHILD_PID" 2>/dev/null || true
  fi
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    # The server stops its embedded ClickHouse itself after a TERM.
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then
    echo "bench-attacks: work directory kept: $WORK (server log: $WORK/server.log)" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$SKIP_BUILD" != 1 ]; then
  echo "==> building release binaries"
  bounded 3600 cargo build --release -p backlight-server -p backlight-e2e \
    --bin backlight-server --bin backlight-attackgen
fi
SERVER_BIN="${SERVER_BIN:-$TARGET_DIR/release/backlight-server}"
ATTACKGEN_BIN="$TARGET_DIR/release/backlight-attackgen"

mkdir -p "$DATA"
echo "==> starting $SERVER_BIN; ClickHouse: embedded, under $DATA/clickhouse"
PORT="$(free_port)"
URL="http://127.0.0.1:$PORT"
# shellcheck disable=SC2086 # SERVER_ARGS is a list of flags.
"$SERVER_BIN" --data-dir "$DATA" --listen "127.0.0.1:$PORT" $SERVER_ARGS >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 240); do
  curl -fsS "$URL/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:"; tail -20 "$WORK/server.log"; exit 1; }
  sleep 0.5
done
curl -fsS "$URL/readyz" >/dev/null || { echo "server not ready after 120 s:"; tail -20 "$WORK/server.log"; exit 1; }
echo "    listening on $URL (pid $SERVER_PID)"

bounded 60 "$SERVER_BIN" --data-dir "$DATA" admin tenant create attacks >/dev/null
KEY="$(timeout 60 "$SERVER_BIN" --data-dir "$DATA" admin enrollment-key create --tenant attacks --note attackgen 2>/dev/null)"

echo "==> attacks: $ATTACKS ($AGENTS well-behaved devices, $WARMUP + $DURATION per phase)"
BACKLIGHT_ENROLLMENT_KEY="$KEY" bounded 1200 "$ATTACKGEN_BIN" --server "$URL" --server-pid "$SERVER_PID" \
  --agents "$AGENTS" --batch-events "$BATCH_EVENTS" --warmup "$WARMUP" --duration "$DURATION" \
  --attacks "$ATTACKS" --slowloris-connections "$SLOWLORIS" | tee "$WORK/attacks.txt"
if [ -n "$RESULTS" ]; then tail -1 "$WORK/attacks.txt" >"$RESULTS"; fi
