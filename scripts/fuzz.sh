#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/fuzz_targets/) for a set time, starting from the seed
# corpora committed in fuzz/seeds/ plus what earlier runs found (fuzz/corpus/, not committed).
# Installs the nightly toolchain and cargo-fuzz when they are missing.
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   scripts/fuzz.sh 600 local_http  # one target, 10 minutes
#
# FUZZ_SANITIZER=address|none (default address: the decoder runs C code, zstd).
# FUZZ_SMOKE=1 starts from the committed seeds only and keeps nothing it finds (CI's smoke: the
# time then is the fuzzing time, not loading a large local corpus).
# A crash stops the run with its input in fuzz/artifacts/<target>/;
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>` replays it. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
sanitizer=${FUZZ_SANITIZER:-address}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "==> installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
if [ "$#" -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi

started=$(date +%s)
echo "==> building the fuzz targets (sanitizer: $sanitizer)"
cargo +nightly fuzz build --sanitizer "$sanitizer"
echo "    built in $(($(date +%s) - started)) s"

out=$(mktemp)
scratch=$(mktemp -d)
trap 'rm -rf "$out" "$scratch"' EXIT
for target in "${targets[@]}"; do
  if [ "${FUZZ_SMOKE:-}" = 1 ]; then corpus="$scratch/$target"; else corpus="corpus/$target"; fi
  mkdir -p "$corpus"
  echo "==> fuzzing $target for $seconds s"
  if cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "$corpus" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$out" 2>&1; then
    # What ran: executions, coverage, corpus size, memory.
    grep -E 'DONE|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$out" \
      | sed 's/^/    /'
  else
    tail -n 80 "$out" >&2
    echo "fuzzing $target found a problem; its input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "==> fuzzing done in $(($(date +%s) - started)) s"
