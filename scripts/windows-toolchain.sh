#!/usr/bin/env bash
# Makes this machine able to build the Windows agent: the Rust standard library for
# x86_64-pc-windows-gnu (rustup) and Debian's mingw-w64 linker, which .cargo/config.toml names.
# Used by .ci/run (clippy for the Windows target) and scripts/test.sh (the Wine tests). Fails
# loudly when either cannot be installed: the Windows agent is part of what CI checks.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v rustup >/dev/null 2>&1; then
  echo "windows-toolchain: rustup is missing; the Windows agent cannot be built (install Rust with rustup)" >&2
  exit 1
fi
if ! rustup target list --installed | grep -qx x86_64-pc-windows-gnu; then
  echo "==> rustup target add x86_64-pc-windows-gnu"
  rustup target add x86_64-pc-windows-gnu || {
    echo "windows-toolchain: cannot install the x86_64-pc-windows-gnu target: the Windows agent cannot be built or tested" >&2
    exit 1
  }
fi
if ! command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "windows-toolchain: x86_64-w64-mingw32-gcc is missing and this is not Debian/Ubuntu: install mingw-w64" >&2
    exit 1
  fi
  echo "==> installing gcc-mingw-w64-x86-64"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq gcc-mingw-w64-x86-64 || {
    echo "windows-toolchain: cannot install gcc-mingw-w64-x86-64: the Windows agent cannot be built or tested" >&2
    exit 1
  }
fi
