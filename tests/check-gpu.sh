#!/usr/bin/env bash
# `make check-gpu`: the CPU<->CUDA comparisons of tests/test_backend.c, verbose (worst elements and
# normalised error of every op), then the emulated tier's op and end-to-end checks
# (tests/test_cuda_emu.c --gpu: real shapes, conversions bit for bit, SmolLM2 greedy tokens and
# logits) against the CUDA backend built in BUILD, then compute-sanitizer (memcheck, racecheck,
# synccheck, in parallel, each within CHECK_GPU_SANITIZER_S seconds, default 150) over the op tests
# when it is installed ("skipped: compute-sanitizer not installed" otherwise; a tool that runs out of
# time is reported, not failed). Fails when the backend is not built or no GPU is found: on this
# target a skip would hide exactly what was asked for. KVS_CHECK_GPU_EMU=1 runs the op checks on the
# host emulation instead (a dry run of the script; tests/t_bench_gpu.sh). Prints "N passed, N failed".
set -u
BUILD=${1:-build}
cd "$(dirname "$0")/.."
bin=$BUILD/tests/test_backend
lib=$BUILD/libkvscope_cuda.so
GPU=--gpu
E2E=
if [ "${KVS_CHECK_GPU_EMU:-0}" = 1 ]; then
    lib=$BUILD/emu/libkvscope_cuda_emu.so
    GPU= # the emulated mode of the same binaries; the end-to-end runs are tests/t_cuda_emu.sh's
    E2E=--ops
    echo "check-gpu: dry run on the host emulation ($lib), no GPU in use, op checks only"
fi
if [ ! -x "$bin" ]; then
    echo "check-gpu: $bin is not built (make BUILD=$BUILD tests)"
    echo "0 passed, 1 failed"
    exit 1
fi
if [ ! -f "$lib" ]; then
    echo "check-gpu: $lib is not built (needs nvcc, cuBLAS and cuSOLVER; try USE_CUDA=yes)"
    echo "0 passed, 1 failed"
    exit 1
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/check-gpu: GPU /'
fi
case $lib in /*) ;; *) lib=$PWD/$lib;; esac # BUILD may be absolute (gpu_report.sh, a bundle)
export KVS_CUDA_LIB=$lib
p=0; f=0
for cmd in "$bin $GPU -v" "$BUILD/tests/test_cuda_emu $GPU $E2E"; do
    echo "== $cmd"
    $cmd 2>&1 | tee "${TMPDIR:-/tmp}/check-gpu.$$.log"
    rc=${PIPESTATUS[0]}
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "${TMPDIR:-/tmp}/check-gpu.$$.log" | tail -n 1)
    rm -f "${TMPDIR:-/tmp}/check-gpu.$$.log"
    cp=$(echo "$line" | sed -nE 's/^([0-9]+) passed.*/\1/p'); cf=$(echo "$line" | sed -nE 's/.* ([0-9]+) failed.*/\1/p')
    p=$((p + ${cp:-0})); f=$((f + ${cf:-0}))
    if [ "$rc" -ne 0 ] && [ "${cf:-0}" -eq 0 ]; then f=$((f + 1)); fi
done

# compute-sanitizer over the op tests: the three tools at once (they only share the GPU), each
# time-limited; a tool's findings are listed, a timeout is reported and not counted
echo "== compute-sanitizer (memcheck, racecheck, synccheck) over test_cuda_emu $GPU --ops"
NVCC_DIR=$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")
CS=$(command -v compute-sanitizer || ls "$NVCC_DIR/compute-sanitizer" "$NVCC_DIR/../compute-sanitizer/compute-sanitizer" 2>/dev/null | head -n 1)
if [ -n "$GPU" ] && [ -n "$CS" ]; then
    cs_tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-gpu-cs.XXXXXX")
    declare -A cs_pid
    for tool in memcheck racecheck synccheck; do
        timeout "${CHECK_GPU_SANITIZER_S:-150}" "$CS" --tool "$tool" --error-exitcode 99 \
            "$BUILD/tests/test_cuda_emu" --gpu --ops >"$cs_tmp/$tool.log" 2>&1 &
        cs_pid[$tool]=$!
    done
    for tool in memcheck racecheck synccheck; do
        wait "${cs_pid[$tool]}"
        rc=$?
        summary=$(grep -E '(ERROR|RACECHECK) SUMMARY' "$cs_tmp/$tool.log" | tail -n 1 | sed 's/^========= //')
        if [ $rc -eq 0 ]; then
            echo "compute-sanitizer $tool: ok (${summary:-no summary line})"; p=$((p + 1))
        elif [ $rc -eq 124 ]; then
            echo "compute-sanitizer $tool: timed out after ${CHECK_GPU_SANITIZER_S:-150}s (not counted)"
        else
            echo "FAIL compute-sanitizer $tool (exit $rc): ${summary:-}"; f=$((f + 1))
            grep -E '^========= +(Invalid|Error|Race|Barrier|Program hit|.*hazard|.*[Uu]ninitialized)' "$cs_tmp/$tool.log" | head -n 8
            grep -E '^FAIL' "$cs_tmp/$tool.log" | head -n 3
        fi
    done
    rm -rf "$cs_tmp"
elif [ -z "$GPU" ]; then
    echo "skipped: compute-sanitizer (emulation: no GPU to sanitize)"
else
    echo "skipped: compute-sanitizer not installed"
fi
echo "$p passed, $f failed"
[ "$f" -eq 0 ]
