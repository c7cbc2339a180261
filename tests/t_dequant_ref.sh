#!/usr/bin/env bash
# Independent reference for the dequantizers: gguf-py's gguf.quants.dequantize against kvscope's
# (tests/test_dequant_dump) on tiny models of every type, random bit patterns, and tensors of the
# real model when models/ has it. Prints "N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=$BUILD/tests/test_dequant_dump
MODEL=${KVS_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ ! -x "$BIN" ]; then
    echo "FAIL: $BIN not built (make BUILD=$BUILD tests)"
    echo "0 passed, 1 failed"
    exit 1
fi
TMP=${KVS_TEST_TMP:-}
own_tmp=
if [ -z "$TMP" ]; then TMP=$(mktemp -d); own_tmp=1; fi
WORK=$(mktemp -d "$TMP/dequant-ref.XXXXXX")
python3 tests/ref/dequant_ref.py --bin "$BIN" --real "$MODEL" --tmp "$WORK"
rc=$?
rm -rf "$WORK"
[ -n "$own_tmp" ] && rm -rf "$TMP"
exit $rc
