// Scratch buffers aligned as Eigen aligns its own matrices: the one aligned allocator.
//
// Vectorised reductions (row sums, maxima) start with scalar steps up to the first aligned
// address, so their rounding depends on a buffer's address modulo the vector width: a fixed
// alignment makes every call give the same bits, wherever the heap puts the buffer. The
// memory comes from the aligned operator new, so a program that counts its heap (the tests'
// allocation_counter.hpp) sees it.
#pragma once

#include <Eigen/Core>

#include <cstddef>
#include <new>
#include <vector>

namespace seqnn {

/// A std::allocator that aligns to EIGEN_MAX_ALIGN_BYTES (at least 16 bytes).
template <typename T>
struct AlignedAllocator {
    using value_type = T;  ///< the element type
    /// The alignment of every block, in bytes.
    static constexpr std::align_val_t alignment{EIGEN_MAX_ALIGN_BYTES > 16 ? EIGEN_MAX_ALIGN_BYTES : 16};
    AlignedAllocator() = default;
    /// Rebinding: one allocator for any element type.
    template <typename Other>
    AlignedAllocator(const AlignedAllocator<Other>&) {}
    /// n elements, uninitialised.
    T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), alignment)); }
    /// Frees what allocate returned.
    void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, alignment); }
    /// Every instance can free every other's blocks.
    bool operator==(const AlignedAllocator&) const { return true; }
};

/// A std::vector whose data() is aligned as Eigen aligns its matrices.
template <typename T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

}  // namespace seqnn
