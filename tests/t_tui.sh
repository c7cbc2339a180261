#!/usr/bin/env bash
# The terminal UI driven through tmux as a person would use it: start `kvscope run` on a tiny test
# model (deterministic seed), wait for panels with real numbers, raise the target CR with a key and
# watch memory and budgets change, help overlay, resize to 20x6 and back, pause and step back,
# save the config, quit with q from the UI and from the help overlay, SIGTERM, a failing start,
# idle CPU, --batch output, and the terminal coming back after Ctrl-\ (with a recording), Ctrl-S
# not freezing the UI, and q during calibration. Every wait is for a condition (screen text, file
# state) with a generous deadline (KVS_TEST_WAIT, 60 s), never a fixed sleep, so a loaded machine
# only makes it slower. Prints "N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=${KVS_BIN:-$PWD/$BUILD/kvscope}
TV=$PWD/$BUILD/tests/test_views
TMP=$(mktemp -d "${KVS_TEST_TMP:-/tmp}/tui.XXXXXX")
SOCK=kvs-tui-$$
. tests/lib/tui.sh

if [ ! -x "$BIN" ] || [ ! -x "$TV" ]; then echo "missing $BIN or $TV (build first)"; echo "0 passed, 1 failed"; exit 1; fi
"$TV" --tiny-model "$TMP/tiny.gguf" || { echo "cannot write the tiny model"; echo "0 passed, 1 failed"; exit 1; }

ENV="env -u TMUX TERM=xterm-256color LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME=$TMP/home XDG_CONFIG_HOME=$TMP/cfg"
PROMPT="The quick brown fox jumps over the lazy dog. The lazy dog sleeps while the quick brown fox runs far away."
RUN="$BIN run -m $TMP/tiny.gguf -p '$PROMPT' -n 200 -t 1 --seed 1 --method commonkv --cr 0.5"

NSTART=0
start() { # start SHELL-COMMAND (the pane's shell reports the exit status and terminal state)
    T kill-server 2>/dev/null
    # a fresh server each time: a new session must not reach the old server while it shuts down
    NSTART=$((NSTART + 1)); SOCK=kvs-tui-$$-$NSTART
    rm -f "$TMP/stty.after" "$TMP/stty.before" "$TMP/stty.g"
    # the pane's shell survives Ctrl-C and Ctrl-\ (they reach the whole foreground group); a trap
    # that runs a command is reset to the default in kvscope, which installs its own handlers
    T new-session -d -s ui -x 120 -y 40 "trap : INT QUIT; stty -g > $TMP/stty.before; $ENV sh -c \"exec $1\"; rc=\$?; stty -g > $TMP/stty.g; stty -a > $TMP/stty.after; echo __EXIT__ rc=\$rc; sleep 120"
}
exited() { wait_for "__EXIT__ rc=$1" "${2:-$WAIT}" >/dev/null; }
alt_off() { [ "$(T display-message -p -t ui '#{alternate_on}')" = 0 ]; }
stty_sane() { grep -q -- ' icanon' "$TMP/stty.after" && grep -q -- ' echo ' "$TMP/stty.after"; }
stty_same() { [ -s "$TMP/stty.before" ] && cmp -s "$TMP/stty.before" "$TMP/stty.g"; }
cursor_on() { [ "$(T display-message -p -t ui '#{cursor_flag}')" = 1 ]; }
mouse_off() { [ "$(T display-message -p -t ui '#{mouse_any_flag}#{mouse_standard_flag}#{mouse_button_flag}#{mouse_all_flag}#{mouse_sgr_flag}')" = 00000 ]; }
panel_line() { cap | grep -F -- "$1" | head -1; }

# ---- 1. live panels with real numbers ----
start "$RUN"
check "panels drawn" wait_for "1 Similarity" 15
check "memory shows achieved CR" wait_for "achieved 0." 15
check "budgets show group ranks" wait_for "g0 " 10
check "tokens stream shows TTFT" wait_for "TTFT " 5
check "profiler shows op counters" wait_for "matmul" 5
check "similarity heat map" wait_for "[hidden]" 5
check "status line says LIVE" wait_for "LIVE" 5
before_budget=$(panel_line "g0 " | sed 's/.*\(g0 [^│║]*\).*/\1/')
before_mem=$(panel_line "CR target")

# ---- 2. raise the target CR: the engine re-runs, memory and budgets change ----
T send-keys -t ui +
check "target CR 0.55 shown as pending" wait_for "CR 0.55" 5
check "memory panel shows the new target" wait_for "CR target 0.55" 15
check "new run reaches its numbers" wait_for "achieved 0." 15
budget_now() { panel_line "g0 " | sed 's/.*\(g0 [^│║]*\).*/\1/'; }
wait_cond 15 eval '[ "$(panel_line "CR target")" != "$before_mem" ] && [ "$(budget_now)" != "$before_budget" ]'
after_budget=$(budget_now)
after_mem=$(panel_line "CR target")
check "memory line changed ($before_mem -> $after_mem)" test "$before_mem" != "$after_mem"
check "group budget changed ($before_budget -> $after_budget)" test "$before_budget" != "$after_budget"

# ---- 3. help overlay ----
T send-keys -t ui '?'
check "help opens" wait_for "Help: keys" 5
check "help lists the CR key" wait_for "raise / lower the target CR" 2
T send-keys -t ui '?'
check "help closes" wait_gone "Help: keys" 5

# ---- 4. resize to 20x6 and back ----
T resize-window -t ui -x 20 -y 6
# redrawn for 20x6: the status line starts with the mode and one panel is shown with its hint
check "20x6 redrawn (status line first)" wait_cond 10 eval 'cap | head -n 1 | grep -qE "^(LIVE|PAUSED)"'
check "20x6 shows one panel with its title" wait_for "1 Similarity  (" 5
small=$(cap)
check "20x6 draws something" test "$(echo "$small" | tr -d ' \n' | wc -c)" -gt 20
T send-keys -t ui Tab
check "20x6 Tab shows the next panel" wait_for "2 Budgets  (" 5
T resize-window -t ui -x 120 -y 40
check "back to 120x40 with all panels" wait_for "6 Quality" 5

# ---- 5. pause and step back through history ----
T send-keys -t ui Space
check "pause" wait_for "PAUSED" 5
step_of() { cap | grep -o 'step [0-9]*/[0-9]*' | head -1; }
step_now=$(step_of)
T send-keys -t ui Left Left Left
wait_cond 5 eval '[ "$(step_of)" != "$step_now" ]'
step_back=$(step_of)
check "Left steps back ($step_now -> $step_back)" test "$step_now" != "$step_back"
T send-keys -t ui Space
check "follow again" wait_for "LIVE" 5

# ---- 6. pin A, theme, config saved from the UI ----
T send-keys -t ui b
check "pin shows A/B" wait_for "A/B" 5
T send-keys -t ui t
check "theme switch" wait_for "theme mono" 5
T send-keys -t ui o
check "config saved message" wait_for "saved " 5
check "config file written" grep -q "cr = 0.550" "$TMP/cfg/kvscope/config"
check "config keeps the theme" grep -q "theme = mono" "$TMP/cfg/kvscope/config"

# ---- 7. idle CPU: the run has finished; the UI must sleep ----
pid=$(pgrep -n -f "^$BIN run -m $TMP/tiny.gguf" || true)
# finished: the busy spinner at the start of the status line is gone
check "the run finishes" wait_cond 30 eval 'cap | head -n 1 | grep -q "^ kvscope "'
if [ -n "$pid" ]; then
    t0=$(awk '{print $14 + $15}' /proc/$pid/stat)
    sleep 3
    t1=$(awk '{print $14 + $15}' /proc/$pid/stat)
    ticks=$((t1 - t0))
    check "idle UI CPU over 3 s: $ticks ticks (< 10)" test "$ticks" -lt 10
else
    bad "idle UI: process not found"
fi

# ---- 8. q quits and the terminal is restored ----
T send-keys -t ui q
check "q quits with status 0" exited 0 10
check "alternate screen left" alt_off
check "tty back in canonical mode with echo" stty_sane

# ---- 9. q from the help overlay; config from the file is used on the next start ----
start "$BIN run -m $TMP/tiny.gguf -p 'hello world' -n 50 -t 1 --seed 1"
check "second start uses the saved CR" wait_for "CR 0.55" 15
T send-keys -t ui '?'
wait_for "Help: keys" 5 >/dev/null
T send-keys -t ui q
check "q quits from help" exited 0 10
check "terminal restored after quitting from help" alt_off

# ---- 10. SIGTERM ----
start "$RUN"
wait_for "1 Similarity" 15 >/dev/null
pid=$(pgrep -n -f "^$BIN run -m $TMP/tiny.gguf" || true)
[ -n "$pid" ] && kill -TERM "$pid"
check "SIGTERM exits" exited 0 10
check "terminal restored after SIGTERM" alt_off
check "tty sane after SIGTERM" stty_sane

# ---- 11. a failing start prints its error on a restored terminal ----
start "$BIN run -m $TMP/missing.gguf -p hi"
check "missing model: error message" wait_for "missing.gguf" 10
check "missing model: non-zero exit" exited 1 5
check "missing model: terminal restored" alt_off

# ---- 12. --batch: JSON lines, summary last ----
$ENV sh -c "$RUN --batch -n 12" > "$TMP/batch.jsonl" 2>"$TMP/batch.err"
check "batch exit status 0" test $? -eq 0
check "batch: every line is a JSON object" sh -c "! grep -qv '^{.*}\$' '$TMP/batch.jsonl'"
check "batch: has run, step and end records" sh -c "grep -q '\"type\":\"run\"' '$TMP/batch.jsonl' && grep -q '\"type\":\"step\"' '$TMP/batch.jsonl' && grep -q '\"type\":\"end\"' '$TMP/batch.jsonl'"
check "batch: summary is the last line" sh -c "tail -n 1 '$TMP/batch.jsonl' | grep -q '\"type\":\"summary\"'"
if command -v python3 >/dev/null; then
    check "batch: lines parse as JSON" python3 -c "import json,sys; [json.loads(l) for l in open(sys.argv[1])]" "$TMP/batch.jsonl"
fi
# not a tty on stdout: batch output even without --batch
$ENV sh -c "$RUN -n 4" > "$TMP/pipe.jsonl" 2>/dev/null </dev/null
check "stdout not a tty: JSON lines" sh -c "tail -n 1 '$TMP/pipe.jsonl' | grep -q '\"type\":\"summary\"'"

# ---- 13. Ctrl-\ (SIGQUIT) while recording: the terminal comes back and the trace is closed ----
rm -f "$TMP/quit.kvt" "$TMP/quit.kvt.part"
start "$RUN --record $TMP/quit.kvt"
check "Ctrl-\\: the UI runs with mouse reporting on" wait_cond 15 eval 'on_screen "achieved 0." && ! mouse_off'
T send-keys -t ui 'C-\'
check "Ctrl-\\: exits with status 0 (not killed by SIGQUIT)" exited 0
check "Ctrl-\\: alternate screen left" alt_off
check "Ctrl-\\: cursor visible" cursor_on
check "Ctrl-\\: mouse reporting off" mouse_off
check "Ctrl-\\: stty settings as before" stty_same
check "Ctrl-\\: the recording is renamed, no .part" test -s "$TMP/quit.kvt" -a ! -e "$TMP/quit.kvt.part"
check "Ctrl-\\: the recording is clean" sh -c "'$BIN' trace info '$TMP/quit.kvt' 2>/dev/null | grep -qE '^status +clean'"

# ---- 14. Ctrl-S does not freeze the UI (flow control is off while it runs) ----
start "$RUN"
wait_for "1 Similarity" >/dev/null
T send-keys -t ui C-s
T send-keys -t ui '?'
check "Ctrl-S: a key after it still acts (help opens)" wait_for "Help: keys" 20
T send-keys -t ui q
check "Ctrl-S: q quits" exited 0
check "Ctrl-S: stty settings as before (IXON back on)" stty_same
check "Ctrl-S: stty shows ixon again" grep -q -- ' ixon' "$TMP/stty.after"

# ---- 15. q during calibration: the process exits, the calibration is cancelled ----
# The real model with an empty factor cache: whitening calibration and 8 SVDs take seconds. q
# while the progress line shows calibration must end the process promptly: the factor cache is
# then never written (it is written only when calibration and factorization complete).
MODEL=${KVS_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -f "$MODEL" ]; then
    rm -rf "$TMP/cache"
    start "env XDG_CACHE_HOME=$TMP/cache $BIN run -m $PWD/$MODEL -p 'hello' -n 8 --method commonkv --cr 0.5"
    check "calibration: the progress line shows it" wait_for "calibrating" 60
    t0=$(now_ms)
    T send-keys -t ui q
    check "calibration: q exits with status 0" exited 0
    t1=$(now_ms)
    echo "   (q to exit during calibration: $((t1 - t0)) ms)"
    check "calibration: terminal restored" alt_off
    check "calibration: cancelled, no factor cache written" \
        sh -c "! ls '$TMP/cache/kvscope/' 2>/dev/null | grep -q '\.factors\$'"
else
    echo "   (skipped q during calibration: no real model at $MODEL)"
fi

echo
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
