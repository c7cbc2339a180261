#!/usr/bin/env bash
# Decode speed of the latent methods against `full`, measured in the same run at the same context
# (default 2048 tokens of the default document): tokens/s and the ratio to full (target >= 0.9).
# commonkv (keys rebuilt by the bf16 kernel where the build has one) is also run with
# --ckv-keys int8 (the VNNI kernel: faster, coarser) and fp32 (BLAS), shown as commonkv-int8 and
# commonkv-fp32.
# This machine's speed drifts by tens of percent from minute to minute (shared host), so the
# methods run interleaved for ROUNDS rounds: each method's best decode rate is reported, and the
# commonkv/full ratio of every round (neighbours in time) with their median.
#   tests/bench_methods.sh [BUILD] [MODEL] [CTX] [CR] [ROUNDS]
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-build}
MODEL=${2:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
CTX=${3:-2048}
CR=${4:-0.5}
ROUNDS=${5:-3}
BIN=$BUILD/kvscope
[ -x "$BIN" ] || { echo "bench_methods: $BIN not built"; exit 1; }
[ -f "$MODEL" ] || { echo "bench_methods: no model at $MODEL"; exit 1; }
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
for round in $(seq 1 "$ROUNDS"); do
    for m in full commonkv lowrank; do
        "$BIN" bench -m "$MODEL" --methods "$m" --cr "$CR" --ctx "$CTX" -n 64 --json |
            sed "s/^\[{/[{\"round\": $round, /" >>"$OUT" || exit 1
    done
    for keys in int8 fp32; do
        "$BIN" bench -m "$MODEL" --methods commonkv --cr "$CR" --ctx "$CTX" -n 64 --ckv-keys "$keys" --json |
            sed "s/\"method\": *\"commonkv\"/\"method\":\"commonkv-$keys\"/" |
            sed "s/^\[{/[{\"round\": $round, /" >>"$OUT" || exit 1
    done
done
python3 - "$OUT" "$CTX" "$CR" <<'PY'
import json, statistics, sys
rows = []
for line in open(sys.argv[1]):
    line = line.strip()
    if line: rows += json.loads(line)
methods = []
for r in rows:
    if r["method"] not in methods: methods.append(r["method"])
best = {m: max((r for r in rows if r["method"] == m), key=lambda r: r["decode_tps"]) for m in methods}
print("decode at %s tokens of context, target CR %s (%d threads, best of %d interleaved rounds)" %
      (sys.argv[2], sys.argv[3], best["full"].get("threads", 0), max(r["round"] for r in rows)))
print("%-14s %12s %12s %14s %8s" % ("method", "prefill t/s", "decode t/s", "KV held bytes", "vs full"))
for m in methods:
    r = best[m]
    print("%-14s %12.1f %12.1f %14d %7.2fx" % (m, r["prefill_tps"], r["decode_tps"], r["bytes_held"],
                                              r["decode_tps"] / best["full"]["decode_tps"]))
by = {(r["round"], r["method"]): r["decode_tps"] for r in rows}
ratios = [by[(k, "commonkv")] / by[(k, "full")] for k in sorted({r["round"] for r in rows})]
med = statistics.median(ratios)
print("commonkv/full decode ratio per round: %s; median %.2f (target >= 0.90): %s" %
      (" ".join("%.2f" % x for x in ratios), med, "met" if med >= 0.9 else "NOT met"))
PY
