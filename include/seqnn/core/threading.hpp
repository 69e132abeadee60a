// One switch for the library's threads. With OpenMP off everything runs on one thread.
#pragma once

#include "seqnn/core/parallel_rows.hpp"
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

// m += addend (N, D), split by rows across threads.
template <typename Scalar>
void parallel_add(MatrixRef<Scalar> m, ConstMatrixRef<Scalar> addend) {
    parallel_row_blocks(m.rows(), m.cols(), [&](Index r0, Index r1) {
        m.middleRows(r0, r1 - r0) += addend.middleRows(r0, r1 - r0);
    });
}

}  // namespace seqnn
