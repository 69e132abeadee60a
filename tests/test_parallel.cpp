// core/parallel.hpp: the one loop (parallel_for, parallel_blocks), the one rule
// (threads_for), the team (parallel_team, team_barrier) and the dynamic item loop
// (parallel_items); with OpenMP and without (the CI's no-OpenMP stage builds this file).
#include <seqnn/core/parallel.hpp>
#include <seqnn/core/types.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <utility>
#include <vector>

namespace {

using seqnn::Index;

// Restores the thread count a test changed.
struct ThreadCount {
    int before = seqnn::num_threads();
    explicit ThreadCount(int n) { seqnn::set_num_threads(n); }
    ~ThreadCount() { seqnn::set_num_threads(before); }
};

// The blocks body was called on, sorted by their start.
struct Blocks {
    std::mutex lock;
    std::vector<std::pair<Index, Index>> seen;
    void add(Index begin, Index end) {
        std::lock_guard<std::mutex> guard(lock);
        seen.emplace_back(begin, end);
    }
    std::vector<std::pair<Index, Index>> sorted() {
        std::sort(seen.begin(), seen.end());
        return seen;
    }
};

// Every item of [0, count) in exactly one non-empty block; blocks contiguous, in order.
void expect_exact_cover(std::vector<std::pair<Index, Index>> blocks, Index count, Index align) {
    Index next = 0;
    for (const auto& [begin, end] : blocks) {
        EXPECT_EQ(begin, next) << "a gap or an overlap before " << begin;
        EXPECT_LT(begin, end) << "an empty block";
        EXPECT_EQ(begin % align, 0) << "block at " << begin << " not aligned to " << align;
        next = end;
    }
    EXPECT_EQ(next, count);
}

TEST(ParallelBlocks, CoverTheRangeExactlyOnceForAnyThreadCountAndSize) {
    for (const int threads : {1, 2, 3, 4, 7}) {
        const ThreadCount guard(threads);
        for (const Index count : {Index(1), Index(2), Index(5), Index(16), Index(17), Index(1000), Index(4099)}) {
            Blocks blocks;
            seqnn::parallel_blocks(threads, count, [&](Index b, Index e) { blocks.add(b, e); });
            expect_exact_cover(blocks.sorted(), count, 1);
            std::vector<std::atomic<int>> hits(static_cast<std::size_t>(count));
            seqnn::parallel_blocks(threads, count, [&](Index b, Index e) {
                for (Index i = b; i < e; ++i) hits[static_cast<std::size_t>(i)].fetch_add(1);
            });
            for (Index i = 0; i < count; ++i)
                EXPECT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << "item " << i << " of " << count;
        }
    }
}

TEST(ParallelBlocks, AlignedBlocksStartAtMultiplesOfTheAlignment) {
    for (const int threads : {2, 3, 4, 8}) {
        const ThreadCount guard(threads);
        for (const Index align : {Index(4), Index(16)}) {
            for (const Index count : {Index(15), Index(16), Index(33), Index(100), Index(1001)}) {
                Blocks blocks;
                seqnn::parallel_blocks(threads, count, [&](Index b, Index e) { blocks.add(b, e); }, align);
                const auto seen = blocks.sorted();
                expect_exact_cover(seen, count, align);
                // Never more blocks than aligned chunks, nor than threads.
                EXPECT_LE(Index(seen.size()), std::min<Index>(threads, (count + align - 1) / align));
            }
        }
    }
}

TEST(ParallelBlocks, NothingToDoCallsNothing) {
    int calls = 0;
    seqnn::parallel_blocks(4, 0, [&](Index, Index) { ++calls; });
    seqnn::parallel_for(0, 1e9, [&](Index, Index) { ++calls; });
    EXPECT_EQ(calls, 0);
}

TEST(ParallelFor, SmallWorkRunsOnceOnTheCallingThread) {
    const ThreadCount guard(4);
    Blocks blocks;
    // 1000 items of one flop: far below kMinWorkPerThread.
    seqnn::parallel_for(1000, 1.0, [&](Index b, Index e) { blocks.add(b, e); });
    ASSERT_EQ(blocks.seen.size(), 1u);
    EXPECT_EQ(blocks.seen[0], std::make_pair(Index(0), Index(1000)));
}

TEST(ParallelFor, OneThreadRunsOnceWhateverTheWork) {
    const ThreadCount guard(1);
    Blocks blocks;
    seqnn::parallel_for(1 << 20, 1e6, [&](Index b, Index e) { blocks.add(b, e); }, 16);
    ASSERT_EQ(blocks.seen.size(), 1u);
    EXPECT_EQ(blocks.seen[0], std::make_pair(Index(0), Index(1) << 20));
}

TEST(ParallelFor, LargeWorkCoversTheRangeInAlignedBlocks) {
    const ThreadCount guard(4);
    const Index count = 100003;
    Blocks blocks;
    seqnn::parallel_for(count, seqnn::streamed_work(64), [&](Index b, Index e) { blocks.add(b, e); }, 16);
    const auto seen = blocks.sorted();
    expect_exact_cover(seen, count, 16);
    if (seqnn::openmp_enabled()) {
        EXPECT_GT(seen.size(), 1u) << "6.4M streamed elements on 4 threads should split";
    } else {
        EXPECT_EQ(seen.size(), 1u);
    }
}

TEST(ThreadsFor, GivesEachThreadAtLeastTheMinimumWork) {
    const ThreadCount guard(8);
    const int available = seqnn::num_threads();  // 1 without OpenMP
    EXPECT_EQ(seqnn::threads_for(0), 1);
    EXPECT_EQ(seqnn::threads_for(seqnn::kMinWorkPerThread * 1.99), 1);
    EXPECT_EQ(seqnn::threads_for(seqnn::kMinWorkPerThread * 2), std::min(2, available));
    EXPECT_EQ(seqnn::threads_for(seqnn::kMinWorkPerThread * 5.5), std::min(5, available));
    EXPECT_EQ(seqnn::threads_for(seqnn::kMinWorkPerThread * 100), std::min(8, available));
    EXPECT_EQ(seqnn::threads_for(seqnn::kMinWorkPerThread * 100, 3), std::min(3, available));  // 3 items
    EXPECT_EQ(seqnn::threads_for(seqnn::kMinWorkPerBarrier * 4, 100, seqnn::kMinWorkPerBarrier),
              std::min(4, available));
    // The streamed pass that two threads share from 2^14 elements a thread.
    EXPECT_EQ(seqnn::threads_for(seqnn::streamed_work(Index(1) << 15)), std::min(2, available));
    EXPECT_EQ(seqnn::threads_for(seqnn::streamed_work((Index(1) << 15) - 1)), 1);
}

TEST(ParallelTeam, EveryThreadRunsAndBarriersOrderThePhases) {
    const ThreadCount guard(3);
    const int threads = seqnn::openmp_enabled() ? 3 : 1;
    std::vector<int> phase1(3, 0), seen_by(3, 0);
    int team_seen = 0;
    seqnn::parallel_team(3, [&](int thread, int team) {
        if (thread == 0) team_seen = team;
        phase1[static_cast<std::size_t>(thread)] = thread + 1;
        seqnn::team_barrier(team);
        // After the barrier every thread sees the whole team's phase 1.
        int sum = 0;
        for (int t = 0; t < team; ++t) sum += phase1[static_cast<std::size_t>(t)];
        seen_by[static_cast<std::size_t>(thread)] = sum;
    });
    EXPECT_EQ(team_seen, threads);
    const int expected = threads * (threads + 1) / 2;
    for (int t = 0; t < threads; ++t) EXPECT_EQ(seen_by[static_cast<std::size_t>(t)], expected);
}

TEST(ParallelItems, RunsEveryItemOnceWithAThreadIdBelowTheTeamSize) {
    const ThreadCount guard(4);
    const Index items = 257;
    std::vector<std::atomic<int>> hits(static_cast<std::size_t>(items));
    std::atomic<int> bad_thread{0};
    seqnn::parallel_items(4, items, [&](Index item, int thread) {
        hits[static_cast<std::size_t>(item)].fetch_add(1);
        if (thread < 0 || thread >= 4) bad_thread.fetch_add(1);
    });
    for (Index i = 0; i < items; ++i) EXPECT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << "item " << i;
    EXPECT_EQ(bad_thread.load(), 0);
}

#ifdef _OPENMP
TEST(ParallelFor, InsideAParallelRegionRunsOnceOnTheCallingThread) {
    const ThreadCount guard(2);
    std::vector<int> calls(2, 0);
    std::vector<int> threads_inside(2, 0);
#pragma omp parallel num_threads(2)
    {
        const int me = omp_get_thread_num();
        threads_inside[static_cast<std::size_t>(me)] = seqnn::threads_for(1e12);
        seqnn::parallel_for(1 << 20, 1e6, [&](Index b, Index e) {
            EXPECT_EQ(b, 0);
            EXPECT_EQ(e, Index(1) << 20);
            ++calls[static_cast<std::size_t>(me)];
        });
    }
    EXPECT_EQ(calls, std::vector<int>({1, 1}));
    EXPECT_EQ(threads_inside, std::vector<int>({1, 1}));
}
#endif

}  // namespace
