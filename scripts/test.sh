#!/usr/bin/env bash
# README command 2: install what is missing, build everything, run the whole test suite.
#   ./scripts/test.sh [CTEST_ARGS...]   e.g. ./scripts/test.sh -R GRU
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/setup.sh
./scripts/build.sh
ctest --test-dir "${SEQNN_BUILD_DIR:-build}" --output-on-failure -j "${SEQNN_JOBS:-$(nproc 2>/dev/null || echo 2)}" "$@"
