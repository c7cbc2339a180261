#!/usr/bin/env bash
# Module boundaries (DESIGN.md §2): the tree passes `make check-deps`, and a copy with planted
# violations fails it with a message naming each one.
set -u
cd "$(dirname "$0")/.."
pass=0; fail=0
ok() { pass=$((pass+1)); }
ko() { echo "FAIL $1"; fail=$((fail+1)); }
if scripts/check-deps.sh; then ok; else ko "the tree violates its module boundaries"; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp -r scripts engine views traces kernels app "$tmp"/
echo '#include <ncurses.h>' >"$tmp/engine/zz_planted.c"
echo '#include "infer.h"' >"$tmp/views/zz_planted.c"
echo '#include <cuda_runtime.h>' >"$tmp/traces/zz_planted.c"
echo 'void f(void) { initscr(); }' >"$tmp/app/zz_planted.c"
# a press constructor that runs calibration (the cycle issue 9 removed) and a press that sees the method layer
printf 'void g(void) { kvs_ckv_factors_get(0); }\n' >"$tmp/engine/press/zz_planted.c"
echo '#include "method.h"' >"$tmp/engine/commonkv/zz_planted.h"
out=$(cd "$tmp" && scripts/check-deps.sh 2>&1); rc=$?
[ $rc -ne 0 ] && ok || ko "planted violations were not caught"
for want in "curses in engine" "views/ may use only" "traces/" "only views/crt.c" "press constructors run no offline work" \
    "only engine/method/, app/ and tests/ include method.h"; do
    echo "$out" | grep -q "$want" && ok || ko "no message for: $want"
done

# the compiler enforces the same boundaries: with the include paths the Makefile gives views/ and
# traces/, an engine internal is not found, while the plain record headers are
inc=$(make -s --no-print-directory print-inc 2>/dev/null)
for mod in views traces; do
    flags=$(echo "$inc" | sed -n "s/^$mod: //p")
    [ -n "$flags" ] && ok || ko "make print-inc gives no include paths for $mod"
    printf '#include "record.h"\n#include "kvs.h"\nint zz;\n' >"$tmp/ok_$mod.c"
    if cc -fsyntax-only -D_GNU_SOURCE $flags "$tmp/ok_$mod.c" 2>"$tmp/err"; then ok; else ko "$mod cannot include record.h: $(head -n1 "$tmp/err")"; fi
    for h in infer.h commonkv_priv.h press.h backend.h; do
        printf '#include "%s"\nint zz;\n' "$h" >"$tmp/bad_$mod.c"
        if cc -fsyntax-only -D_GNU_SOURCE $flags "$tmp/bad_$mod.c" 2>/dev/null; then ko "$mod could include engine's $h"; else ok; fi
    done
done

# the profiler builds with and without CUPTI headers (a toolkit without cupti.h, or USE_CUPTI=no),
# warning-free either way
eng=$(echo "$inc" | sed -n 's/^engine: //p')
if cc -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -fsyntax-only -D_GNU_SOURCE $eng engine/backend/cupti.c 2>"$tmp/err"
then ok; else ko "cupti.c without CUPTI headers: $(head -n1 "$tmp/err")"; fi
cupti_h=$(ls /usr/local/cuda/include/cupti.h /usr/local/cuda/extras/CUPTI/include/cupti.h 2>/dev/null | head -n1)
if [ -n "$cupti_h" ]; then
    if cc -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -fsyntax-only -D_GNU_SOURCE -DKVS_HAVE_CUPTI \
        -I"$(dirname "$cupti_h")" $eng engine/backend/cupti.c 2>"$tmp/err"
    then ok; else ko "cupti.c with $cupti_h: $(head -n1 "$tmp/err")"; fi
else
    echo "skipped: cupti.c with CUPTI headers (no cupti.h installed)"
fi
# so does the degradation ladder's test (tests/test_cupti_ladder.c), whose steps differ without them
if cc -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -fsyntax-only -D_GNU_SOURCE -DKVS_BUILD_DIR='"b"' \
    $eng -Itests/lib tests/test_cupti_ladder.c 2>"$tmp/err"
then ok; else ko "test_cupti_ladder.c without CUPTI headers: $(head -n1 "$tmp/err")"; fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
