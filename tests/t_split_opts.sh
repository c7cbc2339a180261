#!/usr/bin/env bash
# CommonKV's split as independent controls on every command that takes a method (issue 12): run,
# generate and bench accept --rank, --merge-share and --merge-floor beside --cr (eval has its own
# tests). On a tiny model: run's RUN record carries exactly the rank, share and floor given, with
# "--cr none --rank R" merging nothing; generate's and bench's held bytes follow the rank; bad
# values are refused with one line and exit status 2. Prints "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=${KVS_BIN:-$BUILD/kvscope}
T=$(mktemp -d "${KVS_TEST_TMP:-/tmp}/split.XXXXXX")
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
export XDG_CACHE_HOME=$T/cache
"$BUILD/tests/test_infer" --write-tiny "$T/t.gguf" llama-f32 || { bad "write tiny model"; echo "$pass passed, $fail failed"; exit 1; }
P="hello world this is a test of the tiny model and more words to fill it, hello again world"

# run: NAME EXPECT ARGS... ; EXPECT is "rank share floor merged" checked on the RUN record and the
# last step (merged: "none" = no group merged anything, "some" = at least one did)
run_case() {
    local name=$1 expect=$2; shift 2
    if ! "$BIN" run -m "$T/t.gguf" --batch --method commonkv -n 4 -t 1 -p "$P" "$@" >"$T/$name.jsonl" 2>"$T/$name.err"; then
        bad "run $*: $(tail -1 "$T/$name.err")"; return; fi
    local got
    got=$(python3 - "$T/$name.jsonl" <<'PY'
import json, sys
run = step = None
for l in open(sys.argv[1]):
    o = json.loads(l)
    if o.get("type") == "run": run = o
    if o.get("type") == "step": step = o
f = lambda x: "null" if x is None else ("%g" % x)
merged = "some" if any((m or 0) > 0 for m in step["group_merged"]) else "none"
print(" ".join(["%d" % run["group_rank"][0], f(run["plan_merge_share"]), f(run["plan_merge_floor"]), merged]))
PY
)
    if [ "$got" = "$expect" ]; then ok "run $*: rank share floor merged = $got"
    else bad "run $*: rank share floor merged = '$got', expected '$expect'"; fi
}
run_case none "24 0 null none" --cr none --rank 24
run_case share "24 1 -1 some" --cr none --rank 24 --merge-share 1 --merge-floor -1 --sinks 0 --recent 0
run_case floor "16 0.5 1 none" --cr none --rank 16 --merge-share 0.5 --merge-floor 1 --sinks 0 --recent 0
run_case target "16 0.25 0.45 some" --cr 0.9 --rank 16 --merge-share 0.25 --sinks 0 --recent 0

# generate and bench: the bytes the cache holds follow --rank (nothing merges with --cr none)
held() { python3 -c 'import json,sys; d=json.load(sys.stdin); d=d[0] if isinstance(d,list) else d; print(d["bytes_held"])'; }
for cmd in generate bench; do
    if [ $cmd = generate ]; then args=(generate -m "$T/t.gguf" --json --method commonkv -n 2 -t 1 -p "$P")
    else args=(bench -m "$T/t.gguf" --json --methods commonkv --ctx 48 -n 2 -t 1); fi
    a=$("$BIN" "${args[@]}" --cr none --rank 8 2>"$T/$cmd.err" | held)
    b=$("$BIN" "${args[@]}" --cr none --rank 24 2>>"$T/$cmd.err" | held)
    if [ -n "$a" ] && [ -n "$b" ] && [ "$b" -gt "$a" ]; then ok "$cmd: --rank 8 holds $a bytes, --rank 24 holds $b"
    else bad "$cmd: --rank 8 holds '$a' bytes, --rank 24 '$b' ($(tail -1 "$T/$cmd.err"))"; fi
done

# bad values: one line, exit status 2, for each command
for cmd in run generate bench; do
    extra=(-p x)
    [ $cmd = bench ] && extra=()
    for opt in "--rank 0" "--merge-share 1.5" "--merge-floor -2" "--rank"; do
        "$BIN" $cmd -m "$T/t.gguf" "${extra[@]}" $opt >"$T/bad.out" 2>"$T/bad.err"; rc=$?
        if [ $rc -eq 2 ] && [ "$(wc -l <"$T/bad.err")" -eq 1 ] && grep -q "^kvscope: option ${opt%% *}" "$T/bad.err"; then
            ok "$cmd $opt: refused ($(cat "$T/bad.err"))"
        else bad "$cmd $opt: exit $rc, '$(head -2 "$T/bad.err")'"; fi
    done
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
