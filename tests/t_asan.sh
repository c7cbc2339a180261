#!/usr/bin/env bash
# The parsers and the engine under AddressSanitizer + UndefinedBehaviorSanitizer: builds the
# untrusted-input tests (GGUF, tokenizer, traces, quant), the forward-pass tests and the compression
# methods (CommonKV kernels, fused decode, every press) in a separate
# build tree with -fsanitize=address,undefined and runs them; any sanitizer report fails. Then the
# sanitized kvscope replays, in the TUI (a tmux pane), a clean trace with one KERNEL record: a
# record the views' history does not keep, once read after it was released.
set -u
cd "$(dirname "$0")/.."
BASE=${KVS_BUILD:-build}
B=$BASE/asan
pass=0; fail=0
tests="test_gguf test_tokenizer test_traces test_quant test_infer test_commonkv test_methods"
targets=""
for t in $tests; do [ -f tests/$t.c ] && targets="$targets $B/tests/$t"; done
if ! make --no-print-directory -j2 BUILD=$B SAN=1 USE_CUDA=no $targets $B/kvscope >"$KVS_TEST_TMP/asan-build.log" 2>&1; then
    echo "FAIL asan build"; tail -20 "$KVS_TEST_TMP/asan-build.log"; echo "0 passed, 1 failed"; exit 1
fi
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for t in $targets; do
    name=$(basename "$t")
    if "$t" >"$KVS_TEST_TMP/asan-$name.log" 2>&1 && ! grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$KVS_TEST_TMP/asan-$name.log"; then
        echo "   $name: clean under ASan/UBSan ($(tail -1 "$KVS_TEST_TMP/asan-$name.log"))"
        pass=$((pass+1))
    else
        echo "FAIL $name under ASan/UBSan:"
        grep -E 'ERROR|runtime error|FAIL|SUMMARY' "$KVS_TEST_TMP/asan-$name.log" | head -15
        fail=$((fail+1))
    fi
done

# the TUI replaying a GPU-style trace: every wait is for a condition, with a generous deadline
tui_replay_kernel() {
    local dir=$KVS_TEST_TMP/asan-tui sock=kvs-asan-$$ deadline screen
    rm -rf "$dir"; mkdir -p "$dir"
    "$B/tests/test_traces" --write-kernel "$dir/kernel.kvt" || { echo "   cannot write the trace"; return 1; }
    T() { tmux -L "$sock" "$@"; }
    # leaks are not this check's business (ncurses keeps its memory); use-after-free is
    T new-session -d -s ui -x 140 -y 45 "env -u TMUX TERM=tmux-256color LANG=C.UTF-8 HOME=$dir XDG_CONFIG_HOME=$dir/cfg \
        ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:log_path=$dir/asan UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$dir/ubsan \
        $PWD/$B/kvscope replay $dir/kernel.kvt; echo __EXIT__ rc=\$?; sleep 120" || return 1
    deadline=$(( $(date +%s) + 60 ))
    while [ "$(date +%s)" -lt $deadline ]; do
        screen=$(T capture-pane -p -t ui 2>/dev/null)
        grep -q "__EXIT__" <<<"$screen" && break
        grep -q "GPU: 1 activities" <<<"$screen" && grep -q "3/3 token" <<<"$screen" && break
        sleep 0.2
    done
    grep -q "__EXIT__" <<<"$screen" || T send-keys -t ui q
    deadline=$(( $(date +%s) + 60 ))
    while [ "$(date +%s)" -lt $deadline ]; do
        screen=$(T capture-pane -p -t ui 2>/dev/null)
        grep -q "__EXIT__" <<<"$screen" && break
        sleep 0.2
    done
    T kill-server 2>/dev/null
    if ! grep -q "__EXIT__ rc=0" <<<"$screen" || ls "$dir" | grep -qE '^(asan|ubsan)\.'; then
        grep -q "__EXIT__" <<<"$screen" || echo "   the replay did not finish; last screen:"
        grep "__EXIT__" <<<"$screen" | sed 's/^/   /'
        cat "$dir"/asan.* "$dir"/ubsan.* 2>/dev/null | grep -E 'ERROR|runtime error|#[0-9] |SUMMARY' | head -15 | sed 's/^/   /'
        return 1
    fi
}
if ! command -v tmux >/dev/null; then
    echo "FAIL tmux is needed for the TUI replay under ASan"
    fail=$((fail+1))
elif tui_replay_kernel; then
    echo "   kvscope replay (TUI) of a trace with a KERNEL record: clean under ASan/UBSan"
    pass=$((pass+1))
else
    echo "FAIL kvscope replay (TUI) of a trace with a KERNEL record under ASan/UBSan"
    fail=$((fail+1))
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
