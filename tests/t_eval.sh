#!/usr/bin/env bash
# `kvscope eval` and `kvscope calibrate` end to end: on a tiny model (every method, JSON fields,
# targets met, the reference row exact, similarity evidence, merge weights from calibrate, bad
# options) and, when present, a short run on SmolLM2. Prints "N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=${KVS_BIN:-$PWD/$BUILD/kvscope}
TMP=${KVS_TEST_TMP:-$(mktemp -d)}/t_eval.$$
mkdir -p "$TMP"
export XDG_CACHE_HOME=$TMP/cache
pass=0; fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { local what=$1; shift; if "$@"; then ok; else bad "$what"; fi; }

TINY=$TMP/tiny.gguf
if ! "$BUILD/tests/test_methods" --write-tiny "$TINY" llama; then
    bad "write tiny model"; echo "$pass passed, $fail failed"; exit 1
fi
# a text the tiny tokenizer knows well enough
python3 - "$TMP/text.txt" <<'PY'
import sys
words = "the quick brown fox jumps over the lazy dog while a small cat sleeps in the warm sun".split()
out = []
for i in range(900):
    out.append(words[(i * 7) % len(words)])
open(sys.argv[1], "w").write(" ".join(out) + "\n")
PY

METHODS=full,commonkv,lowrank,minicache,quant,snapkv,streaming,commonkv+quant+snapkv
"$BIN" eval -m "$TINY" -f "$TMP/text.txt" --methods $METHODS --cr 0.5 --ctx 400 --passkey 200 \
    --passkey-trials 1 --decode 4 -t 2 --json >"$TMP/eval.json" 2>"$TMP/eval.err"
check "eval exits 0" test $? -eq 0
python3 - "$TMP/eval.json" <<'PY' || fail=$((fail + 1))
import json, math, sys
rows = json.load(open(sys.argv[1]))
errs = []
names = [r["method"] for r in rows]
for want in ["full", "commonkv", "lowrank", "minicache", "quant", "snapkv", "streaming", "commonkv+quant+snapkv"]:
    if want not in names: errs.append("missing row " + want)
for r in rows:
    if "error" in r: errs.append("%s failed: %s" % (r["method"], r["error"])); continue
    for k in ["achieved_cr", "ppl", "kl", "top1", "decode_tps", "bytes_held", "bytes_full", "bytes_alloc"]:
        if k not in r or r[k] is None or (isinstance(r[k], float) and not math.isfinite(r[k])):
            errs.append("%s: bad %s" % (r["method"], k))
    if r["bytes_alloc"] < r["bytes_held"]: errs.append(r["method"] + ": alloc < held")
    if r["passkey_acc"] is None: errs.append(r["method"] + ": passkey not measured")
full = [r for r in rows if r["method"] == "full"][0]
if full["kl"] != 0 or full["top1"] != 1 or full["achieved_cr"] != 0: errs.append("full row is not the reference")
for m in ["commonkv", "lowrank", "snapkv", "streaming"]:
    r = [x for x in rows if x["method"] == m][0]
    if abs(r["achieved_cr"] - 0.5) > 0.03: errs.append("%s: achieved %.3f for target 0.5" % (m, r["achieved_cr"]))
ckv = [x for x in rows if x["method"] == "commonkv"][0]
if ckv["merged_frac"] <= 0 or ckv["rank_max"] <= 0: errs.append("commonkv shows no rank or merging")
for e in errs: print("FAIL:", e)
sys.exit(1 if errs else 0)
PY
[ $? -eq 0 ] && ok

# the table form names the columns and the notes
"$BIN" eval -m "$TINY" -f "$TMP/text.txt" --methods commonkv,minicache --cr 0.7 --ctx 300 --passkey none \
    --decode 2 -t 2 >"$TMP/table.txt" 2>/dev/null
check "table exits 0" test $? -eq 0
check "table header" grep -q "achieved.*ppl.*KL.*top-1.*passkey" "$TMP/table.txt"
check "minicache beyond reach is said" grep -q "beyond reach" "$TMP/table.txt"

# second start reuses the factor cache
check "factor cache written" bash -c "ls '$TMP/cache/kvscope/'*.factors >/dev/null 2>&1"

# similarity evidence
"$BIN" eval -m "$TINY" -f "$TMP/text.txt" --similarity --ctx 200 -t 2 --json >"$TMP/sim.json" 2>/dev/null
check "similarity exits 0" test $? -eq 0
check "similarity json" python3 -c "
import json,sys; d=json.load(open('$TMP/sim.json')); a=d['adjacent']
assert len(a)==5 and all(-1<=x['hidden']<=1 and -1<=x['keys']<=1 for x in a)
assert a[0]['latent'] is not None and a[3]['latent'] is None   # groups of 4: 3-4 crosses groups
"

# calibrate writes per-layer weights that eval accepts
"$BIN" calibrate -m "$TINY" -f "$TMP/text.txt" --ctx 64 -o "$TMP/w.txt" -q >"$TMP/cal.txt" 2>&1
check "calibrate exits 0" test $? -eq 0
check "calibrate writes 6 layers" test "$(grep -vc '^#' "$TMP/w.txt")" -eq 6
# -t as its usage says, and the weights do not depend on the thread count
"$BIN" calibrate -m "$TINY" -f "$TMP/text.txt" --ctx 64 -o "$TMP/w1.txt" -q -t 1 >/dev/null 2>&1
check "calibrate -t 1 exits 0" test $? -eq 0
"$BIN" calibrate -m "$TINY" -f "$TMP/text.txt" --ctx 64 -o "$TMP/w2.txt" -q -t 2 >/dev/null 2>&1
check "calibrate -t 1 and -t 2 write the same weights" cmp -s "$TMP/w1.txt" "$TMP/w2.txt"
"$BIN" eval -m "$TINY" -f "$TMP/text.txt" --methods commonkv --cr 0.5 --ctx 200 --passkey none --decode 2 \
    --merge-weights "$TMP/w.txt" --json >"$TMP/mw.json" 2>/dev/null
check "eval with merge weights" python3 -c "import json; r=json.load(open('$TMP/mw.json')); assert 'error' not in r[1], r"

# bad input
"$BIN" eval -m "$TINY" --cr 1.5 >/dev/null 2>&1
check "bad --cr refused" test $? -eq 2
"$BIN" eval -m "$TINY" --methods bogus --cr 0.5 -f "$TMP/text.txt" --ctx 64 --passkey none --json >"$TMP/bogus.json" 2>/dev/null
check "unknown method reported" grep -q "unknown method" "$TMP/bogus.json"

# the real model, briefly
MODEL=${KVS_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -f "$MODEL" ]; then
    "$BIN" eval -m "$MODEL" --methods commonkv,lowrank --cr 0.5 --ctx 256 --passkey none --decode 4 -t 2 \
        --json >"$TMP/real.json" 2>/dev/null
    check "SmolLM2 eval exits 0" test $? -eq 0
    check "SmolLM2 targets met" python3 -c "
import json,math; rows=json.load(open('$TMP/real.json'))
for r in rows[1:]: assert abs(r['achieved_cr']-0.5) <= 0.02 and math.isfinite(r['ppl']), r
"
else
    echo "skipped: no real model at $MODEL"
fi
rm -rf "$TMP"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
