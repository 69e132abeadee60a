// PyTorch's tensor layouts <-> seqnn's matrices, for inputs, outputs and recurrent states
// read from or written to safetensors files (a PyTorch harness, a fixture, a checkpoint):
//
//   PyTorch                                        seqnn                          here
//   (B, T, D) batch_first input or output           Sequence: (B*T, D) matrix,     sequence_from_tensor
//                                                   row b*T + t is step t of b     tensor_from_sequence
//   (L, B, H) nn.RNN / nn.GRU / nn.LSTM h0, c0,     (L*B, H) state matrix,         state_from_tensor
//             h_n, c_n                              row l*B + b is layer l of b    tensor_from_state
//   (B, 1, E) lucidrains minGRU / minLSTM           (B, E) state matrix of the     min_rnn_state_from_tensor
//             prev_hidden and next hidden           min-RNN layers (MinGRU, ...)   tensor_from_min_rnn_state
//
// In every case the row-major bytes are the same, so a conversion is one copy (with a dtype
// conversion where asked) and a shape check. A stacked RNN or GRU has State::tensors = {h};
// a stacked LSTM {h, c}, both (L*B, H), as PyTorch's (h0, c0) tuple is; a min-RNN layer {h}.
//
//   const Sequence<float> x = io::sequence_from_tensor<float>(fixture.at("x"));      // (B, T, D)
//   State<float> s;
//   s.tensors = {io::state_from_tensor<float>(fixture.at("h0"), layers, x.batch, hidden)};
//   const Sequence<float> y = gru.forward(x, &s);
//   out.set("y", io::tensor_from_sequence(y));
//   out.set("h_n", io::tensor_from_state(s.tensors[0], layers));                     // (L, B, H)
//
// Reading, each function checks the tensor's rank and, for every size the caller gives
// (any_size leaves one free), the size itself. A wrong rank or shape is a seqnn::shape_error
// naming the function, the tensor's shape and the shape expected, e.g.
//   io::state_from_tensor: tensor shape [2, 3, 4] does not match (L, B, H) = (L=2, B=5, H=4)
// Writing checks that the matrix can be split as asked.
#pragma once

#include "seqnn/core/checked.hpp"
#include "seqnn/core/errors.hpp"
#include "seqnn/core/types.hpp"
#include "seqnn/io/safetensors.hpp"

#include <Eigen/Core>

#include <cstddef>
#include <initializer_list>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace seqnn::io {

/// A size the caller leaves free in the expected shape of a *_from_tensor conversion.
inline constexpr Index any_size = -1;

namespace detail {

// "(L=2, B=any, H=4)": the layout's dimensions with the sizes asked for. A dimension named
// by its size (the 1 of (B, 1, E)) is fixed by the layout and shown as that size alone.
inline std::string layout_text(std::initializer_list<std::pair<const char*, Index>> dims) {
    std::ostringstream out;
    out << '(';
    bool first = true;
    for (const auto& [name, size] : dims) {
        out << (first ? "" : ", ");
        if (name == std::to_string(size)) out << size;
        else if (size == any_size) out << name << "=any";
        else out << name << '=' << size;
        first = false;
    }
    out << ')';
    return out.str();
}

// "(L, B, H)": the layout's dimension names.
inline std::string layout_names(std::initializer_list<std::pair<const char*, Index>> dims) {
    std::string out = "(";
    bool first = true;
    for (const auto& [name, size] : dims) {
        out += (first ? "" : ", ");
        out += name;
        first = false;
    }
    return out + ")";
}

// Checks the expected sizes themselves (each any_size or >= 0), then `t` against them: its
// rank, and each size that is not any_size.
inline void check_layout(const std::string& where, const Tensor& t,
                         std::initializer_list<std::pair<const char*, Index>> dims) {
    for (const auto& [name, size] : dims)
        if (size < 0 && size != any_size)
            fail(where, std::string("expected size ") + name + "=" + std::to_string(size) +
                            " is negative (io::any_size leaves a size free)");
    const std::string expected = layout_names(dims) + " = " + layout_text(dims);
    if (t.shape().size() != dims.size())
        fail(where, "tensor shape " + shape_text(t.shape()) + " has rank " + std::to_string(t.shape().size()) +
                        ", expected rank " + std::to_string(dims.size()) + ": " + expected);
    std::size_t k = 0;
    for (const auto& [name, size] : dims) {
        if (size != any_size && t.shape()[k] != size)
            fail(where, "tensor shape " + shape_text(t.shape()) + " does not match " + expected);
        ++k;
    }
}

// The tensor's elements, converted to Scalar, as a (rows, cols) row-major matrix.
template <typename Scalar>
Matrix<Scalar> matrix_of(const Tensor& t, Index rows, Index cols) {
    Matrix<Scalar> m(rows, cols);
    t.copy_to(std::span<Scalar>(m.data(), static_cast<std::size_t>(m.size())));
    return m;
}

// `m` (any expression) as row-major values stored as `dtype` in a tensor of `shape`.
template <typename Derived>
Tensor tensor_of(const Eigen::MatrixBase<Derived>& m, std::vector<Index> shape, DType dtype) {
    return Tensor::from_matrix(m, dtype, std::move(shape));
}

}  // namespace detail

// ---------------------------------------------------------------------------
// (B, T, D) <-> Sequence

/// A (B, T, D) tensor (PyTorch's batch_first layout) as a Sequence: the (B*T, D) matrix whose
/// row b*T + t is step t of sequence b, with .batch = B and .steps = T. Every size given
/// (any_size: not checked) must match; a tensor of another rank or shape is a shape_error
/// naming both shapes.
template <typename Scalar>
Sequence<Scalar> sequence_from_tensor(const Tensor& t, Index batch = any_size, Index steps = any_size,
                                      Index features = any_size) {
    const std::string where = "io::sequence_from_tensor";
    detail::check_layout(where, t, {{"B", batch}, {"T", steps}, {"D", features}});
    const Index B = t.shape()[0], T = t.shape()[1], D = t.shape()[2];
    const Index rows = checked_mul(where, B, T);
    return Sequence<Scalar>(detail::matrix_of<Scalar>(t, rows, D), B, T);
}

/// A Sequence as a (B, T, D) tensor of `dtype` (by default the Sequence's own: F32 for float,
/// F64 for double). shape_error if the matrix does not hold B*T rows (naming both shapes).
template <typename Scalar>
Tensor tensor_from_sequence(const Sequence<Scalar>& x, DType dtype = dtype_of<Scalar>()) {
    const std::string where = "io::tensor_from_sequence";
    if (x.batch < 0 || x.steps < 0)
        fail(where, "sequence " + shape_string(x) + " has a negative B or T");
    const Index rows = checked_mul(where, x.batch, x.steps);
    if (x.data.rows() != rows)
        fail(where, "sequence " + shape_string(x) + " holds a " + shape_string(x.data) +
                        " matrix, expected (B*T, D) = " + shape_string(rows, x.data.cols()));
    return detail::tensor_of(x.data, {x.batch, x.steps, x.features()}, dtype);
}

// ---------------------------------------------------------------------------
// (L, B, H) <-> (L*B, H): the state of the stacked RNN, GRU and LSTM layers

/// PyTorch's (L, B, H) state tensor (nn.RNN, nn.GRU and nn.LSTM's h0, c0, h_n, c_n;
/// unidirectional) as seqnn's (L*B, H) state matrix, whose row l*B + b is layer l's state
/// of sequence b. Every size given (any_size: not checked) must match; a tensor of another
/// rank or shape is a shape_error naming both shapes.
template <typename Scalar>
Matrix<Scalar> state_from_tensor(const Tensor& t, Index layers = any_size, Index batch = any_size,
                                 Index hidden = any_size) {
    const std::string where = "io::state_from_tensor";
    detail::check_layout(where, t, {{"L", layers}, {"B", batch}, {"H", hidden}});
    return detail::matrix_of<Scalar>(t, checked_mul(where, t.shape()[0], t.shape()[1]), t.shape()[2]);
}

/// seqnn's (L*B, H) state matrix of a `layers`-layer RNN, GRU or LSTM as PyTorch's (L, B, H)
/// tensor of `dtype` (by default the matrix's own). shape_error if `layers` is not positive or
/// does not divide the matrix's rows (naming the matrix's shape and the layout asked for).
template <typename Derived>
Tensor tensor_from_state(const Eigen::MatrixBase<Derived>& h, Index layers,
                         DType dtype = dtype_of<typename Derived::Scalar>()) {
    const std::string where = "io::tensor_from_state";
    if (layers <= 0) fail(where, "layers must be positive, got L=" + std::to_string(layers));
    if (h.rows() % layers != 0)
        fail(where, "state matrix " + shape_string(h) + " is not (L*B, H) for L=" + std::to_string(layers) + ": " +
                        std::to_string(h.rows()) + " rows are not a multiple of " + std::to_string(layers));
    return detail::tensor_of(h, {layers, h.rows() / layers, h.cols()}, dtype);
}

// ---------------------------------------------------------------------------
// (B, 1, E) <-> (B, E): the state of the min-RNN layers (MinGRU, MinLSTM)

/// lucidrains' minGRU / minLSTM hidden state, (B, 1, E) (its `prev_hidden` argument and the
/// `next_prev_hidden` it returns), as the (B, E) state matrix of seqnn's min-RNN layers.
/// Every size given (any_size: not checked) must match; a tensor of another rank, or whose
/// middle size is not 1, is a shape_error naming both shapes.
template <typename Scalar>
Matrix<Scalar> min_rnn_state_from_tensor(const Tensor& t, Index batch = any_size, Index hidden = any_size) {
    detail::check_layout("io::min_rnn_state_from_tensor", t, {{"B", batch}, {"1", 1}, {"E", hidden}});
    return detail::matrix_of<Scalar>(t, t.shape()[0], t.shape()[2]);
}

/// A min-RNN layer's (B, E) state matrix as lucidrains' (B, 1, E) hidden tensor of `dtype`
/// (by default the matrix's own).
template <typename Derived>
Tensor tensor_from_min_rnn_state(const Eigen::MatrixBase<Derived>& h,
                                 DType dtype = dtype_of<typename Derived::Scalar>()) {
    return detail::tensor_of(h, {h.rows(), 1, h.cols()}, dtype);
}

}  // namespace seqnn::io
