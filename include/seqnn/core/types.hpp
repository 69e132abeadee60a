// Core value types: the (B*T, D) sequence batch of docs/design.md, recurrent state and
// the training context a layer fills in forward and reads in backward.
#pragma once

#include "seqnn/core/checked.hpp"
#include "seqnn/core/huge_pages.hpp"
#include "seqnn/core/parallel.hpp"

#include <Eigen/Core>

#include <any>
#include <cstdint>
#include <stdexcept>
#include <random>
#include <string>
#include <vector>

namespace seqnn {

/// Sizes and indices (Eigen's signed index type).
using Index = Eigen::Index;

/// Every activation, weight and gradient is a dense row-major matrix.
template <typename Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A row vector (a bias, a norm's weight).
template <typename Scalar>
using RowVector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;

/// Function arguments that accept a matrix, a block of one, or a strided step view.
template <typename Scalar>
using MatrixRef = Eigen::Ref<Matrix<Scalar>>;
/// A read-only MatrixRef.
template <typename Scalar>
using ConstMatrixRef = Eigen::Ref<const Matrix<Scalar>>;

/// A row-major view whose rows are `stride` scalars apart: the B rows of one time step.
template <typename Scalar>
using StridedRows = Eigen::Map<Matrix<Scalar>, Eigen::Unaligned, Eigen::OuterStride<>>;
/// A read-only StridedRows.
template <typename Scalar>
using ConstStridedRows = Eigen::Map<const Matrix<Scalar>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// The B rows of step t of a (B*T, D) matrix, (B, D), as a strided view.
template <typename Scalar>
StridedRows<Scalar> step_rows(Matrix<Scalar>& m, Index steps, Index t) {
    return StridedRows<Scalar>(m.data() + t * m.cols(), m.rows() / steps, m.cols(), Eigen::OuterStride<>(steps * m.cols()));
}
/// The B rows of step t of a const (B*T, D) matrix, (B, D).
template <typename Scalar>
ConstStridedRows<Scalar> step_rows(const Matrix<Scalar>& m, Index steps, Index t) {
    return ConstStridedRows<Scalar>(m.data() + t * m.cols(), m.rows() / steps, m.cols(),
                                    Eigen::OuterStride<>(steps * m.cols()));
}

/// The random engine every initialiser takes; seed it for reproducible models.
using Rng = std::mt19937_64;

/// m <- 0, split by rows across threads, so that the first touch of fresh memory, page
/// faults and all, is shared out rather than left to one thread while the others wait.
template <typename Scalar>
void set_zero_by_rows(Matrix<Scalar>& m) {
    parallel_for(m.rows(), streamed_work(m.cols()), [&](Index r0, Index r1) { m.middleRows(r0, r1 - r0).setZero(); });
}

/// A batch of B sequences of T steps with D features: one (B*T, D) matrix,
/// row b*T + t is step t of sequence b. B and T travel with the data.
///
/// A padded batch of sequences of different lengths (torch.nn.utils.rnn.pack_padded_sequence's
/// case) also carries `lengths`: sequence b has lengths[b] real steps (1 <= lengths[b] <= T)
/// and its rows past them are padding. Every layer's output is zero there, its final state
/// is each sequence's state at its own last step, and no gradient flows from padding, so a
/// padded batch gives what each sequence run alone gives. The lengths travel with the data
/// from layer to layer.
template <typename Scalar>
struct Sequence {
    Matrix<Scalar> data;  ///< (B*T, D)
    Index batch = 0;      ///< B
    Index steps = 0;      ///< T
    /// Empty when every sequence has T steps; otherwise B lengths, each in [1, T].
    std::vector<Index> lengths;

    Sequence() = default;
    /// batch_size sequences of num_steps steps with `features` zeros each.
    Sequence(Index batch_size, Index num_steps, Index features)
        : batch(batch_size), steps(num_steps) {
        // Checked before anything is allocated: a negative or overflowing size must not reach Eigen.
        const Index rows = checked_mul("Sequence", batch_size, num_steps);
        checked_elements("Sequence", rows, features);
        data.resize(rows, features);
        set_zero_by_rows(data);
    }
    /// Wraps (B*T, D) values as B sequences of T steps.
    Sequence(Matrix<Scalar> values, Index batch_size, Index num_steps)
        : data(std::move(values)), batch(batch_size), steps(num_steps) {}

    /// D, the features per step.
    Index features() const { return data.cols(); }
    /// Whether the batch carries lengths (some rows may be padding).
    bool padded() const { return !lengths.empty(); }
    /// The real steps of sequence b: lengths[b], or T without lengths.
    Index length(Index b) const { return lengths.empty() ? steps : lengths[static_cast<std::size_t>(b)]; }

    /// The B rows of step t, (B, D), as a strided view into `data`.
    StridedRows<Scalar> at_step(Index t) { return step_rows(data, steps, t); }
    /// The B rows of step t, read-only.
    ConstStridedRows<Scalar> at_step(Index t) const { return step_rows(data, steps, t); }

    /// The T rows of sequence b, (T, D): a contiguous block.
    auto sequence(Index b) { return data.middleRows(b * steps, steps); }
    /// The T rows of sequence b, read-only.
    auto sequence(Index b) const { return data.middleRows(b * steps, steps); }
};

/// Sets the padding rows of a (B*T, D) matrix to zero: rows b*T + t with t >= lengths[b].
template <typename Scalar>
void zero_padding(MatrixRef<Scalar> m, Index steps, const std::vector<Index>& lengths) {
    for (std::size_t b = 0; b < lengths.size(); ++b) {
        const Index first = static_cast<Index>(b) * steps;
        m.middleRows(first + lengths[b], steps - lengths[b]).setZero();
    }
}

/// Whether every padding row of a (B*T, D) matrix is zero (true without lengths).
template <typename Scalar>
bool padding_is_zero(const Matrix<Scalar>& m, Index steps, const std::vector<Index>& lengths) {
    for (std::size_t b = 0; b < lengths.size(); ++b) {
        const Index first = static_cast<Index>(b) * steps;
        if (!m.middleRows(first + lengths[b], steps - lengths[b]).isZero(0)) return false;
    }
    return true;
}

/// The recurrent state a layer carries from one call to the next, owned by the caller.
/// It is a tree shaped like the layer: a layer's own value sits in `tensors` (e.g.
/// {h (L*B, H), c (L*B, H)} for a stacked LSTM, laid out like PyTorch's (L, B, H)), and a
/// composite layer (a stack, a block, a language model) keeps one child State per child
/// in `children`. Each child owns its tensors: nothing is copied or swapped between
/// levels. `workspace` is scratch for step(), made by Layer::initial_state so that
/// streaming never allocates.
template <typename Scalar>
struct State {
    /// This layer's own value, e.g. {h} or {h, c}, each (L*B, H); empty for a composite.
    std::vector<Matrix<Scalar>> tensors;
    /// Scratch for step(), so that streaming does not allocate.
    std::vector<Matrix<Scalar>> workspace;
    Index position = 0;  ///< steps consumed so far (a KV cache's fill level)
    /// The number of streams B the state was made for (0: not recorded). A KV cache's
    /// (B*L, E) rows alone cannot tell B from L, so the state records B and a layer
    /// refuses it for another stream count.
    Index batch = 0;
    /// A composite layer's children's states, in child order.
    std::vector<State> children;

    /// Whether the state has no value yet (forward and step then start from zeros).
    bool empty() const { return tensors.empty() && children.empty() && batch == 0; }
};

/// Every tensor of a state tree, depth first (a node's own tensors, then its children's):
/// the order a checkpoint or a finite-difference test walks them in.
template <typename Scalar>
void collect_state_tensors(State<Scalar>& s, std::vector<Matrix<Scalar>*>& out) {
    for (auto& t : s.tensors) out.push_back(&t);
    for (auto& c : s.children) collect_state_tensors(c, out);
}
/// Every tensor of a state tree, depth first.
template <typename Scalar>
std::vector<Matrix<Scalar>*> state_tensors(State<Scalar>& s) {
    std::vector<Matrix<Scalar>*> out;
    collect_state_tensors(s, out);
    return out;
}
/// Every tensor of a state tree, depth first, read-only.
template <typename Scalar>
std::vector<const Matrix<Scalar>*> state_tensors(const State<Scalar>& s) {
    std::vector<Matrix<Scalar>*> all = state_tensors(const_cast<State<Scalar>&>(s));
    return std::vector<const Matrix<Scalar>*>(all.begin(), all.end());
}

/// What a training forward keeps for its backward. The layer that filled it stores one
/// struct of named, typed members (its own `Saved` type: matrices, token ids as
/// integers, cache offsets as indices), reached with saved_for_backward(); composite
/// layers keep one child context per child.
template <typename Scalar>
struct Context {
    Index batch = 0;  ///< B of the forward that filled the context
    Index steps = 0;  ///< T of the forward that filled the context
    /// The forward's Sequence::lengths (empty when it had none).
    std::vector<Index> lengths;
    /// The layer whose forward filled this context: its kind and sizes, e.g.
    /// "GRU(5 -> 9, L=2)". backward refuses a context another layer filled.
    std::string owner;
    /// The layer's saved struct (see saved_for_backward).
    std::any saved;
    /// One context per child of a composite layer.
    std::vector<Context> children;

    /// Makes `n` child contexts for a composite layer's children. A context reused from one
    /// training step to the next keeps its children, and with them their buffers: every
    /// forward rewrites what its backward reads, so nothing stale survives.
    void make_children(std::size_t n) {
        if (children.size() != n) children.assign(n, Context{});
    }
};

/// `m` shaped (rows, cols), returned for filling in place: a saved buffer that a reused
/// Context already has at this shape is not allocated again; a newly allocated large one
/// asks for huge pages (core/huge_pages.hpp).
template <typename Scalar>
Matrix<Scalar>& resized(Matrix<Scalar>& m, Index rows, Index cols) {
    const Scalar* before = m.data();
    m.resize(rows, cols);  // a no-op when the number of elements is unchanged
    if (m.data() != before) advise_huge_pages(m.data(), static_cast<std::size_t>(m.size()) * sizeof(Scalar));
    return m;
}

/// A new (rows, cols) matrix, uninitialised; a large one asks for huge pages
/// (core/huge_pages.hpp) before anything is written to it.
template <typename Scalar>
Matrix<Scalar> uninitialised_matrix(Index rows, Index cols) {
    Matrix<Scalar> m(rows, cols);
    advise_huge_pages(m.data(), static_cast<std::size_t>(m.size()) * sizeof(Scalar));
    return m;
}

/// The layer's `Saved` struct in `ctx`, for a training forward to fill: made on first use,
/// and kept when the caller reuses its Context, so that the matrices in it keep their memory
/// from one training step to the next (resize to an unchanged shape does not allocate).
template <typename Saved, typename Scalar>
Saved& keep_for_backward(Context<Scalar>& ctx) {
    if (Saved* s = std::any_cast<Saved>(&ctx.saved)) return *s;
    return ctx.saved.template emplace<Saved>();
}

/// The layer's `Saved` struct, for backward; throws when the context holds none (backward
/// also checks Context::owner first, so this fails only on a context filled by hand).
template <typename Saved, typename Scalar>
const Saved& saved_for_backward(const Context<Scalar>& ctx) {
    if (const Saved* s = std::any_cast<Saved>(&ctx.saved)) return *s;
    throw shape_error("Context: it holds no saved tensors of this layer (" + ctx.owner +
                                "): was forward run in training mode, with this Context, before backward?");
}

}  // namespace seqnn
