#!/usr/bin/env bash
# Enforces the module boundaries of DESIGN.md §2 on #include lines:
#   engine/  never curses, never views/ or traces/ headers; CUDA headers only through kernels.h
#            (engine/backend/cupti.c may include cupti.h: the profiler is part of the engine)
# The Makefile's per-folder include paths already make the compiler refuse most of these (traces/
# and views/ see only engine/core); this script also catches system headers and says why.
#   views/   never CUDA/cuBLAS/cuSOLVER/CUPTI, and from the engine only plain record headers
#   traces/  never curses or CUDA; from the engine only kvs.h and record.h
#   kernels/ never curses
set -u
cd "$(dirname "$0")/.."
fail=0
shopt -s nullglob
ENGINE_FILES=$(echo engine/*.c engine/*.h engine/*/*.c engine/*/*.h)
# engine_has BASE: a header of that name lives somewhere in engine/
engine_has() { local m=(engine/"$1" engine/*/"$1"); [ ${#m[@]} -gt 0 ]; }
bad() { echo "check-deps: $1"; fail=1; }
inc() { grep -HnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]' "$@" 2>/dev/null; }
CUDA_RE='[<"](cuda|cuda_runtime|cuda_fp16|cublas|cublas_v2|cusolver|cusolverDn|cupti)[^">]*[">]'
CURSES_RE='[<"](n)?cursesw?(/)?[^">]*[">]|[<"](term|panel|menu|form)\.h[">]'

while IFS= read -r l; do
    case "$l" in
    engine/backend/cupti.c:*cupti*) ;;
    *) bad "$l: CUDA header in engine/ (use kernels/kernels.h)";;
    esac
done < <(inc $ENGINE_FILES | grep -E "$CUDA_RE")
inc $ENGINE_FILES | grep -E "$CURSES_RE" | while IFS= read -r l; do echo "check-deps: $l: curses in engine/"; done
[ -z "$(inc $ENGINE_FILES | grep -E "$CURSES_RE")" ] || fail=1
[ -z "$(inc $ENGINE_FILES | grep -E '"(views|traces)/|"(view|crt|trace|widgets|layout)\.h"')" ] || {
    inc $ENGINE_FILES | grep -E '"(views|traces)/|"(view|crt|trace|widgets|layout)\.h"' | sed 's/^/check-deps: engine depends on views\/traces: /'; fail=1; }

for f in views/*.c views/*.h; do
    [ -f "$f" ] || continue
    inc "$f" | grep -E "$CUDA_RE|kernels\.h" | sed 's/^/check-deps: CUDA in views\/: /' | grep . && fail=1
    # engine headers allowed in views: plain structs only
    while IFS= read -r l; do
        h=$(echo "$l" | sed -E 's/.*"([^"]+)".*/\1/')
        base=$(basename "$h")
        if engine_has "$base" && ! [ -f "views/$base" ]; then
            case "$base" in kvs.h|record.h) ;; *) bad "$l: views/ may use only engine/core/kvs.h and engine/core/record.h";; esac
        fi
    done < <(inc "$f" | grep '"')
done

for f in traces/*.c traces/*.h; do
    [ -f "$f" ] || continue
    inc "$f" | grep -E "$CUDA_RE|$CURSES_RE|kernels\.h" | sed 's/^/check-deps: curses or CUDA in traces\/: /' | grep . && fail=1
    while IFS= read -r l; do
        h=$(echo "$l" | sed -E 's/.*"([^"]+)".*/\1/')
        base=$(basename "$h")
        if engine_has "$base" && ! [ -f "traces/$base" ]; then
            case "$base" in kvs.h|record.h) ;; *) bad "$l: traces/ may use only engine/core/kvs.h and engine/core/record.h";; esac
        fi
    done < <(inc "$f" | grep '"')
done

for f in kernels/*; do
    [ -f "$f" ] || continue
    inc "$f" | grep -E "$CURSES_RE" | sed 's/^/check-deps: curses in kernels\/: /' | grep . && fail=1
done

# Press constructors are pure (issue 9): offline work (calibration forward passes, SVD, factor and
# plan caches, the plan search) runs in the method layer, engine/method/, before a press exists. A
# press file that called it would close the cycle press -> calibration -> forward pass -> press.
OFFLINE_RE='\b(kvs_ckv_factors_get|kvs_ckv_factors_build|kvs_ckv_cache_(load|save)|kvs_ckv_calib_[a-z_]+|kvs_ckv_sensitivity|kvs_ckv_weights_load|kvs_ckv_svd|kvs_plan_search|kvs_method_prepare|kvs_press_new|kvs_ctx_new|kvs_ctx_eval)[[:space:]]*\('
for f in engine/press/*.c engine/commonkv/commonkv_press.c; do
    [ -f "$f" ] || continue
    grep -HnE "$OFFLINE_RE" "$f" | sed 's/^/check-deps: press constructors run no offline work (engine\/method\/ does): /' | grep . && fail=1
done
# and nothing below the method layer includes it
for f in $ENGINE_FILES; do
    case "$f" in engine/method/*) continue;; esac
    inc "$f" | grep -E '"method\.h"' | sed 's/^/check-deps: only engine\/method\/, app\/ and tests\/ include method.h: /' | grep . && fail=1
done

# the only file that starts or ends curses mode
for f in $(grep -lE '\b(initscr|newterm|endwin)[[:space:]]*\(' app/*.c views/*.c $ENGINE_FILES traces/*.c 2>/dev/null); do
    [ "$f" = views/crt.c ] || bad "$f: calls initscr/newterm/endwin (only views/crt.c may)"
done
if [ $fail -eq 0 ]; then echo "check-deps: ok (engine, kernels, views, traces, app)"; fi
exit $fail
