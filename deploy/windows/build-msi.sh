#!/usr/bin/env bash
# Builds backlight-agent.msi: the Windows agent per machine, autostart for every user, and the
# SERVER / ENROLLMENT_KEY properties for a silent roll-out (see deploy/windows/backlight-agent.wxs
# and docs/agent.md, "Windows desktops").
#
#   deploy/windows/build-msi.sh [--bin-dir DIR] [--out FILE] [--version X.Y.Z]
#
# Without --bin-dir it first cross-compiles the agent with the size-optimised `agent` profile
#   cargo build --profile agent -p backlight-agent --target x86_64-pc-windows-gnu --bins
# (needs `rustup target add x86_64-pc-windows-gnu` and Debian's gcc-mingw-w64-x86-64).
# Needs wixl and msibuild (apt-get install wixl msitools). The version defaults to the workspace's.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin_dir=""
out="$root/target/backlight-agent.msi"
version=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    *) echo "build-msi.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for tool in wixl msibuild; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-msi.sh: $tool is missing (apt-get install wixl msitools)" >&2; exit 1; }
done
if [ -z "$version" ]; then
  version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml")"
fi
if [ -z "$bin_dir" ]; then
  (cd "$root" && cargo build --profile agent -p backlight-agent --target x86_64-pc-windows-gnu --bins --locked)
  bin_dir="$root/target/x86_64-pc-windows-gnu/agent"
fi
for exe in backlight-agent.exe backlight-agentw.exe; do
  [ -f "$bin_dir/$exe" ] || { echo "build-msi.sh: $bin_dir/$exe is missing" >&2; exit 1; }
done

mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
# wixl finds the files named in the .wxs relative to its working directory.
(cd "$bin_dir" && wixl --arch x64 --define "Version=$version" --output "$out" \
  "$root/deploy/windows/backlight-agent.wxs")
# What wixl cannot express: SERVER and ENROLLMENT_KEY are secure properties (passed to the
# elevated part of a managed install), and the settings are written only when both are known.
msibuild "$out" -q "UPDATE Property SET Value = 'WIX_DOWNGRADE_DETECTED;WIX_UPGRADE_DETECTED;SERVER;ENROLLMENT_KEY' WHERE Property = 'SecureCustomProperties'"
msibuild "$out" -q "UPDATE Component SET Condition = 'SERVER AND ENROLLMENT_KEY' WHERE Component = 'Settings'"
echo "built $out (version $version)"
