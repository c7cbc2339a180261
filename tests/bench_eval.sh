#!/usr/bin/env bash
# The eval table at long context, for `make bench`: CommonKV against lowrank and minicache at CR
# 0.3/0.5/0.7 with the full cache as the baseline measured in the same run, on the default texts
# with a 2,048-token prefix (text allowing), and retrieval at 2K, 4K and 8K tokens, five depths
# and two multi-key prompts per length. Slow on a laptop CPU (tens of minutes); the sizes are
# arguments.
#   tests/bench_eval.sh [BUILD] [MODEL] [PREFIX] [PASSKEY_LENGTHS] [CRS]
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-build}
MODEL=${2:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
PREFIX=${3:-2048}
PK=${4:-2048,4096,8192}
CRS=${5:-0.3,0.5,0.7}
BIN=$BUILD/kvscope
[ -x "$BIN" ] || { echo "bench_eval: $BIN not built"; exit 1; }
[ -f "$MODEL" ] || { echo "bench_eval: no model at $MODEL"; exit 1; }
echo "== eval at long context: prefix $PREFIX, retrieval at $PK tokens (baseline: full, same run)"
"$BIN" eval -m "$MODEL" --methods full,commonkv,lowrank,minicache --cr "$CRS" --prefix "$PREFIX" --score 256 \
    --passkey "$PK" --depths 5 --multikey 2 -t "${BENCH_THREADS:-$(nproc)}" -q
