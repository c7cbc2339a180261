# Shared by the tmux-driven TUI tests (t_tui, t_tui_story, t_lessons, t_replay, …): counters, a private tmux
# server, screen capture and waits for a condition with a generous deadline (never a fixed sleep).
# The sourcing script sets TMP (a scratch folder, removed on exit) and SOCK (its tmux socket name)
# first; the pane it captures is the session named "ui".
pass=0; fail=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
T() { LC_ALL=C.UTF-8 tmux -u -L "$SOCK" "$@"; }
cleanup() { T kill-server 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
if ! command -v tmux >/dev/null; then echo "skipped: tmux not installed"; echo "0 passed, 1 failed"; exit 1; fi

cap() { T capture-pane -p -t ui 2>/dev/null; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# Every wait gets at least WAIT seconds: the deadline is there to end a hung test, not to time it.
WAIT=${KVS_TEST_WAIT:-60}
deadline_ms() { local s=${1:-$WAIT}; [ "$s" -lt "$WAIT" ] && s=$WAIT; echo $(( $(now_ms) + s * 1000 )); }
# wait_cond SECONDS CMD...: true once CMD succeeds
wait_cond() {
    local deadline; deadline=$(deadline_ms "$1"); shift
    while [ "$(now_ms)" -lt "$deadline" ]; do "$@" && return 0; sleep 0.1; done
    "$@"
}
on_screen() { cap | grep -qF -- "$1"; }
# wait_for TEXT [SECONDS]: true once TEXT is on the screen (fixed string)
wait_for() {
    wait_cond "${2:-$WAIT}" on_screen "$1" && return 0
    echo "   (timed out waiting for '$1'; screen:)"; cap | sed 's/^/   | /' | head -60
    return 1
}
not_on_screen() { ! on_screen "$1"; }
wait_gone() { wait_cond "${2:-$WAIT}" not_on_screen "$1"; }
