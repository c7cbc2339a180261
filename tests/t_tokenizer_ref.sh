#!/usr/bin/env bash
# Reference test of the tokenizer: kvscope's ids (tests/test_tokenizer MODEL TEXTFILE) against an
# independent HuggingFace `tokenizers` build of the same GGUF vocabulary and merges
# (tests/ref/tokenizer_ref.py) on varied Unicode/code/number/whitespace text, seeded random text,
# special-token text and GPL-3; and the chat prompt against the GGUF's template rendered by
# jinja2. Skips (0 passed, 0 failed) without the model or the Python packages.
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=$BUILD/tests/test_tokenizer
MODEL=${KVS_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
skip() { echo "skipped: $*"; echo "0 passed, 0 failed"; exit 0; }

[ -x "$BIN" ] || { echo "missing $BIN (make BUILD=$BUILD tests)"; echo "0 passed, 1 failed"; exit 1; }
[ -f "$MODEL" ] || skip "model missing ($MODEL)"
python3 -c 'import gguf, tokenizers, jinja2' 2>/dev/null || skip "python gguf, tokenizers or jinja2 missing"

TMP=$(mktemp -d "${KVS_TEST_TMP:-/tmp}/tokref.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
python3 tests/ref/tokenizer_ref.py --cases "$TMP/cases" || { echo "0 passed, 1 failed"; exit 1; }
[ -f /usr/share/common-licenses/GPL-3 ] && cp /usr/share/common-licenses/GPL-3 "$TMP/cases/gpl3_full.txt"
python3 tests/ref/tokenizer_ref.py "$MODEL" --batch "$TMP"/cases/*.txt || { echo "0 passed, 1 failed"; exit 1; }

for f in "$TMP"/cases/*.txt; do
    name=$(basename "$f")
    special=
    case $name in *.special.txt) special=--special ;; esac
    if ! "$BIN" "$MODEL" "$f" $special >"$f.got" 2>"$f.err"; then
        bad "$name: kvscope failed: $(head -c 300 "$f.err")"
        continue
    fi
    if cmp -s "$f.ref" "$f.got"; then
        ok "$name ($(wc -l <"$f.ref") ids)"
    else
        line=$(cmp "$f.ref" "$f.got" 2>&1 | sed -nE 's/.* line ([0-9]+).*/\1/p')
        bad "$name: $(wc -l <"$f.ref") reference ids, $(wc -l <"$f.got") from kvscope; first difference at id #${line:-?}:" \
            "reference $(sed -n "${line:-1}p" "$f.ref"), kvscope $(sed -n "${line:-1}p" "$f.got")"
    fi
done

# chat prompt: one user turn, without (default system prompt) and with a system message
for sys in "" "You answer in one word."; do
    if [ -z "$sys" ]; then
        python3 tests/ref/tokenizer_ref.py "$MODEL" --chat "What is 2+2?" >"$TMP/chat.ref"
        "$BIN" --chat "$MODEL" "What is 2+2?" >"$TMP/chat.got"
    else
        python3 tests/ref/tokenizer_ref.py "$MODEL" --chat "What is 2+2?" "$sys" >"$TMP/chat.ref"
        "$BIN" --chat "$MODEL" "What is 2+2?" "$sys" >"$TMP/chat.got"
    fi
    if cmp -s "$TMP/chat.ref" "$TMP/chat.got"; then
        ok "chat prompt (system: ${sys:-default})"
    else
        bad "chat prompt (system: ${sys:-default}) differs:"
        diff "$TMP/chat.ref" "$TMP/chat.got" | head -n 10
    fi
done

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
