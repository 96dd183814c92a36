#!/usr/bin/env bash
# The status lookup benchmark (docs/BENCHMARKS.md, "Status lookups"):
#
#   1. builds the release binaries,
#   2. starts a release backlight-server on a free loopback port with a throwaway data directory
#      (mktemp); it runs its own embedded ClickHouse under that directory,
#   3. creates a "bench" tenant, an enrollment key, an admin and a cc_agent API key with
#      `backlight-server admin`,
#   4. runs backlight-lookupgen: registers ITEMS items and uploads their histories through
#      /v1/ingest (once), then for each of RUNS rounds looks items up at RATE/s, open loop,
#      first WITHOUT ingest (the baseline), then WITH a concurrent ingest load
#      (INGEST_RATE events/s from INGEST_AGENTS agents, zstd batches),
#   5. prints a summary (medians over the rounds, the with/without ratio) and one JSON line,
#      and stops everything it started.
#
# Generator, server and ClickHouse share this machine's cores; the figures include that.
# Loopback only; every step is bounded by `timeout`. About RUNS x 2 x (WARMUP + DURATION) plus
# setup (~1-2 minutes for 100k items).
#
# Knobs (environment): ITEMS=100000 RATE=1000 DURATION=60s WARMUP=10s RUNS=3
#   INGEST_RATE=20000 INGEST_AGENTS=200 INGEST_BATCH_EVENTS=100 PROBE_RATE=5
#   QUERY_LOG=1 (ClickHouse logs queries, and the generator reports its CPU per lookup from
#   system.query_log; 0 turns both off)
#   SKIP_BUILD=0 KEEP=0 (keep the work directory) RESULTS= (write the summary JSON there)
#   BUILD_PROFILE=release (debug only to smoke-test this script: its figures mean nothing)
#   SERVER_BIN= (another build's backlight-server, for an A/B against this generator; the
#   direct ClickHouse probe reads this build's tables and may fail against an older schema)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=bench-status
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

ITEMS="${ITEMS:-100000}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-60s}"
WARMUP="${WARMUP:-10s}"
RUNS="${RUNS:-3}"
INGEST_RATE="${INGEST_RATE:-20000}"
INGEST_AGENTS="${INGEST_AGENTS:-200}"
INGEST_BATCH_EVENTS="${INGEST_BATCH_EVENTS:-100}"
PROBE_RATE="${PROBE_RATE:-5}"
QUERY_LOG="${QUERY_LOG:-1}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP="${KEEP:-0}"
RESULTS="${RESULTS:-}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BUILD_PROFILE="${BUILD_PROFILE:-release}"

require curl jq timeout pgrep
if [ "$RUNS" -lt 1 ] || [ "$RUNS" -gt 10 ]; then echo "bench-status: RUNS must be 1..10" >&2; exit 1; fi

WORK="$(mktemp -d -t backlight-status.XXXXXX)"
DATA="$WORK/data"
SERVER_PID=""
CH_PID=""
CHILD_PID=""

bench_traps "server log: $WORK/server.log"

build_bins -p backlight-server -p backlight-e2e
SERVER_BIN="${SERVER_BIN:-$TARGET_DIR/$BUILD_PROFILE/backlight-server}"
LOOKUPGEN_BIN="$TARGET_DIR/$BUILD_PROFILE/backlight-lookupgen"

load_generator_env
mkdir -p "$DATA"
if [ "$QUERY_LOG" = 1 ]; then
  # ClickHouse merges users.d/*.xml into the users.xml the server writes for it.
  mkdir -p "$DATA/clickhouse/users.d"
  echo '<yandex><profiles><default><log_queries>1</log_queries></default></profiles></yandex>' \
    >"$DATA/clickhouse/users.d/log_queries.xml"
fi
echo "==> starting backlight-server ($BUILD_PROFILE); ClickHouse: embedded, under $DATA/clickhouse"
start_server "$SERVER_BIN" "$WORK/server.log" --data-dir "$DATA"
URL="$STARTED_URL"
SERVER_PID="$STARTED_PID"
embedded_clickhouse "$DATA" "$SERVER_PID"
echo "    listening on $URL; server pid $SERVER_PID; ClickHouse $CH_VERSION pid ${CH_PID:-?}"

echo "==> creating tenant 'bench', an enrollment key and API keys (admin, cc_agent)"
admin() { timeout 60 "$SERVER_BIN" --data-dir "$DATA" admin "$@" 2>/dev/null; }
admin tenant create bench >/dev/null
BACKLIGHT_ENROLLMENT_KEY="$(admin enrollment-key create --tenant bench --note lookupgen)"
BACKLIGHT_ADMIN_KEY="$(admin api-key create --tenant bench --role admin --name bench-admin)"
BACKLIGHT_LOOKUP_KEY="$(admin api-key create --tenant bench --role cc_agent --name bench-desk)"
export BACKLIGHT_ENROLLMENT_KEY BACKLIGHT_ADMIN_KEY BACKLIGHT_LOOKUP_KEY

common=(--server "$URL" --items "$ITEMS" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP"
  --server-pid "$SERVER_PID" --clickhouse-url "$CH_URL" --probe-rate "$PROBE_RATE"
  --ingest-rate "$INGEST_RATE" --ingest-agents "$INGEST_AGENTS" --ingest-batch-events "$INGEST_BATCH_EVENTS")
if [ -n "$CH_PID" ]; then common+=(--clickhouse-pid "$CH_PID"); fi
if [ "$QUERY_LOG" = 1 ]; then common+=(--query-log); fi

: >"$WORK/without.jsonl"
: >"$WORK/with.jsonl"
setup=()
for run in $(seq 1 "$RUNS"); do
  if [ "$run" -gt 1 ]; then setup=(--skip-setup); fi
  if [ "$run" -eq 1 ]; then what="first: registers $ITEMS items and uploads their histories"; else what="same items"; fi
  echo "==> run $run/$RUNS without ingest ($what)"
  bounded 1800 "$LOOKUPGEN_BIN" "${common[@]}" "${setup[@]}" --label "without ingest, run $run" \
    | tee "$WORK/without-$run.txt"
  tail -1 "$WORK/without-$run.txt" >>"$WORK/without.jsonl"
  sleep 5
  echo "==> run $run/$RUNS with ingest ($INGEST_RATE events/s from $INGEST_AGENTS agents)"
  bounded 900 "$LOOKUPGEN_BIN" "${common[@]}" --skip-setup --with-ingest --label "with ingest, run $run" \
    | tee "$WORK/with-$run.txt"
  tail -1 "$WORK/with-$run.txt" >>"$WORK/with.jsonl"
  if [ "$run" -lt "$RUNS" ]; then sleep 5; fi
done

MACHINE="$(jq -n --arg nproc "$(nproc)" --arg mem "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)" \
  --arg cpu "$(sed -n 's/^model name\s*:\s*//p' /proc/cpuinfo | head -1)" --arg kernel "$(uname -sr)" \
  --arg ch "$CH_VERSION" '{nproc: ($nproc|tonumber), ram: $mem, cpu: $cpu, kernel: $kernel, clickhouse: $ch}')"
SUMMARY="$(jq -n -c --slurpfile without "$WORK/without.jsonl" --slurpfile with "$WORK/with.jsonl" \
  --argjson machine "$MACHINE" --arg rate "$RATE" --arg items "$ITEMS" '
  def median: map(select(. != null)) | sort | if length == 0 then null else .[(length / 2 | floor)] end;
  def side(runs): {
    runs: (runs | length),
    lookups_per_s: (runs | map(.lookups_per_s) | median),
    p50_ms: (runs | map(.latency_ms.p50) | median),
    p90_ms: (runs | map(.latency_ms.p90) | median),
    p99_ms: (runs | map(.latency_ms.p99) | median),
    p99_9_ms: (runs | map(.latency_ms.p99_9) | median),
    max_ms: (runs | map(.latency_ms.max) | max),
    p99_ms_runs: (runs | map(.latency_ms.p99)),
    errors: (runs | map(.errors | to_entries) | add // [] | group_by(.key) | map({key: .[0].key, value: (map(.value) | add)}) | from_entries),
    server_mean_ms: (runs | map(.server_mean_ms) | median),
    clickhouse_cpu_ms_per_lookup: (runs | map(.clickhouse_query_cpu.lookup_total_cpu_ms_per_lookup) | median),
    clickhouse_read_cpu_ms_per_lookup: (runs | map(.clickhouse_query_cpu.item_read.cpu_ms_per_lookup) | median),
    clickhouse_item_lookup_p99_ms: (runs | map(.clickhouse_probe.item_lookup_ms.p99) | median),
    generator_lag_p99_ms: (runs | map(.generator_lag_ms.p99) | median),
    ingest_events_per_s: (runs | map(.ingest_events_per_s) | median),
    server_peak_rss_mb: (runs | map(.server_peak_rss_mb) | max),
    cpu_cores: {server: (runs | map(.cpu_cores.server) | median), clickhouse: (runs | map(.cpu_cores.clickhouse) | median),
                generator: (runs | map(.cpu_cores.generator) | median), machine_busy: (runs | map(.cpu_cores.machine_busy) | median)}
  };
  side($without) as $a | side($with) as $b |
  {
    items: ($items | tonumber), rate_offered: ($rate | tonumber),
    without_ingest: $a, with_ingest: $b,
    p50_ratio: (if $a.p50_ms and $b.p50_ms then ($b.p50_ms / $a.p50_ms * 100 | round / 100) else null end),
    p99_ratio: (if $a.p99_ms and $b.p99_ms then ($b.p99_ms / $a.p99_ms * 100 | round / 100) else null end),
    target_met: (($b.p99_ms // 1e9) <= 20 and ($b.lookups_per_s // 0) >= 0.99 * ($rate | tonumber)),
    machine: $machine
  }')"

echo
echo "== Status lookup benchmark summary (median of $RUNS runs each)"
jq -r '
  def r: if . == null then "?" else (. * 10 | round / 10 | tostring) end;
  def r2: if . == null then "?" else (. * 100 | round / 100 | tostring) end;
  def line(s): "\(s.lookups_per_s | r)/s  p50 \(s.p50_ms | r)  p90 \(s.p90_ms | r)  p99 \(s.p99_ms | r)  p99.9 \(s.p99_9_ms | r)  max \(s.max_ms | r) ms  errors \(if (s.errors | length) == 0 then "none" else (s.errors | tostring) end)  server RSS \(s.server_peak_rss_mb | r) MB";
  "machine         \(.machine.nproc) cores (\(.machine.cpu)), \(.machine.ram) RAM, \(.machine.kernel); ClickHouse \(.machine.clickhouse), embedded; generator, server and ClickHouse share the cores",
  "load            \(.items) registered items, \(.rate_offered) lookups/s offered, open loop, latency from the scheduled time",
  "without ingest  " + line(.without_ingest),
  "with ingest     " + line(.with_ingest) + "  ingest \(.with_ingest.ingest_events_per_s | r) events/s",
  "p99 per run     without \(.without_ingest.p99_ms_runs | tostring)  with \(.with_ingest.p99_ms_runs | tostring)",
  "server time     mean \(.without_ingest.server_mean_ms | r) ms without, \(.with_ingest.server_mean_ms | r) ms with ingest; ClickHouse item_lookup read p99 \(.without_ingest.clickhouse_item_lookup_p99_ms | r) / \(.with_ingest.clickhouse_item_lookup_p99_ms | r) ms",
  "ClickHouse CPU  per lookup (system.query_log): \(.without_ingest.clickhouse_cpu_ms_per_lookup | r2) ms without ingest (item reads \(.without_ingest.clickhouse_read_cpu_ms_per_lookup | r2)), \(.with_ingest.clickhouse_cpu_ms_per_lookup | r2) ms with (item reads \(.with_ingest.clickhouse_read_cpu_ms_per_lookup | r2))",
  "cpu (cores)     without: server \(.without_ingest.cpu_cores.server | r) clickhouse \(.without_ingest.cpu_cores.clickhouse | r) generator \(.without_ingest.cpu_cores.generator | r); with: server \(.with_ingest.cpu_cores.server | r) clickhouse \(.with_ingest.cpu_cores.clickhouse | r) generator \(.with_ingest.cpu_cores.generator | r)",
  "ratio           with / without ingest: p50 x\(.p50_ratio), p99 x\(.p99_ratio)",
  "target          p99 <= 20 ms at \(.rate_offered) lookups/s with ingest: \(if .target_met then "MET" else "NOT MET" end)"
' <<<"$SUMMARY"
echo "$SUMMARY"
if [ -n "$RESULTS" ]; then echo "$SUMMARY" >"$RESULTS"; fi
