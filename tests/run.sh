#!/usr/bin/env bash
# Runs every test tier and prints one closing "N passed, N failed" line:
#   1. unit tests: each build/tests/test_* binary (its last line is "N passed, N failed")
#   2. script tests: tests/t_*.sh (reference comparisons, CLI, TUI through tmux, fuzzing);
#      each prints its own "N passed, N failed" last.
# A test that crashes or prints no summary counts as one failure.
set -u
BUILD=${1:-build}
cd "$(dirname "$0")/.."
export KVS_BUILD=$BUILD KVS_BIN=$PWD/$BUILD/kvscope
export KVS_TEST_TMP=$(mktemp -d /tmp/kvscope-tests.XXXXXX)
trap 'rm -rf "$KVS_TEST_TMP"' EXIT
total_p=0; total_f=0
run_one() {
    local name=$1; shift
    local log=$KVS_TEST_TMP/$(basename "$name").log
    local t0=$(date +%s)
    "$@" >"$log" 2>&1
    local rc=$?
    local line
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
    local p=0 f=0
    if [ -n "$line" ]; then
        p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
        f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    fi
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    if [ -z "$line" ] && [ $rc -eq 0 ]; then f=1; echo "   (no summary line)" >>"$log"; fi
    total_p=$((total_p + p)); total_f=$((total_f + f))
    local status=ok
    [ "$f" -gt 0 ] && status=FAIL
    printf '%-28s %-4s %4d passed, %d failed  (%ds)\n' "$(basename "$name")" "$status" "$p" "$f" $(( $(date +%s) - t0 ))
    if [ "$f" -gt 0 ]; then sed 's/^/    | /' "$log" | grep -v '^    | -- ' | tail -n 40; fi
}
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    run_one "$t" "$t"
done
for t in tests/t_*.sh; do
    [ -f "$t" ] || continue
    run_one "$t" bash "$t"
done
echo
echo "$total_p passed, $total_f failed"
[ "$total_f" -eq 0 ]
