#!/usr/bin/env bash
# The live-stream benchmark (docs/BENCHMARKS.md, "Live streams"):
#
#   1. builds the release binaries (backlight-server, backlight-streamgen),
#   2. for each server build — BASE_BIN (another build, e.g. the polling streams before
#      issue 11) if given, then this build — starts server A with its embedded ClickHouse and
#      server B on the same ClickHouse and database, creates a tenant, an enrollment key, an
#      admin key and one cc_agent key per 100 streams (`backlight-server admin`),
#   3. runs backlight-streamgen RUNS times in each MODE: STREAMS streams open on server A,
#      CHANGE_RATE item changes a second uploaded to server B (`cross`: other servers' changes)
#      or to server A (`local`), measuring ClickHouse's query counters without and with the
#      streams and each change's time to its stream,
#   4. prints a summary (medians over the runs, ratios this build / BASE_BIN) and one JSON line,
#      and stops everything it started.
#
# Generator, servers and ClickHouse share this machine's cores; the figures include that.
# Loopback only; every step is bounded by `timeout`. About builds x RUNS x MODES x
# (IDLE + WARMUP + DURATION + 20 s) plus setup.
#
# Knobs (environment): STREAMS=1000 CHANGE_RATE=10 DURATION=60s WARMUP=10s IDLE=20s RUNS=3
#   MODES="cross local" BASE_BIN= SKIP_BUILD=0 KEEP=0 RESULTS= (write the summary JSON there)
#   THIS_ARGS="--max-connections-per-ip 10000" (extra flags for this build's servers: every
#   stream is a connection from 127.0.0.1, more than the default per-address cap)
#   BUILD_PROFILE=release (debug only to smoke-test this script: its figures mean nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=bench-streams
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

STREAMS="${STREAMS:-1000}"
CHANGE_RATE="${CHANGE_RATE:-10}"
DURATION="${DURATION:-60s}"
WARMUP="${WARMUP:-10s}"
IDLE="${IDLE:-20s}"
RUNS="${RUNS:-3}"
MODES="${MODES:-cross local}"
BASE_BIN="${BASE_BIN:-}"
THIS_ARGS="${THIS_ARGS:---max-connections-per-ip 10000}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP="${KEEP:-0}"
RESULTS="${RESULTS:-}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BUILD_PROFILE="${BUILD_PROFILE:-release}"

require curl jq timeout pgrep
if [ "$RUNS" -lt 1 ] || [ "$RUNS" -gt 10 ]; then echo "bench-streams: RUNS must be 1..10" >&2; exit 1; fi

WORK="$(mktemp -d -t backlight-streams.XXXXXX)"
bench_traps "server logs: $WORK/*.log"

build_bins -p backlight-server -p backlight-e2e
THIS_BIN="$TARGET_DIR/$BUILD_PROFILE/backlight-server"
STREAMGEN_BIN="$TARGET_DIR/$BUILD_PROFILE/backlight-streamgen"

builds=()
if [ -n "$BASE_BIN" ]; then builds+=("base=$BASE_BIN"); fi
builds+=("this=$THIS_BIN")
# Extra flags per build (BASE_BIN may be older than them).
extra_args() { if [ "$1" = this ]; then echo "$THIS_ARGS"; fi; }

: >"$WORK/runs.jsonl"
for build in "${builds[@]}"; do
  name="${build%%=*}"; bin="${build#*=}"
  data="$WORK/$name-data"
  mkdir -p "$data"
  echo "==> [$name] starting server A (embedded ClickHouse) and server B: $bin"
  # shellcheck disable=SC2046 # the extra flags are words on purpose
  start_server "$bin" "$WORK/$name-a.log" --data-dir "$data" $(extra_args "$name")
  URL_A="$STARTED_URL"; PID_A="$STARTED_PID"
  embedded_clickhouse "$data" "$PID_A"
  # The embedded ClickHouse's password, when this build sets one: server B and the generator
  # read it from the environment.
  if [ -n "$BACKLIGHT_CLICKHOUSE_PASSWORD" ]; then
    export BACKLIGHT_CLICKHOUSE_PASSWORD BACKLIGHT_CLICKHOUSE_USER=default
  else
    unset BACKLIGHT_CLICKHOUSE_PASSWORD BACKLIGHT_CLICKHOUSE_USER
  fi
  # shellcheck disable=SC2046
  start_server "$bin" "$WORK/$name-b.log" --data-dir "$WORK/$name-data-b" --clickhouse-url "$CH_URL" $(extra_args "$name")
  URL_B="$STARTED_URL"
  echo "    A $URL_A (pid $PID_A), B $URL_B, ClickHouse $CH_URL (pid ${CH_PID:-?}) $CH_VERSION"

  admin() { timeout 60 "$bin" --data-dir "$data" admin "$@" 2>/dev/null; }
  admin tenant create bench >/dev/null
  BACKLIGHT_ENROLLMENT_KEY="$(admin enrollment-key create --tenant bench --note streamgen)"
  BACKLIGHT_ADMIN_KEY="$(admin api-key create --tenant bench --role admin --name bench-admin)"
  keys=()
  for _ in $(seq 1 $(( (STREAMS + 99) / 100 ))); do
    keys+=("$(admin api-key create --tenant bench --role cc_agent --name bench-desk)")
  done
  BACKLIGHT_LOOKUP_KEYS="$(IFS=,; echo "${keys[*]}")"
  export BACKLIGHT_ENROLLMENT_KEY BACKLIGHT_ADMIN_KEY BACKLIGHT_LOOKUP_KEYS

  setup=()
  prefix=0
  for run in $(seq 1 "$RUNS"); do
    for mode in $MODES; do
      case "$mode" in
        cross) ingest="$URL_B" ;;
        local) ingest="$URL_A" ;;
        *) echo "bench-streams: unknown mode $mode" >&2; exit 1 ;;
      esac
      prefix=$((prefix + 1))
      echo "==> [$name] run $run/$RUNS, $mode: $STREAMS streams on A, $CHANGE_RATE changes/s to $ingest"
      # Fresh items per run: every item changes at most once in a run.
      timeout 1800 "$STREAMGEN_BIN" --server "$URL_A" --ingest-server "$ingest" \
        --streams "$STREAMS" --item-prefix "R$prefix" --change-rate "$CHANGE_RATE" \
        --duration "$DURATION" --warmup "$WARMUP" --idle "$IDLE" \
        --clickhouse-url "$CH_URL" --server-pid "$PID_A" ${CH_PID:+--clickhouse-pid "$CH_PID"} \
        "${setup[@]}" --label "$name $mode run $run" | tee "$WORK/$name-$mode-$run.txt"
      tail -1 "$WORK/$name-$mode-$run.txt" | jq -c --arg build "$name" --arg mode "$mode" '. + {build: $build, mode: $mode}' >>"$WORK/runs.jsonl"
      sleep 3
    done
  done
  stop_servers
done

SUMMARY="$(jq -s -c --arg streams "$STREAMS" --arg rate "$CHANGE_RATE" --arg nproc "$(nproc)" '
  def median: map(select(. != null)) | sort | if length == 0 then null else .[(length / 2 | floor)] end;
  group_by(.build + " " + .mode) | map({
    key: (.[0].build + " " + .[0].mode),
    value: {
      runs: length,
      streams_selects_per_s: (map(.streams_selects_per_s) | median),
      selects_per_s_without: (map(.without_streams.selects_per_s) | median),
      selects_per_s_with: (map(.with_streams.selects_per_s) | median),
      latency_from_ack_p50_ms: (map(.latency_from_ack_ms.p50) | median),
      latency_from_ack_p99_ms: (map(.latency_from_ack_ms.p99) | median),
      latency_from_ack_max_ms: (map(.latency_from_ack_ms.max) | max),
      latency_from_send_p99_ms: (map(.latency_from_send_ms.p99) | median),
      missed: (map(.missed) | add),
      server_cores_with: (map(.with_streams.cpu_cores.server) | median),
      clickhouse_cores_with: (map(.with_streams.cpu_cores.clickhouse) | median),
      clickhouse_cores_without: (map(.without_streams.cpu_cores.clickhouse) | median)
    }
  }) | from_entries | {streams: ($streams | tonumber), change_rate: ($rate | tonumber), nproc: ($nproc | tonumber), results: .}
' "$WORK/runs.jsonl")"
echo "==> summary (medians over $RUNS runs)"
echo "$SUMMARY" | jq -r '.results | to_entries[] | "\(.key): streams cost \(.value.streams_selects_per_s) SELECT/s (\(.value.selects_per_s_without) without, \(.value.selects_per_s_with) with); change->stream p50 \(.value.latency_from_ack_p50_ms) p99 \(.value.latency_from_ack_p99_ms) max \(.value.latency_from_ack_max_ms) ms after the 200; missed \(.value.missed); ClickHouse cores \(.value.clickhouse_cores_without) -> \(.value.clickhouse_cores_with); server A cores \(.value.server_cores_with)"'
if [ -n "$BASE_BIN" ]; then
  echo "$SUMMARY" | jq -r '.results as $r | ["cross", "local"][] as $m | select($r["this \($m)"] and $r["base \($m)"]) |
    "ratio this/base, \($m): streams SELECT/s x\(($r["this \($m)"].streams_selects_per_s / $r["base \($m)"].streams_selects_per_s * 1000 | round) / 1000), ClickHouse cores x\(($r["this \($m)"].clickhouse_cores_with / $r["base \($m)"].clickhouse_cores_with * 1000 | round) / 1000), p99 latency x\(($r["this \($m)"].latency_from_ack_p99_ms / $r["base \($m)"].latency_from_ack_p99_ms * 1000 | round) / 1000)"'
fi
echo "$SUMMARY"
if [ -n "$RESULTS" ]; then echo "$SUMMARY" >"$RESULTS"; fi
