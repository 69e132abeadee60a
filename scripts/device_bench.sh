#!/usr/bin/env bash
# Thread-scaling and PyTorch-peer measurements on a many-core machine that has
# g++ and PyTorch but no Debian packages: Eigen and Google Benchmark travel in
# build-device/ (see bench/README.md). Results go to $OUT (default ./device-out).
#
#   scripts/device_bench.sh            # everything
#   SECTIONS="scan" scripts/device_bench.sh
set -euo pipefail
D=build-device
OUT=${OUT:-device-out}
SECTIONS=${SECTIONS:-"info build scan layers peer"}
THREADS=${THREADS:-"1 2 4 8 16"}
mkdir -p "$OUT" "$D/bin"
export LD_LIBRARY_PATH=$PWD/$D/lib:${LD_LIBRARY_PATH:-}
export OMP_PROC_BIND=close OMP_PLACES=cores

has() { [[ " $SECTIONS " == *" $1 "* ]]; }

if has info; then
  { nproc; lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|NUMA node\(s\)|L2|L3"; g++ --version | head -1
    python3 -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())'; } | tee "$OUT/machine.txt"
fi

if has build; then
  for b in bench_scan bench_min_rnn bench_recurrent; do
    g++ -std=c++20 -O3 -march=native -DNDEBUG -fopenmp -I include -isystem $D/eigen3 -isystem $D/include \
      bench/$b.cpp -o $D/bin/$b $D/lib/libbenchmark_main.a -L$D/lib -lbenchmark -lpthread &
  done
  wait
fi

run() {  # run BIN FILTER THREADS NAME
  OMP_NUM_THREADS=$3 $D/bin/$1 --benchmark_filter="$2" --benchmark_min_time=${MIN_TIME:-0.3} \
    --benchmark_repetitions=${REPS:-3} --benchmark_report_aggregates_only=true \
    --benchmark_out="$OUT/$4.json" --benchmark_out_format=json | grep -E "^BM_.*_(median|min) " | tee -a "$OUT/summary.txt"
}

if has scan; then
  for n in $THREADS; do
    echo "== scan, $n threads" | tee -a "$OUT/summary.txt"
    run bench_scan 'BM_Gemm|BM_Bandwidth/|BM_Scan(Sequential|Parallel)/' "$n" "scan_t$n"
  done
fi

if has layers; then
  for n in 1 16; do
    echo "== layers, $n threads" | tee -a "$OUT/summary.txt"
    run bench_scan 'BM_Gemm/' "$n" "gemm_t$n"
    run bench_min_rnn 'BM_MinGRU_(Forward|Train|ForwardSequential|ForwardLogSpace|TrainLogSpace)/|BM_MinLSTM_(Forward|Train)/' "$n" "min_rnn_t$n"
    run bench_recurrent '(GRU|LSTM)_(Forward|Train)/B:16/T:(64|256|1024)/' "$n" "recurrent_t$n"
  done
fi

if has peer; then
  for n in 1 16; do
    python3 bench/pytorch_peer.py --threads "$n" --min-time 0.3 --out "$OUT/peer_t$n.json" \
      --filter 'Min(GRU|LSTM)_.*|(GRU|LSTM)_.*/B:16/T:(64|256|1024)/' | tee -a "$OUT/summary.txt"
  done
fi
