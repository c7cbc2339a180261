#!/usr/bin/env bash
# Live quality (run --batch --compare-full): the method is scored teacher-forced on the full run's
# tokens, so its text is the reference's, both perplexities are measured on those tokens, and a
# degenerate compressed run cannot look good by scoring its own output. Also: setup is its own
# phase in the log. Prints "N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=${KVS_BIN:-$PWD/$BUILD/kvscope}
TMP=${KVS_TEST_TMP:-$(mktemp -d)}/t_live_quality.$$
mkdir -p "$TMP"
export XDG_CACHE_HOME=$TMP/cache
pass=0; fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { local what=$1; shift; if "$@"; then ok; else bad "$what"; fi; }

# summary FILE KEY: a key of the batch summary line (empty when absent)
summary() { tail -1 "$1" | python3 -c "import json,sys; v=json.loads(sys.stdin.read()).get('$2'); print('' if v is None else v)"; }

TINY=$TMP/tiny.gguf
"$BUILD/tests/test_methods" --write-tiny "$TINY" llama || { bad "write tiny model"; echo "$pass passed, $fail failed"; exit 1; }
head -c 900 /usr/share/common-licenses/GPL-3 >"$TMP/gpl.txt"

# tiny: the summary carries both perplexities and the number of scored tokens
"$BIN" run --batch -m "$TINY" -f "$TMP/gpl.txt" -n 12 --ctx 512 --cr 0.7 --recent 16 --compare-full --method snapkv \
    -t 2 >"$TMP/tiny.jsonl" 2>"$TMP/tiny.err"
check "tiny run exits 0" test $? -eq 0
check "tiny: ppl of the full run on the same tokens" test -n "$(summary "$TMP/tiny.jsonl" ppl_full)"
check "tiny: scored tokens = generated tokens" test "$(summary "$TMP/tiny.jsonl" n_scored)" = "$(summary "$TMP/tiny.jsonl" n_gen)"
check "setup is its own phase" grep -q "setup (factorization" "$TMP/tiny.jsonl" "$TMP/tiny.err"
# without a reference there is nothing to compare: no KL, never a 0
"$BIN" run --batch -m "$TINY" -f "$TMP/gpl.txt" -n 4 --ctx 512 --method full -t 2 >"$TMP/full.jsonl" 2>/dev/null
check "no reference: KL absent" test -z "$(summary "$TMP/full.jsonl" kl)"

M=${KVS_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -f "$M" ]; then
    # CR 0.8 changes SmolLM2's greedy text when it generates on its own; scored on the reference's
    # tokens its text is the full run's and its perplexity is worse than the full run's
    "$BIN" run --batch -m "$M" -f "$TMP/gpl.txt" -n 16 --ctx 512 --method full -t 2 >"$TMP/sm.full" 2>/dev/null
    check "SmolLM2 full exits 0" test $? -eq 0
    "$BIN" run --batch -m "$M" -f "$TMP/gpl.txt" -n 16 --ctx 512 --cr 0.8 --recent 16 --compare-full --method commonkv \
        -t 2 >"$TMP/sm.ckv" 2>/dev/null
    check "SmolLM2 commonkv exits 0" test $? -eq 0
    check "the method reads the reference's tokens" test "$(summary "$TMP/sm.full" text)" = "$(summary "$TMP/sm.ckv" text)"
    check "both perplexities, on the same tokens" python3 - "$TMP/sm.ckv" <<'PY'
import json, sys
d = json.loads(open(sys.argv[1]).read().splitlines()[-1])
assert d["ppl_full"] > 0 and d["ppl"] > d["ppl_full"] and d["kl"] > 0, d
PY
else
    echo "skipped: no real model at $M"
fi
rm -rf "$TMP"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
