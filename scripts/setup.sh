#!/usr/bin/env bash
# Installs what seqnn needs on Debian 12, and only what is missing.
#   ./scripts/setup.sh        compiler, CMake, Eigen, GoogleTest, Google Benchmark, nlohmann-json
#   ./scripts/setup.sh --ci   the same plus clang, libomp and libFuzzer (the CI's clang and fuzz stages)
# Idempotent: when everything is installed it runs no apt-get at all.
set -euo pipefail

packages=(cmake g++ make libeigen3-dev libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev)
for arg in "$@"; do
    case "$arg" in
        --ci) packages+=(clang libomp-14-dev libclang-rt-14-dev) ;;
        -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

missing=()
for p in "${packages[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$p")
    fi
done
if ((${#missing[@]} == 0)); then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "setup.sh: missing packages: ${missing[*]}; no apt-get here, please install them by hand" >&2
    exit 1
fi
sudo=()
if ((EUID != 0)); then
    if ! command -v sudo >/dev/null; then
        echo "setup.sh: missing packages: ${missing[*]}; run as root or install sudo" >&2
        exit 1
    fi
    sudo=(sudo)
fi
echo "setup.sh: installing ${missing[*]}"
"${sudo[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
