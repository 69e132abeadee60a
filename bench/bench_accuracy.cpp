// Accuracy of the fp32 scans against an fp64 sequential reference, versus T: the data
// of the report's accuracy figure (scripts/bench_report.sh, bench/report.py).
//
//   BM_ScanAccuracy_<variant>/T:<T>/a:<lo>   one stream (B:1) of T steps, D:64 channels,
//                                            a ~ U(lo/1000, 1), b ~ U(0.01, 1)
//   variants: LinearSequential, LinearParallel (the automatic split: the time split for
//   one stream on several threads), LogSpace (the paper's: cumsum of log a, logcumsumexp)
//
// Counters: rel_error = max |h - h_ref| / max |h_ref| (the definition of
// tests/test_scan.cpp's ScanAccuracy tests), rel_error_elem = max over elements of
// |h - h_ref| / |h_ref|, and the usual rate counters for the timed fp32 scan.
// b > 0, so h > 0 and the log-space form applies; the reference runs in double from the
// same fp32 inputs, so only the scan's arithmetic is measured, not the rounding of a and b.
#include "bench_common.hpp"

#include <seqnn/kernels/scan.hpp>

#include <algorithm>
#include <cmath>

namespace {

using namespace seqnn;

struct Case {
    Matrix<float> a, b;
    Matrix<double> ref;  // fp64 sequential scan of the same (fp32) inputs
};

Case make_case(Index T, Index D, float a_lo) {
    Rng rng(15);
    std::uniform_real_distribution<float> da(a_lo, 1.0f), db(0.01f, 1.0f);
    Case c;
    c.a.resize(T, D);
    c.b.resize(T, D);
    for (Index i = 0; i < c.a.size(); ++i) {
        c.a.data()[i] = da(rng);
        c.b.data()[i] = db(rng);
    }
    c.ref.resize(T, D);
    for (Index d = 0; d < D; ++d) {
        double h = 0.0;
        for (Index t = 0; t < T; ++t) {
            h = double(c.a(t, d)) * h + double(c.b(t, d));
            c.ref(t, d) = h;
        }
    }
    return c;
}

enum class Variant { LinearSequential, LinearParallel, LogSpace };

void BM_ScanAccuracy(benchmark::State& state, Variant variant) {
    const Index T = state.range(0), D = 64;
    const float a_lo = static_cast<float>(state.range(1)) / 1000.0f;
    const Case c = make_case(T, D, a_lo);
    const Matrix<float> none, log_a = c.a.array().log().matrix(), log_b = c.b.array().log().matrix();
    Matrix<float> out(T, D), last(1, D);
    const ScanOptions options{variant == Variant::LinearSequential ? ScanMode::Sequential : ScanMode::Parallel,
                              ScanSplit::Auto, 0};
    auto run = [&] {
        if (variant == Variant::LogSpace)
            log_scan_forward<float>(out, last, log_a, log_b, none, 1, T, options);
        else
            scan_forward<float>(out, last, c.a, c.b, none, 1, T, options);
    };
    for (auto _ : state) {
        run();
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    Matrix<double> h = out.cast<double>();
    if (variant == Variant::LogSpace) h = h.array().exp().matrix();
    const Matrix<double> diff = (h - c.ref).cwiseAbs();
    const double elements = double(T) * double(D);
    bench::set_counters(state, double(T), 2.0 * elements, 12.0 * elements);
    state.counters["rel_error"] = diff.maxCoeff() / c.ref.cwiseAbs().maxCoeff();
    state.counters["rel_error_elem"] = diff.cwiseQuotient(c.ref.cwiseAbs()).maxCoeff();
    state.counters["T"] = double(T);
}

void accuracy_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"T", "a"});
    for (int a_lo : {500, 990})
        for (int T = 1 << 6; T <= 1 << 16; T *= 2) b->Args({T, a_lo});
    // The error is a property of the arithmetic, not of the timing: a few iterations do.
    b->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

[[maybe_unused]] const int registered = [] {
    using benchmark::RegisterBenchmark;
    RegisterBenchmark("BM_ScanAccuracy_LinearSequential", BM_ScanAccuracy, Variant::LinearSequential)
        ->Apply(accuracy_shapes);
    RegisterBenchmark("BM_ScanAccuracy_LinearParallel", BM_ScanAccuracy, Variant::LinearParallel)
        ->Apply(accuracy_shapes);
    RegisterBenchmark("BM_ScanAccuracy_LogSpace", BM_ScanAccuracy, Variant::LogSpace)->Apply(accuracy_shapes);
    return 0;
}();
