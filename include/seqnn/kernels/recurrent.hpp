/// @file
/// The time loop of the sequential cells (Elman RNN, LSTM, GRU): forward over T steps,
/// backward through time, and one streaming step, for one layer.
///
/// A step is two products, x_t W_ih^T (B, I) x (I, G*H) and h_{t-1} W_hh^T
/// (B, H) x (H, G*H), then the cell; only the second depends on the previous step.
/// Forward and backward run the whole time loop inside one parallel region:
///
///  - the hidden units are split into blocks of whole SIMD packets, one block per thread
///    (a "slot"); a slot owns every gate of its units;
///  - before the loop each slot packs its rows of W_ih and W_hh (G*nu of each) once
///    into panels that stay in its own cache for all T steps (a general GEMM would
///    repack both operands at every step; bench_recurrent's BM_StepProduct* measure
///    the difference);
///  - at step t each slot multiplies x_t and the shared h_{t-1} (all H units) by its
///    panels (gemm_packed below), applies the cell to its units and writes its units
///    of h_t; then one barrier, after which h_t is complete for every slot. The input
///    product is computed where it is used, so the (B*T, G*H) pre-activations never
///    travel through memory; in training the gate activations are written out once.
///
/// Backward runs the same way in reverse: each slot turns dL/dh_t of its units into the
/// gate gradients of its units, one barrier, then multiplies the whole step's gate
/// gradients (B, G*H) by its columns of W_hh to get dL/dh_{t-1} of its units. The weight
/// gradients are left to the caller: one large GEMM over all steps after the loop.
///
/// Every output element is computed by the same sequence of operations whatever the
/// thread count (the products sum over k in order with one multiply-add per term, and
/// the cell math works on packets aligned to unit indices), so results are bitwise
/// equal on any number of threads.
///
/// Variable lengths (a padded batch, PyTorch's pack_padded_sequence): with lengths, the
/// batch rows are put once in rank order, longest first, so that the rows still running
/// at step t are ranks [0, n_t). Both products and the cell run over those rows only, so
/// an ended sequence costs nothing; its h (and c) stay at its last step, which is its
/// final state. Without lengths the rank order is the identity and n_t = B.
///
/// A step's barrier waits for the whole team, and every slot reads all of h_{t-1}, written
/// by every other slot; both cost more the larger the team. So on many threads the batch
/// is cut into groups of whole sequences, each run by a team of its own with a barrier of
/// its own, the teams side by side in one parallel region (LoopTeams). Two independent
/// loops (the two directions of a bidirectional layer) run side by side the same way, each
/// on its own share of the threads (recurrent_forward_pair, recurrent_backward_pair).
///
/// The LSTM with a projection (PyTorch's proj_size) has a plain loop of its own at the end
/// of this file: Eigen products step by step over the running rows.
#pragma once

#include "seqnn/core/aligned.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/core/types.hpp"
#include "seqnn/kernels/matmul.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <deque>
#include <initializer_list>
#include <numeric>
#include <thread>
#include <vector>

namespace seqnn {

/// The recurrent cells the kernel runs, with PyTorch's gate order.
enum class CellKind {
    RNNTanh,  ///< h_t = tanh(x W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
    RNNReLU,  ///< the same with relu
    LSTM,     ///< gates i, f, g, o
    GRU,      ///< gates r, z, n
};

/// G, the number of gates: W_hh is (G*H, H).
constexpr Index gate_count(CellKind cell) {
    return cell == CellKind::LSTM ? 4 : cell == CellKind::GRU ? 3 : 1;
}

namespace recurrent_detail {

template <typename S>
using Packet = typename Eigen::internal::packet_traits<S>::type;

/// Scalars in one SIMD packet: the unit of the partition and of the cell math.
template <typename S>
constexpr Index kPacket = Eigen::internal::unpacket_traits<Packet<S>>::size;

/// Whether a micro-tile takes a whole panel (kPanelPackets packets) at once: with 32 vector
/// registers (AVX-512), 6 rows x 4 packets of accumulators, the 4 weight packets and a
/// broadcast fit; with 16, a tile takes two packets of a panel.
constexpr bool kWholePanelTiles = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32;

/// Rows of the left operand per micro-tile (at most): as many accumulators as the registers hold.
constexpr int kTileRows = kWholePanelTiles ? 6 : 4;

/// Packets of columns in one panel of a packed operand.
constexpr Index kPanelPackets = 4;

/// A (K, N) right-hand operand packed once into column panels of kPanelPackets packets
/// (the last may be narrower): panel p holds rows k = 0..K-1 of its columns contiguously.
/// N is a multiple of the packet size; padding columns hold zeros.
template <typename S>
struct PackedPanels {
    Index K = 0, N = 0;
    AlignedVector<S> data;

    /// Packs value(k, j) for k < K, j < N.
    template <typename Value>
    void pack(Index rows, Index cols, const Value& value) {
        K = rows;
        N = cols;
        data.resize(static_cast<std::size_t>(K * N));
        constexpr Index P = kPacket<S>;
        S* out = data.data();
        for (Index j0 = 0; j0 < N; j0 += kPanelPackets * P) {
            const Index width = std::min(kPanelPackets * P, N - j0);
            for (Index k = 0; k < K; ++k)
                for (Index j = 0; j < width; ++j) *out++ = value(k, j0 + j);
        }
    }
};

/// c[r, 0:NP*P] (= or +=) init + a_r[0:K] * panel for MR rows, row r of the left
/// operand at a_rows[r], row k of the panel's NP packets at panel + k * ldp: the
/// register-blocked inner product. Each output element is init + sum_k a[r,k] w[k,j] in
/// order of k, one multiply-add per term.
template <typename S, int MR, int NP>
void micro_tile(const S* const* a_rows, Index K, const S* panel, Index ldp, S* c, Index ldc, const S* col_init,
                bool accumulate) {
    namespace ei = Eigen::internal;
    using Pk = Packet<S>;
    constexpr Index P = kPacket<S>;
    const S* a[MR];
    for (int r = 0; r < MR; ++r) a[r] = a_rows[r];
    Pk acc[MR][NP];
    for (int r = 0; r < MR; ++r)
        for (int q = 0; q < NP; ++q)
            acc[r][q] = accumulate ? ei::ploadu<Pk>(c + r * ldc + q * P)
                        : col_init ? ei::ploadu<Pk>(col_init + q * P)
                                   : ei::pset1<Pk>(S(0));
    for (Index k = 0; k < K; ++k) {
        Pk w[NP];
        for (int q = 0; q < NP; ++q) w[q] = ei::ploadu<Pk>(panel + k * ldp + q * P);
        for (int r = 0; r < MR; ++r) {
            const Pk av = ei::pset1<Pk>(a[r][k]);
            for (int q = 0; q < NP; ++q) acc[r][q] = ei::pmadd(av, w[q], acc[r][q]);
        }
    }
    for (int r = 0; r < MR; ++r)
        for (int q = 0; q < NP; ++q) ei::pstoreu(c + r * ldc + q * P, acc[r][q]);
}

/// micro_tile on `rows` <= MR rows.
template <typename S, int NP, int MR>
void micro_tile_rows(int rows, const S* const* a_rows, Index K, const S* panel, Index ldp, S* c, Index ldc,
                     const S* col_init, bool accumulate) {
    if constexpr (MR > 1) {
        if (rows < MR)
            return micro_tile_rows<S, NP, MR - 1>(rows, a_rows, K, panel, ldp, c, ldc, col_init, accumulate);
    }
    micro_tile<S, MR, NP>(a_rows, K, panel, ldp, c, ldc, col_init, accumulate);
}

/// C (M, N) = init + A (M, K) * W, with W packed and row r of A at a_row(r). init is
/// col_init (N values, or zeros when null) on every row, or C itself when `accumulate`.
///
/// With 32 registers, the rows go in tiles of at most kTileRows (6), as even as they go
/// (16 rows: 5, 5, 6), and each tile takes a whole panel at once: up to 24 accumulators, each
/// weight packet loaded once for the tile's rows and each row value broadcast once for the
/// panel's 4 packets (10 loads per 24 multiply-adds). The tile's rows stay in L1; the
/// panel streams from L2, once per tile. With 16 registers, a panel goes two packets at a
/// time, each pair through all M rows in tiles of kTileRows (4) before the next.
template <typename S, typename RowOf>
void gemm_packed_rows(const RowOf& a_row, Index M, const PackedPanels<S>& w, S* c, Index ldc, const S* col_init,
                      bool accumulate) {
    constexpr Index P = kPacket<S>;
    if (M <= 0) return;
    const S* panel = w.data.data();
    const S* a_rows[kTileRows];
    for (Index j0 = 0; j0 < w.N; j0 += kPanelPackets * P) {
        const Index packets = std::min(kPanelPackets * P, w.N - j0) / P, ldp = packets * P;
        if constexpr (kWholePanelTiles) {
            const S* init = col_init ? col_init + j0 : nullptr;
            const Index tiles = (M + kTileRows - 1) / kTileRows;
            for (Index i = 0; i < tiles; ++i) {
                const Index r0 = M * i / tiles;
                const int rows = static_cast<int>(M * (i + 1) / tiles - r0);
                for (int r = 0; r < rows; ++r) a_rows[r] = a_row(r0 + r);
                const auto tile = [&](auto np) {
                    micro_tile_rows<S, decltype(np)::value, kTileRows>(rows, a_rows, w.K, panel, ldp, c + r0 * ldc + j0,
                                                                       ldc, init, accumulate);
                };
                switch (packets) {
                    case 1: tile(std::integral_constant<int, 1>{}); break;
                    case 2: tile(std::integral_constant<int, 2>{}); break;
                    case 3: tile(std::integral_constant<int, 3>{}); break;
                    default: tile(std::integral_constant<int, 4>{}); break;
                }
            }
        } else {
            for (Index q = 0; q < packets; q += 2) {
                const Index j = j0 + q * P;
                const S* init = col_init ? col_init + j : nullptr;
                for (Index r0 = 0; r0 < M; r0 += kTileRows) {
                    const int rows = static_cast<int>(std::min<Index>(kTileRows, M - r0));
                    for (int r = 0; r < rows; ++r) a_rows[r] = a_row(r0 + r);
                    if (packets - q >= 2)
                        micro_tile_rows<S, 2, kTileRows>(rows, a_rows, w.K, panel + q * P, ldp, c + r0 * ldc + j, ldc,
                                                         init, accumulate);
                    else
                        micro_tile_rows<S, 1, kTileRows>(rows, a_rows, w.K, panel + q * P, ldp, c + r0 * ldc + j, ldc,
                                                         init, accumulate);
                }
            }
        }
        panel += w.K * ldp;
    }
}

/// gemm_packed_rows with rows of A `lda` scalars apart.
template <typename S>
void gemm_packed(const S* a, Index lda, Index M, const PackedPanels<S>& w, S* c, Index ldc, const S* col_init,
                 bool accumulate) {
    gemm_packed_rows<S>([=](Index r) { return a + r * lda; }, M, w, c, ldc, col_init, accumulate);
}

/// out[b, j] = bias[j] + x[b, :] . w[j, :] for j < rows, b < B: products with the
/// weights as they are stored (row-major, rows of length K), for one streaming step
/// where packing would cost more than the product. Vectorised along k, eight weight rows
/// at a time (eight independent multiply-add chains); the tail of k (K not a multiple of the packet) is added in scalar order.
template <typename S, int JR>
void dot_rows_tile(const S* x, Index ldx, Index B, Index K, const S* w, Index ldw, S* out, Index ldo,
                   const S* bias) {
    namespace ei = Eigen::internal;
    using Pk = Packet<S>;
    constexpr Index P = kPacket<S>;
    const Index Kp = K / P * P;
    for (Index b = 0; b < B; ++b) {
        const S* xb = x + b * ldx;
        Pk acc[JR];
        for (int i = 0; i < JR; ++i) acc[i] = ei::pset1<Pk>(S(0));
        for (Index k = 0; k < Kp; k += P) {
            const Pk xv = ei::ploadu<Pk>(xb + k);
            for (int i = 0; i < JR; ++i) acc[i] = ei::pmadd(xv, ei::ploadu<Pk>(w + i * ldw + k), acc[i]);
        }
        for (int i = 0; i < JR; ++i) {
            S sum = ei::predux(acc[i]);
            for (Index k = Kp; k < K; ++k) sum += xb[k] * w[i * ldw + k];
            out[b * ldo + i] = bias ? sum + bias[i] : sum;
        }
    }
}

template <typename S>
void dot_rows(const S* x, Index ldx, Index B, Index K, const S* w, Index ldw, Index rows, S* out, Index ldo,
              const S* bias) {
    Index j = 0;
    for (; j + 8 <= rows; j += 8)
        dot_rows_tile<S, 8>(x, ldx, B, K, w + j * ldw, ldw, out + j, ldo, bias ? bias + j : nullptr);
    for (; j + 4 <= rows; j += 4)
        dot_rows_tile<S, 4>(x, ldx, B, K, w + j * ldw, ldw, out + j, ldo, bias ? bias + j : nullptr);
    for (; j < rows; ++j) dot_rows_tile<S, 1>(x, ldx, B, K, w + j * ldw, ldw, out + j, ldo, bias ? bias + j : nullptr);
}

/// Packets of units in a layer of H units (the last may be short).
template <typename S>
constexpr Index unit_packets(Index H) {
    return (H + kPacket<S> - 1) / kPacket<S>;
}

/// Units [begin, end) of slot `slot` of `slots`: whole packets, as even as they go.
struct UnitBlock {
    Index begin = 0, end = 0;
    Index size() const { return end - begin; }
};
template <typename S>
UnitBlock unit_block(Index H, int slots, int slot) {
    const Index P = kPacket<S>, chunks = unit_packets<S>(H);
    return {std::min(H, chunks * slot / slots * P), std::min(H, chunks * (slot + 1) / slots * P)};
}

/// The team size for `flops` of work per step: core/parallel.hpp's rule with at least
/// `min_work` a thread (kMinWorkPerBarrier in the time loop, where a step costs one
/// barrier; kMinWorkPerThread for one streaming step, which costs a fork and a join), at
/// most one packet of units per thread, and one thread inside a running parallel region.
inline int team_size(double flops, double min_work, Index H, Index packet) {
    return threads_for(flops, (H + packet - 1) / packet, min_work);
}

/// A team of `threads` (as a test asks for), at most one per packet of units.
template <typename S>
int forced_slots(int threads, Index H) {
    return static_cast<int>(std::min<Index>(threads, unit_packets<S>(H)));
}

/// Rows of the input product a slot computes at once in the forward time loop.
inline constexpr Index kChunkRows = 128;


// ---- The cells, on one packet of units. ----
// Each function reads its inputs from pointers to the packet's first unit and writes
// its outputs likewise; `n` <= P units are valid (the last packet of H may be short).
// Working on whole packets of a fixed size keeps every unit on the same code path.

template <typename S>
using Chunk = Eigen::Array<S, kPacket<S>, 1>;

template <typename S>
Chunk<S> load(const S* p, Index n) {
    Chunk<S> v;
    if (n == kPacket<S>) {
        v = Eigen::Map<const Chunk<S>>(p);
    } else {
        v.setZero();
        for (Index i = 0; i < n; ++i) v[i] = p[i];
    }
    return v;
}
template <typename S>
void store(S* p, const Chunk<S>& v, Index n) {
    if (n == kPacket<S>) {
        Eigen::Map<Chunk<S>> out(p);
        out = v;
    } else
        for (Index i = 0; i < n; ++i) p[i] = v[i];
}

template <typename S>
Chunk<S> sigmoid(const Chunk<S>& x) {
    return x.logistic();
}

/// Pointers to one row's units for the forward cell: unit u of gate g is at
/// gates[g*gate_stride + u] (x W_ih^T + b_ih in, the activation out) and
/// hidden[g*hidden_stride + u] (h_{t-1} W_hh^T + b_hh).
template <typename S>
struct CellStep {
    S* gates = nullptr;
    Index gate_stride = 0;
    const S* hidden = nullptr;
    Index hidden_stride = 0;
    const S* h_prev = nullptr;  // h_{t-1} (GRU)
    S* h = nullptr;             // h_t, out (may be h_prev itself)
    S* c = nullptr;             // LSTM: c_{t-1} in, c_t out
    S* cells = nullptr;         // LSTM, optional: c_t, out
    S* hidden_n = nullptr;      // GRU, optional: W_hn h_{t-1} + b_hn, out
};

/// The cell on units [u, u + n) of one row, n <= P (PyTorch's equations, as rnn.hpp,
/// lstm.hpp and gru.hpp give them).
template <typename S>
void cell_forward(CellKind cell, const CellStep<S>& p, Index u, Index n) {
    using C = Chunk<S>;
    const auto pre = [&](Index g) {  // the pre-activation of gate g
        return C(load(p.gates + g * p.gate_stride + u, n) + load(p.hidden + g * p.hidden_stride + u, n));
    };
    switch (cell) {
        case CellKind::RNNTanh: store(p.h + u, C(pre(0).tanh()), n); break;
        case CellKind::RNNReLU: store(p.h + u, C(pre(0).max(S(0))), n); break;
        case CellKind::LSTM: {
            const C i = sigmoid<S>(pre(0)), f = sigmoid<S>(pre(1)), g = pre(2).tanh(), o = sigmoid<S>(pre(3));
            const C c = f * load(p.c + u, n) + i * g;  // c_t = f c_{t-1} + i g
            store(p.c + u, c, n);
            store(p.h + u, C(o * c.tanh()), n);  // h_t = o tanh(c_t)
            store(p.gates + u, i, n);
            store(p.gates + p.gate_stride + u, f, n);
            store(p.gates + 2 * p.gate_stride + u, g, n);
            store(p.gates + 3 * p.gate_stride + u, o, n);
            if (p.cells) store(p.cells + u, c, n);
            break;
        }
        case CellKind::GRU: {
            const C r = sigmoid<S>(pre(0)), z = sigmoid<S>(pre(1));
            const C hn = load(p.hidden + 2 * p.hidden_stride + u, n);  // W_hn h_{t-1} + b_hn
            const C nn = (load(p.gates + 2 * p.gate_stride + u, n) + r * hn).tanh();  // reset after the hidden map
            const C hp = load(p.h_prev + u, n);
            store(p.h + u, C((S(1) - z) * nn + z * hp), n);  // h_t = (1 - z) n + z h_{t-1}
            store(p.gates + u, r, n);
            store(p.gates + p.gate_stride + u, z, n);
            store(p.gates + 2 * p.gate_stride + u, nn, n);
            if (p.hidden_n) store(p.hidden_n + u, hn, n);
            break;
        }
    }
}

/// The batch rows in rank order: rank r is row order[r], longest sequence first (ties in
/// row order), so that the rows still running at step t are ranks [0, active[t]). Without
/// lengths the order is the identity and every step runs all B rows.
struct RowOrder {
    std::vector<Index> order;   // rank -> batch row
    std::vector<Index> active;  // T values: rows running at step t
    std::vector<Index> first;   // T + 1 values: rows run before step t, summed over the steps
};

/// The rank order of B rows of lengths[b] steps each (null: T each). Lengths may be 0
/// (such a row never runs: its final state is its initial state).
inline RowOrder row_order(const Index* lengths, Index B, Index T) {
    RowOrder o;
    o.order.resize(static_cast<std::size_t>(B));
    std::iota(o.order.begin(), o.order.end(), Index(0));
    o.active.assign(static_cast<std::size_t>(T), B);
    if (lengths) {
        std::stable_sort(o.order.begin(), o.order.end(), [&](Index a, Index b) { return lengths[a] > lengths[b]; });
        Index running = B;
        for (Index t = 0; t < T; ++t) {
            while (running > 0 && lengths[o.order[static_cast<std::size_t>(running - 1)]] <= t) --running;
            o.active[static_cast<std::size_t>(t)] = running;
        }
    }
    o.first.assign(static_cast<std::size_t>(T + 1), 0);
    for (std::size_t t = 0; t < static_cast<std::size_t>(T); ++t) o.first[t + 1] = o.first[t] + o.active[t];
    return o;
}

/// A barrier for `size` threads of a running parallel region that are not its whole team
/// (an OpenMP barrier waits for the whole team): one of two groups running side by side.
/// The last thread to arrive opens the next generation; the others spin on it (yielding
/// after a while, for a machine with fewer cores than threads). Its acquire and release
/// make every write before the barrier visible after it.
class alignas(64) GroupBarrier {
public:
    explicit GroupBarrier(int size) : size_(size) {}
    void wait() {
        if (size_ <= 1) return;
        const unsigned generation = generation_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == size_) {
            arrived_.store(0, std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_acq_rel);
            return;
        }
        int spins = 0;
        while (generation_.load(std::memory_order_acquire) == generation) {
            if (spins < 4096)
                ++spins;
            else
                std::this_thread::yield();
        }
    }

private:
    int size_;
    std::atomic<int> arrived_{0};
    std::atomic<unsigned> generation_{0};
};

}  // namespace recurrent_detail

/// What one layer's forward reads and writes: row-major arrays, B sequences of T steps,
/// H units, G gates; rows of (B*T, ...) arrays are b*T + t.
template <typename Scalar>
struct RecurrentForward {
    CellKind cell = CellKind::GRU;  ///< the cell of the layer
    Index input_size = 0;          ///< I
    const Scalar* x = nullptr;     ///< (B*T, I): the layer's input; must not alias y
    const Scalar* w_ih = nullptr;  ///< (G*H, I)
    const Scalar* b_ih = nullptr;  ///< G*H values, or null without bias
    const Scalar* w_hh = nullptr;  ///< (G*H, H)
    const Scalar* b_hh = nullptr;  ///< G*H values, or null without bias
    /// Optional, out (B*T, G*H): the gate activations, for backward (LSTM [i, f, g, o],
    /// GRU [r, z, n]; the RNN keeps none).
    Scalar* gates = nullptr;
    Scalar* h = nullptr;         ///< (B, H): h_0 in, each sequence's last h out
    Scalar* c = nullptr;         ///< LSTM: (B, H), c_0 in, each sequence's last c out
    Scalar* y = nullptr;         ///< (B*T, H): h_t of every step, zero past each sequence's end
    /// Scalars from one row of y to the next (0: H), so that y may be some columns of a
    /// wider matrix (one direction's share of a bidirectional layer's output).
    Index y_stride = 0;
    Scalar* cells = nullptr;     ///< LSTM, optional: (B*T, H) c_t, for backward
    Scalar* hidden_n = nullptr;  ///< GRU, optional: (B*T, H) W_hn h_{t-1} + b_hn, for backward
    /// Optional: B lengths in [0, T], sequence b running steps [0, lengths[b]); null: T
    /// each. Rows past a sequence's end are padding: x there is not read, y (and gates,
    /// cells, hidden_n) are zero there, and h and c receive the state at step lengths[b]-1.
    const Index* lengths = nullptr;
};

/// What one layer's forward kept for backward (shapes as in RecurrentForward).
template <typename Scalar>
struct RecurrentSaved {
    const Scalar* gates = nullptr;     ///< (B*T, G*H) gate activations (unused by the RNN)
    const Scalar* y = nullptr;         ///< (B*T, H) h_t
    const Scalar* h0 = nullptr;        ///< (B, H) h_0
    const Scalar* c0 = nullptr;        ///< LSTM: (B, H) c_0
    const Scalar* cells = nullptr;     ///< LSTM: (B*T, H) c_t
    const Scalar* hidden_n = nullptr;  ///< GRU: (B*T, H) W_hn h_{t-1} + b_hn
};

/// What one layer's backward through time reads and writes.
template <typename Scalar>
struct RecurrentBackward {
    const Scalar* d_out = nullptr;  ///< (B*T, H): dL/dh_t from above (not read past a sequence's end)
    Scalar* dh = nullptr;           ///< (B, H): dL/d(final h) in, dL/dh_0 out
    Scalar* dc = nullptr;           ///< LSTM: (B, H): dL/d(final c) in, dL/dc_0 out
    Scalar* d_gates = nullptr;      ///< out (B*T, G*H): dL/d(x W_ih^T + b_ih), zero past each end
    /// out (B*T, G*H): dL/d(h W_hh^T + b_hh). For the RNN and LSTM it is d_gates itself.
    Scalar* d_gates_hidden = nullptr;
    /// The forward's lengths (see RecurrentForward::lengths), or null. The final state's
    /// gradient applies at each sequence's own last step; dL/dh of a sequence that has
    /// ended passes back unchanged.
    const Index* lengths = nullptr;
};

/// How a time loop is spread over threads: the batch cut into `groups` groups of whole
/// sequences (as even as they go), each run by its own team of `slots` threads with a
/// barrier of its own, the teams side by side. A team splits the hidden units of its
/// sequences; a group reads only its own sequences' h_{t-1}, so that a smaller team both
/// waits at a cheaper barrier and fetches less of the state from other cores each step,
/// at the cost of its own packed copy of the weights.
struct LoopTeams {
    int groups = 1;  ///< groups of sequences, one team each
    int slots = 1;   ///< threads in each team
    int threads() const { return groups * slots; }  ///< threads in all the teams
};

namespace recurrent_detail {

/// Sequences a group must have for a team of its own, and threads a team must have before
/// the batch is cut further. On 16 cores (bench_recurrent's BM_*_Loop, B = 16, H = 256;
/// docs/report/sequential_cells/loop_t16.json) four teams of 4 threads ran the forward 1.3x
/// (GRU) and 1.7x (LSTM) and the backward 2.1x faster than one team of 16, and 1.1-1.2x
/// faster than two teams of 8; at B = 64, eight teams of 2 ran the forward slower than four
/// teams of 4 (1.03x and 1.3x the time) and the backward at most 1.13x faster.
inline constexpr Index kGroupRows = 4;
inline constexpr int kMinTeam = 4;

/// `groups` teams sharing `threads` threads over B sequences of H units: at most one group
/// per sequence and one thread per packet of units in a team.
template <typename S>
LoopTeams teams_of(Index groups, int threads, Index B, Index H) {
    LoopTeams teams;
    teams.groups = static_cast<int>(std::clamp<Index>(groups, 1, std::max<Index>(B, 1)));
    teams.slots = static_cast<int>(std::clamp<Index>(threads / teams.groups, 1, unit_packets<S>(H)));
    return teams;
}

/// The teams for `threads` threads (at most) over B sequences of H units.
template <typename S>
LoopTeams loop_teams(int threads, Index B, Index H) {
    return teams_of<S>(std::min<Index>(B / kGroupRows, threads / kMinTeam), threads, B, H);
}

}  // namespace recurrent_detail

/// The teams the time loop of one layer uses for these sizes: as many threads as the
/// work of a step pays for at one barrier each (core/parallel.hpp's rule), at most one per
/// packet of units in a team.
template <typename Scalar>
LoopTeams recurrent_loop_teams(CellKind cell, Index B, Index I, Index H) {
    using namespace recurrent_detail;
    const double flops = 2.0 * double(B) * double(I + H) * double(gate_count(cell) * H);
    const Index max_groups = std::max<Index>(1, B / kGroupRows);
    return loop_teams<Scalar>(threads_for(flops, unit_packets<Scalar>(H) * max_groups, kMinWorkPerBarrier), B, H);
}

/// The teams for a caller's `threads` (> 0) and `groups` (0: one group): at most one group
/// per sequence and one thread per packet of units in a team.
template <typename Scalar>
LoopTeams forced_loop_teams(Index B, Index H, int threads, int groups) {
    return recurrent_detail::teams_of<Scalar>(groups, threads, B, H);
}

namespace recurrent_detail {

/// Runs independent loops (ForwardLoops or BackwardLoops below) side by side: one parallel
/// region whose threads are cut into one team per loop, in order, each team with its own
/// barrier. One loop runs on a plain team with OpenMP's barrier. On one thread, inside a
/// running region, or when OpenMP gives fewer threads, one after the other on the calling
/// thread.
template <typename Loop>
void run_teams(std::vector<Loop>& loops) {
    if (loops.size() == 1) {
        Loop& loop = loops.front();
        parallel_team(loop.slots(), [&](int thread, int team) { loop.run(thread, team, [team] { team_barrier(team); }); });
        return;
    }
    std::vector<int> first(loops.size() + 1, 0);  // the first thread of each loop's team
    std::deque<GroupBarrier> barriers;
    for (std::size_t i = 0; i < loops.size(); ++i) {
        first[i + 1] = first[i] + loops[i].slots();
        barriers.emplace_back(loops[i].slots());
    }
    const int total = first.back();
    parallel_team(total, [&](int thread, int team) {
        if (team < total) {
            if (thread == 0)
                for (Loop& loop : loops) loop.run(0, 1, [] {});
            return;
        }
        const std::size_t i = static_cast<std::size_t>(
            std::upper_bound(first.begin(), first.end(), thread) - first.begin() - 1);
        GroupBarrier& barrier = barriers[i];
        loops[i].run(thread - first[i], loops[i].slots(), [&barrier] { barrier.wait(); });
    });
}

/// Sequence b0 of a batch: the batch's arrays from b0's rows on (rows of (B*T, ...) arrays
/// are b*T + t, of (B, ...) arrays b), so that a loop over rows [b0, b1) of the batch is a
/// loop over a batch of b1 - b0 sequences.
template <typename S>
RecurrentForward<S> from_sequence(RecurrentForward<S> f, Index b0, Index T, Index H) {
    const Index GH = gate_count(f.cell) * H, ldy = f.y_stride > 0 ? f.y_stride : H;
    f.x += b0 * T * f.input_size;
    f.h += b0 * H;
    f.y += b0 * T * ldy;
    if (f.c) f.c += b0 * H;
    if (f.gates) f.gates += b0 * T * GH;
    if (f.cells) f.cells += b0 * T * H;
    if (f.hidden_n) f.hidden_n += b0 * T * H;
    if (f.lengths) f.lengths += b0;
    return f;
}
template <typename S>
RecurrentSaved<S> from_sequence(RecurrentSaved<S> f, CellKind cell, Index b0, Index T, Index H) {
    const Index GH = gate_count(cell) * H;
    if (f.gates) f.gates += b0 * T * GH;
    f.y += b0 * T * H;
    f.h0 += b0 * H;
    if (f.c0) f.c0 += b0 * H;
    if (f.cells) f.cells += b0 * T * H;
    if (f.hidden_n) f.hidden_n += b0 * T * H;
    return f;
}
template <typename S>
RecurrentBackward<S> from_sequence(RecurrentBackward<S> d, CellKind cell, Index b0, Index T, Index H) {
    const Index GH = gate_count(cell) * H;
    d.d_out += b0 * T * H;
    d.dh += b0 * H;
    if (d.dc) d.dc += b0 * H;
    d.d_gates += b0 * T * GH;
    if (d.d_gates_hidden) d.d_gates_hidden += b0 * T * GH;
    if (d.lengths) d.lengths += b0;
    return d;
}

/// The first sequence of group g of `groups` over B sequences.
inline Index group_begin(Index B, int groups, int g) { return B * g / groups; }

/// The forward time loop of one layer (see recurrent_forward), set up for `slots` slots
/// before a team runs it: the slots' buffers and the rank order of the rows.
template <typename S>
class ForwardLoop {
public:
    ForwardLoop(const RecurrentForward<S>& f, Index B, Index T, Index H, int slots)
        : f_(f), B_(B), T_(T), H_(H), G_(gate_count(f.cell)), rows_(row_order(f.lengths, B, T)),
          slot_(static_cast<std::size_t>(slots)) {
        constexpr Index P = kPacket<S>;
        // The input product runs for `chunk` steps at a time (about kChunkRows rows), so a
        // slot reads its W_ih panels once per chunk rather than once per step.
        chunk_ = std::clamp<Index>(kChunkRows / B, 1, T);
        // With lengths, the input rows of the running (step, rank) pairs in step order:
        // the chunk's product reads them from here.
        if (f.lengths) {
            x_rows_.resize(static_cast<std::size_t>(rows_.first.back()));
            for (Index t = 0; t < T; ++t)
                for (Index r = 0; r < rows_.active[static_cast<std::size_t>(t)]; ++r)
                    x_rows_[static_cast<std::size_t>(rows_.first[static_cast<std::size_t>(t)] + r)] =
                        rows_.order[static_cast<std::size_t>(r)] * T + t;
        }
        for (int s = 0; s < slots; ++s) {
            Slot& sl = slot_[static_cast<std::size_t>(s)];
            sl.units = unit_block<S>(H, slots, s);
            const Index nu = sl.units.size(), width = (nu + P - 1) / P * P;
            sl.width = width;
            sl.input.assign(static_cast<std::size_t>(chunk_ * B * G_ * width), S(0));
            sl.hidden.assign(static_cast<std::size_t>(B * G_ * width), S(0));
            if (f.b_ih) sl.b_ih.assign(static_cast<std::size_t>(G_ * width), S(0));
            if (f.b_hh) sl.b_hh.assign(static_cast<std::size_t>(G_ * width), S(0));
            if (f.cell == CellKind::LSTM) sl.cell_state.assign(static_cast<std::size_t>(B * width), S(0));
        }
    }

    /// The team size it was set up for.
    int slots() const { return static_cast<int>(slot_.size()); }

    /// The loop, as thread `thread` of a team of `team` runs it; barrier() waits for the team.
    template <typename Barrier>
    void run(int thread, int team, const Barrier& barrier) {
        constexpr Index P = kPacket<S>;
        const RecurrentForward<S>& f = f_;
        const CellKind cell = f.cell;
        const Index B = B_, T = T_, H = H_, G = G_, GH = G * H, I = f.input_size;
        const int slots = this->slots();
        const std::vector<Index>& order = rows_.order;
        const S* h0 = f.h;
        S* y = f.y;
        const Index ldy = f.y_stride > 0 ? f.y_stride : H;
        // Pack: column j = g*width + u of a slot's panels is row g*H + begin + u of the weight.
        for (int s = thread; s < slots; s += team) {
            Slot& sl = slot_[static_cast<std::size_t>(s)];
            const Index begin = sl.units.begin, nu = sl.units.size(), width = sl.width;
            const auto pack = [&](PackedPanels<S>& panels, const S* w, Index K) {
                panels.pack(K, G * width, [&](Index k, Index j) {
                    const Index g = j / width, u = j % width;
                    return u < nu ? w[(g * H + begin + u) * K + k] : S(0);
                });
            };
            pack(sl.w_ih, f.w_ih, I);
            pack(sl.w_hh, f.w_hh, H);
            for (Index g = 0; g < G; ++g)
                for (Index u = 0; u < nu; ++u) {
                    if (f.b_ih) sl.b_ih[g * width + u] = f.b_ih[g * H + begin + u];
                    if (f.b_hh) sl.b_hh[g * width + u] = f.b_hh[g * H + begin + u];
                }
            if (cell == CellKind::LSTM)  // c by rank
                for (Index r = 0; r < B; ++r)
                    for (Index u = 0; u < nu; ++u) sl.cell_state[r * width + u] = f.c[order[r] * H + begin + u];
        }

        for (Index t = 0; t < T; ++t) {
            const Index running = rows_.active[static_cast<std::size_t>(t)];
            // h_{t-1} of rank r: the initial state, then the previous step's row of y.
            const auto h_prev = [&](Index r) { return t == 0 ? h0 + order[r] * H : y + (order[r] * T + t - 1) * ldy; };
            for (int s = thread; s < slots; s += team) {
                Slot& sl = slot_[static_cast<std::size_t>(s)];
                const Index begin = sl.units.begin, nu = sl.units.size(), width = sl.width;
                // (rows, G*width): x W_ih^T + b_ih of the chunk's running rows for the slot's
                // units, step t's rank r at row first[t] - first[t0] + r (s*B + r without
                // lengths). Computed at the chunk's first step.
                const Index t0 = t / chunk_ * chunk_;
                const Index base = rows_.first[static_cast<std::size_t>(t0)];
                if (t == t0) {
                    const Index end = std::min(t0 + chunk_, T);
                    const Index count = rows_.first[static_cast<std::size_t>(end)] - base;
                    const S* b_ih = f.b_ih ? sl.b_ih.data() : nullptr;
                    if (f.lengths)
                        gemm_packed_rows<S>([&](Index r) { return f.x + x_rows_[static_cast<std::size_t>(base + r)] * I; },
                                            count, sl.w_ih, sl.input.data(), G * width, b_ih, false);
                    else
                        gemm_packed_rows<S>([&](Index r) { return f.x + ((r % B) * T + t0 + r / B) * I; }, count,
                                            sl.w_ih, sl.input.data(), G * width, b_ih, false);
                }
                S* gi = sl.input.data() + (rows_.first[static_cast<std::size_t>(t)] - base) * G * width;  // this step's rows
                S* gh = sl.hidden.data();  // (running, G*width): h_{t-1} W_hh^T + b_hh
                gemm_packed_rows<S>(h_prev, running, sl.w_hh, gh, G * width, f.b_hh ? sl.b_hh.data() : nullptr, false);
                for (Index r = 0; r < running; ++r) {
                    const Index row = order[r] * T + t;
                    CellStep<S> p;
                    p.gates = gi + r * G * width;
                    p.gate_stride = width;
                    p.hidden = gh + r * G * width;
                    p.hidden_stride = width;
                    p.h_prev = h_prev(r) + begin;
                    p.h = y + row * ldy + begin;
                    p.c = cell == CellKind::LSTM ? sl.cell_state.data() + r * width : nullptr;
                    p.cells = f.cells ? f.cells + row * H + begin : nullptr;
                    p.hidden_n = f.hidden_n ? f.hidden_n + row * H + begin : nullptr;
                    for (Index u = 0; u < nu; u += P) cell_forward(cell, p, u, std::min(P, nu - u));
                    if (f.gates && (cell == CellKind::LSTM || cell == CellKind::GRU))
                        for (Index g = 0; g < G; ++g)
                            std::copy(p.gates + g * width, p.gates + g * width + nu, f.gates + row * GH + g * H + begin);
                }
            }
            barrier();  // h_t is complete
        }

        for (int s = thread; s < slots; s += team) {
            const Slot& sl = slot_[static_cast<std::size_t>(s)];
            const Index begin = sl.units.begin, nu = sl.units.size();
            for (Index r = 0; r < B; ++r) {
                const Index b = order[r], length = f.lengths ? f.lengths[b] : T;
                for (Index u = begin; u < sl.units.end; ++u) {
                    if (length > 0) f.h[b * H + u] = y[(b * T + length - 1) * ldy + u];  // else h_0 stays
                    if (cell == CellKind::LSTM) f.c[b * H + u] = sl.cell_state[r * sl.width + u - begin];
                }
                // Padding: zeros in everything the loop writes.
                for (Index row = b * T + length; row < (b + 1) * T; ++row) {
                    std::fill_n(y + row * ldy + begin, nu, S(0));
                    if (f.cells) std::fill_n(f.cells + row * H + begin, nu, S(0));
                    if (f.hidden_n) std::fill_n(f.hidden_n + row * H + begin, nu, S(0));
                    if (f.gates && (cell == CellKind::LSTM || cell == CellKind::GRU))
                        for (Index g = 0; g < G; ++g) std::fill_n(f.gates + row * GH + g * H + begin, nu, S(0));
                }
            }
        }
    }

private:
    // Per slot: its units, its packed rows of W_ih and W_hh with their biases, its buffers
    // for the input product of a chunk (up to chunk*B, G*width) and the hidden product of
    // one step (B, G*width), and, for the LSTM, its units of c by rank.
    struct Slot {
        UnitBlock units;
        Index width = 0;  // nu rounded up to whole packets
        PackedPanels<S> w_ih, w_hh;
        AlignedVector<S> b_ih, b_hh, input, hidden, cell_state;
    };
    const RecurrentForward<S>& f_;
    Index B_, T_, H_, G_, chunk_ = 1;
    RowOrder rows_;
    std::vector<Index> x_rows_;  // with lengths: row b*T + t of running (t, rank r) at first[t] + r
    std::vector<Slot> slot_;
};

}  // namespace recurrent_detail

namespace recurrent_detail {

/// The loops of `args` (each over B sequences), each cut into teams.groups groups of
/// sequences: one ForwardLoop per (loop, group), all side by side.
template <typename S>
void run_forward(std::initializer_list<const RecurrentForward<S>*> args, Index B, Index T, Index H,
                 const LoopTeams& teams) {
    std::vector<RecurrentForward<S>> parts;  // one per (loop, group); the loops keep references to them
    std::vector<Index> rows;
    for (const RecurrentForward<S>* f : args)
        for (int g = 0; g < teams.groups; ++g) {
            const Index b0 = group_begin(B, teams.groups, g);
            parts.push_back(from_sequence(*f, b0, T, H));
            rows.push_back(group_begin(B, teams.groups, g + 1) - b0);
        }
    std::vector<ForwardLoop<S>> loops;
    loops.reserve(parts.size());
    for (std::size_t i = 0; i < parts.size(); ++i) loops.emplace_back(parts[i], rows[i], T, H, teams.slots);
    run_teams(loops);
}

/// The teams for a caller's `threads` and `groups` (either > 0), or those the work picks.
template <typename S>
LoopTeams teams_for(CellKind cell, Index B, Index I, Index H, int threads, int groups) {
    if (threads <= 0 && groups <= 0) return recurrent_loop_teams<S>(cell, B, I, H);
    return forced_loop_teams<S>(B, H, threads > 0 ? threads : num_threads(), groups);
}

}  // namespace recurrent_detail

/// Runs one layer of H units over T steps of B sequences (see RecurrentForward). h_0
/// and c_0 are read from `h` and `c`, which receive each sequence's final h and c. Both
/// products of a step, x_t W_ih^T and h_{t-1} W_hh^T, run on weights packed once per
/// call, over the rows still running. `threads` > 0 sets the number of threads and
/// `groups` > 0 the groups of sequences (see LoopTeams; 0 with threads > 0: one group);
/// both 0 lets the work decide. Every choice gives the same bits.
template <typename Scalar>
void recurrent_forward(const RecurrentForward<Scalar>& f, Index B, Index T, Index H, int threads = 0,
                       int groups = 0) {
    using namespace recurrent_detail;
    run_forward<Scalar>({&f}, B, T, H, teams_for<Scalar>(f.cell, B, f.input_size, H, threads, groups));
}

/// Two independent forwards of the same sizes (the two directions of a bidirectional
/// layer) side by side, each on `threads_each` threads (cut into groups of sequences as
/// recurrent_loop_teams would for that many, or into `groups` when > 0), each team with a
/// barrier of its own. Each gives the same bits as recurrent_forward.
template <typename Scalar>
void recurrent_forward_pair(const RecurrentForward<Scalar>& a, const RecurrentForward<Scalar>& b, Index B, Index T,
                            Index H, int threads_each, int groups = 0) {
    using namespace recurrent_detail;
    const LoopTeams teams = groups > 0 ? forced_loop_teams<Scalar>(B, H, std::max(threads_each, 1), groups)
                                       : loop_teams<Scalar>(std::max(threads_each, 1), B, H);
    run_forward<Scalar>({&a, &b}, B, T, H, teams);
}

/// Threads each of two independent time loops of these sizes gets when they run side by
/// side (recurrent_forward_pair, recurrent_backward_pair): half the threads each, at most
/// what one loop alone would use; 0 when there is no second thread, or the whole loop of
/// one is too little work to pay for a thread of its own.
template <typename Scalar>
int recurrent_pair_threads(CellKind cell, Index B, Index T, Index I, Index H) {
    const int alone = recurrent_loop_teams<Scalar>(cell, B, I, H).threads();
    const double loop_flops = 2.0 * double(B) * double(T) * double(I + H) * double(gate_count(cell) * H);
    if (threads_for(2.0 * loop_flops, 2) < 2) return 0;
    return std::max(1, std::min(alone, num_threads() / 2));
}

/// The weights of layer k of a stack, as the step reads them.
template <typename Scalar>
struct CellWeights {
    const Matrix<Scalar>* w_ih = nullptr;  ///< (G*H, I_k)
    const Matrix<Scalar>* w_hh = nullptr;  ///< (G*H, H)
    const Scalar* b_ih = nullptr;          ///< G*H values, or null
    const Scalar* b_hh = nullptr;          ///< G*H values, or null
};

/// Threads one streaming step of a stack would use: one (no parallel region at all)
/// unless each thread gets enough work to pay for a fork, a join and two barriers a layer.
template <typename Scalar>
int recurrent_step_threads(CellKind cell, Index B, Index I, Index H) {
    const double flops = 2.0 * double(B) * double(gate_count(cell) * H) * double(std::max(I, H) + H);
    return recurrent_detail::team_size(flops, kMinWorkPerThread, H,
                                       recurrent_detail::kPacket<Scalar>);
}

/// One step of an L-layer stack for B streams: x (B, I) in; h (L*B, H) and, for the
/// LSTM, c (L*B, H) advance in place (rows k*B.. are layer k, PyTorch's (L, B, H)).
/// gates and hidden are (B, G*H) scratch. weights_of(k) returns layer k's CellWeights.
/// Uses the weights as stored (no packing). On one thread the products are Eigen's
/// (the fastest at small sizes); on a team each slot computes its units' rows with
/// dot_rows, and every team size of two or more gives the same bits. One thread and a
/// team agree to rounding (the sums run in another order).
template <typename Scalar, typename WeightsOf>
void recurrent_step(CellKind cell, Index layers, const WeightsOf& weights_of, ConstMatrixRef<Scalar> x,
                    Matrix<Scalar>& h, Matrix<Scalar>* c, Matrix<Scalar>& gates, Matrix<Scalar>& hidden,
                    int threads = 0) {
    using namespace recurrent_detail;
    using S = Scalar;
    constexpr Index P = kPacket<S>;
    const Index B = x.rows(), H = h.cols(), G = gate_count(cell), GH = G * H;
    const int slots = threads > 0 ? forced_slots<S>(threads, H) : recurrent_step_threads<S>(cell, B, x.cols(), H);
    parallel_team(slots, [&](int thread, int team) {
        for (Index k = 0; k < layers; ++k) {
            const CellWeights<S> w = weights_of(k);
            // Layer k reads layer k-1's new hidden state, complete after the last barrier.
            const S* input = k == 0 ? x.data() : h.data() + (k - 1) * B * H;
            const Index ld_input = k == 0 ? x.outerStride() : H, I = w.w_ih->cols();
            S* h_k = h.data() + k * B * H;
            if (slots == 1) {
                // One thread: Eigen's matrix-vector product is the faster one at small sizes.
                using Input = Eigen::Map<const Matrix<S>, 0, Eigen::OuterStride<>>;
                gates.noalias() = Input(input, B, I, Eigen::OuterStride<>(ld_input)) * w.w_ih->transpose();  // (B, I) x (I, G*H)
                hidden.noalias() = Eigen::Map<const Matrix<S>>(h_k, B, H) * w.w_hh->transpose();  // (B, H) x (H, G*H)
                if (w.b_ih) gates.rowwise() += Eigen::Map<const RowVector<S>>(w.b_ih, GH);
                if (w.b_hh) hidden.rowwise() += Eigen::Map<const RowVector<S>>(w.b_hh, GH);
            } else {
                for (int s = thread; s < slots; s += team) {
                    const UnitBlock units = unit_block<S>(H, slots, s);
                    for (Index g = 0; g < G; ++g) {
                        const Index r0 = g * H + units.begin;  // the slot's rows of gate g
                        dot_rows<S>(input, ld_input, B, I, w.w_ih->data() + r0 * I, I, units.size(), gates.data() + r0,
                                    GH, w.b_ih ? w.b_ih + r0 : nullptr);
                        dot_rows<S>(h_k, H, B, H, w.w_hh->data() + r0 * H, H, units.size(), hidden.data() + r0, GH,
                                    w.b_hh ? w.b_hh + r0 : nullptr);
                    }
                }
            }
            team_barrier(team);  // every slot has read h_{t-1} of layer k
            for (int s = thread; s < slots; s += team) {
                const UnitBlock units = unit_block<S>(H, slots, s);
                for (Index b = 0; b < B; ++b) {
                    CellStep<S> p;
                    p.gates = gates.data() + b * GH + units.begin;
                    p.gate_stride = H;
                    p.hidden = hidden.data() + b * GH + units.begin;
                    p.hidden_stride = H;
                    p.h_prev = h_k + b * H + units.begin;
                    p.h = h_k + b * H + units.begin;
                    p.c = c ? c->data() + (k * B + b) * H + units.begin : nullptr;
                    for (Index u = 0; u < units.size(); u += P) cell_forward(cell, p, u, std::min(P, units.size() - u));
                }
            }
            team_barrier(team);  // h_t of layer k is complete
        }
    });
}

namespace recurrent_detail {

/// Backward through time of one layer (see recurrent_backward), set up for `slots` slots.
template <typename S>
class BackwardLoop {
public:
    BackwardLoop(CellKind cell, const S* w_hh, const RecurrentSaved<S>& f, const RecurrentBackward<S>& d, Index B,
                 Index T, Index H, int slots)
        : cell_(cell), w_hh_(w_hh), f_(f), d_(d), B_(B), T_(T), H_(H), rows_(row_order(d.lengths, B, T)),
          slot_(static_cast<std::size_t>(slots)) {
        constexpr Index P = kPacket<S>;
        for (int s = 0; s < slots; ++s) {
            Slot& sl = slot_[static_cast<std::size_t>(s)];
            sl.units = unit_block<S>(H, slots, s);
            sl.width = (sl.units.size() + P - 1) / P * P;
            sl.dh.assign(static_cast<std::size_t>(B * sl.width), S(0));
            if (cell == CellKind::LSTM) sl.dc.assign(static_cast<std::size_t>(B * sl.width), S(0));
        }
    }

    /// The team size it was set up for.
    int slots() const { return static_cast<int>(slot_.size()); }

    /// The loop, as thread `thread` of a team of `team` runs it; barrier() waits for the team.
    template <typename Barrier>
    void run(int thread, int team, const Barrier& barrier) {
        using C = Chunk<S>;
        constexpr Index P = kPacket<S>;
        const CellKind cell = cell_;
        const RecurrentSaved<S>& f = f_;
        const RecurrentBackward<S>& d = d_;
        const Index B = B_, T = T_, H = H_, G = gate_count(cell), GH = G * H;
        const int slots = this->slots();
        const std::vector<Index>& order = rows_.order;
        const S* y = f.y;
        const S* gates = f.gates;
        const S* d_out = d.d_out;
        S* dg_all = d.d_gates;
        // The left operand of dL/dh_{t-1} = dL/d(h W_hh^T) W_hh: the same as d_gates except for the GRU.
        S* dgh_all = cell == CellKind::GRU ? d.d_gates_hidden : dg_all;
        for (int s = thread; s < slots; s += team) {
            Slot& sl = slot_[static_cast<std::size_t>(s)];
            const Index begin = sl.units.begin, nu = sl.units.size();
            sl.w.pack(GH, sl.width, [&](Index k, Index u) { return u < nu ? w_hh_[k * H + begin + u] : S(0); });
            for (Index r = 0; r < B; ++r)  // dL/dh and dL/dc by rank
                for (Index u = 0; u < nu; ++u) {
                    sl.dh[r * sl.width + u] = d.dh[order[r] * H + begin + u];
                    if (cell == CellKind::LSTM) sl.dc[r * sl.width + u] = d.dc[order[r] * H + begin + u];
                }
        }

        for (Index t = T - 1; t >= 0; --t) {
            const Index running = rows_.active[static_cast<std::size_t>(t)];
            // Phase 1: each slot's gate gradients at step t from its own dL/dh_t.
            for (int s = thread; s < slots; s += team) {
                Slot& sl = slot_[static_cast<std::size_t>(s)];
                const Index begin = sl.units.begin, nu = sl.units.size(), width = sl.width;
                for (Index r = 0; r < running; ++r) {
                    const Index b = order[r], row = b * T + t;
                    const S* g_row = gates + row * GH + begin;
                    S* dg = dg_all + row * GH + begin;
                    S* dgh = dgh_all + row * GH + begin;
                    S* dh_slot = sl.dh.data() + r * width;
                    for (Index u = 0; u < nu; u += P) {
                        const Index n = std::min(P, nu - u);
                        const C dh = load(dh_slot + u, P) + load(d_out + row * H + begin + u, n);
                        switch (cell) {
                            case CellKind::RNNTanh:
                            case CellKind::RNNReLU: {
                                // tanh' and relu' are functions of the output h_t.
                                const C out = load(y + row * H + begin + u, n);
                                const C dpre = cell == CellKind::RNNTanh ? C(dh * (S(1) - out.square()))
                                                                         : C((out > S(0)).select(dh, S(0)));
                                store(dg + u, dpre, n);
                                store(dh_slot + u, C(C::Zero()), P);
                                break;
                            }
                            case CellKind::LSTM: {
                                const C i = load(g_row + u, n), fg = load(g_row + H + u, n);
                                const C g = load(g_row + 2 * H + u, n), o = load(g_row + 3 * H + u, n);
                                const C c = load(f.cells + row * H + begin + u, n);
                                const C c_prev = t == 0 ? load(f.c0 + b * H + begin + u, n)
                                                        : load(f.cells + (row - 1) * H + begin + u, n);
                                const C tc = c.tanh();
                                S* dc_slot = sl.dc.data() + r * width + u;
                                // Through h_t = o tanh(c_t) into c_t, then c_t = f c_{t-1} + i g.
                                const C dc = load(dc_slot, P) + dh * o * (S(1) - tc.square());
                                store(dg + u, C(dc * g * i * (S(1) - i)), n);
                                store(dg + H + u, C(dc * c_prev * fg * (S(1) - fg)), n);
                                store(dg + 2 * H + u, C(dc * i * (S(1) - g.square())), n);
                                store(dg + 3 * H + u, C(dh * tc * o * (S(1) - o)), n);
                                store(dc_slot, C(dc * fg), P);
                                store(dh_slot + u, C(C::Zero()), P);
                                break;
                            }
                            case CellKind::GRU: {
                                const C r_gate = load(g_row + u, n), z = load(g_row + H + u, n);
                                const C nn = load(g_row + 2 * H + u, n);
                                const C hp = t == 0 ? load(f.h0 + b * H + begin + u, n)
                                                    : load(y + (row - 1) * H + begin + u, n);
                                const C hn = load(f.hidden_n + row * H + begin + u, n);
                                // Through h_t = (1 - z) n + z h_{t-1}, then the activations.
                                const C dn = dh * (S(1) - z) * (S(1) - nn.square());
                                const C dz = dh * (hp - nn) * z * (S(1) - z);
                                const C dr = dn * hn * r_gate * (S(1) - r_gate);
                                store(dg + u, dr, n);
                                store(dg + H + u, dz, n);
                                store(dg + 2 * H + u, dn, n);
                                store(dgh + u, dr, n);
                                store(dgh + H + u, dz, n);
                                store(dgh + 2 * H + u, C(dn * r_gate), n);
                                store(dh_slot + u, C(dh * z), P);  // the direct path h_{t-1} -> h_t
                                break;
                            }
                        }
                    }
                }
                // Ended rows: zero gate gradients (the weight gradients' products read
                // them); their dL/dh and dL/dc wait unchanged for their last step.
                for (Index r = running; r < B; ++r) {
                    const Index row = order[r] * T + t;
                    for (Index g = 0; g < G; ++g) {
                        std::fill_n(dg_all + row * GH + g * H + begin, nu, S(0));
                        if (dgh_all != dg_all) std::fill_n(dgh_all + row * GH + g * H + begin, nu, S(0));
                    }
                }
            }
            barrier();  // step t's gate gradients are complete
            // Phase 2: dL/dh_{t-1} of the slot's units += dL/d(h W_hh^T)_t (running, G*H) x W_hh[:, units].
            for (int s = thread; s < slots; s += team) {
                Slot& sl = slot_[static_cast<std::size_t>(s)];
                gemm_packed_rows<S>([&](Index r) { return dgh_all + (order[r] * T + t) * GH; }, running, sl.w,
                                    sl.dh.data(), sl.width, nullptr, true);
            }
        }

        for (int s = thread; s < slots; s += team) {
            const Slot& sl = slot_[static_cast<std::size_t>(s)];
            for (Index r = 0; r < B; ++r)
                for (Index u = sl.units.begin; u < sl.units.end; ++u) {
                    d.dh[order[r] * H + u] = sl.dh[r * sl.width + u - sl.units.begin];
                    if (cell == CellKind::LSTM) d.dc[order[r] * H + u] = sl.dc[r * sl.width + u - sl.units.begin];
                }
        }
    }

private:
    // Per slot: its units, its packed columns of W_hh ((G*H, nu) padded), and its units
    // of dL/dh (and dL/dc) by rank, carried from step to step.
    struct Slot {
        UnitBlock units;
        Index width = 0;
        PackedPanels<S> w;
        AlignedVector<S> dh, dc;
    };
    CellKind cell_;
    const S* w_hh_;
    const RecurrentSaved<S>& f_;
    const RecurrentBackward<S>& d_;
    Index B_, T_, H_;
    RowOrder rows_;
    std::vector<Slot> slot_;
};

}  // namespace recurrent_detail

namespace recurrent_detail {

/// What one backward loop reads: W_hh (G*H, H), the forward's tensors, its own gradients.
template <typename S>
struct BackwardArgs {
    const S* w_hh;
    const RecurrentSaved<S>* saved;
    const RecurrentBackward<S>* grads;
};

/// The backward loops of `args`, each cut into groups of sequences, as run_forward.
template <typename S>
void run_backward(CellKind cell, std::initializer_list<BackwardArgs<S>> args, Index B, Index T, Index H,
                  const LoopTeams& teams) {
    std::vector<RecurrentSaved<S>> saved;  // one per (loop, group); the loops keep references to them
    std::vector<RecurrentBackward<S>> grads;
    std::vector<const S*> w_hh;
    std::vector<Index> rows;
    for (const BackwardArgs<S>& a : args)
        for (int g = 0; g < teams.groups; ++g) {
            const Index b0 = group_begin(B, teams.groups, g);
            saved.push_back(from_sequence(*a.saved, cell, b0, T, H));
            grads.push_back(from_sequence(*a.grads, cell, b0, T, H));
            w_hh.push_back(a.w_hh);
            rows.push_back(group_begin(B, teams.groups, g + 1) - b0);
        }
    std::vector<BackwardLoop<S>> loops;
    loops.reserve(saved.size());
    for (std::size_t i = 0; i < saved.size(); ++i)
        loops.emplace_back(cell, w_hh[i], saved[i], grads[i], rows[i], T, H, teams.slots);
    run_teams(loops);
}

}  // namespace recurrent_detail

/// Backward through time of one layer of H units over T steps of B sequences, from what
/// its forward kept; w_hh is (G*H, H). See RecurrentBackward. `threads` and `groups` as
/// for recurrent_forward.
template <typename Scalar>
void recurrent_backward(CellKind cell, const Scalar* w_hh, const RecurrentSaved<Scalar>& f,
                        const RecurrentBackward<Scalar>& d, Index B, Index T, Index H, int threads = 0,
                        int groups = 0) {
    using namespace recurrent_detail;
    run_backward<Scalar>(cell, {{w_hh, &f, &d}}, B, T, H, teams_for<Scalar>(cell, B, 0, H, threads, groups));
}

/// Two independent backwards of the same cell and sizes (the two directions of a
/// bidirectional layer) side by side, each on `threads_each` threads, as
/// recurrent_forward_pair runs forwards. Each gives the same bits as recurrent_backward.
template <typename Scalar>
void recurrent_backward_pair(CellKind cell, const Scalar* w_hh_a, const RecurrentSaved<Scalar>& fa,
                             const RecurrentBackward<Scalar>& da, const Scalar* w_hh_b,
                             const RecurrentSaved<Scalar>& fb, const RecurrentBackward<Scalar>& db, Index B, Index T,
                             Index H, int threads_each, int groups = 0) {
    using namespace recurrent_detail;
    const LoopTeams teams = groups > 0 ? forced_loop_teams<Scalar>(B, H, std::max(threads_each, 1), groups)
                                       : loop_teams<Scalar>(std::max(threads_each, 1), B, H);
    run_backward<Scalar>(cell, {{w_hh_a, &fa, &da}, {w_hh_b, &fb, &db}}, B, T, H, teams);
}

// ---- The LSTM with a projection: a plain loop. ----

/// Forward of one LSTM layer with a projection (PyTorch's proj_size P < H):
///   [i, f, g, o] = [sigmoid, sigmoid, tanh, sigmoid](W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
///   c_t = f * c_{t-1} + i * g,   h_t = W_hr (o * tanh(c_t)),
/// so h is (B, P), W_hh (4H, P) and W_hr (P, H). The packed loop above takes no projection;
/// this is a plain loop of Eigen products, step by step over the running rows (in rank
/// order, so that they are the top n_t rows of the state). f is read as for the LSTM, with
/// f.h (B, P) in and out and f.y (B*T, P) (rows f.y_stride apart, or P); f.gates and
/// f.cells are kept as for the LSTM (zero past each end), f.hidden_n is not used. Not
/// threaded beyond the input product.
template <typename Scalar>
void projected_lstm_forward(const RecurrentForward<Scalar>& f, const Scalar* w_hr, Index B, Index T, Index H,
                            Index P) {
    using M = Matrix<Scalar>;
    const Index I = f.input_size, GH = 4 * H;
    const recurrent_detail::RowOrder rows = recurrent_detail::row_order(f.lengths, B, T);
    const std::vector<Index>& order = rows.order;
    const Eigen::Map<const M> x(f.x, B * T, I), w_ih(f.w_ih, GH, I), w_hh(f.w_hh, GH, P), w_proj(w_hr, P, H);
    Eigen::Map<M> h(f.h, B, P), c(f.c, B, H);
    Eigen::Map<M, 0, Eigen::OuterStride<>> y(f.y, B * T, P, Eigen::OuterStride<>(f.y_stride > 0 ? f.y_stride : P));
    M pre_in(B * T, GH);  // x W_ih^T + b_ih of every step
    matmul_rows<Scalar>(x, w_ih.transpose(), pre_in, f.b_ih);  // (B*T, I) x (I, 4H)
    M hs(B, P), cs(B, H), act(B, GH), m(B, H);  // by rank: h, c, the gates and o * tanh(c) of the running rows
    for (Index r = 0; r < B; ++r) {
        hs.row(r) = h.row(order[r]);
        cs.row(r) = c.row(order[r]);
    }
    y.setZero();
    if (f.gates) Eigen::Map<M>(f.gates, B * T, GH).setZero();
    if (f.cells) Eigen::Map<M>(f.cells, B * T, H).setZero();
    for (Index t = 0; t < T; ++t) {
        const Index n = rows.active[static_cast<std::size_t>(t)];
        for (Index r = 0; r < n; ++r) act.row(r) = pre_in.row(order[r] * T + t);
        act.topRows(n).noalias() += hs.topRows(n) * w_hh.transpose();  // (n, P) x (P, 4H)
        if (f.b_hh) act.topRows(n).rowwise() += Eigen::Map<const RowVector<Scalar>>(f.b_hh, GH);
        const auto gate = [&](Index g) { return act.block(0, g * H, n, H).array(); };
        gate(0) = gate(0).logistic();
        gate(1) = gate(1).logistic();
        gate(2) = gate(2).tanh();
        gate(3) = gate(3).logistic();
        cs.topRows(n).array() = gate(1) * cs.topRows(n).array() + gate(0) * gate(2);  // c_t = f c_{t-1} + i g
        m.topRows(n).array() = gate(3) * cs.topRows(n).array().tanh();               // o tanh(c_t)
        hs.topRows(n).noalias() = m.topRows(n) * w_proj.transpose();                 // (n, H) x (H, P)
        for (Index r = 0; r < n; ++r) {
            const Index row = order[r] * T + t;
            y.row(row) = hs.row(r);
            if (f.gates) Eigen::Map<M>(f.gates, B * T, GH).row(row) = act.row(r);
            if (f.cells) Eigen::Map<M>(f.cells, B * T, H).row(row) = cs.row(r);
        }
    }
    for (Index r = 0; r < B; ++r) {  // each row's state at its last step
        h.row(order[r]) = hs.row(r);
        c.row(order[r]) = cs.row(r);
    }
}

/// Backward through time of projected_lstm_forward: f.y (B*T, P), f.h0 (B, P), f.c0, f.gates,
/// f.cells as it kept them; d.d_out (B*T, P), d.dh (B, P) and d.dc (B, H) in and out, d.d_gates
/// (B*T, 4H) out (zero past each end; it is also the hidden map's gradient). w_hh is (4H, P),
/// w_hr (P, H); dL/dW_hr is added into dw_hr (P, H).
template <typename Scalar>
void projected_lstm_backward(const Scalar* w_hh, const Scalar* w_hr, Scalar* dw_hr, const RecurrentSaved<Scalar>& f,
                             const RecurrentBackward<Scalar>& d, Index B, Index T, Index H, Index P) {
    using M = Matrix<Scalar>;
    using Row = Eigen::Array<Scalar, 1, Eigen::Dynamic>;
    const Index GH = 4 * H;
    const recurrent_detail::RowOrder rows = recurrent_detail::row_order(d.lengths, B, T);
    const std::vector<Index>& order = rows.order;
    const Eigen::Map<const M> gates(f.gates, B * T, GH), cells(f.cells, B * T, H), c0(f.c0, B, H);
    const Eigen::Map<const M> d_out(d.d_out, B * T, P), w_h(w_hh, GH, P), w_proj(w_hr, P, H);
    Eigen::Map<M> dh(d.dh, B, P), dc(d.dc, B, H), d_gates(d.d_gates, B * T, GH);
    d_gates.setZero();
    M dhs(B, P), dcs(B, H), dm(B, H), dpre(B, GH);  // by rank
    for (Index r = 0; r < B; ++r) {
        dhs.row(r) = dh.row(order[r]);
        dcs.row(r) = dc.row(order[r]);
    }
    M dh_all = M::Zero(B * T, P);  // dL/dh_t of every step, for W_hr's gradient
    for (Index t = T - 1; t >= 0; --t) {
        const Index n = rows.active[static_cast<std::size_t>(t)];
        for (Index r = 0; r < n; ++r) {
            const Index row = order[r] * T + t;
            dhs.row(r) += d_out.row(row);
            dh_all.row(row) = dhs.row(r);
        }
        dm.topRows(n).noalias() = dhs.topRows(n) * w_proj;  // (n, P) x (P, H): through h_t = W_hr m_t
        for (Index r = 0; r < n; ++r) {
            const Index b = order[r], row = b * T + t;
            const Row i = gates.row(row).segment(0, H).array(), fg = gates.row(row).segment(H, H).array();
            const Row g = gates.row(row).segment(2 * H, H).array(), o = gates.row(row).segment(3 * H, H).array();
            const Row c_prev = t == 0 ? Row(c0.row(b).array()) : Row(cells.row(row - 1).array());
            const Row tc = cells.row(row).array().tanh();
            // Through m = o tanh(c_t) into c_t, then c_t = f c_{t-1} + i g.
            const Row dcell = dcs.row(r).array() + dm.row(r).array() * o * (Scalar(1) - tc.square());
            dpre.row(r).segment(0, H).array() = dcell * g * i * (Scalar(1) - i);
            dpre.row(r).segment(H, H).array() = dcell * c_prev * fg * (Scalar(1) - fg);
            dpre.row(r).segment(2 * H, H).array() = dcell * i * (Scalar(1) - g.square());
            dpre.row(r).segment(3 * H, H).array() = dm.row(r).array() * tc * o * (Scalar(1) - o);
            dcs.row(r).array() = dcell * fg;
            d_gates.row(row) = dpre.row(r);
        }
        dhs.topRows(n).noalias() = dpre.topRows(n) * w_h;  // (n, 4H) x (4H, P): dL/dh_{t-1}
    }
    for (Index r = 0; r < B; ++r) {
        dh.row(order[r]) = dhs.row(r);
        dc.row(order[r]) = dcs.row(r);
    }
    // dL/dW_hr = sum over steps of dh_t^T (o_t tanh(c_t)), zero past each end (where o is).
    const M m = (gates.rightCols(H).array() * cells.array().tanh()).matrix();  // (B*T, H)
    Eigen::Map<M>(dw_hr, P, H).noalias() += dh_all.transpose() * m;           // (P, B*T) x (B*T, H)
}

}  // namespace seqnn
