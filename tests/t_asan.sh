#!/usr/bin/env bash
# The parsers and the engine under AddressSanitizer + UndefinedBehaviorSanitizer: builds the
# untrusted-input tests (GGUF, tokenizer, traces, quant), the forward-pass tests and the compression
# methods (CommonKV kernels, fused decode, every press) in a separate
# build tree with -fsanitize=address,undefined and runs them; any sanitizer report fails.
set -u
cd "$(dirname "$0")/.."
BASE=${KVS_BUILD:-build}
B=$BASE/asan
pass=0; fail=0
tests="test_gguf test_tokenizer test_traces test_quant test_infer test_commonkv test_methods"
targets=""
for t in $tests; do [ -f tests/$t.c ] && targets="$targets $B/tests/$t"; done
if ! make --no-print-directory -j2 BUILD=$B SAN=1 USE_CUDA=no $targets >"$KVS_TEST_TMP/asan-build.log" 2>&1; then
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
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
