/// @file
/// realtime::RNN: seqnn::RNN (PyTorch's nn.RNN, tanh or relu) for one stream, one sample or
/// one block at a time, with no allocation, virtual call, parallel region or exception after
/// set-up. Per layer and step, for each packet of units:
///   h_t = act(pre + W_hh h_{t-1}),  pre = W_ih x_t + b_ih + b_hh
#pragma once

#include "seqnn/layers/rnn.hpp"
#include "seqnn/realtime/detail.hpp"

namespace seqnn::realtime {

/// A real-time twin of seqnn::RNN (Elman, tanh or relu): the layer's weights (stacked,
/// unidirectional, with or without bias) copied into a layout for one stream. Build it from
/// a loaded layer.
template <typename Scalar>
class RNN {
public:
    /// Copies the layer's weights. Refuses a bidirectional layer. max_block: the longest
    /// block process_block runs in one pass (longer ones run in pieces); its scratch is
    /// allocated here. May allocate and throw.
    explicit RNN(const seqnn::RNN<Scalar>& layer, Index max_block = 512)
        : stack_("realtime::RNN", layer,
                 layer.nonlinearity() == Activation::ReLU ? CellKind::RNNReLU : CellKind::RNNTanh, max_block),
          relu_(layer.nonlinearity() == Activation::ReLU) {}

    /// Features per sample in, I.
    Index input_size() const noexcept { return stack_.input_size(); }
    /// Features per sample out, H.
    Index output_size() const noexcept { return stack_.output_size(); }
    /// The longest block process_block runs in one pass.
    Index max_block() const noexcept { return stack_.max_block(); }
    /// Zero state.
    void reset() noexcept { stack_.reset(); }
    /// The carried state as layer.initial_state(1) shapes it: {h (L, H)}. Allocates.
    State<Scalar> state() const { return stack_.state(); }
    /// Takes a state of one stream from the general API ({h (L, H)}; empty: zeros). Throws
    /// on other shapes.
    void set_state(const State<Scalar>& state) { stack_.set_state(state); }

    /// One sample: x[input_size()] -> y[output_size()], the top layer's h_t. x is read in full
    /// before y is written, so x and y may overlap.
    void process_sample(const Scalar* x, Scalar* y) noexcept {
        if (relu_)
            stack_.sample(x, y, Step<true>{});
        else
            stack_.sample(x, y, Step<false>{});
    }
    /// One block: x (steps, input_size()) row-major and contiguous -> y (steps, output_size());
    /// any steps >= 0. x and y may be the same pointer when output_size() <= input_size();
    /// otherwise they must not overlap.
    void process_block(const Scalar* x, Index steps, Scalar* y) noexcept {
        if (relu_)
            stack_.block(x, steps, y, Step<true>{});
        else
            stack_.block(x, steps, y, Step<false>{});
    }
    /// process_block on Eigen matrices, x (steps, input_size()) -> y (steps, output_size());
    /// throws on other shapes.
    void process_block(ConstMatrixRef<Scalar> x, MatrixRef<Scalar> y) {
        if (relu_)
            stack_.block(x, y, Step<true>{});
        else
            stack_.block(x, y, Step<false>{});
    }

private:
    /// One step of one layer (see detail::Stack), relu or tanh: `in` is x_t when Fused, else
    /// its projection.
    template <bool Relu>
    struct Step {
        template <bool Fused, typename Layer>
        EIGEN_STRONG_INLINE void operator()(const Layer& w, const Scalar* in, const Scalar* h,
                                            Scalar* h_next, Scalar*, Scalar*) const noexcept {
            namespace ei = Eigen::internal;
            using Pk = typename Layer::Packet;
            constexpr Index P = detail::kLanes<Pk>;
            detail::for_unit_packets<Scalar, Pk>(w.Hp, [&]<int U>(Index u) {
                Pk acc[U][1];  // W_ih x_t + b_ih + b_hh + W_hh h_{t-1}: (Hp, I) x (I), (Hp, H) x (H)
                for (int v = 0; v < U; ++v) acc[v][0] = ei::pload<Pk>((Fused ? w.bias.data() : in) + u + v * P);
                if constexpr (Fused)
                    detail::accumulate_panel<Scalar, 1, U, 1>(in, w.input, w.w_ih.data() + u * w.input, acc);
                detail::accumulate_panel<Scalar, 1, U>(h, w.H, w.w_hh.data() + u * w.H, acc);
                for (int v = 0; v < U; ++v)
                    ei::pstore(h_next + u + v * P,
                               Relu ? detail::relu<Scalar>(acc[v][0]) : detail::tanh<Scalar>(acc[v][0]));
            });
        }
    };

    detail::SizedStack<Scalar> stack_;
    bool relu_;
};

}  // namespace seqnn::realtime
