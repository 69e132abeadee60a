// Multi-head scaled dot-product attention over (B*T, H*Dh) batches, in O(T*D) memory.
//
//   out_h = softmax(Q_h K_h^T * scale + mask) V_h      for every sequence b and head h,
//
// with Q, K, V laid out as in docs/design.md: row b*T + t is step t of sequence b and head h
// owns columns [h*Dh, (h+1)*Dh) (PyTorch's nn.MultiheadAttention split of E = H*Dh).
//
// The algorithm is FlashAttention-2's (Dao 2023, "FlashAttention-2: Faster Attention
// with Better Parallelism and Work Partitioning"), written for CPU threads:
//   forward:  for every (sequence, head, query block) -- one OpenMP work item --
//             for every key/value tile:   S = Qs K_tile^T           (Eigen GEMM)
//                                         m' = max(m, rowmax S);  P = exp(S - m')
//                                         l  = l e^(m - m') + rowsum P
//                                         O  = O e^(m - m') + P V_tile   (Eigen GEMM)
//             out = O / l, and the row's logsumexp lse = m + log l is kept for backward.
//   backward: recomputes S and P = exp(S - lse) tile by tile (never a T x T matrix):
//             Drow = rowsum(dO * O), dP = dO V^T, dS = P * (dP - Drow),
//             dV = P^T dO, dK = dS^T Qs, dQ = scale * dS K.
//             Pass 1 owns one key block per work item (dK, dV), pass 2 one query block
//             (dQ), so no two threads ever write the same row: no atomics, and the result
//             does not depend on the thread count. This recomputes S and dP once more than
//             FlashAttention-2's single pass (7 GEMMs per tile pair instead of 5).
//
// Memory: each thread has a scratch of a few tiles (attention_workspace_size), so a
// forward at T = 16384 needs well under a megabyte of scratch besides its output.
//
// Masks. Keys are at positions 0..Tk-1 of their sequence and query row i at position
// q_offset + i (q_offset > 0 when the keys start with a KV cache). Query i sees key j iff
//   j < length[b]          (when lengths are given: keys of a padded batch past the end)
//   j <= q_offset + i      (when causal).
// A row that sees no key at all (length[b] = 0) gets out = 0 and lse = +inf, so that its
// backward P = exp(S - lse) is 0.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/aligned.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/core/types.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string>
#include <vector>

namespace seqnn {

/// The sizes of one attention call.
struct AttentionShape {
    Index batch = 0;        ///< B
    Index heads = 0;        ///< H
    Index head_dim = 0;     ///< Dh; q, k, v and out have H*Dh columns
    Index q_steps = 0;      ///< Tq: query rows per sequence; q and out are (B*Tq, H*Dh)
    Index kv_steps = 0;     ///< Tk: keys (and values) per sequence that take part
    Index kv_capacity = 0;  ///< rows per sequence in k and v (a KV cache's max length); 0 means Tk
    Index q_offset = 0;     ///< the position of query row 0 among the keys (the cache's fill level)

    /// E = H * Dh, the columns of q, k, v and out.
    Index model_dim() const { return heads * head_dim; }
    /// Rows per sequence in k and v.
    Index kv_rows() const { return kv_capacity > 0 ? kv_capacity : kv_steps; }
};

/// How attention runs: the mask, the scale and the tile sizes.
struct AttentionOptions {
    /// Query i sees keys up to its own position only.
    bool causal = true;
    double scale = 0;      ///< 0 means 1 / sqrt(Dh), PyTorch's default
    Index q_block = 64;    ///< query rows per work item
    Index kv_block = 512;  ///< key/value rows per tile (a q_block x kv_block tile of S stays in L2)
};

namespace attention_detail {

inline std::string shape_text(const AttentionShape& s) {
    return "(B=" + std::to_string(s.batch) + ", H=" + std::to_string(s.heads) + ", Dh=" + std::to_string(s.head_dim) +
           ", Tq=" + std::to_string(s.q_steps) + ", Tk=" + std::to_string(s.kv_steps) +
           ", capacity=" + std::to_string(s.kv_rows()) + ", q_offset=" + std::to_string(s.q_offset) + ")";
}

inline void check_shape(const char* where, const AttentionShape& s, const AttentionOptions& o) {
    if (s.batch <= 0 || s.heads <= 0 || s.head_dim <= 0 || s.q_steps <= 0 || s.kv_steps <= 0)
        fail(where, "sizes must be positive, got " + shape_text(s));
    if (s.kv_capacity != 0 && s.kv_capacity < s.kv_steps)
        fail(where, "kv_capacity is smaller than the keys it should hold: " + shape_text(s));
    if (s.q_offset < 0) fail(where, "q_offset must be >= 0, got " + shape_text(s));
    if (o.q_block <= 0 || o.kv_block <= 0)
        fail(where, "block sizes must be positive, got q_block=" + std::to_string(o.q_block) +
                        ", kv_block=" + std::to_string(o.kv_block));
}

template <typename Derived>
void check_operand(const char* where, const char* what, const Eigen::EigenBase<Derived>& m, Index rows,
                   Index cols, const AttentionShape& s) {
    if (m.rows() != rows || m.cols() != cols)
        fail(where, std::string(what) + " has shape " + shape_string(m) + ", expected " + shape_string(rows, cols) + " for " +
                        shape_text(s));
}

// The checks of both directions: the shape and options, then q, k, v and out (any of them
// a column block of a wider matrix) and the lengths. Builds a message only to fail.
template <typename Q, typename K, typename V, typename O>
void check_call(const char* where, const AttentionShape& s, const AttentionOptions& o, const Q& q, const K& k,
                const V& v, const O& out, std::span<const Index> lengths) {
    check_shape(where, s, o);
    const Index queries = s.batch * s.q_steps, keys = s.batch * s.kv_rows(), E = s.model_dim();
    check_operand(where, "q", q, queries, E, s);
    check_operand(where, "k", k, keys, E, s);
    check_operand(where, "v", v, keys, E, s);
    check_operand(where, "out", out, queries, E, s);
    if (!lengths.empty() && static_cast<Index>(lengths.size()) != s.batch)
        fail(where, "got " + std::to_string(lengths.size()) + " lengths for " + shape_text(s));
}

// Query and key rows per tile, and the work of a call: 4 B H Tq Tk Dh flops.
struct Tiling {
    Index bq, bk;
    double flops;
};
inline Tiling tiling_of(const AttentionShape& s, const AttentionOptions& o) {
    return {std::min(o.q_block, s.q_steps), std::min(o.kv_block, s.kv_steps),
            4.0 * double(s.batch * s.heads * s.q_steps) * double(s.kv_steps) * double(s.head_dim)};
}

// Keys sequence b may see at all: min(Tk, length[b]).
inline Index visible_keys(const AttentionShape& s, std::span<const Index> lengths, Index b) {
    return lengths.empty() ? s.kv_steps : std::clamp<Index>(lengths[static_cast<std::size_t>(b)], 0, s.kv_steps);
}

// One past the last key that query rows [0, i_end) of a block may see, causal or not.
inline Index key_end(const AttentionShape& s, const AttentionOptions& o, Index visible, Index i_end) {
    return o.causal ? std::min(visible, s.q_offset + i_end) : visible;
}

template <typename Scalar>
Scalar scale_of(const AttentionShape& s, const AttentionOptions& o) {
    return static_cast<Scalar>(o.scale > 0 ? o.scale : 1.0 / std::sqrt(static_cast<double>(s.head_dim)));
}

inline Index round_up(Index n) { return (n + 15) / 16 * 16; }  // 64-byte steps for float

// Per-thread scratch of the forward, in scalars: Qs and O (bq, Dh), S (bq, bk), m and l (bq).
inline Index forward_slot(const AttentionShape& s, const AttentionOptions& o) {
    const Tiling t = tiling_of(s, o);
    return 2 * round_up(t.bq * s.head_dim) + round_up(t.bq * t.bk) + 2 * round_up(t.bq);
}

template <typename Scalar>
using Tile = Eigen::Map<Matrix<Scalar>>;  // a contiguous scratch tile

template <typename Scalar>
using ConstHead = ConstStridedRows<Scalar>;  // rows of one head: (n, Dh), stride = the matrix's row stride
template <typename Scalar>
using Head = StridedRows<Scalar>;

// acc (m, Dh) += p (m, n) x v (n, Dh) over the keys each row may see. Off the diagonal
// (diagonal false) every row sees all n keys: one GEMM. On it, row i sees the first
// clamp(seen0 + i, 0, n) keys: the keys all rows see go through one GEMM and the rest row
// by row, so that masked keys are left out of the sum rather than multiplied by 0 (a NaN
// or inf at a later position would otherwise turn 0 x NaN into NaN in earlier rows).
template <typename Acc, typename P, typename V>
void add_visible_product(Acc& acc, const P& p, const V& v, bool diagonal, Index seen0) {
    const Index m = p.rows(), n = p.cols();
    if (!diagonal) {
        acc.noalias() += p * v;
        return;
    }
    const Index common = std::clamp<Index>(seen0, 0, n);  // keys every row of the block sees
    if (common > 0) acc.noalias() += p.leftCols(common) * v.topRows(common);
    for (Index i = 0; i < m; ++i) {
        const Index seen = std::clamp<Index>(seen0 + i, 0, n);
        if (seen > common)
            acc.row(i).noalias() += p.row(i).segment(common, seen - common) * v.middleRows(common, seen - common);
    }
}

template <typename Ref>
auto head_rows(Ref& m, Index row, Index n, Index col, Index dh) {
    using Scalar = typename std::remove_const_t<typename Ref::Scalar>;
    if constexpr (std::is_const_v<std::remove_pointer_t<decltype(m.data())>>)
        return ConstHead<Scalar>(m.data() + row * m.outerStride() + col, n, dh, Eigen::OuterStride<>(m.outerStride()));
    else
        return Head<Scalar>(m.data() + row * m.outerStride() + col, n, dh, Eigen::OuterStride<>(m.outerStride()));
}

}  // namespace attention_detail

/// The forward's scratch for `threads` threads, in scalars. attention_forward asks for
/// exactly this much (it does not depend on T^2: a few tiles per thread).
inline Index attention_workspace_size(const AttentionShape& s, const AttentionOptions& o = {}, int threads = 0) {
    if (threads <= 0) threads = num_threads();
    return Index(threads) * attention_detail::forward_slot(s, o);
}

/// out = attention(q, k, v).
///   q (B*Tq, H*Dh), k and v (B*capacity, H*Dh) of which rows b*capacity + [0, Tk) take part,
///   out (B*Tq, H*Dh); any of them may be a column block of a wider matrix (row stride).
///   lse: if non-null, (B*Tq, H) receives each row's logsumexp of the scaled scores, which
///        attention_backward needs (resized if its shape is wrong).
///   lengths: empty, or B key counts (padded batches).
///   workspace: empty (allocated here, attention_workspace_size scalars), or at least
///        attention_workspace_size(s, o, 1) scalars: the call then allocates nothing and
///        uses as many threads as the workspace has room for.
template <typename Scalar>
void attention_forward(const AttentionShape& s, const AttentionOptions& o, const ConstMatrixRef<Scalar>& q,
                       const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v, MatrixRef<Scalar> out,
                       Matrix<Scalar>* lse = nullptr, std::span<const Index> lengths = {},
                       std::span<Scalar> workspace = {}) {
    using namespace attention_detail;
    const char* where = "attention_forward";  // not a std::string: with a workspace nothing allocates
    check_call(where, s, o, q, k, v, out, lengths);
    const Index B = s.batch, H = s.heads, Dh = s.head_dim, Tq = s.q_steps, L = s.kv_rows();
    if (lse && (lse->rows() != B * Tq || lse->cols() != H)) lse->resize(B * Tq, H);

    const Tiling tiling = tiling_of(s, o);
    const Index bq = tiling.bq, bk = tiling.bk;
    const Index q_blocks = (Tq + bq - 1) / bq, items = B * H * q_blocks;
    const Index slot = forward_slot(s, o);
    int threads = threads_for(tiling.flops, items);
    AlignedVector<Scalar> owned;
    if (workspace.empty()) {
        owned.resize(static_cast<std::size_t>(threads * slot));
        workspace = owned;
    }
    if (static_cast<Index>(workspace.size()) < slot)
        fail(where, "workspace of " + std::to_string(workspace.size()) + " scalars is smaller than one thread's " +
                        std::to_string(slot) + " for " + shape_text(s));
    threads = std::min<int>(threads, static_cast<int>(static_cast<Index>(workspace.size()) / slot));
    const Scalar scale = scale_of<Scalar>(s, o);
    constexpr Scalar neg_inf = -std::numeric_limits<Scalar>::infinity();

    const auto run_item = [&](Index item, Index slot_id) {
        // Heaviest first: with a causal mask the last query blocks see the most keys.
        const Index qb = q_blocks - 1 - item % q_blocks, h = (item / q_blocks) % H, b = item / (q_blocks * H);
        const Index i0 = qb * bq, m = std::min(bq, Tq - i0);
        Scalar* scratch = workspace.data() + slot_id * slot;
        Tile<Scalar> Qs(scratch, m, Dh);                                  // (m, Dh), scaled queries
        Tile<Scalar> O(scratch + round_up(bq * Dh), m, Dh);               // (m, Dh), unnormalised output
        Scalar* s_data = scratch + 2 * round_up(bq * Dh);                 // S (m, n) for each tile
        Scalar* row_max = s_data + round_up(bq * bk);                     // (m)
        Scalar* row_sum = row_max + round_up(bq);                         // (m)

        const Index visible = visible_keys(s, lengths, b);
        const Index j_end = key_end(s, o, visible, i0 + m);  // causal: tiles above the diagonal are skipped
        auto out_rows = head_rows(out, b * Tq + i0, m, h * Dh, Dh);  // (m, Dh) of out
        if (j_end <= 0) {  // no key visible: out = 0, lse = +inf
            out_rows.setZero();
            if (lse) lse->col(h).segment(b * Tq + i0, m).setConstant(std::numeric_limits<Scalar>::infinity());
            return;
        }
        Qs.noalias() = scale * head_rows(q, b * Tq + i0, m, h * Dh, Dh);  // (m, Dh)
        O.setZero();
        std::fill(row_max, row_max + m, neg_inf);
        std::fill(row_sum, row_sum + m, Scalar(0));

        for (Index j0 = 0; j0 < j_end; j0 += bk) {
            const Index n = std::min(bk, j_end - j0);
            Tile<Scalar> S(s_data, m, n);
            S.noalias() = Qs * head_rows(k, b * L + j0, n, h * Dh, Dh).transpose();  // (m, Dh) x (Dh, n)
            const bool diagonal = o.causal && j0 + n - 1 > s.q_offset + i0;
            for (Index i = 0; i < m; ++i) {
                auto row = S.row(i).array();
                if (diagonal) {  // keys past position q_offset + i0 + i are masked
                    const Index first_masked = std::max<Index>(0, s.q_offset + i0 + i + 1 - j0);
                    if (first_masked < n) row.tail(n - first_masked) = neg_inf;
                }
                const Scalar tile_max = row.maxCoeff();
                const Scalar new_max = std::max(row_max[i], tile_max);  // finite: key 0 is always seen
                const Scalar alpha = std::exp(row_max[i] - new_max);     // 0 on the first tile
                row = (row - new_max).exp();                             // P, 0 where masked
                row_sum[i] = alpha * row_sum[i] + row.sum();
                row_max[i] = new_max;
                O.row(i) *= alpha;
            }
            add_visible_product(O, S, head_rows(v, b * L + j0, n, h * Dh, Dh), diagonal,
                                s.q_offset + i0 + 1 - j0);  // (m, n) x (n, Dh)
        }
        for (Index i = 0; i < m; ++i) {
            out_rows.row(i) = O.row(i) / row_sum[i];
            if (lse) (*lse)(b * Tq + i0 + i, h) = row_max[i] + std::log(row_sum[i]);
        }
    };
    parallel_items(threads, items, run_item);
}

/// Gradients of attention_forward: given q, k, v, the forward's out and lse, and dL/dout
/// (d_out), writes dL/dq (B*Tq, H*Dh) and dL/dk, dL/dv (B*capacity, H*Dh). Rows of keys
/// that take part in no score (past Tk, or past a sequence's length) get 0.
/// Scratch: O((B*Tq + threads * tiles) * H) scalars, allocated here.
template <typename Scalar>
void attention_backward(const AttentionShape& s, const AttentionOptions& o, const ConstMatrixRef<Scalar>& q,
                        const ConstMatrixRef<Scalar>& k, const ConstMatrixRef<Scalar>& v,
                        const ConstMatrixRef<Scalar>& out, const Matrix<Scalar>& lse,
                        const ConstMatrixRef<Scalar>& d_out, MatrixRef<Scalar> dq, MatrixRef<Scalar> dk,
                        MatrixRef<Scalar> dv, std::span<const Index> lengths = {}) {
    using namespace attention_detail;
    const char* where = "attention_backward";
    check_call(where, s, o, q, k, v, out, lengths);
    const Index B = s.batch, H = s.heads, Dh = s.head_dim, Tq = s.q_steps, E = s.model_dim(), L = s.kv_rows();
    check_operand(where, "lse", lse, B * Tq, H, s);
    check_operand(where, "d_out", d_out, B * Tq, E, s);
    check_operand(where, "dq", dq, B * Tq, E, s);
    check_operand(where, "dk", dk, B * L, E, s);
    check_operand(where, "dv", dv, B * L, E, s);

    const Scalar scale = scale_of<Scalar>(s, o);
    const Tiling tiling = tiling_of(s, o);
    const Index bq = tiling.bq, bk = tiling.bk;
    const double flops = tiling.flops;

    // Drow = rowsum(dO * O) per row and head: (B*Tq, H).
    Matrix<Scalar> drow(B * Tq, H);
    parallel_for(B * Tq, streamed_work(E), [&](Index r0, Index r1) {
        for (Index r = r0; r < r1; ++r)
            for (Index h = 0; h < H; ++h)
                drow(r, h) = d_out.row(r).segment(h * Dh, Dh).dot(out.row(r).segment(h * Dh, Dh));
    });

    // Scratch per thread: Qs, dO (bq, Dh); K, V, dK, dV (bk, Dh); S, dP (bq, bk).
    const Index slot = 2 * round_up(bq * Dh) + 4 * round_up(bk * Dh) + 2 * round_up(bq * bk);

    // S and P = exp(S - lse) of one (query block, key tile) pair into S; causal masking
    // sets P to 0 above the diagonal. dP = dO V^T into dP, then dS = P * (dP - Drow) over dP.
    const auto scores_and_ds = [&](Index b, Index h, Index i0, Index m, Index j0, Index n, const Tile<Scalar>& Qs,
                                   const Tile<Scalar>& dO, const auto& Kt, const auto& Vt, Tile<Scalar>& S,
                                   Tile<Scalar>& dP) {
        S.noalias() = Qs * Kt.transpose();   // (m, Dh) x (Dh, n)
        dP.noalias() = dO * Vt.transpose();  // (m, Dh) x (Dh, n)
        const bool diagonal = o.causal && j0 + n - 1 > s.q_offset + i0;
        for (Index i = 0; i < m; ++i) {
            const Scalar l = lse(b * Tq + i0 + i, h), d = drow(b * Tq + i0 + i, h);
            auto p = S.row(i).array();
            p = (p - l).exp();
            if (diagonal) {
                const Index first_masked = std::max<Index>(0, s.q_offset + i0 + i + 1 - j0);
                if (first_masked < n) p.tail(n - first_masked) = Scalar(0);
            }
            dP.row(i).array() = p * (dP.row(i).array() - d);  // dS
            if (diagonal) {  // masked: dS = 0 exactly, even where dP is NaN (a NaN value at a later key)
                const Index first_masked = std::max<Index>(0, s.q_offset + i0 + i + 1 - j0);
                if (first_masked < n) dP.row(i).tail(n - first_masked).setZero();
            }
        }
    };

    // Pass 1: dK and dV, one key block of one (sequence, head) per work item, looping over
    // the query blocks that see it.
    {
        const Index k_blocks = (s.kv_steps + bk - 1) / bk, items = B * H * k_blocks;
        const int threads = threads_for(flops, items);
        AlignedVector<Scalar> scratch_all(static_cast<std::size_t>(threads * slot));
        parallel_items(threads, items, [&](Index item, Index slot_id) {
            const Index kb = item % k_blocks, h = (item / k_blocks) % H, b = item / (k_blocks * H);
            const Index j0 = kb * bk, n = std::min(bk, s.kv_steps - j0);
            Scalar* p = scratch_all.data() + slot_id * slot;
            Tile<Scalar> Qs(p, bq, Dh), dO(p + round_up(bq * Dh), bq, Dh);
            p += 2 * round_up(bq * Dh);
            Tile<Scalar> dK(p, n, Dh), dV(p + round_up(bk * Dh), n, Dh);
            p += 4 * round_up(bk * Dh);
            Scalar* s_data = p;
            Scalar* dp_data = p + round_up(bq * bk);
            dK.setZero();
            dV.setZero();
            const Index visible = visible_keys(s, lengths, b);
            const Index n_vis = std::clamp<Index>(visible - j0, 0, n);  // keys of this block anyone sees
            if (n_vis > 0) {
                const auto Kt = head_rows(k, b * L + j0, n_vis, h * Dh, Dh);  // (n', Dh)
                const auto Vt = head_rows(v, b * L + j0, n_vis, h * Dh, Dh);
                // Causal: query i sees key j0 iff q_offset + i >= j0.
                const Index i_first = o.causal ? std::max<Index>(0, j0 - s.q_offset) : 0;
                for (Index i0 = i_first / bq * bq; i0 < Tq; i0 += bq) {
                    const Index m = std::min(bq, Tq - i0);
                    Tile<Scalar> Qm(Qs.data(), m, Dh), dOm(dO.data(), m, Dh), S(s_data, m, n_vis),
                        dP(dp_data, m, n_vis);
                    Qm.noalias() = scale * head_rows(q, b * Tq + i0, m, h * Dh, Dh);  // (m, Dh)
                    dOm = head_rows(d_out, b * Tq + i0, m, h * Dh, Dh);               // (m, Dh)
                    scores_and_ds(b, h, i0, m, j0, n_vis, Qm, dOm, Kt, Vt, S, dP);
                    dV.topRows(n_vis).noalias() += S.transpose() * dOm;  // (n, m) x (m, Dh)
                    dK.topRows(n_vis).noalias() += dP.transpose() * Qm;  // (n, m) x (m, Dh)
                }
            }
            head_rows(dk, b * L + j0, n, h * Dh, Dh) = dK;
            head_rows(dv, b * L + j0, n, h * Dh, Dh) = dV;
        });
    }
    // Rows of k and v past Tk (the unused part of a cache) take no gradient.
    if (L > s.kv_steps)
        for (Index b = 0; b < B; ++b) {
            dk.middleRows(b * L + s.kv_steps, L - s.kv_steps).setZero();
            dv.middleRows(b * L + s.kv_steps, L - s.kv_steps).setZero();
        }

    // Pass 2: dQ, one query block per work item, looping over the key tiles it sees.
    {
        const Index q_blocks = (Tq + bq - 1) / bq, items = B * H * q_blocks;
        const int threads = threads_for(flops, items);
        AlignedVector<Scalar> scratch_all(static_cast<std::size_t>(threads * slot));
        parallel_items(threads, items, [&](Index item, Index slot_id) {
            const Index qb = q_blocks - 1 - item % q_blocks, h = (item / q_blocks) % H, b = item / (q_blocks * H);
            const Index i0 = qb * bq, m = std::min(bq, Tq - i0);
            Scalar* p = scratch_all.data() + slot_id * slot;
            Tile<Scalar> Qs(p, m, Dh), dO(p + round_up(bq * Dh), m, Dh);
            p += 2 * round_up(bq * Dh);
            Tile<Scalar> dQ(p, m, Dh);  // in the K tile's place: pass 2 reads K and V as maps
            p += 4 * round_up(bk * Dh);
            Scalar* s_data = p;
            Scalar* dp_data = p + round_up(bq * bk);
            dQ.setZero();
            const Index j_end = key_end(s, o, visible_keys(s, lengths, b), i0 + m);
            if (j_end > 0) {
                Qs.noalias() = scale * head_rows(q, b * Tq + i0, m, h * Dh, Dh);  // (m, Dh)
                dO = head_rows(d_out, b * Tq + i0, m, h * Dh, Dh);                // (m, Dh)
            }
            for (Index j0 = 0; j0 < j_end; j0 += bk) {
                const Index n = std::min(bk, j_end - j0);
                const auto Kt = head_rows(k, b * L + j0, n, h * Dh, Dh);  // (n, Dh)
                const auto Vt = head_rows(v, b * L + j0, n, h * Dh, Dh);
                Tile<Scalar> S(s_data, m, n), dP(dp_data, m, n);
                scores_and_ds(b, h, i0, m, j0, n, Qs, dO, Kt, Vt, S, dP);
                const bool diagonal = o.causal && j0 + n - 1 > s.q_offset + i0;
                add_visible_product(dQ, dP, Kt, diagonal, s.q_offset + i0 + 1 - j0);  // (m, n) x (n, Dh)
            }
            head_rows(dq, b * Tq + i0, m, h * Dh, Dh) = scale * dQ;
        });
    }
}

}  // namespace seqnn
