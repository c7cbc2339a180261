#!/usr/bin/env bash
# Trace files end to end: a recorder killed with SIGKILL leaves NAME.part that `kvscope trace
# recover` turns into a valid trace; Perfetto JSON parses with python3 and every event carries the
# keys its "ph" requires; CSV and JSON lines exports have one row per step; `replay --batch` prints
# the export's lines and a summary; errors are one line
# with a non-zero exit. Uses build/<dir>/tests/test_traces for the recorder and sample traces, and
# falls back to its --recover/--info/--export modes when kvscope has no `trace` command yet.
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=${KVS_BIN:-$PWD/$BUILD/kvscope}
T=$PWD/$BUILD/tests/test_traces
TMP=${KVS_TEST_TMP:-/tmp}/t_traces.$$
mkdir -p "$TMP"
trap 'rm -rf "$TMP"; [ -n "${child:-}" ] && kill -9 "$child" 2>/dev/null' EXIT
pass=0; fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
no() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else no "$what"; fi; }

if [ ! -x "$T" ]; then
    echo "FAIL $T not built"
    echo "0 passed, 1 failed"
    exit 1
fi

"$T" --write-sample "$TMP/sample.kvt" 200 || no "write a sample trace"

# `kvscope trace` when it is wired in, else the test binary's equivalents
if [ -x "$BIN" ] && "$BIN" trace info "$TMP/sample.kvt" >"$TMP/info.txt" 2>&1 && grep -q '^status' "$TMP/info.txt"; then
    HAVE_CMD=1
    echo "using $BIN trace"
    info() { "$BIN" trace info "$1"; }
    recover() { "$BIN" trace recover "$1" "$2"; }
    export_() { "$BIN" trace export "$1" --format "$2" -o "$3"; }
else
    HAVE_CMD=0
    echo "kvscope has no 'trace' command yet: using $T --info/--recover/--export"
    info() { "$T" --info "$1"; }
    recover() { "$T" --recover "$1" "$2"; }
    export_() { "$T" --export "$1" "$2" "$3"; }
fi

# ---- kill -9 in the middle of a recording ----
rm -f "$TMP/killed.kvt" "$TMP/killed.kvt.part"
"$T" --writer-child "$TMP/killed.kvt" >"$TMP/child.out" 2>&1 &
child=$!
for _ in $(seq 1 100); do grep -q ready "$TMP/child.out" 2>/dev/null && break; sleep 0.05; done
sleep 0.3
kill -9 "$child" 2>/dev/null
wait "$child" 2>/dev/null
child=
check "recorder reached 100 steps before the kill" grep -q ready "$TMP/child.out"
check "killed recorder left NAME.part and no NAME" test -s "$TMP/killed.kvt.part" -a ! -e "$TMP/killed.kvt"
info "$TMP/killed.kvt.part" >"$TMP/killed.info" 2>&1
check "info on the killed file reports what it recovered" grep -qE 'recovered [0-9]+ steps; tail lost at offset [0-9]+' "$TMP/killed.info"
recover "$TMP/killed.kvt.part" "$TMP/killed.kvt" >"$TMP/recover.out" 2>&1
check "trace recover NAME.part NAME exits 0" test $? -eq 0
mv "$TMP/killed.kvt" "$TMP/recovered.kvt" 2>/dev/null
info "$TMP/recovered.kvt" >"$TMP/recovered.info" 2>&1
check "recovered trace is clean" grep -qE '^status +clean' "$TMP/recovered.info"
steps=$(sed -nE 's/^steps +([0-9]+).*/\1/p' "$TMP/recovered.info")
check "recovered trace holds the steps written before the kill ($steps)" test "${steps:-0}" -ge 100
export_ "$TMP/recovered.kvt" jsonl "$TMP/recovered.jsonl" 2>/dev/null
n=$(grep -c '"type":"step"' "$TMP/recovered.jsonl" 2>/dev/null)
check "every recovered step exports ($n of $steps)" test "${n:-x}" = "${steps:-y}"

# ---- Perfetto / Chrome trace-event JSON ----
export_ "$TMP/sample.kvt" perfetto "$TMP/sample.json" 2>"$TMP/perfetto.err"
check "perfetto export exits 0" test $? -eq 0
python3 - "$TMP/sample.json" >"$TMP/perfetto.check" 2>&1 <<'EOF'
import json, sys, numbers
d = json.load(open(sys.argv[1], encoding="utf-8"))
ev = d["traceEvents"]
assert isinstance(ev, list) and ev, "no events"
num = lambda v: isinstance(v, numbers.Number) and not isinstance(v, bool)
need = {"X": ("name", "ts", "dur", "pid", "tid"), "C": ("name", "ts", "pid", "args"),
        "i": ("name", "ts", "pid", "tid", "s"), "M": ("name", "pid", "args")}
seen = {}
for e in ev:
    ph = e.get("ph")
    assert ph in need, "unexpected ph %r in %r" % (ph, e)
    for k in need[ph]:
        assert k in e, "ph %s event without %s: %r" % (ph, k, e)
    if "ts" in e: assert num(e["ts"]) and e["ts"] >= 0, e
    if ph == "X": assert num(e["dur"]) and e["dur"] >= 0, e
    if ph == "C": assert e["args"] and all(num(v) for v in e["args"].values()), e
    if ph == "i": assert e["s"] in ("g", "p", "t"), e
    if ph == "M":
        assert e["name"] in ("process_name", "thread_name", "process_sort_index", "thread_sort_index"), e
        assert isinstance(e["args"].get("name", ""), str), e
    assert num(e["pid"]) and (ph in ("C", "M") or num(e["tid"])), e
    seen[ph] = seen.get(ph, 0) + 1
names = {e["name"] for e in ev if e["ph"] == "C"}
for want in ("L00 bytes held", "L29 kept tokens", "L03-L04 similarity", "cache bytes held"):
    assert want in names, "no counter " + want
assert any(e["ph"] == "X" and e.get("cat") == "op" for e in ev), "no op slices"
assert any(e["ph"] == "X" and e.get("cat") == "step" for e in ev), "no step slices"
assert any(e["ph"] == "i" and e.get("cat") == "token" for e in ev), "no token instants"
assert any(e["ph"] == "M" and e["name"] == "process_name" for e in ev), "no process names"
assert d.get("otherData", {}).get("model") == "tiny", "metadata missing"
print("events by ph:", seen)
EOF
rc=$?
cat "$TMP/perfetto.check"
check "perfetto JSON parses and every event has the keys its ph needs" test $rc -eq 0

# ---- CSV and JSON lines ----
export_ "$TMP/sample.kvt" csv "$TMP/sample.csv" 2>/dev/null
python3 - "$TMP/sample.csv" <<'EOF'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], newline="", encoding="utf-8", errors="replace")))
assert len(rows) == 201, len(rows)
assert all(len(r) == len(rows[0]) for r in rows), "ragged rows"
assert rows[0][:3] == ["trace_step", "run", "step"] and [r[0] for r in rows[1:]] == [str(i) for i in range(200)]
EOF
check "csv: a header and one row per step, all the same width" test $? -eq 0
export_ "$TMP/sample.kvt" jsonl "$TMP/sample.jsonl" 2>/dev/null
python3 -c '
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
assert sum(r["type"] == "step" for r in recs) == 200 and recs[0]["type"] == "run"
' "$TMP/sample.jsonl"
check "jsonl: every line parses, 200 steps" test $? -eq 0

if [ "$HAVE_CMD" = 1 ]; then
    "$BIN" trace export "$TMP/sample.kvt" --format csv --from 50 --to 59 >"$TMP/win.csv" 2>/dev/null
    python3 -c '
import csv, sys
rows = list(csv.reader(open(sys.argv[1], newline="", encoding="utf-8", errors="replace")))
assert [r[0] for r in rows[1:]] == [str(i) for i in range(50, 60)], [r[0] for r in rows[1:]]
' "$TMP/win.csv"
    check "csv --from 50 --to 59 gives the 10 rows of steps 50..59" test $? -eq 0
    "$BIN" trace export "$TMP/sample.kvt" --format jsonl --from 150 >"$TMP/win.jsonl" 2>/dev/null
    check "jsonl --from 150 starts with the keyframe state and has 50 steps" \
        test "$(grep -c '"type":"step"' "$TMP/win.jsonl")" -eq 50 -a "$(head -c 14 "$TMP/win.jsonl")" = '{"type":"run",'
    # errors: one line, non-zero
    "$BIN" trace info "$TMP/nonexistent.kvt" >/dev/null 2>"$TMP/e1"; rc=$?
    check "info on a missing file: one-line error, exit 1" test $rc -eq 1 -a "$(wc -l <"$TMP/e1")" -eq 1
    head -c 300 /dev/urandom >"$TMP/garbage.kvt"
    "$BIN" trace info "$TMP/garbage.kvt" >/dev/null 2>"$TMP/e2"; rc=$?
    check "info on garbage: 'not a kvscope trace', exit 1" grep -q "not a kvscope trace" "$TMP/e2"
    "$BIN" trace export "$TMP/sample.kvt" --format xml >/dev/null 2>"$TMP/e3"; rc=$?
    check "export --format xml: exit 2" test $rc -eq 2 -a "$(wc -l <"$TMP/e3")" -eq 1
    "$BIN" trace recover "$TMP/garbage.kvt" "$TMP/out.kvt" >/dev/null 2>"$TMP/e4"; rc=$?
    check "recover of garbage fails and writes nothing" test $rc -eq 1 -a -z "$(ls "$TMP" | grep '^out\.kvt')"
    # replay --batch prints the export's JSON lines (one formatter), then the summary
    "$BIN" replay "$TMP/sample.kvt" --batch >"$TMP/replay.jsonl" 2>"$TMP/replay.err"
    check "replay --batch exits 0 on the sample" test $? -eq 0 -a ! -s "$TMP/replay.err"
    check "replay --batch = trace export --format jsonl + a summary line" \
        sh -c "head -n -1 '$TMP/replay.jsonl' | cmp -s - '$TMP/sample.jsonl' && tail -n 1 '$TMP/replay.jsonl' | grep -q '\"type\":\"summary\",\"records\":[0-9]*,\"runs\":2,\"steps\":200'"
    "$BIN" replay "$TMP/garbage.kvt" --batch >/dev/null 2>"$TMP/e5"; rc=$?
    check "replay of garbage: one line, exit 1" test $rc -eq 1 -a "$(wc -l <"$TMP/e5")" -eq 1
    cp "$TMP/sample.kvt" "$TMP/inplace.kvt"
    "$BIN" trace recover "$TMP/inplace.kvt" "$TMP/inplace.kvt" >/dev/null 2>"$TMP/e6"; rc=$?
    check "recover IN IN without --force: refused, one line, IN untouched" \
        sh -c "[ $rc -eq 1 ] && [ \$(wc -l <'$TMP/e6') -eq 1 ] && grep -q 'already exists (--force replaces it)' '$TMP/e6' &&
               cmp -s '$TMP/sample.kvt' '$TMP/inplace.kvt'"
    "$BIN" trace recover "$TMP/inplace.kvt" "$TMP/inplace.kvt" --force >/dev/null 2>&1 &&
        "$BIN" trace info "$TMP/inplace.kvt" 2>/dev/null | grep -qE '^steps +200 '
    check "recover IN IN --force rewrites in place" test $? -eq 0

    # ---- files that are not ours: a FIFO and a link to a device are never written or replaced ----
    # (the real /dev/null is only ever examined through the link, never opened for writing)
    mkfifo "$TMP/fifo.kvt"
    ln -s /dev/null "$TMP/null.kvt"
    ino_fifo=$(stat -c %i "$TMP/fifo.kvt"); ino_link=$(stat -c %i "$TMP/null.kvt")
    untouched() { # untouched WHAT: the FIFO is still that FIFO, the link still that link to /dev/null
        [ -p "$TMP/fifo.kvt" ] && [ "$(stat -c %i "$TMP/fifo.kvt")" = "$ino_fifo" ] &&
        [ -L "$TMP/null.kvt" ] && [ "$(stat -c %i "$TMP/null.kvt")" = "$ino_link" ] &&
        [ "$(readlink "$TMP/null.kvt")" = /dev/null ] && [ -c /dev/null ] &&
        [ -z "$(ls "$TMP" | grep -E '^(fifo|null)\.kvt.+')" ]
    }
    refused() { # refused RC ERRFILE WORD: exit RC, one line naming the target and what it is
        [ "$1" -eq 1 ] && [ "$(wc -l <"$2")" -eq 1 ] && grep -q "$3" "$2"
    }
    NOM=/nonexistent/m.gguf
    for tgt in fifo null; do
        what=$([ $tgt = fifo ] && echo "a FIFO" || echo "a character device")
        timeout 20 "$BIN" run --batch -m $NOM -p x -n 1 --record "$TMP/$tgt.kvt" >/dev/null 2>"$TMP/e7"; rc=$?
        check "run --record $tgt: refused before the model loads" refused $rc "$TMP/e7" "$TMP/$tgt.kvt is $what, not a regular file"
        timeout 20 "$BIN" run --batch -m $NOM -p x -n 1 --record "$TMP/$tgt.kvt" --force >/dev/null 2>"$TMP/e7"; rc=$?
        check "run --record $tgt --force: still refused" refused $rc "$TMP/e7" "$what"
        timeout 20 "$BIN" trace recover "$TMP/sample.kvt" "$TMP/$tgt.kvt" --force >/dev/null 2>"$TMP/e7"; rc=$?
        check "trace recover IN $tgt --force: refused" refused $rc "$TMP/e7" "$TMP/$tgt.kvt is $what"
        timeout 20 "$BIN" trace export "$TMP/sample.kvt" --format jsonl -o "$TMP/$tgt.kvt" >/dev/null 2>"$TMP/e7"; rc=$?
        check "trace export -o $tgt: refused" refused $rc "$TMP/e7" "$TMP/$tgt.kvt is $what"
        check "the $tgt target is untouched" untouched
    done
    # NAME.part a FIFO: never opened (it would block), never replaced
    mkfifo "$TMP/p.kvt.part"
    timeout 20 "$BIN" run --batch -m $NOM -p x -n 1 --record "$TMP/p.kvt" --force >/dev/null 2>"$TMP/e7"; rc=$?
    check "run --record P with P.part a FIFO: refused" sh -c "[ $rc -eq 1 ] && [ -p '$TMP/p.kvt.part' ] && [ ! -e '$TMP/p.kvt' ]"
    # an existing file: kept unless --force
    echo precious >"$TMP/old.kvt"
    timeout 20 "$BIN" run --batch -m $NOM -p x -n 1 --record "$TMP/old.kvt" >/dev/null 2>"$TMP/e7"; rc=$?
    check "run --record over a file: refused without --force, file kept" \
        sh -c "[ $rc -eq 1 ] && grep -q 'old.kvt already exists (--force replaces it)' '$TMP/e7' && [ \"\$(cat '$TMP/old.kvt')\" = precious ]"
    if [ -x "$BUILD/tests/test_methods" ] && "$BUILD/tests/test_methods" --write-tiny "$TMP/tiny.gguf" llama; then
        timeout 120 "$BIN" run --batch -m "$TMP/tiny.gguf" -p "the quick brown fox" -n 2 -t 1 --method full \
            --record "$TMP/old.kvt" --force >/dev/null 2>"$TMP/e8"; rc=$?
        check "run --record over a file --force: replaced by a clean trace" \
            sh -c "[ $rc -eq 0 ] && '$BIN' trace info '$TMP/old.kvt' 2>/dev/null | grep -qE '^status +clean'"
    else
        no "write the tiny model"
    fi
    timeout 20 "$BIN" trace recover "$TMP/sample.kvt" "$TMP/old.kvt" >/dev/null 2>"$TMP/e7"; rc=$?
    check "trace recover over a file: refused without --force" sh -c "[ $rc -eq 1 ] && grep -q 'already exists' '$TMP/e7'"
    # a failed export (writes past a file size limit fail) leaves what was at -o and says so
    echo precious >"$TMP/keep.jsonl"
    ( trap '' XFSZ; ulimit -f 8; exec "$BIN" trace export "$TMP/sample.kvt" --format jsonl -o "$TMP/keep.jsonl" ) \
        >/dev/null 2>"$TMP/e9"; rc=$?
    check "failed export: exit 1, one line naming -o" refused $rc "$TMP/e9" "not written: $TMP/keep.jsonl"
    check "failed export: the old file is kept, no temporary left" \
        sh -c "[ \"\$(cat '$TMP/keep.jsonl')\" = precious ] && [ -z \"\$(ls '$TMP' | grep '^keep\.jsonl.')\" ]"
    "$BIN" trace export "$TMP/sample.kvt" --format jsonl -o "$TMP/keep.jsonl" 2>/dev/null
    check "export -o over a regular file replaces it when it succeeds" cmp -s "$TMP/keep.jsonl" "$TMP/sample.jsonl"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
