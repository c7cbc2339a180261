#!/usr/bin/env bash
# Shared fuzz driver: builds every tests/fuzz_*.c as a libFuzzer target with clang
# (-fsanitize=fuzzer,address,undefined) from the engine/traces sources the target names in its
# "fuzz-sources:" header line (never the gcc-built libraries), seeds its corpus with the command
# in its "fuzz-seeds:" line ($BUILD and $SEEDS are set), runs each for SECONDS and fails on any
# crash, leak, sanitizer report or timeout. Then the command-line corpora of tests/fuzz_cli.py
# (mutations of the real model and of traces, run through $BUILD/kvscope) for SECONDS each,
# keeping every case under $BUILD/fuzz/corpus/cli (FUZZ_SEED picks the seed, default 1).
# Prints one line per target and "N passed, N failed".
#   tests/fuzz.sh BUILD SECONDS [TARGET...]      e.g. tests/fuzz.sh build 60 fuzz_gguf fuzz_cli
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-build}
SECONDS_EACH=${2:-60}
shift 2 2>/dev/null || shift $#
CLANG=${CLANG:-clang}
OUT=$BUILD/fuzz
mkdir -p "$OUT"
passed=0; failed=0

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in tests/fuzz_*.c; do [ -f "$f" ] && targets+=("$(basename "$f" .c)"); done
    targets+=(fuzz_cli)
fi
libfuzzer=yes
if ! command -v "$CLANG" >/dev/null 2>&1; then
    echo "skipped: $CLANG not found (libFuzzer targets need clang with libFuzzer)"
    libfuzzer=no
else
    probe=$OUT/.probe
    printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$probe.c"
    if ! "$CLANG" -fsanitize=fuzzer "$probe.c" -o "$probe" 2>/dev/null; then
        echo "skipped: $CLANG cannot link -fsanitize=fuzzer (libFuzzer runtime missing)"
        libfuzzer=no
    fi
    rm -f "$probe" "$probe.c"
fi

for name in "${targets[@]}"; do
    if [ "$name" = fuzz_cli ]; then
        # command-line corpora: no clang needed, only python3 and the built kvscope
        if ! command -v python3 >/dev/null 2>&1; then echo "fuzz_cli: skipped (python3 not found)"; continue; fi
        mkdir -p "$OUT/corpus/cli" "$OUT/cli-work"
        if python3 tests/fuzz_cli.py "$BUILD/kvscope" "$BUILD" "${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}" \
                "$OUT/cli-work" --cases 100000000 --seconds "$SECONDS_EACH" --seed "${FUZZ_SEED:-1}" \
                --corpus "$OUT/corpus/cli" --real-trace >"$OUT/fuzz_cli.log" 2>&1; then
            passed=$((passed + 1))
        else
            failed=$((failed + 1))
        fi
        grep -v ' passed, .* failed$' "$OUT/fuzz_cli.log"
        echo "fuzz_cli: corpus $OUT/corpus/cli: $(ls "$OUT/corpus/cli" | grep -c '^gguf-') GGUF cases" \
             "($(du -sk "$OUT/corpus/cli" | cut -f1) KiB in all), $(ls "$OUT/corpus/cli" | grep -c '^trace-') traces"
        continue
    fi
    [ "$libfuzzer" = yes ] || continue
    src=tests/$name.c
    bin=$OUT/$name
    log=$OUT/$name.log
    if [ ! -f "$src" ]; then
        echo "$name: FAIL (no $src)"; failed=$((failed + 1)); continue
    fi
    # header lines may end a C comment: drop a trailing "*/"
    sources=$(sed -n 's/^.*fuzz-sources:[[:space:]]*//p' "$src" | head -n 1 | sed 's|[[:space:]]*\*/[[:space:]]*$||')
    seeds_cmd=$(sed -n 's/^.*fuzz-seeds:[[:space:]]*//p' "$src" | head -n 1 | sed 's|[[:space:]]*\*/[[:space:]]*$||')
    if ! "$CLANG" -std=gnu11 -g -O1 -fno-omit-frame-pointer -march=native \
            -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
            -D_GNU_SOURCE $(for d in engine/*/; do printf -- "-I%s " "${d%/}"; done) -Itraces -Itests/lib -o "$bin" "$src" $sources -lz -lm -pthread >"$log" 2>&1; then
        echo "$name: FAIL (build; see $log)"; sed 's/^/    | /' "$log" | tail -n 20
        failed=$((failed + 1)); continue
    fi
    corpus=$OUT/corpus/$name
    seeds=$OUT/seeds/$name
    mkdir -p "$corpus" "$seeds" "$OUT/artifacts"
    if [ -n "$seeds_cmd" ]; then
        if ! BUILD=$BUILD SEEDS=$seeds bash -c "$seeds_cmd" >>"$log" 2>&1; then
            echo "   ($name: seed command failed; fuzzing from the existing corpus)" >&2
        fi
    fi
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    "$bin" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$name-" "$corpus" "$seeds" >>"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units:[[:space:]]*//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
    if [ $rc -eq 0 ]; then
        echo "$name: ok (${runs:-?} runs in ${SECONDS_EACH}s, ${cov:-cov: ?}, corpus $(ls "$corpus" | wc -l) files)"
        passed=$((passed + 1))
    else
        echo "$name: FAIL (exit $rc; crash input under $OUT/artifacts/; log $log)"
        grep -E 'ERROR|SUMMARY|runtime error|deadly signal|Test unit written' "$log" | head -n 10 | sed 's/^/    | /'
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
