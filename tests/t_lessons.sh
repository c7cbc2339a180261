#!/usr/bin/env bash
# The workshop lessons: the shipped traces (lessons/*.kvt) replay with the current binary; every
# lesson runs to its end under tmux from its shipped traces, each step's overlay showing numbers
# computed from the records (checked against each other where two sources give the same number)
# and the panels showing theirs; a lesson re-recorded with `kvscope lesson N --batch --record`
# (what `make lessons` runs) replays and plays too; bad lesson numbers, missing traces and wrong
# option mixes give one line. Every wait is for screen text with a generous deadline (KVS_TEST_WAIT,
# 60 s), never a fixed sleep. Needs the default model only for the re-recording part (skipped,
# and said so, without it). Prints "N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=${KVS_BIN:-$PWD/$BUILD/kvscope}
TMP=$(mktemp -d "${KVS_TEST_TMP:-/tmp}/lessons.XXXXXX")
SOCK=kvs-les-$$
. tests/lib/tui.sh

if [ ! -x "$BIN" ]; then echo "missing $BIN (build first)"; echo "0 passed, 1 failed"; exit 1; fi
LESSONS=$PWD/lessons
ENV="env -u TMUX -u KVSCOPE_LESSONS TERM=xterm-256color LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME=$TMP/home XDG_CONFIG_HOME=$TMP/cfg"

on_screen_re() { cap | grep -qE -- "$1"; }
# the overlay's text (between the last two double bars of each row), rows joined as the words wrap
overlay() { cap | sed -n 's/.*║\(.*\)║$/\1/p' | tr '\n' ' ' | tr -s ' '; }
in_overlay_re() { overlay | grep -qE -- "$1"; }
show() { echo "   (timed out waiting for '$1'; screen:)"; cap | sed 's/^/   | /' | head -50; }
wait_re() { wait_cond "${2:-$WAIT}" on_screen_re "$1" && return 0; show "$1"; return 1; }
wait_ov() { wait_cond "${2:-$WAIT}" in_overlay_re "$1" && return 0; show "$1"; echo "   overlay: $(overlay)"; return 1; }
not_waiting() { ! on_screen "Waiting for"; }
NSTART=0
start() {
    T kill-server 2>/dev/null
    NSTART=$((NSTART + 1)); SOCK=kvs-les-$$-$NSTART
    T new-session -d -s ui -x 140 -y 44 "cd $TMP/cwd && $ENV sh -c \"exec $1\"; echo __EXIT__ rc=\$?; sleep 120"
}
exited() { wait_for "__EXIT__ rc=$1" >/dev/null; }
mkdir -p "$TMP/cwd" "$TMP/home"

# ---- 1. lesson list, and the shipped traces replay with this binary ----
out=$(cd "$TMP/cwd" && KVSCOPE_LESSONS=$LESSONS "$BIN" lesson list 2>&1)
check "lesson list names six lessons" test "$(echo "$out" | grep -cE '^[1-6]  ')" = 6
check "lesson list finds every shipped trace" eval '! echo "$out" | grep -q "no trace"'
for f in "$LESSONS"/lesson*.kvt; do
    [ -e "$f" ] || { bad "no shipped traces in $LESSONS"; break; }
    j=$("$BIN" replay --batch "$f" 2>"$TMP/replay.err")
    rc=$?
    check "shipped $(basename "$f") replays (rc $rc)" eval '[ $rc = 0 ] && echo "$j" | tail -1 | grep -q "\"complete\":true" && echo "$j" | grep -q "\"type\":\"step\""'
done

# ---- 2. every lesson to its end, from its shipped traces ----
# step_check LESSON STEP: the numbers that step must show (extended regexes, one per line)
step_res() {
    case "$1.$2" in
    1.1) echo '= [0-9]+ bytes per token'; echo 'holds [0-9.]+ [KMG]iB = [0-9]+ bytes per token';;
    1.2) echo 'Now: [0-9]+ tokens, full cache [0-9.]+ [KMG]iB'; echo 'from [0-9]+ tokens on';;
    1.3) echo '131072 bytes per token'; echo '128K tokens x batch 8: 128 GiB KV = [0-9.]+x';;
    2.1) echo 'P:\[hidden\]'; echo 'pairs: mean -?[0-9.]+, from -?[0-9.]+ to -?[0-9.]+';;
    2.2) echo 'P:\[keys\]'; echo 'mean -?[0-9.]+, from -?[0-9.]+ to -?[0-9.]+ \(hidden';;
    2.3) echo 'neighbours: layers [0-9]+ and [0-9]+, hidden -?[0-9.]+, keys -?[0-9.]+';;
    3.1) echo 'P:\[latent\]'; echo 'pairs: latents -?[0-9.]+ \(-?[0-9.]+ to';;
    3.2) echo 'group 0 \(layers 0-3\): rank [0-9]+ of [0-9]+ keeps [0-9.]+%';;
    3.3) echo 'rank [0-9]+ = [0-9]+ B'; echo 'CR 0\.[0-9]+';;
    4.1) echo '^.* +[0-9]+ +-?[0-9.]+ +[0-9.]+%'; echo 'over [0-9]+ groups: -?[0-9.]+';;
    4.2) echo 'Of [0-9]+ tokens, [0-9]+ are'; echo 'group 0: [0-9]+ tokens merged';;
    4.3) echo 'achieved 0\.[0-9]+'; echo 'KL [0-9.]+, top-1 agreement [0-9.]+%';;
    5.1) echo 'minicache +0\.50 +[0-9.]+ +[0-9.]+'; echo 'commonkv +0\.90 +[0-9.]+ +[0-9.]+';;
    5.2) echo 'Lowest KL at CR >= 0.5: [a-z]+'; echo '9 runs seen';;
    6.1) echo 'as the press counted them'; echo 'merging +[-+][0-9.]+%'; echo 'quantization +[-+][0-9.]+%'; echo 'eviction +[-+][0-9.]+%'; echo 'Sum: CR 0\.[0-9]+, held [0-9.]+ [KMG]iB';;
    6.2) echo 'reached CR 0\.[0-9]+'; echo 'KL [0-9.]+, top-1 agreement [0-9.]+%';;
    esac
}
STEPS=(0 3 3 3 3 2 2)
play_lesson() { # play_lesson N DIR-OPTION LABEL
    local n=$1 opt=$2 label=$3 k
    start "$BIN lesson $n $opt"
    check "$label: lesson $n opens at step 1" wait_for "Lesson $n - step 1/${STEPS[$n]}"
    # the panels show the run's numbers (memory panel's achieved CR, status line's step counter)
    check "$label: lesson $n panels show numbers" wait_re "achieved [0-9]\.[0-9]{3}"
    for ((k = 1; k <= STEPS[n]; k++)); do
        wait_for "Lesson $n - step $k/${STEPS[$n]}" >/dev/null
        local r all=1
        while read -r r; do
            [ -n "$r" ] || continue
            if [ "${r#P:}" != "$r" ]; then wait_re "${r#P:}" >/dev/null; else wait_ov "$r" >/dev/null; fi ||
                { all=0; echo "   step $k: no match for /$r/"; }
        done < <(step_res "$n" "$k")
        wait_cond "$WAIT" not_waiting || { all=0; echo "   step $k: still waiting for data"; }
        if overlay | grep -qiE '(^| )(nan|-?inf|n/a)( |,|\.|$)'; then all=0; echo "   step $k: overlay shows a missing number: $(overlay)"; fi
        check "$label: lesson $n step $k shows its numbers" test $all = 1
        T send-keys -t ui Space
    done
    check "$label: lesson $n reaches its end" wait_for "End of lesson $n"
}
for n in 1 2 3 4 5 6; do
    play_lesson $n "--dir $LESSONS" shipped
    if [ "$n" = 1 ]; then
        # lesson 1's numbers agree with each other: bytes/token from shapes = measured per token
        T send-keys -t ui Left
        wait_for "Lesson 1 - step 3/3" >/dev/null; T send-keys -t ui Left
        wait_for "Lesson 1 - step 2/3" >/dev/null; T send-keys -t ui Left
        wait_ov "holds [0-9.]+ [KMG]iB = [0-9]+ bytes" >/dev/null
        shape=$(overlay | grep -oE '\(fp16\) = [0-9]+ bytes per token' | head -1 | grep -oE '[0-9]+ bytes' | grep -oE '[0-9]+')
        meas=$(overlay | grep -oE 'iB = [0-9]+ bytes per token' | head -1 | grep -oE '[0-9]+')
        check "Left goes back to step 1" on_screen "Lesson 1 - step 1/3"
        check "bytes per token from the RUN shapes ($shape) = measured ($meas)" test -n "$shape" -a "$shape" = "${meas:-x}"
        check "panel 3 (Memory) is the one highlighted" on_screen "╔═ 3 Memory"
    fi
    T send-keys -t ui q
    check "lesson $n quits with q (rc 0)" exited 0
done

# ---- 3. hostile input: one line, nothing written ----
err=$(cd "$TMP/cwd" && "$BIN" lesson 7 2>&1); rc=$?
check "lesson 7: rc 2, one line" test $rc = 2 -a "$(echo "$err" | grep -c 'lesson')" -ge 1
err=$(cd "$TMP/cwd" && script -qec "$BIN lesson 1 --dir $TMP/none" /dev/null 2>&1); rc=$?
check "missing trace names the file" eval 'echo "$err" | grep -q "$TMP/none/lesson1-1.kvt"'
err=$(cd "$TMP/cwd" && "$BIN" lesson 2 --batch 2>&1); rc=$?
check "--batch without --record: rc 2" test $rc = 2
err=$(cd "$TMP/cwd" && "$BIN" lesson 2 --batch --record "$TMP/not-a-dir" 2>&1); rc=$?
check "--record to a missing folder: rc 2, nothing written" test $rc = 2 -a ! -e "$TMP/not-a-dir"
check "no file left in the working folder" test -z "$(ls -A "$TMP/cwd")"

# ---- 4. re-recorded traces (what make lessons runs) replay and play ----
MODEL=${KVSCOPE_MODEL:-$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -r "$MODEL" ]; then
    mkdir -p "$TMP/regen"
    for n in 2 3; do
        "$BIN" lesson $n --batch --record "$TMP/regen" -m "$MODEL" 2>"$TMP/regen.err"
        check "lesson $n re-recorded (rc $?)" test -s "$TMP/regen/lesson$n-1.kvt" -a ! -e "$TMP/regen/lesson$n-1.kvt.part"
        j=$("$BIN" replay --batch "$TMP/regen/lesson$n-1.kvt" 2>/dev/null)
        check "re-recorded lesson $n replays" eval 'echo "$j" | tail -1 | grep -q "\"complete\":true"'
        play_lesson $n "--dir $TMP/regen" re-recorded
        T send-keys -t ui q
        exited 0 || bad "re-recorded lesson $n quits"
    done
else
    echo "skipped: re-recording (no model at $MODEL)"
fi

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
