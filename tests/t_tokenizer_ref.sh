#!/usr/bin/env bash
# Reference test of the tokenizer: kvscope's ids (tests/test_tokenizer MODEL TEXTFILE) against an
# independent HuggingFace `tokenizers` build of the same GGUF vocabulary and merges
# (tests/ref/tokenizer_ref.py) on varied Unicode/code/number/whitespace text, seeded random text,
# special-token text and GPL-3, with SmolLM2's own pre-tokenizer and with the GPT-2, Llama 3 and
# Qwen2 ones over the same vocabulary; the tiny SentencePiece-style model of the unit tests against
# HF BPE with byte fallback and merges ranked by score; and the chat prompt against the GGUF's
# template rendered by jinja2. Skips (0 passed, 0 failed) without the Python packages, and the
# SmolLM2 parts without the model.
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
python3 -c 'import gguf, tokenizers, jinja2' 2>/dev/null || skip "python gguf, tokenizers or jinja2 missing"

TMP=$(mktemp -d "${KVS_TEST_TMP:-/tmp}/tokref.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
python3 tests/ref/tokenizer_ref.py --cases "$TMP/cases" || { echo "0 passed, 1 failed"; exit 1; }
[ -f /usr/share/common-licenses/GPL-3 ] && cp /usr/share/common-licenses/GPL-3 "$TMP/cases/gpl3_full.txt"
# the model's own pre-tokenizer (smollm), then the other byte-level families on the same vocabulary
PRES=smollm,gpt2,llama-bpe,qwen2
if [ -f "$MODEL" ]; then
    python3 tests/ref/tokenizer_ref.py "$MODEL" --batch "$TMP" $PRES "$TMP"/cases/*.txt || { echo "0 passed, 1 failed"; exit 1; }
else
    echo "skipped: model missing ($MODEL): SmolLM2 vocabulary and chat template checks"
    PRES=
fi

# SentencePiece-style BPE: the tiny SPM model of the unit tests against HF BPE with byte fallback
"$BIN" --tiny-spm "$TMP/spm.gguf" || { echo "0 passed, 1 failed"; exit 1; }
python3 tests/ref/tokenizer_ref.py "$TMP/spm.gguf" --batch "$TMP" spm "$TMP"/cases/*.txt || { echo "0 passed, 1 failed"; exit 1; }

for pre in ${PRES//,/ } spm; do
    gg=$TMP/$pre.gguf
    [ "$pre" = smollm ] && gg=$MODEL
    for f in "$TMP"/cases/*.txt; do
        name="$pre/$(basename "$f")"
        special=
        case $f in *.special.txt) special=--special ;; esac
        ref=$f.$pre.ref got=$f.$pre.got
        if ! "$BIN" "$gg" "$f" $special >"$got" 2>"$got.err"; then
            bad "$name: kvscope failed: $(head -c 300 "$got.err")"
            continue
        fi
        if cmp -s "$ref" "$got"; then
            ok "$name ($(wc -l <"$ref") ids)"
        else
            line=$(cmp "$ref" "$got" 2>&1 | sed -nE 's/.* line ([0-9]+).*/\1/p')
            bad "$name: $(wc -l <"$ref") reference ids, $(wc -l <"$got") from kvscope; first difference at id" \
                "#${line:-?}: reference $(sed -n "${line:-1}p" "$ref"), kvscope $(sed -n "${line:-1}p" "$got")"
        fi
    done
done

# chat prompt: one user turn, without (default system prompt) and with a system message
for sys in ${PRES:+"" "You answer in one word."}; do
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
