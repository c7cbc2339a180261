#!/usr/bin/env bash
# Packs what `make gpu-report` needs on a GPU machine that cannot install packages: the nvcc-built
# binaries of this checkout and the non-CUDA shared libraries they load (OpenBLAS, LAPACKE, ncurses,
# zlib and theirs), as .gpu-bundle.tar.xz (git-ignored). gpu_report.sh builds on the GPU machine when
# it can and falls back to this bundle when the build fails there. Carry it with the device call:
#   scripts/gpu-bundle.sh && (device run: bash tests/gpu_report.sh, carry [".gpu-bundle.tar.xz"])
# The CUDA libraries (cuBLAS, cuSOLVER, cudart) come from the GPU machine's own toolkit.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
make -s -j"$(nproc)" BUILD="$BUILD" USE_CUDA=yes CI=true all tests
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bundle/build/tests" "$tmp/bundle/lib"
cp "$BUILD/kvscope" "$BUILD/libkvscope_cuda.so" "$tmp/bundle/build/"
for t in test_backend test_cuda_emu test_bench bench_peak; do cp "$BUILD/tests/$t" "$tmp/bundle/build/tests/"; done
# every library the binaries load from the system, except libc's own and CUDA's
for f in "$tmp"/bundle/build/kvscope "$tmp"/bundle/build/tests/*; do ldd "$f"; done |
    awk '$3 ~ /^\// {print $3}' | sort -u |
    grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so|/libcu|/libnv' |
    while read -r l; do cp -L "$l" "$tmp/bundle/lib/"; done
git rev-parse HEAD >"$tmp/bundle/COMMIT"
tar -C "$tmp" -cJf .gpu-bundle.tar.xz bundle
ls -la .gpu-bundle.tar.xz
