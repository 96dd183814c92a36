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
