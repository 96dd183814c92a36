#!/usr/bin/env bash
# Runs every test of Backlight: unit tests, the end-to-end tests that run the real binaries
# against a real, throwaway ClickHouse, the desktop tests on a real X server (Xvfb), the
# Windows agent's tests under Wine (cross-compiled with mingw-w64), the browser tests of the web
# pages in headless Chromium, the SQL compatibility test (every statement the server sends, on
# ClickHouse 18.16 and on the current engine via chDB), and the cluster test (ZooKeeper and five
# ClickHouse servers on loopback). Installs what is missing first (ClickHouse, Xvfb and xdotool,
# ZooKeeper, the Windows target and mingw-w64, Wine, openbox, wmctrl, msitools, Chromium,
# Node.js) from the OS package manager and rustup, and chDB from PyPI; fails when any of it
# cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() { # apt_install PACKAGE...
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$* missing and this is not a Debian/Ubuntu machine: install it yourself" >&2
    exit 1
  fi
  echo "==> installing $*"
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@"
}
need_package() { # need_package COMMAND PACKAGE...
  local command=$1; shift
  command -v "$command" >/dev/null 2>&1 || apt_install "$@"
}

if ! command -v clickhouse-server >/dev/null 2>&1 && [ ! -x /usr/sbin/clickhouse-server ] && [ -z "${BACKLIGHT_CLICKHOUSE_BINARY:-}" ]; then
  echo "==> ClickHouse is missing; installing it"
  bash deploy/install-clickhouse.sh
fi
need_package Xvfb xvfb
need_package xdotool xdotool
need_package xset x11-xserver-utils
need_package xmessage x11-utils
# The cluster test (tests/tests/cluster/) runs its own ZooKeeper from Debian's package, on a free
# loopback port with a temporary data directory (never the system service).
if [ ! -f /usr/share/java/zookeeper.jar ] || ! command -v java >/dev/null 2>&1; then
  apt_install zookeeperd
fi
# The Windows agent: cross-compiled, then run under Wine on Xvfb (tests/tests/windows).
bash scripts/windows-toolchain.sh
need_package wine wine wine64
need_package openbox openbox
need_package wmctrl wmctrl
need_package wixl wixl
need_package msibuild msitools

if ! python3 -c 'import chdb' >/dev/null 2>&1; then
  # The current ClickHouse engine in-process: the SQL compatibility test replays every
  # statement of the server on it (server/tests/clickhouse_compat.rs).
  echo "==> installing chDB (current ClickHouse) from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check chdb-core
fi

echo "==> building the binaries the end-to-end tests run"
cargo build --workspace --bins --locked
echo "==> cross-compiling the Windows agent for the Wine tests"
cargo build --profile wine-test -p backlight-agent --target x86_64-pc-windows-gnu --bins \
  --example capture_probe --locked

echo "==> running the tests"
cargo test --workspace --locked "$@"

# A short smoke of each fuzz target from the committed seeds (installs nightly and cargo-fuzz
# when missing): what it costs is in docs/fuzzing.md; longer runs are `scripts/fuzz.sh SECONDS`.
echo "==> fuzzing smoke: 12 s per target"
FUZZ_SMOKE=1 bash scripts/fuzz.sh 12

echo "==> running the browser tests"
bash scripts/browser-test.sh
