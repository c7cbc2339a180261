#!/usr/bin/env bash
# Decode speed of the latent methods against `full`, measured in the same run at the same context
# (default 2048 tokens of the default document): tokens/s and the ratio to full (target >= 0.9).
# commonkv is also run with KVS_CKV_FP32=1 (keys rebuilt by fp32 sgemm instead of the bf16 kernel,
# where the build has one) and shown as commonkv-fp32.
#   tests/bench_methods.sh [BUILD] [MODEL] [CTX] [CR]
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-build}
MODEL=${2:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
CTX=${3:-2048}
CR=${4:-0.5}
BIN=$BUILD/kvscope
[ -x "$BIN" ] || { echo "bench_methods: $BIN not built"; exit 1; }
[ -f "$MODEL" ] || { echo "bench_methods: no model at $MODEL"; exit 1; }
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
for m in full commonkv lowrank; do
    "$BIN" bench -m "$MODEL" --methods "$m" --cr "$CR" --ctx "$CTX" -n 32 --json >>"$OUT" || exit 1
done
KVS_CKV_FP32=1 "$BIN" bench -m "$MODEL" --methods commonkv --cr "$CR" --ctx "$CTX" -n 32 --json |
    sed 's/"method": *"commonkv"/"method":"commonkv-fp32"/' >>"$OUT" || exit 1
python3 - "$OUT" "$CTX" "$CR" <<'PY'
import json, sys
rows = []
for line in open(sys.argv[1]):
    line = line.strip()
    if line: rows += json.loads(line)
full = [r for r in rows if r["method"] == "full"][0]
print("decode at %s tokens of context, target CR %s (%d threads)" % (sys.argv[2], sys.argv[3], full.get("threads", 0)))
print("%-14s %12s %12s %14s %8s" % ("method", "prefill t/s", "decode t/s", "KV held bytes", "vs full"))
for r in rows:
    print("%-14s %12.1f %12.1f %14d %7.2fx" % (r["method"], r["prefill_tps"], r["decode_tps"], r["bytes_held"],
                                              r["decode_tps"] / full["decode_tps"]))
ckv = [r for r in rows if r["method"] == "commonkv"][0]
ratio = ckv["decode_tps"] / full["decode_tps"]
print("commonkv/full decode ratio %.2f (target >= 0.90): %s" % (ratio, "met" if ratio >= 0.9 else "NOT met"))
PY
