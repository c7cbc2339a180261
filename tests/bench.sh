#!/usr/bin/env bash
# `make bench`: every benchmark prints its numbers next to a baseline measured in the same run.
#   1. kvscope (full cache) vs llama.cpp (llama-cpp-python, same GGUF, same threads): prefill and
#      decode tokens/s at 512 and 2048 tokens of context, as ratios.
#   2. the views: time to draw a full frame.
#   3. tests/bench_*.sh of the other modules: methods (commonkv/lowrank vs full decode at 2048
#      tokens), traces (recording overhead, bytes per token, seek time), and on a GPU the CUDA
#      engine against its floors (bench_gpu.sh; "skipped: no GPU" without one).
set -u
BUILD=${1:-build}
MODEL=${2:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
cd "$(dirname "$0")/.."
BIN=$BUILD/kvscope
THREADS=${BENCH_THREADS:-$(nproc)}
CTXS=${BENCH_CTX:-512,2048}
NDEC=${BENCH_DECODE:-64}
TEXT=/usr/share/common-licenses/GPL-3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== kvscope vs llama.cpp: $MODEL, $THREADS threads, context $CTXS, $NDEC decoded tokens"
"$BIN" bench -m "$MODEL" --ctx "$CTXS" --methods full -n "$NDEC" -t "$THREADS" --json >"$tmp/kvs.json" || { echo "kvscope bench failed"; exit 1; }
if ! python3 -c "import llama_cpp" 2>/dev/null; then
    echo "installing llama-cpp-python (builds llama.cpp from source; several minutes)…"
    # The CPU's own SIMD features, never AMX: GGML_NATIVE=ON turns AMX on wherever the CPU reports
    # it, and in a VM that does not grant the AMX tile state (this one) llama.cpp 0.3.36 then
    # segfaults in its first decode.
    flags="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF"
    cpu=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
    for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
                avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx512vbmi:AVX512_VBMI; do
        case "$cpu" in *" ${pair%%:*} "*) flags="$flags -DGGML_${pair#*:}=ON" ;; *) flags="$flags -DGGML_${pair#*:}=OFF" ;; esac
    done
    CMAKE_ARGS="$flags" python3 -m pip install -q llama-cpp-python >/dev/null 2>&1 ||
        CMAKE_ARGS="$flags" python3 -m pip install -q --break-system-packages llama-cpp-python >/dev/null 2>&1
fi
if python3 -c "import llama_cpp" 2>/dev/null; then
    python3 tests/bench_llamacpp.py "$MODEL" "$CTXS" "$THREADS" "$NDEC" "$TEXT" >"$tmp/llama.json" 2>"$tmp/llama.err" ||
        { echo "llama.cpp baseline failed:"; tail -5 "$tmp/llama.err"; }
else
    echo "llama.cpp baseline unavailable (llama-cpp-python could not be installed)"
    : >"$tmp/llama.json"
fi
python3 - "$tmp/kvs.json" "$tmp/llama.json" <<'PY'
import json, sys
kvs = json.load(open(sys.argv[1]))
base = {}
for line in open(sys.argv[2]):
    line = line.strip()
    if line:
        d = json.loads(line); base[d["ctx"]] = d
print(f"{'ctx':>6} {'prefill kvscope':>16} {'llama.cpp':>10} {'ratio':>6}   {'decode kvscope':>15} {'llama.cpp':>10} {'ratio':>6}")
for r in kvs:
    b = base.get(r["ctx"])
    if b:
        print(f"{r['ctx']:>6} {r['prefill_tps']:>16.1f} {b['prefill_tps']:>10.1f} {r['prefill_tps']/b['prefill_tps']:>5.2f}x"
              f"   {r['decode_tps']:>15.1f} {b['decode_tps']:>10.1f} {r['decode_tps']/b['decode_tps']:>5.2f}x")
    else:
        print(f"{r['ctx']:>6} {r['prefill_tps']:>16.1f} {'n/a':>10} {'n/a':>6}   {r['decode_tps']:>15.1f} {'n/a':>10} {'n/a':>6}")
PY

echo
echo "== views: median time to draw a full 200x60 frame (budget: one 50 ms frame)"
if [ -x "$BUILD/tests/test_views" ]; then "$BUILD/tests/test_views" --bench || echo "(views bench failed)"
else echo "(build the tests first: make tests)"; fi

for b in tests/bench_*.sh; do
    [ -f "$b" ] || continue
    echo
    echo "== $b"
    bash "$b" "$BUILD" "$MODEL" || echo "($b failed)"
done
