#!/usr/bin/env bash
# The card on screen, driven through tmux as a person would see it: a live `run --backend cuda`
# through the host emulation of the CUDA kernels (KVS_CUDA_LIB, a pretend 2 GiB card through
# KVS_CUDA_EMU_MEM) shows "GPU used/total GiB" on the status line and "KV bytes in device memory" in
# the Memory panel; its recording replays with the same figure; at 60 columns the status line shows
# the figure whole or not at all; a CPU run shows no GPU figure and says host memory. Every wait is
# for a condition with a generous deadline (KVS_TEST_WAIT, 60 s). Prints "N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
BUILD=${KVS_BUILD:-build}
BIN=${KVS_BIN:-$PWD/$BUILD/kvscope}
TV=$PWD/$BUILD/tests/test_views
LIB=${KVS_CUDA_EMU_LIB:-$PWD/$BUILD/emu/libkvscope_cuda_emu.so}
TMP=$(mktemp -d "${KVS_TEST_TMP:-/tmp}/tuigpu.XXXXXX")
SOCK=kvs-gpu-$$
. tests/lib/tui.sh

if [ ! -x "$BIN" ] || [ ! -x "$TV" ] || [ ! -f "$LIB" ]; then
    echo "missing $BIN, $TV or $LIB (make tests)"; echo "0 passed, 1 failed"; exit 1
fi
"$TV" --tiny-model "$TMP/tiny.gguf" || { echo "cannot write the tiny model"; echo "0 passed, 1 failed"; exit 1; }

ENV="env -u TMUX TERM=tmux-256color LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME=$TMP/home XDG_CONFIG_HOME=$TMP/cfg XDG_CACHE_HOME=$TMP/cache"
PROMPT="The quick brown fox jumps over the lazy dog. The lazy dog sleeps while the quick brown fox runs far away."
RUN="$BIN run -m $TMP/tiny.gguf -p '$PROMPT' -n 24 -t 1 --seed 1 --method commonkv --cr 0.5"

NSTART=0
start() { # start W H SHELL-COMMAND
    T kill-server 2>/dev/null
    NSTART=$((NSTART + 1)); SOCK=kvs-gpu-$$-$NSTART
    T new-session -d -s ui -x "$1" -y "$2" "$ENV sh -c \"exec $3\"; echo __EXIT__ rc=\$?; sleep 120"
}
status_line() { cap | head -n 1; }
# the status line's GPU figure, "GPU 0.0/2.0 GiB", or nothing
gpu_figure() { status_line | grep -oE 'GPU [0-9]+\.[0-9]/[0-9]+\.[0-9] GiB' | head -n 1; }
# a figure cut short: "GPU" followed by a digit but not the whole "N.N/N.N GiB"
gpu_cut() { status_line | grep -E 'GPU [0-9]' | grep -vqE 'GPU [0-9]+\.[0-9]/[0-9]+\.[0-9] GiB'; }
# the last step's card in the recording, as the trace export prints it
trace_card() { "$BIN" trace export "$TMP/gpu.kvt" --format jsonl 2>/dev/null | grep '"type":"step"' | tail -n 1; }

# ---- 1. a live CUDA run (emulated), 200x50, recorded ----
start 200 50 "env KVS_CUDA_LIB=$LIB KVS_CUDA_EMU_MEM=2G $RUN --backend cuda --record $TMP/gpu.kvt"
check "the CUDA run is drawn" wait_for "achieved 0." 60
check "the status line shows the card's used/total memory" wait_cond 30 eval '[ -n "$(gpu_figure)" ]'
check "the total is the pretend card's 2.0 GiB" wait_cond 10 eval 'gpu_figure | grep -qE "/2\.0 GiB$"'
echo "   status line: [$(status_line | sed 's/ *$//')]"
check "the status line names the backend" wait_cond 10 eval 'status_line | grep -q " cuda"'
check "the Memory panel says the bytes are device memory" wait_for "KV bytes in device memory" 30
check "the Memory panel shows the card beside them" wait_cond 10 eval 'cap | grep -qE "device memory, GPU [0-9.]+ [KMG]i?B of 2\.00 GiB used"'
# ---- 2. 60 columns: the figure whole or not at all, the line within the width ----
T resize-window -t ui -x 60 -y 24
check "60 columns redrawn" wait_cond 10 eval '[ "$(status_line | wc -m)" -le 61 ] && status_line | grep -q "kvscope\|LIVE"'
check "60 columns: no GPU figure cut short" eval '! gpu_cut'
echo "   status line at 60 columns: [$(status_line)]"
T resize-window -t ui -x 200 -y 50
check "wide again: the figure is back" wait_cond 10 eval '[ -n "$(gpu_figure)" ]'
T send-keys -t ui q
check "quits cleanly" wait_for "__EXIT__ rc=0" 60

# ---- 3. the recording replays with the card (no GPU, no emulation needed) ----
if [ -s "$TMP/gpu.kvt" ]; then
    check "the trace's steps hold the card" eval 'trace_card | grep -qE "\"device\":\{\"mem_used\":[0-9]+,\"mem_total\":2147483648,"'
    start 200 50 "$BIN replay $TMP/gpu.kvt --paused"
    check "replay drawn" wait_for "1 Similarity" 30
    T send-keys -t ui End
    check "End shows the last step" wait_cond 10 eval 'cap | grep -qE "([0-9]+)/\1 token"'
    check "the replay's status line shows the card" wait_cond 10 eval 'gpu_figure | grep -qE "/2\.0 GiB$"'
    check "the replay's Memory panel says device memory" wait_for "KV bytes in device memory" 10
    T send-keys -t ui q
    check "replay quits cleanly" wait_for "__EXIT__ rc=0" 30
else
    bad "the CUDA run wrote no trace"
fi

# ---- 4. a CPU run: no GPU figure, host memory ----
start 200 50 "$RUN --backend cpu"
check "the CPU run is drawn" wait_for "achieved 0." 60
check "the Memory panel says host memory" wait_for "KV bytes in host memory" 30
check "a CPU run shows no GPU figure" eval '[ -z "$(gpu_figure)" ] && ! cap | grep -q "device memory"'
T send-keys -t ui q
check "the CPU run quits cleanly" wait_for "__EXIT__ rc=0" 30

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
