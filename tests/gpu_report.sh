#!/usr/bin/env bash
# `make gpu-report`: everything a short GPU loan should prove, in one command and one report file,
# $OUT/gpu-report.txt when $OUT is a folder (a device loan brings it back), else BUILD/gpu-report.txt:
# the device, a warning-free nvcc build (or the binaries of scripts/gpu-bundle.sh), `make check-gpu`
# (CPU<->CUDA op and end-to-end comparisons, compute-sanitizer memcheck/racecheck/synccheck when
# installed) and tests/bench_gpu.sh (peaks, full vs commonkv at 2K/8K/32K on SmolLM2 and a random
# Llama-3-8B-shaped model, floors, SVD). Every part has a time limit inside GPU_REPORT_BUDGET
# (default 450 s, so the whole stays under 8 minutes on one H100/H200 with 16 cores); a part that
# runs out of time is reported, not fatal. Without a GPU it prints "skipped: no GPU" and exits 0.
# KVS_GPU_REPORT_EMU=1 is a dry run of the whole path on the host emulation of the CUDA kernels
# (tiny sizes, timings meaningless), which tests/t_bench_gpu.sh runs in CI.
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-build}
EMU=${KVS_GPU_REPORT_EMU:-0}
BUDGET=${GPU_REPORT_BUDGET:-450}
if [ "$EMU" != 1 ] && { ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }; then
    echo "skipped: no GPU"
    exit 0
fi
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then REPORT=$OUT/gpu-report.txt; else mkdir -p "$BUILD"; REPORT=$BUILD/gpu-report.txt; fi
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvscope-gpu.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
exec > >(tee "$REPORT") 2>&1
t0=$(date +%s)
declare -a summary
section() { echo; echo "== $1 (t+$(( $(date +%s) - t0 ))s)"; }
result() { summary+=("$(printf '%-20s %s' "$1" "$2")"); }
# limit S: S seconds, or what is left of the budget minus RESERVE seconds for the parts after
limit() { local l=$(( BUDGET - ($(date +%s) - t0) - ${2:-0} )); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 10 ] && l=10; echo "$l"; }
# timed_out RC: the exit status of `timeout`
timed_out() { [ "$1" -eq 124 ]; }
echo "kvscope GPU report, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC'), budget ${BUDGET}s"

section "device"
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
if [ "$EMU" = 1 ]; then
    echo "dry run: the CUDA kernels run on the host emulation (tests/cuda_emu); no GPU in use, timings mean nothing"
else
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm,clocks.max.mem --format=csv,noheader
fi
[ -x "$NVCC" ] && "$NVCC" --version | tail -n 2
echo "host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"

section "build (warnings are errors)"
if [ "$EMU" = 1 ]; then cuda=; else cuda=USE_CUDA=yes; fi
timeout "$(limit 240 200)" make -j"$(nproc)" BUILD="$BUILD" $cuda CI=true all tests >"$TMP/build.log" 2>&1
rc=$?
if [ $rc -eq 0 ]; then
    grep -E '^(✓|✗)' "$TMP/build.log"
    result build ok
elif [ -f .gpu-bundle.tar.xz ] && [ "$EMU" != 1 ]; then
    # a GPU machine without the build's packages: use the binaries scripts/gpu-bundle.sh packed
    tail -n 5 "$TMP/build.log"
    tar -C "$TMP" -xJf .gpu-bundle.tar.xz
    echo "built here: no; using .gpu-bundle.tar.xz (commit $(cat "$TMP/bundle/COMMIT"))"
    BUILD=$TMP/bundle/build
    export LD_LIBRARY_PATH=$TMP/bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    [ "$(cat "$TMP/bundle/COMMIT")" = "$(git rev-parse HEAD 2>/dev/null)" ] || echo "warning: the bundle was packed from another commit"
    result build "bundle ($(cut -c1-10 "$TMP/bundle/COMMIT"))"
else
    tail -n 30 "$TMP/build.log"
    if timed_out $rc; then result build "FAIL (timed out)"; else result build FAIL; fi
    echo; printf '%s\n' "${summary[@]}"; exit 1
fi
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD;; esac

section "check-gpu (op and end-to-end comparisons, compute-sanitizer)"
# the sanitizers run in parallel inside check-gpu; leave the benchmark at least 150 s
cs=$(limit 100 240)
KVS_CHECK_GPU_EMU=$EMU CHECK_GPU_SANITIZER_S=$cs timeout "$(limit 260 150)" tests/check-gpu.sh "$BUILD" >"$TMP/check.log" 2>&1
rc=$?
grep -E '^(FAIL|comparing|skipped|check-gpu|compute-sanitizer|== |   (cuda|emu|tiny|SmolLM2|CUPTI))|passed, ' "$TMP/check.log"
last=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$TMP/check.log" | tail -n 1)
if [ $rc -eq 0 ]; then result check-gpu "ok ($last)"
elif timed_out $rc; then result check-gpu "timed out (last: ${last:-none})"
else result check-gpu "FAIL ($last)"; fi
while read -r l; do result "${l%%:*}" "${l#*: }"; done < <(grep -E '^compute-sanitizer [a-z]+: ' "$TMP/check.log")
grep -q '^skipped: compute-sanitizer' "$TMP/check.log" && result compute-sanitizer "$(grep -m1 '^skipped: compute-sanitizer' "$TMP/check.log")"

section "GPU benchmark (tests/bench_gpu.sh)"
bb=$(( BUDGET - ($(date +%s) - t0) - 15 ))
if [ "$bb" -lt 30 ]; then
    echo "skipped: ${bb}s left of the budget"
    result bench-gpu "skipped: budget spent"
else
    KVS_BENCH_EMU=$EMU BENCH_GPU_BUDGET=$((bb - 10)) BENCH_GPU_JSON=$TMP/rows.jsonl timeout "$bb" tests/bench_gpu.sh "$BUILD" \
        >"$TMP/bench.log" 2>&1
    rc=$?
    cat "$TMP/bench.log"
    last=$(grep '^bench-gpu: ' "$TMP/bench.log" | tail -n 1)
    if [ $rc -eq 0 ] && [ -n "$last" ]; then result bench-gpu "ok (${last#bench-gpu: })"
    elif timed_out $rc; then result bench-gpu "timed out after ${bb}s"
    else result bench-gpu "FAIL (exit $rc${last:+: ${last#bench-gpu: }})"; fi
    if [ -s "$TMP/rows.jsonl" ]; then echo; echo "raw rows (JSON lines):"; cat "$TMP/rows.jsonl"; fi
fi

section "summary"
printf '%s\n' "${summary[@]}"
echo "total $(( $(date +%s) - t0 ))s; report: $REPORT"
! printf '%s\n' "${summary[@]}" | grep -q FAIL
