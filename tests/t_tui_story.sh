#!/usr/bin/env bash
# The story panels driven through tmux as a person would: the similarity header and strip follow
# the source chosen with v, the fixed colour scale is stated, the cell cursor reads out a value,
# the Budgets panel shows rank/max and switches to the spectrum with d, the help overlay is
# scrollable with a visible hint at 80x24 and the replay help lists replay keys only, the replay
# scrubber marks where each run starts and { } seek by run, F10 quits,
# SGR (1006) mouse reporting is on, and the projector theme draws. Every wait is for screen text
# with a generous deadline (KVS_TEST_WAIT, 60 s), never a fixed sleep. Prints "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=${KVS_BIN:-$PWD/$BUILD/kvscope}
TV=$PWD/$BUILD/tests/test_views
TMP=$(mktemp -d "${KVS_TEST_TMP:-/tmp}/tuistory.XXXXXX")
SOCK=kvs-story-$$
. tests/lib/tui.sh

if [ ! -x "$BIN" ] || [ ! -x "$TV" ]; then echo "missing $BIN or $TV (build first)"; echo "0 passed, 1 failed"; exit 1; fi
"$TV" --tiny-model "$TMP/tiny.gguf" || { echo "cannot write the tiny model"; echo "0 passed, 1 failed"; exit 1; }

ENV="env -u TMUX TERM=xterm-256color LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME=$TMP/home XDG_CONFIG_HOME=$TMP/cfg XDG_CACHE_HOME=$TMP/cache"
PROMPT="The quick brown fox jumps over the lazy dog. The lazy dog sleeps while the quick brown fox runs far away."
RUN="$BIN run -m $TMP/tiny.gguf -p '$PROMPT' -n 200 -t 1 --seed 1 --method commonkv --cr 0.5"

NSTART=0
start() { # start W H SHELL-COMMAND
    T kill-server 2>/dev/null
    NSTART=$((NSTART + 1)); SOCK=kvs-story-$$-$NSTART
    T new-session -d -s ui -x "$1" -y "$2" "$ENV sh -c \"exec $3\"; echo __EXIT__ rc=\$?; sleep 120"
}

# ---- 1. similarity: the header and strip follow the source ----
start 160 50 "$RUN --record $TMP/story.kvt"
check "panels drawn" wait_for "1 Similarity" 15
check "hidden source selected first" wait_for "[hidden]" 10
check "header names the source" wait_for "adj hidden " 10
check "fixed colour scale stated" wait_for "1 fixed" 10
T send-keys -t ui v
check "v: keys source, header follows" wait_for "adj keys " 5
T send-keys -t ui v
check "v: latent source, header follows" wait_for "adj latent " 5
# the legend says how many layers; the label of the last map row ends with the last layer
last_labelled() {
    local n; n=$(cap | grep -oE '[0-9]+ layers' | head -1 | cut -d' ' -f1)
    [ -n "$n" ] && cap | grep -qE "║ *([0-9]+-)?$((n - 1)) *[┃┏|+]"
}
check "the last layer is labelled" wait_cond 10 last_labelled
# focus panel 1 and move the cell cursor: the readout names the cell
T send-keys -t ui 1 Down Down PageDown
check "cell cursor readout" wait_for "cell L2×L1 latent" 5

# ---- 2. budgets: rank against its maximum, then the spectrum ----
check "budgets show rank/max" wait_for "rank/max" 10
T send-keys -t ui 2 d
check "d: spectrum mode" wait_for "spectrum per group" 5
check "spectrum shows energy kept" wait_cond 10 eval 'cap | grep -qE "energy +[0-9]+\.[0-9]%"'
T send-keys -t ui d
check "d again: group budgets" wait_for "rank/max" 5

# a second run in the same recording (the replay below seeks between them)
T send-keys -t ui + Enter
check "a second run with the new target" wait_for "CR target 0.55" 30
check "the second run reaches its numbers" wait_for "achieved 0." 30

# ---- search: a layer puts the cell cursor on its row; text finds a token ----
T send-keys -t ui / L 3 Enter
check "/L3 moves the cell cursor to layer 3" wait_for "cell L3" 10
T send-keys -t ui / z z q q Enter
check "/ with text that is not there says so" wait_for "is not in the" 10
# text the second run really decoded: the same settings in --batch give the same bytes (runs are
# deterministic), so the needle is its first two printable characters, whatever the model says
NEEDLE=$(cd "$TMP" && eval "$ENV $BIN run --batch -m $TMP/tiny.gguf -p '$PROMPT' -n 200 -t 1 --seed 1 --method commonkv --cr 0.55" \
    2>/dev/null | tail -n 1 | python3 -c "
import json, re, sys
m = re.search(r'[^\s/]{2}', json.loads(sys.stdin.read()).get('text', ''))
print(m.group(0).lower() if m else '')" 2>/dev/null)
check "the second run decoded some text to search for" test -n "$NEEDLE"
T send-keys -t ui / "$NEEDLE" Enter
check "/$NEEDLE finds a token and pauses there" wait_for "'$NEEDLE' at token" 10
check "the search paused on that step" wait_for "PAUSED" 10
T send-keys -t ui Space

# ---- 3. SGR mouse reporting (clicks past column 223) ----
check "SGR 1006 mouse mode on" wait_cond 5 eval '[ "$(T display-message -p -t ui "#{mouse_sgr_flag}")" = 1 ]'

# ---- 4. help at 80x24: every panel's keys, a scroll hint, F10 quits from it ----
T resize-window -t ui -x 80 -y 24
T send-keys -t ui F1
check "F1 opens help" wait_for "Help: keys" 5
check "help shows a scroll hint" wait_for "PgUp/PgDn scroll" 5
T send-keys -t ui NPage NPage NPage NPage
check "help scrolls to the panels' keys" wait_for "Budgets panel" 5
check "help lists the spectrum key" wait_for "singular-value spectrum" 5
T send-keys -t ui Escape
check "Esc closes help" wait_gone "Help: keys" 5
T send-keys -t ui F10
check "F10 quits" wait_for "__EXIT__ rc=0" 30

# ---- 5. replay: its help lists replay keys only ----
if [ -s "$TMP/story.kvt" ]; then
    start 100 50 "$BIN replay $TMP/story.kvt --paused"
    check "replay drawn" wait_for "1 Similarity" 15
    check "the scrubber marks the second run" wait_cond 10 eval 'cap | tail -n 3 | grep -q "┃"'
    T send-keys -t ui '}'
    check "} seeks to the next run" wait_for "run 2 of 2" 10
    T send-keys -t ui '{' '{'
    check "{ seeks back to the first run" wait_for "run 1 of 2" 10
    T send-keys -t ui '?'
    check "replay help opens" wait_for "Help: keys" 5
    check "replay help has the seek key" wait_for "seek: type a step number" 5
    check "replay help has no method key" not_on_screen "next / previous method"
    check "replay help has no CR key" not_on_screen "target CR by 0.05"
    T send-keys -t ui q
    check "q quits the replay from help" wait_for "__EXIT__ rc=0" 30
else
    bad "the recording was written ($TMP/story.kvt)"
fi

# ---- 6. projector theme ----
start 120 40 "$RUN --theme projector"
check "projector theme draws panels" wait_for "1 Similarity" 15
check "projector: heat map drawn" wait_for "1 fixed" 15
check "projector: bars are whole cells with a shaded track" wait_for "░" 15
T send-keys -t ui q
check "projector: quits" wait_for "__EXIT__ rc=0" 30

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
