// Counts Eigen's own heap allocations instead of aborting on them. Eigen's matrices
// allocate through malloc, which allocation_counter.hpp's operator new does not see;
// with EIGEN_RUNTIME_NO_MALLOC Eigen checks each allocation at run time against
// set_is_malloc_allowed, and the eigen_assert below counts a failed check.
// Include it first in a test file, before any Eigen or seqnn header, and
// allocation_counter.hpp after them: its start_counting / stop_counting then count both.
#pragma once

#define EIGEN_RUNTIME_NO_MALLOC
#include <atomic>

namespace seqnn_test {
inline std::atomic<long> eigen_failed_checks{0};
}

#define eigen_assert(x)                                         \
    do {                                                        \
        if (!(x)) seqnn_test::eigen_failed_checks.fetch_add(1); \
    } while (false)
