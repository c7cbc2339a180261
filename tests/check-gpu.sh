#!/usr/bin/env bash
# `make check-gpu`: the CPU<->CUDA comparisons of tests/test_backend.c, verbose (worst elements and
# normalised error of every op), against the CUDA backend built in BUILD. Fails when the backend is
# not built or no GPU is found: on this target a skip would hide exactly what was asked for.
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
"$bin" --gpu -v
