#!/usr/bin/env bash
# `kvscope eval` and `kvscope calibrate` end to end: on a tiny model (every method on two texts,
# JSON fields, targets met and seen by the scored positions, the reference row exact, lossy methods
# lose information, retrieval rows, similarity evidence, merge weights from calibrate, bad options)
# and, when present, a short run on SmolLM2. Prints "N passed, N failed" last.
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
head -c 3000 "$TMP/text.txt" | tr 'a-z' 'A-Z' >"$TMP/text2.txt"
"$BIN" eval -m "$TINY" -f "$TMP/text.txt" -f "$TMP/text2.txt" --methods $METHODS --cr 0.5 --prefix 271 --score 96 \
    --score-chunk 24 --passkey 200 --depths 2 --multikey 1 --decode 4 -t 2 --json >"$TMP/eval.json" 2>"$TMP/eval.err"
check "eval exits 0" test $? -eq 0
python3 - "$TMP/eval.json" <<'PY' || fail=$((fail + 1))
import json, math, sys
doc = json.load(open(sys.argv[1]))
rows, pk, texts = doc["rows"], doc["passkey"], doc["texts"]
errs = []
if [t["label"] for t in texts] != ["text.txt", "text2.tx"]: errs.append("texts: %s" % texts)
for t in texts:
    if t["prefix"] != 271 or t["scored"] != 96: errs.append("text %s: prefix %d scored %d" % (t["label"], t["prefix"], t["scored"]))
names = [r["method"] for r in rows]
for want in ["full", "commonkv", "lowrank", "minicache", "quant", "snapkv", "streaming", "commonkv+quant+snapkv"]:
    if names.count(want) != 2: errs.append("want one %s row per text, got %d" % (want, names.count(want)))
    if [p["method"] for p in pk].count(want) != 1: errs.append("no passkey row for " + want)
for r in rows:
    if "error" in r: errs.append("%s failed: %s" % (r["method"], r["error"])); continue
    for k in ["achieved_cr", "cr_seen", "ppl", "ppl_full", "kl", "top1", "bytes_held", "bytes_full", "bytes_alloc"]:
        if k not in r or r[k] is None or (isinstance(r[k], float) and not math.isfinite(r[k])):
            errs.append("%s: bad %s" % (r["method"], k))
    if r["bytes_alloc"] < r["bytes_held"]: errs.append(r["method"] + ": alloc < held")
    if r["n_scored"] != 96: errs.append(r["method"] + ": scored %d" % r["n_scored"])
for p in pk:
    for l in p["lengths"]:
        if l["single_n"] != 2 or l["multi_n"] != 1: errs.append("%s: passkey trials %s" % (p["method"], l))
full = [r for r in rows if r["method"] == "full"]
for f in full:
    if f["kl"] != 0 or f["top1"] != 1 or f["achieved_cr"] != 0 or f["cr_seen"] != 0: errs.append("full row is not the reference")
# both runs' perplexity on the same tokens: every row's ppl_full is the full row's ppl on that text
ref = {f["text"]: f["ppl"] for f in full}
for r in rows:
    if "error" not in r and abs(r["ppl_full"] - ref[r["text"]]) > 1e-6 * ref[r["text"]]: errs.append(r["method"] + ": ppl_full differs")
for m in ["commonkv", "lowrank", "snapkv", "streaming"]:
    for r in [x for x in rows if x["method"] == m]:
        if abs(r["achieved_cr"] - 0.5) > 0.03: errs.append("%s: achieved %.3f for target 0.5" % (m, r["achieved_cr"]))
        # the scored positions attended over the compressed prefix: what they saw is near the target
        if abs(r["cr_seen"] - 0.5) > 0.05: errs.append("%s: CR seen %.3f for target 0.5" % (m, r["cr_seen"]))
ckv = [x for x in rows if x["method"] == "commonkv"][0]
if ckv["merged_frac"] <= 0 or ckv["rank_max"] <= 0: errs.append("commonkv shows no rank or merging")
for e in errs: print("FAIL:", e)
sys.exit(1 if errs else 0)
PY
[ $? -eq 0 ] && ok

# methods that lose information show it on the scored positions: 2-bit quantization (quant at CR
# 0.9 runs at 2 bits) and 90% eviction act on the prefix the scored tokens attend over
"$BIN" eval -m "$TINY" -f "$TMP/text.txt" --methods quant,snapkv --cr 0.9 --prefix 271 --score 128 --passkey none \
    --decode 0 -t 2 --json >"$TMP/lossy.json" 2>/dev/null
check "lossy eval exits 0" test $? -eq 0
check "2-bit quant and 90% eviction lose information" python3 -c "
import json; rows = json.load(open('$TMP/lossy.json'))['rows']
kl = {r['method']: r['kl'] for r in rows}
assert kl['quant'] > 3e-4 and kl['snapkv'] > 3e-3, kl
assert [r for r in rows if r['method'] == 'snapkv'][0]['cr_seen'] > 0.85, rows
"

# the table form names the columns and the notes
"$BIN" eval -m "$TINY" -f "$TMP/text.txt" --methods commonkv,minicache --cr 0.7 --ctx 300 --passkey 120 \
    --depths 1 --multikey 1 --decode 2 -t 2 >"$TMP/table.txt" 2>/dev/null
check "table exits 0" test $? -eq 0
check "table header" grep -q "CR seen.*CR end.*KL.*top-1.*ppl.*ppl full" "$TMP/table.txt"
check "retrieval table" grep -q "120: single multi" "$TMP/table.txt"
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
check "eval with merge weights" python3 -c "import json; r=json.load(open('$TMP/mw.json'))['rows']; assert 'error' not in r[1], r"

# bad input
"$BIN" eval -m "$TINY" --cr 1.5 >/dev/null 2>&1
check "bad --cr refused" test $? -eq 2
"$BIN" eval -m "$TINY" --methods full,bogus --cr 0.5 -f "$TMP/text.txt" --ctx 64 --passkey none --json >"$TMP/bogus.json" 2>"$TMP/bogus.err"
check "unknown method refused before the run" test $? -eq 2 -a ! -s "$TMP/bogus.json"
check "unknown method named" grep -q "option --methods: unknown method 'bogus'" "$TMP/bogus.err"
# a model that overflows to NaN: the JSON still parses, exit 1, and stderr says why
"$BUILD/tests/test_methods" --write-tiny "$TMP/nan.gguf" llama 1e30
"$BIN" eval -m "$TMP/nan.gguf" -f "$TMP/text.txt" --methods full,commonkv --cr 0.5 --ctx 64 --passkey none --decode 0 \
    --json >"$TMP/nan.json" 2>"$TMP/nan.err"
check "NaN model: exit 1" test $? -eq 1
check "NaN model: stderr says why" grep -qE "not finite|non-finite" "$TMP/nan.err"
check "NaN model: stdout is empty or JSON" python3 -c "
import json,sys; t=open('$TMP/nan.json').read(); t.strip() and json.loads(t)"
# a row that fails (merge weights that do not exist): valid JSON with an error field, and stderr
"$BIN" eval -m "$TINY" -f "$TMP/text.txt" --methods commonkv --cr 0.5 --ctx 64 --passkey none --decode 0 \
    --merge-weights "$TMP/none.txt" --json >"$TMP/fail.json" 2>"$TMP/fail.err"
check "failed row: exit 1" test $? -eq 1
check "failed row: stderr names it" grep -q "eval: commonkv @ CR 0.50: .*none.txt" "$TMP/fail.err"
check "failed row: JSON with an error" python3 -c "
import json; r=json.load(open('$TMP/fail.json'))['rows']; assert all('error' in x for x in r if x['method']=='commonkv') and r, r"
# write errors on stdout are errors
"$BIN" eval -m "$TINY" -f "$TMP/text.txt" --methods full --ctx 64 --passkey none --decode 0 --json >/dev/full 2>"$TMP/full.err"
check "eval --json >/dev/full exits 1" test $? -eq 1
check "eval --json >/dev/full says so" grep -q "cannot write" "$TMP/full.err"
"$BIN" eval -m "$TINY" -f "$TMP/nothere.txt" --passkey none >/dev/null 2>"$TMP/nofile.err"
check "missing text refused" test $? -ne 0
check "missing text named" grep -q "nothere.txt" "$TMP/nofile.err"

# the real model, briefly
MODEL=${KVS_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -f "$MODEL" ]; then
    "$BIN" eval -m "$MODEL" -f /usr/share/common-licenses/GPL-3 --methods commonkv,lowrank --cr 0.5 --prefix 320 \
        --score 64 --passkey none --decode 4 -t 2 --json >"$TMP/real.json" 2>/dev/null
    check "SmolLM2 eval exits 0" test $? -eq 0
    check "SmolLM2 targets met" python3 -c "
import json,math; rows=json.load(open('$TMP/real.json'))['rows']
for r in rows[1:]: assert abs(r['achieved_cr']-0.5) <= 0.02 and math.isfinite(r['ppl']), r
"
    "$BIN" eval -m "$MODEL" -f /usr/share/common-licenses/GPL-3 --methods quant,snapkv --cr 0.9 --prefix 320 \
        --score 64 --passkey none --decode 0 -t 2 --json >"$TMP/lossy.json" 2>/dev/null
    check "SmolLM2: 2-bit quant and 90% eviction lose information" python3 -c "
import json; kl = {r['method']: r['kl'] for r in json.load(open('$TMP/lossy.json'))['rows']}
assert kl['quant'] > 0.05 and kl['snapkv'] > 0.05, kl
"
else
    echo "skipped: no real model at $MODEL"
fi
rm -rf "$TMP"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
