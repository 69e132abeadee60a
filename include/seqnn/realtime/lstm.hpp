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
    /// One step of one layer (see detail::Stack): `in` is x_t when Fused, else its projection.
    struct Step {
        template <bool Fused, typename Layer>
        EIGEN_STRONG_INLINE void operator()(const Layer& w, const Scalar* in, const Scalar* h,
                                            Scalar* h_next, Scalar* c, Scalar* m) const noexcept {
            namespace ei = Eigen::internal;
            using Pk = typename Layer::Packet;
            constexpr Index P = detail::kLanes<Pk>;
            const Index Hp = w.Hp;
            const bool projected = !w.w_hr.empty();
            Scalar* out = projected ? m : h_next;  // o * tanh(c_t)
            detail::for_unit_packets<Scalar, Pk>(Hp, [&]<int U>(Index u) {
                // W_ih x_t + b_ih + b_hh, then + W_hh h_{t-1}: (4Hp, I) x (I) and (4Hp, H_r) x (H_r)
                Pk acc[U][4];
                for (int v = 0; v < U; ++v)
                    for (int g = 0; g < 4; ++g)
                        acc[v][g] = ei::pload<Pk>((Fused ? w.bias.data() : in) + g * Hp + u + v * P);
                if constexpr (Fused)
                    detail::accumulate_panel<Scalar, 4, U, 1>(in, w.input, w.w_ih.data() + u * 4 * w.input, acc);
                detail::accumulate_panel<Scalar, 4, U>(h, w.Hr, w.w_hh.data() + u * 4 * w.Hr, acc);
                for (int v = 0; v < U; ++v) {
                    const Index at = u + v * P;
                    const Pk i = detail::logistic<Scalar>(acc[v][0]), f = detail::logistic<Scalar>(acc[v][1]);
                    const Pk g = detail::tanh<Scalar>(acc[v][2]), o = detail::logistic<Scalar>(acc[v][3]);
                    const Pk c_t = ei::pmadd(i, g, ei::pmul(f, ei::pload<Pk>(c + at)));  // f c_{t-1} + i g
                    ei::pstore(c + at, c_t);
                    ei::pstore(out + at, ei::pmul(o, detail::tanh<Scalar>(c_t)));
                }
            });
            if (projected) {
                detail::for_unit_packets<Scalar, Pk>(w.Hrp, [&]<int U>(Index r) {  // h_t = W_hr m: (Hrp, H) x (H)
                    Pk acc[U][1];
                    for (int v = 0; v < U; ++v) acc[v][0] = ei::pset1<Pk>(Scalar(0));
                    detail::accumulate_panel<Scalar, 1, U>(m, w.H, w.w_hr.data() + r * w.H, acc);
                    for (int v = 0; v < U; ++v) ei::pstore(h_next + r + v * P, acc[v][0]);
                });
            }
        }
    };

    detail::SizedStack<Scalar> stack_;
};

}  // namespace seqnn::realtime
