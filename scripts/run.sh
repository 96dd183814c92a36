#!/usr/bin/env bash
# Runs Backlight on this machine: the server with its embedded ClickHouse, plus one agent
# enrolled into a "demo" tenant that records synthetic work, so there is something to look at.
# Installs ClickHouse first when it is missing. Stop with Ctrl-C.
#
# Data lives under ./backlight-data (the server's default); delete it to start over.
set -euo pipefail
cd "$(dirname "$0")/.."

LISTEN="${BACKLIGHT_LISTEN:-127.0.0.1:8080}"
DATA="${BACKLIGHT_DATA_DIR:-./backlight-data}"
export BACKLIGHT_DATA_DIR="$DATA"

if ! command -v clickhouse-server >/dev/null 2>&1 && [ ! -x /usr/sbin/clickhouse-server ] && [ -z "${BACKLIGHT_CLICKHOUSE_BINARY:-}" ]; then
  echo "==> ClickHouse is missing; installing it"
  bash deploy/install-clickhouse.sh
fi

echo "==> building Backlight (release)"
cargo build --release --locked -p backlight-server -p backlight-agent
SERVER=target/release/backlight-server
AGENT=target/release/backlight-agent

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

mkdir -p "$DATA"
echo "==> starting the server on http://$LISTEN (log: $DATA/server.log)"
"$SERVER" --listen "$LISTEN" >"$DATA/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
  curl -fsS "http://$LISTEN/readyz" >/dev/null 2>&1 && break
  if ! kill -0 "${pids[0]}" 2>/dev/null; then echo "server exited; see $DATA/server.log"; tail -20 "$DATA/server.log"; exit 1; fi
  sleep 0.5
done
curl -fsS "http://$LISTEN/readyz" >/dev/null || { echo "server not ready; see $DATA/server.log"; exit 1; }

AGENT_DIR="$DATA/demo-agent"
if [ ! -f "$AGENT_DIR/credentials.json" ]; then
  echo "==> creating tenant 'demo' and enrolling a demo agent"
  "$SERVER" admin tenant create demo --name "Demo Insurance" 2>/dev/null || true
  KEY=$("$SERVER" admin enrollment-key create --tenant demo --note "scripts/run.sh demo" 2>/dev/null)
  "$AGENT" --data-dir "$AGENT_DIR" enroll --server "http://$LISTEN" --key "$KEY"
  "$SERVER" admin device assign --tenant demo "$("$AGENT" --data-dir "$AGENT_DIR" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["device_id"])')" --team claims-north >/dev/null
  {
    echo "contact-center key (cc_agent): $("$SERVER" admin api-key create --tenant demo --role cc_agent --name demo-cc 2>/dev/null)"
    echo "workforce key (wfm):           $("$SERVER" admin api-key create --tenant demo --role wfm --name demo-wfm 2>/dev/null)"
    echo "admin key (admin):             $("$SERVER" admin api-key create --tenant demo --role admin --name demo-admin 2>/dev/null)"
  } >"$DATA/demo-keys.txt"
  chmod 600 "$DATA/demo-keys.txt"
fi

echo "==> starting the demo agent (synthetic work; log: $DATA/agent.log)"
"$AGENT" --data-dir "$AGENT_DIR" run --source synthetic --rate 5 --batch-max-age 2s >"$DATA/agent.log" 2>&1 &
pids+=($!)

CH_URL=$(cat "$DATA/clickhouse/endpoint" 2>/dev/null || echo "see $DATA/server.log")
cat <<EOT

Backlight is running.
  Lookup page       http://$LISTEN/            (contact center: search an item id that '$AGENT --data-dir $AGENT_DIR show' lists)
  Dashboard         http://$LISTEN/dashboard   (workforce managers)
  API keys          $DATA/demo-keys.txt  (the pages ask for one)
  Server API        http://$LISTEN   (/openapi.json, /healthz, /readyz, /metrics)
  Embedded ClickHouse  $CH_URL   (database: backlight)
  Devices           $SERVER admin device list --tenant demo
  Agent status      $AGENT --data-dir $AGENT_DIR status
  Events arriving   curl -s -H 'X-ClickHouse-User: default' -H "X-ClickHouse-Key: \$(cat $DATA/clickhouse/password)" '$CH_URL/?database=backlight' --data-binary 'SELECT kind, count() FROM events FINAL GROUP BY kind'

Press Ctrl-C to stop.
EOT
wait "${pids[0]}"
