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
BUILD_PROFILE=release # build_bins: this script runs release builds only

require curl timeout

WORK="$(mktemp -d -t backlight-attacks.XXXXXX)"
DATA="$WORK/data"
SERVER_PID=""
CHILD_PID=""

bench_traps "server log: $WORK/server.log"

build_bins -p backlight-server -p backlight-e2e \
  --bin backlight-server --bin backlight-attackgen
SERVER_BIN="${SERVER_BIN:-$TARGET_DIR/release/backlight-server}"
ATTACKGEN_BIN="$TARGET_DIR/release/backlight-attackgen"

mkdir -p "$DATA"
echo "==> starting $SERVER_BIN; ClickHouse: embedded, under $DATA/clickhouse"
# shellcheck disable=SC2086 # SERVER_ARGS is a list of flags.
start_server "$SERVER_BIN" "$WORK/server.log" --data-dir "$DATA" $SERVER_ARGS
URL="$STARTED_URL"
SERVER_PID="$STARTED_PID"
echo "    listening on $URL (pid $SERVER_PID)"

bounded 60 "$SERVER_BIN" --data-dir "$DATA" admin tenant create attacks >/dev/null
KEY="$(timeout 60 "$SERVER_BIN" --data-dir "$DATA" admin enrollment-key create --tenant attacks --note attackgen 2>/dev/null)"

echo "==> attacks: $ATTACKS ($AGENTS well-behaved devices, $WARMUP + $DURATION per phase)"
BACKLIGHT_ENROLLMENT_KEY="$KEY" bounded 1200 "$ATTACKGEN_BIN" --server "$URL" --server-pid "$SERVER_PID" \
  --agents "$AGENTS" --batch-events "$BATCH_EVENTS" --warmup "$WARMUP" --duration "$DURATION" \
  --attacks "$ATTACKS" --slowloris-connections "$SLOWLORIS" | tee "$WORK/attacks.txt"
if [ -n "$RESULTS" ]; then tail -1 "$WORK/attacks.txt" >"$RESULTS"; fi
