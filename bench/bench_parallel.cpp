// The numbers behind core/parallel.hpp's rule for when threading pays:
//   BM_ForkJoin/threads:<n>          an empty parallel region: what a fork and a join cost
//   BM_Barrier/threads:<n>           one barrier of a team already running (per barrier)
//   BM_StreamedAdd/n:<e>/threads:<n> m += a over e floats split in <n> blocks: where two
//                                    threads start to beat one on a memory-bound pass
//   BM_SmallGemm/n:<n>               a (n, n) x (n, n) product on one thread: flops per
//                                    second, to turn the streamed pass into flops
// Run on an idle machine, with no more threads than cores (--benchmark_filter='threads:2$'
// on two cores). core/parallel.hpp's comments give the numbers and how the constants follow.
#include <seqnn/core/parallel.hpp>
#include <seqnn/core/types.hpp>

#include <benchmark/benchmark.h>

namespace {

using namespace seqnn;

void BM_ForkJoin(benchmark::State& state) {
    const int threads = static_cast<int>(state.range(0));
    int sink = 0;
    for (auto _ : state) {
        parallel_team(threads, [&](int thread, int) {
            if (thread == 0) ++sink;
        });
        benchmark::DoNotOptimize(sink);
    }
}
BENCHMARK(BM_ForkJoin)->ArgName("threads")->Arg(2)->Arg(4)->Arg(8)->Arg(16)->UseRealTime();

void BM_Barrier(benchmark::State& state) {
    const int threads = static_cast<int>(state.range(0));
    constexpr int kBarriers = 1000;
    for (auto _ : state) {
        parallel_team(threads, [&](int, int team) {
            for (int i = 0; i < kBarriers; ++i) team_barrier(team);
        });
    }
    state.SetItemsProcessed(state.iterations() * kBarriers);  // items_per_second: barriers per second
}
BENCHMARK(BM_Barrier)->ArgName("threads")->Arg(2)->Arg(4)->Arg(8)->Arg(16)->UseRealTime();

void BM_StreamedAdd(benchmark::State& state) {
    const Index n = state.range(0);
    const int threads = static_cast<int>(state.range(1));
    Matrix<float> m = Matrix<float>::Ones(n / 64, 64), a = Matrix<float>::Ones(n / 64, 64);
    for (auto _ : state) {
        parallel_blocks(threads, m.rows(), [&](Index r0, Index r1) {
            m.middleRows(r0, r1 - r0) += a.middleRows(r0, r1 - r0);
        });
        benchmark::DoNotOptimize(m.data());
    }
    state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_StreamedAdd)
    ->ArgNames({"n", "threads"})
    ->ArgsProduct({{1 << 12, 1 << 13, 1 << 14, 1 << 15, 1 << 16, 1 << 18, 1 << 20}, {1, 2, 4, 8, 16}})
    ->UseRealTime();

void BM_SmallGemm(benchmark::State& state) {
    const Index n = state.range(0);
    const Matrix<float> a = Matrix<float>::Ones(n, n), b = Matrix<float>::Ones(n, n);
    Matrix<float> c(n, n);
    Eigen::setNbThreads(1);
    for (auto _ : state) {
        c.noalias() = a * b;
        benchmark::DoNotOptimize(c.data());
    }
    state.counters["FLOPS"] =
        benchmark::Counter(2.0 * double(n * n * n) * double(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_SmallGemm)->ArgName("n")->Arg(64)->Arg(128);

}  // namespace
