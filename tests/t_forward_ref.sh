#!/usr/bin/env bash
# Logits of kvscope's CPU forward pass against the independent numpy reference
# (tests/ref/forward_ref.py over the gguf package's dequantizers) on tiny models of every weight
# type and architecture option, and on SmolLM2 when present, for the three paths: prefill (fp32
# sgemm), decode one token at a time (8-bit activations in products of <= 4 rows) and decode with
# --precise (fp32 sgemm). The normalised errors printed here are the ones kvscope(1) states.
# Prints "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
B=${KVS_BUILD:-build}/tests/test_infer
T=${KVS_TEST_TMP:-$(mktemp -d)}/fwdref
mkdir -p "$T"
pass=0; fail=0
. tests/lib/fwdref.sh
for cfg in $("$B" --list-tiny); do
    "$B" --write-tiny "$T/$cfg.gguf" "$cfg" || { echo "FAIL write $cfg"; fail=$((fail+1)); continue; }
    compare "$cfg" "$T/$cfg.gguf" 1 5 9 13 40 77 101 3 250 64 17 2
done
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$M" ]; then
    compare smollm2 "$M" 504 3575 282 4649 314 6403 1980 253 655 28 665 436 253 1838 8180
else
    echo "skipped: $M missing"
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
