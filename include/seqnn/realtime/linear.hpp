/// @file
/// realtime::Linear: seqnn::Linear (y = W x + b, nn.Linear) for one stream, one sample or
/// one block at a time, with no allocation, virtual call or parallel region after set-up.
///
/// The product takes whichever form costs fewer packet operations for the layer's shape:
///  - columns: W column-major (out padded to whole packets, in), y = b + sum_i x_i W[:, i],
///    multiply-adds over the input columns; the form for few inputs (a recurrent layer's
///    input, 1 to 16 features);
///  - rows: W row-major (out, in padded to whole packets), y_o = b_o + W[o, :] . x, one
///    packet dot product and one horizontal sum per output; the form for few outputs (the
///    usual H -> 1 head of an audio model), where the columns form would waste most lanes.
#pragma once

#include "seqnn/nn/linear.hpp"
#include "seqnn/realtime/detail.hpp"

#include <algorithm>
#include <string>

namespace seqnn::realtime {

/// A real-time twin of seqnn::Linear: the same weights, for one stream, sample by sample or
/// block by block, allocation-free after construction. Stateless.
template <typename Scalar>
class Linear {
public:
    /// Copies the layer's weights (PyTorch's (out, in) weight and bias) into the layout of the
    /// cheaper product form. max_block is kept for the common interface (a Linear needs no
    /// scratch per sample); it must be positive. May allocate and throw.
    explicit Linear(const seqnn::Linear<Scalar>& layer, Index max_block = 512)
        : in_(layer.in_features()), out_(layer.out_features()), max_block_(max_block) {
        using namespace detail;
        check_max_block("realtime::Linear", max_block);
        if (in_ <= 0 || out_ <= 0)
            fail("realtime::Linear", "the layer has no weights: weight has shape " +
                                         shape_string(layer.weight.value) + ", expected (out, in) with both positive");
        if (layer.has_bias() && layer.bias.size() != out_)
            fail("realtime::Linear", "bias has " + std::to_string(layer.bias.size()) + " values for weight " +
                                         shape_string(layer.weight.value));
        constexpr Index P = kPacket<Scalar>;
        // Operations a sample costs in each form: packet multiply-adds, and in the rows form
        // the scalar ones past the last whole packet of inputs and the horizontal sum.
        const Index column_ops = in_ * (padded<Scalar>(out_) / P);
        const Index row_ops = out_ * (in_ / P + in_ % P + 4);
        rows_form_ = row_ops < column_ops;
        const Matrix<Scalar>& w = layer.weight.value;  // (out, in)
        if (rows_form_) {
            const Index Ip = padded<Scalar>(in_);
            weight_ = zeros<Scalar>(out_ * Ip);
            for (Index o = 0; o < out_; ++o)
                for (Index i = 0; i < in_; ++i) weight_[static_cast<std::size_t>(o * Ip + i)] = w(o, i);
            bias_ = zeros<Scalar>(out_);
        } else {
            const Index Op = padded<Scalar>(out_);
            weight_ = pack_columns<Scalar>(w, 1, out_, Op);
            bias_ = zeros<Scalar>(Op);
            y_ = zeros<Scalar>(Op);
        }
        if (layer.has_bias()) std::copy_n(layer.bias.value.data(), out_, bias_.begin());
    }

    /// Features per sample in.
    Index input_size() const noexcept { return in_; }
    /// Features per sample out.
    Index output_size() const noexcept { return out_; }
    /// The longest block process_block takes in one pass (a Linear runs any block in one).
    Index max_block() const noexcept { return max_block_; }
    /// Nothing to reset: a Linear carries no state.
    void reset() noexcept {}

    /// The state of a stateless layer for one stream: no tensors, B = 1.
    State<Scalar> state() const {
        State<Scalar> s;
        s.batch = 1;
        return s;
    }
    /// Accepts a stateless layer's state (no tensors, no children, B = 0 or 1); throws otherwise.
    void set_state(const State<Scalar>& state) {
        if (!state.tensors.empty() || !state.children.empty() || state.batch > 1)
            fail("realtime::Linear.set_state",
                 "a Linear carries no state; got " + std::to_string(state.tensors.size()) + " tensors, " +
                     std::to_string(state.children.size()) + " children, B=" + std::to_string(state.batch));
    }

    /// One sample: y[output_size()] = W x[input_size()] + b. x is read in full before y is
    /// written, so x and y may overlap.
    void process_sample(const Scalar* x, Scalar* y) noexcept {
        namespace ei = Eigen::internal;
        using Pk = detail::Packet<Scalar>;
        constexpr Index P = detail::kPacket<Scalar>;
        if (rows_form_) {
            // x is read where it is, whole packets then scalars, as a twin before it wrote it,
            // so that each load is served by the store that wrote it.
            const Index Ip = detail::padded<Scalar>(in_), whole = in_ / P * P;
            for (Index o = 0; o < out_; ++o) {  // y_o = W[o, :] . x + b_o
                const Scalar* row = weight_.data() + o * Ip;
                Pk acc0 = ei::pset1<Pk>(Scalar(0)), acc1 = acc0;
                Index k = 0;
                for (; k + 2 * P <= whole; k += 2 * P) {  // two chains
                    acc0 = ei::pmadd(ei::ploadu<Pk>(x + k), ei::pload<Pk>(row + k), acc0);
                    acc1 = ei::pmadd(ei::ploadu<Pk>(x + k + P), ei::pload<Pk>(row + k + P), acc1);
                }
                if (k < whole) acc0 = ei::pmadd(ei::ploadu<Pk>(x + k), ei::pload<Pk>(row + k), acc0);
                Scalar sum = ei::predux(ei::padd(acc0, acc1)) + bias_[static_cast<std::size_t>(o)];
                for (k = whole; k < in_; ++k) sum += x[k] * row[k];
                y[o] = sum;
            }
        } else {
            const Index Op = static_cast<Index>(y_.size());
            for (Index r = 0; r < Op; r += P) {
                Pk acc[1][1] = {{ei::pload<Pk>(bias_.data() + r)}};
                detail::accumulate_columns<Scalar, 1, 1>(x, in_, weight_.data() + r, Op, 0, acc);  // (Op, in) x (in)
                ei::pstore(y_.data() + r, acc[0][0]);
            }
            detail::copy_out(y_.data(), out_, y);
        }
    }

    /// One block: x (steps, input_size()) row-major and contiguous -> y (steps, output_size()),
    /// row by row as process_sample. x and y may be the same pointer when output_size() <=
    /// input_size(); otherwise they must not overlap.
    void process_block(const Scalar* x, Index steps, Scalar* y) noexcept {
        for (Index t = 0; t < steps; ++t) process_sample(x + t * in_, y + t * out_);
    }

    /// process_block on Eigen matrices: x (steps, input_size()) -> y (steps, output_size());
    /// throws on other shapes. Any row strides.
    void process_block(ConstMatrixRef<Scalar> x, MatrixRef<Scalar> y) {
        detail::check_block<Scalar>("realtime::Linear", x, y, in_, out_);
        for (Index t = 0; t < x.rows(); ++t) process_sample(x.row(t).data(), y.row(t).data());
    }

private:
    Index in_, out_, max_block_;
    bool rows_form_ = false;
    AlignedVector<Scalar> weight_;  // rows form: (out, Ip) row-major; columns form: (Op, in) column-major
    AlignedVector<Scalar> bias_;    // (out), or (Op) zero padded
    AlignedVector<Scalar> y_;       // columns form: the padded result (Op)
};

}  // namespace seqnn::realtime
