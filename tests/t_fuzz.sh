#!/usr/bin/env bash
# Runs every fuzz target briefly (about 15 s each; KVS_FUZZ_SECONDS overrides) through
# tests/fuzz.sh. Prints "N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
exec bash tests/fuzz.sh "${KVS_BUILD:-build}" "${KVS_FUZZ_SECONDS:-15}"
