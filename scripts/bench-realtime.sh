#!/usr/bin/env bash
# The end-to-end latency benchmark (docs/BENCHMARKS.md, "Real time"): from `backlight-agent item
# done` on a desktop to (a) the status API and (b) an open live stream showing it.
#
#   1. builds the release binaries (server, agent, backlight-realtime, backlight-loadgen),
#   2. starts a release backlight-server on a free loopback port with a throwaway data directory
#      (mktemp); it runs its own embedded ClickHouse under that directory,
#   3. creates tenant "bench", an enrollment key and a cc_agent API key,
#   4. enrolls a real backlight-agent, grants consent, and runs it with the DEFAULT settings
#      (`run --source none`: no desktop here; the uploader, batching and policy are the defaults),
#   5. runs backlight-realtime: SAMPLES items, each `item start`, then the clock runs from
#      `item done` (a separate process, as on a desktop) until the status API and the stream
#      show `completed` (split at the server's receipt of the event, read from ClickHouse),
#   6. runs the same again while backlight-loadgen drives LOAD_AGENTS simulated agents at
#      LOAD_RATE events/s (paced, LOAD_BATCH_EVENTS-event zstd batches) against the same server,
#   7. prints both summaries and one JSON line, and stops everything it started.
#
# Loopback only; every step is bounded by `timeout`. About 2 x SAMPLES x 1-3 s plus the load's
# enrollment and warm-up, plus the build.
#
# Knobs (environment): SAMPLES=100 PAUSE=500ms POLL_INTERVAL=20ms TIMEOUT=30s (per change)
#   LOAD=1 (0: only the run alone) LOAD_AGENTS=1000 LOAD_RATE=20000 LOAD_BATCH_EVENTS=100
#   LOAD_WARMUP=20s SKIP_BUILD=0 KEEP=0 (keep the work directory) RESULTS= (write the JSON there)
#   SERVER_BIN= AGENT_BIN= (other builds, for an A/B against this tool; re-run after a change
#   to the stream or the ingest path with the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=bench-realtime
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

SAMPLES="${SAMPLES:-100}"
PAUSE="${PAUSE:-500ms}"
POLL_INTERVAL="${POLL_INTERVAL:-20ms}"
TIMEOUT="${TIMEOUT:-30s}"
LOAD="${LOAD:-1}"
LOAD_AGENTS="${LOAD_AGENTS:-1000}"
LOAD_RATE="${LOAD_RATE:-20000}"
LOAD_BATCH_EVENTS="${LOAD_BATCH_EVENTS:-100}"
LOAD_WARMUP="${LOAD_WARMUP:-20s}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP="${KEEP:-0}"
RESULTS="${RESULTS:-}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BUILD_PROFILE=release # build_bins: this script runs release builds only

require curl jq timeout pgrep

WORK="$(mktemp -d -t backlight-realtime.XXXXXX)"
DATA="$WORK/data"
AGENT_DIR="$WORK/agent"
SERVER_PID=""
AGENT_PID=""
LOAD_PID=""
CHILD_PID=""

stop() { # stop PID SECONDS: TERM, wait, KILL
  local pid="$1" grace="$2"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((grace * 2))); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
}

# What bench_exit stops before the servers.
stop_more() {
  stop "$LOAD_PID" 5
  stop "$AGENT_PID" 15
}
bench_traps "logs: server.log, agent.log, load.log"

build_bins -p backlight-server -p backlight-agent -p backlight-e2e
SERVER_BIN="${SERVER_BIN:-$TARGET_DIR/release/backlight-server}"
AGENT_BIN="${AGENT_BIN:-$TARGET_DIR/release/backlight-agent}"
REALTIME_BIN="$TARGET_DIR/release/backlight-realtime"
LOADGEN_BIN="$TARGET_DIR/release/backlight-loadgen"

load_generator_env
mkdir -p "$DATA"
echo "==> starting backlight-server; ClickHouse: embedded, under $DATA/clickhouse"
# The simulated agents are connections from 127.0.0.1 like the measuring tool: lift the
# per-address cap (256) that a real fleet, each desktop on its own address, never meets.
start_server "$SERVER_BIN" "$WORK/server.log" --data-dir "$DATA" --max-connections-per-ip 10000
URL="$STARTED_URL"
SERVER_PID="$STARTED_PID"
embedded_clickhouse "$DATA" "$SERVER_PID"
echo "    listening on $URL; server pid $SERVER_PID; ClickHouse $CH_VERSION"

echo "==> tenant 'bench', an enrollment key and a cc_agent API key"
admin() { timeout 60 "$SERVER_BIN" --data-dir "$DATA" admin "$@" 2>/dev/null; }
admin tenant create bench >/dev/null
ENROLLMENT_KEY="$(admin enrollment-key create --tenant bench --note realtime)"
BACKLIGHT_LOOKUP_KEY="$(admin api-key create --tenant bench --role cc_agent --name bench-desk)"
export BACKLIGHT_LOOKUP_KEY

echo "==> a desktop: enroll, consent, run with the default settings"
agent() { timeout 60 "$AGENT_BIN" --data-dir "$AGENT_DIR" "$@"; }
BACKLIGHT_ENROLLMENT_KEY="$ENROLLMENT_KEY" agent enroll --server "$URL" >/dev/null
agent consent grant --yes >/dev/null
"$AGENT_BIN" --data-dir "$AGENT_DIR" run --source none --no-browser --local-api off >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 60); do [ -s "$AGENT_DIR/agent.wake" ] && break; sleep 0.5; done
[ -s "$AGENT_DIR/agent.wake" ] || echo "    (the agent announced no wake address: an agent without it is being measured)"

realtime=("$REALTIME_BIN" --server "$URL" --agent-bin "$AGENT_BIN" --agent-dir "$AGENT_DIR"
  --samples "$SAMPLES" --pause "$PAUSE" --poll-interval "$POLL_INTERVAL" --timeout "$TIMEOUT"
  --clickhouse-url "$CH_URL")
budget=$(( SAMPLES * 400 + 120 ))

echo "==> alone: $SAMPLES items"
bounded "$budget" "${realtime[@]}" --prefix RTA --label alone | tee "$WORK/alone.txt"
ALONE="$(tail -1 "$WORK/alone.txt")"

LOADED=null
LOAD_FIGURES=null
if [ "$LOAD" = 1 ]; then
  echo "==> with load: $LOAD_AGENTS simulated agents at $LOAD_RATE events/s ($LOAD_BATCH_EVENTS-event batches)"
  BACKLIGHT_ENROLLMENT_KEY="$ENROLLMENT_KEY" timeout --kill-after=10s $((budget + 900)) "$LOADGEN_BIN" \
    --server "$URL" --agents "$LOAD_AGENTS" --rate "$LOAD_RATE" --batch-events "$LOAD_BATCH_EVENTS" \
    --warmup "$LOAD_WARMUP" --duration 540s --server-pid "$SERVER_PID" --clickhouse-url "$CH_URL" \
    --label background >"$WORK/load.txt" 2>"$WORK/load.log" &
  LOAD_PID=$!
  for _ in $(seq 1 600); do
    grep -q " window " "$WORK/load.log" 2>/dev/null && break
    kill -0 "$LOAD_PID" 2>/dev/null || { echo "the load generator stopped:"; tail -20 "$WORK/load.log"; exit 1; }
    sleep 1
  done
  echo "    load running: $(grep ' events/s acked' "$WORK/load.log" | tail -1)"
  bounded "$budget" "${realtime[@]}" --prefix RTL --label "with $LOAD_AGENTS agents at $LOAD_RATE events/s" \
    | tee "$WORK/loaded.txt"
  LOADED="$(tail -1 "$WORK/loaded.txt")"
  # The load's own figures over its window so far: acked events/s as the generator saw them.
  LOAD_FIGURES="$(sed -n 's/.* window *\([0-9.]*\) events\/s acked.*/\1/p' "$WORK/load.log" \
    | jq -s -c 'if length == 0 then null else {events_per_s_median: (sort | .[(length / 2 | floor)]), samples: length} end')"
  stop "$LOAD_PID" 10
  LOAD_PID=""
fi

SUMMARY="$(jq -n -c --argjson alone "$ALONE" --argjson loaded "$LOADED" --argjson load "$LOAD_FIGURES" \
  --arg agents "$LOAD_AGENTS" --arg rate "$LOAD_RATE" --arg nproc "$(nproc)" --arg ch "$CH_VERSION" '
  def met(x): if x == null then null else (x.status_api.p99_ms != null and x.status_api.p99_ms <= 2000
    and x.stream.p99_ms != null and x.stream.p99_ms <= 2000 and x.status_api.timed_out == 0 and x.stream.timed_out == 0) end;
  {alone: $alone, with_load: $loaded, load: ($load + {agents: ($agents | tonumber), offered_events_per_s: ($rate | tonumber)}),
   target_p99_2s_met: {alone: met($alone), with_load: met($loaded)},
   machine: {nproc: ($nproc | tonumber), clickhouse: $ch}}')"
echo
echo "== Real-time benchmark summary"
jq -r '
  def f(x): "p50 \(x.p50_ms) ms, p99 \(x.p99_ms) ms, max \(x.max_ms) ms (\(x.samples) samples, \(x.timed_out) timed out)";
  "alone           status API \(f(.alone.status_api))",
  "                stream     \(f(.alone.stream))",
  (if .with_load then
  "with load       status API \(f(.with_load.status_api))",
  "                stream     \(f(.with_load.stream))",
  "load            \(.load.agents) agents offered \(.load.offered_events_per_s) events/s; acked (median of 5-s readings) \(.load.events_per_s_median // "?")"
  else empty end),
  "target p99 <= 2 s: alone \(.target_p99_2s_met.alone), with load \(.target_p99_2s_met.with_load)"
' <<<"$SUMMARY"
echo "$SUMMARY"
if [ -n "$RESULTS" ]; then echo "$SUMMARY" >"$RESULTS"; fi
