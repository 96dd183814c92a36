#!/usr/bin/env bash
# Ingest on a 2-shard ClickHouse cluster against one ClickHouse, measured in the same run, and
# the per-node figures deploy/README.md ("Sizing") is computed from (docs/BENCHMARKS.md,
# "Cluster"):
#
#   1. builds the release binaries (backlight-server, backlight-loadgen, backlight-cluster);
#   2. starts two throwaway ClickHouse setups with backlight-cluster (the test harness's cluster:
#      a ZooKeeper and clickhouse-server processes on loopback, all with the same settings):
#      "single", one node, and "cluster", two shards of one replica;
#   3. starts a release backlight-server on each (on the cluster with --clickhouse-cluster,
#      talking to shard 1's node; the Distributed tables send shard 2's rows on), and creates a
#      tenant and an enrollment key on each;
#   4. RUNS rounds, each a load run on "single" then on "cluster": backlight-loadgen with AGENTS
#      simulated agents, closed loop (capacity), WARMUP + DURATION, acknowledged events checked
#      against count() FINAL; the CPU of every ClickHouse process of the setup from /proc over
#      the run plus SETTLE seconds of merges after it;
#   5. one more run on "single" with SMALL_AGENTS agents sending SMALL_BATCH events per request
#      (desktops upload a few events at a time), for the server's CPU per request;
#   6. on each setup: bytes on disk per stored event (every table, and `events` alone), after
#      the merges settled; and the ClickHouse CPU of LOOKUPS one-item status reads (the
#      server's read of `item_lookup`), timed straight against ClickHouse through the node the
#      server uses;
#   7. prints a summary (medians, cluster / single ratios) and one JSON line; stops everything.
#
# Loopback only; every step is bounded. Both setups share this machine's cores, so the ratio
# shows what the cluster costs per event (Distributed routing, ZooKeeper, one more hop), not
# what a second machine adds: that follows from the per-node figures (deploy/README.md).
# Run under `flock /work/wt/bench.lock` on shared machines.
#
# Knobs (environment): AGENTS=200 BATCH_EVENTS=200 DURATION=30s WARMUP=5s RUNS=3 SETTLE=5
#   LOOKUPS=300 SMALL_AGENTS=1000 SMALL_BATCH=5 SKIP_BUILD=0 KEEP=0 RESULTS= (write the JSON there)
#   BUILD_PROFILE=release (debug only to smoke-test this script: its figures mean nothing)
set -euo pipefail
cd "$(dirname "$0")/.."

AGENTS="${AGENTS:-200}"
BATCH_EVENTS="${BATCH_EVENTS:-200}"
DURATION="${DURATION:-30s}"
WARMUP="${WARMUP:-5s}"
RUNS="${RUNS:-3}"
SETTLE="${SETTLE:-5}"
LOOKUPS="${LOOKUPS:-300}"
SMALL_BATCH="${SMALL_BATCH:-5}"
SMALL_AGENTS="${SMALL_AGENTS:-1000}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP="${KEEP:-0}"
RESULTS="${RESULTS:-}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BUILD_PROFILE="${BUILD_PROFILE:-release}"
BIN="$TARGET_DIR/$BUILD_PROFILE"
DATABASE=bench

for tool in curl jq timeout; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench-cluster: $tool is required" >&2; exit 1; }
done

WORK="$(mktemp -d -t backlight-bench-cluster.XXXXXX)"
PIDS=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Servers first (they write into ClickHouse), then the ClickHouse setups.
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    # A setup removes its nodes' data on SIGTERM: millions of rows take a while to delete.
    for _ in $(seq 1 240); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then
    echo "bench-cluster: work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$SKIP_BUILD" != 1 ]; then
  echo "==> building $BUILD_PROFILE binaries"
  if [ "$BUILD_PROFILE" = release ]; then
    timeout 3600 cargo build --release -p backlight-server -p backlight-e2e
  else
    timeout 3600 cargo build -p backlight-server -p backlight-e2e
  fi
fi

# The load generator enrolls hundreds of simulated desktops within seconds: lift the enrollment
# rate limits (docs/security.md) so the runs measure ingest, not the limit.
export BACKLIGHT_ENROLL_RATE=100000 BACKLIGHT_ENROLL_KEY_RATE=100000

# ClickHouse over HTTP as user `default` of the setup (the harness's nodes share a password).
chq() {
  local pass="$1"; shift
  curl -fsS -H "X-ClickHouse-User: default" -H "X-ClickHouse-Key: $pass" "$@"
}

BENCH_NAME=bench-cluster
# free_port: one below the kernel's ephemeral range, which ClickHouse's nodes draw from.
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

# CPU ticks (utime + stime) of the given pids, summed.
ticks() {
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
HZ="$(getconf CLK_TCK)"

# setup NAME SHARDS EXTRA_SERVER_ARGS...: a ClickHouse setup and a server on it.
setup() {
  local name="$1" shards="$2"; shift 2
  local dir="$WORK/$name"
  mkdir -p "$dir"
  "$BIN/backlight-cluster" --shards "$shards" --replicas 1 >"$dir/cluster.json" 2>"$dir/cluster.log" &
  PIDS+=("$!")
  for _ in $(seq 1 240); do [ -s "$dir/cluster.json" ] && break; sleep 0.5; done
  [ -s "$dir/cluster.json" ] || { echo "$name: cluster did not start"; cat "$dir/cluster.log"; exit 1; }
  local ch_url port url
  ch_url="$(jq -r '.nodes[0].url' "$dir/cluster.json")"
  export BACKLIGHT_CLICKHOUSE_USER=default
  BACKLIGHT_CLICKHOUSE_PASSWORD="$(jq -r '.password' "$dir/cluster.json")"
  export BACKLIGHT_CLICKHOUSE_PASSWORD
  port="$(free_port)"
  url="http://127.0.0.1:$port"
  "$BIN/backlight-server" --listen "127.0.0.1:$port" --data-dir "$dir/server" \
    --clickhouse-url "$ch_url" --clickhouse-database "$DATABASE" "$@" >"$dir/server.log" 2>&1 &
  PIDS+=("$!")
  echo "$!" >"$dir/server.pid"
  for _ in $(seq 1 360); do
    curl -fsS "$url/readyz" >/dev/null 2>&1 && break
    kill -0 "$(cat "$dir/server.pid")" 2>/dev/null || break
    sleep 0.5
  done
  curl -fsS "$url/readyz" >/dev/null || { echo "$name: server not ready"; tail -20 "$dir/server.log"; exit 1; }
  echo "$url" >"$dir/url"
  local admin=("$BIN/backlight-server" --data-dir "$dir/admin" --clickhouse-url "$ch_url"
    --clickhouse-database "$DATABASE" "$@" admin)
  timeout 120 "${admin[@]}" tenant create bench >/dev/null
  timeout 120 "${admin[@]}" enrollment-key create --tenant bench --note bench-cluster 2>/dev/null >"$dir/key"
  echo "    $name: $(jq -r '[.nodes[].url] | join(", ")' "$dir/cluster.json") (ClickHouse), server $url"
}

echo "==> starting the two setups"
setup single 1
setup cluster 2 --clickhouse-cluster backlight
CH_VERSION="$(chq "$(jq -r '.password' "$WORK/single/cluster.json")" --data-binary 'SELECT version()' "$(jq -r '.nodes[0].url' "$WORK/single/cluster.json")/")"

# run NAME ROUND [BATCH AGENTS]: one load run; appends a JSON line to $WORK/NAME/runs.jsonl
# (or small.jsonl for the SMALL_BATCH run).
run() {
  local name="$1" round="$2" dir="$WORK/$1" batch="${3:-$BATCH_EVENTS}" agents="${4:-$AGENTS}"
  local out="$WORK/$1/runs.jsonl"
  if [ "$batch" != "$BATCH_EVENTS" ]; then out="$WORK/$1/small.jsonl"; fi
  local ch_pids=() before after secs
  mapfile -t ch_pids < <(jq -r '.nodes[].pid' "$dir/cluster.json")
  before="$(ticks "${ch_pids[@]}")"
  BACKLIGHT_CLICKHOUSE_PASSWORD="$(jq -r '.password' "$dir/cluster.json")" \
  BACKLIGHT_ENROLLMENT_KEY="$(cat "$dir/key")" timeout 900 "$BIN/backlight-loadgen" \
    --server "$(cat "$dir/url")" --agents "$agents" --batch-events "$batch" \
    --duration "$DURATION" --warmup "$WARMUP" --server-pid "$(cat "$dir/server.pid")" \
    --clickhouse-url "$(jq -r '.nodes[0].url' "$dir/cluster.json")" --clickhouse-database "$DATABASE" \
    --label "$name $round" >"$dir/load-$round.txt"
  sleep "$SETTLE"
  after="$(ticks "${ch_pids[@]}")"
  secs="$(awk -v a="$after" -v b="$before" -v hz="$HZ" 'BEGIN { print (a - b) / hz }')"
  tail -1 "$dir/load-$round.txt" | jq -c --argjson ch "$secs" '. + {clickhouse_cpu_s_all_nodes: $ch,
    clickhouse_us_per_event: (if .acked_events > 0 then $ch * 1e6 / .acked_events else null end),
    server_us_per_request: (if .requests_per_s > 0 then .cpu_cores.server * 1e6 / .requests_per_s else null end),
    server_us_per_event: (if .events_per_s > 0 then .cpu_cores.server * 1e6 / .events_per_s else null end)}' >>"$out"
  jq -r '"    \(.label) (\(.batch_events) events/request): \(.events_per_s) events/s, \(.requests_per_s) requests/s, p99 \(.latency_ms.p99) ms, ClickHouse \(.clickhouse_us_per_event | . * 10 | round / 10) µs CPU per event (all nodes), server \(.server_us_per_request | round) µs CPU per request, stored = acked: \(.stored_matches_acked)"' \
    <<<"$(tail -1 "$out")"
}

for round in $(seq 1 "$RUNS"); do
  echo "==> round $round/$RUNS: $AGENTS agents, $BATCH_EVENTS events/batch, $WARMUP + $DURATION each"
  run single "$round"
  run cluster "$round"
done

# disk NAME: bytes on disk per stored event, summed over the nodes.
disk() {
  local dir="$WORK/$1" url parts events total=0 events_bytes=0
  for url in $(jq -r '.nodes[].url' "$dir/cluster.json"); do
    parts="$(chq "$(jq -r '.password' "$dir/cluster.json")" --data-binary "SELECT sum(bytes_on_disk), sumIf(bytes_on_disk, table IN ('events', 'events_local')) FROM system.parts WHERE database = '$DATABASE' AND active FORMAT TSV" "$url/")"
    total=$((total + $(cut -f1 <<<"$parts")))
    events_bytes=$((events_bytes + $(cut -f2 <<<"$parts")))
  done
  url="$(jq -r '.nodes[0].url' "$dir/cluster.json")"
  events="$(chq "$(jq -r '.password' "$dir/cluster.json")" --data-binary "SELECT count() FROM $DATABASE.events FINAL" "$url/")"
  jq -n --argjson total "$total" --argjson ev "$events_bytes" --argjson n "$events" \
    '{events: $n, bytes_all_tables: $total, bytes_per_event_all_tables: ($total / $n), bytes_per_event_events_table: ($ev / $n)}'
}

# lookups NAME: ClickHouse CPU per one-item status read, all nodes, through the server's node.
lookups() {
  local dir="$WORK/$1" url ch_pids=() before after items
  url="$(jq -r '.nodes[0].url' "$dir/cluster.json")"
  mapfile -t ch_pids < <(jq -r '.nodes[].pid' "$dir/cluster.json")
  mapfile -t items < <(chq "$(jq -r '.password' "$dir/cluster.json")" --data-binary "SELECT DISTINCT item_id FROM $DATABASE.item_lookup WHERE tenant_id = 'bench' LIMIT $LOOKUPS FORMAT TSV" "$url/")
  local settings="load_balancing=in_order&prefer_localhost_replica=0&database=$DATABASE"
  before="$(ticks "${ch_pids[@]}")"
  local started=$SECONDS
  for item in "${items[@]}"; do
    chq "$(jq -r '.password' "$dir/cluster.json")" -o /dev/null --data-binary "SELECT item_id, row FROM item_lookup WHERE tenant_id = 'bench' AND item_id IN (SELECT arrayJoin(['$item'])) LIMIT 1000 SETTINGS max_threads = 1" "$url/?$settings"
  done
  after="$(ticks "${ch_pids[@]}")"
  jq -n --argjson n "${#items[@]}" --argjson t "$(awk -v a="$after" -v b="$before" -v hz="$HZ" 'BEGIN { print (a - b) / hz }')" \
    '{lookups: $n, clickhouse_ms_per_lookup: (if $n > 0 then $t * 1000 / $n else null end)}'
}

echo "==> small requests: $SMALL_AGENTS agents, $SMALL_BATCH events/request, on single"
run single small "$SMALL_BATCH" "$SMALL_AGENTS"

echo "==> waiting ${SETTLE}0 s for merges, then disk and lookups"
sleep "$((SETTLE * 10))"
for name in single cluster; do
  jq -n --argjson disk "$(disk "$name")" --argjson lookups "$(lookups "$name")" \
    '{disk: $disk, lookups: $lookups}' >"$WORK/$name/static.json"
done

SUMMARY="$(jq -n -c \
  --slurpfile single "$WORK/single/runs.jsonl" --slurpfile cluster "$WORK/cluster/runs.jsonl" \
  --slurpfile single_static "$WORK/single/static.json" --slurpfile cluster_static "$WORK/cluster/static.json" \
  --slurpfile small "$WORK/single/small.jsonl" \
  --arg agents "$AGENTS" --arg version "$CH_VERSION" --arg nproc "$(nproc)" '
  def median: sort | if length == 0 then null else .[(length / 2 | floor)] end;
  def figures(runs; static): {
    events_per_s: (runs | map(.events_per_s) | median),
    events_per_s_runs: (runs | map(.events_per_s)),
    p99_ms: (runs | map(.latency_ms.p99) | median),
    clickhouse_us_per_event: (runs | map(.clickhouse_us_per_event) | median),
    server_cores: (runs | map(.cpu_cores.server) | median),
    server_us_per_event: (runs | map(.server_us_per_event) | median),
    all_stored_match: (runs | map(.stored_matches_acked) | all),
    disk: static[0].disk, lookups: static[0].lookups };
  { agents: ($agents | tonumber), clickhouse: $version, nproc: ($nproc | tonumber),
    single: figures($single; $single_static), cluster: figures($cluster; $cluster_static),
    small_requests: ($small[0] | {batch_events, events_per_s, requests_per_s, server_us_per_request,
                                  clickhouse_us_per_event, p99_ms: .latency_ms.p99}) }
  | .ratio = { events_per_s: (.cluster.events_per_s / .single.events_per_s),
               clickhouse_cpu_per_event: (.cluster.clickhouse_us_per_event / .single.clickhouse_us_per_event),
               bytes_per_event: (.cluster.disk.bytes_per_event_all_tables / .single.disk.bytes_per_event_all_tables),
               lookup_cpu: (.cluster.lookups.clickhouse_ms_per_lookup / .single.lookups.clickhouse_ms_per_lookup) }')"

echo
echo "== Cluster benchmark summary (median of $RUNS rounds; ClickHouse $CH_VERSION; $(nproc) cores shared by everything)"
jq -r '
  def r(n): if . == null then "?" else (. * n | round / n) end;
  def line(name; f): "\(name)  \(f.events_per_s) events/s (runs \(f.events_per_s_runs | map(tostring) | join(", "))), p99 \(f.p99_ms | r(1)) ms; ClickHouse \(f.clickhouse_us_per_event | r(10)) µs CPU/event; \(f.disk.bytes_per_event_all_tables | r(10)) B/event on disk (events table \(f.disk.bytes_per_event_events_table | r(10)) B); lookup \(f.lookups.clickhouse_ms_per_lookup | r(100)) ms ClickHouse CPU; stored = acked: \(f.all_stored_match)";
  line("single "; .single), line("cluster"; .cluster),
  "small    \(.small_requests.batch_events) events/request on single: \(.small_requests.requests_per_s) requests/s, p99 \(.small_requests.p99_ms | r(1)) ms, server \(.small_requests.server_us_per_request | r(1)) µs CPU per request",
  "ratio    cluster / single: events/s \(.ratio.events_per_s | r(100)), ClickHouse CPU per event \(.ratio.clickhouse_cpu_per_event | r(100)), bytes per event \(.ratio.bytes_per_event | r(100)), lookup CPU \(.ratio.lookup_cpu | r(100))"
' <<<"$SUMMARY"
echo "$SUMMARY"
if [ -n "$RESULTS" ]; then echo "$SUMMARY" >"$RESULTS"; fi
