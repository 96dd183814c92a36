#!/bin/sh
# Installs the ClickHouse server that backlight-server's embedded mode (no --clickhouse-url)
# starts and supervises itself.
#
# Idempotent: if clickhouse-server (or the single `clickhouse` binary) is already present,
# it prints where and exits 0. On Debian/Ubuntu it installs the distribution packages
# (Debian 12 ships ClickHouse 18.16, which Backlight supports). Elsewhere it explains the
# options and exits 1.
#
# It deliberately does not start or enable the packaged clickhouse-server service: the
# embedded mode runs its own instance with its own config and data directory, and the dev
# machines have no systemd anyway.
#
# Usage: sudo deploy/install-clickhouse.sh
set -eu

log() { printf '%s\n' "install-clickhouse: $*" >&2; }

# Same search order as backlight-server (server/src/clickhouse/embedded.rs::find_binary).
find_clickhouse() {
    if [ -n "${BACKLIGHT_CLICKHOUSE_BINARY:-}" ] && [ -x "$BACKLIGHT_CLICKHOUSE_BINARY" ]; then
        printf '%s\n' "$BACKLIGHT_CLICKHOUSE_BINARY"
        return 0
    fi
    if found=$(command -v clickhouse-server 2>/dev/null); then
        printf '%s\n' "$found"
        return 0
    fi
    for candidate in /usr/sbin/clickhouse-server /usr/bin/clickhouse-server; do
        if [ -x "$candidate" ]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    if found=$(command -v clickhouse 2>/dev/null); then
        printf '%s\n' "$found"
        return 0
    fi
    for candidate in /usr/bin/clickhouse /usr/local/bin/clickhouse; do
        if [ -x "$candidate" ]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

if existing=$(find_clickhouse); then
    log "ClickHouse is already installed"
    printf '%s\n' "$existing"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    cat >&2 <<'EOF'
install-clickhouse: this is not a Debian/Ubuntu system (no apt-get), so nothing was installed.
Either
  - install ClickHouse from its official packages (see the "Quick install" section of
    ClickHouse's documentation for your distribution), then re-run backlight-server, or
    point BACKLIGHT_CLICKHOUSE_BINARY at the installed clickhouse-server/clickhouse binary; or
  - run backlight-server against an existing ClickHouse with
    --clickhouse-url http://HOST:8123 (or BACKLIGHT_CLICKHOUSE_URL).
EOF
    exit 1
fi

# Root runs apt-get directly; others go through sudo when it exists.
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo"
else
    log "must run as root (sudo is not available): re-run this script as root"
    exit 1
fi

log "installing clickhouse-server and clickhouse-client with apt-get"
$as_root apt-get update
# noninteractive: the package would otherwise ask for a default-user password; the embedded
# mode writes its own users.xml, so the packaged one is never used by Backlight.
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y clickhouse-server clickhouse-client

if installed=$(find_clickhouse); then
    log "installed"
    printf '%s\n' "$installed"
    exit 0
fi
log "apt-get finished but no clickhouse-server binary was found; check the apt output above"
exit 1
