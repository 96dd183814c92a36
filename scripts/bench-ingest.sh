#!/usr/bin/env bash
# The ingest benchmark (docs/BENCHMARKS.md, "Ingest"):
#
#   1. builds the release binaries,
#   2. starts a release backlight-server on a free loopback port with a throwaway data directory
#      (mktemp); it runs its own embedded ClickHouse under that directory,
#   3. creates a "bench" tenant and an enrollment key with `backlight-server admin`,
#   4. runs backlight-loadgen RUNS times: AGENTS freshly enrolled simulated agents sending
#      zstd JSON batches over HTTP for WARMUP + DURATION; each run checks its acknowledged
#      events against `SELECT count() FROM events FINAL`,
#   5. runs the ceiling: the same number of the same rows straight into a copy of `events`
#      with clickhouse-client (RowBinary on stdin, one INSERT and one client process per 100k
#      rows), BASELINE_REPEAT times,
#   6. times the ingest path's stages in process (thread CPU time) and the heap per request,
#   7. prints a summary (medians) and one JSON line, and stops everything it started.
#
# Loopback only; every step is bounded by `timeout`. About 8 minutes with the defaults, plus the
# build. Loadgen, server and ClickHouse share the machine; the loadgen reports the CPU taken by
# everything else ("other") so a busy machine shows in the figures.
#
# Knobs (environment): AGENTS=1000 BATCH_EVENTS=200 DURATION=60s WARMUP=10s RUNS=3
#   RATE= (events/s offered; empty = closed loop, measures capacity)
#   INSERT_MIN_INTERVAL= AUTH_CACHE_TTL= (passed to backlight-server when set)
#   BASELINE_REPEAT=3 (0 skips the ceiling) BASELINE_FORMAT=rowbinary|tsv
#   BASELINE_ROWS= (default: the events run 1 acknowledged)
#   PART_LOG=1 (ClickHouse keeps system.part_log; each run reports the new parts/s it caused)
#   PROFILE_STAGES=1 SKIP_BUILD=0 KEEP=0 (keep the work directory) RESULTS= (write the JSON there)
#   SERVER_BIN= (another build's backlight-server, for an A/B against this load generator)
#   BUILD_PROFILE=release (debug only to smoke-test this script: its figures mean nothing)
#   TMPDIR= (where the throwaway data directory, and so ClickHouse's parts, go: put it on the
#   disk you mean to measure. Each run prints the I/O stall it met; on this VM the root
#   filesystem's stalls cut a run to a third, see docs/BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=bench-ingest
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

AGENTS="${AGENTS:-1000}"
BATCH_EVENTS="${BATCH_EVENTS:-200}"
DURATION="${DURATION:-60s}"
WARMUP="${WARMUP:-10s}"
RUNS="${RUNS:-3}"
RATE="${RATE:-}"
INSERT_MIN_INTERVAL="${INSERT_MIN_INTERVAL:-}"
AUTH_CACHE_TTL="${AUTH_CACHE_TTL:-}"
BASELINE_REPEAT="${BASELINE_REPEAT:-3}"
BASELINE_FORMAT="${BASELINE_FORMAT:-rowbinary}"
BASELINE_ROWS="${BASELINE_ROWS:-}"
PROFILE_STAGES="${PROFILE_STAGES:-1}"
PART_LOG="${PART_LOG:-1}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP="${KEEP:-0}"
RESULTS="${RESULTS:-}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BUILD_PROFILE="${BUILD_PROFILE:-release}"

require curl jq timeout pgrep clickhouse-client

WORK="$(mktemp -d -t backlight-bench.XXXXXX)"
DATA="$WORK/data"
SERVER_PID=""
CH_PID=""
CHILD_PID=""

bench_traps "server log: $WORK/server.log"

build_bins -p backlight-server -p backlight-e2e
SERVER_BIN="${SERVER_BIN:-$TARGET_DIR/$BUILD_PROFILE/backlight-server}"
LOADGEN_BIN="$TARGET_DIR/$BUILD_PROFILE/backlight-loadgen"

load_generator_env
mkdir -p "$DATA"
if [ "$PART_LOG" = 1 ]; then
  # ClickHouse merges config.d/*.xml into the config.xml the server writes for it.
  mkdir -p "$DATA/clickhouse/config.d"
  echo '<yandex><part_log><database>system</database><table>part_log</table><flush_interval_milliseconds>1000</flush_interval_milliseconds></part_log></yandex>' \
    >"$DATA/clickhouse/config.d/part_log.xml"
fi
echo "==> starting backlight-server ($BUILD_PROFILE); ClickHouse: embedded, started by the server under $DATA/clickhouse"
# Every simulated agent is a connection from 127.0.0.1: lift the per-address cap (256) that a
# real fleet, each desktop on its own address, never meets.
server_args=(--data-dir "$DATA" --max-connections-per-ip 10000)
if [ -n "$INSERT_MIN_INTERVAL" ]; then server_args+=(--insert-min-interval "$INSERT_MIN_INTERVAL"); fi
if [ -n "$AUTH_CACHE_TTL" ]; then server_args+=(--auth-cache-ttl "$AUTH_CACHE_TTL"); fi
start_server "$SERVER_BIN" "$WORK/server.log" "${server_args[@]}"
URL="$STARTED_URL"
SERVER_PID="$STARTED_PID"
echo "    listening on $URL"

embedded_clickhouse "$DATA" "$SERVER_PID"
CH_TCP_PORT="$(sed -n 's:.*<tcp_port>\([0-9]*\)</tcp_port>.*:\1:p' "$DATA/clickhouse/config.xml")"
echo "    listening on $URL; server pid $SERVER_PID; ClickHouse $CH_VERSION pid ${CH_PID:-?} at $CH_URL (native port $CH_TCP_PORT)"

echo "==> creating tenant 'bench' and an enrollment key"
bounded 60 "$SERVER_BIN" --data-dir "$DATA" admin tenant create bench >/dev/null
KEY="$(timeout 60 "$SERVER_BIN" --data-dir "$DATA" admin enrollment-key create --tenant bench --note loadgen 2>/dev/null)"

loadgen_args=(--server "$URL" --agents "$AGENTS" --batch-events "$BATCH_EVENTS" --duration "$DURATION"
  --warmup "$WARMUP" --server-pid "$SERVER_PID" --clickhouse-url "$CH_URL")
if [ -n "$CH_PID" ]; then loadgen_args+=(--clickhouse-pid "$CH_PID"); fi
if [ -n "$RATE" ]; then loadgen_args+=(--rate "$RATE"); fi

: >"$WORK/load.jsonl"
for run in $(seq 1 "$RUNS"); do
  echo "==> load run $run/$RUNS: $AGENTS agents, $BATCH_EVENTS events/batch, $WARMUP warm-up + $DURATION"
  run_start="$(date +%s)"
  io_stall_before="$(io_full_stall_us)"
  BACKLIGHT_ENROLLMENT_KEY="$KEY" bounded 900 "$LOADGEN_BIN" "${loadgen_args[@]}" --label "run $run" \
    | tee "$WORK/load-$run.txt"
  run_json="$(tail -1 "$WORK/load-$run.txt")"
  # Time in which every task was stalled on I/O (Linux PSI "full"): on a disk whose metadata
  # writes stall (this VM's root filesystem), the same run gives a third of its throughput.
  io_stall_s="$(awk -v a="$io_stall_before" -v b="$(io_full_stall_us)" \
    'BEGIN { if (a == "" || b == "") print "null"; else printf "%.1f", (b - a) / 1e6 }')"
  echo "    I/O stall (PSI full) during the run: ${io_stall_s} s; ClickHouse data under $DATA"
  run_json="$(jq -c --argjson s "$io_stall_s" '. + {io_full_stall_s: $s}' <<<"$run_json")"
  if [ "$PART_LOG" = 1 ]; then
    # New parts per table this run wrote from its first INSERT into events on, per second of
    # the span in which it wrote them (enrollment excluded): what bounds merges and "too many
    # parts".
    curl -fsS "${CH_AUTH[@]}" --data-binary 'SYSTEM FLUSH LOGS' "$CH_URL/" >/dev/null || true
    parts="$(curl -fsS "${CH_AUTH[@]}" --data-binary "SELECT table, count() AS parts,
        toUInt32(max(event_time)) - toUInt32(min(event_time)) AS span_s
      FROM system.part_log WHERE toInt8(event_type) = 1 AND database = 'backlight'
        AND event_time >= (SELECT min(event_time) FROM system.part_log WHERE toInt8(event_type) = 1
          AND database = 'backlight' AND table = 'events' AND event_time >= toDateTime($run_start))
      GROUP BY table FORMAT JSONEachRow" "$CH_URL/" \
      | jq -s -c 'map({key: .table, value: ((.parts | tonumber) / ([(.span_s | tonumber), 1] | max))}) | from_entries' \
      2>/dev/null)" || parts=""
    # (18.16 names the event NEW_PART, later releases NewPart: compare its number.)
    [ -n "$parts" ] && jq -e 'type == "object"' >/dev/null 2>&1 <<<"$parts" || parts=null
    active="$(curl -fsS "${CH_AUTH[@]}" --data-binary "SELECT count() FROM system.parts WHERE active AND database = 'backlight' AND table = 'events'" "$CH_URL/" 2>/dev/null)" || active=""
    [[ "$active" =~ ^[0-9]+$ ]] || active=null
    # Background merges per table since the run began, as rows written and seconds spent: on
    # 2 cores merging, not the INSERTs, is what ClickHouse spends most of its time on under
    # this load. (Rows written, not part_log's read_rows: 18.16 over-counts those.)
    merged="$(curl -fsS "${CH_AUTH[@]}" --data-binary "SELECT table, count() AS merges,
        sum(rows) AS rows, sum(duration_ms) AS ms
      FROM system.part_log WHERE toInt8(event_type) = 2 AND database = 'backlight'
        AND event_time >= toDateTime($run_start)
      GROUP BY table FORMAT JSONEachRow" "$CH_URL/" \
      | jq -s -c 'map({key: .table, value: {merges: (.merges | tonumber), rows: (.rows | tonumber),
          seconds: ((.ms | tonumber) / 1000)}}) | from_entries' 2>/dev/null)" || merged=""
    [ -n "$merged" ] && jq -e 'type == "object"' >/dev/null 2>&1 <<<"$merged" || merged=null
    echo "    new parts/s (system.part_log): $parts; active parts of events now: $active"
    echo "    merges since the run began, per table: $merged"
    run_json="$(jq -c --argjson parts "$parts" --argjson active "$active" --argjson merged "$merged" \
      '. + {new_parts_per_s: $parts, events_active_parts_after: $active, merges: $merged}' <<<"$run_json")"
  fi
  echo "$run_json" >>"$WORK/load.jsonl"
  # Let ClickHouse's background merges of this run settle a little before the next one.
  if [ "$run" -lt "$RUNS" ]; then sleep 5; fi
done

BASELINE_JSON='{"rows_per_s": null, "format": null}'
if [ "$BASELINE_REPEAT" -gt 0 ]; then
  ROWS="${BASELINE_ROWS:-$(head -1 "$WORK/load.jsonl" | jq '.acked_events')}"
  echo "==> ceiling: $ROWS rows straight into ClickHouse with clickhouse-client ($BASELINE_FORMAT), $BASELINE_REPEAT times"
  bounded 900 "$LOADGEN_BIN" --baseline --rows "$ROWS" --agents "$AGENTS" --batch-events "$BATCH_EVENTS" \
    --repeat "$BASELINE_REPEAT" --format "$BASELINE_FORMAT" --clickhouse-url "$CH_URL" \
    --clickhouse-tcp-port "$CH_TCP_PORT" --clickhouse-pid "${CH_PID:-0}" --work-dir "$WORK" \
    | tee "$WORK/baseline.txt"
  BASELINE_JSON="$(tail -1 "$WORK/baseline.txt")"
fi

PROFILE_JSON=null
if [ "$PROFILE_STAGES" = 1 ]; then
  echo "==> stage profile (in process, thread CPU time)"
  bounded 300 "$LOADGEN_BIN" --profile-stages --batch-events "$BATCH_EVENTS" | tee "$WORK/profile.txt"
  PROFILE_JSON="$(tail -1 "$WORK/profile.txt")"
fi

MACHINE="$(jq -n --arg nproc "$(nproc)" --arg mem "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)" \
  --arg cpu "$(sed -n 's/^model name\s*:\s*//p' /proc/cpuinfo | head -1)" --arg kernel "$(uname -sr)" \
  --arg ch "$CH_VERSION" '{nproc: ($nproc|tonumber), ram: $mem, cpu: $cpu, kernel: $kernel, clickhouse: $ch}')"
SUMMARY="$(jq -s -c --argjson baseline "$BASELINE_JSON" --argjson profile "$PROFILE_JSON" --argjson machine "$MACHINE" \
  --arg agents "$AGENTS" --arg rate "$RATE" '
  def median: sort | if length == 0 then null else .[(length / 2 | floor)] end;
  {
    runs: length,
    agents: ($agents | tonumber),
    rate_offered: (if $rate == "" then null else ($rate | tonumber) end),
    events_per_s: (map(.events_per_s) | median),
    events_per_s_runs: map(.events_per_s),
    p50_ms: (map(.latency_ms.p50) | median),
    p90_ms: (map(.latency_ms.p90) | median),
    p99_ms: (map(.latency_ms.p99) | median),
    max_ms: (map(.latency_ms.max) | max),
    server_peak_rss_mb: (map(.server_peak_rss_mb) | max),
    all_stored_match: (map(.stored_matches_acked) | all),
    errors: (map(.errors | to_entries) | add | group_by(.key) | map({key: .[0].key, value: (map(.value) | add)}) | from_entries),
    cpu_cores: {server: (map(.cpu_cores.server) | median), clickhouse: (map(.cpu_cores.clickhouse) | median),
                loadgen: (map(.cpu_cores.loadgen) | median), machine_busy: (map(.cpu_cores.machine_busy) | median),
                other: (map(if .cpu_cores.machine_busy and .cpu_cores.server and .cpu_cores.clickhouse and .cpu_cores.loadgen
                            then .cpu_cores.machine_busy - .cpu_cores.server - .cpu_cores.clickhouse - .cpu_cores.loadgen
                            else empty end) | median)},
    rows_per_insert: (map(.rows_per_insert) | median),
    inserts_per_s: (map(.inserts_per_s) | median),
    events_new_parts_per_s: (map(.new_parts_per_s.events // empty) | median),
    all_new_parts_per_s: (map(.new_parts_per_s // empty | [.[]] | add) | median),
    new_parts_per_s_runs: map(.new_parts_per_s),
    merges_runs: map(.merges),
    io_full_stall_s_runs: map(.io_full_stall_s),
    ceiling_rows_per_s: $baseline.rows_per_s,
    ceiling_rows_per_s_without_client_startup: $baseline.rows_per_s_without_client_startup,
    ceiling_format: $baseline.format,
    ratio: (if $baseline.rows_per_s then (map(.events_per_s) | median) / $baseline.rows_per_s else null end),
    target_met: (((map(.events_per_s) | median) >= 100000) and (.[0].agents >= 1000) and ((map(.server_peak_rss_mb) | max) < 150)),
    machine: $machine,
    profile: $profile
  }' "$WORK/load.jsonl")"

echo
echo "== Ingest benchmark summary (median of $RUNS runs)"
jq -r '
  def r(n): if . == null then "?" else (. * n | round / n) end;
  "machine         \(.machine.nproc) cores (\(.machine.cpu)), \(.machine.ram) RAM, \(.machine.kernel); ClickHouse \(.machine.clickhouse), embedded",
  "load            \(.agents) agents, \(if .rate_offered then "paced at \(.rate_offered) events/s" else "closed loop" end); server, ClickHouse and loadgen share the machine",
  "server          \(.events_per_s) events/s acknowledged (runs: \(.events_per_s_runs | map(tostring) | join(", "))); stored = acked in every run: \(.all_stored_match)",
  "latency         p50 \(.p50_ms | r(10)) ms, p90 \(.p90_ms | r(10)) ms, p99 \(.p99_ms | r(10)) ms, max \(.max_ms | r(10)) ms",
  "errors          \(if (.errors | length) == 0 then "none" else (.errors | to_entries | map("\(.key): \(.value)") | join(", ")) end)",
  "server RSS      peak \(.server_peak_rss_mb | r(10)) MB",
  "cpu (cores)     server \(.cpu_cores.server | r(100)), clickhouse \(.cpu_cores.clickhouse | r(100)), loadgen \(.cpu_cores.loadgen | r(100)), other processes \(.cpu_cores.other | r(100)), machine busy \(.cpu_cores.machine_busy | r(100)) of \(.machine.nproc)",
  "inserts         \(.inserts_per_s | r(10)) INSERTs/s of \(.rows_per_insert | r(1)) rows",
  "new parts       \(.events_new_parts_per_s | r(10))/s in events, \(.all_new_parts_per_s | r(10))/s in all backlight tables (system.part_log)",
  "I/O stall       \(.io_full_stall_s_runs | map(if . == null then "?" else "\(.) s" end) | join(", ")) per run (PSI full; seconds in which every task waited on the disk)",
  "ceiling         \(if .ceiling_rows_per_s then "\(.ceiling_rows_per_s) rows/s (clickhouse-client \(.ceiling_format), same rows; \(.ceiling_rows_per_s_without_client_startup) rows/s without client start-ups)" else "not measured (BASELINE_REPEAT=0)" end)",
  "ratio           server / ceiling = \(.ratio | r(1000))",
  "target          >= 100,000 events/s from >= 1,000 agents with RSS < 150 MB: \(if .target_met then "MET" else "NOT MET" end)"
' <<<"$SUMMARY"
echo "$SUMMARY"
if [ -n "$RESULTS" ]; then echo "$SUMMARY" >"$RESULTS"; fi
