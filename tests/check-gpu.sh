#!/usr/bin/env bash
# `make check-gpu`: the CPU<->CUDA comparisons of tests/test_backend.c, verbose (worst elements and
# normalised error of every op), then the emulated tier's op and end-to-end checks
# (tests/test_cuda_emu.c --gpu: real shapes, conversions bit for bit, SmolLM2 greedy tokens and
# logits) against the CUDA backend built in BUILD. Fails when the backend is not built or no GPU is
# found: on this target a skip would hide exactly what was asked for. Prints "N passed, N failed".
set -u
BUILD=${1:-build}
cd "$(dirname "$0")/.."
bin=$BUILD/tests/test_backend
lib=$BUILD/libkvscope_cuda.so
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
export KVS_CUDA_LIB=$PWD/$lib
p=0; f=0
for cmd in "$bin --gpu -v" "$BUILD/tests/test_cuda_emu --gpu"; do
    echo "== $cmd"
    $cmd 2>&1 | tee "${TMPDIR:-/tmp}/check-gpu.$$.log"
    rc=${PIPESTATUS[0]}
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "${TMPDIR:-/tmp}/check-gpu.$$.log" | tail -n 1)
    rm -f "${TMPDIR:-/tmp}/check-gpu.$$.log"
    cp=$(echo "$line" | sed -nE 's/^([0-9]+) passed.*/\1/p'); cf=$(echo "$line" | sed -nE 's/.* ([0-9]+) failed.*/\1/p')
    p=$((p + ${cp:-0})); f=$((f + ${cf:-0}))
    if [ "$rc" -ne 0 ] && [ "${cf:-0}" -eq 0 ]; then f=$((f + 1)); fi
done
echo "$p passed, $f failed"
[ "$f" -eq 0 ]
