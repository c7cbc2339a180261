#!/usr/bin/env bash
# The second real model, Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2: 24 layers, 14 query / 2 KV
# heads, K/V bias, Q4_K/Q5_0/Q6_K/Q8_0; `make model-qwen` fetches it), against the independent
# references SmolLM2 is held to: dequantized tensors (gguf-py), logits of the prefill, decode and
# precise-decode paths (tests/ref/forward_ref.py), token ids with its own qwen2 pre-tokenizer and its
# chat template (HF tokenizers, jinja2), then a greedy chat answer. Without the file: "skipped: …".
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
MODEL=${KVS_QWEN_MODEL:-models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf}
KVSCOPE=${KVS_BIN:-$BUILD/kvscope}
pass=0; fail=0
if [ ! -f "$MODEL" ]; then
    echo "skipped: $MODEL missing (make model-qwen fetches it)"; echo "0 passed, 0 failed"; exit 0
fi
if ! python3 -c 'import numpy, gguf' 2>/dev/null; then
    echo "skipped: python numpy or gguf missing (make setup)"; echo "0 passed, 0 failed"; exit 0
fi
T=$(mktemp -d "${KVS_TEST_TMP:-/tmp}/qwenref.XXXXXX")
trap 'rm -rf "$T"' EXIT
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }

# 1. dequantizers: the first, middle and last block, the biases, embedding and output head
out=$(python3 tests/ref/dequant_ref.py --bin "$BUILD/tests/test_dequant_dump" --real "$MODEL" --tmp "$T/deq" 2>&1)
n_ok=$(grep -c "^ok .*${MODEL##*/}" <<<"$out")
if grep -q "^FAIL" <<<"$out" || [ "$n_ok" -lt 30 ]; then
    bad "dequantized tensors: $n_ok of the model's agree; $(grep -m3 '^FAIL' <<<"$out")"
else
    ok "dequantized tensors: $n_ok of the model's bit-equal to gguf-py (Q4_K, Q5_0, Q6_K, Q8_0, F32)"
fi

# 2. logits on the three paths; the ids are "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n"
B=$BUILD/tests/test_infer
. tests/lib/fwdref.sh
compare qwen2.5 "$MODEL" 750 15801 1445 982 262 470 308 421 308 366 220 17 770 15801 1445 12 16 8 488 15801 1445 12 17 340

# 3. tokenizer: the reference texts with the model's own pre-tokenizer, then the chat template
TOK=$BUILD/tests/test_tokenizer
if ! python3 -c 'import tokenizers, jinja2' 2>/dev/null; then
    echo "skipped: python tokenizers or jinja2 missing: token ids and chat prompt not compared"
else
    python3 tests/ref/tokenizer_ref.py --cases "$T/cases" >/dev/null || bad "writing the tokenizer cases"
    python3 tests/ref/tokenizer_ref.py "$MODEL" --batch "$T" qwen2 "$T"/cases/*.txt || bad "tokenizer reference failed"
    for f in "$T"/cases/*.txt; do
        special=
        case $f in *.special.txt) special=--special ;; esac
        if ! "$TOK" "$MODEL" "$f" $special >"$f.got" 2>"$f.err"; then bad "tokenizer ${f##*/}: $(head -c 300 "$f.err")"; continue; fi
        if cmp -s "$f.qwen2.ref" "$f.got"; then ok "tokenizer ${f##*/} ($(wc -l <"$f.got") ids)"
        else bad "tokenizer ${f##*/}: $(cmp "$f.qwen2.ref" "$f.got" 2>&1 | head -1)"; fi
    done
    for sys in "" "You answer in one word."; do
        label="system: ${sys:-default}"
        python3 tests/ref/tokenizer_ref.py "$MODEL" --chat "What is 2+2?" ${sys:+"$sys"} >"$T/chat.ref"
        "$TOK" --chat "$MODEL" "What is 2+2?" ${sys:+"$sys"} >"$T/chat.got"
        if cmp -s "$T/chat.ref" "$T/chat.got"; then ok "chat prompt ($label)"
        else bad "chat prompt ($label) differs: $(diff "$T/chat.ref" "$T/chat.got" | head -4 | tr '\n' ' ')"; fi
    done
fi

# 4. a greedy chat answer through the whole program
ans=$("$KVSCOPE" generate -m "$MODEL" --chat -p "What is the capital of France? Answer in one word." -n 8 -t 2 2>"$T/gen.err")
if grep -q "Paris" <<<"$ans"; then ok "generate: the capital of France is '$(tr -d '\n' <<<"$ans")'"
else bad "generate answered '$ans' ($(tail -1 "$T/gen.err"))"; fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
