#!/usr/bin/env bash
# Configures (Release, in build/) and builds seqnn's tests, benchmarks and examples.
#   ./scripts/build.sh [TARGET...] [-- CMAKE_ARGS...]
# With targets, builds only those. Incremental: a second run rebuilds only what changed.
# Environment: SEQNN_BUILD_DIR (default build), SEQNN_JOBS (default: number of cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build_dir="${SEQNN_BUILD_DIR:-build}"
jobs="${SEQNN_JOBS:-$(nproc 2>/dev/null || echo 2)}"
targets=()
cmake_args=()
while (($#)); do
    if [[ "$1" == "--" ]]; then shift; cmake_args=("$@"); break; fi
    targets+=(--target "$1"); shift
done

# Configure on the first run (or when asked for other options); later runs let the
# build re-run CMake by itself when a CMakeLists.txt changes.
if [[ ! -f "$build_dir/CMakeCache.txt" || ${#cmake_args[@]} -gt 0 ]]; then
    cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "${cmake_args[@]}"
fi
cmake --build "$build_dir" -j "$jobs" "${targets[@]}"
