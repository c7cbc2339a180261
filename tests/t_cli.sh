#!/usr/bin/env bash
# The command line as a user meets it: `generate` answers "The capital of France is" with Paris
# (text and --json), and bad input — missing, non-GGUF, empty, truncated or directory model files,
# bad option values, unknown commands — gives a one-line message naming the file or option,
# a non-zero exit status, and no crash (exit status < 128). Prints "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
K=${KVS_BIN:-build/kvscope}
T=${KVS_TEST_TMP:-$(mktemp -d)}/cli
mkdir -p "$T"
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
pass=0; fail=0
ok() { pass=$((pass+1)); }
ko() { echo "FAIL $*"; fail=$((fail+1)); }

# expect_err WANT_RC SUBSTRING ARGS... : exit status WANT_RC, first stderr line contains SUBSTRING
expect_err() {
    local want=$1 sub=$2; shift 2
    timeout 60 "$K" "$@" >"$T/out" 2>"$T/err" </dev/null
    local rc=$?
    local first
    first=$(head -n 1 "$T/err")
    if [ $rc -ne "$want" ]; then ko "kvscope $* -> exit $rc, expected $want ($first)"; return; fi
    if ! grep -qF -- "$sub" <<<"$first"; then ko "kvscope $* -> '$first' lacks '$sub'"; return; fi
    ok
}

expect_err 1 "/nonexistent/m.gguf: cannot open" generate -m /nonexistent/m.gguf -p x
expect_err 1 "not a GGUF file" generate -m /etc/hostname -p x
: >"$T/empty.gguf"
expect_err 1 "$T/empty.gguf" generate -m "$T/empty.gguf" -p x
mkdir -p "$T/dir.gguf"
expect_err 1 "$T/dir.gguf" generate -m "$T/dir.gguf" -p x
expect_err 2 "option -n" generate -p x -n abc
expect_err 2 "option -n" generate -p x -n -5
expect_err 2 "option --temp" generate -p x --temp nan
expect_err 2 "option --ctx" generate -p x --ctx 99999999999
expect_err 2 "option --method: unknown method 'foo'" generate -p x --method foo
expect_err 2 "option --backend" generate -p x --backend tpu
expect_err 2 "no prompt" generate
expect_err 2 "unknown command 'bogus'" bogus
expect_err 2 "unknown option" generate -p x --frobnicate
expect_err 2 "option --cr" run --cr 2
expect_err 1 "not a kvscope trace" trace info /etc/hostname

# FIFOs and devices given as input files are refused at once with one line naming them (an
# open() of a FIFO would wait for a writer forever); `timeout` turns a hang into exit 124
mkfifo "$T/in.fifo"
ln -sf /dev/zero "$T/zero.link"
fifo_refused() { # fifo_refused PATH ARGS...: exit 1, one stderr line naming PATH as not a regular file
    local path=$1; shift
    timeout 20 "$K" "$@" >"$T/out" 2>"$T/err" </dev/null
    local rc=$?
    if [ $rc -eq 1 ] && [ "$(wc -l <"$T/err")" -eq 1 ] && grep -qF "$path is a" "$T/err" &&
       grep -q "not a regular file" "$T/err"; then ok
    else ko "kvscope $* -> exit $rc: $(head -c 300 "$T/err")"; fi
}
for F in "$T/in.fifo" "$T/zero.link"; do
    fifo_refused "$F" generate -m "$F" -p x
    fifo_refused "$F" trace info "$F"
    fifo_refused "$F" trace export "$F" --format jsonl
    fifo_refused "$F" trace recover "$F" "$T/rec-out.kvt"
    fifo_refused "$F" replay "$F" --batch
    if [ -f "$M" ]; then
        fifo_refused "$F" generate -m "$M" -f "$F"
        fifo_refused "$F" run --batch -m "$M" -f "$F" -n 1
        fifo_refused "$F" eval -m "$M" -f "$F" --methods full --passkey none
        fifo_refused "$F" bench -m "$M" -f "$F" --methods full
        fifo_refused "$F" calibrate -m "$M" -f "$F" -o "$T/w.txt"
        fifo_refused "$F" calibrate -m "$M" -o "$F"
    fi
done
[ -p "$T/in.fifo" ] && [ ! -e "$T/rec-out.kvt" ] && [ ! -e "$T/w.txt" ] && ok || ko "FIFO changed or output written"

# method specs are checked whole and before the model is opened (the model path here does not
# exist: a method error first proves the order)
NOM=/nonexistent/m.gguf
LONG=quant+quant+quant+quant+quant+quant+quant+quant+quant+quant+quant+full
for cmd in "run --batch" generate; do
    expect_err 2 "option --method: empty method name" $cmd -m $NOM -p x --method ""
    expect_err 2 "method 'commonkv++quant': empty name around '+'" $cmd -m $NOM -p x --method commonkv++quant
    expect_err 2 "is 70 bytes long, the limit is 63" $cmd -m $NOM -p x --method $LONG
    expect_err 2 "option --method: unknown method 'bogus'" $cmd -m $NOM -p x --method bogus
    expect_err 2 "full does not compose with other methods" $cmd -m $NOM -p x --method full+quant
done
for cmd in eval bench; do
    expect_err 2 "option --methods: unknown method 'bogus'" $cmd -m $NOM --methods full,bogus
    expect_err 2 "option --methods: empty entry" $cmd -m $NOM --methods full,,commonkv
    expect_err 2 "empty name around '+'" $cmd -m $NOM --methods commonkv+
done
# an error is one line: no usage text after it
for args in "bogus" "run --frobnicate" "generate -p x --frobnicate" "generate" "eval --frobnicate" \
            "bench --frobnicate" "replay" "replay --frobnicate x" "trace export" "trace export x --frobnicate" \
            "trace frobnicate"; do
    timeout 60 "$K" $args >"$T/out" 2>"$T/err" </dev/null
    rc=$?
    if [ $rc -eq 2 ] && [ "$(wc -l <"$T/err")" -eq 1 ]; then ok
    else ko "kvscope $args: exit $rc, $(wc -l <"$T/err") stderr lines: $(head -c 300 "$T/err")"; fi
done

if [ -f "$M" ]; then
    # truncated copies of the real model at a spread of offsets: one line, exit 1, never a crash
    size=$(stat -c %s "$M")
    for off in 0 3 4 8 23 24 100 1000 100000 700000 $((size / 2)) $((size - 1)); do
        head -c "$off" "$M" >"$T/trunc.gguf"
        timeout 60 "$K" generate -m "$T/trunc.gguf" -p x -n 1 >"$T/out" 2>"$T/err"
        rc=$?
        if [ $rc -eq 1 ] && [ "$(wc -l <"$T/err")" -eq 1 ] && grep -q "trunc.gguf" "$T/err"; then ok
        else ko "model truncated at $off: exit $rc: $(head -c 300 "$T/err")"; fi
    done
    # batch runs report engine errors on stderr too, with exit status 1
    expect_err 1 "context 16 too small for 100 new tokens" run --batch -m "$M" --method full --ctx 16 -n 100 -p hi
    expect_err 1 "group size 64 out of range" run --batch -m "$M" --method commonkv --group 64 -n 2 -p hi
    # a write error on stdout is an error, with a line that says so
    timeout 120 "$K" generate -m "$M" -p "The capital of France is" -n 4 >/dev/full 2>"$T/err"
    rc=$?
    if [ $rc -eq 1 ] && grep -q "cannot write to stdout" "$T/err"; then ok; else ko "generate >/dev/full: exit $rc: $(cat "$T/err")"; fi
    timeout 120 "$K" generate -m "$M" -p "The capital of France is" -n 4 --json >/dev/full 2>"$T/err"
    rc=$?
    if [ $rc -eq 1 ] && grep -q "cannot write to stdout" "$T/err"; then ok; else ko "generate --json >/dev/full: exit $rc: $(cat "$T/err")"; fi
    timeout 120 "$K" run --batch -m "$M" -p "The capital of France is" -n 2 --method full >/dev/full 2>"$T/err"
    rc=$?
    if [ $rc -eq 1 ] && grep -q "cannot write the output" "$T/err"; then ok; else ko "run --batch >/dev/full: exit $rc: $(cat "$T/err")"; fi
    out=$(timeout 120 "$K" generate -m "$M" -p "The capital of France is" -n 8 2>"$T/err")
    if grep -q "Paris" <<<"$out"; then ok; else ko "generate did not answer Paris: '$out'"; fi
    if grep -qE "prompt: 5 tokens, [0-9.]+ tok/s; decode: [0-9]+ tokens, [0-9.]+ tok/s" "$T/err"; then ok
    else ko "no tokens/s line: $(cat "$T/err")"; fi
    timeout 120 "$K" generate -m "$M" -p "The capital of France is" -n 8 --json >"$T/g.json" 2>"$T/err"
    if python3 -c "
import json,sys
d=json.load(open('$T/g.json'))
assert 'Paris' in d['text'], d
assert d['prompt_tokens']==5 and d['generated_tokens']>0 and d['decode_tps']>0
assert len(d['tokens'])==d['generated_tokens']
"; then ok; else ko "generate --json: $(head -c 300 "$T/g.json")"; fi
    # chat: the template is applied (the greedy answer's first token is a near-tie here: llama.cpp
    # and kvscope both answer "L'Étoile, …"), so check for a real, template-free answer
    out=$(timeout 120 "$K" generate -m "$M" --chat -p "What is the capital of France?" -n 24 2>"$T/err")
    if [ -n "$(tr -d '[:space:]' <<<"$out")" ] && ! grep -q "im_start\|im_end" <<<"$out" &&
       grep -q "prompt: 37 tokens" "$T/err"; then ok; else ko "chat: '$out' / $(cat "$T/err")"; fi
else
    echo "skipped: $M missing"
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
