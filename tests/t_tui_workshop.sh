#!/usr/bin/env bash
# Workshop screens driven through tmux: the F2 settings screen (live: edit a knob with the arrows,
# type one, reject a bad one, the change starts a new run; replay: the trace's RUN record,
# read-only), the replay scrubber's time axis, seeking by seconds and by run, a marked range that
# loop play stays inside and wraps around, 80x24 / 200x50 / 1x1 with the overlays open, and on the
# real model a settings change that keeps the previous run on screen dimmed and labelled (colour
# capture) until the new run has data. Every wait is for a condition with a generous deadline
# (KVS_TEST_WAIT, 60 s), never a fixed sleep. Prints "N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=${KVS_BIN:-$PWD/$BUILD/kvscope}
TV=$PWD/$BUILD/tests/test_views
TMP=$(mktemp -d "${KVS_TEST_TMP:-/tmp}/tuiws.XXXXXX")
SOCK=kvs-ws-$$
. tests/lib/tui.sh

if [ ! -x "$BIN" ] || [ ! -x "$TV" ]; then echo "missing $BIN or $TV (build first)"; echo "0 passed, 1 failed"; exit 1; fi
"$TV" --tiny-model "$TMP/tiny.gguf" || { echo "cannot write the tiny model"; echo "0 passed, 1 failed"; exit 1; }

ENV="env -u TMUX TERM=tmux-256color LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME=$TMP/home XDG_CONFIG_HOME=$TMP/cfg XDG_CACHE_HOME=$TMP/cache"
PROMPT="The quick brown fox jumps over the lazy dog. The lazy dog sleeps while the quick brown fox runs far away."
RUN="$BIN run -m $TMP/tiny.gguf -p '$PROMPT' -n 200 -t 1 --seed 1 --method commonkv --cr 0.5"

NSTART=0
start() { # start W H SHELL-COMMAND
    T kill-server 2>/dev/null
    NSTART=$((NSTART + 1)); SOCK=kvs-ws-$$-$NSTART
    T new-session -d -s ui -x "$1" -y "$2" "$ENV sh -c \"exec $3\"; echo __EXIT__ rc=\$?; sleep 120"
}
# the scrubber's right-hand text: "STEP/LAST token N T.TTs"
scrub_step() { cap | grep -oE '[0-9]+/[0-9]+ token [0-9]+' | head -1 | cut -d/ -f1; }
scrub_secs() { cap | grep -oE '[0-9]+/[0-9]+ token [0-9]+ [0-9.]+s' | head -1 | awk '{print $4}' | tr -d s; }

# ---- 1. settings screen, live: arrows, typing, a bad value, the change starts a new run ----
start 120 40 "$RUN --record $TMP/ws.kvt"
check "live run drawn" wait_for "achieved 0." 30
T send-keys -t ui F2
check "F2 opens the settings screen" wait_for "Settings: live run" 5
for r in "method" "target CR" "rank ratio" "merge share" "merge floor" "quant bits" "eviction capacity" "threads" "theme"; do
    check "settings lists $r" on_screen "$r"
done
T send-keys -t ui Down Right
check "Right raises the target CR on its row" wait_cond 5 eval 'cap | grep -qE "target CR {2,}(◀ |< )?0\.55"'
T send-keys -t ui Down Down Down Enter 0 . 3 Enter
check "Enter types the merge share" wait_cond 5 eval 'cap | grep -qE "merge share {2,}(◀ |< )?0\.30"'
T send-keys -t ui Up Enter 9 9 Enter
check "a bad group size is refused with one line" wait_for "group size: a whole number from 1 to 16" 5
T send-keys -t ui Escape
check "Esc leaves the typed value; the refused one is not taken" wait_cond 5 eval 'cap | grep -qE "group size {2,}(◀ |< )?4 "'
T send-keys -t ui Escape
check "Esc closes the settings screen" wait_gone "Settings: live run" 5
check "the status line names the new knobs" wait_for "ms0.30" 10
check "the change started a new run" wait_for "CR target 0.55" 30
check "the new run reaches its numbers" wait_cond 30 eval 'cap | grep -qE "CR target 0\.55 +achieved 0\."'
plan_share() { cap | grep -oE "plan( \([a-z]+\))?: merge share [0-9.]+" | head -1 | awk '{print $NF}'; }
check "the engine got the merge share (plan at most 0.30)" wait_cond 30 eval 'v=$(plan_share); [ -n "$v" ] && awk "BEGIN{exit !($v <= 0.30)}"'
# overlays at the workshop sizes, and a 1x1 terminal does not crash
T send-keys -t ui F2
check "settings open again" wait_for "Settings: live run" 5
T resize-window -t ui -x 80 -y 24
check "settings at 80x24" wait_for "eviction capacity" 10
T resize-window -t ui -x 1 -y 1
T resize-window -t ui -x 200 -y 50
check "settings at 200x50 after 1x1" wait_for "eviction capacity" 10
T send-keys -t ui Escape q
check "quits cleanly" wait_for "__EXIT__ rc=0" 30

# ---- 2. replay: time axis, seek by seconds and by run, loop a range, read-only settings ----
if [ -s "$TMP/ws.kvt" ]; then
    start 200 50 "$BIN replay $TMP/ws.kvt --paused"
    check "replay drawn" wait_for "1 Similarity" 15
    # each run's axis starts at 0s; labels between depend on how long the recorded runs took (a
    # first run too short for a label of its own failed this on a loaded machine), so not asked
    check "the scrubber has a time axis (0s for each run)" wait_cond 10 eval '[ "$(cap | tail -n 2 | head -n 1 | grep -o "┃0s" | wc -l)" -ge 1 ] && cap | tail -n 2 | head -n 1 | grep -qE "(^|[^0-9.])0s.*┃0s"'
    T send-keys -t ui : 0 . 0 5 s Enter
    check "seek by time" wait_for " s into run 1: step " 10
    check "the step reached ended at or after 0.05 s" wait_cond 10 eval 'awk "BEGIN{exit !($(scrub_secs) >= 0.05)}"'
    T send-keys -t ui : 9 9 9 9 s Enter
    check "a time past the run's end says how long the run lasts" wait_for "seek: run 1 lasts" 10
    T send-keys -t ui '}'
    check "} seeks to the next run" wait_for "run 2 of " 10
    T send-keys -t ui : 0 . 0 1 s Enter
    check "seek by time counts from the current run's start" wait_for " s into run 2: step " 10
    T send-keys -t ui Home
    check "Home goes back to the start" wait_cond 10 eval '[ "$(scrub_step)" = 0 ]'
    T send-keys -t ui : 1 0 Enter
    check "seek to step 10" wait_cond 10 eval '[ "$(scrub_step)" = 10 ]'
    T send-keys -t ui '('
    check "( marks in" wait_for "loop in at step 10" 5
    T send-keys -t ui : 4 0 Enter
    check "seek to step 40" wait_cond 10 eval '[ "$(scrub_step)" = 40 ]'
    T send-keys -t ui ')'
    check ") marks out" wait_for "loop out at step 40" 5
    T send-keys -t ui '<' '<' '<' l
    check "l loops the range" wait_for "looping steps 10-40" 5
    # playback wraps: a step at or past 30, then a later one at or before 20, never one past 40
    out=0
    seen_high() { local s; s=$(scrub_step); [ -n "$s" ] && { [ "$s" -gt 40 ] && out=1; [ "$s" -ge 30 ]; }; }
    seen_wrap() { local s; s=$(scrub_step); [ -n "$s" ] && { [ "$s" -gt 40 ] && out=1; [ "$s" -le 20 ]; }; }
    check "loop play reaches the end of the range" wait_cond 30 seen_high
    check "loop play starts again at the range's start" wait_cond 30 seen_wrap
    check "loop play reaches the end again" wait_cond 30 seen_high
    check "loop play never passes the range's end" [ "$out" = 0 ]
    T send-keys -t ui l Space
    check "l ends the loop" wait_for "loop off" 5
    T send-keys -t ui F2
    check "replay settings show the trace's run" wait_for "Settings: the trace's run (read-only)" 5
    check "replay settings show the RUN record's method" wait_cond 5 eval 'cap | grep -qE "method {2,}commonkv"'
    T send-keys -t ui Down Right
    check "replay settings are read-only" wait_for "replay: the run's settings are fixed" 5
    T resize-window -t ui -x 80 -y 24
    check "replay settings at 80x24" wait_for "eviction capacity" 10
    T resize-window -t ui -x 1 -y 1
    T resize-window -t ui -x 80 -y 24
    T send-keys -t ui Escape
    check "replay at 80x24 after 1x1: the time axis is drawn" wait_cond 10 eval 'cap | tail -n 2 | head -n 1 | grep -qE "[0-9.]+s"'
    T send-keys -t ui q
    check "replay quits cleanly" wait_for "__EXIT__ rc=0" 30
else
    bad "the recording was written ($TMP/ws.kvt)"
fi

# ---- 3. a settings change keeps the previous run on screen, dimmed and labelled ----
# Needs offline work long enough to look at: the real model's factorization and calibration for
# a new group size (a fresh factor cache), tens of seconds here. The tiny model's take milliseconds.
M=${KVS_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -r "$M" ]; then
    capc() { T capture-pane -e -p -t ui 2>/dev/null; }
    # the first panel's title row starts dimmed (SGR 2), and no panel row is bold
    title_dim() { capc | grep -F " 1 Similarity " | head -1 | grep -q $'^\e\\[2m'; }
    title_bold() { capc | grep -F " 1 Similarity " | head -1 | grep -q $'^\e\\[1m'; }
    panels_no_bold() { ! capc | sed -n '2,38p' | grep -q $'\e\\[\\(0;\\)\\?1m'; }
    start 120 40 "$BIN run -m $M -n 400 -t 1 --seed 1 --method commonkv --cr 0.5"
    check "real model: live run has data" wait_for "achieved 0." 240
    check "real model: panels are not dimmed while the run is current" title_bold
    T send-keys -t ui g Enter
    check "after the change the previous run is labelled" wait_for "previous run (commonkv), dimmed until the new commonkv run has data" 30
    check "the previous run is dimmed (SGR 2 on its panels)" title_dim
    check "the previous run has no bold left" panels_no_bold
    check "the previous run's numbers stay on screen" on_screen "achieved 0."
    check "the label goes once the new run has data" wait_gone "dimmed until the new" 600
    check "the new run is on screen (G3)" wait_for "G=3" 30
    check "panels are drawn undimmed again" wait_cond 10 title_bold
    T send-keys -t ui q
    check "real model: quits cleanly" wait_for "__EXIT__ rc=0" 60
else
    echo "skipped: the dimmed previous run (no real model at $M)"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
