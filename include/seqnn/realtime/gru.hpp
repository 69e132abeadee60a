/// @file
/// realtime::GRU: seqnn::GRU (PyTorch's nn.GRU, gate order r, z, n) for one stream, one
/// sample or one block at a time, with no allocation, virtual call, parallel region or
/// exception after set-up. Per layer and step, for each packet of units:
///   [r, z] = sigmoid(pre_rz + W_h[r,z] h_{t-1}),  pre_rz = W_i[r,z] x_t + b_i[r,z] + b_h[r,z]
///   n      = tanh(pre_n + r * (W_hn h_{t-1} + b_hn)),  pre_n = W_in x_t + b_in
///   h_t    = (1 - z) * n + z * h_{t-1}
/// with every product a sequence of multiply-adds over packed columns (realtime/detail.hpp).
#pragma once

#include "seqnn/layers/gru.hpp"
#include "seqnn/realtime/detail.hpp"

namespace seqnn::realtime {

/// A real-time twin of seqnn::GRU: the layer's weights (stacked, unidirectional, with or
/// without bias) copied into a layout for one stream. Build it from a loaded layer.
template <typename Scalar>
class GRU {
public:
    /// Copies the layer's weights. Refuses a bidirectional layer. max_block: the longest
    /// block process_block runs in one pass (longer ones run in pieces); its scratch is
    /// allocated here. May allocate and throw.
    explicit GRU(const seqnn::GRU<Scalar>& layer, Index max_block = 512)
        : stack_("realtime::GRU", layer, CellKind::GRU, max_block) {}

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
                                            Scalar* h_next, Scalar*, Scalar*) const noexcept {
            namespace ei = Eigen::internal;
            using Pk = typename Layer::Packet;
            constexpr Index P = detail::kLanes<Pk>;
            const Index Hp = w.Hp;
            detail::for_unit_packets<Scalar, Pk>(Hp, [&]<int U>(Index u) {
                // The input's part, W_i x_t + b: [r, z] with b_h folded in, [n] with b_in only.
                Pk x_part[U][3];
                for (int v = 0; v < U; ++v)
                    for (int g = 0; g < 3; ++g)
                        x_part[v][g] = ei::pload<Pk>((Fused ? w.bias.data() : in) + g * Hp + u + v * P);
                if constexpr (Fused)  // (3Hp, I) x (I) for these units, off the recurrence's chain
                    detail::accumulate_panel<Scalar, 3, U, 1>(in, w.input, w.w_ih.data() + u * 3 * w.input, x_part);
                // The hidden part: [r, z] += W_h h_{t-1};  [n] = W_hn h_{t-1} + b_hn.  (3Hp, H) x (H)
                Pk acc[U][3];
                for (int v = 0; v < U; ++v) {
                    acc[v][0] = x_part[v][0];
                    acc[v][1] = x_part[v][1];
                    acc[v][2] = ei::pload<Pk>(w.bias_hn.data() + u + v * P);
                }
                detail::accumulate_panel<Scalar, 3, U>(h, w.H, w.w_hh.data() + u * 3 * w.H, acc);
                const Pk one = ei::pset1<Pk>(Scalar(1));
                for (int v = 0; v < U; ++v) {
                    const Index at = u + v * P;
                    const Pk r = detail::logistic<Scalar>(acc[v][0]), z = detail::logistic<Scalar>(acc[v][1]);
                    const Pk n = detail::tanh<Scalar>(ei::pmadd(r, acc[v][2], x_part[v][2]));
                    // h_t = (1 - z) n + z h_{t-1}: one multiply-add after n
                    ei::pstore(h_next + at, ei::pmadd(ei::psub(one, z), n, ei::pmul(z, ei::pload<Pk>(h + at))));
                }
            });
        }
    };

    detail::SizedStack<Scalar> stack_;
};

}  // namespace seqnn::realtime
