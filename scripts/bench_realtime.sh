#!/usr/bin/env bash
# The real-time benchmarks on one pinned core: seqnn's twins (bench/bench_realtime.cpp) and,
# given RTNeural's headers, RTNeural's compile-time Eigen layers at the same shapes
# (bench/bench_rtneural_peer.cpp). Writes Google Benchmark JSON into an output folder and prints
# a table (summary.md there too) of seqnn per sample, per block and through the general API
# against RTNeural.
#
#   scripts/bench_realtime.sh --rtneural DIR                 CMake + Debian packages, both programs
#   scripts/bench_realtime.sh --deps DIR --rtneural DIR2     g++ only, against DIR's copies
#   scripts/bench_realtime.sh                                seqnn's benchmarks alone
# Options:
#   --rtneural DIR   a folder holding RTNeural/ (a clone of github.com/jatinchowdhury18/RTNeural,
#                    or only the headers the Eigen GRU, LSTM and Dense layers need)
#   --deps DIR       compile with g++ against the Eigen, nlohmann-json and Google Benchmark in DIR
#                    (made by ./scripts/setup.sh --deps DIR on a Debian machine), for a machine with
#                    g++ but no Debian packages; without it, CMake and the installed packages
#   --out DIR        JSON, machine.txt, commands.tsv and summary.md (default build-rt-bench/results)
#   --cpu N          the core to pin both programs to, with taskset (default: the last core)
#   --filter REGEX   which of bench_realtime's benchmarks run (default: all)
#   --quick          one repetition of short runs: tests the pipeline, not the machine
# Environment: REPS (repetitions, 5), MIN_TIME (seconds per benchmark, 0.2), BUILD_DIR
#   (build-rt-bench), CXX (the compiler with --deps, g++), TIME (real_time or cpu_time: what the
#   table shows, real_time; cpu_time leaves out the time the core ran something else).
# Every run has OMP_NUM_THREADS=1. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

INVOCATION="scripts/bench_realtime.sh${*:+ $(printf "%q " "$@")}"; INVOCATION=${INVOCATION% }
RTNEURAL=""
DEPS=""
OUT=""
CPU=$(($(nproc) - 1))
FILTER="."
QUICK=0
BUILD_DIR=${BUILD_DIR:-build-rt-bench}

while (($#)); do
  case "$1" in
    --rtneural) RTNEURAL=$2; shift ;;
    --deps) DEPS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --cpu) CPU=$2; shift ;;
    --filter) FILTER=$2; shift ;;
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_realtime.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-$BUILD_DIR/results}
if ((QUICK)); then
  REPS=${REPS:-1}; MIN_TIME=${MIN_TIME:-0.01}
else
  REPS=${REPS:-5}; MIN_TIME=${MIN_TIME:-0.2}
fi
if [[ -n $RTNEURAL ]]; then
  RTNEURAL=$(cd "$RTNEURAL" && pwd)
  if [[ ! -f $RTNEURAL/RTNeural/gru/gru_eigen.h ]]; then
    echo "bench_realtime.sh: $RTNEURAL holds no RTNeural/gru/gru_eigen.h (give the folder above RTNeural/)" >&2
    exit 2
  fi
fi
PROGRAMS="bench_realtime"
[[ -n $RTNEURAL ]] && PROGRAMS+=" bench_rtneural_peer"

# ------------------------------------------------------------------ build
if [[ -n $DEPS ]]; then
  DEPS=$(cd "$DEPS" && pwd)
  BIN=$BUILD_DIR/bin
  mkdir -p "$BIN"
  export LD_LIBRARY_PATH=$DEPS/lib:${LD_LIBRARY_PATH:-}
  CXX=${CXX:-g++}
  FLAGS=(-std=c++20 -O3 -march=native -DNDEBUG -fopenmp -I include -isystem "$DEPS/eigen3" -isystem "$DEPS/include")
  LIBS=("$DEPS/lib/libbenchmark_main.a" -L"$DEPS/lib" -lbenchmark -lpthread)
  for p in $PROGRAMS; do
    extra=()
    [[ $p == bench_rtneural_peer ]] && extra=(-isystem "$RTNEURAL" -DRTNEURAL_USE_EIGEN=1 -DEIGEN_STACK_ALLOCATION_LIMIT=1048576)
    echo "== $CXX ${FLAGS[*]} ${extra[*]} bench/$p.cpp"
    "$CXX" "${FLAGS[@]}" "${extra[@]}" "bench/$p.cpp" -o "$BIN/$p" "${LIBS[@]}"
  done
  COMPILER="$CXX $($CXX -dumpfullversion) -O3 -march=native -fopenmp"
else
  if ! command -v cmake >/dev/null; then
    echo "bench_realtime.sh: no cmake here: use --deps DIR (see --help)" >&2
    exit 1
  fi
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DSEQNN_BUILD_TESTS=OFF -DSEQNN_BUILD_EXAMPLES=OFF \
    -DSEQNN_RTNEURAL_DIR="$RTNEURAL" >/dev/null
  for p in $PROGRAMS; do cmake --build "$BUILD_DIR" --target "$p" -j"$(nproc)"; done
  BIN=$BUILD_DIR/bench
  COMPILER="$(${CXX:-c++} --version | head -1), CMake Release (SEQNN_NATIVE default)"
fi

# ------------------------------------------------------------------ run
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT/commands.tsv" "$OUT/summary.md"
printf '%s\t%s\n' "_invocation" "$INVOCATION" >"$OUT/commands.tsv"
{
  model=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
  echo "${model:-unknown CPU}, $(nproc) CPUs, pinned to CPU $CPU"
  echo "compiler: $COMPILER; RTNeural: ${RTNEURAL:-none}"
  lscpu 2>/dev/null | grep -E "^CPU\(s\)|Thread|Core|Socket|L1d|L2|L3|MHz" || true
} >"$OUT/machine.txt"
cat "$OUT/machine.txt"

PIN=()
if command -v taskset >/dev/null; then
  PIN=(taskset -c "$CPU")
else
  echo "bench_realtime.sh: no taskset here: the programs run unpinned" >&2
fi
export OMP_NUM_THREADS=1

run() {  # run PROGRAM FILTER NAME: one program into $OUT/NAME.json
  local args=(--benchmark_filter="$2" --benchmark_repetitions="$REPS" --benchmark_min_time="$MIN_TIME"
              --benchmark_report_aggregates_only=true --benchmark_out_format=json --benchmark_out="$OUT/$3.json")
  local cmd="OMP_NUM_THREADS=1 ${PIN[*]} $BIN/$1 ${args[*]}"
  echo "== $cmd"
  printf '%s\t%s\n' "$3.json" "$cmd" >>"$OUT/commands.tsv"
  "${PIN[@]}" "$BIN/$1" "${args[@]}" | grep -E "^BM_.*(_median|/T:[0-9]+|/H:[0-9]+) " || true
}

run bench_realtime "$FILTER" realtime
[[ -n $RTNEURAL ]] && run bench_rtneural_peer "." rtneural

# ------------------------------------------------------------------ table
PYTHON=$(command -v python3 || true)
if [[ -z $PYTHON ]]; then
  echo "bench_realtime.sh: no python3 here: the JSON is in $OUT, no table" >&2
  exit 0
fi
TIME=${TIME:-real_time} "$PYTHON" - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import glob, json, os, sys

out = sys.argv[1]
field = os.environ.get("TIME", "real_time")
rows = {}  # name -> (seconds per iteration, counters)
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    with open(path) as f:
        for b in json.load(f).get("benchmarks", []):
            if b.get("error_occurred"):
                print(f"{b['name']}: {b.get('error_message')}")
                continue
            if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
                continue
            scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b.get("time_unit", "ns")]
            rows[b.get("run_name", b["name"])] = (b[field] * scale, b)

def ns_per_sample(name, samples=1):
    r = rows.get(name)
    return None if r is None else r[0] / samples * 1e9

def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"

def ratio(a, b):
    return None if a is None or b is None else a / b

print(f"ns per sample ({field}, median); sample: one sample through the twin and its Linear (H -> 1);")
print("block: process_block of 256 samples; general: Layer::step (B = 1) + Linear::forward;")
print("RTNeural: GRULayerT/LSTMLayerT + DenseT at compile-time sizes. Ratios above 1: seqnn is faster.\n")
for cell in ("GRU", "LSTM"):
    print(f"| {cell} H | sample | block 256 | general step | RTNeural | RTNeural / sample | RTNeural / block | general / sample | sample / block |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for H in (8, 16, 32, 64, 128):
        s = ns_per_sample(f"BM_{cell}_Sample/H:{H}")
        b = ns_per_sample(f"BM_{cell}_Block/H:{H}/T:256", 256)
        g = ns_per_sample(f"BM_{cell}_GeneralStep/H:{H}")
        p = ns_per_sample(f"BM_RTNeural_{cell}_Sample/H:{H}")
        print(f"| {H} | {fmt(s)} | {fmt(b)} | {fmt(g)} | {fmt(p)} | {fmt(ratio(p, s), 2)} | {fmt(ratio(p, b), 2)} "
              f"| {fmt(ratio(g, s), 2)} | {fmt(ratio(s, b), 2)} |")
    print()
print("| cell H | sample | block 32 | block 256 | block 4096 |")
print("|---|---:|---:|---:|---:|")
for cell in ("GRU", "LSTM", "MinGRU", "MinLSTM"):
    for H in (8, 16, 32, 64, 128):
        blocks = [ns_per_sample(f"BM_{cell}_Block/H:{H}/T:{T}", T) for T in (32, 256, 4096)]
        print(f"| {cell} {H} | {fmt(ns_per_sample(f'BM_{cell}_Sample/H:{H}'))} | " + " | ".join(fmt(v) for v in blocks) + " |")
print()
for cell in ("GRU", "LSTM"):
    name = f"BM_AmpModel_RealTimeFactor/{cell}/H:40/T:256"
    if name in rows:
        per_block = rows[name][0]
        print(f"amp model {cell} H=40, blocks of 256: real-time factor {per_block / (256 / 48000.0):.4f} at 48 kHz "
              f"({per_block * 1e6:.1f} us per block of {256 / 48:.2f} ms)")
EOF
