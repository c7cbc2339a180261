#!/usr/bin/env bash
# The GPU benchmark and the one-command GPU report, exercised without a GPU: tests/bench_gpu.sh
# through the host emulation of the CUDA kernels (KVS_BENCH_EMU=1, the random Llama-3-shaped tiny
# model) prints the peaks, a row per model, method and context with its floor, the SVD and the goals,
# and its raw rows' floors are the bytes at the measured bandwidth plus the rebuild MACs at the
# measured rate; a spent budget and a run over its time limit are reported, not fatal; without a GPU
# and without the emulation it says "skipped: no GPU"; tests/gpu_report.sh's dry run
# (KVS_GPU_REPORT_EMU=1) writes one report under $OUT with every part. Timings mean nothing here:
# only the structure and the arithmetic are checked. Prints "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
B=${KVS_BUILD:-build}
T=${KVS_TEST_TMP:-$(mktemp -d)}/bench_gpu
mkdir -p "$T"
pass=0; fail=0
ok() { pass=$((pass+1)); }
ko() { echo "FAIL $*"; fail=$((fail+1)); }
has() { grep -qE "$2" "$1" || { ko "$3 (no /$2/ in $1)"; return 1; }; ok; }

for f in "$B/emu/bench_peak" "$B/emu/libkvscope_cuda_emu.so" "$B/tests/test_bench"; do
    [ -e "$f" ] || { ko "$f not built (make tests)"; echo "$pass passed, $fail failed"; exit 1; }
done

# no GPU and no emulation: a clean skip
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    out=$(KVS_BENCH_EMU=0 bash tests/bench_gpu.sh "$B" 2>&1); rc=$?
    if [ $rc -eq 0 ] && [ "$out" = "skipped: no GPU" ]; then ok; else ko "bench_gpu.sh without a GPU: exit $rc: $out"; fi
    out=$(KVS_GPU_REPORT_EMU=0 bash tests/gpu_report.sh "$B" 2>&1); rc=$?
    if [ $rc -eq 0 ] && [ "$out" = "skipped: no GPU" ]; then ok; else ko "gpu_report.sh without a GPU: exit $rc: $out"; fi
fi

# the whole bench path through the emulation
R=$T/bench.txt
if KVS_BENCH_EMU=1 BENCH_GPU_JSON=$T/rows.jsonl timeout 600 bash tests/bench_gpu.sh "$B" >"$R" 2>&1; then ok
else ko "bench_gpu.sh (emulated) failed: $(tail -n 3 "$R")"; fi
has "$R" '^wrote llama3-tiny \(random Q4_0 blocks, seed 1\)' "the random model is written"
has "$R" '^\{"device": "CUDA emulation \(host\)".*"bandwidth_GBps": [0-9.]+.*"tmacs": [0-9.]+' "the peaks as JSON"
has "$R" '^model +method +ctx +prefill t/s +decode t/s +ms/token +floor ms +\(bytes\+MAC\) +x floor +GB/s +vs full' "the table header"
for ctx in 24 48; do
    has "$R" "^llama3-tiny +full +$ctx( +[0-9.]+){4} +[0-9.]+\+0\.00 +[0-9.]+x +[0-9.]+ +1\.00x$" "full at $ctx with a bytes-only floor"
    has "$R" "^llama3-tiny +commonkv +$ctx( +[0-9.]+){4} +[0-9.]+\+[0-9.]+ +[0-9.]+x +[0-9.]+ +[0-9.]+x$" "commonkv at $ctx with its floor"
done
has "$R" '^SVD llama3-tiny +1 groups of \(512 x 256\) on cuda: [0-9.]+ s$' "the SVD of every group on the backend"
has "$R" '^  llama3-tiny commonkv 48: [0-9.]+x its floor \(goal <= 1.30x\) (met|NOT met)$' "the goals"
has "$R" '^bench-gpu: 5 measured, 0 not \(0 failed' "the closing count"
# every floor is (weights + cache) / bandwidth + MACs / rate, from the run's own numbers
if python3 - "$T/rows.jsonl" "$R" <<'PY'; then ok; else ko "the floors do not follow from the rows' bytes, MACs and peaks"; fi
import json, re, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
peak = json.loads(next(l for l in open(sys.argv[2]) if l.startswith('{"device"')))
bw, rate = peak["bandwidth_GBps"] * 1e9, peak["gemm"][0]["tmacs"] * 1e12
bench = [r for r in rows if r["kind"] == "bench"]
assert len(bench) == 4, len(bench)
for r in bench:
    assert r["status"] == "ok" and r["backend"] == "cuda", r
    want_b = (r["weight_bytes"] + r["cache_bytes_mean"]) / bw
    want_m = r["rebuild_macs"] / rate
    assert abs(r["floor_bytes_s"] - want_b) <= 1e-6 * want_b + 1e-9, (r, want_b)
    assert abs(r["floor_macs_s"] - want_m) <= 1e-4 * want_m + 1e-9, (r, want_m)
    assert abs(r["floor_s"] - r["floor_bytes_s"] - r["floor_macs_s"]) <= 2e-9, r
    assert abs(r["floor_ratio"] - r["decode_s_per_token"] / r["floor_s"]) <= 1e-3 * r["floor_ratio"], r
    assert (r["rebuild_macs"] > 0) == (r["method"] == "commonkv"), r
    # llama3-tiny: 4 layers of q, k, v, o (256x256, 64x256 x2, 256x256), ffn 3 x 896x256, head 1024x256, fp16
    assert r["weight_bytes"] == 2 * (4 * (2 * 256 * 256 + 2 * 64 * 256 + 3 * 896 * 256) + 1024 * 256), r["weight_bytes"]
PY

# a spent budget and a run over its limit are reported, and the script still ends well
if KVS_BENCH_EMU=1 BENCH_GPU_BUDGET=1 timeout 300 bash tests/bench_gpu.sh "$B" >"$T/budget.txt" 2>&1; then ok
else ko "bench_gpu.sh with no budget failed: $(tail -n 2 "$T/budget.txt")"; fi
has "$T/budget.txt" '^model llama3-tiny skipped: budget spent$' "work past the budget is skipped and said so"
has "$T/budget.txt" '^bench-gpu: 0 measured, [0-9]+ not' "nothing measured is said"
if KVS_BENCH_EMU=1 BENCH_GPU_CTX=4000 BENCH_GPU_RUN_MAX=6 timeout 300 bash tests/bench_gpu.sh "$B" >"$T/slow.txt" 2>&1; then ok
else ko "bench_gpu.sh with a timed-out run failed: $(tail -n 2 "$T/slow.txt")"; fi
has "$T/slow.txt" '^llama3-tiny +full +4000 +timed out after 6s$' "a run over its limit is reported"

# a run that fails (here: a CUDA library that is not one) is reported with its reason and fails the script
echo "not a shared object" >"$T/not-a-library.so"
KVS_BENCH_EMU=1 KVS_CUDA_EMU_LIB=$T/not-a-library.so BENCH_GPU_CTX=24 timeout 300 bash tests/bench_gpu.sh "$B" \
    >"$T/broken.txt" 2>&1 </dev/null
rc=$?
if [ $rc -eq 1 ]; then ok; else ko "bench_gpu.sh with failing runs: exit $rc, not 1"; fi
has "$T/broken.txt" '^llama3-tiny +full +24 +failed \(exit 1\): kvscope: ' "a failed run says why"
has "$T/broken.txt" '^bench-gpu: 0 measured, [0-9]+ not \([1-9][0-9]* failed' "the failures are counted"

# the one-command report, dry run on the emulation, into $OUT
mkdir -p "$T/out"
if OUT=$T/out KVS_GPU_REPORT_EMU=1 GPU_REPORT_BUDGET=450 timeout 900 bash tests/gpu_report.sh "$B" >"$T/report.log" 2>&1; then ok
else ko "gpu_report.sh dry run failed: $(tail -n 8 "$T/report.log")"; fi
G=$T/out/gpu-report.txt
if [ -f "$G" ]; then
    ok
    for s in device build check-gpu "GPU benchmark" summary; do has "$G" "^== $s.* \(t\+[0-9]+s\)$" "report section $s"; done
    has "$G" '^build +ok$' "the build step passed"
    has "$G" '^check-gpu +ok \([0-9]+ passed, 0 failed\)$' "check-gpu passed"
    has "$G" '^compute-sanitizer +skipped: compute-sanitizer \(emulation' "the sanitizers say why they did not run"
    has "$G" '^bench-gpu +ok \(5 measured, 0 not \(0 failed' "the benchmark ran"
    has "$G" '^\{"method": "commonkv", .*"floor_ratio": [0-9.]+, "kind": "bench"' "the raw rows are in the report"
    has "$G" '^total [0-9]+s; report: ' "the closing line"
else
    ko "no report at $G"
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
