#!/usr/bin/env bash
# Installs what kvscope needs to build and test on Debian, only what is missing:
# Debian packages (compiler, BLAS/LAPACK, ncurses, zlib, tmux, clang for fuzzing, groff for the
# man-page lint) and the Python reference tools used by the tests (numpy, gguf, tokenizers).
# Idempotent; quiet when all present.
set -euo pipefail

pkgs=(build-essential pkg-config libopenblas-dev liblapacke-dev libncurses-dev zlib1g-dev tmux clang
      libclang-rt-dev python3 python3-pip unzip groff)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
need_py=()
for m in numpy gguf tokenizers; do
    $PY -c "import $m" 2>/dev/null || need_py+=("$m")
done
if [ ${#need_py[@]} -gt 0 ]; then
    echo "setup: installing Python reference tools: ${need_py[*]}"
    $PY -m pip install -q "${need_py[@]/gguf/gguf==0.19.0}" 2>/dev/null ||
        $PY -m pip install -q --break-system-packages "${need_py[@]/gguf/gguf==0.19.0}"
fi
