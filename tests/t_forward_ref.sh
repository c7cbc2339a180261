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
# check NAME PATH-MODE: kvscope's logits ($T/NAME.MODE.bin) against the reference ($T/NAME.ref.bin).
# prefill and precise decode: |diff| <= 0.05 + 0.01|ref| everywhere and normalised error < 5e-3;
# decode (8-bit activations): normalised error < 1e-1, no elementwise bound (SmolLM2 measures 5.6e-2).
check() {
    local name=$1 mode=$2
    if python3 - "$T/$name.$mode.bin" "$T/$name.ref.bin" "$name" "$mode" <<'PY'
import sys, numpy as np
a = np.fromfile(sys.argv[1], dtype="<f4"); b = np.fromfile(sys.argv[2], dtype="<f4")
name, mode = sys.argv[3], sys.argv[4]
if a.shape != b.shape:
    print(f"FAIL {name} {mode}: shapes {a.shape} vs {b.shape}"); sys.exit(1)
d = np.abs(a - b); tol = 0.05 + 0.01 * np.abs(b)
nerr = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)
bad = int((d > tol).sum())
print(f"   {name} {mode}: {a.size} logits, max |diff| {d.max():.4g}, normalised error {nerr:.3g}, {bad} out of tolerance")
ok = nerr < 1e-1 if mode == "decode" else bad == 0 and nerr < 5e-3
sys.exit(0 if ok else 1)
PY
    then pass=$((pass+1)); else echo "FAIL $name $mode"; fail=$((fail+1)); fi
}
compare() { # name model ids...
    local name=$1 model=$2; shift 2
    if ! python3 tests/ref/forward_ref.py "$model" "$T/$name.ref.bin" "$@" 2>"$T/$name.perr"; then
        echo "FAIL $name: reference failed: $(tail -3 "$T/$name.perr")"; fail=$((fail+1)); return; fi
    local mode flag
    for mode in prefill decode precise; do
        case $mode in prefill) flag=--dump ;; decode) flag=--dump-decode ;; precise) flag=--dump-decode-precise ;; esac
        if ! "$B" $flag "$model" "$T/$name.$mode.bin" "$@" 2>"$T/$name.err"; then
            echo "FAIL $name $mode: kvscope dump failed: $(cat "$T/$name.err")"; fail=$((fail+1)); continue; fi
        check "$name" $mode
    done
}
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
