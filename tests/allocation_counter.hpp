// Replaces the global operator new and delete (plain and aligned) of one test
// executable, and counts the calls and bytes requested while g_counting is on.
// Include it from exactly one file of an executable. Eigen's own matrices go
// through malloc, not operator new: tests that must see them also switch on
// Eigen's runtime malloc check (see test_step_allocation.cpp).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace {
std::atomic<long> g_allocations{0};   // calls while counting
std::atomic<long long> g_bytes{0};    // bytes requested while counting
std::atomic<bool> g_counting{false};

void count_allocation(std::size_t size) {
    if (!g_counting.load(std::memory_order_relaxed)) return;
    g_allocations.fetch_add(1, std::memory_order_relaxed);
    g_bytes.fetch_add(static_cast<long long>(size), std::memory_order_relaxed);
}

void* counted_alloc(std::size_t size) {
    count_allocation(size);
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    throw std::bad_alloc();
}

void* counted_aligned_alloc(std::size_t size, std::align_val_t al) {
    count_allocation(size);
    const std::size_t a = static_cast<std::size_t>(al);
    if (void* p = std::aligned_alloc(a, (size + a - 1) / a * a)) return p;
    throw std::bad_alloc();
}
}  // namespace

void* operator new(std::size_t size) { return counted_alloc(size); }
void* operator new[](std::size_t size) { return counted_alloc(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void* operator new(std::size_t size, std::align_val_t al) { return counted_aligned_alloc(size, al); }
void* operator new[](std::size_t size, std::align_val_t al) { return counted_aligned_alloc(size, al); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

#ifdef EIGEN_RUNTIME_NO_MALLOC  // eigen_malloc_counter.hpp was included first
namespace {
// Counts from here: operator new, and Eigen's allocations through its runtime check.
void start_counting() {
    g_allocations = 0;
    seqnn_test::eigen_failed_checks = 0;
    Eigen::internal::set_is_malloc_allowed(false);
    g_counting = true;
}

// The allocations through operator new plus Eigen's heap allocations since start_counting.
long stop_counting() {
    g_counting = false;
    Eigen::internal::set_is_malloc_allowed(true);
    return g_allocations.load() + seqnn_test::eigen_failed_checks.load();
}
}  // namespace
#endif
