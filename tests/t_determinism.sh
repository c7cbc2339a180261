#!/usr/bin/env bash
# Reproducible runs (DESIGN.md §7, kvscope(1) "runs are deterministic"): the same command gives the
# same bytes on repeated runs and at -t 1, 2 and 3, for every method, through `generate --json`,
# `run --batch` and `eval --json`, on the tiny test model; on SmolLM2 (when present; its runs cost
# seconds each) at two thread counts for commonkv+quant+snapkv beside full (run --batch),
# minicache and --precise (generate) and full, snapkv (eval). Each run gets
# its own empty factor cache, so a cached factorization cannot hide nondeterminism in calibration
# or the SVD. Only wall-clock fields are removed before comparing (see STRIP); the thread count
# itself (n_threads / threads) is removed too, since it is the one setting that differs on purpose.
# Prints "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=${KVS_BIN:-$BUILD/kvscope}
T=${KVS_TEST_TMP:-$(mktemp -d)}/determinism
rm -rf "$T"
mkdir -p "$T"
pass=0; fail=0
ok() { pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }

# wall-clock timings: step start/end, run start time, per-op nanoseconds, tokens per second
STRIP=t_start_ns,t_end_ns,unix_ns,ns,prefill_tps,decode_tps,n_threads,threads
cat >"$T/norm.py" <<'PY'
import json, sys
drop = set(sys.argv[1].split(","))
def strip(o):
    if isinstance(o, dict): return {k: strip(v) for k, v in o.items() if k not in drop}
    if isinstance(o, list): return [strip(v) for v in o]
    return o
text = sys.stdin.read()
try:  # one JSON document (generate --json, eval --json) ...
    docs = [json.loads(text)]
except ValueError:  # ... or JSON lines (run --batch)
    docs = [json.loads(l) for l in text.splitlines() if l.strip()]
for d in docs: print(json.dumps(strip(d), sort_keys=True))
PY

# run NAME ARGS...: runs kvscope with a private cache, keeps the normalised output in $T/NAME.out
run() {
    local name=$1; shift
    local extra=()
    [ "$1" = eval ] && extra=(--cache-dir "$T/cache.$name")
    if ! XDG_CACHE_HOME="$T/cache.$name" timeout 300 "$BIN" "$@" "${extra[@]}" >"$T/$name.raw" 2>"$T/$name.err"; then
        bad "$name: kvscope $* failed: $(tail -2 "$T/$name.err")"
        : >"$T/$name.out"
        return
    fi
    python3 "$T/norm.py" "$STRIP" <"$T/$name.raw" >"$T/$name.out" || bad "$name: output is not JSON"
}

# same WHAT A B...: the normalised outputs are byte-identical to the first
same() {
    local what=$1 a=$2; shift 2
    local b good=1
    [ -s "$T/$a.out" ] || { bad "$what: $a produced nothing"; return; }
    for b in "$@"; do
        if ! cmp -s "$T/$a.out" "$T/$b.out"; then
            good=0
            bad "$what: $b differs from $a at $(cmp "$T/$a.out" "$T/$b.out" 2>&1 | head -1 | sed 's/.*: //')"
            diff <(tr ',' '\n' <"$T/$a.out") <(tr ',' '\n' <"$T/$b.out") | head -6
        fi
    done
    [ $good -eq 1 ] && ok
}

# runs the pair in parallel (two cores; nothing here depends on timing)
both() { "$@" & }

METHODS="full commonkv lowrank minicache quant snapkv streaming commonkv+quant+snapkv quant+snapkv quant+streaming"

# ---------------------------------------------------------------- tiny model, every method
TINY=$T/tiny.gguf
if ! "$BUILD/tests/test_methods" --write-tiny "$TINY" llama; then
    bad "write tiny model"; echo "$pass passed, $fail failed"; exit 1
fi
python3 - "$T/text.txt" <<'PY'
import sys
words = "the quick brown fox jumps over the lazy dog while a small cat sleeps in the warm sun".split()
open(sys.argv[1], "w").write(" ".join(words[(i * 7) % len(words)] for i in range(150)) + "\n")
PY
TXT=$T/text.txt
for m in $METHODS; do
    k=${m//+/_}
    # short recent window so merging, quantization and eviction all act on prompt and decoded tokens
    R=(run --batch -m "$TINY" -f "$TXT" -n 40 --ctx 512 --cr 0.5 --recent 16 --compare-full --method "$m")
    G=(generate -m "$TINY" -f "$TXT" -n 24 --ctx 512 --cr 0.5 --json --method "$m")
    for t in 1 2 3; do
        both run "tiny.run.$k.t$t" "${R[@]}" -t $t
        both run "tiny.gen.$k.t$t" "${G[@]}" -t $t
        wait
    done
    run "tiny.run.$k.again" "${R[@]}" -t 2
    same "tiny run --batch $m" "tiny.run.$k.t1" "tiny.run.$k.t2" "tiny.run.$k.t3" "tiny.run.$k.again"
    same "tiny generate $m" "tiny.gen.$k.t1" "tiny.gen.$k.t2" "tiny.gen.$k.t3"
done
E=(eval -m "$TINY" -f "$TXT" --methods "${METHODS// /,}" --cr 0.5 --ctx 400 --passkey 200 --passkey-trials 1
   --decode 8 --recent 16 --json)
both run tiny.eval.t1 "${E[@]}" -t 1
both run tiny.eval.t3 "${E[@]}" -t 3
wait
both run tiny.eval.t2 "${E[@]}" -t 2
both run tiny.eval.again "${E[@]}" -t 2
wait
same "tiny eval (every method)" tiny.eval.t1 tiny.eval.t2 tiny.eval.t3 tiny.eval.again

# ---------------------------------------------------------------- SmolLM2 (the real quantized model)
M=${KVS_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -f "$M" ]; then
    head -c 900 /usr/share/common-licenses/GPL-3 >"$T/gpl.txt" # about 200 tokens: prefill + decode
    R=(run --batch -m "$M" -f "$T/gpl.txt" -n 16 --ctx 512 --cr 0.5 --recent 16 --compare-full
       --method commonkv+quant+snapkv)
    both run sm.run.t1 "${R[@]}" -t 1
    both run sm.run.t3 "${R[@]}" -t 3
    wait
    same "SmolLM2 run --batch commonkv+quant+snapkv (with full)" sm.run.t1 sm.run.t3
    G=(generate -m "$M" -f "$T/gpl.txt" -n 16 --ctx 512 --cr 0.5 --json --method minicache)
    both run sm.gen.t1 "${G[@]}" -t 1
    both run sm.gen.t2 "${G[@]}" -t 2
    wait
    same "SmolLM2 generate minicache" sm.gen.t1 sm.gen.t2
    G=(generate -m "$M" -f "$T/gpl.txt" -n 16 --ctx 512 --json --precise --method full)
    both run sm.gen.precise.t1 "${G[@]}" -t 1
    both run sm.gen.precise.t3 "${G[@]}" -t 3
    wait
    same "SmolLM2 generate --precise" sm.gen.precise.t1 sm.gen.precise.t3
    grep -q '"precise": true' "$T/sm.gen.precise.t1.out" && ok || bad "generate --json does not say precise"
    E=(eval -m "$M" -f "$T/gpl.txt" --methods full,snapkv --cr 0.5 --ctx 256 --passkey 200 --passkey-trials 1
       --decode 4 --recent 16 --json)
    both run sm.eval.t1 "${E[@]}" -t 1
    both run sm.eval.t3 "${E[@]}" -t 3
    wait
    same "SmolLM2 eval full,snapkv" sm.eval.t1 sm.eval.t3
else
    echo "skipped: $M missing (SmolLM2 checks)"
fi

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
