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
        buffer.resize(needed);
    }
    return Eigen::Map<Matrix<Scalar>>(buffer.data(), rows, cols);
}

}  // namespace seqnn
