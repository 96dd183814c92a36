#!/usr/bin/env bash
# Benchmark of the performance report: loads N activity spans (default 10,000,000) into a
# throwaway ClickHouse and times a 30-day team report through the real router.
# Usage: scripts/bench-reports.sh [spans]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -p backlight-server --example bench_reports -- "${1:-10000000}"
