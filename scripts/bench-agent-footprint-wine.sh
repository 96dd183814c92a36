#!/usr/bin/env bash
# The Windows agent's footprint, measured under Wine (docs/BENCHMARKS.md, "Agent footprint on
# Windows"). Indicative only: Wine is not Windows (its own DLLs are in the RSS, and part of
# every Win32 call runs in wineserver), but it is the Windows build, doing the Windows capture.
# A measurement to run by hand, not a timed test.
#
#   1. builds the Windows agent with the shipping `agent` profile and a release server
#      (SKIP_BUILD=1 reuses them); reports the stripped size of backlight-agent.exe (and of the
#      launcher, backlight-agentw.exe),
#   2. starts a private Xvfb with openbox, boots a Wine prefix (with the test-only ProcessPrng
#      shim Wine 8.0 needs, built from tests/windows/processprng_shim.c), and opens three Win32
#      windows posing as three apps (tests/windows/test_window.c as ledger.exe, mail.exe,
#      helpdesk.exe) and Wine's notepad as the baseline,
#   3. switches focus every SWITCH_EVERY seconds with wmctrl, retitles a window every fourth
#      switch, moves the pointer now and then,
#   4. runs `backlight-agent.exe run --source desktop` (consent granted) against the release
#      server with embedded ClickHouse for DURATION seconds,
#   5. reports for the agent's process and, measured in the same run, Wine's notepad idling
#      (the baseline: what any Win32 program costs under this Wine): peak RSS (VmHWM) and
#      CPU (utime+stime over wall time, % of one core), plus wineserver's CPU over the run
#      (it serves every Wine process's calls, the agent's included); then one JSON line.
#
# Knobs (environment): DURATION=300 SWITCH_EVERY=3 SKIP_BUILD=0 KEEP=0 RESULTS= (write the JSON)
#   SERVER_BIN= (another backlight-server build, e.g. target/debug/backlight-server)
# Needs: wine, mingw-w64 (gcc, windres, strip), Xvfb, openbox, wmctrl, xdotool, curl, jq,
# clickhouse-server. Run it under `flock /work/wt/bench.lock` on shared machines.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-300}"
SWITCH_EVERY="${SWITCH_EVERY:-3}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP="${KEEP:-0}"
RESULTS="${RESULTS:-}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
WIN_DIR="$TARGET_DIR/x86_64-pc-windows-gnu/agent"
SERVER_BIN="${SERVER_BIN:-$TARGET_DIR/release/backlight-server}"  # any build serves: only the agent is measured

for tool in wine wineboot wineserver x86_64-w64-mingw32-gcc x86_64-w64-mingw32-windres \
  x86_64-w64-mingw32-strip Xvfb openbox wmctrl xdotool curl jq timeout; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "bench-agent-footprint-wine: $tool is required (see the header of this script)" >&2
    exit 1
  }
done

WORK="$(mktemp -d -t backlight-footprint-wine.XXXXXX)"
PIDS=()
SERVER_PID=""
export WINEPREFIX="$WORK/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  wineserver -k 2>/dev/null || true
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then
    echo "bench-agent-footprint-wine: work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- build ----------------------------------------------------------------------------------
if [ "$SKIP_BUILD" != 1 ]; then
  echo "==> building the Windows agent (agent profile) and a release server"
  timeout 3600 cargo build --profile agent -p backlight-agent --target x86_64-pc-windows-gnu --bins
  timeout 3600 cargo build --release -p backlight-server
fi
BIN="$WORK/bin"
mkdir -p "$BIN"
cp "$WIN_DIR/backlight-agent.exe" "$WIN_DIR/backlight-agentw.exe" "$BIN/"
x86_64-w64-mingw32-strip "$BIN/backlight-agent.exe" "$BIN/backlight-agentw.exe"
BIN_BYTES="$(stat -c %s "$BIN/backlight-agent.exe")"
LAUNCHER_BYTES="$(stat -c %s "$BIN/backlight-agentw.exe")"
x86_64-w64-mingw32-gcc -shared -O2 -o "$BIN/bcryptprimitives.dll" tests/windows/processprng_shim.c -ladvapi32
x86_64-w64-mingw32-windres tests/windows/test_window.rc -O coff -o "$WORK/test_window.res"
x86_64-w64-mingw32-gcc -municode -mwindows -O2 -o "$BIN/test_window.exe" \
  tests/windows/test_window.c "$WORK/test_window.res" -lshell32

# ---- desktop --------------------------------------------------------------------------------
DISPLAY_NUM=""
for n in $(seq 300 500); do
  [ -e "/tmp/.X$n-lock" ] || [ -e "/tmp/.X11-unix/X$n" ] && continue
  Xvfb ":$n" -nolisten tcp -noreset -screen 0 1280x800x24 >"$WORK/xvfb.log" 2>&1 &
  xpid=$!
  for _ in $(seq 1 200); do
    if [ "$( (tr -d ' \n' <"/tmp/.X$n-lock") 2>/dev/null)" = "$xpid" ] && [ -S "/tmp/.X11-unix/X$n" ]; then
      DISPLAY_NUM=$n; break
    fi
    kill -0 "$xpid" 2>/dev/null || break
    sleep 0.05
  done
  if [ -n "$DISPLAY_NUM" ]; then PIDS+=("$xpid"); break; fi
  kill "$xpid" 2>/dev/null || true
done
[ -n "$DISPLAY_NUM" ] || { echo "bench-agent-footprint-wine: no free X display" >&2; exit 1; }
export DISPLAY=":$DISPLAY_NUM"
for _ in $(seq 1 100); do xdotool getmouselocation >/dev/null 2>&1 && break; sleep 0.1; done
openbox >"$WORK/wm.log" 2>&1 &
PIDS+=("$!")
echo "==> booting a Wine prefix on $DISPLAY"
timeout 600 wineboot -i >"$WORK/wineboot.log" 2>&1
cp "$BIN/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"

winpath() { echo "Z:$1" | tr / '\\'; }
APPS=(ledger mail helpdesk)
TITLES=("Invoice 4711 - Ledger" "Inbox 3 - Mail" "Ticket 982 - Helpdesk")
WINDOWS=()
for i in "${!APPS[@]}"; do
  cp "$BIN/test_window.exe" "$BIN/${APPS[$i]}.exe"
  echo "${TITLES[$i]}" >"$WORK/title-$i.txt"
  wine "$BIN/${APPS[$i]}.exe" "$(winpath "$WORK/title-$i.txt")" >>"$WORK/windows.log" 2>&1 &
  PIDS+=("$!")
  w=""
  for _ in $(seq 1 300); do
    w="$(xdotool search --name "^${TITLES[$i]}\$" 2>/dev/null | head -1 || true)"
    [ -n "$w" ] && break
    sleep 0.1
  done
  [ -n "$w" ] || { echo "bench-agent-footprint-wine: window '${TITLES[$i]}' did not appear" >&2; exit 1; }
  WINDOWS+=("$w")
done

# The unix process of a Wine program of this prefix, by its executable name.
wine_pid() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "$1" || continue
    tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qx "WINEPREFIX=$WINEPREFIX" || continue
    echo "${p#/proc/}"
    return 0
  done
  return 1
}
# The baseline: Wine's notepad, a Win32 program idling in its message loop.
wine notepad >>"$WORK/windows.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 300); do xdotool search --name '^Untitled - Notepad$' >/dev/null 2>&1 && break; sleep 0.1; done
BASELINE_PID="$(wine_pid 'notepad')"
# The prefix's wineserver (started by wineboot, kept up by the programs above).
WINESERVER_PID="$(wine_pid 'wineserver')"

# ---- server and agent -----------------------------------------------------------------------
free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$(( (RANDOM % 20000) + 30000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
  done
  return 1
}
PORT="$(free_port)"
mkdir -p "$WORK/server"
echo "==> starting backlight-server on 127.0.0.1:$PORT (embedded ClickHouse)"
"$SERVER_BIN" --data-dir "$WORK/server" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 240); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:"; tail -20 "$WORK/server.log"; exit 1; }
  sleep 0.5
done
timeout 60 "$SERVER_BIN" --data-dir "$WORK/server" admin tenant create bench >/dev/null
KEY="$(timeout 60 "$SERVER_BIN" --data-dir "$WORK/server" admin enrollment-key create --tenant bench 2>/dev/null)"
AGENT_DIR="$(winpath "$WORK/agent")"
timeout 120 wine "$BIN/backlight-agent.exe" --data-dir "$AGENT_DIR" enroll \
  --server "http://127.0.0.1:$PORT" --key "$KEY" >/dev/null
echo "==> running backlight-agent.exe run --source desktop for ${DURATION}s"
wine "$BIN/backlight-agent.exe" --data-dir "$AGENT_DIR" run --no-browser >"$WORK/agent.log" 2>&1 &
PIDS+=("$!")
granted=0
for _ in $(seq 1 120); do
  if timeout 60 wine "$BIN/backlight-agent.exe" --data-dir "$AGENT_DIR" consent grant --yes >>"$WORK/consent.log" 2>&1; then
    granted=1; break
  fi
  sleep 1
done
[ "$granted" = 1 ] || { echo "consent grant kept failing:"; tail -5 "$WORK/consent.log"; exit 1; }
AGENT_PID="$(wine_pid 'backlight-agent.exe --data-dir')"

switcher() {
  local i=0 w
  while true; do
    w="${WINDOWS[$((i % 3))]}"
    wmctrl -i -a "$w"
    if [ $((i % 4)) = 3 ]; then
      echo "Renamed $i - Ledger" >"$WORK/title-0.next" && mv "$WORK/title-0.next" "$WORK/title-0.txt"
    fi
    if [ $((i % 5)) = 0 ]; then xdotool mousemove --window "$w" $((20 + i % 200)) 50; fi
    i=$((i + 1))
    sleep "$SWITCH_EVERY"
  done >/dev/null 2>&1
}
switcher &
PIDS+=("$!")

CLK_TCK="$(getconf CLK_TCK)"
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
SERVER_TICKS_0="$(cpu_ticks "$WINESERVER_PID")"
BASE_TICKS_0="$(cpu_ticks "$BASELINE_PID")"
AGENT_TICKS_0="$(cpu_ticks "$AGENT_PID")"
START_NS="$(date +%s%N)"
sleep "$DURATION"
kill -0 "$AGENT_PID" 2>/dev/null || { echo "the agent exited early:"; tail -20 "$WORK/agent.log"; exit 1; }
AGENT_TICKS="$(( $(cpu_ticks "$AGENT_PID") - AGENT_TICKS_0 ))"
BASE_TICKS="$(( $(cpu_ticks "$BASELINE_PID") - BASE_TICKS_0 ))"
SERVER_TICKS="$(( $(cpu_ticks "$WINESERVER_PID") - SERVER_TICKS_0 ))"
AGENT_HWM="$(hwm_kb "$AGENT_PID")"
BASE_HWM="$(hwm_kb "$BASELINE_PID")"
END_NS="$(date +%s%N)"
WALL_S="$(awk -v a="$START_NS" -v b="$END_NS" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')"
pct() { awk -v t="$1" -v hz="$CLK_TCK" -v s="$WALL_S" 'BEGIN { printf "%.3f", t / hz / s * 100 }'; }
SPANS="$(timeout 60 wine "$BIN/backlight-agent.exe" --data-dir "$AGENT_DIR" status --json 2>/dev/null | jq .last_seq)"

SUMMARY="$(jq -n -c --argjson seconds "$WALL_S" \
  --argjson agent_kb "$AGENT_HWM" --argjson base_kb "$BASE_HWM" \
  --argjson agent_cpu "$(pct "$AGENT_TICKS")" --argjson base_cpu "$(pct "$BASE_TICKS")" \
  --argjson server_cpu "$(pct "$SERVER_TICKS")" --argjson bin "$BIN_BYTES" \
  --argjson launcher "$LAUNCHER_BYTES" --argjson events "${SPANS:-null}" \
  --arg wine "$(wine --version 2>/dev/null)" --argjson nproc "$(nproc)" \
  --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" '{
    seconds: $seconds,
    agent: {peak_rss_mb: ($agent_kb / 1024 * 100 | round / 100), cpu_pct_of_one_core: $agent_cpu},
    baseline_idle_notepad: {peak_rss_mb: ($base_kb / 1024 * 100 | round / 100), cpu_pct_of_one_core: $base_cpu},
    agent_minus_baseline_rss_mb: (($agent_kb - $base_kb) / 1024 * 100 | round / 100),
    wineserver_cpu_pct_of_one_core: $server_cpu,
    binary_bytes: $bin, binary_mb: ($bin / 1048576 * 100 | round / 100),
    launcher_bytes: $launcher, events_recorded: $events,
    wine: $wine, machine: {nproc: $nproc, loadavg_at_end: $load}
  }')"
echo "==> Windows agent footprint under Wine (${WALL_S}s; indicative)"
echo "    binary:     $(jq -r .binary_mb <<<"$SUMMARY") MB stripped backlight-agent.exe (target <= 10); launcher $LAUNCHER_BYTES B"
echo "    agent:      $(jq -r .agent.peak_rss_mb <<<"$SUMMARY") MB peak RSS, $(jq -r .agent.cpu_pct_of_one_core <<<"$SUMMARY") % CPU"
echo "    baseline:   $(jq -r .baseline_idle_notepad.peak_rss_mb <<<"$SUMMARY") MB peak RSS, $(jq -r .baseline_idle_notepad.cpu_pct_of_one_core <<<"$SUMMARY") % CPU (Wine's notepad, idle: what any Win32 program costs here)"
echo "    wineserver: $(jq -r .wineserver_cpu_pct_of_one_core <<<"$SUMMARY") % CPU (all Wine processes' server calls)"
echo "$SUMMARY"
if [ -n "$RESULTS" ]; then echo "$SUMMARY" >"$RESULTS"; fi
