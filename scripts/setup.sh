#!/usr/bin/env bash
# Installs what seqnn needs on Debian 12, and only what is missing.
#   ./scripts/setup.sh        compiler, CMake, Eigen, GoogleTest, Google Benchmark, nlohmann-json,
#                             libsndfile (for the amp_model example only)
#   ./scripts/setup.sh --ci   the same plus clang, libomp, libFuzzer, doxygen and BLIS (libblis-dev, for
#                             SEQNN_USE_BLIS) (the CI's later stages)
#   ./scripts/setup.sh --deps DIR
#                             the same as without flags, then copies the headers and libraries that
#                             seqnn's programs need (Eigen, nlohmann-json, Google Benchmark) into DIR,
#                             for a machine that has g++ but no Debian packages: copy DIR there and
#                             build with `scripts/bench_report.sh --deps DIR` (benchmarks) or
#                             `g++ -std=c++20 -O3 -march=native -fopenmp -I include
#                             -isystem DIR/eigen3 -isystem DIR/include PROGRAM.cpp` (examples).
# Idempotent: when everything is installed it runs no apt-get at all.
set -euo pipefail

packages=(cmake g++ make libeigen3-dev libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libsndfile1-dev)
deps=""
while (($#)); do
    case "$1" in
        --ci) packages+=(clang libomp-14-dev libclang-rt-14-dev doxygen libblis-dev) ;;
        --deps) deps="${2:?setup.sh: --deps needs a folder}"; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

copy_deps() {  # copy_deps DIR: Eigen in DIR/eigen3, other headers in DIR/include, libraries in DIR/lib
    local dir="$1" arch
    arch="$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
    mkdir -p "$dir/include" "$dir/lib"
    rm -rf "$dir/eigen3" && cp -r /usr/include/eigen3 "$dir/eigen3"
    cp -r /usr/include/benchmark /usr/include/nlohmann "$dir/include/"
    cp -a /usr/lib/"$arch"/libbenchmark* "$dir/lib/"
    echo "setup.sh: Eigen, nlohmann-json and Google Benchmark copied into $dir"
}

missing=()
for p in "${packages[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$p")
    fi
done
if ((${#missing[@]} == 0)); then
    if [[ -n "$deps" ]]; then copy_deps "$deps"; fi
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
if [[ -n "$deps" ]]; then copy_deps "$deps"; fi
