#!/usr/bin/env bash
# Trace benchmark (tests/bench.sh runs every tests/bench_*.sh; not part of `make test`): for
# realistic decode-step records (30 layers, 8 groups) it prints bytes per decoded token after
# compression, writer throughput against formatting the same records as JSON lines, the time to
# open a 100,000-step trace, and the time to seek to a random step against reading from the start.
#   tests/bench_traces.sh [BUILD] [MODEL-or-STEPS]   (bench.sh passes the model, which is unused)
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-${KVS_BUILD:-build}}
STEPS=${BENCH_TRACE_STEPS:-100000}
if [[ ${2:-} =~ ^[0-9]+$ ]]; then STEPS=$2; fi
T=$BUILD/tests/test_traces
if [ ! -x "$T" ]; then
    echo "bench_traces: $T not built (make BUILD=$BUILD tests)"
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "== trace format: $STEPS decode steps"
KVS_TEST_TMP=$tmp "$T" --bench "$STEPS"
