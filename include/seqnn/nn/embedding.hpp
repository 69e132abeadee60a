// Embedding: a lookup table, PyTorch's nn.Embedding(num_embeddings, embedding_dim):
// y[i] = weight[ids[i]], weight (num_embeddings, embedding_dim), initialised N(0, 1).
//
// Token ids are a std::span<const int>, so a std::vector<int> or a C array passes as
// it is and an Eigen::VectorXi v as {v.data(), static_cast<std::size_t>(v.size())}.
// For a (B*T, D) sequence batch the ids are laid out the same way: id b*T + t is
// step t of sequence b.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/parameter.hpp"

#include <cstddef>
#include <span>
#include <string>

namespace seqnn {

/// A lookup table of `rows` vectors of width `cols`, drawn N(0, 1) as nn.Embedding draws
/// its weight: the token table, and layers/positional.hpp's table of positions. `kind`
/// and the sizes' names label the error when a size is not positive.
template <typename Scalar>
Parameter<Scalar> embedding_table(const char* kind, const char* rows_name, Index rows, const char* cols_name,
                                  Index cols, Rng& rng) {
    if (rows <= 0 || cols <= 0)
        fail(kind, std::string("sizes must be positive, got ") + rows_name + "=" + std::to_string(rows) + ", " +
                       cols_name + "=" + std::to_string(cols));
    Parameter<Scalar> table(rows, cols);
    table.init_normal(rng);
    return table;
}

/// A lookup table of token vectors, nn.Embedding.
template <typename Scalar>
class Embedding {
public:
    Parameter<Scalar> weight;  ///< (num_embeddings, embedding_dim)

    Embedding() = default;
    /// PyTorch's default initialisation: every entry N(0, 1).
    Embedding(Index num_embeddings, Index embedding_dim, Rng& rng)
        : weight(embedding_table<Scalar>("Embedding", "num_embeddings", num_embeddings, "embedding_dim", embedding_dim,
                                         rng)) {}

    /// The vocabulary size.
    Index num_embeddings() const { return weight.value.rows(); }
    /// The vector width.
    Index embedding_dim() const { return weight.value.cols(); }

    /// y[i] = weight[ids[i]]: N ids -> (N, dim). y may be a view (one step of a sequence).
    /// Every id is checked before y is written.
    void forward(std::span<const int> ids, MatrixRef<Scalar> y) const {
        check_ids(ids);
        check_matrix("Embedding", "output y", y, static_cast<Index>(ids.size()), embedding_dim());
        for (std::size_t i = 0; i < ids.size(); ++i)
            y.row(static_cast<Index>(i)) = weight.value.row(ids[i]);  // (1, dim)
    }

    /// The rows of the given ids, (N, dim).
    Matrix<Scalar> forward(std::span<const int> ids) const {
        Matrix<Scalar> y(static_cast<Index>(ids.size()), embedding_dim());
        forward(ids, y);
        return y;
    }

    /// Given the ids of the forward and dL/dy (N, dim): weight.grad[ids[i]] += dy[i],
    /// so an id that occurs several times gathers all its rows. Ids are not
    /// differentiable, so there is no dL/dx to return.
    void backward(std::span<const int> ids, ConstMatrixRef<Scalar> dy) {
        check_ids(ids);
        if (dy.rows() != static_cast<Index>(ids.size()) || dy.cols() != embedding_dim())
            fail("Embedding.backward", "dy has shape " + shape_string(dy) + ", expected " +
                                           shape_string(static_cast<Index>(ids.size()), embedding_dim()));
        for (std::size_t i = 0; i < ids.size(); ++i)
            weight.grad.row(ids[i]) += dy.row(static_cast<Index>(i));  // (1, dim)
    }

    /// Appends `weight` after `prefix`.
    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) {
        out.push_back({prefix + "weight", &weight});
    }

private:
    void check_ids(std::span<const int> ids) const {
        for (std::size_t i = 0; i < ids.size(); ++i) {
            if (ids[i] < 0 || ids[i] >= num_embeddings())
                fail("Embedding", "id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                                      " is out of range for a vocabulary of " + std::to_string(num_embeddings()) +
                                      " (valid ids are 0.." + std::to_string(num_embeddings() - 1) +
                                      "); the table is " + shape_string(weight.value));
        }
    }
};

}  // namespace seqnn
