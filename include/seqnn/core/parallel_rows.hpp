// Splitting a loop over matrix rows (or columns, or flat elements) across OpenMP
// threads: the one rule for when it pays, and the loops themselves. It needs only
// Eigen, so that core/types.hpp can use it; with OpenMP off everything runs on one
// thread.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace seqnn {

// Whether a loop over `rows` rows of `cols` elements should be split across
// threads: OpenMP is on, several threads are available, no parallel region is
// running already (regions never nest), and there is enough work (32k elements)
// to pay for starting one.
inline bool worth_parallel(Eigen::Index rows, Eigen::Index cols) {
#ifdef _OPENMP
    return rows > 1 && rows * cols >= (Eigen::Index(1) << 15) && omp_get_max_threads() > 1 && !omp_in_parallel();
#else
    (void)rows;
    (void)cols;
    return false;
#endif
}

// Calls body(begin, end) on contiguous blocks of [0, rows), one block per
// thread, or once on the whole range when worth_parallel says no. Inside body,
// Eigen runs single-threaded (it does not nest in a running region).
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

namespace detail {
// Thread `id`'s share of [0, count) when the range is cut only at multiples of 16 (a
// cache line of floats, and a whole number of SIMD packets): [begin, end), maybe empty.
inline std::pair<Eigen::Index, Eigen::Index> aligned_share(Eigen::Index count, Eigen::Index id, Eigen::Index threads) {
    constexpr Eigen::Index width = 16;
    const Eigen::Index chunks = (count + width - 1) / width;
    return {std::min(count, chunks * id / threads * width), std::min(count, chunks * (id + 1) / threads * width)};
}
}  // namespace detail

// Calls body(begin, end) on contiguous blocks of the columns [0, cols) of a matrix of
// `rows` rows, one block per thread, or once on all columns when worth_parallel says
// no. Blocks start at multiples of 16 columns whatever the thread count, so a column's
// work never depends on how many threads run.
template <typename Body>
void parallel_column_blocks(Eigen::Index cols, Eigen::Index rows, const Body& body) {
#ifdef _OPENMP
    if (cols > 16 && worth_parallel(rows, cols)) {
#pragma omp parallel
        {
            const auto [begin, end] = detail::aligned_share(cols, omp_get_thread_num(), omp_get_num_threads());
            if (end > begin) body(begin, end);
        }
        return;
    }
#endif
    (void)rows;
    body(Eigen::Index(0), cols);
}

// The same over the `size` elements of a flat array: blocks start at multiples of 16
// elements, so an elementwise loop takes the same vector or scalar path for each
// element, and gives bitwise the same result, whatever the thread count.
template <typename Body>
void parallel_element_blocks(Eigen::Index size, const Body& body) {
#ifdef _OPENMP
    if (size > 16 && worth_parallel(size, 1)) {
#pragma omp parallel
        {
            const auto [begin, end] = detail::aligned_share(size, omp_get_thread_num(), omp_get_num_threads());
            if (end > begin) body(begin, end);
        }
        return;
    }
#endif
    body(Eigen::Index(0), size);
}

}  // namespace seqnn
