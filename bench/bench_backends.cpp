// Matrix-product backends at the recurrent layers' shapes: the per-step product of the
// time loop (B rows), the input projection of a whole sequence (B*T rows) and a weight
// gradient (an inner dimension of B*T). Every product is y = x w^T with x (M, K) and
// w (N, K) row-major, as the layers store them.
//
//   Eigen     y.noalias() = x * w.transpose(), which packs both operands on every call
//   Packed    kernels/recurrent.hpp's gemm_packed on w packed once, outside the timing
//   OpenBLAS  cblas_sgemm (built when CMake finds OpenBLAS: bench_backends_openblas)
//   BLIS      bli_sgemm (built when CMake finds BLIS: bench_backends_blis)
//   Libxsmm   a JIT kernel from libxsmm_smmdispatch on w^T kept column-major (built when
//             CMake finds libxsmm: bench_backends_libxsmm); skipped where it dispatches none
//
// Each external library is its own executable, since they export the same BLAS symbols;
// each also runs the Eigen and Packed rows, so the comparison stands in one run.
#include "bench_common.hpp"

#if defined(SEQNN_BENCH_OPENBLAS)
#include <cblas.h>
#elif defined(SEQNN_BENCH_BLIS)
#include <blis.h>
#elif defined(SEQNN_BENCH_LIBXSMM)
#include <libxsmm.h>
#endif

namespace {

using namespace seqnn;

struct Operands {
    Matrix<float> x, w, y;
    Operands(Index M, Index K, Index N) : x(bench::random_matrix(M, K)), w(bench::random_matrix(N, K, 2)), y(M, N) {}
};

void set_product_counters(benchmark::State& state, Index M, Index K, Index N) {
    bench::set_counters(state, double(M), 2.0 * double(M) * double(K) * double(N),
                        4.0 * double(M * K + N * K + M * N));
}

// (M, K, N): the per-step products of a GRU and an LSTM at B=16, H=256; one stream at
// H=1024; the input projection of B=16, T=1024; a weight gradient (G*H, B*T) x (B*T, H).
void shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"M", "K", "N"});
    b->Args({16, 256, 768})->Args({16, 256, 1024})->Args({1, 1024, 3072});
    b->Args({16384, 256, 1024})->Args({1024, 16384, 256});
    b->UseRealTime();
}

void BM_ProductEigen(benchmark::State& state) {
    Operands o(state.range(0), state.range(1), state.range(2));
    for (auto _ : state) {
        o.y.noalias() = o.x * o.w.transpose();  // (M, K) x (K, N)
        benchmark::DoNotOptimize(o.y.data());
    }
    set_product_counters(state, state.range(0), state.range(1), state.range(2));
}
BENCHMARK(BM_ProductEigen)->Apply(shapes);

// One thread's packed product (the recurrent kernel runs it per thread, on its own rows).
void BM_ProductPacked(benchmark::State& state) {
    const Index M = state.range(0), K = state.range(1), N = state.range(2);
    Operands o(M, K, N);
    recurrent_detail::PackedPanels<float> packed;
    packed.pack(K, N, [&](Index k, Index j) { return o.w(j, k); });
    for (auto _ : state) {
        recurrent_detail::gemm_packed<float>(o.x.data(), K, M, packed, o.y.data(), N, nullptr, false);
        benchmark::DoNotOptimize(o.y.data());
    }
    set_product_counters(state, M, K, N);
}
BENCHMARK(BM_ProductPacked)->Apply(shapes);

#if defined(SEQNN_BENCH_OPENBLAS)
void BM_ProductOpenBLAS(benchmark::State& state) {
    const int M = static_cast<int>(state.range(0)), K = static_cast<int>(state.range(1)), N = static_cast<int>(state.range(2));
    Operands o(M, K, N);
    for (auto _ : state) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, o.x.data(), K, o.w.data(), K, 0.0f,
                    o.y.data(), N);
        benchmark::DoNotOptimize(o.y.data());
    }
    set_product_counters(state, M, K, N);
}
BENCHMARK(BM_ProductOpenBLAS)->Apply(shapes);
#endif

#if defined(SEQNN_BENCH_BLIS)
void BM_ProductBLIS(benchmark::State& state) {
    const dim_t M = state.range(0), K = state.range(1), N = state.range(2);
    Operands o(M, K, N);
    float one = 1.0f, zero = 0.0f;
    for (auto _ : state) {
        // Row-major operands as BLIS strides: x (M, K) rows K apart, w^T read from w (N, K).
        bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_TRANSPOSE, M, N, K, &one, o.x.data(), K, 1, o.w.data(), K, 1, &zero,
                  o.y.data(), N, 1);
        benchmark::DoNotOptimize(o.y.data());
    }
    set_product_counters(state, M, K, N);
}
BENCHMARK(BM_ProductBLIS)->Apply(shapes);
#endif

#if defined(SEQNN_BENCH_LIBXSMM)
void BM_ProductLibxsmm(benchmark::State& state) {
    const libxsmm_blasint M = state.range(0), K = state.range(1), N = state.range(2);
    Operands o(M, K, N);
    // Column-major: y^T (N, M) = wt (N, K) x^T (K, M), with wt = w^T stored row-major (K, N),
    // which is w's (N, K) column-major; x row-major is x^T column-major.
    const Matrix<float> wt = o.w.transpose();
    const libxsmm_blasint lda = N, ldb = K, ldc = N;
    const float alpha = 1.0f, beta = 0.0f;
    const libxsmm_smmfunction kernel = libxsmm_smmdispatch(N, M, K, &lda, &ldb, &ldc, &alpha, &beta, nullptr, nullptr);
    if (!kernel) {
        state.SkipWithError("libxsmm dispatched no kernel for this shape");
        return;
    }
    for (auto _ : state) {
        kernel(wt.data(), o.x.data(), o.y.data());
        benchmark::DoNotOptimize(o.y.data());
    }
    set_product_counters(state, M, K, N);
}
BENCHMARK(BM_ProductLibxsmm)->Apply(shapes);
#endif

}  // namespace
