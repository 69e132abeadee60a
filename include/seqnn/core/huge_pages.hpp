// Transparent huge pages for the large buffers that a whole-sequence call walks.
//
// A sequence tensor is (B*T, F) with each sequence's T rows together, so one step of a
// time loop touches B rows that lie T*F elements apart: at B = 16, T = 1024 and an LSTM's
// F = 4H = 1024 floats, sixteen different 4 KiB pages per tensor per step, a new set every
// step, and nearly every row costs a TLB miss. A 2 MiB page holds 512 steps of such a row.
// Linux backs memory with huge pages when it asks for them (madvise MADV_HUGEPAGE) and
// transparent_hugepage is "madvise" (the usual default) or "always"; it ignores the request
// when it is "never". advise_huge_pages asks for the whole 2 MiB pages inside a buffer,
// before the buffer is first written. The buffers that take it are the ones a layer
// allocates once and refills: resized() (a Context's saved tensors), scratch_matrix,
// reused_matrix, and a recurrent layer's output. docs/design.md gives the measured gain.
// Defining SEQNN_NO_HUGE_PAGES turns it off; on other systems it does nothing.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__linux__) && !defined(SEQNN_NO_HUGE_PAGES)
#include <sys/mman.h>
#endif

namespace seqnn {

/// The size of a transparent huge page on x86-64 and the usual arm64 kernels.
inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

/// Buffers smaller than this are left alone: they hold at most one whole huge page.
inline constexpr std::size_t kMinHugePageBuffer = 2 * kHugePageBytes;

/// Asks the kernel to back the whole huge pages inside [data, data + bytes) with huge
/// pages from their first write on. A hint: it changes no contents, and nothing happens
/// when the system cannot or will not (small buffers, other systems, THP off).
inline void advise_huge_pages([[maybe_unused]] const void* data, [[maybe_unused]] std::size_t bytes) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE) && !defined(SEQNN_NO_HUGE_PAGES)
    if (data == nullptr || bytes < kMinHugePageBuffer) return;
    const auto begin = reinterpret_cast<std::uintptr_t>(data);
    const std::uintptr_t first = (begin + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
    const std::uintptr_t last = (begin + bytes) & ~(kHugePageBytes - 1);
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

}  // namespace seqnn
