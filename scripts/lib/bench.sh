# Helpers shared by the bench-*.sh scripts; sourced after `cd` to the repository root.
# BENCH_NAME names the script in messages.

# Runs a command in the background so the caller's trap can stop it (its pid is in CHILD_PID
# meanwhile), bounded by `timeout`.
bounded() {
  local limit="$1"; shift
  timeout --kill-after=10s "$limit" "$@" &
  CHILD_PID=$!
  local rc=0
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

# A port below the kernel's ephemeral range, so the ports the embedded ClickHouse (or anyone
# else) gets from the kernel never collide with it.
free_port() {
  local low=20000 high=32767 port
  read -r ephemeral _ </proc/sys/net/ipv4/ip_local_port_range || ephemeral=32768
  if [ "$ephemeral" -le "$high" ]; then high=$((ephemeral - 1)); fi
  if [ "$high" -le "$low" ]; then low=10000; fi
  for _ in $(seq 1 100); do
    port=$(( low + RANDOM % (high - low) ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
  done
  echo "${BENCH_NAME:-bench}: no free port found" >&2
  return 1
}

# The servers start_server started; stop_servers (from the script's cleanup) stops them.
SERVER_PIDS=()

# start_server BIN LOG [ARGS...]
# Starts the backlight-server BIN with ARGS on a free loopback port (it adds `--listen`), its
# output in LOG, and waits up to 120 s for /readyz. A port taken between choosing and binding it
# is retried on another (3 attempts). Sets STARTED_URL and STARTED_PID; on failure prints the
# end of LOG and exits (the script's cleanup then stops what is left).
start_server() {
  local bin="$1" log="$2"; shift 2
  local attempt port url pid
  for attempt in 1 2 3; do
    port="$(free_port)"
    url="http://127.0.0.1:$port"
    "$bin" --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
    pid=$!
    SERVER_PIDS+=("$pid")
    for _ in $(seq 1 240); do
      curl -fsS "$url/readyz" >/dev/null 2>&1 && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if curl -fsS "$url/readyz" >/dev/null 2>&1; then
      STARTED_URL="$url"
      STARTED_PID="$pid"
      return 0
    fi
    if kill -0 "$pid" 2>/dev/null; then echo "server not ready after 120 s:"; tail -20 "$log"; exit 1; fi
    wait "$pid" 2>/dev/null || true
    unset 'SERVER_PIDS[-1]'
    if [ "$attempt" -lt 3 ] && grep -q "Address already in use" "$log"; then
      echo "    port $port was taken meanwhile; trying another"
      sleep 3  # the embedded ClickHouse of the failed start stops on its parent's death
      continue
    fi
    echo "server exited:"; tail -20 "$log"; exit 1
  done
}

# Stops every server start_server started: TERM (a server stops its embedded ClickHouse
# itself), KILL after 30 s.
stop_servers() {
  local pid
  for pid in "${SERVER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  SERVER_PIDS=()
}

# embedded_clickhouse DATA PID
# The embedded ClickHouse of the server PID whose data directory is DATA: sets CH_URL, CH_PID
# (empty if not found), CH_VERSION and CH_AUTH (curl's login headers), and exports its password
# (0600 in its directory) as BACKLIGHT_CLICKHOUSE_PASSWORD for the load generators.
embedded_clickhouse() {
  local data="$1" pid="$2"
  CH_URL="$(cat "$data/clickhouse/endpoint")"
  BACKLIGHT_CLICKHOUSE_PASSWORD="$(cat "$data/clickhouse/password" 2>/dev/null || true)"
  export BACKLIGHT_CLICKHOUSE_PASSWORD
  CH_AUTH=(-H "X-ClickHouse-User: default" -H "X-ClickHouse-Key: $BACKLIGHT_CLICKHOUSE_PASSWORD")
  CH_PID="$(pgrep -P "$pid" | head -1 || true)"
  CH_VERSION="$(curl -fsS "${CH_AUTH[@]}" --data-binary 'SELECT version()' "$CH_URL/")"
}

# require TOOL...: exits naming the first TOOL that is not installed.
require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "${BENCH_NAME:-bench}: $tool is required" >&2; exit 1; }
  done
}

# build_bins CARGO_ARGS...: `cargo build` in BUILD_PROFILE (release unless set), bounded; nothing
# with SKIP_BUILD=1.
build_bins() {
  if [ "${SKIP_BUILD:-0}" = 1 ]; then return 0; fi
  local profile="${BUILD_PROFILE:-release}"
  echo "==> building $profile binaries"
  if [ "$profile" = release ]; then
    bounded 3600 cargo build --release "$@"
  else
    bounded 3600 cargo build "$@"
  fi
}

# bench_traps NOTE: on exit (any exit), stop what the script started — its own `stop_more`
# function first if it defines one, then the bounded child, the servers, and the embedded
# ClickHouse (CH_PID, which ends after its server) — then keep WORK when KEEP=1 or the run
# failed (saying so, with NOTE about its contents) or remove it.
bench_traps() {
  BENCH_NOTE="$1"
  trap bench_exit EXIT
  trap 'exit 130' INT TERM
}

bench_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if declare -F stop_more >/dev/null; then stop_more; fi
  if [ -n "${CHILD_PID:-}" ] && kill -0 "$CHILD_PID" 2>/dev/null; then
    kill -TERM "$CHILD_PID" 2>/dev/null || true
  fi
  stop_servers
  if [ -n "${CH_PID:-}" ] && kill -0 "$CH_PID" 2>/dev/null; then
    for _ in $(seq 1 30); do kill -0 "$CH_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$CH_PID" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then
    echo "${BENCH_NAME:-bench}: work directory kept: $WORK${BENCH_NOTE:+ ($BENCH_NOTE)}" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}

# load_generator_env: a load generator enrolls hundreds of simulated desktops within seconds:
# lift the server's enrollment rate limits (docs/security.md) so a run measures capacity, not
# the limit, and export a fresh BACKLIGHT_METRICS_TOKEN, which the server then requires on
# /metrics and the generators read its counters with (an older SERVER_BIN ignores all three).
load_generator_env() {
  export BACKLIGHT_ENROLL_RATE=100000 BACKLIGHT_ENROLL_KEY_RATE=100000
  BACKLIGHT_METRICS_TOKEN="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  export BACKLIGHT_METRICS_TOKEN
}

# Microseconds for which every task on the machine was stalled on I/O (Linux PSI, "full"), or
# nothing when the kernel keeps no pressure figures. Two readings bracket a run.
io_full_stall_us() {
  awk '/^full/ { for (i = 1; i <= NF; i++) if ($i ~ /^total=/) { sub("total=", "", $i); print $i } }' \
    /proc/pressure/io 2>/dev/null || true
}
