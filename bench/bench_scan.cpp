// The scan kernel against the machine's ceilings: a plain Eigen GEMM (the ceiling for
// minGRU's projections) and a streaming pass that reads two float arrays and writes
// one (the ceiling for the scan, which reads a and b and writes h). Sequential vs
// parallel scan, both parallel splits forced, the reverse scan and the log-space scan.
//
//   FLOPS: the recurrence's useful work, 2 per element (multiply, add) for every scan
//          variant, so the rates compare; the time split and the log space do more.
//   bytes: what the kernel must move at least: 3 arrays of B*T*D floats forward
//          (a, b read; h written), 5 backward (dh, a, h read; da, db written).
#include "bench_common.hpp"

#include <seqnn/kernels/matmul.hpp>
#include <seqnn/kernels/scan.hpp>

#include <algorithm>
#include <vector>

namespace {

using namespace seqnn;

// Fills m row-block by row-block on the threads that will later stream it (first touch).
void fill_uniform(Matrix<float>& m, float lo, float hi, std::uint64_t seed) {
    const Index rows = m.rows(), cols = m.cols();
    const int threads = num_threads();
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int p = 0; p < threads; ++p) {
        Rng rng(seed * 1000 + static_cast<std::uint64_t>(p));
        std::uniform_real_distribution<float> dist(lo, hi);
        const Index r0 = rows * p / threads, r1 = rows * (p + 1) / threads;
        for (Index r = r0; r < r1; ++r)
            for (Index c = 0; c < cols; ++c) m(r, c) = dist(rng);
    }
}

Matrix<float> uniform(Index rows, Index cols, float lo, float hi, std::uint64_t seed) {
    Matrix<float> m(rows, cols);
    fill_uniform(m, lo, hi, seed);
    return m;
}

// With --benchmark_repetitions, also report the fastest repetition ("_min"): on a
// shared machine it is the closest to what the hardware does. (Rate counters in that
// row are minima too; derive rates from its time.)
double fastest(const std::vector<double>& v) { return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end()); }

// ---------------------------------------------------------------------------------
// Ceilings.

// The Linear shapes (M = B*T = 16384 rows, K in, N out) of char_lm --preset paper:
// K:384/N:1536 is minGRU's to_hidden_and_gate and the MLP's first Linear, K:1536/N:384
// the MLP's second.
void paper_linear_shapes(benchmark::internal::Benchmark* b) {
    b->Args({16384, 384, 1536})->Args({16384, 1536, 384});
}

// The Transformer block's four projections at B*T = 16384, E = 256, F = 4E: in_proj,
// out_proj, linear1, linear2.
void transformer_linear_shapes(benchmark::internal::Benchmark* b) {
    b->Args({16384, 256, 768})->Args({16384, 256, 256})->Args({16384, 256, 1024})->Args({16384, 1024, 256});
}

// Counters for a product (P, Q) x (Q, R) over `rows` rows of data: 2PQR FLOPs, and the
// bytes of both factors and of the result in float, the result read too when the
// product accumulates into it.
void set_product_counters(benchmark::State& state, Index rows, Index P, Index Q, Index R, bool accumulates) {
    const double p = double(P), q = double(Q), r = double(R), result_passes = accumulates ? 2.0 : 1.0;
    bench::set_counters(state, double(rows), 2.0 * p * q * r, 4.0 * (p * q + q * r + result_passes * p * r));
}

// Y (M, N) = X (M, K) W^T, W (N, K): nn.Linear's GEMM, computed by multiply(x, w, y).
template <typename Multiply>
void time_linear_product(benchmark::State& state, const Multiply& multiply) {
    const Index M = state.range(0), K = state.range(1), N = state.range(2);
    const Matrix<float> x = uniform(M, K, -1, 1, 1), w = uniform(N, K, -1, 1, 2);
    Matrix<float> y = uniform(M, N, 0, 1, 3);
    for (auto _ : state) {
        multiply(x, w, y);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    set_product_counters(state, M, M, K, N, false);  // (M, K) x (K, N)
}

void linear_product_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"M", "K", "N"})->Args({16384, 256, 512})->Apply(transformer_linear_shapes)->Apply(paper_linear_shapes);
    b->Unit(benchmark::kMillisecond)->UseRealTime()->ComputeStatistics("min", fastest);
}

// Eigen's own parallel GEMM, the machine's GEMM ceiling in the reports.
void BM_Gemm(benchmark::State& state) {
    time_linear_product(state, [](const Matrix<float>& x, const Matrix<float>& w, Matrix<float>& y) {
        y.noalias() = x * w.transpose();
    });
}
BENCHMARK(BM_Gemm)->Apply(linear_product_shapes);

// The same product as the layers compute it: matmul_rows (kernels/matmul.hpp) splits the
// rows across threads, each running Eigen's serial GEMM.
void BM_MatmulRows(benchmark::State& state) {
    time_linear_product(state, [](const Matrix<float>& x, const Matrix<float>& w, Matrix<float>& y) {
        matmul_rows<float>(x, w.transpose(), y);
    });
}
BENCHMARK(BM_MatmulRows)->Apply(linear_product_shapes);

// Linear::backward's two products at the char_lm paper preset's shapes (M = B*T = 16384
// rows, K in, N out; BM_Gemm is the forward, y = x W^T): the input gradient dx = dy W,
// and the weight gradient dW += dy^T x, whose inner dimension is the 16384 rows.
void BM_InputGradGemm(benchmark::State& state) {
    const Index M = state.range(0), K = state.range(1), N = state.range(2);
    const Matrix<float> w = uniform(N, K, -1, 1, 2), dy = uniform(M, N, -1, 1, 3);
    Matrix<float> dx(M, K);
    for (auto _ : state) {
        dx.noalias() = dy * w;  // (M, N) x (N, K)
        benchmark::DoNotOptimize(dx.data());
        benchmark::ClobberMemory();
    }
    set_product_counters(state, M, M, N, K, false);  // (M, N) x (N, K)
}
BENCHMARK(BM_InputGradGemm)
    ->ArgNames({"M", "K", "N"})
    ->Apply(paper_linear_shapes)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->ComputeStatistics("min", fastest);

void BM_WeightGradGemm(benchmark::State& state) {
    const Index M = state.range(0), K = state.range(1), N = state.range(2);
    const Matrix<float> x = uniform(M, K, -1, 1, 1), dy = uniform(M, N, -1, 1, 3);
    Matrix<float> dw = Matrix<float>::Zero(N, K);
    for (auto _ : state) {
        dw.noalias() += dy.transpose() * x;  // (N, M) x (M, K)
        benchmark::DoNotOptimize(dw.data());
        benchmark::ClobberMemory();
    }
    set_product_counters(state, M, N, M, K, true);  // (N, M) x (M, K), into dW
}
BENCHMARK(BM_WeightGradGemm)
    ->ArgNames({"M", "K", "N"})
    ->Apply(paper_linear_shapes)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->ComputeStatistics("min", fastest);

// c = a + b over n floats, split evenly across `threads` threads.
void stream_add(const float* a, const float* b, float* c, Index n, int threads) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int p = 0; p < threads; ++p) {
        const Index i0 = n * p / threads, i1 = n * (p + 1) / threads;
        using Arr = Eigen::Array<float, Eigen::Dynamic, 1>;
        Eigen::Map<Arr>(c + i0, i1 - i0) = Eigen::Map<const Arr>(a + i0, i1 - i0) + Eigen::Map<const Arr>(b + i0, i1 - i0);
    }
}

void run_bandwidth(benchmark::State& state, int threads) {
    const Index n = state.range(0);
    const Matrix<float> a = uniform(n, 1, -1, 1, 1), b = uniform(n, 1, -1, 1, 2);
    Matrix<float> c = uniform(n, 1, 0, 1, 3);
    for (auto _ : state) {
        stream_add(a.data(), b.data(), c.data(), n, threads);
        benchmark::DoNotOptimize(c.data());
        benchmark::ClobberMemory();
    }
    bench::set_counters(state, double(n), double(n), 12.0 * double(n));
    state.counters["threads"] = threads;
}

// All threads: the machine's streaming ceiling. N:16777216 moves the bytes of the
// scan at B:16/T:4096/D:256 and B:1/T:65536/D:256 (3 x 64 MiB).
void BM_Bandwidth(benchmark::State& state) { run_bandwidth(state, num_threads()); }
BENCHMARK(BM_Bandwidth)
    ->ArgName("N")
    ->Arg(1 << 20)
    ->Arg(1 << 22)
    ->Arg(1 << 24)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->ComputeStatistics("min", fastest);

// One thread: the ceiling for the sequential scan.
void BM_BandwidthSerial(benchmark::State& state) { run_bandwidth(state, 1); }
BENCHMARK(BM_BandwidthSerial)
    ->ArgName("N")
    ->Arg(1 << 24)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->ComputeStatistics("min", fastest);

// ---------------------------------------------------------------------------------
// Scans, at B:1/T:65536/D:256 (one long stream) and B:16/T:4096/D:256 (a batch).

struct ScanData {
    Index B, T, D;
    Matrix<float> a, b, h, last, none;
    // a ~ U(a_lo, 1): with 0.5 the time split's fix-up stops after a few hundred steps
    // (the carry has decayed below float's range); with 0.999 it runs to the end.
    ScanData(Index B_, Index T_, Index D_, float a_lo = 0.5f)
        : B(B_), T(T_), D(D_), a(uniform(B * T, D, a_lo, 1.0f, 1)), b(uniform(B * T, D, -1, 1, 2)),
          h(uniform(B * T, D, 0, 1, 3)), last(B, D) {}
    double elements() const { return double(B) * double(T) * double(D); }
};

void run_scan(benchmark::State& state, ScanOptions options, float a_lo = 0.5f) {
    ScanData s(state.range(0), state.range(1), state.range(2), a_lo);
    for (auto _ : state) {
        scan_forward<float>(s.h, s.last, s.a, s.b, s.none, s.B, s.T, options);
        benchmark::DoNotOptimize(s.h.data());
        benchmark::ClobberMemory();
    }
    bench::set_counters(state, double(s.B * s.T), 2.0 * s.elements(), 12.0 * s.elements());
}

void run_scan_backward(benchmark::State& state, ScanOptions options) {
    ScanData s(state.range(0), state.range(1), state.range(2));
    Matrix<float> dh = uniform(s.B * s.T, s.D, -1, 1, 4), da = uniform(s.B * s.T, s.D, 0, 1, 5),
                  db = uniform(s.B * s.T, s.D, 0, 1, 6), dh0;
    scan_forward<float>(s.h, s.last, s.a, s.b, s.none, s.B, s.T, options);
    for (auto _ : state) {
        scan_backward<float>(da, db, dh0, dh, s.none, s.a, s.h, s.none, s.B, s.T, options);
        benchmark::DoNotOptimize(da.data());
        benchmark::ClobberMemory();
    }
    bench::set_counters(state, double(s.B * s.T), 3.0 * s.elements(), 20.0 * s.elements());
}

// Heinsen's log-space scan on log a, log b: the paper's algorithm, parallel over (sequence, channel).
void run_log_scan(benchmark::State& state, ScanOptions options) {
    ScanData s(state.range(0), state.range(1), state.range(2));
    const Matrix<float> log_a = s.a.array().log().matrix(), log_b = uniform(s.B * s.T, s.D, -3, 0, 7);
    for (auto _ : state) {
        log_scan_forward<float>(s.h, s.last, log_a, log_b, s.none, s.B, s.T, options);
        benchmark::DoNotOptimize(s.h.data());
        benchmark::ClobberMemory();
    }
    bench::set_counters(state, double(s.B * s.T), 2.0 * s.elements(), 12.0 * s.elements());
}

constexpr ScanOptions kSequential{ScanMode::Sequential, ScanSplit::Auto, 0};

void BM_ScanSequential(benchmark::State& state) { run_scan(state, kSequential); }
void BM_ScanParallel(benchmark::State& state) { run_scan(state, {ScanMode::Parallel, ScanSplit::Auto, 0}); }
void BM_ScanParallelChannels(benchmark::State& state) { run_scan(state, {ScanMode::Parallel, ScanSplit::Channels, 0}); }
void BM_ScanParallelTime(benchmark::State& state) { run_scan(state, {ScanMode::Parallel, ScanSplit::Time, 0}); }
// Long memory, a ~ U(0.999, 1): the time split's worst case (a full second pass).
void BM_ScanParallelLongMemory(benchmark::State& state) {
    run_scan(state, {ScanMode::Parallel, ScanSplit::Auto, 0}, 0.999f);
}
void BM_ScanBackwardSequential(benchmark::State& state) { run_scan_backward(state, kSequential); }
void BM_ScanBackwardParallel(benchmark::State& state) { run_scan_backward(state, {ScanMode::Parallel, ScanSplit::Auto, 0}); }
void BM_ScanBackwardParallelTime(benchmark::State& state) {
    run_scan_backward(state, {ScanMode::Parallel, ScanSplit::Time, 0});
}
void BM_ScanLogSpaceSequential(benchmark::State& state) { run_log_scan(state, kSequential); }
void BM_ScanLogSpace(benchmark::State& state) { run_log_scan(state, {ScanMode::Parallel, ScanSplit::Auto, 0}); }

void scan_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "T", "D"})->Args({1, 65536, 256})->Args({16, 4096, 256});
    b->Unit(benchmark::kMillisecond)->UseRealTime()->ComputeStatistics("min", fastest);
}
BENCHMARK(BM_ScanSequential)->Apply(scan_shapes);
BENCHMARK(BM_ScanParallel)->Apply(scan_shapes);
BENCHMARK(BM_ScanParallelChannels)->Apply(scan_shapes);
BENCHMARK(BM_ScanParallelTime)->Apply(scan_shapes);
BENCHMARK(BM_ScanParallelLongMemory)->Apply(scan_shapes);
BENCHMARK(BM_ScanBackwardSequential)->Apply(scan_shapes);
BENCHMARK(BM_ScanBackwardParallel)->Apply(scan_shapes);
BENCHMARK(BM_ScanBackwardParallelTime)->Apply(scan_shapes);
BENCHMARK(BM_ScanLogSpaceSequential)->Apply(scan_shapes);
BENCHMARK(BM_ScanLogSpace)->Apply(scan_shapes);

// Thread scaling of the parallel scan at one long stream: threads 1, 2, 4, ... up to
// the processor count (seqnn::set_num_threads; restored afterwards).
template <ScanSplit Split>
void BM_ScanThreads(benchmark::State& state) {
    const int saved = num_threads();
    set_num_threads(static_cast<int>(state.range(3)));
    run_scan(state, {ScanMode::Parallel, Split, 0});
    set_num_threads(saved);
}
void thread_counts(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "T", "D", "threads"});
    int procs = 1;
#ifdef _OPENMP
    procs = omp_get_num_procs();
#endif
    for (int t = 1; t <= procs; t *= 2) b->Args({1, 65536, 256, t});
    b->Unit(benchmark::kMillisecond)->UseRealTime()->ComputeStatistics("min", fastest);
}
BENCHMARK(BM_ScanThreads<ScanSplit::Auto>)->Name("BM_ScanParallelThreads")->Apply(thread_counts);
BENCHMARK(BM_ScanThreads<ScanSplit::Time>)->Name("BM_ScanParallelTimeThreads")->Apply(thread_counts);

}  // namespace
