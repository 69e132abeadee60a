#!/usr/bin/env bash
# README command 1: install what is missing, build, and run the main demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

demo=serial_vs_parallel
./scripts/setup.sh
if [[ ! -f "examples/$demo.cpp" ]]; then
    echo "demo.sh: examples/$demo.cpp does not exist (yet); nothing to run" >&2
    exit 1
fi
./scripts/build.sh "$demo"
echo "==> build/examples/$demo $*"
exec "${SEQNN_BUILD_DIR:-build}/examples/$demo" "$@"
