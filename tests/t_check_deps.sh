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
out=$(cd "$tmp" && scripts/check-deps.sh 2>&1); rc=$?
[ $rc -ne 0 ] && ok || ko "planted violations were not caught"
for want in "curses in engine" "views/ may use only" "traces/" "only views/crt.c"; do
    echo "$out" | grep -q "$want" && ok || ko "no message for: $want"
done
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
