#!/usr/bin/env bash
# The serial-versus-parallel benchmark report: runs the benchmark suite (Google Benchmark,
# JSON out) and the PyTorch peers, then draws the figures (bench/report.py) with their data.
#
#   scripts/bench_report.sh                   build here, run everything, draw into docs/report/
#   scripts/bench_report.sh --from DIR        draw only, from the JSON files in DIR (nothing runs)
#   scripts/bench_report.sh --collect-only --raw DIR --merged FILE
#                                             run and merge into one JSON, draw nothing (a machine
#                                             without matplotlib; then --from the folder of FILE)
# Options:
#   --out DIR          where figures, their JSON, ratios.md and all_results.json go (docs/report)
#   --raw DIR          raw JSON of this run (build-report/report-raw)
#   --threads "1 N"    thread counts of the layer and PyTorch runs (1 and nproc)
#   --scaling "..."    thread counts of the scaling runs (1 2 4 ... up to nproc)
#   --deps DIR         compile with g++ against the Eigen and Google Benchmark in DIR (made by
#                      ./scripts/setup.sh --deps DIR on a Debian machine) instead of CMake + Debian packages
#   --quick            a small, fast run that tests the pipeline (T <= 256 for most families)
#   --no-peer          skip PyTorch
# Environment: REPS (repetitions, 3), MIN_TIME (s per benchmark, 0.1), PEER_MIN_TIME (0.2),
#   PYTHON (for the PyTorch peers; default: the first of python3, /usr/bin/python3 that has torch),
#   BUILD_DIR (build-report). Threads are set per run with OMP_NUM_THREADS and
#   OMP_PROC_BIND=close OMP_PLACES=cores; 1-thread runs, PyTorch's too, are pinned to the last
#   core (taskset). Drawing needs matplotlib: Debian's python3-matplotlib is installed with
#   apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

INVOCATION="scripts/bench_report.sh${*:+ $(printf "%q " "$@")}"; INVOCATION=${INVOCATION% }
OUT_DIR=docs/report
RAW=""
FROM=""
MERGED=""
COLLECT_ONLY=0
QUICK=0
PEER=1
DEPS=""
NPROC=$(nproc)
THREADS="1 $NPROC"
SCALING=""
for ((n = 1; n <= NPROC; n *= 2)); do SCALING+="$n "; done
((NPROC & (NPROC - 1))) && SCALING+="$NPROC"
BUILD_DIR=${BUILD_DIR:-build-report}

while (($#)); do
  case "$1" in
    --from) FROM=$2; shift ;;
    --out) OUT_DIR=$2; shift ;;
    --raw) RAW=$2; shift ;;
    --merged) MERGED=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --scaling) SCALING=$2; shift ;;
    --deps) DEPS=$2; shift ;;
    --collect-only) COLLECT_ONLY=1 ;;
    --quick) QUICK=1 ;;
    --no-peer) PEER=0 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_report.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
RAW=${RAW:-$BUILD_DIR/report-raw}
THREADS=$(echo $THREADS | tr ' ' '\n' | sort -n -u | tr '\n' ' ')
MAX_T=$(echo $THREADS $SCALING | tr ' ' '\n' | sort -n | tail -1)

draw_python() {  # a python3 with matplotlib, installing Debian's package if needed
  for py in python3 /usr/bin/python3; do
    if command -v $py >/dev/null && $py -c 'import matplotlib' 2>/dev/null; then echo $py; return; fi
  done
  local sudo=()
  ((EUID != 0)) && sudo=(sudo)
  echo "bench_report.sh: installing python3-matplotlib" >&2
  "${sudo[@]}" apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends python3-matplotlib >&2
  echo /usr/bin/python3
}

draw() {  # draw DIR...
  local py args=()
  py=$(draw_python)
  for d in "$@"; do args+=(--from "$d"); done
  $py bench/report.py draw "${args[@]}" --out "$OUT_DIR"
}

if [[ -n $FROM ]]; then
  draw "$FROM"
  exit 0
fi

# ------------------------------------------------------------------ build
BENCHES="bench_scan bench_min_rnn bench_recurrent bench_attention bench_accuracy"
if [[ -n $DEPS ]]; then
  BIN=$DEPS/bin
  mkdir -p "$BIN"
  export LD_LIBRARY_PATH=$PWD/$DEPS/lib:${LD_LIBRARY_PATH:-}
  for b in $BENCHES; do
    g++ -std=c++20 -O3 -march=native -DNDEBUG -fopenmp -I include -isystem "$DEPS/eigen3" -isystem "$DEPS/include" \
      bench/$b.cpp -o "$BIN/$b" "$DEPS/lib/libbenchmark_main.a" -L"$DEPS/lib" -lbenchmark -lpthread &
  done
  wait
  COMPILER="g++ $(g++ -dumpfullversion) -O3 -march=native -fopenmp"
else
  ./scripts/setup.sh
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DSEQNN_BUILD_TESTS=OFF -DSEQNN_BUILD_EXAMPLES=OFF >/dev/null
  for b in $BENCHES; do cmake --build "$BUILD_DIR" --target $b -j"$NPROC" || true; done
  BIN=$BUILD_DIR/bench
  COMPILER="$(${CXX:-c++} --version | head -1), CMake Release (SEQNN_NATIVE default)"
fi
for b in $BENCHES; do [[ -x $BIN/$b ]] || echo "bench_report.sh: $BIN/$b was not built: its benchmarks are skipped" >&2; done

# ------------------------------------------------------------------ what to run
if ((QUICK)); then
  TS="64|256"; TT="64"; TA="256"; ACC="/T:(64|128|256|512)/"; REPS=${REPS:-1}; MIN_TIME=${MIN_TIME:-0.01}
  PEER_MIN_TIME=${PEER_MIN_TIME:-0.01}
else
  TS="64|256|1024|4096"; TT="64|256|1024"; TA="256|1024|4096"; ACC="."; REPS=${REPS:-3}; MIN_TIME=${MIN_TIME:-0.1}
  PEER_MIN_TIME=${PEER_MIN_TIME:-0.2}
fi
F_SCAN="^BM_Gemm/|^BM_Bandwidth/N:16777216/|^BM_BandwidthSerial/|^BM_Scan(Sequential|Parallel)/B:16/"
F_RECURRENT="^BM_(GRU|LSTM)_(Forward|Train)/B:16/T:($TS)/|^BM_RNN_Forward/B:16/T:($TS)/|^BM_(GRU|LSTM)_Step/|^BM_StepProduct"
F_MIN_RNN="^BM_Min(GRU|LSTM)_(Forward|Train)/B:16/T:($TS)/"
F_ATTENTION="^BM_Transformer_Forward/B:16/T:($TS)/|^BM_Transformer_Train/B:16/T:($TT)/|^BM_Attention_(Forward|Train)/B:(1/T:($TA)|16/T:1024)/"
F_PEER="^BM_((Min)?(GRU|LSTM)_(Forward|Train)|RNN_Forward)/B:16/T:($TS)/|^BM_Transformer_Forward/B:16/T:($TS)/|^BM_Transformer_Train/B:16/T:($TT)/|^BM_Attention_(Forward|Train)/B:(1/T:($TA)|16/T:1024)/"

mkdir -p "$RAW"
rm -f "$RAW"/*.json "$RAW/commands.tsv"
printf '%s\t%s\n' "_invocation" "$INVOCATION" >"$RAW/commands.tsv"
export OMP_PROC_BIND=close OMP_PLACES=cores
# One-thread runs, seqnn's and PyTorch's alike, are pinned to the last core: the first one
# is where a machine tends to take its interrupts.
PIN_1=""
if command -v taskset >/dev/null; then PIN_1="taskset -c $((NPROC - 1))"; fi
pin() {  # pin THREADS: the command prefix of a run on THREADS threads
  if [[ $1 == 1 ]]; then echo "$PIN_1"; fi
}

run() {  # run BIN FILTER THREADS NAME: one Google Benchmark program into $RAW/NAME.json
  [[ -x $BIN/$1 ]] || return 0
  local prefix
  prefix=$(pin "$3")
  local cmd="OMP_NUM_THREADS=$3 ${prefix:+$prefix }$BIN/$1 --benchmark_filter='$2' --benchmark_repetitions=$REPS --benchmark_min_time=$MIN_TIME --benchmark_report_aggregates_only=true --benchmark_out_format=json --benchmark_out=$4.json"
  echo "== $cmd"
  printf '%s\t%s\n' "$4.json" "$cmd" >>"$RAW/commands.tsv"
  OMP_NUM_THREADS=$3 $prefix "$BIN/$1" --benchmark_filter="$2" --benchmark_repetitions="$REPS" --benchmark_min_time="$MIN_TIME" \
    --benchmark_report_aggregates_only=true --benchmark_out_format=json --benchmark_out="$RAW/$4.json" \
    | grep -E "^BM_.*(_median|/real_time) " || true
}

peer_python() {
  if [[ -n ${PYTHON:-} ]]; then echo "$PYTHON"; return; fi
  for py in python3 /usr/bin/python3; do
    if command -v $py >/dev/null && $py -c 'import torch' 2>/dev/null; then echo $py; return; fi
  done
}

peer() {  # peer THREADS
  local py cmd
  py=$(peer_python)
  if [[ -z $py ]]; then echo "bench_report.sh: no python3 with torch here: PyTorch peers skipped" >&2; return; fi
  local prefix
  prefix=$(pin "$1")
  cmd="${prefix:+$prefix }$py bench/pytorch_peer.py --quick --threads $1 --min-time $PEER_MIN_TIME --filter '$F_PEER' --out peer_t$1.json"
  echo "== $cmd"
  printf '%s\t%s\n' "peer_t$1.json" "$cmd" >>"$RAW/commands.tsv"
  PYTHONUNBUFFERED=1 $prefix $py bench/pytorch_peer.py --quick --threads "$1" --min-time "$PEER_MIN_TIME" --filter "$F_PEER" \
    --out "$RAW/peer_t$1.json" || echo "bench_report.sh: the PyTorch peers failed at $1 threads" >&2
}

{
  model=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
  torch=$($(peer_python || true) -c 'import torch; print("PyTorch", torch.__version__)' 2>/dev/null || echo "no PyTorch")
  echo "${model:-unknown CPU}, $NPROC CPUs ($(hostname))"
  echo "compiler: $COMPILER; $torch; date $(date -u +%FT%TZ)"
  lscpu 2>/dev/null | grep -E "^CPU\(s\)|Thread|Core|Socket|NUMA node\(s\)|L1d|L2|L3" || true
} >"$RAW/machine.txt"
cat "$RAW/machine.txt"

# Most important first: a run cut short (a time limit) keeps what it finished.
run bench_accuracy "$ACC" "$MAX_T" accuracy_t$MAX_T
for n in $(echo $THREADS | tr ' ' '\n' | sort -rn); do
  run bench_scan "$F_SCAN" "$n" scan_t$n
  run bench_min_rnn "$F_MIN_RNN" "$n" min_rnn_t$n
  run bench_recurrent "$F_RECURRENT" "$n" recurrent_t$n
  run bench_attention "$F_ATTENTION" "$n" attention_t$n
  if [[ $n == "$MAX_T" ]]; then run bench_scan "^BM_ScanParallelThreads/" "$n" scan_threads; fi
done
for n in $SCALING; do
  [[ " $THREADS " == *" $n "* ]] && continue  # those thread counts ran above
  run bench_scan "^BM_Gemm/M:16384/K:256/N:512/|^BM_Bandwidth/N:16777216/" "$n" scaling_scan_t$n
  run bench_recurrent "^BM_(GRU|LSTM)_(Forward|Train)/B:16/T:1024/|^BM_(GRU|LSTM)_Step/B:1/D:(64|1024)/" "$n" scaling_recurrent_t$n
  run bench_min_rnn "^BM_MinGRU_Forward/B:16/T:1024/" "$n" scaling_min_rnn_t$n
  run bench_attention "^BM_Attention_Forward/B:(1/T:4096|16/T:1024)/" "$n" scaling_attention_t$n
done
if ((PEER)); then
  for n in $(echo $THREADS | tr ' ' '\n' | sort -rn); do peer "$n"; done
fi

if [[ -n $MERGED ]]; then
  python3 bench/report.py merge "$RAW" --out "$MERGED"
fi
if ((COLLECT_ONLY)); then
  exit 0
fi
draw "$RAW"
