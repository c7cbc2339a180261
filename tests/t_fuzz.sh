#!/usr/bin/env bash
# Bounded fuzzing for `make test`: every libFuzzer target briefly (10 s each; KVS_FUZZ_SECONDS
# overrides) through tests/fuzz.sh, then a fixed set of command-line cases from tests/fuzz_cli.py
# (seed 1: 40 mutations of the real model, 40 mutated traces through info, export and replay;
# KVS_FUZZ_CASES overrides), capped at 40 s. Prints "N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
B=${KVS_BUILD:-build}
K=${KVS_BIN:-$B/kvscope}
W=${KVS_TEST_TMP:-$(mktemp -d)}/fuzz
mkdir -p "$W"
pass=0; fail=0
count() {
    local p f
    p=$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$1" | tail -n 1)
    f=$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$1" | tail -n 1)
    pass=$((pass + ${p:-0})); fail=$((fail + ${f:-1}))
}
bash tests/fuzz.sh "$B" "${KVS_FUZZ_SECONDS:-10}" fuzz_gguf fuzz_trace 2>&1 | tee "$W/libfuzzer.log" | grep -v ' passed, .* failed$'
count "$W/libfuzzer.log"
if command -v python3 >/dev/null 2>&1; then
    n=${KVS_FUZZ_CASES:-}
    for c in "gguf ${n:-40}" "trace ${n:-40}"; do
        set -- $c
        python3 tests/fuzz_cli.py "$K" "$B" models/SmolLM2-135M-Instruct.Q4_1.gguf "$W/$1" --only "$1" --cases "$2" \
            --seconds 40 --seed 1 >"$W/cli-$1.log" 2>&1
        grep -v ' passed, .* failed$' "$W/cli-$1.log"
        count "$W/cli-$1.log"
    done
else
    echo "skipped: python3 not found (command-line fuzz corpora)"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
