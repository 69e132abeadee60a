#!/usr/bin/env bash
# char_lm --preset paper on a many-core machine that has g++ but no Debian packages
# (Eigen travels in build-device/eigen3, as for scripts/device_bench.sh).
#
#   scripts/device_char_lm.sh ARCH CORPUS [more char_lm flags]
#
# Builds build-device/bin/char_lm, then trains ARCH with the paper's configuration on
# CORPUS, the log in ${OUT:-device-out}/char_lm_ARCH.log. Two runs side by side, each on
# its own 8 cores:
#   BUILD=0 OMP_NUM_THREADS=8 OMP_PLACES="{0}:8" scripts/device_char_lm.sh mingru input.txt &
#   BUILD=0 OMP_NUM_THREADS=8 OMP_PLACES="{8}:8" scripts/device_char_lm.sh transformer input.txt
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 ARCH CORPUS [char_lm flags]" >&2; exit 2; }
arch=$1 corpus=$2
shift 2
D=build-device
OUT=${OUT:-device-out}
mkdir -p "$OUT" "$D/bin"
export OMP_PROC_BIND=${OMP_PROC_BIND:-close} OMP_PLACES=${OMP_PLACES:-cores}
if [[ ${BUILD:-1} == 1 ]]; then  # BUILD=0: reuse the binary of an earlier call
  g++ -std=c++20 -O3 -march=native -DNDEBUG -fopenmp -I include -isystem $D/eigen3 examples/char_lm.cpp -o $D/bin/char_lm
fi
$D/bin/char_lm --preset paper --arch "$arch" --data "$corpus" --generate 500 "$@" 2>&1 | tee "$OUT/char_lm_$arch.log"
