// Scratch matrices that live on the calling thread and are reused from call to call.
//
// A whole-sequence layer needs large temporaries for one call only: minGRU's gate
// pre-activations are (B*T, 2E), 32 MiB at B=16, T=1024, E=256. Allocating them
// afresh every call is not free: glibc hands blocks of 32 MiB and more straight to
// the kernel (mmap) and returns them on free, so every call page-faults its
// temporaries in again, a large share of a layer's time on many threads. Scratch
// keeps one growing buffer per (thread, slot) instead.
//
// Rules: a slot's contents are valid until the same thread asks for that slot
// again, so a layer uses its slots (A, B, C) within one call and never across a
// call into another layer that might use them. Each thread holds at most the
// largest size it has asked for. The buffers are aligned as Eigen aligns its own
// matrices (core/aligned.hpp), so results do not depend on where the heap put them.
#pragma once

#include "seqnn/core/aligned.hpp"
#include "seqnn/core/types.hpp"

#include <array>
#include <cstddef>
#include <vector>

namespace seqnn {

/// The slots, one per concurrent use inside a layer's call.
enum class ScratchSlot { A = 0, B = 1, C = 2, Count = 3 };

namespace scratch_detail {
template <typename Scalar>
std::array<AlignedVector<Scalar>, static_cast<std::size_t>(ScratchSlot::Count)>& buffers() {
    thread_local std::array<AlignedVector<Scalar>, static_cast<std::size_t>(ScratchSlot::Count)> per_thread;
    return per_thread;
}
}  // namespace scratch_detail

/// A (rows, cols) row-major matrix in the calling thread's buffer for `slot`;
/// uninitialised. Its memory is reused by the next request for the same slot.
template <typename Scalar>
Eigen::Map<Matrix<Scalar>> scratch_matrix(ScratchSlot slot, Index rows, Index cols) {
    auto& buffer = scratch_detail::buffers<Scalar>()[static_cast<std::size_t>(slot)];
    const auto needed = static_cast<std::size_t>(rows * cols);
    if (buffer.size() < needed) {
        buffer = {};  // free the old block before taking the larger one
        buffer.reserve(needed);
        advise_huge_pages(buffer.data(), needed * sizeof(Scalar));  // before resize writes it
        buffer.resize(needed);
    }
    return Eigen::Map<Matrix<Scalar>>(buffer.data(), rows, cols);
}

// Activations passed from layer to layer. A composite layer's intermediate outputs (a
// norm's output that its mixer reads, one block's output that the next reads) are as large
// as the sequence and live only until the next layer has read them. Allocated and freed at
// every call, each would fault its pages in afresh: glibc maps blocks that large from the
// kernel, or trims them back, and a page fault takes a lock that every thread's faults
// share, so the cost grows with the thread count. A composite gives such a matrix back with
// recycle_matrix once it is dead, and a layer takes its output with reused_matrix, which
// hands back a recycled matrix of the same size when this thread has one. A few are kept
// per thread; small ones are not worth keeping.

namespace scratch_detail {
inline constexpr std::size_t kRecycled = 4;         // matrices kept per thread and scalar type
inline constexpr Index kMinRecycledSize = 1 << 16;  // elements: smaller ones are freed
template <typename Scalar>
std::vector<Matrix<Scalar>>& recycled() {
    thread_local std::vector<Matrix<Scalar>> per_thread;
    return per_thread;
}
}  // namespace scratch_detail

/// A (rows, cols) matrix, uninitialised: one that recycle_matrix gave back on this thread
/// if one has rows * cols elements, otherwise a new one.
template <typename Scalar>
Matrix<Scalar> reused_matrix(Index rows, Index cols) {
    auto& pool = scratch_detail::recycled<Scalar>();
    for (std::size_t i = pool.size(); i-- > 0;)
        if (pool[i].size() == rows * cols) {
            Matrix<Scalar> m = std::move(pool[i]);
            pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(i));
            m.resize(rows, cols);  // the same number of elements: no allocation
            return m;
        }
    return uninitialised_matrix<Scalar>(rows, cols);
}

/// Gives a matrix that is no longer needed to this thread's recycled ones, for reused_matrix;
/// the oldest is freed when more than a few are kept.
template <typename Scalar>
void recycle_matrix(Matrix<Scalar>&& m) {
    if (m.size() < scratch_detail::kMinRecycledSize) return;
    auto& pool = scratch_detail::recycled<Scalar>();
    if (pool.size() == scratch_detail::kRecycled) pool.erase(pool.begin());
    pool.push_back(std::move(m));
}

}  // namespace seqnn
