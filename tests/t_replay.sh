#!/usr/bin/env bash
# Recording and replay end to end, driven as a person would: `kvscope run --record` on a tiny test
# model (fixed seed, one thread), `replay --batch` printing byte-identical JSON lines, the live TUI
# and its replay drawing identical panels, the replay scrubber in a 160x45 tmux pane (pause/play,
# step, seek to a step and to a token, speed, start/end, resize to 20x6 and back, q), bad input
# (missing, not a trace, newer version, truncated), and recorders stopped by SIGTERM, SIGINT and
# SIGKILL (NAME.part recovered by `trace recover`, the steps lost within the bound the man page
# states). Every wait is for a condition (screen text, file state) with a generous deadline
# (KVS_TEST_WAIT, 60 s), never a fixed sleep, so load only slows it. "N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=${KVS_BIN:-$PWD/$BUILD/kvscope}
TV=$PWD/$BUILD/tests/test_views
TMP=$(mktemp -d "${KVS_TEST_TMP:-/tmp}/replay.XXXXXX")
SOCK=kvs-replay-$$
bgpid=
. tests/lib/tui.sh
# the shared cleanup, plus the recording killed mid-run by the crash-loss checks
cleanup() {
    [ -n "$bgpid" ] && kill -9 "$bgpid" 2>/dev/null
    T kill-server 2>/dev/null
    rm -rf "$TMP"
}

if [ ! -x "$BIN" ] || [ ! -x "$TV" ]; then echo "missing $BIN or $TV (build first)"; echo "0 passed, 1 failed"; exit 1; fi
"$TV" --tiny-model "$TMP/tiny.gguf" || { echo "cannot write the tiny model"; echo "0 passed, 1 failed"; exit 1; }

# tmux-256color: the keys tmux sends (Home, End) are the ones the program's terminfo expects
ENV="env -u TMUX TERM=tmux-256color LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME=$TMP/home XDG_CONFIG_HOME=$TMP/cfg XDG_CACHE_HOME=$TMP/cache"
PROMPT="The quick brown fox jumps over the lazy dog. The lazy dog sleeps while the quick brown fox runs far away."
N=1000
RUN="$BIN run -m $TMP/tiny.gguf -p '$PROMPT' -t 1 --seed 1 --method commonkv --cr 0.5"

# idle: no busy spinner at the start of the status line (the engine finished / replay paused)
idle() { cap | head -n 1 | grep -q '^ kvscope '; }
# wait_stable [SECONDS]: true once the UI is idle and two captures 1 s apart are the same
wait_stable() {
    local deadline a b
    wait_cond "${1:-$WAIT}" idle || return 1
    deadline=$(deadline_ms "${1:-$WAIT}")
    a=$(cap)
    while [ "$(now_ms)" -lt "$deadline" ]; do
        sleep 1
        b=$(cap)
        [ "$a" = "$b" ] && return 0
        a=$b
    done
    return 1
}
NSTART=0
start() { # start W H SHELL-COMMAND (the pane's shell reports the exit status and terminal state)
    T kill-server 2>/dev/null
    # a fresh server each time: a new session must not reach the old server while it shuts down
    NSTART=$((NSTART + 1)); SOCK=kvs-replay-$$-$NSTART
    rm -f "$TMP/stty.after"
    T new-session -d -s ui -x "$1" -y "$2" "trap : INT QUIT; $ENV sh -c \"exec $3\"; rc=\$?; stty -a > $TMP/stty.after; echo __EXIT__ rc=\$rc; sleep 120"
}
exited() { wait_for "__EXIT__ rc=$1" "${2:-$WAIT}" >/dev/null; }
alt_off() { [ "$(T display-message -p -t ui '#{alternate_on}')" = 0 ]; }
stty_sane() { [ -f "$TMP/stty.after" ] && grep -q -- ' icanon' "$TMP/stty.after" && grep -q -- ' echo ' "$TMP/stty.after"; }
scrub() { cap | grep -oE '[0-9]+/[0-9]+ token [0-9]+' | head -1; }
one_line() { [ "$(wc -l <"$1")" -eq 1 ]; }
# prefix_of A B: the records of A (summary line dropped) are the first records of B
prefix_of() {
    python3 - "$1" "$2" <<'EOF'
import sys
a = [l for l in open(sys.argv[1], "rb").read().split(b"\n") if l and b'"type":"summary"' not in l]
b = open(sys.argv[2], "rb").read().split(b"\n")[:-1]   # complete lines only
n = min(len(a), len(b))
sys.exit(0 if n > 0 and a[:n] == b[:n] and len(a) <= len(b) + 1 else 1)
EOF
}
# pid of the newest kvscope started with these arguments
kvs_pid() { pgrep -n -f "^$BIN $1" || true; }

# ---- 1. record a --batch run; replay --batch prints the same bytes ----
$ENV sh -c "$RUN -n $N --record '$TMP/rec.kvt'" >"$TMP/live.jsonl" 2>"$TMP/rec.err"
check "run --batch --record exits 0" test $? -eq 0
lines=$(($(wc -l <"$TMP/live.jsonl") - 1))
size=$(stat -c %s "$TMP/rec.kvt" 2>/dev/null || echo 0)
check "stderr: recorded $lines records to FILE ($size bytes, 0 dropped)" \
    grep -qx "kvscope: recorded $lines records to $TMP/rec.kvt ($size bytes, 0 dropped)" "$TMP/rec.err"
check "the recording is renamed: no .part left" test -s "$TMP/rec.kvt" -a ! -e "$TMP/rec.kvt.part"
"$BIN" trace info "$TMP/rec.kvt" >"$TMP/rec.info" 2>&1
check "trace info: clean, $N+1 steps" grep -qE "^steps +$((N + 1)) " "$TMP/rec.info"
check "trace info: closed cleanly" grep -qE '^status +clean' "$TMP/rec.info"
check "metadata: model, method, backend, shapes, version" sh -c "grep -q 'model_name=tiny-tui' '$TMP/rec.info' &&
    grep -q 'method=commonkv' '$TMP/rec.info' && grep -q 'backend=cpu' '$TMP/rec.info' &&
    grep -q 'n_layer=8' '$TMP/rec.info' && grep -q 'head_dim=16' '$TMP/rec.info' && grep -q 'kvscope_version=' '$TMP/rec.info'"
"$BIN" replay "$TMP/rec.kvt" --batch >"$TMP/replay.jsonl" 2>"$TMP/replay.err"
check "replay --batch exits 0 and says nothing on stderr" test $? -eq 0 -a ! -s "$TMP/replay.err"
check "replay --batch prints byte-identical lines, summary included" cmp -s "$TMP/live.jsonl" "$TMP/replay.jsonl"
"$BIN" trace export "$TMP/rec.kvt" --format jsonl >"$TMP/export.jsonl" 2>/dev/null
check "trace export --format jsonl = the live lines without the summary" \
    sh -c "head -n -1 '$TMP/live.jsonl' | cmp -s - '$TMP/export.jsonl'"
# the numbers the panels must show at the end
read -r CR NGEN NCTX <<<"$(python3 -c '
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
last = [r for r in recs if r["type"] == "step"][-1]
s = recs[-1]
print("%.3f %d %d" % (last["cr_achieved"], s["n_gen"], s["n_ctx"]))' "$TMP/live.jsonl")"
echo "   (batch: achieved CR $CR, $NGEN tokens, ctx $NCTX)"

# ---- 2. the live TUI and its replay draw the same panels ----
# three runs (the target CR raised twice from the keyboard), each longer than a keyframe interval
start 160 45 "$RUN -n 300 --record $TMP/tui.kvt"
check "live TUI: run 1 reaches its last step" wait_for "step 300/300" 20
T send-keys -t ui + Enter
wait_for "CR target 0.55" 20 >/dev/null
check "live TUI: run 2 (CR 0.55) reaches its last step" wait_for "step 300/300" 20
T send-keys -t ui + Enter
wait_for "CR target 0.60" 20 >/dev/null
check "live TUI: run 3 (CR 0.60) reaches its last step" wait_for "step 300/300" 20
wait_stable 15
cap >"$TMP/live.txt"
T send-keys -t ui q
check "live TUI: q exits 0" exited 0 10
check "live TUI: terminal restored" alt_off
check "live TUI: 'recorded N records' printed after the terminal is restored" \
    wait_for "kvscope: recorded " 2
check "live TUI: the trace is complete" sh -c "'$BIN' trace info '$TMP/tui.kvt' 2>/dev/null | grep -qE '^status +clean'"
"$BIN" replay "$TMP/tui.kvt" --batch 2>/dev/null | tail -n 1 >"$TMP/tui-summary.json"
check "the TUI trace holds the three runs" grep -q '"runs":3,"steps":903,' "$TMP/tui-summary.json"
# one more row for the scrubber: the panels get the same height as in the live run
same_panels() {
    wait_stable 15
    cap >"$TMP/replay.txt"
    diff <(sed -n '2,44p' "$TMP/live.txt") <(sed -n '2,44p' "$TMP/replay.txt") >"$TMP/panels.diff" && return 0
    sed 's/^/   | /' "$TMP/panels.diff" | head -20
    return 1
}
start 160 46 "$BIN replay $TMP/tui.kvt"
wait_for "REPLAY" 10 >/dev/null
T send-keys -t ui End
check "replay of the TUI trace reaches its end" wait_for "902/902 token 300" 10
check "every panel of the replay matches the live run's last frame" same_panels
T send-keys -t ui : 4 5 0 Enter
check "seek back into run 2 (through a keyframe)" wait_for "450/902 token 149" 10
check "run 2's settings are back in the panels" wait_for "CR target 0.55" 5
T send-keys -t ui : 1 0 0 Enter
check "seek back into run 1" wait_for "100/902 token 100" 10
check "run 1's settings are back in the panels" wait_for "CR target 0.50" 5
T send-keys -t ui End
check "End again" wait_for "902/902 token 300" 10
check "after seeking around, the panels still match the live run's last frame" same_panels
T send-keys -t ui q
exited 0 10 >/dev/null

# ---- 3. the scrubber, 160x45 ----
start 160 45 "$BIN replay $TMP/rec.kvt --paused --speed 0.25"
check "replay starts paused at 0.25x" wait_for "0.25x" 10
check "status line says REPLAY paused" wait_for "REPLAY paused" 2
T send-keys -t ui Right
check "Right: the first step (prefill)" wait_for "0/$N token 0" 5
T send-keys -t ui Right Right
check "Right Right: step 2" wait_for "2/$N token 2" 5
T send-keys -t ui Left
check "Left: back to step 1" wait_for "1/$N token 1" 5
T send-keys -t ui Space
check "space plays" wait_for "REPLAY playing" 5
check "playing moves the position" wait_cond 10 eval '[ -n "$(scrub)" ] && [ "$(scrub)" != "1/$N token 1" ]'
T send-keys -t ui Space
check "space pauses" wait_for "REPLAY paused" 5
# held while paused: once the screen is settled it must not move over a whole second
wait_stable >/dev/null
p1=$(scrub); sleep 1; p2=$(scrub)
check "paused: the position holds ($p1 = $p2)" test -n "$p1" -a "$p1" = "$p2" -a "$p1" != "1/$N token 1"
T send-keys -t ui '>'
check "> doubles the speed" wait_for "0.5x" 5
T send-keys -t ui '>' '>' '>'
check "> > > up to 4x" wait_for " 4x" 5
T send-keys -t ui '<'
check "< halves it" wait_for " 2x" 5
T send-keys -t ui : 5 0 0 Enter
check "seek to step 500" wait_for "500/$N token 500" 5
check "the status line follows the seek" wait_for "step 500/" 2
T send-keys -t ui : t 1 0 0 Enter
check "seek to token 100 (already shown)" wait_for "101/$N token 101" 5
T send-keys -t ui Home
check "Home: the start" wait_for "0/$N token 0" 5
T send-keys -t ui : t 7 0 0 Enter
check "seek to token 700 (not shown yet)" wait_for "701/$N token 701" 5
T send-keys -t ui : 3 0 Enter
check "seek back to step 30" wait_for "30/$N token 30" 5
T send-keys -t ui End
check "End: the last step" wait_for "$N/$N token $N" 10
check "memory panel: the batch run's achieved CR ($CR)" wait_for "achieved $CR" 5
check "tokens panel: the batch run's $NGEN tokens, ctx $NCTX" wait_for "$NGEN tokens  ctx $NCTX" 5
check "status line: step $N/$N ctx $NCTX" wait_for "step $N/$N ctx $NCTX" 2
T resize-window -t ui -x 20 -y 6
check "20x6 redrawn (status line first)" wait_cond 10 eval 'cap | head -n 1 | grep -q "^REPLAY"'
small=$(cap)
check "20x6 draws something" test "$(echo "$small" | tr -d ' \n' | wc -c)" -gt 20
T resize-window -t ui -x 160 -y 45
check "back to 160x45 with every panel" wait_for "6 Quality" 5
check "back to 160x45 at the same step" wait_for "$N/$N token $N" 5
T send-keys -t ui q
check "q quits with status 0" exited 0 10
check "alternate screen left" alt_off
check "tty back in canonical mode with echo" stty_sane

# ---- 4. bad input: one line, non-zero where nothing can be shown, terminal restored ----
printf 'this is not a trace, just text\n%.0s' $(seq 1 20) >"$TMP/text.kvt"
python3 -c '
import sys
d = bytearray(open(sys.argv[1], "rb").read()); d[8] = 2; d[9] = 0
open(sys.argv[2], "wb").write(d)' "$TMP/rec.kvt" "$TMP/newer.kvt"
head -c 400 "$TMP/rec.kvt" >"$TMP/empty-cut.kvt"
for c in "missing.kvt:cannot open" "text.kvt:not a kvscope trace" "newer.kvt:newer" "empty-cut.kvt:no records"; do
    f=${c%%:*}; want=${c#*:}
    "$BIN" replay "$TMP/$f" --batch >"$TMP/bad.out" 2>"$TMP/bad.err"; rc=$?
    check "replay --batch $f: exit 1, one line naming the problem" \
        sh -c "[ $rc -eq 1 ] && [ ! -s '$TMP/bad.out' ] && [ \$(wc -l <'$TMP/bad.err') -eq 1 ] && grep -q '$want' '$TMP/bad.err'"
done
start 120 40 "$BIN replay $TMP/newer.kvt"
check "replay newer.kvt in a terminal: the error on screen" wait_for "a newer kvscope is needed" 10
check "replay newer.kvt: exit 1" exited 1 5
check "replay newer.kvt: terminal untouched" alt_off
size=$(stat -c %s "$TMP/rec.kvt")
head -c $((size / 2)) "$TMP/rec.kvt" >"$TMP/half.kvt"
"$BIN" replay "$TMP/half.kvt" --batch >"$TMP/half.jsonl" 2>"$TMP/half.err"
check "truncated trace: replay --batch exits 0" test $? -eq 0
check "truncated trace: one note on stderr (recovered, where the tail was lost)" \
    sh -c "one_line() { [ \$(wc -l <\"\$1\") -eq 1 ]; }; one_line '$TMP/half.err' && grep -q 'recovered [0-9]* steps; tail lost at offset' '$TMP/half.err'"
check "truncated trace: the recovered records are the live run's first records" prefix_of "$TMP/half.jsonl" "$TMP/live.jsonl"
check "truncated trace: the summary says incomplete" sh -c "tail -n 1 '$TMP/half.jsonl' | grep -q '\"complete\":false'"
start 160 45 "$BIN replay $TMP/half.kvt"
check "truncated trace in the TUI: a visible note" wait_for "recovered" 10
check "truncated trace in the TUI: marked in the status line" wait_for "half.kvt (recovered prefix)" 2
T send-keys -t ui End
check "truncated trace in the TUI: plays to the recovered end" wait_for "step " 5
T send-keys -t ui q
check "truncated trace in the TUI: q exits 0" exited 0 10

# ---- 5. recorders stopped by signals ----
# SIGTERM in --batch: the summary is printed, the trace closed; the replay prints the same bytes
rm -f "$TMP/term.kvt"*
$ENV sh -c "exec $RUN -n 3000 --ctx 4096 --record '$TMP/term.kvt'" >"$TMP/term.jsonl" 2>"$TMP/term.err" &
bgpid=$!
wait_cond "$WAIT" eval '[ "$(wc -l <"$TMP/term.jsonl")" -ge 100 ]'
kill -TERM "$bgpid" 2>/dev/null
wait "$bgpid"; rc=$?; bgpid=
check "SIGTERM in --batch: exit 143" test $rc -eq 143
check "SIGTERM in --batch: 'recorded' on stderr, no .part" sh -c "grep -q '^kvscope: recorded [0-9]* records to' '$TMP/term.err' && [ -s '$TMP/term.kvt' ] && [ ! -e '$TMP/term.kvt.part' ]"
check "SIGTERM in --batch: an incomplete summary" sh -c "tail -n 1 '$TMP/term.jsonl' | grep -q '\"complete\":false'"
"$BIN" replay "$TMP/term.kvt" --batch >"$TMP/term-replay.jsonl" 2>/dev/null
check "SIGTERM in --batch: replay --batch prints the same bytes" cmp -s "$TMP/term.jsonl" "$TMP/term-replay.jsonl"

# SIGKILL: NAME.part is left; trace recover makes it a trace that info and replay accept
rm -f "$TMP/killed.kvt"*
# stdout line-buffered where stdbuf exists: a block-buffered stdout can lag the trace by more than
# the one record being printed (the writer flushes every 8 steps), and the prefix check needs the
# printed lines to be at most one record behind what was recorded
LINEBUF=; command -v stdbuf >/dev/null && LINEBUF="stdbuf -oL"
$ENV $LINEBUF sh -c "exec $RUN -n 3000 --ctx 4096 --record '$TMP/killed.kvt'" >"$TMP/killed.jsonl" 2>/dev/null &
bgpid=$!
part_size() { stat -c %s "$1" 2>/dev/null || echo 0; }
wait_cond "$WAIT" eval '[ "$(part_size "$TMP/killed.kvt.part")" -ge 20000 ]'
kill -9 "$bgpid" 2>/dev/null
wait "$bgpid" 2>/dev/null; bgpid=
check "SIGKILL mid-run leaves NAME.part and no NAME" test -s "$TMP/killed.kvt.part" -a ! -e "$TMP/killed.kvt"
"$BIN" trace recover "$TMP/killed.kvt.part" "$TMP/killed.kvt" >"$TMP/recover.out" 2>&1
check "trace recover NAME.part NAME exits 0" test $? -eq 0
"$BIN" trace info "$TMP/killed.kvt" >"$TMP/killed.info" 2>&1
check "trace info accepts the recovered trace (clean)" grep -qE '^status +clean' "$TMP/killed.info"
steps=$(sed -nE 's/^steps +([0-9]+).*/\1/p' "$TMP/killed.info")
check "the recovered trace holds steps (${steps:-0})" test "${steps:-0}" -gt 10
"$BIN" replay "$TMP/killed.kvt" --batch >"$TMP/killed-replay.jsonl" 2>"$TMP/killed-replay.err"
check "replay --batch accepts the recovered trace" test $? -eq 0 -a ! -s "$TMP/killed-replay.err"
check "its records are the killed run's records" prefix_of "$TMP/killed-replay.jsonl" "$TMP/killed.jsonl"

# The crash-loss bound (kvscope-trace(5)): a chunk goes out once it holds 8 steps or a record
# pushed 100 ms ago, so kill -9 loses at most the last 8 steps. stdout is line-buffered (stdbuf)
# so every step printed had been handed to the writer: printed - recovered = steps lost (the step
# being printed at the kill may be missing from stdout, so this never overstates the loss; it can
# then read -1: the step was recorded and the kill came before its line was printed).
# Killed at several points of the recording, each once the .part file reaches a size.
BOUND=8
if command -v stdbuf >/dev/null; then
    for at in 30000 70000 120000 200000; do
        rm -f "$TMP/bound.kvt" "$TMP/bound.kvt.part"
        $ENV stdbuf -oL sh -c "exec $RUN -n 3000 --ctx 4096 --record '$TMP/bound.kvt'" >"$TMP/bound.jsonl" 2>/dev/null &
        bgpid=$!
        wait_cond "$WAIT" eval '[ "$(part_size "$TMP/bound.kvt.part")" -ge $at ]'
        kill -9 "$bgpid" 2>/dev/null
        wait "$bgpid" 2>/dev/null; bgpid=
        "$BIN" trace recover "$TMP/bound.kvt.part" "$TMP/bound.kvt" >/dev/null 2>&1
        rec=$("$BIN" trace info "$TMP/bound.kvt" 2>/dev/null | sed -nE 's/^steps +([0-9]+).*/\1/p')
        res=$(python3 - "$TMP/bound.jsonl" "${rec:-0}" <<'EOF'
import json, sys
steps = []
for line in open(sys.argv[1], "rb"):
    if not line.endswith(b"\n"):
        break
    r = json.loads(line)
    if r.get("type") == "step":
        steps.append(r)
rec = int(sys.argv[2])
lost = len(steps) - rec
ms = (steps[-1]["t_end_ns"] - steps[rec - 1]["t_end_ns"]) / 1e6 if 0 < rec < len(steps) else 0.0
print(len(steps), rec, lost, "%.1f" % ms)
EOF
)
        read -r printed recovered lost lost_ms <<<"$res"
        check "kill -9 at $at bytes: $printed steps printed, $recovered recovered, $lost lost (${lost_ms} ms of work; bound $BOUND)" \
            test "${recovered:-0}" -gt 0 -a "${lost:-99}" -ge -1 -a "${lost:-99}" -le $BOUND
    done
else
    echo "   (skipped the crash-loss bound: stdbuf not installed)"
fi

# SIGINT while the TUI records: the UI quits, restores the terminal, the trace is closed
start 160 45 "$RUN -n 3000 --ctx 4096 --record $TMP/int.kvt"
wait_for "achieved 0." 20 >/dev/null
pid=$(kvs_pid "run -m $TMP/tiny.gguf")
[ -n "$pid" ] && kill -INT "$pid"
check "SIGINT in the TUI: exit 0" exited 0 10
check "SIGINT in the TUI: terminal restored" alt_off
check "SIGINT in the TUI: tty sane" stty_sane
check "SIGINT in the TUI: 'recorded' printed" wait_for "kvscope: recorded " 2
check "SIGINT in the TUI: the trace is clean and replays" sh -c "'$BIN' trace info '$TMP/int.kvt' 2>/dev/null | grep -qE '^status +clean' &&
    '$BIN' replay '$TMP/int.kvt' --batch >/dev/null 2>&1"

echo
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
