// One switch for the library's threads. With OpenMP off everything runs on one thread.
#pragma once

#include "seqnn/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace seqnn {

// Sets the thread count for seqnn's own parallel loops and for Eigen's GEMMs.
inline void set_num_threads(int n) {
    if (n < 1) n = 1;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    Eigen::setNbThreads(n);
}

// The number of threads a parallel region started now would use (1 without OpenMP).
inline int num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

inline bool openmp_enabled() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

// Whether a loop over `rows` rows of `cols` elements should be split across
// threads: OpenMP is on, several threads are available, no parallel region is
// running already (regions never nest), and there is enough work (32k elements)
// to pay for starting one.
inline bool worth_parallel(Index rows, Index cols) {
#ifdef _OPENMP
    return rows > 1 && rows * cols >= (Index(1) << 15) && omp_get_max_threads() > 1 && !omp_in_parallel();
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
void parallel_row_blocks(Index rows, Index cols, const Body& body) {
#ifdef _OPENMP
    if (worth_parallel(rows, cols)) {
#pragma omp parallel
        {
            const Index threads = omp_get_num_threads(), id = omp_get_thread_num();
            const Index begin = rows * id / threads, end = rows * (id + 1) / threads;
            if (end > begin) body(begin, end);
        }
        return;
    }
#endif
    (void)cols;
    body(Index(0), rows);
}

// m += addend (N, D), split by rows across threads.
template <typename Scalar>
void parallel_add(MatrixRef<Scalar> m, ConstMatrixRef<Scalar> addend) {
    parallel_row_blocks(m.rows(), m.cols(), [&](Index r0, Index r1) {
        m.middleRows(r0, r1 - r0) += addend.middleRows(r0, r1 - r0);
    });
}

}  // namespace seqnn
