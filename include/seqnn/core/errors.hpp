// The exceptions seqnn throws. Every message names the layer and the shapes involved.
#pragma once

#include "seqnn/core/checked.hpp"
#include "seqnn/core/types.hpp"

#include <sstream>
#include <stdexcept>
#include <string>

namespace seqnn {

/// "(rows, cols)", for error messages.
inline std::string shape_string(Index rows, Index cols) {
    // Built with a stream: g++ 12 warns falsely (-Wrestrict) on chains of string '+'.
    std::ostringstream out;
    out << '(' << rows << ", " << cols << ')';
    return out.str();
}

/// The shape of a matrix or an expression, "(rows, cols)".
template <typename Derived>
std::string shape_string(const Eigen::EigenBase<Derived>& m) {
    return shape_string(m.rows(), m.cols());
}

/// The shape of a sequence batch, "(B=.., T=.., D=..)".
template <typename Scalar>
std::string shape_string(const Sequence<Scalar>& x) {
    return "(B=" + std::to_string(x.batch) + ", T=" + std::to_string(x.steps) + ", D=" +
           std::to_string(x.features()) + ")";
}

/// A sequence batch whose matrix agrees with its B and T, is not empty and has `features` columns.
template <typename Scalar>
void check_sequence(const std::string& where, const std::string& what, const Sequence<Scalar>& x,
                    Index features) {
    if (x.batch <= 0 || x.steps <= 0)
        fail(where, what + " " + shape_string(x) + " is empty: B and T must be positive");
    const Index rows = checked_mul(where + ": " + what + " " + shape_string(x), x.batch, x.steps);
    if (x.data.rows() != rows)
        fail(where, what + " matrix " + shape_string(x.data) + " does not hold B*T = " + std::to_string(rows) +
                        " rows for " + shape_string(x));
    if (x.features() != features)
        fail(where, what + " " + shape_string(x) + " has D=" + std::to_string(x.features()) +
                        ", expected D=" + std::to_string(features));
}

/// Sequence::lengths: empty, or B lengths each in [1, T].
inline void check_lengths(const std::string& where, const std::vector<Index>& lengths, Index batch, Index steps) {
    if (lengths.empty()) return;
    if (static_cast<Index>(lengths.size()) != batch)
        fail(where, "got " + std::to_string(lengths.size()) + " lengths for B=" + std::to_string(batch) +
                        " sequences; give one per sequence, or none");
    for (std::size_t b = 0; b < lengths.size(); ++b)
        if (lengths[b] < 1 || lengths[b] > steps)
            fail(where, "lengths[" + std::to_string(b) + "] is " + std::to_string(lengths[b]) +
                            ", expected 1 <= length <= T=" + std::to_string(steps));
}

/// A matrix of exactly (rows, cols).
template <typename Derived>
void check_matrix(const std::string& where, const std::string& what, const Eigen::EigenBase<Derived>& m,
                  Index rows, Index cols) {
    if (m.rows() != rows || m.cols() != cols)
        fail(where, what + " has shape " + shape_string(m) + ", expected " + shape_string(rows, cols));
}

/// Throws unless `ctx` was filled by a training forward of the layer `signature`
/// (Context::owner): a context from another kind of layer, or from the same kind at
/// other sizes, would be read with the wrong meaning or past its end.
template <typename Scalar>
void check_context_owner(const std::string& where, const Context<Scalar>& ctx, const std::string& signature) {
    if (ctx.owner.empty())
        fail(where, "the context holds no training forward (run forward with this Context before backward)");
    if (ctx.owner != signature)
        fail(where, "the context was filled by " + ctx.owner + ", not by this layer, " + signature);
}

}  // namespace seqnn
