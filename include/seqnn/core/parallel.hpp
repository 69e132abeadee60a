// Splitting work across OpenMP threads: the one rule for when it pays (threads_for), the
// one loop (parallel_for), and a team of threads that wait for each other at barriers
// (parallel_team), for the time loops that cannot be cut into independent blocks.
// Every parallel region in seqnn starts here. It needs only Eigen, so that core/types.hpp
// can use it; with OpenMP off everything runs on the calling thread.
//
// The rule: a thread must get at least kMinWorkPerThread flops of work to pay for a
// region's fork and join, or kMinWorkPerBarrier between two barriers of a team already
// running. Work is counted in flops of vectorised arithmetic; a pass that streams
// elements through memory counts kStreamedElementWork flops an element.
//
// Where the constants come from (bench/bench_parallel.cpp, medians of 3, idle machines;
// a 2-core AVX-512 VM and a 16-core AVX2 Xeon):
//   fork + join of an empty region    1.0 us (2 threads), 1.2 / 2.0 / 2.6 / 4.5 us (2/4/8/16)
//   one barrier of a running team     0.32 us (2 threads), 0.43 / 0.62 / 1.1 / 1.7 us
//   one core's small GEMM             130 Gflop/s (AVX-512), 50-74 Gflop/s (AVX2)
//   one core's streamed add           0.08-0.11 ns an element in cache, 0.28-0.34 from memory
//   two threads beat one on m += a    from 24k-32k elements (12k-16k a thread), both machines
// kMinWorkPerThread = 2^19 flops is 4-8 us of one core's arithmetic: about 2-4 times an
// idle fork and join, the margin for a busy machine, where a thread waits for a core (a
// small decoding step ran 14x slower on two threads than on one). kStreamedElementWork
// = 32 flops is an element from memory (0.28-0.34 ns x 64-130 Gflop/s, rounded to a power
// of two); it puts the break-even of a streamed pass at 2^14 elements a thread, the
// measured one. On 16 cores a 64k-element add then takes 4 threads (4.0 us, against 7.5 on
// one and 4.7 on sixteen). kMinWorkPerBarrier = 2^16 is 0.5-1 us of work, about a
// barrier's cost: the threads of a running team spin, nobody waits for a core.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace seqnn {

/// Work, in flops, that each thread of a parallel region must get for the region to pay
/// for its fork and join (see the top of this file for the measurements).
inline constexpr double kMinWorkPerThread = double(1 << 19);

/// Work, in flops, that each thread of a running team must get between two barriers.
inline constexpr double kMinWorkPerBarrier = double(1 << 16);

/// The work of one element of a memory-bound pass (a copy, an add, a norm's row), in flops.
inline constexpr double kStreamedElementWork = 32;

/// Whether the calling thread is inside a parallel region (regions never nest: inside one
/// everything runs on the calling thread).
inline bool in_parallel_region() {
#ifdef _OPENMP
    return omp_in_parallel() != 0;
#else
    return false;
#endif
}

/// The number of threads a parallel region started now would use (1 without OpenMP).
inline int num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/// Sets the thread count for seqnn's own parallel loops and for Eigen's GEMMs.
inline void set_num_threads(int n) {
    if (n < 1) n = 1;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    Eigen::setNbThreads(n);
}

/// Whether seqnn was compiled with OpenMP.
inline bool openmp_enabled() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

/// The one rule: how many threads `work` flops, cut into at most `max_items` independent
/// pieces, should run on. Each thread gets at least `min_work` (kMinWorkPerThread for a
/// region of its own, kMinWorkPerBarrier for each stretch between barriers of a running
/// team); never more threads than pieces or than num_threads(); 1 inside a parallel region.
inline int threads_for(double work, Eigen::Index max_items = std::numeric_limits<Eigen::Index>::max(),
                       double min_work = kMinWorkPerThread) {
    if (in_parallel_region()) return 1;
    const double by_work = work / min_work;
    const double threads = std::min({double(num_threads()), double(max_items), by_work});
    return threads < 2 ? 1 : static_cast<int>(threads);
}

/// Calls body(begin, end) on contiguous blocks of [0, count) that cover it exactly once,
/// one block per thread of `threads` (1 or less: once, on the calling thread, with no
/// parallel region). Blocks start at multiples of `align` items (whole SIMD packets or
/// cache lines), so that an item takes the same code path, and gives the same bits, on any
/// number of threads. Inside body Eigen runs single-threaded (it does not nest in a
/// running region).
template <typename Body>
void parallel_blocks(int threads, Eigen::Index count, const Body& body, Eigen::Index align = 1) {
    using Eigen::Index;
    if (count <= 0) return;
    if (align < 1) align = 1;
    const Index chunks = (count + align - 1) / align;
#ifdef _OPENMP
    if (threads > 1 && chunks > 1 && !in_parallel_region()) {
#pragma omp parallel num_threads(static_cast<int>(std::min<Index>(threads, chunks)))
        {
            const Index team = omp_get_num_threads(), id = omp_get_thread_num();
            const Index begin = std::min(count, chunks * id / team * align);
            const Index end = std::min(count, chunks * (id + 1) / team * align);
            if (end > begin) body(begin, end);
        }
        return;
    }
#endif
    (void)threads;
    (void)chunks;
    body(Index(0), count);
}

/// The loop every threaded pass uses: body(begin, end) on contiguous blocks of [0, count)
/// (see parallel_blocks), on as many threads as threads_for gives `count` items of
/// `item_work` flops each.
template <typename Body>
void parallel_for(Eigen::Index count, double item_work, const Body& body, Eigen::Index align = 1) {
    const Eigen::Index chunks = (count + std::max<Eigen::Index>(align, 1) - 1) / std::max<Eigen::Index>(align, 1);
    parallel_blocks(threads_for(double(count) * item_work, chunks), count, body, align);
}

/// The work of streaming `elements` elements through memory once, in flops.
constexpr double streamed_work(Eigen::Index elements) { return double(elements) * kStreamedElementWork; }

/// Runs body(thread, team) on a team of `threads` threads started together, thread in
/// [0, team); once, as body(0, 1), on the calling thread when threads <= 1, inside a
/// running region, or without OpenMP. Inside, team_barrier(team) waits for the whole team.
template <typename Body>
void parallel_team(int threads, const Body& body) {
#ifdef _OPENMP
    if (threads > 1 && !in_parallel_region()) {
#pragma omp parallel num_threads(threads)
        body(omp_get_thread_num(), omp_get_num_threads());
        return;
    }
#endif
    (void)threads;
    body(0, 1);
}

/// Waits for every thread of the team running parallel_team's body (nothing for a team of 1).
inline void team_barrier([[maybe_unused]] int team) {
#ifdef _OPENMP
    if (team > 1) {
#pragma omp barrier
    }
#endif
}

/// Runs body(item, thread) for every item in [0, items) on a team of `threads`, each
/// thread taking the next item when it finishes one (for items of unequal cost); thread in
/// [0, threads) names the calling thread's scratch. A plain loop on one thread.
template <typename Body>
void parallel_items(int threads, Eigen::Index items, const Body& body) {
    if (threads <= 1 || items <= 1 || in_parallel_region()) {
        for (Eigen::Index item = 0; item < items; ++item) body(item, 0);
        return;
    }
    std::atomic<Eigen::Index> next{0};
    parallel_team(static_cast<int>(std::min<Eigen::Index>(threads, items)), [&](int thread, int) {
        for (Eigen::Index item = next.fetch_add(1, std::memory_order_relaxed); item < items;
             item = next.fetch_add(1, std::memory_order_relaxed))
            body(item, thread);
    });
}

}  // namespace seqnn
