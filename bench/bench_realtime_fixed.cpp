// Compile-time-sized GRU and LSTM for one stream, against the real-time twins: does knowing
// the hidden size at compile time pay at the sizes audio models use (hidden 8..32)?
//
//   BM_Fixed<Cell>_Sample/H:        one sample through Fixed<Cell><float, H>: the cell of one
//                                   input feature and its Linear(H -> 1) head, fused
//   BM_Fixed<Cell>_Block/H:/T:      a block of T samples through the same (process_block)
//   BM_Dynamic<Cell>_Sample/H:      the real-time twin (realtime::GRU / realtime::LSTM) and a
//   BM_Dynamic<Cell>_Block/H:/T:    realtime::Linear(H -> 1), chained as bench_realtime does
//
// <Cell> is GRU or LSTM. Both variants hold the same weights (one layer, input 1, with bias,
// built as bench_realtime builds them) and compute the same equations with the same packet
// activations (Eigen's logistic and tanh functors, as realtime/detail.hpp applies them). The
// fixed one differs in sizing only: every loop bound is a constant and every loop unrolled,
// the weights sit in fixed-size aligned Eigen matrices, process_block keeps h (and the
// LSTM's c) in registers over the whole block with the head's dot product fused into each
// step, and the packet is chosen per H at compile time: 8 floats up to H = 16, the full
// packet above (FixedCore::Pk). Under AVX-512 the twin pads every gate to 16 floats; the
// 8-float activations ran faster (their division has the shorter latency), and a step at
// these sizes is a chain of dependent products and activations. -DSEQNN_FIXED_PACKET=16 (or 8, 4) forces one width,
// to tell that choice from the rest of the sizing. Before timing, every Fixed benchmark
// checks that its outputs, per sample and per block, match the twin's over 4096 samples of
// the test signal (to 1e-5, absolute plus relative), and fails the benchmark if not.
//
// Counters as bench_realtime: items_per_second (samples/s), time_per_sample (seconds), FLOPS,
// bytes_per_second. One thread; pin it (taskset -c N). To spread the machine's drift over
// both variants: --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true.
#include "bench_common.hpp"
#include "test_signal.hpp"

#include <seqnn/realtime.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace {

using namespace seqnn;
using seqnn::bench::set_sample_counters;
using seqnn::bench::test_signal;

namespace ei = Eigen::internal;
namespace rd = seqnn::realtime::detail;

// process_block is a function of its own (process_sample is a block of one) that inlines
// everything it calls, Eigen's activations included: left to its heuristics, g++ called some
// activations of the large unrolled step out of line once this file's inlining budget ran
// out, passing the packets through memory. The loops below have compile-time bounds and are
// unrolled in full.
#if defined(__GNUC__)
#define SEQNN_FIXED_KERNEL __attribute__((noinline, flatten))
#else
#define SEQNN_FIXED_KERNEL
#endif
#define SEQNN_FIXED_UNROLL _Pragma("GCC unroll 64")

// 0: the packet width by H (FixedCore::Pk); 16, 8 or 4: that many floats at every H.
#ifndef SEQNN_FIXED_PACKET
#define SEQNN_FIXED_PACKET 0
#endif

// Eigen's functor Op on one packet of any width, as rd::apply does on a full packet.
template <typename S, typename Op, typename Pk>
EIGEN_ALWAYS_INLINE Pk apply_op(const Pk& x) noexcept {
    if constexpr (ei::unpacket_traits<Pk>::size == rd::kPacket<S>) {  // the full packet: rd::apply itself
        return rd::apply<S, Op>(x);
    } else {
        static_assert(ei::functor_traits<Op>::PacketAccess, "a half packet needs the functor's packet form");
        return Op().packetOp(x);
    }
}
template <typename S, typename Pk>
EIGEN_ALWAYS_INLINE Pk logistic(const Pk& x) noexcept {
    return apply_op<S, ei::scalar_logistic_op<S>>(x);
}
template <typename S, typename Pk>
EIGEN_ALWAYS_INLINE Pk tanh(const Pk& x) noexcept {
    return apply_op<S, ei::scalar_tanh_op<S>>(x);
}

// What the fixed GRU and LSTM share: the packet of H units, the weights, the hidden product
// of one step and the fused head. G gates of H units, one input feature:
//   w_hh (G*Hp, H): column k holds gate 0's H weights of h[k], zeros up to Hp, then gate 1's...
//   w_ih, bias (G*Hp): the same segments; bias folds b_ih + b_hh where the cell allows
//   w_out (Hp), b_out: the head Linear(H -> 1)
template <typename S, int H, int G>
struct FixedCore {
    // The widest packet of at most max(H/2, 8) floats that divides it (Eigen's find_best_packet):
    // under AVX-512, 8 floats for H = 8 and 16 (one or two packets a gate), 16 from H = 32.
    static constexpr int kWidth = SEQNN_FIXED_PACKET > 0 ? SEQNN_FIXED_PACKET : std::max(H / 2, std::min(H, 8));
    using Pk = typename ei::find_best_packet<S, kWidth>::type;
    static constexpr int P = ei::unpacket_traits<Pk>::size;
    static constexpr int NP = (H + P - 1) / P;  // packets of units per gate
    static constexpr int Hp = NP * P;
    // Interleaved partial sums of the hidden product, as many as leave registers free for
    // the broadcasts and loads: its chain of dependent multiply-adds is H/N long.
    static constexpr int kRegisters = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32 ? 24 : 12;
    static constexpr int N = std::max(1, std::min({4, H, kRegisters / (G * NP)}));

    using Hidden = Eigen::Matrix<S, G * Hp, H>;
    using Gates = Eigen::Matrix<S, G * Hp, 1>;
    using Units = Eigen::Matrix<S, Hp, 1>;

    Hidden w_hh = Hidden::Zero();
    Gates w_ih = Gates::Zero();
    Gates bias = Gates::Zero();
    Units w_out = Units::Zero();
    S b_out = S(0);

    // Checks the layer (input 1, hidden H, one unidirectional layer) and copies its weights:
    // gate g's rows [g*H, (g+1)*H) to [g*Hp, g*Hp + H).
    FixedCore(const char* name, const RecurrentStack<S>& layer, const Linear<S>& head) {
        if (layer.input_size() != 1 || layer.hidden_size() != H || layer.num_layers() != 1 ||
            layer.directions() != 1 || layer.real_hidden_size() != H)
            fail(name, "built for one unidirectional layer of input 1 and hidden " + std::to_string(H) + ", got " +
                           layer.signature());
        if (head.in_features() != H || head.out_features() != 1)
            fail(name, "the head must be Linear(" + std::to_string(H) + " -> 1)");
        const auto& w = layer.weights(0);
        for (int g = 0; g < G; ++g) {
            w_hh.block(g * Hp, 0, H, H) = w.weight_hh.value.middleRows(g * H, H);
            w_ih.segment(g * Hp, H) = w.weight_ih.value.col(0).segment(g * H, H);
        }
        w_out.head(H) = head.weight.value.row(0).transpose();
        if (head.has_bias()) b_out = head.bias.value.data()[0];
    }

    // Packet p of gate g of a (G*Hp) vector.
    EIGEN_ALWAYS_INLINE Pk load(const Gates& v, int g, int p) const noexcept {
        return ei::pload<Pk>(v.data() + g * Hp + p * P);
    }

    // acc[g][p] += sum_k h[k] w_hh[:, k] for the G gates' packets, h in registers: stored once
    // to the stack, each h[k] broadcast from there by a load. The empty asm hides the stored
    // values from the compiler, which otherwise broadcasts each lane by a permute (vpermd) and
    // ran H = 32 about 10% slower: a permute shares its port with the multiply-adds, a
    // broadcast load does not.
    EIGEN_ALWAYS_INLINE void hidden_product(const Pk (&h)[NP], Pk (&acc)[G][NP]) const noexcept {
        alignas(Pk) S hs[Hp];
        SEQNN_FIXED_UNROLL
        for (int p = 0; p < NP; ++p) ei::pstore(hs + p * P, h[p]);
#if defined(__GNUC__)
        asm("" : "+m"(hs));
#endif
        Pk part[N][G][NP];
        SEQNN_FIXED_UNROLL
        for (int g = 0; g < G; ++g) {
            SEQNN_FIXED_UNROLL
            for (int p = 0; p < NP; ++p) {
                part[0][g][p] = acc[g][p];
                SEQNN_FIXED_UNROLL
                for (int s = 1; s < N; ++s) part[s][g][p] = ei::pset1<Pk>(S(0));
            }
        }
        SEQNN_FIXED_UNROLL
        for (int k = 0; k < H; ++k) {
            const Pk hk = ei::pset1<Pk>(hs[k]);
            const S* col = w_hh.data() + k * (G * Hp);
            SEQNN_FIXED_UNROLL
            for (int g = 0; g < G; ++g) {
                SEQNN_FIXED_UNROLL
                for (int p = 0; p < NP; ++p)
                    part[k % N][g][p] = ei::pmadd(hk, ei::pload<Pk>(col + g * Hp + p * P), part[k % N][g][p]);
            }
        }
        SEQNN_FIXED_UNROLL
        for (int g = 0; g < G; ++g) {
            SEQNN_FIXED_UNROLL
            for (int p = 0; p < NP; ++p) {
                if constexpr (N == 4)
                    acc[g][p] = ei::padd(ei::padd(part[0][g][p], part[1][g][p]), ei::padd(part[2][g][p], part[3][g][p]));
                else if constexpr (N == 3)
                    acc[g][p] = ei::padd(ei::padd(part[0][g][p], part[1][g][p]), part[2][g][p]);
                else if constexpr (N == 2)
                    acc[g][p] = ei::padd(part[0][g][p], part[1][g][p]);
                else
                    acc[g][p] = part[0][g][p];
            }
        }
    }

    // The head, b + w_out . h_t.
    EIGEN_ALWAYS_INLINE S head(const Pk (&h)[NP]) const noexcept {
        Pk sum = ei::pmul(h[0], ei::pload<Pk>(w_out.data()));
        SEQNN_FIXED_UNROLL
        for (int p = 1; p < NP; ++p) sum = ei::pmadd(h[p], ei::pload<Pk>(w_out.data() + p * P), sum);
        return ei::predux(sum) + b_out;
    }

    static EIGEN_ALWAYS_INLINE void load_state(const Units& from, Pk (&h)[NP]) noexcept {
        SEQNN_FIXED_UNROLL
        for (int p = 0; p < NP; ++p) h[p] = ei::pload<Pk>(from.data() + p * P);
    }
    static EIGEN_ALWAYS_INLINE void store_state(const Pk (&h)[NP], Units& to) noexcept {
        SEQNN_FIXED_UNROLL
        for (int p = 0; p < NP; ++p) ei::pstore(to.data() + p * P, h[p]);
    }
};

// GRU(1 -> H) + Linear(H -> 1), sized at compile time: PyTorch's gate order r, z, n and
// realtime::GRU's equations,
//   [r, z] = sigmoid(W_i[r,z] x + b_i[r,z] + b_h[r,z] + W_h[r,z] h)
//   n      = tanh(W_in x + b_in + r * (W_hn h + b_hn)),   h_t = (1 - z) n + z h,   y = w . h_t + b
template <typename S, int H>
class FixedGRU {
    using Core = FixedCore<S, H, 3>;
    using Pk = typename Core::Pk;
    static constexpr int NP = Core::NP, P = Core::P;

public:
    FixedGRU(const seqnn::GRU<S>& layer, const Linear<S>& head) : core_("FixedGRU", layer, head) {
        if (layer.options().bias) {
            const auto& w = layer.weights(0);
            for (int g = 0; g < 3; ++g)
                for (int u = 0; u < H; ++u) {
                    const S b_ih = w.bias_ih.value.data()[g * H + u], b_hh = w.bias_hh.value.data()[g * H + u];
                    core_.bias(g * Core::Hp + u) = g < 2 ? b_ih + b_hh : b_ih;  // n keeps b_hn apart
                    if (g == 2) b_hn_(u) = b_hh;
                }
        }
    }

    void reset() noexcept { h_.setZero(); }

    void process_sample(const S* x, S* y) noexcept { process_block(x, 1, y); }

    // h stays in registers over the block; y[t] is the head of h_t.
    SEQNN_FIXED_KERNEL void process_block(const S* x, Index steps, S* y) noexcept {
        Pk h[NP];
        Core::load_state(h_, h);
        for (Index t = 0; t < steps; ++t) {
            step(x[t], h);
            y[t] = core_.head(h);
        }
        Core::store_state(h, h_);
    }

private:
    EIGEN_ALWAYS_INLINE void step(S x, Pk (&h)[NP]) const noexcept {
        const Pk xt = ei::pset1<Pk>(x);
        Pk acc[3][NP], x_n[NP];
        SEQNN_FIXED_UNROLL
        for (int p = 0; p < NP; ++p) {
            acc[0][p] = ei::pmadd(xt, core_.load(core_.w_ih, 0, p), core_.load(core_.bias, 0, p));
            acc[1][p] = ei::pmadd(xt, core_.load(core_.w_ih, 1, p), core_.load(core_.bias, 1, p));
            acc[2][p] = ei::pload<Pk>(b_hn_.data() + p * P);
            x_n[p] = ei::pmadd(xt, core_.load(core_.w_ih, 2, p), core_.load(core_.bias, 2, p));
        }
        core_.hidden_product(h, acc);
        const Pk one = ei::pset1<Pk>(S(1));
        SEQNN_FIXED_UNROLL
        for (int p = 0; p < NP; ++p) {
            const Pk r = logistic<S>(acc[0][p]), z = logistic<S>(acc[1][p]);
            const Pk n = tanh<S>(ei::pmadd(r, acc[2][p], x_n[p]));
            h[p] = ei::pmadd(ei::psub(one, z), n, ei::pmul(z, h[p]));
        }
    }

    Core core_;
    typename Core::Units b_hn_ = Core::Units::Zero();
    typename Core::Units h_ = Core::Units::Zero();
};

// LSTM(1 -> H) + Linear(H -> 1), sized at compile time: PyTorch's gate order i, f, g, o and
// realtime::LSTM's equations,
//   [i, f, g, o] = [sigmoid, sigmoid, tanh, sigmoid](W_ih x + b_ih + b_hh + W_hh h)
//   c_t = f c + i g,   h_t = o tanh(c_t),   y = w . h_t + b
template <typename S, int H>
class FixedLSTM {
    using Core = FixedCore<S, H, 4>;
    using Pk = typename Core::Pk;
    static constexpr int NP = Core::NP;

public:
    FixedLSTM(const seqnn::LSTM<S>& layer, const Linear<S>& head) : core_("FixedLSTM", layer, head) {
        if (layer.options().proj_size > 0) fail("FixedLSTM", "no proj_size");
        if (layer.options().bias) {
            const auto& w = layer.weights(0);
            for (int g = 0; g < 4; ++g)
                for (int u = 0; u < H; ++u)
                    core_.bias(g * Core::Hp + u) = w.bias_ih.value.data()[g * H + u] + w.bias_hh.value.data()[g * H + u];
        }
    }

    void reset() noexcept {
        h_.setZero();
        c_.setZero();
    }

    void process_sample(const S* x, S* y) noexcept { process_block(x, 1, y); }

    // h and c stay in registers over the block; y[t] is the head of h_t.
    SEQNN_FIXED_KERNEL void process_block(const S* x, Index steps, S* y) noexcept {
        Pk h[NP], c[NP];
        Core::load_state(h_, h);
        Core::load_state(c_, c);
        for (Index t = 0; t < steps; ++t) {
            step(x[t], h, c);
            y[t] = core_.head(h);
        }
        Core::store_state(h, h_);
        Core::store_state(c, c_);
    }

private:
    EIGEN_ALWAYS_INLINE void step(S x, Pk (&h)[NP], Pk (&c)[NP]) const noexcept {
        const Pk xt = ei::pset1<Pk>(x);
        Pk acc[4][NP];
        SEQNN_FIXED_UNROLL
        for (int g = 0; g < 4; ++g) {
            SEQNN_FIXED_UNROLL
            for (int p = 0; p < NP; ++p) acc[g][p] = ei::pmadd(xt, core_.load(core_.w_ih, g, p), core_.load(core_.bias, g, p));
        }
        core_.hidden_product(h, acc);
        SEQNN_FIXED_UNROLL
        for (int p = 0; p < NP; ++p) {
            const Pk i = logistic<S>(acc[0][p]), f = logistic<S>(acc[1][p]);
            const Pk g = tanh<S>(acc[2][p]), o = logistic<S>(acc[3][p]);
            c[p] = ei::pmadd(i, g, ei::pmul(f, c[p]));  // f c + i g
            h[p] = ei::pmul(o, tanh<S>(c[p]));
        }
    }

    Core core_;
    typename Core::Units h_ = Core::Units::Zero();
    typename Core::Units c_ = Core::Units::Zero();
};

// Each cell: the general layer (input 1, hidden H, as bench_realtime makes it), its twin and
// its fixed-size variant, and the gate count for the FLOP count.
struct GRUCell {
    using Layer = GRU<float>;
    using Twin = realtime::GRU<float>;
    template <int H>
    using Fixed = FixedGRU<float, H>;
    static constexpr int gates = 3;
};
struct LSTMCell {
    using Layer = LSTM<float>;
    using Twin = realtime::LSTM<float>;
    template <int H>
    using Fixed = FixedLSTM<float, H>;
    static constexpr int gates = 4;
};

// The weights both variants are built from: the cell from Rng(7), the head from Rng(11).
template <typename Cell>
struct Weights {
    explicit Weights(Index H) : layer(make_layer(H)), head(make_head(H)) {}
    static typename Cell::Layer make_layer(Index H) {
        Rng rng(7);
        return typename Cell::Layer(RecurrentOptions{.input_size = 1, .hidden_size = H}, rng);
    }
    static Linear<float> make_head(Index H) {
        Rng rng(11);
        return Linear<float>(H, 1, true, rng);
    }
    typename Cell::Layer layer;
    Linear<float> head;
};

// The twin and its head chained by hand, as bench_realtime's TwinChain: a block runs in pieces
// of max_block, the cell over a piece, then the head over it.
template <typename Cell>
class DynamicChain {
public:
    explicit DynamicChain(const Weights<Cell>& w)
        : cell_(w.layer), head_(w.head), hidden_(static_cast<std::size_t>(cell_.max_block() * cell_.output_size())) {}

    void reset() noexcept { cell_.reset(); }
    void process_sample(const float* x, float* y) noexcept {
        cell_.process_sample(x, hidden_.data());
        head_.process_sample(hidden_.data(), y);
    }
    void process_block(const float* x, Index steps, float* y) noexcept {
        for (Index begin = 0; begin < steps; begin += cell_.max_block()) {
            const Index n = std::min(cell_.max_block(), steps - begin);
            cell_.process_block(x + begin, n, hidden_.data());  // (n, 1) -> (n, H)
            head_.process_block(hidden_.data(), n, y + begin);  // (n, H) -> (n, 1)
        }
    }

private:
    typename Cell::Twin cell_;
    realtime::Linear<float> head_;
    std::vector<float> hidden_;
};

// Whether the fixed variant's outputs match the twin's over 4096 samples of the test signal,
// by process_sample and by process_block in blocks of 256, to 1e-5 (absolute plus relative);
// both are reset afterwards. `max_diff` receives the largest |difference| seen; on a mismatch,
// `why` says where.
template <typename Fixed, typename Dynamic>
bool outputs_match(Fixed& fixed, Dynamic& dynamic, double& max_diff, std::string& why) {
    constexpr Index samples = 4096, block = 256;
    constexpr float tolerance = 1e-5f;
    const std::vector<float>& x = test_signal();
    std::vector<float> expect(samples), by_sample(samples), by_block(samples);
    for (Index t = 0; t < samples; ++t) dynamic.process_sample(&x[static_cast<std::size_t>(t)], &expect[static_cast<std::size_t>(t)]);
    for (Index t = 0; t < samples; ++t) fixed.process_sample(&x[static_cast<std::size_t>(t)], &by_sample[static_cast<std::size_t>(t)]);
    fixed.reset();
    for (Index t = 0; t < samples; t += block)
        fixed.process_block(&x[static_cast<std::size_t>(t)], block, &by_block[static_cast<std::size_t>(t)]);
    fixed.reset();
    dynamic.reset();
    max_diff = 0;
    for (Index t = 0; t < samples; ++t) {
        const std::size_t i = static_cast<std::size_t>(t);
        for (const auto& [what, got] : {std::pair{"process_sample", by_sample[i]}, std::pair{"process_block", by_block[i]}}) {
            const float diff = std::abs(got - expect[i]);
            max_diff = std::max(max_diff, static_cast<double>(diff));
            if (!(diff <= tolerance * (1.0f + std::abs(expect[i])))) {
                char line[160];
                std::snprintf(line, sizeof line, "%s differs from the twin at sample %ld: %.9g vs %.9g", what,
                              static_cast<long>(t), static_cast<double>(got), static_cast<double>(expect[i]));
                why = line;
                return false;
            }
        }
    }
    return true;
}

// Multiply-adds of one sample (cell and head) and the weights it reads, in bytes, as
// bench_realtime counts them.
template <typename Cell>
double sample_flops(Index H) {
    const double G = Cell::gates, h = static_cast<double>(H);
    return 2.0 * G * h * (1.0 + h) + 2.0 * h;
}
template <typename Cell>
double sample_bytes(Index H) {
    const double G = Cell::gates, h = static_cast<double>(H);
    return 4.0 * (G * h * (1.0 + h + 2.0) + h + 1.0);
}

// The timed loops (test_signal.hpp), one harness for both variants.
template <typename Cell, typename Model>
void time_samples(benchmark::State& state, Model& model) {
    bench::feed_samples(state, model);
    set_sample_counters(state, 1, sample_flops<Cell>(state.range(0)), sample_bytes<Cell>(state.range(0)));
}

template <typename Cell, typename Model>
void time_blocks(benchmark::State& state, Model& model) {
    const Index H = state.range(0), T = state.range(1);
    bench::feed_blocks(state, model, T);
    set_sample_counters(state, static_cast<double>(T), sample_flops<Cell>(H), sample_bytes<Cell>(H));
}

// Runs f.template operator()<H>() for the compiled hidden sizes; false for another.
template <typename F>
bool with_hidden(Index H, const F& f) {
    switch (H) {
        case 8: f.template operator()<8>(); return true;
        case 16: f.template operator()<16>(); return true;
        case 32: f.template operator()<32>(); return true;
        default: return false;
    }
}

template <typename Cell, bool Block>
void BM_Fixed(benchmark::State& state) {
    set_num_threads(1);
    const Index H = state.range(0);
    const Weights<Cell> weights(H);
    const bool compiled = with_hidden(H, [&]<int Hc>() {
        typename Cell::template Fixed<Hc> fixed(weights.layer, weights.head);
        DynamicChain<Cell> dynamic(weights);
        double max_diff = 0;
        std::string why;
        if (!outputs_match(fixed, dynamic, max_diff, why)) return state.SkipWithError(why.c_str());
        if constexpr (Block)
            time_blocks<Cell>(state, fixed);
        else
            time_samples<Cell>(state, fixed);
        state.counters["max_diff"] = max_diff;  // the largest |y_fixed - y_twin| of the check
    });
    if (!compiled) state.SkipWithError("no fixed variant compiled for this hidden size");
}

template <typename Cell, bool Block>
void BM_Dynamic(benchmark::State& state) {
    set_num_threads(1);
    const Weights<Cell> weights(state.range(0));
    DynamicChain<Cell> dynamic(weights);
    if constexpr (Block)
        time_blocks<Cell>(state, dynamic);
    else
        time_samples<Cell>(state, dynamic);
}

void sample_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"H"});
    for (int H : {8, 16, 32}) b->Args({H});
}

void block_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"H", "T"});
    for (int H : {8, 16, 32}) b->Args({H, 256});
}

}  // namespace

BENCHMARK_TEMPLATE(BM_Fixed, GRUCell, false)->Name("BM_FixedGRU_Sample")->Apply(sample_shapes);
BENCHMARK_TEMPLATE(BM_Dynamic, GRUCell, false)->Name("BM_DynamicGRU_Sample")->Apply(sample_shapes);
BENCHMARK_TEMPLATE(BM_Fixed, GRUCell, true)->Name("BM_FixedGRU_Block")->Apply(block_shapes);
BENCHMARK_TEMPLATE(BM_Dynamic, GRUCell, true)->Name("BM_DynamicGRU_Block")->Apply(block_shapes);
BENCHMARK_TEMPLATE(BM_Fixed, LSTMCell, false)->Name("BM_FixedLSTM_Sample")->Apply(sample_shapes);
BENCHMARK_TEMPLATE(BM_Dynamic, LSTMCell, false)->Name("BM_DynamicLSTM_Sample")->Apply(sample_shapes);
BENCHMARK_TEMPLATE(BM_Fixed, LSTMCell, true)->Name("BM_FixedLSTM_Block")->Apply(block_shapes);
BENCHMARK_TEMPLATE(BM_Dynamic, LSTMCell, true)->Name("BM_DynamicLSTM_Block")->Apply(block_shapes);
