#!/usr/bin/env bash
# `make gpu-report`: everything a short GPU loan should prove, in one command and one report file
# (BUILD/gpu-report.txt): the device, a warning-free nvcc build, `make check-gpu` (CPU<->CUDA op and
# end-to-end comparisons), compute-sanitizer memcheck/racecheck/synccheck over the op tests when it
# is installed, and a decode/prefill benchmark of --backend cuda against the CPU engine measured in
# the same run. Without a GPU it prints "skipped: no GPU" and exits 0. Each step has a time limit
# so that the whole fits in 8 minutes on one H100/H200 with 16 cores.
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-build}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "skipped: no GPU"
    exit 0
fi
mkdir -p "$BUILD"
REPORT=$BUILD/gpu-report.txt
TMP=$(mktemp -d /tmp/kvscope-gpu.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
exec > >(tee "$REPORT") 2>&1
t0=$(date +%s)
declare -a summary
section() { echo; echo "== $1 (t+$(( $(date +%s) - t0 ))s)"; }
result() { summary+=("$(printf '%-34s %s' "$1" "$2")"); }

section "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
"$NVCC" --version | tail -n 2

section "build (nvcc, warnings are errors)"
if timeout 300 make -j"$(nproc)" BUILD="$BUILD" USE_CUDA=yes CI=true all tests >"$TMP/build.log" 2>&1; then
    grep -E '^(✓|✗)' "$TMP/build.log"
    result build ok
elif [ -f .gpu-bundle.tar.xz ]; then
    # a GPU machine without the build's packages: use the binaries scripts/gpu-bundle.sh packed
    tail -n 5 "$TMP/build.log"
    tar -C "$TMP" -xJf .gpu-bundle.tar.xz
    echo "built here: no; using .gpu-bundle.tar.xz (commit $(cat "$TMP/bundle/COMMIT"))"
    BUILD=$TMP/bundle/build
    export LD_LIBRARY_PATH=$TMP/bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    [ "$(cat "$TMP/bundle/COMMIT")" = "$(git rev-parse HEAD 2>/dev/null)" ] || echo "warning: the bundle was packed from another commit"
    result build "bundle ($(cat "$TMP/bundle/COMMIT" | cut -c1-10))"
else
    tail -n 30 "$TMP/build.log"
    result build FAIL
    echo; printf '%s\n' "${summary[@]}"; exit 1
fi
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD;; esac
export KVS_CUDA_LIB=$BUILD/libkvscope_cuda.so

section "check-gpu"
if timeout 240 tests/check-gpu.sh "$BUILD" >"$TMP/check.log" 2>&1; then r=ok; else r=FAIL; fi
grep -E '^(FAIL|comparing|skipped|   (cuda|emu|tiny|SmolLM2|CUPTI))|passed, ' "$TMP/check.log"
result check-gpu "$r ($(tail -n 1 "$TMP/check.log"))"

section "compute-sanitizer"
CS=$(command -v compute-sanitizer || ls "$(dirname "$NVCC")"/compute-sanitizer \
    "$(dirname "$NVCC")"/../compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1)
if [ -z "$CS" ]; then
    echo "compute-sanitizer not installed"
    result compute-sanitizer "skipped: not installed"
else
    for tool in memcheck racecheck synccheck; do
        if timeout 100 "$CS" --tool "$tool" --error-exitcode 99 "$BUILD/tests/test_cuda_emu" --gpu --ops \
                >"$TMP/cs-$tool.log" 2>&1; then
            r="ok ($(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$TMP/cs-$tool.log" | tail -n 1))"
        else
            r="FAIL (exit $?)"
            grep -E '========= (Invalid|Error|Race|Barrier|.*hazard)' "$TMP/cs-$tool.log" | head -n 10
        fi
        echo "$tool: $r"
        result "compute-sanitizer $tool" "$r"
    done
fi

section "benchmark: generate --backend cuda vs the CPU engine ($(nproc) threads), same run"
if [ -f "$MODEL" ]; then
    head -c 6000 /usr/share/common-licenses/GPL-3 >"$TMP/prompt.txt"
    for be in cpu cuda; do
        timeout 120 "$BUILD/kvscope" generate -m "$MODEL" -f "$TMP/prompt.txt" -n 128 -t "$(nproc)" --ctx 4096 \
            --backend "$be" --json >"$TMP/gen-$be.json" 2>"$TMP/gen-$be.err" || echo "$be: $(head -n 1 "$TMP/gen-$be.err")"
    done
    if python3 - "$TMP/gen-cpu.json" "$TMP/gen-cuda.json" <<'PY'; then result benchmark ok; else result benchmark FAIL; fi
import json, sys
try:
    c, g = (json.load(open(p)) for p in sys.argv[1:3])
except (OSError, ValueError) as e:
    sys.exit(f"no result to compare: {e}")
for k in ("prefill_tps", "decode_tps"):
    print(f"{k:12s} cpu {c[k]:9.1f}  cuda {g[k]:9.1f}  cuda/cpu {g[k] / c[k]:.2f}x")
print("same tokens" if c["tokens"] == g["tokens"] else "tokens differ (first %d agree)" %
      next((i for i, (a, b) in enumerate(zip(c["tokens"], g["tokens"])) if a != b), min(len(c["tokens"]), len(g["tokens"]))))
PY
else
    echo "$MODEL not present (make model)"
    result benchmark "skipped: no model"
fi

section "summary"
printf '%s\n' "${summary[@]}"
echo "report: $REPORT"
# on a device loan, $OUT is the folder whose files come back
[ -n "${OUT:-}" ] && [ -d "$OUT" ] && cp "$REPORT" "$OUT/" 2>/dev/null
! printf '%s\n' "${summary[@]}" | grep -q FAIL
