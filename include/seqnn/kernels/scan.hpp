// The linear recurrence h_t = a_t * h_{t-1} + b_t (element-wise), the kernel under
// minGRU and minLSTM, over B sequences of T steps with D channels stored as seqnn's
// (B*T, D) row-major matrices: row b*T + t is step t of sequence b. The engine the layers
// call:
//
//   scan_forward       h, h_last  <- a, b, h0
//   scan_backward      da, db, dh0 <- dh, dh_last, a, h, h0
//   scan_plan          how a call of these sizes runs (sequential, or which split, on how
//                      many threads, in how many pieces)
//
// Padded batches and direction: `lengths` (B values in [1, T], or empty for all T) ends
// sequence s after lengths[s] steps, as if a_t = 1 and b_t = 0 past its end, except that the
// ended rows are skipped, not computed: h_last holds its state at its own last step, and
// every output row past the end is zero. ScanOptions::reverse scans each sequence from its
// end (row lengths[s] - 1) down to row 0 instead: h_t = a_t * h_{t+1} + b_t, the reverse
// direction of a bidirectional layer; h0 then enters at the end and h_last is h at row 0.
// Inside the kernels each sequence is seen in scan order (Layout): a reversed one is the
// same rows with a negative stride, so both directions run the same code.
//
// The log-space form is kernels/log_scan.hpp; calls that take and return seqnn::Sequence
// are kernels/scan_sequence.hpp. These functions take Eigen::Ref views (so blocks of a
// wider GEMM output work without a copy) and need the scalar spelled out:
// scan_forward<float>(h, h_last, a, b, h0, B, T). An optional matrix (h0, h_last, dh_last,
// dh0) is passed as an empty one: Matrix<S>().
//
// Parallel algorithms (ScanMode::Parallel; docs/design.md, "The scan"):
// * Channels split: the B*D recurrences are independent, so threads take (sequence,
//   channel block) pairs and run time in order, SIMD over the block's channels. One
//   pass over memory. Chosen when B fills the threads or rows are wide enough to share.
// * Time split: for few long streams (B=1). Time is cut into pieces, one per thread:
//   (1) each piece scans from zero and keeps the product of its a's (the first piece
//       knows its carry and scans from it),
//   (2) carries pass from piece to piece: carry' = prod(a) * carry + local end,
//   (3) each piece adds prod(a up to t) * carry; this fix-up is shared out evenly over
//       all threads (the first piece has none), and stops where the added term has
//       become negligible next to h itself, so with forgetting gates it touches a few
//       rows only. The products are kept as a mantissa and a power of two, so that a
//       product far below float's range still carries a huge carry exactly.
//   Step (1) is one pass over memory; step (3) is a second pass at worst (a near 1).
//   ScanOptions::time_block cuts time into rounds of smaller pieces (one barrier each),
//   so that step (3) finds step (1)'s data in cache; one round is the default, since
//   every round costs a barrier.
// The reverse scan (backward) runs the same way, backwards in time.
// ScanSplit::Auto threads a call only when core/parallel.hpp's rule says it pays (the
// scan streams its operands: kStreamedElementWork an element). In linear space there is
// no exp/log and no division by a vanishing product, so fp32 stays accurate at any T
// (a in (0,1)). Never nests parallel regions: inside one it runs sequentially. Without
// OpenMP every mode runs the sequential code.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/core/types.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <initializer_list>
#include <limits>
#include <span>
#include <string>
#include <vector>

namespace seqnn {

/// Time in order on one thread, or one of the parallel splits.
enum class ScanMode { Sequential, Parallel };
/// How the parallel scan divides the work (docs/design.md, "The scan").
enum class ScanSplit { Auto, Channels, Time };

/// How scan_forward and scan_backward run.
struct ScanOptions {
    /// Sequential or parallel.
    ScanMode mode = ScanMode::Parallel;
    /// Parallel only. Auto: sequential unless threading pays (core/parallel.hpp's rule),
    /// Channels when B fills the threads (or rows are wide), Time otherwise. Channels or
    /// Time force that split on every thread, whatever the size. The log-space scan
    /// always splits over channels.
    ScanSplit split = ScanSplit::Auto;
    /// Steps per piece of the time split; 0: T / threads (one round). Smaller pieces run
    /// in rounds of `threads` pieces, one barrier per round.
    Index time_block = 0;
    /// Scans each sequence from its last step to its first, h_t = a_t * h_{t+1} + b_t (the
    /// reverse direction of a bidirectional layer). Unlike the fields above, it changes
    /// the result.
    bool reverse = false;
};

/// How a scan call runs, as scan_plan reports it.
struct ScanPlan {
    /// Channels or Time (never Auto). A sequential call reports Channels with one block.
    ScanSplit split = ScanSplit::Channels;
    /// Threads of the call's parallel region; 1: sequential, time in order on the calling
    /// thread, with no parallel region.
    int threads = 1;
    Index channel_width = 0;   ///< Channels: channels per block (whole cache lines; D when sequential)
    Index channel_blocks = 1;  ///< Channels: blocks per sequence, so B * channel_blocks work items
    Index piece_steps = 0;     ///< Time: steps per piece; `threads` pieces make a round
    Index pieces = 0;          ///< Time: pieces per sequence, ceil(T / piece_steps)

    /// Whether the call runs on the calling thread alone.
    bool sequential() const { return threads <= 1; }
};

namespace scan_detail {

// The rows of a row-major matrix whose rows are `stride` scalars apart.
template <typename S>
struct Rows {
    S* data = nullptr;
    Index stride = 0;
    S* row(Index r) const { return data + r * stride; }
    // The same rows from row r0 and channel c on.
    Rows at(Index r0, Index c) const { return {data + r0 * stride + c, stride}; }
};

template <typename S>
Rows<S> rows_of(MatrixRef<S>& m) {
    return {m.data(), m.outerStride()};
}
template <typename S>
Rows<const S> rows_of(const ConstMatrixRef<S>& m) {
    return {m.data(), m.outerStride()};
}
// Row b of an optional (B, D) matrix from channel c on, or nullptr when it is absent.
template <typename Ref>
auto state_row(Ref& m, Index b, Index c) -> decltype(m.data()) {
    return m.size() == 0 ? nullptr : m.data() + b * m.outerStride() + c;
}

template <typename S>
using Row = Eigen::Map<Eigen::Array<S, 1, Eigen::Dynamic>>;
template <typename S>
using CRow = Eigen::Map<const Eigen::Array<S, 1, Eigen::Dynamic>>;
template <typename S>
using Buf = Eigen::Array<S, 1, Eigen::Dynamic>;

// Where each sequence's steps lie: T rows per sequence in (B*T, D) matrices, the first
// length(s) of them real (all T without lengths), scanned first to last or, reversed, last
// to first. Kernels index a sequence's rows in scan order: row u of rows(m, s, c) is the
// u-th step the scan takes, so a reversed sequence is its real rows with a negative stride.
struct Layout {
    Index T = 0;
    std::span<const Index> lengths;
    bool reverse = false;

    Index length(Index s) const { return lengths.empty() ? T : lengths[static_cast<std::size_t>(s)]; }
    // Sequence s of m from channel c on, in scan order.
    template <typename S>
    Rows<S> rows(Rows<S> m, Index s, Index c) const {
        if (!reverse) return m.at(s * T, c);
        return {m.data + (s * T + length(s) - 1) * m.stride + c, -m.stride};
    }
    // Sets rows [length(s), T) of sequence s, channels [c, c + n), to `value`: the rows a scan skips.
    template <typename S>
    void fill_past_end(Rows<S> m, Index s, Index c, Index n, S value) const {
        for (Index t = length(s); t < T; ++t) Row<S>(m.row(s * T + t) + c, n).setConstant(value);
    }
};

constexpr Index kWideBlock = 2048;            // bytes of a row a thread must get for Auto to split channels

template <typename S>
ScanPlan make_plan(const ScanOptions& o, Index B, Index T, Index D, bool allow_time = true) {
    ScanPlan plan;
    plan.channel_width = D;
    if (o.mode != ScanMode::Parallel || B <= 0 || T <= 0 || D <= 0) return plan;
    // Auto: as many threads as the rule gives the whole pass; a forced split: all of them.
    const int threads = o.split == ScanSplit::Auto ? threads_for(streamed_work(B * T * D))
                                                   : (in_parallel_region() ? 1 : num_threads());
    if (threads <= 1) return plan;
    ScanSplit split = o.split;
    if (!allow_time) split = split == ScanSplit::Auto ? ScanSplit::Auto : ScanSplit::Channels;
    // Channel blocks are whole cache lines, at least two (one for the log space, which is compute-bound).
    const Index line = std::max<Index>(1, Index(64) / Index(sizeof(S)));
    const Index max_blocks = std::max<Index>(1, D / (allow_time ? 2 * line : line));
    if (split == ScanSplit::Auto) {
        // Channels when every thread gets whole sequences, or row segments of at least
        // kWideBlock bytes (long contiguous runs stream well); time otherwise. Splitting
        // a row of 1 KiB between threads streamed at half the speed of the time split.
        const Index per_sequence = (threads + B - 1) / B;
        const bool wide = per_sequence <= max_blocks && D / per_sequence * Index(sizeof(S)) >= kWideBlock;
        split = (!allow_time || B >= threads || wide || T < 8 * Index(threads)) ? ScanSplit::Channels
                                                                                : ScanSplit::Time;
    }
    if (split == ScanSplit::Channels) {
        // The fewest blocks per sequence that share the items out within 25% of even.
        const Index P = threads;
        Index blocks = 1;
        while (blocks < max_blocks && 4 * ((B * blocks + P - 1) / P * P) > 5 * B * blocks) ++blocks;
        plan.channel_width = ((D + blocks - 1) / blocks + line - 1) / line * line;  // rounded up to whole lines
        if (plan.channel_width > D) plan.channel_width = D;
        plan.channel_blocks = (D + plan.channel_width - 1) / plan.channel_width;
        plan.split = ScanSplit::Channels;
        plan.threads = static_cast<int>(std::min<Index>(threads, B * plan.channel_blocks));
    } else {
        // One round of P pieces by default: every round costs a barrier, which cache-sized
        // rounds (L2 or L3) do not win back.
        const Index rows = std::min(o.time_block > 0 ? o.time_block : T, (T + threads - 1) / threads);
        plan.split = ScanSplit::Time;
        plan.piece_steps = rows;
        plan.pieces = (T + rows - 1) / rows;
        plan.threads = static_cast<int>(std::min<Index>(threads, plan.pieces));
    }
    if (plan.threads <= 1) plan = ScanPlan{ScanSplit::Channels, 1, D, 1, 0, 0};
    return plan;
}

// Runs item(s, c, n) for the plan's B * channel_blocks work items: sequence s, channels
// [c, c + n) of D. Contiguous runs of items go to one thread each; sequential, a plain loop.
template <typename Item>
void for_each_channel_block(const ScanPlan& plan, Index B, Index D, const Item& item) {
    parallel_blocks(plan.threads, B * plan.channel_blocks, [&](Index i0, Index i1) {
        for (Index i = i0; i < i1; ++i) {
            const Index c = (i % plan.channel_blocks) * plan.channel_width;
            item(i / plan.channel_blocks, c, std::min(plan.channel_width, D - c));
        }
    });
}

// ---------------------------------------------------------------------------------
// Linear-space row kernels. Every Rows argument already points at (row 0 of the
// sequence, first channel of the block); n is the block's width; r indexes time.

// h_r = a_r * h_{r-1} + b_r for r in [r0, r1), from h_{r0-1} = carry (nullptr: zero).
template <typename S>
void forward_run(Rows<S> h, Rows<const S> a, Rows<const S> b, Index r0, Index r1, Index n, const S* carry) {
    if (r0 >= r1) return;
    if (carry)
        Row<S>(h.row(r0), n) = CRow<S>(a.row(r0), n) * CRow<S>(carry, n) + CRow<S>(b.row(r0), n);
    else
        Row<S>(h.row(r0), n) = CRow<S>(b.row(r0), n);
    for (Index r = r0 + 1; r < r1; ++r)
        Row<S>(h.row(r), n) = CRow<S>(a.row(r), n) * CRow<S>(h.row(r - 1), n) + CRow<S>(b.row(r), n);
}

// Running products of a's shrink geometrically when |a| < 1, below the smallest float
// long before the carry they multiply stops mattering: with a carry near 1e37, a product
// of 1e-32 still adds 1e5 to h. So the time split keeps each product as p * 2^e, p a
// scalar and e an integer (stored as a scalar): every kFlushEvery rows, a p below
// 2^-kScaleBits is scaled up by 2^kScaleBits and e lowered to match. p then stays far from
// the denormal range (where x86 arithmetic is ~100x slower) unless eight consecutive a's
// multiply to below 2^-kScaleBits.
constexpr Index kFlushEvery = 8;

template <typename S>
constexpr int kScaleBits = sizeof(S) >= 8 ? 512 : 64;

// p <- p * 2^k, e <- e - k for each entry of p[0, n) below 2^-kScaleBits (and not zero).
// Usually one pass finds nothing to do; otherwise two passes lift any entry, a denormal one
// included, to at least 2^-kScaleBits. An entry that is exactly 0 only has its exponent
// lowered, which changes nothing (its product stays 0). Plain branch-free loops: they
// vectorise, and stay cheap in unoptimised (sanitizer) builds.
template <typename S>
void renormalize(S* p, S* e, Index n) {
    const S low = std::ldexp(S(1), -kScaleBits<S>), up = std::ldexp(S(1), kScaleBits<S>);
    int any = 0;
    for (Index c = 0; c < n; ++c) any |= std::abs(p[c]) < low;
    if (!any) return;
    for (int pass = 0; pass < 2; ++pass)
        for (Index c = 0; c < n; ++c) {
            const bool small = std::abs(p[c]) < low;
            e[c] = small ? e[c] - S(kScaleBits<S>) : e[c];
            p[c] = small ? p[c] * up : p[c];
        }
}// x * 2^e for an exponent e <= 0 kept as a scalar; past float's range it is 0.
template <typename S>
S scaled(S x, S e) {
    return std::ldexp(x, static_cast<int>(std::max(e, S(-100000))));
}

// term = p * 2^e * carry, element by element, the carried term of a fix-up's first row.
template <typename S>
void carried_term(S* term, const S* p, const S* e, const S* carry, Index n) {
    for (Index c = 0; c < n; ++c) term[c] = scaled(p[c] * carry[c], e[c]);
}

// A fix-up stops adding a carried term once it cannot change the result: below eps^2 of
// h (or g) itself, or below the smallest normal number. Zeroes such entries of term[0, n)
// and returns whether any is left. (With |a| <= 1, as gates are, later terms only shrink.)
template <typename S>
bool drop_negligible(S* term, const S* result, Index n) {
    constexpr S eps2 = std::numeric_limits<S>::epsilon() * std::numeric_limits<S>::epsilon();
    constexpr S tiny = std::numeric_limits<S>::min();
    int alive = 0;
    for (Index c = 0; c < n; ++c) {
        const S size = std::abs(term[c]);
        const bool negligible = size < tiny || size <= eps2 * std::abs(result[c]);
        term[c] = negligible ? S(0) : term[c];
        alive |= !negligible;
    }
    return alive != 0;
}// Time split step (1): rows [r0, r1) scanned from zero (fresh) or on from h_{r0-1}
// (a later segment of the same piece); prod * 2^exp *= a_{r0} ... a_{r1-1} (fresh: = that).
template <typename S>
void forward_local(Rows<S> h, Rows<const S> a, Rows<const S> b, Index r0, Index r1, Index n, S* prod, S* exp,
                   bool fresh) {
    Row<S> p(prod, n);
    if (fresh) {
        Row<S>(h.row(r0), n) = CRow<S>(b.row(r0), n);
        p = CRow<S>(a.row(r0), n);
        Row<S>(exp, n).setZero();
    } else {
        Row<S>(h.row(r0), n) = CRow<S>(a.row(r0), n) * CRow<S>(h.row(r0 - 1), n) + CRow<S>(b.row(r0), n);
        p *= CRow<S>(a.row(r0), n);
    }
    for (Index r = r0 + 1; r < r1; ++r) {
        const CRow<S> ar(a.row(r), n);
        Row<S>(h.row(r), n) = ar * CRow<S>(h.row(r - 1), n) + CRow<S>(b.row(r), n);
        p *= ar;
        if ((r - r0) % kFlushEvery == 0) renormalize(prod, exp, n);
    }
    renormalize(prod, exp, n);
}

// Time split step (3): h_r += k_r for r in [r0, r1), k_r = before * 2^before_exp * a_{r0} ...
// a_r * carry, where before * 2^before_exp is the piece's product up to r0 - 1 (nullptr:
// r0 starts the piece). k is the carried term itself, kept in `k`.
template <typename S>
void forward_fixup(Rows<S> h, Rows<const S> a, Index r0, Index r1, Index n, const S* carry, const S* before,
                   const S* before_exp, S* k) {
    Row<S> kr(k, n);
    if (before) {
        carried_term(k, before, before_exp, carry, n);
        kr *= CRow<S>(a.row(r0), n);
    } else {
        kr = CRow<S>(a.row(r0), n) * CRow<S>(carry, n);
    }
    Row<S>(h.row(r0), n) += kr;
    for (Index r = r0 + 1; r < r1; ++r) {
        kr *= CRow<S>(a.row(r), n);
        Row<S>(h.row(r), n) += kr;
        if ((r - r0) % kFlushEvery == 0 && !drop_negligible(k, h.row(r), n)) break;  // nothing left to add
    }
}

// Descending streams prefetch poorly on some CPUs (up to half the speed of ascending
// ones), so the reverse scan walks memory up in
// blocks of kReverseBlock rows: per block, an ascending pass copies dh into db and
// h_{r-1} into da and prefetches a; a descending pass then finishes them in L1.
constexpr Index kReverseBlock = kFlushEvery;

template <typename S>
void prefetch_row(const S* p, Index n) {
#if defined(__GNUC__) || defined(__clang__)
    for (Index c = 0; c < n; c += Index(64 / sizeof(S))) __builtin_prefetch(p + c);
#else
    (void)p;
    (void)n;
#endif
}

// The reverse recurrence over r in [r0, r1), last row first:
//   g_r = dh_r + a_{r+1} g_{r+1},  where for r = r1 - 1 the second term is `incoming`
//   (nullptr: zero), or a_{r1} db_{r1} when `above` (a segment continuing one that
//   ended at r1);  db_r = g_r,  da_r = g_r * h_{r-1}.
// With `prod`, also prod * 2^exp *= a_{r0} ... a_{r1-1} (the time split's step (1)).
template <typename S>
void backward_run(Rows<S> da, Rows<S> db, Rows<const S> dh, Rows<const S> a, Rows<const S> h, const S* h0,
                  Index r0, Index r1, Index n, const S* incoming, bool above = false, S* prod = nullptr,
                  S* exp = nullptr) {
    for (Index hi = r1; hi > r0; hi -= kReverseBlock) {
        const Index lo = std::max(r0, hi - kReverseBlock);
        for (Index r = lo; r < hi; ++r) {  // ascending: db_r = dh_r, da_r = h_{r-1}
            Row<S>(db.row(r), n) = CRow<S>(dh.row(r), n);
            if (r > 0)
                Row<S>(da.row(r), n) = CRow<S>(h.row(r - 1), n);
            else if (h0)
                Row<S>(da.row(0), n) = CRow<S>(h0, n);
            else
                Row<S>(da.row(0), n).setZero();
            if (prod)
                Row<S>(prod, n) *= CRow<S>(a.row(r), n);
            else
                prefetch_row(a.row(r), n);
        }
        if (prod) renormalize(prod, exp, n);  // kReverseBlock == kFlushEvery rows
        for (Index r = hi - 1; r >= lo; --r) {  // descending: g_r, then da_r = g_r h_{r-1}
            if (r + 1 < r1 || above)
                Row<S>(db.row(r), n) += CRow<S>(a.row(r + 1), n) * CRow<S>(db.row(r + 1), n);
            else if (incoming)
                Row<S>(db.row(r), n) += CRow<S>(incoming, n);
            Row<S>(da.row(r), n) *= CRow<S>(db.row(r), n);
        }
    }
}

// Time split step (1), reversed: rows [r0, r1) from zero (fresh) or on from the rows
// above (a later segment of the same piece), with prod * 2^exp *= a_{r0} ... a_{r1-1}
// (fresh: = that).
template <typename S>
void backward_local(Rows<S> da, Rows<S> db, Rows<const S> dh, Rows<const S> a, Rows<const S> h, const S* h0,
                    Index r0, Index r1, Index n, S* prod, S* exp, bool fresh) {
    if (fresh) {
        Row<S>(prod, n).setOnes();
        Row<S>(exp, n).setZero();
    }
    backward_run<S>(da, db, dh, a, h, h0, r0, r1, n, nullptr, !fresh, prod, exp);
}

// Time split step (3), reversed: for r from r1 - 1 down to r0, with the carried term
// k_r = before * 2^before_exp * a_{r1} ... a_{r+1} * carry: g_r += k_r and da_r += k_r h_{r-1},
// where before * 2^before_exp is the piece's product of the a's after r1 - 1 (nullptr:
// r1 - 1 ends the piece).
template <typename S>
void backward_fixup(Rows<S> da, Rows<S> db, Rows<const S> a, Rows<const S> h, const S* h0, Index r0, Index r1,
                    Index n, const S* carry, const S* before, const S* before_exp, S* k) {
    Row<S> kr(k, n);
    if (before)
        carried_term(k, before, before_exp, carry, n);
    else
        kr = CRow<S>(carry, n);
    for (Index r = r1 - 1; r >= r0; --r) {
        Row<S>(db.row(r), n) += kr;
        if (r > 0)
            Row<S>(da.row(r), n) += kr * CRow<S>(h.row(r - 1), n);
        else if (h0)
            Row<S>(da.row(0), n) += kr * CRow<S>(h0, n);
        kr *= CRow<S>(a.row(r), n);
        if ((r1 - 1 - r) % kFlushEvery == kFlushEvery - 1 && !drop_negligible(k, db.row(r), n)) break;  // nothing left
    }
}

// ---------------------------------------------------------------------------------
// The time split, for both directions. Positions u count steps in scan order (forward:
// u = t; reverse: u = T-1-t). A round covers P pieces of R steps (one round unless
// ScanOptions::time_block asks for smaller pieces); thread p owns piece p.
//   (1) piece 0 scans from the round's carry; piece p > 0 scans from zero and keeps
//       the product of its a's and its local end;
//   (2) every thread composes the carries: carry_{p+1} = prod_p * carry_p + end_p;
//   (3) the fix-up of pieces 1.. is shared out evenly: thread q fixes up part q of
//       [R, round end), which may start inside a piece (step (1) recorded the running
//       product there) and cross into the next.
// One barrier per round; the summaries are double-buffered by round parity, since a
// buffer is rewritten two rounds later, after the next barrier, when every thread has
// finished reading it.
struct Round {
    Index start, end, R, P;
    Index piece_begin(Index p) const { return std::min(end, start + p * R); }
    Index piece_end(Index p) const { return std::min(end, start + (p + 1) * R); }
    Index part_begin(Index q) const {
        const Index f0 = piece_begin(1);
        return f0 + (end - f0) * q / P;
    }
};

// Kernel: length(s) (the steps of sequence s), start(s, carry) -> bool (a nonzero initial
// carry?), first(s, u0, u1, carry or nullptr), local(s, x0, x1, prod, exp, fresh),
// edge(s, u0, u1, end), fixup(s, y0, y1, carry, before or nullptr, before_exp, k),
// finish(s, carry). A product of a's is prod * 2^exp (see renormalize). A sequence shorter
// than T (a padded batch) is cut into pieces of its own length: ceil(length / P) steps,
// or the plan's piece size when that is smaller.
template <typename S, typename Kernel>
void time_split(const Kernel& kernel, Index B, Index D, const ScanPlan& plan) {
    std::vector<S> shared(static_cast<std::size_t>(2 * 5 * plan.threads * D));
    parallel_team(plan.threads, [&](int thread, int team) {
        const Index P = team, p = thread;
        Matrix<S> carries(P + 1, D);  // row q: the carry into piece q of the round
        Buf<S> k(D);
        auto carry = [&](Index q) { return carries.data() + q * D; };
        Index round = 0;
        for (Index s = 0; s < B; ++s) {
            const Index T = kernel.length(s), R = std::min(plan.piece_steps, (T + P - 1) / P);
            bool known = kernel.start(s, carry(0));
            for (Index start = 0; start < T; start += P * R, ++round) {
                const Round g{start, std::min(T, start + P * R), R, P};
                S* base = shared.data() + (round % 2) * 5 * P * D;
                auto prod = [&](Index q) { return base + q * D; };
                auto end = [&](Index q) { return base + (P + q) * D; };
                auto mark = [&](Index q) { return base + (2 * P + q) * D; };
                auto prod_exp = [&](Index q) { return base + (3 * P + q) * D; };
                auto mark_exp = [&](Index q) { return base + (4 * P + q) * D; };
                const Index u0 = g.piece_begin(p), u1 = g.piece_end(p);
                if (p == 0) {  // (1) the first piece knows its carry
                    kernel.first(s, u0, u1, known ? carry(0) : nullptr);
                    kernel.edge(s, u0, u1, end(0));
                } else if (u0 < u1) {  // (1) the others scan from zero, in segments cut at the parts' starts
                    Index x = u0;
                    for (Index q = 1; q < P; ++q) {
                        const Index xq = g.part_begin(q);
                        if (xq <= u0 || xq >= u1) continue;
                        if (xq > x) {
                            kernel.local(s, x, xq, prod(p), prod_exp(p), x == u0);
                            x = xq;
                        }
                        Row<S>(mark(q), D) = CRow<S>(prod(p), D);  // the product of a over [u0, xq)
                        Row<S>(mark_exp(q), D) = CRow<S>(prod_exp(p), D);
                    }
                    kernel.local(s, x, u1, prod(p), prod_exp(p), x == u0);
                    kernel.edge(s, u0, u1, end(p));
                }
                team_barrier(team);
                // (2) carries, piece to piece.
                Row<S>(carry(1), D) = CRow<S>(end(0), D);
                Index q = 1;
                for (; q < P && g.piece_begin(q) < g.end; ++q) {
                    carried_term(carry(q + 1), prod(q), prod_exp(q), carry(q), D);
                    Row<S>(carry(q + 1), D) += CRow<S>(end(q), D);
                }
                // (3) fix-up of this thread's part.
                const Index x0 = g.part_begin(p), x1 = g.part_begin(p + 1);
                for (Index piece = 1; piece < P && x0 < x1; ++piece) {
                    const Index y0 = std::max(x0, g.piece_begin(piece)), y1 = std::min(x1, g.piece_end(piece));
                    if (y0 < y1)
                        kernel.fixup(s, y0, y1, carry(piece), y0 > g.piece_begin(piece) ? mark(p) : nullptr, mark_exp(p),
                                     k.data());
                }
                Row<S>(carry(0), D) = CRow<S>(carry(q), D);  // into the next round
                known = true;
            }
            if (p == 0) kernel.finish(s, carry(0));
        }
    });
}

// carry = row s of an optional (B, D) matrix m; false, carry untouched, when m is absent.
template <typename S>
bool load_row(const ConstMatrixRef<S>& m, Index s, S* carry) {
    const S* init = state_row(m, s, 0);
    if (init) Row<S>(carry, m.cols()) = CRow<S>(init, m.cols());
    return init != nullptr;
}

// h_r = a_r h_{r-1} + b_r in scan order (r = t, or reversed r = length-1-t); u = r.
template <typename S>
struct ForwardKernel {
    Rows<S> h;
    Rows<const S> a, b;
    const ConstMatrixRef<S>& h0;
    Layout layout;
    Index D;

    Index length(Index s) const { return layout.length(s); }
    bool start(Index s, S* carry) const { return load_row(h0, s, carry); }
    void first(Index s, Index u0, Index u1, const S* carry) const {
        forward_run(layout.rows(h, s, 0), layout.rows(a, s, 0), layout.rows(b, s, 0), u0, u1, D, carry);
    }
    void local(Index s, Index x0, Index x1, S* prod, S* exp, bool fresh) const {
        forward_local(layout.rows(h, s, 0), layout.rows(a, s, 0), layout.rows(b, s, 0), x0, x1, D, prod, exp, fresh);
    }
    void edge(Index s, Index, Index u1, S* end) const { Row<S>(end, D) = CRow<S>(layout.rows(h, s, 0).row(u1 - 1), D); }
    void fixup(Index s, Index y0, Index y1, const S* carry, const S* before, const S* before_exp, S* k) const {
        forward_fixup(layout.rows(h, s, 0), layout.rows(a, s, 0), y0, y1, D, carry, before, before_exp, k);
    }
    void finish(Index, const S*) const {}
};

// g_r = dh_r + a_{r+1} g_{r+1} in scan order r; u = L-1-r with L = length(s), so steps
// [u0, u1) are rows [L-u1, L-u0). What a piece passes on (its "end") is a_{first row} g_{first row}.
template <typename S>
struct BackwardKernel {
    Rows<S> da, db;
    Rows<const S> dh, a, h;
    const ConstMatrixRef<S>& h0;
    const ConstMatrixRef<S>& dh_last;
    MatrixRef<S>& dh0;
    Layout layout;
    Index D;

    Index length(Index s) const { return layout.length(s); }
    bool start(Index s, S* carry) const { return load_row(dh_last, s, carry); }
    void first(Index s, Index u0, Index u1, const S* carry) const {
        const Index L = layout.length(s);
        backward_run(layout.rows(da, s, 0), layout.rows(db, s, 0), layout.rows(dh, s, 0), layout.rows(a, s, 0),
                     layout.rows(h, s, 0), state_row(h0, s, 0), L - u1, L - u0, D, carry);
    }
    void local(Index s, Index x0, Index x1, S* prod, S* exp, bool fresh) const {
        const Index L = layout.length(s);
        backward_local(layout.rows(da, s, 0), layout.rows(db, s, 0), layout.rows(dh, s, 0), layout.rows(a, s, 0),
                       layout.rows(h, s, 0), state_row(h0, s, 0), L - x1, L - x0, D, prod, exp, fresh);
    }
    void edge(Index s, Index, Index u1, S* end) const {
        const Index r = layout.length(s) - u1;
        Row<S>(end, D) = CRow<S>(layout.rows(a, s, 0).row(r), D) * CRow<S>(layout.rows(db, s, 0).row(r), D);
    }
    void fixup(Index s, Index y0, Index y1, const S* carry, const S* before, const S* before_exp, S* k) const {
        const Index L = layout.length(s);
        backward_fixup(layout.rows(da, s, 0), layout.rows(db, s, 0), layout.rows(a, s, 0), layout.rows(h, s, 0),
                       state_row(h0, s, 0), L - y1, L - y0, D, carry, before, before_exp, k);
    }
    // What flows out of row 0 is a_0 g_0 = dL/dh0.
    void finish(Index s, const S* carry) const {
        if (dh0.size() != 0) dh0.row(s) = Eigen::Map<const RowVector<S>>(carry, D);
    }
};

inline std::string dims(Index B, Index T) { return "B=" + std::to_string(B) + ", T=" + std::to_string(T); }

// An operand's name and shape, for check_operands.
struct Operand {
    const char* name;
    Index rows, cols;
    template <typename Derived>
    Operand(const char* operand, const Eigen::EigenBase<Derived>& m) : name(operand), rows(m.rows()), cols(m.cols()) {}
};

// The checks of every scan call: B and T positive, each of `steps` (B*T, D) with D the
// first one's width, each of `states` empty or (B, D). Returns D.
inline Index check_operands(const char* where, Index B, Index T, std::initializer_list<Operand> steps,
                            std::initializer_list<Operand> states) {
    if (B <= 0 || T <= 0) fail(where, "empty batch: B and T must be positive, got " + dims(B, T));
    const Index D = steps.begin()->cols;
    for (const Operand& m : steps)
        if (m.rows != B * T || m.cols != D)
            fail(where, std::string(m.name) + " (B*T, D) for " + dims(B, T) + ", D=" + std::to_string(D) +
                            " has shape " + shape_string(m.rows, m.cols) + ", expected " + shape_string(B * T, D));
    for (const Operand& m : states)
        if (m.rows * m.cols != 0 && (m.rows != B || m.cols != D))
            fail(where, std::string(m.name) + " (B, D) or empty has shape " + shape_string(m.rows, m.cols) +
                            ", expected " + shape_string(B, D));
    return D;
}

// The check of a call's lengths: none, or B values in [1, T].
inline void check_scan_lengths(const char* where, std::span<const Index> lengths, Index B, Index T) {
    if (lengths.empty()) return;
    if (static_cast<Index>(lengths.size()) != B)
        fail(where, "got " + std::to_string(lengths.size()) + " lengths for " + dims(B, T) +
                        "; give one per sequence, or none");
    for (std::size_t s = 0; s < lengths.size(); ++s)
        if (lengths[s] < 1 || lengths[s] > T)
            fail(where, "lengths[" + std::to_string(s) + "] is " + std::to_string(lengths[s]) +
                            ", expected 1 <= length <= T=" + std::to_string(T));
}

// last row s = the last step sequence s's scan took (empty last: skipped).
template <typename S>
void copy_last(MatrixRef<S>& last, const Rows<const S>& h, Index B, const Layout& layout) {
    if (last.size() == 0) return;
    for (Index s = 0; s < B; ++s)
        last.row(s) = Eigen::Map<const RowVector<S>>(layout.rows(h, s, 0).row(layout.length(s) - 1), last.cols());
}

// Every row past a sequence's end set to `value`, split over the sequences.
template <typename S>
void fill_past_ends(Rows<S> m, Index B, Index D, const Layout& layout, S value) {
    if (layout.lengths.empty()) return;
    parallel_for(B, streamed_work(layout.T * D), [&](Index s0, Index s1) {
        for (Index s = s0; s < s1; ++s) layout.fill_past_end(m, s, 0, D, value);
    });
}

}  // namespace scan_detail

/// How scan_forward and scan_backward, called now with these sizes and options, would
/// run: sequentially or split (by channels or by time), on how many threads, in how many
/// pieces. Inside a parallel region every call is sequential.
template <typename Scalar>
ScanPlan scan_plan(Index B, Index T, Index D, const ScanOptions& options = {}) {
    return scan_detail::make_plan<Scalar>(options, B, T, D);
}

// ---------------------------------------------------------------------------------
// Linear space.

/// h_t = a_t * h_{t-1} + b_t for every sequence and channel, h_{-1} = h0 (empty: zero).
///   h (B*T, D) out, may be b itself; h_last (B, D) out, h at t = T-1 (empty: skipped);
///   a, b (B*T, D); h0 (B, D) or empty.
///   lengths: empty, or B values in [1, T]: sequence s ends after lengths[s] steps. h_last
///   is then h at its last step, and h is zero past its end (those a, b are not read).
///   options.reverse: h_t = a_t * h_{t+1} + b_t from the last step down to t = 0, with h0
///   before the last step and h_last = h_0.
template <typename Scalar>
void scan_forward(MatrixRef<Scalar> h, MatrixRef<Scalar> h_last, ConstMatrixRef<Scalar> a, ConstMatrixRef<Scalar> b,
                  ConstMatrixRef<Scalar> h0, Index B, Index T, ScanOptions options = {},
                  std::span<const Index> lengths = {}) {
    using namespace scan_detail;
    const Index D = check_operands("scan_forward", B, T, {{"a", a}, {"b", b}, {"h", h}}, {{"h0", h0}, {"h_last", h_last}});
    check_scan_lengths("scan_forward", lengths, B, T);

    const Layout layout{T, lengths, options.reverse};
    const Rows<Scalar> hr = rows_of(h);
    const Rows<const Scalar> ar = rows_of(a), br = rows_of(b);
    const ScanPlan plan = make_plan<Scalar>(options, B, T, D);
    if (plan.split == ScanSplit::Time) {
        time_split<Scalar>(ForwardKernel<Scalar>{hr, ar, br, h0, layout, D}, B, D, plan);
        fill_past_ends(hr, B, D, layout, Scalar(0));
    } else {
        // Sequential, or the channels split: item i is (sequence s, channel block j).
        for_each_channel_block(plan, B, D, [&](Index s, Index c, Index n) {
            forward_run(layout.rows(hr, s, c), layout.rows(ar, s, c), layout.rows(br, s, c), 0, layout.length(s), n,
                        state_row(h0, s, c));
            layout.fill_past_end(hr, s, c, n, Scalar(0));
        });
    }
    copy_last(h_last, Rows<const Scalar>{hr.data, hr.stride}, B, layout);
}

/// The reverse scan: with g_t = dL/dh_t + a_{t+1} g_{t+1} (g_{T-1} gets dh_last too),
///   dL/db_t = g_t,  dL/da_t = g_t * h_{t-1} (h_{-1} = h0),  dL/dh0 = a_0 g_0.
///   da, db (B*T, D) out (db may be dh itself); dh0 (B, D) out (empty: skipped);
///   dh (B*T, D); dh_last (B, D) or empty; a, h (B*T, D) as in the forward; h0 as in the forward.
///   lengths and options.reverse as in the forward: dh_last enters at each sequence's last
///   step (in scan order), dh is not read past an end, and da, db are zero there.
template <typename Scalar>
void scan_backward(MatrixRef<Scalar> da, MatrixRef<Scalar> db, MatrixRef<Scalar> dh0, ConstMatrixRef<Scalar> dh,
                   ConstMatrixRef<Scalar> dh_last, ConstMatrixRef<Scalar> a, ConstMatrixRef<Scalar> h,
                   ConstMatrixRef<Scalar> h0, Index B, Index T, ScanOptions options = {},
                   std::span<const Index> lengths = {}) {
    using namespace scan_detail;
    const Index D = check_operands("scan_backward", B, T, {{"a", a}, {"h", h}, {"dh", dh}, {"da", da}, {"db", db}},
                                   {{"h0", h0}, {"dh_last", dh_last}, {"dh0", dh0}});
    check_scan_lengths("scan_backward", lengths, B, T);

    const Layout layout{T, lengths, options.reverse};
    const Rows<Scalar> dar = rows_of(da), dbr = rows_of(db);
    const Rows<const Scalar> dhr = rows_of(dh), ar = rows_of(a), hr = rows_of(h);
    const ScanPlan plan = make_plan<Scalar>(options, B, T, D);
    if (plan.split == ScanSplit::Time) {
        time_split<Scalar>(BackwardKernel<Scalar>{dar, dbr, dhr, ar, hr, h0, dh_last, dh0, layout, D}, B, D, plan);
        fill_past_ends(dar, B, D, layout, Scalar(0));
        fill_past_ends(dbr, B, D, layout, Scalar(0));
        return;
    }
    for_each_channel_block(plan, B, D, [&](Index s, Index c, Index n) {
        const Rows<Scalar> dbs = layout.rows(dbr, s, c);
        const Rows<const Scalar> as = layout.rows(ar, s, c);
        backward_run(layout.rows(dar, s, c), dbs, layout.rows(dhr, s, c), as, layout.rows(hr, s, c),
                     state_row(h0, s, c), 0, layout.length(s), n, state_row(dh_last, s, c));
        if (Scalar* out = state_row(dh0, s, c)) Row<Scalar>(out, n) = CRow<Scalar>(as.row(0), n) * CRow<Scalar>(dbs.row(0), n);
        layout.fill_past_end(dar, s, c, n, Scalar(0));
        layout.fill_past_end(dbr, s, c, n, Scalar(0));
    });
}

}  // namespace seqnn
