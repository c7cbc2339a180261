# Shared by t_forward_ref.sh and t_qwen_ref.sh: kvscope's logits (tests/test_infer --dump*) against
# the independent numpy reference (tests/ref/forward_ref.py) on the three CPU paths: prefill (fp32
# sgemm), decode one token at a time (8-bit activations in products of <= 4 rows) and decode with
# --precise (fp32 sgemm). The sourcing script sets B (test_infer), T (scratch folder), pass and fail.
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
