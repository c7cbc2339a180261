#!/usr/bin/env bash
# TUI key and resize storms, bounded (part of `make test`): the live UI (recording a trace) and the
# replay UI, driven under tmux by a deterministic generator (one seed per round) with random keys
# including Ctrl-S, Ctrl-Q, invalid UTF-8 and cut escape sequences, mouse reports, and resizes
# down to 1x1 and back; then each round quits a different way (q, Ctrl-\, Ctrl-C, SIGTERM, SIGHUP)
# and checks the terminal state, not only the exit status: the process is gone, the pane is out
# of the alternate screen, the cursor visible, mouse reporting and keypad mode off, `stty -g`
# identical to before, and no .part file left. Every wait is for a condition with a generous
# deadline (KVS_TEST_WAIT, 60 s). KVS_STORM_ROUNDS and KVS_STORM_EVENTS make it longer;
# KVS_STORM_SECONDS keeps starting rounds (new seeds) until that much time has passed (make fuzz).
# Prints "N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=${KVS_BIN:-$PWD/$BUILD/kvscope}
TV=$PWD/$BUILD/tests/test_views
TMP=$(mktemp -d "${KVS_TEST_TMP:-/tmp}/storm.XXXXXX")
SOCK=kvs-storm-$$
ROUNDS=${KVS_STORM_ROUNDS:-5}
EVENTS=${KVS_STORM_EVENTS:-1000}
WAIT=${KVS_TEST_WAIT:-60}
STORM_SECONDS=${KVS_STORM_SECONDS:-0}
pass=0; fail=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
T() { LC_ALL=C.UTF-8 tmux -u -L "$SOCK" "$@"; }
cleanup() { T kill-server 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

if ! command -v tmux >/dev/null; then echo "skipped: tmux not installed"; echo "0 passed, 1 failed"; exit 1; fi
if [ ! -x "$BIN" ] || [ ! -x "$TV" ]; then echo "missing $BIN or $TV (build first)"; echo "0 passed, 1 failed"; exit 1; fi
"$TV" --tiny-model "$TMP/tiny.gguf" || { echo "cannot write the tiny model"; echo "0 passed, 1 failed"; exit 1; }

ENV="env -u TMUX TERM=tmux-256color LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME=$TMP/home XDG_CONFIG_HOME=$TMP/cfg XDG_CACHE_HOME=$TMP/cache"
PROMPT="The quick brown fox jumps over the lazy dog. The lazy dog sleeps while the quick brown fox runs far away."
RUN="$BIN run -m $TMP/tiny.gguf -p '$PROMPT' -t 1 --seed 1 --method commonkv --cr 0.5"
mkdir -p "$TMP/home"

cap() { T capture-pane -p -t ui 2>/dev/null; }
wait_cond() { # wait_cond CMD...: true once CMD succeeds, within WAIT seconds
    local deadline=$(( $(now_ms) + WAIT * 1000 ))
    while [ "$(now_ms)" -lt "$deadline" ]; do "$@" && return 0; sleep 0.1; done
    "$@"
}
on_screen() { cap | grep -qF -- "$1"; }
start() { # start SHELL-COMMAND: the pane's shell records stty before and after, and the status
    T kill-server 2>/dev/null
    NSTART=$((NSTART + 1)); SOCK=kvs-storm-$$-$NSTART
    rm -f "$TMP/stty.before" "$TMP/stty.after" "$TMP/pid"
    # the shell survives Ctrl-C and Ctrl-\ (sent to the whole foreground group); kvscope gets the
    # default dispositions back at exec and installs its own
    T new-session -d -s ui -x 120 -y 40 "trap : INT QUIT; stty -g > $TMP/stty.before; $ENV sh -c \"echo \\\$\\\$ > $TMP/pid; exec $1\"; rc=\$?; stty -g > $TMP/stty.after; echo __EXIT__ rc=\$rc; sleep 300"
}
NSTART=0
fmt() { T display-message -p -t ui "$1"; }

# A deterministic generator (a 31-bit LCG), the same sequence for a seed on every machine.
rng=1
rnd() { rng=$(( (rng * 1103515245 + 12345) % 2147483648 )); R=$(( (rng >> 8) % $1 )); }

# keys that do not quit: letters the UI uses, digits, navigation, Enter/Esc/Tab, control keys
# (C-s C-q are flow control when it is on), and a few that mean nothing
KEYS=(a b B c e f g G h m M p r R s S t v w W x z 1 2 3 4 5 6 '?' ':' '+' '-' '[' ']' '<' '>' ','
      '.' Space Enter Escape Tab BTab Left Right Up Down Home End PageUp PageDown F1 F5 BSpace
      C-s C-q C-s C-a C-l C-o 0 9 t)
# raw bytes: invalid UTF-8, cut UTF-8, cut CSI/SS3 sequences, SGR and X10 mouse reports, a long
# CSI, a lone ESC followed by a letter
RAW=("ff" "fe fe" "c3" "c3 28" "e2 82" "f0 9f 98" "ed a0 80" "c0 af" "f8 88 80 80 80"
     "1b 5b" "1b 5b 31 3b" "1b 4f" "1b 5b 3c 30 3b 31 30 3b 35 4d" "1b 5b 3c 30 3b 31 30 3b 35 6d"
     "1b 5b 3c 36 34 3b 32 3b 32 4d" "1b 5b 3c 36 35 3b 32 3b 32 4d" "1b 5b 4d 20 21 21"
     "1b 5b 39 39 39 39 39 39 39 39 39 39 3b 39 39 39 39 39 39 39 39 7e" "1b 78" "1b 5b 32 30 30 7e")
SIZES=("1 1" "2 1" "1 2" "3 3" "20 6" "10 40" "200 3" "80 24" "120 40" "7 2")

storm() { # storm SEED: EVENTS random events into the pane, in bursts of 10 per tmux call
    rng=$1
    local i cmds=()
    for ((i = 0; i < EVENTS; i++)); do
        rnd 20
        if [ "$R" -lt 13 ]; then
            rnd ${#KEYS[@]}; cmds+=(send-keys -t ui -- "${KEYS[$R]}" ';')
        elif [ "$R" -lt 17 ]; then
            rnd ${#RAW[@]}; cmds+=(send-keys -t ui -H ${RAW[$R]} ';')
        else
            rnd ${#SIZES[@]}; set -- ${SIZES[$R]}; cmds+=(resize-window -t ui -x "$1" -y "$2" ';')
        fi
        if [ $((i % 10)) -eq 9 ] || [ $((i + 1)) -eq "$EVENTS" ]; then
            T "${cmds[@]}" 2>/dev/null
            cmds=()
        fi
    done
    T resize-window -t ui -x 120 -y 40
}

# a trace for the replay rounds
$ENV sh -c "$RUN -n 400 --batch --record '$TMP/rec.kvt'" >/dev/null 2>&1
check "a trace to replay" test -s "$TMP/rec.kvt"

QUITS=(q C-\\ C-c TERM HUP)
storm_end=$(( $(date +%s) + STORM_SECONDS ))
for ((round = 0; round < ROUNDS || $(date +%s) < storm_end; round++)); do
    seed=$((1000 + round))
    how=${QUITS[$((round % ${#QUITS[@]}))]}
    if [ $((round % 2)) -eq 0 ]; then
        kind=live; out=$TMP/live$round.kvt
        start "$RUN -n 20000 --ctx 30000 --record $out"
    else
        kind=replay; out=
        start "$BIN replay $TMP/rec.kvt --speed 4"
    fi
    name="round $round ($kind, seed $seed, quit by $how)"
    if ! wait_cond on_screen "1 Similarity"; then
        bad "$name: the UI did not start"; cap | sed 's/^/   | /' | head -20; continue
    fi
    pid=$(cat "$TMP/pid" 2>/dev/null)
    t0=$(now_ms)
    storm "$seed"
    echo "   ($name: $EVENTS events in $(( $(now_ms) - t0 )) ms)"
    alive=0; [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1
    check "$name: survived the storm" test "$alive" = 1
    # still responsive: Esc closes the help or the seek prompt the storm may have left open, then
    # ? opens the help (a UI frozen by Ctrl-S, or stuck in a cut escape sequence, would not)
    T send-keys -t ui Escape
    wait_cond eval '! on_screen "Help: keys" && ! on_screen "seek to step"' >/dev/null
    T send-keys -t ui '?'
    check "$name: a key after the storm still acts (help opens)" wait_cond on_screen "Help: keys"
    case $how in
        TERM|HUP) kill -"$how" "$pid" 2>/dev/null ;;
        *) T send-keys -t ui "$how" ;;
    esac
    check "$name: exits with status 0" wait_cond on_screen "__EXIT__ rc=0"
    check "$name: the process is gone" wait_cond eval '! kill -0 "$pid" 2>/dev/null'
    check "$name: alternate screen off" test "$(fmt '#{alternate_on}')" = 0
    check "$name: cursor visible" test "$(fmt '#{cursor_flag}')" = 1
    check "$name: mouse reporting off" \
        test "$(fmt '#{mouse_any_flag}#{mouse_standard_flag}#{mouse_button_flag}#{mouse_all_flag}#{mouse_sgr_flag}#{mouse_utf8_flag}')" = 000000
    check "$name: keypad modes off" test "$(fmt '#{keypad_flag}#{keypad_cursor_flag}')" = 00
    check "$name: stty -g as before" sh -c "[ -s '$TMP/stty.before' ] && cmp -s '$TMP/stty.before' '$TMP/stty.after'"
    check "$name: no .part left" sh -c "! ls '$TMP' | grep -q '\\.part\$'"
    if [ -n "$out" ]; then
        check "$name: the recording is closed and clean" \
            sh -c "'$BIN' trace info '$out' 2>/dev/null | grep -qE '^status +clean'"
    fi
done

echo "   ($round rounds of $EVENTS events)"
echo
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
