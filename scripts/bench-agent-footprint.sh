#!/usr/bin/env bash
# The agent footprint benchmark (docs/BENCHMARKS.md, "Agent footprint"): what the desktop
# agent costs the desk it runs on. Not a timed test: a measurement to run by hand (or nightly).
#
#   1. builds the release binaries (SKIP_BUILD=1 to reuse them),
#   2. starts a private Xvfb on a free display (from :90 upward), a window manager when one is
#      installed (openbox; WM=none to go without: focus is then followed through
#      GetInputFocus), and three xmessage windows posing as three apps (WM_CLASS),
#   3. switches the focused window every SWITCH_EVERY seconds with xdotool, renames a window
#      every fourth switch and moves the pointer now and then, so captures see real changes,
#   4. runs the thing measured for DURATION seconds:
#        - MODE=agent: `backlight-agent run --source desktop` (consent granted first) against a
#          release backlight-server with embedded ClickHouse, uploading through a counting
#          loopback proxy;
#        - MODE=probe: the `capture_probe` example, sampling the X11 backend once a second
#          (the backend's own cost, without spool or uploads);
#        - MODE=auto (default): agent when `backlight-agent run --help` mentions the `desktop`
#          source, otherwise probe,
#   5. reports peak RSS (VmHWM), average CPU (utime+stime over wall time, % of one core,
#      including start-up), the stripped release binary's size, and bytes uploaded per hour
#      (agent mode), then one JSON line.
#
# Bytes uploaded are counted on the wire: the agent talks to the server through a small
# loopback TCP proxy (python3) that counts every byte the agent sends (HTTP request lines,
# headers and zstd bodies; no TLS on loopback) after enrollment. That is what the customer's
# network carries, which the server's /metrics (decompressed rows, no headers) cannot say.
#
# Knobs (environment): DURATION=600 (seconds) SWITCH_EVERY=3 MODE=auto|agent|probe
#   AGENT_SOURCE=desktop (agent mode; e.g. `none` to measure the agent's idle baseline)
#   WM=auto|openbox|none SKIP_BUILD=0 KEEP=0 (keep the work directory) RESULTS= (write the JSON)
# Needs: Xvfb (xvfb), xdotool, xmessage (x11-utils); agent mode also curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-600}"
SWITCH_EVERY="${SWITCH_EVERY:-3}"
MODE="${MODE:-auto}"
AGENT_SOURCE="${AGENT_SOURCE:-desktop}"
WM="${WM:-auto}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP="${KEEP:-0}"
RESULTS="${RESULTS:-}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
AGENT_BIN="$TARGET_DIR/agent/backlight-agent"   # the size-tuned profile the agent ships with
PROBE_BIN="$TARGET_DIR/release/examples/capture_probe"
SERVER_BIN="$TARGET_DIR/release/backlight-server"

for tool in Xvfb xdotool xmessage timeout; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "bench-agent-footprint: $tool is required (apt-get install xvfb xdotool x11-utils)" >&2
    exit 1
  }
done

WORK="$(mktemp -d -t backlight-footprint.XXXXXX)"
PIDS=()          # background helpers, stopped in reverse order
MEASURED_PID=""
SERVER_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$MEASURED_PID" ]; then kill -TERM "$MEASURED_PID" 2>/dev/null || true; fi
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    # The server stops its embedded ClickHouse itself after a TERM.
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then
    echo "bench-agent-footprint: work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- build and mode -------------------------------------------------------------------------
if [ "$SKIP_BUILD" != 1 ]; then
  echo "==> building release binaries (the agent with its shipping profile, see Cargo.toml)"
  timeout 3600 cargo build --profile agent -p backlight-agent --bin backlight-agent
  timeout 3600 cargo build --release -p backlight-agent --example capture_probe
fi
if [ "$MODE" = auto ]; then
  if "$AGENT_BIN" run --help 2>/dev/null | grep -qw desktop; then MODE=agent; else MODE=probe; fi
fi
echo "==> mode: $MODE"
if [ "$MODE" = agent ] && [ "$SKIP_BUILD" != 1 ]; then
  timeout 3600 cargo build --release -p backlight-server
fi

# ---- X display, window manager, windows -------------------------------------------------
DISPLAY_NUM=""
for n in $(seq 90 400); do
  [ -e "/tmp/.X$n-lock" ] || [ -e "/tmp/.X11-unix/X$n" ] && continue
  Xvfb ":$n" -nolisten tcp -noreset -screen 0 1280x800x24 >"$WORK/xvfb.log" 2>&1 &
  xpid=$!
  for _ in $(seq 1 200); do
    # Ours once the lock file names our pid (another server may have won the number).
    if [ "$( (tr -d ' \n' <"/tmp/.X$n-lock") 2>/dev/null)" = "$xpid" ] && [ -S "/tmp/.X11-unix/X$n" ]; then
      DISPLAY_NUM=$n; break
    fi
    kill -0 "$xpid" 2>/dev/null || break
    sleep 0.05
  done
  if [ -n "$DISPLAY_NUM" ]; then PIDS+=("$xpid"); break; fi
  kill "$xpid" 2>/dev/null || true
done
[ -n "$DISPLAY_NUM" ] || { echo "bench-agent-footprint: no free X display" >&2; exit 1; }
export DISPLAY=":$DISPLAY_NUM"
unset WAYLAND_DISPLAY
for _ in $(seq 1 100); do xdotool getmouselocation >/dev/null 2>&1 && break; sleep 0.1; done
echo "    Xvfb on $DISPLAY"

if [ "$WM" = auto ]; then
  if command -v openbox >/dev/null 2>&1; then WM=openbox; else WM=none; fi
fi
if [ "$WM" = openbox ]; then
  openbox >"$WORK/wm.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 100); do
    xprop -root _NET_SUPPORTING_WM_CHECK 2>/dev/null | grep -q 'window id' && break
    sleep 0.1
  done
fi
echo "    window manager: $WM"

TITLES=("Invoice 4711 - Ledger" "Inbox 3 - Mail" "Ticket 982 - Helpdesk")
# Three different applications: the agent records the app (WM_CLASS) and, by default, not the
# title, so windows of one app would merge into one long span and hide the recording cost.
CLASSES=(Ledger Mail Helpdesk)
for t in "${TITLES[@]}"; do
  xmessage -title "$t" -geometry 400x200 "$t" >/dev/null 2>&1 &
  PIDS+=("$!")
done
WINDOWS=()
for t in "${TITLES[@]}"; do
  w=""
  for _ in $(seq 1 100); do
    w="$(xdotool search --name "^${t}\$" 2>/dev/null | head -1 || true)"
    [ -n "$w" ] && break
    sleep 0.1
  done
  [ -n "$w" ] || { echo "bench-agent-footprint: window '$t' did not appear" >&2; exit 1; }
  class="${CLASSES[${#WINDOWS[@]}]}"
  xdotool set_window --classname "${class,,}" --class "$class" "$w"
  WINDOWS+=("$w")
done

switcher() {
  local i=0 w
  while true; do
    w="${WINDOWS[$((i % ${#WINDOWS[@]}))]}"
    if [ "$WM" = none ]; then xdotool windowfocus "$w"; else xdotool windowactivate "$w"; fi
    if [ $((i % 4)) = 3 ]; then xdotool set_window --name "Renamed $i - Ledger" "$w"; fi
    if [ $((i % 5)) = 0 ]; then xdotool mousemove $((100 + i % 300)) 200; fi
    i=$((i + 1))
    sleep "$SWITCH_EVERY"
  done >/dev/null 2>&1
}
switcher &
PIDS+=("$!")

# ---- the process measured ---------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }  # utime + stime
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

UP_BYTES=null
UP_PER_HOUR=null
PROBE_JSON=null
if [ "$MODE" = agent ]; then
  for tool in curl python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "bench-agent-footprint: $tool is required" >&2; exit 1; }
  done
  free_port() {
    local port
    for _ in $(seq 1 100); do
      port=$(( (RANDOM % 20000) + 30000 ))
      if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
    done
    return 1
  }
  PORT="$(free_port)"
  PROXY_PORT="$(free_port)"
  mkdir -p "$WORK/server"
  echo "==> starting backlight-server on 127.0.0.1:$PORT (embedded ClickHouse)"
  "$SERVER_BIN" --data-dir "$WORK/server" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 240); do
    curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:"; tail -20 "$WORK/server.log"; exit 1; }
    sleep 0.5
  done
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null || { echo "server not ready"; exit 1; }
  timeout 60 "$SERVER_BIN" --data-dir "$WORK/server" admin tenant create bench >/dev/null
  KEY="$(timeout 60 "$SERVER_BIN" --data-dir "$WORK/server" admin enrollment-key create --tenant bench 2>/dev/null)"

  # The counting proxy: every byte from the agent to the server, written to a file each second.
  cat >"$WORK/proxy.py" <<'PY'
import socket, sys, threading, time
listen_port, target_port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
sent = [0, 0]  # agent->server, server->agent
lock = threading.Lock()
def pump(src, dst, i):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            with lock:
                sent[i] += len(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
def serve(conn):
    upstream = socket.create_connection(("127.0.0.1", target_port))
    threading.Thread(target=pump, args=(conn, upstream, 0), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, conn, 1), daemon=True).start()
def report():
    while True:
        with lock:
            line = "%d %d\n" % (sent[0], sent[1])
        with open(out + ".tmp", "w") as f:
            f.write(line)
        import os; os.replace(out + ".tmp", out)
        time.sleep(1)
server = socket.create_server(("127.0.0.1", listen_port))
threading.Thread(target=report, daemon=True).start()
while True:
    conn, _ = server.accept()
    serve(conn)
PY
  python3 "$WORK/proxy.py" "$PROXY_PORT" "$PORT" "$WORK/proxy.count" &
  PIDS+=("$!")
  for _ in $(seq 1 100); do [ -s "$WORK/proxy.count" ] && break; sleep 0.1; done

  export BACKLIGHT_AGENT_DIR="$WORK/agent"
  BACKLIGHT_ENROLLMENT_KEY="$KEY" timeout 60 "$AGENT_BIN" enroll --server "http://127.0.0.1:$PROXY_PORT" >/dev/null
  sleep 1.2  # let the proxy write its post-enrollment count
  read -r UP_BASE _ <"$WORK/proxy.count"
  echo "==> running backlight-agent run --source $AGENT_SOURCE for ${DURATION}s"
  "$AGENT_BIN" run --source "$AGENT_SOURCE" >"$WORK/agent.log" 2>&1 &
  MEASURED_PID=$!
  if [ "$AGENT_SOURCE" = desktop ] && "$AGENT_BIN" --help 2>/dev/null | grep -qw consent; then
    # Consent is to the policy in force, which `run` fetches: retry until it has one.
    granted=0
    for _ in $(seq 1 60); do
      if timeout 30 "$AGENT_BIN" consent grant --yes >>"$WORK/consent.log" 2>&1; then granted=1; break; fi
      kill -0 "$MEASURED_PID" 2>/dev/null || { echo "agent exited:"; tail -20 "$WORK/agent.log"; exit 1; }
      sleep 1
    done
    [ "$granted" = 1 ] || { echo "consent grant kept failing:"; tail -5 "$WORK/consent.log"; exit 1; }
    echo "    consent granted"
  fi
else
  echo "==> running capture_probe for ${DURATION}s"
  # A few seconds longer than the measurement, so it is still alive when /proc is read.
  "$PROBE_BIN" --seconds $((DURATION + 3)) >"$WORK/probe.json" 2>"$WORK/probe.log" &
  MEASURED_PID=$!
fi

START_NS="$(date +%s%N)"
sleep "$DURATION"
kill -0 "$MEASURED_PID" 2>/dev/null || { echo "the measured process exited early" >&2; exit 1; }
TICKS="$(cpu_ticks "$MEASURED_PID")"
HWM_KB="$(hwm_kb "$MEASURED_PID")"
END_NS="$(date +%s%N)"
# Wall time since the process started (it started just before START_NS).
WALL_S="$(awk -v a="$START_NS" -v b="$END_NS" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')"

if [ "$MODE" = agent ]; then
  sleep 1.2
  read -r UP_NOW _ <"$WORK/proxy.count"
  UP_BYTES=$((UP_NOW - UP_BASE))
  UP_PER_HOUR="$(awk -v b="$UP_BYTES" -v s="$WALL_S" 'BEGIN { printf "%.0f", b * 3600 / s }')"
  kill -TERM "$MEASURED_PID" 2>/dev/null || true
  wait "$MEASURED_PID" 2>/dev/null || true
else
  wait "$MEASURED_PID" || { echo "capture_probe failed:"; cat "$WORK/probe.log"; exit 1; }
  PROBE_JSON="$(tail -1 "$WORK/probe.json")"
fi
MEASURED_PID=""

CPU_PCT="$(awk -v t="$TICKS" -v hz="$CLK_TCK" -v s="$WALL_S" 'BEGIN { printf "%.3f", t / hz / s * 100 }')"
# The release profile strips symbols already; measure a stripped copy anyway so the figure
# does not depend on that setting.
cp "$AGENT_BIN" "$WORK/agent-stripped"
strip "$WORK/agent-stripped" 2>/dev/null || true
BIN_BYTES="$(stat -c %s "$WORK/agent-stripped")"

SUMMARY="$(jq -n -c --arg mode "$MODE" --arg source "$AGENT_SOURCE" --arg wm "$WM" \
  --argjson duration "$WALL_S" --argjson hwm_kb "$HWM_KB" --argjson cpu "$CPU_PCT" \
  --argjson bin "$BIN_BYTES" --argjson up "$UP_BYTES" --argjson up_h "$UP_PER_HOUR" \
  --argjson probe "$PROBE_JSON" --argjson nproc "$(nproc)" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" '{
    mode: $mode, source: (if $mode == "agent" then $source else null end), window_manager: $wm,
    seconds: $duration, peak_rss_mb: ($hwm_kb / 1024 * 100 | round / 100),
    cpu_pct_of_one_core: $cpu, binary_bytes: $bin, binary_mb: ($bin / 1048576 * 100 | round / 100),
    uploaded_bytes: $up, uploaded_bytes_per_hour: $up_h, probe: $probe,
    machine: {nproc: $nproc, loadavg_at_end: $load}
  }')"
echo "==> agent footprint ($MODE, ${WALL_S}s, WM $WM)"
echo "    peak RSS:        $(jq -r .peak_rss_mb <<<"$SUMMARY") MB (target <= 15)"
echo "    CPU:             $CPU_PCT % of one core (target <= 0.2)"
echo "    binary:          $(jq -r .binary_mb <<<"$SUMMARY") MB stripped, backlight-agent (target <= 10)"
echo "    uploaded:        $UP_PER_HOUR bytes/hour"
if [ "$PROBE_JSON" != null ]; then echo "    probe:           $PROBE_JSON"; fi
echo "$SUMMARY"
if [ -n "$RESULTS" ]; then echo "$SUMMARY" >"$RESULTS"; fi
