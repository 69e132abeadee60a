// Splitting a loop over matrix rows (or columns, or flat elements) across OpenMP
// threads: the one rule for when it pays, and the loops themselves. It needs only
// Eigen, so that core/types.hpp can use it; with OpenMP off everything runs on one
// thread.
#pragma once

#include <Eigen/Core>

#include <algorithm>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace seqnn {

/// Whether a loop over `rows` rows of `cols` elements should be split across
/// threads: OpenMP is on, several threads are available, no parallel region is
/// running already (regions never nest), and there is enough work (32k elements)
/// to pay for starting one.
inline bool worth_parallel(Eigen::Index rows, Eigen::Index cols) {
#ifdef _OPENMP
    return rows > 1 && rows * cols >= (Eigen::Index(1) << 15) && omp_get_max_threads() > 1 && !omp_in_parallel();
#else
    (void)rows;
    (void)cols;
    return false;
#endif
}

/// Calls body(begin, end) on contiguous blocks of [0, rows), one block per
/// thread, or once on the whole range when worth_parallel says no. Inside body,
/// Eigen runs single-threaded (it does not nest in a running region).
template <typename Body>
void parallel_row_blocks(Eigen::Index rows, Eigen::Index cols, const Body& body) {
#ifdef _OPENMP
    if (worth_parallel(rows, cols)) {
#pragma omp parallel
        {
            const Eigen::Index threads = omp_get_num_threads(), id = omp_get_thread_num();
            const Eigen::Index begin = rows * id / threads, end = rows * (id + 1) / threads;
            if (end > begin) body(begin, end);
        }
        return;
    }
#endif
    (void)cols;
    body(Eigen::Index(0), rows);
}

/// Calls body(begin, end) on contiguous blocks of [0, count), one block per thread, or
/// once on the whole range when worth_parallel says no; each item is `item_size`
/// elements (a column of that many rows, or 1 for a flat array). Blocks start at
/// multiples of 16 items (a cache line of floats, whole SIMD packets) whatever the
/// thread count, so each item takes the same code path, and gives the same bits, on
/// any number of threads.
template <typename Body>
void parallel_aligned_blocks(Eigen::Index count, Eigen::Index item_size, const Body& body) {
#ifdef _OPENMP
    constexpr Eigen::Index width = 16;
    if (count > width && worth_parallel(count, item_size)) {
        const Eigen::Index chunks = (count + width - 1) / width;
#pragma omp parallel
        {
            const Eigen::Index threads = omp_get_num_threads(), id = omp_get_thread_num();
            const Eigen::Index begin = std::min(count, chunks * id / threads * width);
            const Eigen::Index end = std::min(count, chunks * (id + 1) / threads * width);
            if (end > begin) body(begin, end);
        }
        return;
    }
#endif
    (void)item_size;
    body(Eigen::Index(0), count);
}

}  // namespace seqnn
