/// @file
/// What the real-time twins share: weights packed in whole SIMD packets, the small products
/// of one sample (sequences of multiply-adds over the input columns, no horizontal sums),
/// the gate activations on one packet, and detail::Stack, the state and loops of the GRU,
/// LSTM and RNN twins.
///
/// Layouts. A PyTorch weight (G*H, K) of G gates of H units becomes
///  - column-major (pack_columns): a (G*Hp, K) array whose column k holds gate 0's H rows,
///    zeros up to Hp (H rounded up to whole packets), then gate 1's, and so on: every gate
///    segment starts on a packet boundary of an aligned buffer;
///  - in panels (pack_panels, the recurrent twins' W_ih and W_hh): the same, cut by groups of
///    units (two packets, or one for the last), each group's columns contiguous, so that the
///    product of one group reads its weights in order at offsets known at compile time.
/// The padding rows are zero: the padded units compute finite values that nothing reads.
///
/// Nothing here allocates, throws or opens a parallel region once the weights are packed.
#pragma once

#include "seqnn/core/aligned.hpp"
#include "seqnn/core/errors.hpp"
#include "seqnn/core/types.hpp"
#include "seqnn/kernels/recurrent.hpp"
#include "seqnn/layers/recurrent.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

// Packet types (SIMD vectors with GCC attributes) are template arguments here, as in Eigen,
// which silences the same warning in its own headers: GCC notes that the attributes do not
// take part in the template's identity, which is harmless for these types.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

/// A function of its own with every call inside it inlined (GCC and Clang), for the twins'
/// per-sample and per-block loops.
#if defined(__GNUC__)
#define SEQNN_REALTIME_FLATTEN __attribute__((noinline, flatten))
#else
#define SEQNN_REALTIME_FLATTEN
#endif

namespace seqnn::realtime::detail {

/// Eigen's SIMD packet of Scalar (one scalar when Eigen does not vectorise it).
template <typename S>
using Packet = typename Eigen::internal::packet_traits<S>::type;

/// Scalars in one packet.
template <typename S>
inline constexpr Index kPacket = Eigen::internal::unpacket_traits<Packet<S>>::size;

/// Scalars in one packet of type Pk.
template <typename Pk>
inline constexpr Index kLanes = Eigen::internal::unpacket_traits<Pk>::size;

/// Eigen's packet of half the width of Packet<S> (8 floats where Packet<S> holds 16), or
/// Packet<S> itself where there is none.
template <typename S>
using HalfPacket = typename Eigen::internal::unpacket_traits<Packet<S>>::half;

/// n rounded up to whole packets (of type Pk).
template <typename S, typename Pk = Packet<S>>
constexpr Index padded(Index n) {
    return (n + kLanes<Pk> - 1) / kLanes<Pk> * kLanes<Pk>;
}

/// A zeroed aligned buffer of n scalars.
template <typename S>
AlignedVector<S> zeros(Index n) {
    return AlignedVector<S>(static_cast<std::size_t>(n), S(0));
}

/// w (G*H, K), PyTorch's layout of G gates of H rows each, packed column-major with gate
/// segments Hp apart: out[k*G*Hp + g*Hp + u] = w(g*H + u, k), zero for u >= H.
template <typename S>
AlignedVector<S> pack_columns(const Matrix<S>& w, Index gates, Index H, Index Hp) {
    const Index K = w.cols(), R = gates * Hp;
    AlignedVector<S> out = zeros<S>(K * R);
    for (Index k = 0; k < K; ++k)
        for (Index g = 0; g < gates; ++g)
            for (Index u = 0; u < H; ++u) out[static_cast<std::size_t>(k * R + g * Hp + u)] = w(g * H + u, k);
    return out;
}

/// v (G*H) as G segments Hp apart, zero padded; all zeros when v is empty (no bias).
template <typename S>
AlignedVector<S> pack_segments(const Matrix<S>& v, Index gates, Index H, Index Hp) {
    AlignedVector<S> out = zeros<S>(gates * Hp);
    if (v.size() == 0) return out;
    for (Index g = 0; g < gates; ++g)
        for (Index u = 0; u < H; ++u) out[static_cast<std::size_t>(g * Hp + u)] = v.data()[g * H + u];
    return out;
}

/// Units per group of the hidden products: two packets (for_unit_packets), the last group
/// one packet when their number is odd.
template <typename S, typename Pk = Packet<S>>
constexpr Index group_width(Index Hp, Index u) {
    return Hp - u >= 2 * kLanes<Pk> ? 2 * kLanes<Pk> : kLanes<Pk>;
}

/// w (G*H, K) packed for the hidden product in panels, one per group of units [u, u + W)
/// (W = group_width): the panel is column-major (G*W, K), column k holding gate 0's W units,
/// then gate 1's, and so on, zero past H; the panels follow each other, so the panel of the
/// group at u starts at u*G*K. The product then reads its weights in order, at offsets known
/// at compile time.
template <typename S, typename Pk = Packet<S>>
AlignedVector<S> pack_panels(const Matrix<S>& w, Index gates, Index H, Index Hp) {
    const Index K = w.cols();
    AlignedVector<S> out = zeros<S>(gates * Hp * K);
    std::size_t at = 0;
    for (Index u = 0; u < Hp; u += group_width<S, Pk>(Hp, u)) {
        const Index width = group_width<S, Pk>(Hp, u);
        for (Index k = 0; k < K; ++k)
            for (Index g = 0; g < gates; ++g)
                for (Index j = u; j < u + width; ++j, ++at)
                    if (j < H) out[at] = w(g * H + j, k);
    }
    return out;
}

/// out[0:R] = b[0:R] + sum_i x[i] w[i*R : (i+1)*R] for a column-major (R, I) w, R a multiple
/// of the packet size; w, b and out aligned. The input projection of one sample: multiply-adds
/// over the input columns, one accumulator per packet of rows, the input of one column
/// special-cased.
template <typename S>
EIGEN_STRONG_INLINE void project(const S* x, Index I, const S* w, const S* b, Index R, S* out) noexcept {
    namespace ei = Eigen::internal;
    using Pk = Packet<S>;
    constexpr Index P = kPacket<S>;
    if (I == 1) {
        const Pk x0 = ei::pset1<Pk>(x[0]);
        for (Index r = 0; r < R; r += P) ei::pstore(out + r, ei::pmadd(x0, ei::pload<Pk>(w + r), ei::pload<Pk>(b + r)));
        return;
    }
    for (Index r = 0; r < R; r += P) {
        Pk acc = ei::pload<Pk>(b + r);
        for (Index i = 0; i < I; ++i) acc = ei::pmadd(ei::pset1<Pk>(x[i]), ei::pload<Pk>(w + i * R + r), acc);
        ei::pstore(out + r, acc);
    }
}

/// project() for T rows of x (T, I), row-major and contiguous, into out (T, R).
template <typename S>
void project_rows(const S* x, Index T, Index I, const S* w, const S* b, Index R, S* out) noexcept {
    for (Index t = 0; t < T; ++t) project(x + t * I, I, w, b, R, out + t * R);
}

/// Accumulators that the hidden products keep in registers at once, leaving the other vector
/// registers to the broadcast column values and the loads.
inline constexpr int kAccumulators = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32 ? 16 : 12;

/// How many interleaved sums of the columns the hidden product of U packets of G gates
/// runs: as many as the registers hold (at most 4), so that its chains of dependent
/// multiply-adds are as short as they can be.
constexpr int column_splits(int gates, int units) {
    return gates * units * 4 <= kAccumulators ? 4 : gates * units * 2 <= kAccumulators ? 2 : 1;
}

/// acc[v][g] += sum_{k < K} h[k] w[k*ld + g*gate_stride + v*P] for U consecutive packets of
/// units (v) of G gates (g): the hidden product of those units, w pointing at their offset
/// in column 0 of a column-major packed weight. The columns are split over N interleaved
/// sums (k mod N, the last K mod N columns in the first), added up at the end in a fixed
/// order: every result is the same whatever the data.
template <typename S, int G, int U, int N = column_splits(G, U), typename Pk>
EIGEN_STRONG_INLINE void accumulate_columns(const S* h, Index K, const S* w, Index ld, Index gate_stride,
                                            Pk (&acc)[U][G]) noexcept {
    namespace ei = Eigen::internal;
    constexpr Index P = kLanes<Pk>;
    Pk part[N][U][G];
    for (int v = 0; v < U; ++v)
        for (int g = 0; g < G; ++g) {
            part[0][v][g] = acc[v][g];
            for (int s = 1; s < N; ++s) part[s][v][g] = ei::pset1<Pk>(S(0));
        }
    const auto add_column = [&](Pk(&sum)[U][G], Index k) {
        const Pk hk = ei::pset1<Pk>(h[k]);
        const S* col = w + k * ld;
        for (int v = 0; v < U; ++v)
            for (int g = 0; g < G; ++g)
                sum[v][g] = ei::pmadd(hk, ei::pload<Pk>(col + g * gate_stride + v * P), sum[v][g]);
    };
    Index k = 0;
    for (; k + N <= K; k += N)
        for (int s = 0; s < N; ++s) add_column(part[s], k + s);
    for (; k < K; ++k) add_column(part[0], k);
    for (int v = 0; v < U; ++v)
        for (int g = 0; g < G; ++g) {
            if constexpr (N == 4)
                acc[v][g] = ei::padd(ei::padd(part[0][v][g], part[1][v][g]), ei::padd(part[2][v][g], part[3][v][g]));
            else if constexpr (N == 2)
                acc[v][g] = ei::padd(part[0][v][g], part[1][v][g]);
            else
                acc[v][g] = part[0][v][g];
        }
}

/// acc[v][g] += sum_{k < K} h[k] panel[k*G*U*P + (g*U + v)*P + lane]: the hidden product of
/// the group of U packets of units whose panel (pack_panels) starts at `panel`, as
/// accumulate_columns with the panel's strides, which are known at compile time.
template <typename S, int G, int U, int N = column_splits(G, U), typename Pk>
EIGEN_STRONG_INLINE void accumulate_panel(const S* h, Index K, const S* panel, Pk (&acc)[U][G]) noexcept {
    accumulate_columns<S, G, U, N>(h, K, panel, G * U * kLanes<Pk>, U * kLanes<Pk>, acc);
}

/// accumulate_columns for one packet of units: acc[g] += sum_{k < K} h[k] w[k*ld + g*gate_stride].
template <typename S, int G, typename Pk>
EIGEN_STRONG_INLINE void accumulate_columns(const S* h, Index K, const S* w, Index ld, Index gate_stride,
                                            Pk (&acc)[G]) noexcept {
    Pk one[1][G];
    for (int g = 0; g < G; ++g) one[0][g] = acc[g];
    accumulate_columns<S, G, 1>(h, K, w, ld, gate_stride, one);
    for (int g = 0; g < G; ++g) acc[g] = one[0][g];
}

/// Runs body.template operator()<U>(u) over the packets of units u = 0, P, .., Hp - P: two
/// packets at a time (the hidden product then broadcasts each column value once for both),
/// the last one alone when their number is odd.
template <typename S, typename Pk = Packet<S>, typename Body>
EIGEN_STRONG_INLINE void for_unit_packets(Index Hp, const Body& body) noexcept {
    constexpr Index P = kLanes<Pk>;
    Index u = 0;
    for (; u + 2 * P <= Hp; u += 2 * P) body.template operator()<2>(u);
    if (u < Hp) body.template operator()<1>(u);
}

/// y[0:n] = from[0:n]. A plain copy, which the compiler vectorises: with packet stores of
/// its own into a y of fewer than a packet of scalars, g++ warns that a store it never
/// reaches would overrun y.
template <typename S>
EIGEN_STRONG_INLINE void copy_out(const S* from, Index n, S* y) noexcept {
    std::copy_n(from, n, y);
}

/// The functor `Op` on one packet as Eigen's array expressions apply it: its vectorised form
/// where Eigen has one for S, the scalar function lane by lane otherwise.
template <typename S, typename Op, typename Pk = Packet<S>>
EIGEN_STRONG_INLINE Pk apply(const Pk& x) noexcept {
    if constexpr (Eigen::internal::functor_traits<Op>::PacketAccess) {
        return Op().packetOp(x);
    } else {
        constexpr Index P = kLanes<Pk>;
        alignas(Pk) S lanes[P];
        Eigen::internal::pstore(lanes, x);
        for (Index i = 0; i < P; ++i) lanes[i] = Op()(lanes[i]);
        return Eigen::internal::pload<Pk>(lanes);
    }
}

/// 1 / (1 + exp(-x)) on one packet, as Eigen's Array::logistic().
template <typename S, typename Pk = Packet<S>>
EIGEN_STRONG_INLINE Pk logistic(const Pk& x) noexcept {
    return apply<S, Eigen::internal::scalar_logistic_op<S>>(x);
}

/// tanh on one packet, as Eigen's Array::tanh().
template <typename S, typename Pk = Packet<S>>
EIGEN_STRONG_INLINE Pk tanh(const Pk& x) noexcept {
    return apply<S, Eigen::internal::scalar_tanh_op<S>>(x);
}

/// max(x, 0) on one packet.
template <typename S, typename Pk = Packet<S>>
EIGEN_STRONG_INLINE Pk relu(const Pk& x) noexcept {
    return Eigen::internal::pmax(x, Eigen::internal::pset1<Pk>(S(0)));
}

/// Throws unless max_block > 0 (a twin's set-up).
inline void check_max_block(const std::string& twin, Index max_block) {
    if (max_block <= 0) fail(twin, "max_block must be positive, got " + std::to_string(max_block));
}

/// Throws unless the Eigen overload's x (steps, in) and y (steps, out) agree with the twin.
/// Allocates nothing when they do (the twin's name is a C string until a message is built).
template <typename S>
void check_block(const char* twin, ConstMatrixRef<S> x, MatrixRef<S> y, Index in, Index out) {
    if (x.cols() != in)
        fail(std::string(twin) + ".process_block",
             "x has shape " + shape_string(x) + ", expected (steps, " + std::to_string(in) + ")");
    if (y.rows() != x.rows() || y.cols() != out)
        fail(std::string(twin) + ".process_block", "y has shape " + shape_string(y) + ", expected " +
                                                       shape_string(x.rows(), out) + " for x " + shape_string(x));
}

/// Whether a twin's process_block computes the input projections of a piece of samples as one
/// product before the recurrence (batched) rather than inside each step (fused), for a layer
/// of I_k inputs and H units per gate. Fused, the projection's multiply-adds run in the idle
/// slots of the recurrence's chain of dependent operations (a step of a small layer is
/// latency-bound: the activations wait on the products, the products on the last h), so a
/// product of its own would only add time. Batched pays once a step is bound by reading the
/// weights: a register-blocked product reads W_ih once for several samples instead of once
/// per sample (stacked layers, wide inputs).
inline bool batched_projection(Index inputs, Index units) { return units >= 64 && inputs >= 16; }

/// Whether process_block runs a stack of layers time step by time step (every layer at step t,
/// then step t + 1, as process_sample does) rather than layer by layer over a piece, given the
/// packet multiply-adds a time step of the whole stack costs. A small stack's step is bound by
/// its chains of dependent operations: stepping all layers together lets layer k + 1 at step t
/// overlap layer k at step t + 1. A larger one is bound by arithmetic and by reading weights,
/// where one layer's weights staying in cache over a whole piece pays more.
inline bool time_major_stack(Index layers, Index packet_madds) { return layers > 1 && packet_madds <= 256; }

/// What the GRU, LSTM and RNN twins share: a stack of L unidirectional layers of one cell
/// kind, its weights packed for one stream, its state and the loops of process_sample and
/// process_block. The twin supplies the cell (its `Step`):
///   step.template operator()<Fused>(layer, in, h, h_next, c, m)
/// runs one step of one layer. Fused: `in` is the layer's input x_t (I_k), whose projection
/// the step adds to its accumulators itself (W_ih in panels, biases folded); otherwise `in`
/// is the input's pre-activation (G*Hp) with the folded biases, computed beforehand. h (Hrp)
/// is the layer's h_{t-1}, h_next (Hrp) receives h_t; c (Hp) is the layer's cell state
/// (LSTM, else null), m (Hp) scratch (the LSTM's o * tanh(c) before a projection).
///
/// Per layer k the buffers are: h twice (h_{t-1} and h_t, swapped after each step), c once
/// (a unit's c is read and written by that unit only). process_sample steps every layer
/// with its projection fused. process_block steps a small stack the same way, sample by
/// sample (time_major_stack); otherwise it runs in pieces of at most max_block samples, each
/// layer over the whole piece before the next: a layer below the top writes its outputs into
/// `between`, which the next layer reads (and, batched, projects into `pre` as one product)
/// before it writes its own there.
template <typename S, typename Pk = Packet<S>>
class Stack {
public:
    /// One layer's weights, packed in packets of type Pk.
    struct Layer {
        using Packet = Pk;         ///< the SIMD packet the cell steps over
        Index input = 0;           ///< I_k: I for k = 0, H_r above
        Index H = 0;               ///< units per gate
        Index Hr = 0;              ///< the width of h: H, or the LSTM's proj_size
        Index Hp = 0;              ///< H rounded up to whole packets: the gate segments' stride
        Index Hrp = 0;             ///< H_r rounded up to whole packets
        AlignedVector<S> w_ih;     ///< (G*Hp, I_k) in panels (pack_panels), for the fused projection
        AlignedVector<S> w_hh;     ///< (G*Hp, H_r) in panels
        AlignedVector<S> bias;     ///< (G*Hp): b_ih + b_hh (GRU's n gate: b_in only)
        AlignedVector<S> bias_hn;  ///< (Hp): the GRU's b_hn, which r multiplies; empty otherwise
        AlignedVector<S> w_hr;     ///< (Hrp, H) in panels: the LSTM's projection; empty without
        bool batched = false;      ///< process_block projects a piece at once (batched_projection)
        recurrent_detail::PackedPanels<S> w_ih_rows;  ///< W_ih^T (I_k, G*Hp) for that product
    };

    /// Packs `layer` (cell `cell`) for one stream; `twin` names the twin in errors.
    Stack(const char* twin, const RecurrentStack<S>& layer, CellKind cell, Index max_block)
        : twin_(twin), cell_(cell), G_(gate_count(cell)), I_(layer.input_size()), H_(layer.hidden_size()),
          Hr_(layer.real_hidden_size()), L_(layer.num_layers()), Hp_(padded<S, Pk>(H_)), Hrp_(padded<S, Pk>(Hr_)),
          max_block_(max_block) {
        check_max_block(twin, max_block);
        if (layer.directions() != 1)
            fail(twin, "a bidirectional " + layer.kind() + " (" + layer.signature() +
                           ") cannot stream: its reverse direction needs the whole sequence");
        const Index R = G_ * Hp_;
        // Packet multiply-adds of one time step of the whole stack: (G*Hp/P) x (I_k + H_r) a layer.
        const Index madds = R / kLanes<Pk> * (I_ + Hr_ + (L_ - 1) * 2 * Hr_);
        time_major_ = time_major_stack(L_, madds);
        bool any_batched = false;
        for (Index k = 0; k < L_; ++k) {
            const auto& w = layer.weights(k);
            const Index input = k == 0 ? I_ : Hr_;
            const auto expect = [&](const char* name, const Matrix<S>& m, Index rows, Index cols) {
                if (m.rows() != rows || m.cols() != cols)
                    fail(twin, std::string(name) + "_l" + std::to_string(k) + " has shape " + shape_string(m) +
                                   ", expected " + shape_string(rows, cols) + " for " + layer.signature());
            };
            expect("weight_ih", w.weight_ih.value, G_ * H_, input);
            expect("weight_hh", w.weight_hh.value, G_ * H_, Hr_);
            const bool bias = layer.options().bias;
            if (bias) {
                expect("bias_ih", w.bias_ih.value, 1, G_ * H_);
                expect("bias_hh", w.bias_hh.value, 1, G_ * H_);
            }
            if (Hr_ != H_) expect("weight_hr", w.weight_hr.value, Hr_, H_);
            Layer p;
            p.input = input;
            p.H = H_;
            p.Hr = Hr_;
            p.Hp = Hp_;
            p.Hrp = Hrp_;
            p.w_ih = pack_panels<S, Pk>(w.weight_ih.value, G_, H_, Hp_);
            p.w_hh = pack_panels<S, Pk>(w.weight_hh.value, G_, H_, Hp_);
            p.bias = zeros<S>(R);
            if (bias) {
                const AlignedVector<S> b_ih = pack_segments<S>(w.bias_ih.value, G_, H_, Hp_);
                const AlignedVector<S> b_hh = pack_segments<S>(w.bias_hh.value, G_, H_, Hp_);
                // The GRU's n gate keeps b_hn apart: r multiplies W_hn h + b_hn.
                const Index folded = cell == CellKind::GRU ? 2 * Hp_ : R;
                for (Index j = 0; j < R; ++j)
                    p.bias[static_cast<std::size_t>(j)] = j < folded ? b_ih[static_cast<std::size_t>(j)] +
                                                                           b_hh[static_cast<std::size_t>(j)]
                                                                     : b_ih[static_cast<std::size_t>(j)];
                if (cell == CellKind::GRU) p.bias_hn.assign(b_hh.begin() + 2 * Hp_, b_hh.end());
            }
            if (cell == CellKind::GRU && p.bias_hn.empty()) p.bias_hn = zeros<S>(Hp_);
            if (Hr_ != H_) p.w_hr = pack_panels<S, Pk>(w.weight_hr.value, 1, Hr_, Hrp_);
            // The batched product writes whole packets of Packet<S>: only at that width.
            p.batched = !time_major_ && kLanes<Pk> == kPacket<S> && batched_projection(input, H_);
            if (p.batched) {
                const Matrix<S>& w_ih = w.weight_ih.value;
                p.w_ih_rows.pack(input, R, [&](Index i, Index j) {  // (I_k, G*Hp): W_ih^T, zero padded
                    const Index g = j / Hp_, u = j % Hp_;
                    return u < H_ ? w_ih(g * H_ + u, i) : S(0);
                });
                any_batched = true;
            }
            layers_.push_back(std::move(p));
        }
        hidden_ = zeros<S>(2 * L_ * Hrp_);
        current_.assign(static_cast<std::size_t>(L_), 0);
        if (cell == CellKind::LSTM) cells_ = zeros<S>(L_ * Hp_);
        scratch_ = zeros<S>(Hp_);
        if (any_batched) pre_ = zeros<S>(checked_mul(twin, max_block, R));
        if (L_ > 1 && !time_major_) between_ = zeros<S>(checked_mul(twin, max_block, Hr_));
    }

    /// I.
    Index input_size() const noexcept { return I_; }
    /// H_r, the width of h and of the output.
    Index output_size() const noexcept { return Hr_; }
    /// The longest piece of a block.
    Index max_block() const noexcept { return max_block_; }

    /// Zero state.
    void reset() noexcept {
        std::fill(hidden_.begin(), hidden_.end(), S(0));
        std::fill(cells_.begin(), cells_.end(), S(0));
        position_ = 0;
    }

    /// The state as the layer's initial_state(1) shapes it: {h (L, H_r)} (+ {c (L, H)}), with
    /// the step workspace, B = 1, the samples consumed so far as its position.
    State<S> state() const {
        State<S> s;
        s.batch = 1;
        s.position = position_;
        s.tensors.push_back(Matrix<S>(L_, Hr_));
        for (Index k = 0; k < L_; ++k)
            for (Index u = 0; u < Hr_; ++u) s.tensors[0](k, u) = h(k)[u];
        if (cell_ == CellKind::LSTM) {
            s.tensors.push_back(Matrix<S>(L_, H_));
            for (Index k = 0; k < L_; ++k)
                for (Index u = 0; u < H_; ++u) s.tensors[1](k, u) = cells_[static_cast<std::size_t>(k * Hp_ + u)];
        }
        s.workspace = {Matrix<S>(1, G_ * H_), Matrix<S>(1, G_ * H_)};
        if (Hr_ != H_) s.workspace.push_back(Matrix<S>(1, H_));
        return s;
    }

    /// Takes the state of one stream from the general API (initial_state(1), forward or step
    /// with B = 1); an empty state is the zero state. Throws on other shapes.
    void set_state(const State<S>& state) {
        if (state.empty()) return reset();
        const std::string where = std::string(twin_) + ".set_state";
        if (state.batch > 1)
            fail(where, "the state was made for B=" + std::to_string(state.batch) + " streams; a twin runs one");
        if (!state.children.empty())
            fail(where, "the state has " + std::to_string(state.children.size()) + " child states, expected none");
        const std::size_t count = cell_ == CellKind::LSTM ? 2 : 1;
        if (state.tensors.size() != count)
            fail(where, "the state has " + std::to_string(state.tensors.size()) + " tensors, expected " +
                            std::to_string(count) + (count == 2 ? " (h and c)" : " (h)"));
        const Index widths[2] = {Hr_, H_};
        for (std::size_t i = 0; i < count; ++i)
            if (state.tensors[i].rows() != L_ || state.tensors[i].cols() != widths[i])
                fail(where, std::string(i == 0 ? "h" : "c") + " has shape " + shape_string(state.tensors[i]) +
                                ", expected " + shape_string(L_, widths[i]) + " (L, " + (i == 0 ? "H_r" : "H") +
                                ") for one stream");
        reset();
        for (Index k = 0; k < L_; ++k) std::copy_n(state.tensors[0].row(k).data(), Hr_, h(k));
        if (count == 2)
            for (Index k = 0; k < L_; ++k) std::copy_n(state.tensors[1].row(k).data(), H_, cells_.data() + k * Hp_);
        position_ = state.position;
    }

    /// One sample through every layer, each step with its projection fused; y receives the
    /// top layer's h_t. x is read before y is written.
    template <typename Step>
    EIGEN_ALWAYS_INLINE void sample(const S* x, S* y, const Step& step) noexcept {
        const S* input = x;
        for (Index k = 0; k < L_; ++k) {
            S* h_next = h_other(k);
            step.template operator()<true>(layers_[static_cast<std::size_t>(k)], input, h(k), h_next, cell(k),
                                           scratch_.data());
            current_[static_cast<std::size_t>(k)] ^= 1;
            input = h_next;
        }
        copy_out(input, Hr_, y);
        ++position_;
    }

    /// `steps` samples: a small stack sample by sample (time_major), a larger one in pieces
    /// of at most max_block, each layer over the piece before the next, its projections fused
    /// into the steps or batched, (T, I_k) x (I_k, G*Hp) into `pre`, then the recurrence.
    template <typename Step>
    void block(const S* x, Index steps, S* y, const Step& step) noexcept {
        if (time_major_) return time_major(x, steps, y, step);
        const Index R = G_ * Hp_;
        for (Index t0 = 0; t0 < steps; t0 += max_block_) {
            const Index T = std::min(max_block_, steps - t0);
            const S* input = x + t0 * I_;  // (T, I_k)
            for (Index k = 0; k < L_; ++k) {
                const Layer& w = layers_[static_cast<std::size_t>(k)];
                S* out = k + 1 == L_ ? y + t0 * Hr_ : between_.data();  // (T, H_r)
                if (w.batched) {
                    recurrent_detail::gemm_packed<S>(input, w.input, T, w.w_ih_rows, pre_.data(), R, w.bias.data(),
                                                     false);  // (T, I_k) x (I_k, G*Hp) + b
                    recurrence<false>(k, pre_.data(), R, T, out, step);
                } else {
                    recurrence<true>(k, input, w.input, T, out, step);
                }
                input = between_.data();
            }
            position_ += T;
        }
    }

    /// The Eigen overload's loop: checks the shapes, then process_block on contiguous rows, or
    /// sample by sample on strided ones (the same arithmetic).
    template <typename Step>
    void block(ConstMatrixRef<S> x, MatrixRef<S> y, const Step& step) {
        check_block<S>(twin_, x, y, I_, Hr_);
        if ((x.rows() <= 1 || x.outerStride() == I_) && (y.rows() <= 1 || y.outerStride() == Hr_))
            return block(x.data(), x.rows(), y.data(), step);
        for (Index t = 0; t < x.rows(); ++t) sample(x.row(t).data(), y.row(t).data(), step);
    }

private:
    /// process_block of a small stack (time_major_stack): as process_sample, sample by sample;
    /// layer k's h_{t-1} alternates between its two buffers with t. Kept out of line: inlined
    /// into block(), its steps ran several percent slower than process_sample's.
    template <typename Step>
    EIGEN_DONT_INLINE void time_major(const S* x, Index steps, S* y, const Step& step) noexcept {
        for (Index t = 0; t < steps; ++t) {
            const S* input = x + t * I_;
            const unsigned char odd = static_cast<unsigned char>(t & 1);
            for (Index k = 0; k < L_; ++k) {
                const unsigned char now = current_[static_cast<std::size_t>(k)] ^ odd;
                S* h_prev = hidden_.data() + (2 * k + now) * Hrp_;
                S* h_next = hidden_.data() + (2 * k + (now ^ 1)) * Hrp_;
                step.template operator()<true>(layers_[static_cast<std::size_t>(k)], input, h_prev, h_next,
                                               cell(k), scratch_.data());
                input = h_next;
            }
            copy_out(input, Hr_, y + t * Hr_);
        }
        for (unsigned char& c : current_) c ^= static_cast<unsigned char>(steps & 1);
        position_ += steps;
    }

    /// T steps of layer k, writing h_t to out (T, H_r): row t of in (stride ld) is x_t (Fused)
    /// or its projection.
    template <bool Fused, typename Step>
    EIGEN_ALWAYS_INLINE void recurrence(Index k, const S* in, Index ld, Index T, S* out, const Step& step) noexcept {
        const Layer& w = layers_[static_cast<std::size_t>(k)];
        S* h_prev = h(k);
        S* h_next = h_other(k);
        S* c = cell(k);
        for (Index t = 0; t < T; ++t) {
            step.template operator()<Fused>(w, in + t * ld, h_prev, h_next, c, scratch_.data());
            copy_out(h_next, Hr_, out + t * Hr_);
            std::swap(h_prev, h_next);
        }
        current_[static_cast<std::size_t>(k)] ^= static_cast<unsigned char>(T & 1);
    }

    S* h(Index k) noexcept { return hidden_.data() + (2 * k + current_[static_cast<std::size_t>(k)]) * Hrp_; }
    const S* h(Index k) const noexcept {
        return hidden_.data() + (2 * k + current_[static_cast<std::size_t>(k)]) * Hrp_;
    }
    S* h_other(Index k) noexcept {
        return hidden_.data() + (2 * k + (current_[static_cast<std::size_t>(k)] ^ 1)) * Hrp_;
    }
    S* cell(Index k) noexcept { return cells_.empty() ? nullptr : cells_.data() + k * Hp_; }

    const char* twin_;
    CellKind cell_;
    Index G_, I_, H_, Hr_, L_, Hp_, Hrp_, max_block_;
    Index position_ = 0;
    bool time_major_ = false;  // process_block steps all layers per sample (time_major_stack)
    std::vector<Layer> layers_;
    AlignedVector<S> hidden_;             // (L, 2, Hrp): h_{t-1} and h_t per layer
    std::vector<unsigned char> current_;  // per layer: which of its two h buffers holds h_{t-1}
    AlignedVector<S> cells_;              // (L, Hp): the LSTM's c
    AlignedVector<S> scratch_;            // (Hp): the LSTM's o * tanh(c) before its projection
    AlignedVector<S> pre_;                // (max_block, G*Hp): a piece's projections (batched layers)
    AlignedVector<S> between_;            // (max_block, H_r): a lower layer's outputs (L > 1)
};

/// A Stack at the SIMD width its sizes run fastest at. A step of a small layer is one chain of
/// dependent operations (the hidden product, then the sigmoids and tanh, each a polynomial
/// and a division), and on a wider packet that chain takes longer without doing more useful
/// work once the units fit in a narrower one. So where Eigen's packet has a half of at least
/// 256 bits (with AVX-512: 8 floats, 4 doubles), a stack whose H and H_r fit in one half
/// packet runs on half packets; every other stack on whole ones (two half packets, a hidden
/// size of 16 floats, measured slower than one whole packet in bench_realtime). Its calls
/// are the Stack's, passed to the one that was built (one predictable branch a call).
template <typename S>
class SizedStack {
public:
    /// Builds the Stack of the width that narrow() picks.
    SizedStack(const char* twin, const RecurrentStack<S>& layer, CellKind cell, Index max_block) {
        if (narrow(layer.hidden_size(), layer.real_hidden_size()))
            narrow_.emplace(twin, layer, cell, max_block);
        else
            wide_.emplace(twin, layer, cell, max_block);
    }

    /// Whether a stack of H units per gate and an h of width H_r runs on HalfPacket<S>.
    static constexpr bool narrow(Index H, Index Hr) noexcept {
        constexpr Index half = kLanes<HalfPacket<S>>;
        return half < kPacket<S> && sizeof(HalfPacket<S>) >= 32 && std::max(H, Hr) <= half;
    }

    // Stack's calls, on the Stack that was built.
    Index input_size() const noexcept { return visit([](const auto& s) { return s.input_size(); }); }
    Index output_size() const noexcept { return visit([](const auto& s) { return s.output_size(); }); }
    Index max_block() const noexcept { return visit([](const auto& s) { return s.max_block(); }); }
    void reset() noexcept { visit([](auto& s) { s.reset(); }); }
    State<S> state() const { return visit([](const auto& s) { return s.state(); }); }
    void set_state(const State<S>& state) { visit([&](auto& s) { s.set_state(state); }); }
    template <typename Step>
    EIGEN_ALWAYS_INLINE void sample(const S* x, S* y, const Step& step) noexcept {
        if (narrow_)
            sample_on(*narrow_, x, y, step);
        else
            wide_->sample(x, y, step);
    }
    template <typename Step>
    void block(const S* x, Index steps, S* y, const Step& step) noexcept {
        if (narrow_)
            block_on(*narrow_, x, steps, y, step);
        else
            wide_->block(x, steps, y, step);
    }
    template <typename Step>
    void block(ConstMatrixRef<S> x, MatrixRef<S> y, const Step& step) {
        visit([&](auto& s) { s.block(x, y, step); });
    }

private:
    // The narrow Stack's loops in a function of their own with everything inlined into it;
    // the wide one's inline where the twin is called. With both inlined into one caller, g++
    // runs out of inlining budget and calls the activations out of line (per sample at
    // hidden 16 to 32, 1.2x to 1.4x slower in bench_realtime).
    template <typename Stack, typename Step>
    SEQNN_REALTIME_FLATTEN static void sample_on(Stack& s, const S* x, S* y, const Step& step) noexcept {
        s.sample(x, y, step);
    }
    template <typename Stack, typename Step>
    SEQNN_REALTIME_FLATTEN static void block_on(Stack& s, const S* x, Index steps, S* y, const Step& step) noexcept {
        s.block(x, steps, y, step);
    }

    template <typename F>
    EIGEN_ALWAYS_INLINE decltype(auto) visit(F&& f) {
        return narrow_ ? f(*narrow_) : f(*wide_);
    }
    template <typename F>
    EIGEN_ALWAYS_INLINE decltype(auto) visit(F&& f) const {
        return narrow_ ? f(*narrow_) : f(*wide_);
    }

    std::optional<Stack<S, HalfPacket<S>>> narrow_;
    std::optional<Stack<S>> wide_;
};

}  // namespace seqnn::realtime::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
