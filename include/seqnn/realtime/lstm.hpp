/// @file
/// realtime::LSTM: seqnn::LSTM (PyTorch's nn.LSTM, gate order i, f, g, o) for one stream, one
/// sample or one block at a time, with no allocation, virtual call, parallel region or
/// exception after set-up. Per layer and step, for each packet of units:
///   [i, f, g, o] = [sigmoid, sigmoid, tanh, sigmoid](pre + W_hh h_{t-1}),
///                  pre = W_ih x_t + b_ih + b_hh
///   c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)
/// and with a projection (proj_size P) h_t = W_hr (o * tanh(c_t)), (P, H) x (H).
#pragma once

#include "seqnn/layers/lstm.hpp"
#include "seqnn/realtime/detail.hpp"

namespace seqnn::realtime {

/// A real-time twin of seqnn::LSTM: the layer's weights (stacked, unidirectional, with or
/// without bias, with or without proj_size) copied into a layout for one stream. Build it
/// from a loaded layer.
template <typename Scalar>
class LSTM {
public:
    /// Copies the layer's weights. Refuses a bidirectional layer. max_block: the longest
    /// block process_block runs in one pass (longer ones run in pieces); its scratch is
    /// allocated here. May allocate and throw.
    explicit LSTM(const seqnn::LSTM<Scalar>& layer, Index max_block = 512)
        : stack_("realtime::LSTM", layer, CellKind::LSTM, max_block) {}

    /// Features per sample in, I.
    Index input_size() const noexcept { return stack_.input_size(); }
    /// Features per sample out: H, or proj_size with a projection.
    Index output_size() const noexcept { return stack_.output_size(); }
    /// The longest block process_block runs in one pass.
    Index max_block() const noexcept { return stack_.max_block(); }
    /// Zero state.
    void reset() noexcept { stack_.reset(); }
    /// The carried state as layer.initial_state(1) shapes it: {h (L, H_r), c (L, H)}, H_r the
    /// output size. Allocates.
    State<Scalar> state() const { return stack_.state(); }
    /// Takes a state of one stream from the general API ({h (L, H_r), c (L, H)}; empty: zeros).
    /// Throws on other shapes.
    void set_state(const State<Scalar>& state) { stack_.set_state(state); }

    /// One sample: x[input_size()] -> y[output_size()], the top layer's h_t. x is read in full
    /// before y is written, so x and y may overlap.
    void process_sample(const Scalar* x, Scalar* y) noexcept { stack_.sample(x, y, Step{}); }
    /// One block: x (steps, input_size()) row-major and contiguous -> y (steps, output_size());
    /// any steps >= 0. x and y may be the same pointer when output_size() <= input_size();
    /// otherwise they must not overlap.
    void process_block(const Scalar* x, Index steps, Scalar* y) noexcept { stack_.block(x, steps, y, Step{}); }
    /// process_block on Eigen matrices, x (steps, input_size()) -> y (steps, output_size());
    /// throws on other shapes.
    void process_block(ConstMatrixRef<Scalar> x, MatrixRef<Scalar> y) { stack_.block(x, y, Step{}); }

private:
    using Stack = detail::Stack<Scalar>;

    /// One step of one layer (see detail::Stack).
    struct Step {
        EIGEN_STRONG_INLINE void operator()(const typename Stack::Layer& w, const Scalar* pre, const Scalar* h,
                                            Scalar* h_next, Scalar* c, Scalar* m) const noexcept {
            namespace ei = Eigen::internal;
            using Pk = detail::Packet<Scalar>;
            constexpr Index P = detail::kPacket<Scalar>;
            const Index Hp = w.Hp;
            const bool projected = !w.w_hr.empty();
            Scalar* out = projected ? m : h_next;  // o * tanh(c_t)
            for (Index u = 0; u < Hp; u += P) {
                // pre + W_hh h_{t-1}: (4Hp, H_r) x (H_r) for this packet's units
                Pk acc[4] = {ei::pload<Pk>(pre + u), ei::pload<Pk>(pre + Hp + u), ei::pload<Pk>(pre + 2 * Hp + u),
                             ei::pload<Pk>(pre + 3 * Hp + u)};
                detail::accumulate_columns<Scalar, 4>(h, w.Hr, w.w_hh.data() + u, 4 * Hp, Hp, acc);
                const Pk i = detail::logistic<Scalar>(acc[0]), f = detail::logistic<Scalar>(acc[1]);
                const Pk g = detail::tanh<Scalar>(acc[2]), o = detail::logistic<Scalar>(acc[3]);
                const Pk c_t = ei::pmadd(f, ei::pload<Pk>(c + u), ei::pmul(i, g));  // f c_{t-1} + i g
                ei::pstore(c + u, c_t);
                ei::pstore(out + u, ei::pmul(o, detail::tanh<Scalar>(c_t)));
            }
            if (projected) {
                const Index Hrp = w.Hrp;
                for (Index r = 0; r < Hrp; r += P) {  // h_t = W_hr m: (Hrp, H) x (H)
                    Pk acc[1] = {ei::pset1<Pk>(Scalar(0))};
                    detail::accumulate_columns<Scalar, 1>(m, w.H, w.w_hr.data() + r, Hrp, 0, acc);
                    ei::pstore(h_next + r, acc[0]);
                }
            }
        }
    };

    Stack stack_;
};

}  // namespace seqnn::realtime
