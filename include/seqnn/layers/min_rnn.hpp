// What minGRU and minLSTM ("Were RNNs All We Needed?", Feng et al. 2024) share.
// Their gates read only x_t, never h_{t-1}, so a whole sequence is
//   1. one GEMM:            pre = x W^T (+ b)                  (B*T, D) -> (B*T, G*E)
//   2. element-wise gates:  a_t, b_t from pre                   (B*T, E) each
//   3. a linear recurrence: h_t = a_t * h_{t-1} + b_t           the prefix scan
//   4. optionally one GEMM: y = h W_out^T back to D features    (B*T, E) -> (B*T, D)
// The cells (mingru.hpp, minlstm.hpp) define step 2 and its derivative; this
// class does the rest, in any of three scan modes that all give the same result.
// MinRNNOptions::split forces the parallel scan's split (by channels or by time), and
// scan_plan(B, T) reports the split, threads and pieces a forward of that size runs.
//
// Padded batches (Sequence::lengths): the scan stops at each sequence's end, which is
// h_t = a_t h_{t-1} + b_t with a_t = 1, b_t = 0 past it (the state carried through, so h_T
// is the sequence's own last state), except that those rows are skipped rather than
// computed; their a and b are constants, so no gradient reaches pre, W or x there.
//
// Bidirectional (MinRNNOptions::bidirectional): a second projection runs the same cell
// backwards in time, h^r_t = a^r_t h^r_{t+1} + b^r_t from each sequence's last real step
// down to step 0, and the two directions' h are concatenated, [h | h^r] (B*T, 2E), as
// PyTorch's bidirectional nn.GRU concatenates its outputs; to_out (when projecting) maps
// the 2E features to D, and without it the layer outputs the 2E features. The state is
// {h (2B, E)}: the forward direction's rows, then the reverse direction's, whose initial
// values enter at each sequence's last step and whose final values are h^r at step 0. A
// reverse direction needs the whole sequence, so such a layer cannot step.
//
// Parameter names follow lucidrains/minGRU-pytorch, so its checkpoints load:
// the input projection's rows are [hidden, gate(s)], and `to_out` exists only
// when projecting back to the input size. A bidirectional layer keeps those names for
// its forward direction and names the reverse direction's projection with the prefix
// `reverse.`:
//   to_hidden_and_gate.weight (2E, D)           reverse.to_hidden_and_gate.weight (2E, D)
//   (MinLSTM: to_hidden_and_f_i_gate, (3E, D))  (reverse.to_hidden_and_f_i_gate)
//   .bias likewise when bias is on;             to_out.weight (D, 2E), columns [forward | reverse]
//
// The paper's own code (BorealisAI/minRNNs, models/minRNNs.py) names minLSTM's projection
// `to_hidden_and_gate` too (MinRNNNaming::Borealis), always has biases and to_out, and can
// learn the initial state: init_hidden_state (E), the last parameter, with h_0 = g(init)
// for every sequence (MinRNNOptions::learned_initial_state). borealis_options() gives
// the options of its minGRU(dim, expansion_factor, use_init_hidden_state) and
// minLSTM(..., use_coeff_norm=True, ...), whose checkpoints then load strictly.
//
// Learned initial state: initial_state(B) (so also forward and step given no state or an
// empty one) starts every stream at g(init_hidden_state), and a training forward from such a
// state sends dL/dh_0, summed over the streams, through g into init_hidden_state's
// gradient (backward's d_initial still reports dL/dh_0). The state made by initial_state
// holds the values g(init) and a mark; a forward treats it as the learned start while it
// is marked and still holds g(init) of the current parameter in every row. A state the
// caller wrote (or one made before the parameter changed) is an ordinary initial state:
// it is used as given and no gradient reaches init_hidden_state.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/core/scratch.hpp"
#include "seqnn/kernels/elementwise.hpp"
#include "seqnn/kernels/log_scan.hpp"
#include "seqnn/kernels/matmul.hpp"
#include "seqnn/kernels/scan.hpp"
#include "seqnn/nn/linear.hpp"

#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace seqnn {

/// The candidate state's activation: identity (the paper's linear form) or the
/// paper's g, which keeps h positive so the log-space scan applies:
///   g(x) = x + 0.5 for x >= 0, sigmoid(x) for x < 0.
enum class HiddenActivation { Identity, PositiveG };

/// Which names the parameters take: lucidrains/minGRU-pytorch's (minLSTM's projection
/// `to_hidden_and_f_i_gate`) or the paper's code, BorealisAI/minRNNs (`to_hidden_and_gate`
/// for both cells). minGRU's names are the same in both.
enum class MinRNNNaming { Lucidrains, Borealis };

/// How the recurrence is evaluated; all three give the same outputs.
enum class MinRNNMode {
    Sequential,  // time in order (the serial baseline)
    Parallel,    // the linear-space parallel scan (OpenMP)
    LogSpace,    // the paper's log-space scan (Heinsen 2023); needs PositiveG and h0 > 0
};

/// The sizes and modes of a MinGRU or MinLSTM.
struct MinRNNOptions {
    Index input_size = 0;         ///< D
    Index hidden_size = 0;        ///< E; 0 means input_size * expansion
    double expansion = 1.0;       ///< E = D * expansion when hidden_size is 0
    bool project_out = false;     ///< add to_out (E -> D); forced on when E != D
    bool bias = false;            ///< biases on the input projection and to_out; lucidrains uses none
    /// The candidate state's activation.
    HiddenActivation activation = HiddenActivation::PositiveG;
    /// How the recurrence is evaluated.
    MinRNNMode mode = MinRNNMode::Parallel;
    /// How the parallel scan divides the work (kernels/scan.hpp): Auto lets the sizes and
    /// core/parallel.hpp's rule decide, Channels or Time force that split on every thread.
    /// A forced split needs a parallel mode; the log-space scan splits over channels only.
    /// MinRNN::scan_plan reports what a forward would run.
    ScanSplit split = ScanSplit::Auto;
    /// Adds a reverse direction with its own input projection (its names prefixed with
    /// "reverse.") and concatenates both directions' h: (B*T, 2E), mapped to D by to_out
    /// when projecting.
    /// The state holds both directions' h; such a layer cannot step.
    bool bidirectional = false;
    /// Adds the parameter init_hidden_state (E), listed last: a stream given no state starts
    /// at h_0 = g(init_hidden_state) (BorealisAI/minRNNs' use_init_hidden_state). Needs
    /// HiddenActivation::PositiveG and a unidirectional layer.
    bool learned_initial_state = false;
    /// The parameters' names (only minLSTM's input projection differs).
    MinRNNNaming naming = MinRNNNaming::Lucidrains;
};

/// The options of BorealisAI/minRNNs' minGRU(dim, expansion_factor, use_init_hidden_state)
/// and minLSTM(dim, expansion_factor, forget_bias_init_scale, use_coeff_norm=True,
/// use_init_hidden_state): E = int(dim * expansion_factor), biases, to_out always, g, the
/// paper's names, and init_hidden_state when use_init_hidden_state. Its checkpoints load
/// with io::load_state_dict(..., strict=true) under the same names (forget_bias_init_scale
/// changes only the initial weights; use_coeff_norm=False is not supported).
inline MinRNNOptions borealis_options(Index dim, double expansion_factor, bool use_init_hidden_state = true) {
    MinRNNOptions o;
    o.input_size = dim;
    o.expansion = expansion_factor;  // E = floor(dim * expansion_factor), as int() in Python
    o.project_out = true;
    o.bias = true;
    o.activation = HiddenActivation::PositiveG;
    o.learned_initial_state = use_init_hidden_state;
    o.naming = MinRNNNaming::Borealis;
    return o;
}

namespace min_rnn_math {

// softplus(x) = log(1 + e^x), without overflow.
template <typename Derived>
auto softplus(const Eigen::ArrayBase<Derived>& x) {
    using Scalar = typename Derived::Scalar;
    return x.cwiseMax(Scalar(0)) + (-x.abs()).exp().log1p();
}

// out = gate * act(pre), one element-wise pass, so `out` may be `pre` itself.
template <typename Scalar, typename Gate, typename Pre, typename Out>
void set_gate_times_candidate(HiddenActivation act, const Gate& gate, const Pre& pre, Out&& out) {
    if (act == HiddenActivation::Identity)
        out = gate * pre;
    else  // g(x) = max(x, 0) + sigmoid(min(x, 0)), written without a select so that it vectorises
        out = gate * (pre.cwiseMax(Scalar(0)) + pre.cwiseMin(Scalar(0)).logistic());
}

// out *= act(pre): the candidate state h~, multiplied in without a temporary.
template <typename Scalar, typename Pre, typename Out>
void multiply_by_candidate(HiddenActivation act, const Eigen::ArrayBase<Pre>& pre, Eigen::ArrayBase<Out>& out) {
    if (act == HiddenActivation::Identity)
        out *= pre;
    else
        out *= pre.cwiseMax(Scalar(0)) + pre.cwiseMin(Scalar(0)).logistic();
}

// out *= d act / d pre.
template <typename Scalar, typename Pre, typename Out>
void multiply_by_candidate_derivative(HiddenActivation act, const Eigen::ArrayBase<Pre>& pre,
                                      Eigen::ArrayBase<Out>& out) {
    if (act == HiddenActivation::PositiveG)
        out *= (pre >= Scalar(0)).select(Scalar(1), pre.logistic() * (-pre).logistic());
}

// g(pre) as an array expression.
template <typename Scalar, typename Pre>
auto positive_g(const Eigen::ArrayBase<Pre>& pre) {
    return pre.cwiseMax(Scalar(0)) + pre.cwiseMin(Scalar(0)).logistic();
}

// log g(pre), stable in both branches: log(x + 0.5) or -softplus(-x).
template <typename Scalar, typename Pre>
auto log_positive_g(const Eigen::ArrayBase<Pre>& pre) {
    return (pre >= Scalar(0)).select((pre.cwiseMax(Scalar(0)) + Scalar(0.5)).log(), -softplus(-pre));
}

}  // namespace min_rnn_math

/// What MinGRU and MinLSTM share: the projection, the scan and the optional output projection.
template <typename Scalar>
class MinRNN : public Layer<Scalar> {
public:
    /// Row-major array for the element-wise gate math.
    using Array = Eigen::Array<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

    /// "MinGRU" or "MinLSTM".
    std::string kind() const override { return kind_; }
    /// The options it was made with.
    const MinRNNOptions& options() const { return options_; }
    Index input_size() const override { return options_.input_size; }
    /// D when projecting; otherwise E, or 2E (both directions' h) when bidirectional.
    Index output_size() const override { return projects() ? options_.input_size : directions() * hidden_size_; }
    /// E, the width of h (of each direction).
    Index hidden_size() const { return hidden_size_; }
    /// Whether an output projection maps h (both directions' when bidirectional) back to D features.
    bool projects() const { return to_out_.weight.size() > 0; }
    /// Whether a reverse direction runs each sequence backwards in time.
    bool bidirectional() const { return options_.bidirectional; }
    /// 2 when bidirectional, else 1: the blocks of E rows in the state and columns in h.
    Index directions() const { return options_.bidirectional ? 2 : 1; }
    /// How the recurrence is evaluated.
    MinRNNMode mode() const { return options_.mode; }
    /// Chooses how the recurrence is evaluated; all modes give the same outputs.
    void set_mode(MinRNNMode mode) {
        check_options(this->kind(), options_.activation, mode, options_.split);
        options_.mode = mode;
    }
    /// How the parallel scan divides the work.
    ScanSplit split() const { return options_.split; }
    /// Chooses how the parallel scan divides the work; every split gives the same outputs.
    void set_split(ScanSplit split) {
        check_options(this->kind(), options_.activation, options_.mode, split);
        options_.split = split;
    }
    /// How forward's scan (and backward's reverse scan) would run, called now for B = `batch`
    /// sequences of T = `steps` steps: sequentially, or which split on how many threads in
    /// how many pieces (kernels/scan.hpp's scan_plan over the E channels of h). The
    /// log-space mode reports its forward's plan; its backward runs the linear-space
    /// reverse scan, with this layer's split.
    ScanPlan scan_plan(Index batch, Index steps) const {
        if (batch <= 0 || steps <= 0)
            fail(this->where("scan_plan"), "B and T must be positive, got B=" + std::to_string(batch) +
                                               ", T=" + std::to_string(steps));
        if (options_.mode == MinRNNMode::LogSpace) return log_scan_plan<Scalar>(batch, steps, hidden_size_, scan_options());
        return seqnn::scan_plan<Scalar>(batch, steps, hidden_size_, scan_options());
    }

    /// The input projection to [hidden, gates] (of the forward direction).
    Linear<Scalar>& in_projection() { return in_proj_; }
    /// The reverse direction's input projection (empty unless bidirectional).
    Linear<Scalar>& reverse_in_projection() { return reverse_in_proj_; }
    /// The output projection (empty when it does not project).
    Linear<Scalar>& out_projection() { return to_out_; }
    /// The input projection to [hidden, gates], read-only (for the real-time twins).
    const Linear<Scalar>& in_projection() const { return in_proj_; }
    /// The output projection, read-only (empty when it does not project).
    const Linear<Scalar>& out_projection() const { return to_out_; }
    /// Whether the layer learns its initial state (init_hidden_state).
    bool learns_initial_state() const { return options_.learned_initial_state; }
    /// init_hidden_state (E), stored as one row; empty unless learned_initial_state.
    Parameter<Scalar>& init_hidden_state() { return init_hidden_state_; }
    /// init_hidden_state (E) as one row, read-only; empty unless learned_initial_state.
    const Parameter<Scalar>& init_hidden_state() const { return init_hidden_state_; }
    /// g(init_hidden_state) (1, E): where every stream starts when given no state; empty
    /// unless learned_initial_state.
    Matrix<Scalar> learned_h0() const {
        if (!learns_initial_state()) return {};
        return min_rnn_math::positive_g<Scalar>(init_hidden_state_.value.array()).matrix();
    }

    /// The layer's kind and sizes, e.g. "MinGRU(5 -> 9 -> 5)" (D -> E, then back to D when
    /// projecting), "MinLSTM(8 -> 8)", or "MinGRU(5 -> 2x9 -> 5)" when bidirectional: the
    /// owner a training forward writes into its Context and backward expects there.
    std::string signature() const override {
        return this->kind() + "(" + std::to_string(input_size()) + " -> " + (bidirectional() ? "2x" : "") +
               std::to_string(hidden_size_) + (projects() ? " -> " + std::to_string(output_size()) : std::string()) +
               ")";
    }

    /// The forward direction's projection, the reverse direction's (prefixed with
    /// "reverse.", when bidirectional), to_out (when projecting), then init_hidden_state
    /// (when learned): the order PyTorch registers them in.
    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        in_proj_.collect_parameters(prefix + in_proj_name_ + ".", out);
        if (bidirectional()) reverse_in_proj_.collect_parameters(prefix + "reverse." + in_proj_name_ + ".", out);
        if (projects()) to_out_.collect_parameters(prefix + "to_out.", out);
        if (learns_initial_state()) out.push_back({prefix + "init_hidden_state", &init_hidden_state_});
    }

    /// What a training forward keeps for backward.
    struct Saved {
        Matrix<Scalar> input;        ///< x (B*T, D), zero past each end of a padded batch
        Matrix<Scalar> h0;           ///< the initial state (B, E); bidirectional (2B, E), forward rows first
        Matrix<Scalar> pre;          ///< the input projection (B*T, G*E)
        Matrix<Scalar> reverse_pre;  ///< the reverse direction's input projection (B*T, G*E), when bidirectional
        Matrix<Scalar> h;            ///< the states (B*T, E); bidirectional [forward | reverse] (B*T, 2E)
        bool learned_start = false;  ///< h0 was g(init_hidden_state): backward adds into its gradient
    };

protected:
    /// State {h (B, E)}, or {h (2B, E)} when bidirectional: the forward direction's B rows,
    /// then the reverse direction's (PyTorch's (num_directions, B, E) layout). Workspace:
    /// pre (B, G*E), where step computes its gates in place. With a learned initial state,
    /// h is g(init_hidden_state) in every row and a second, empty workspace matrix marks
    /// the state as the learned start (see the top of this file).
    State<Scalar> make_state(Index batch) const override {
        State<Scalar> s;
        s.tensors.push_back(Matrix<Scalar>::Zero(directions() * batch, hidden_size_));
        s.workspace = {Matrix<Scalar>(batch, gate_count_ * hidden_size_)};
        if (learns_initial_state()) {
            s.tensors[0].rowwise() = learned_h0().row(0);
            s.workspace.emplace_back();  // the mark
        }
        return s;
    }

    /// Also refuses any step of a bidirectional layer, so that a composite refuses its step
    /// before any of its children has stepped.
    void validate_state(const State<Scalar>& state, Index batch, Call call) const override {
        if (call == Call::Step && bidirectional()) refuse_step();
        this->check_state_tensors(state, call, 1, directions() * batch, hidden_size_);
    }

    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>* state, Context<Scalar>* ctx) const override {
        const Index B = x.batch, T = x.steps, E = hidden_size_, N = B * T, H = directions() * E;
        State<Scalar> zeros;
        State<Scalar>& s = state ? *state : zeros;
        if (!state) s = this->initial_state(B);
        const Matrix<Scalar>& h0 = s.tensors[0];  // (B, E), or (2B, E): forward rows, then reverse rows
        const bool learned_start = is_learned_start(s);
        if (s.workspace.size() > 1) s.workspace.resize(1);  // the state moves on: no longer the learned start

        Saved* saved = ctx ? &keep_for_backward<Saved>(*ctx) : nullptr;
        if (saved) {
            parallel_copy<Scalar>(saved->input, x.data);
            // Whatever a padded batch holds past its ends never reaches a weight gradient.
            if (x.padded()) zero_padding<Scalar>(saved->input, T, x.lengths);
            saved->h0 = h0;
            saved->learned_start = learned_start;
        }

        // h goes straight where it is needed: the output, or (projecting) the context or
        // scratch. Bidirectional, it is [h | h^r] (B*T, 2E), both in time order.
        Sequence<Scalar> y(B, T, output_size());
        Matrix<Scalar> h_final(directions() * B, E);
        MatrixRef<Scalar> h = !projects() ? MatrixRef<Scalar>(y.data)
                              : saved     ? MatrixRef<Scalar>(resized(saved->h, N, H))
                                          : MatrixRef<Scalar>(scratch_matrix<Scalar>(ScratchSlot::B, N, H));
        for (Index d = 0; d < directions(); ++d)
            forward_direction(d, x, h0.middleRows(d * B, B), h.middleCols(d * E, E), h_final.middleRows(d * B, B),
                              saved ? (d == 0 ? &saved->pre : &saved->reverse_pre) : nullptr);

        if (projects())
            to_out_.forward(h, y.data);  // (B*T, H) x (H, D)
        else if (saved)
            parallel_copy<Scalar>(resized(saved->h, N, H), y.data);
        s.tensors[0] = h_final;
        return y;
    }

    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                                   const State<Scalar>* d_final, State<Scalar>* d_initial) override {
        const Index B = ctx.batch, T = ctx.steps, E = hidden_size_, N = B * T, H = directions() * E;
        const Saved& saved = saved_for_backward<Saved>(ctx);

        // dL/dh (B*T, H), through to_out when projecting; each direction's reverse scan then
        // writes dL/db over its E columns of it.
        Eigen::Map<Matrix<Scalar>> d_coeffs = scratch_matrix<Scalar>(ScratchSlot::B, N, H + E);  // [db (H) | da (E)]
        auto db = d_coeffs.leftCols(H), da = d_coeffs.rightCols(E);
        if (projects()) to_out_.backward(saved.h, dy.data, db);  // (B*T, D) x (D, H)
        const ConstMatrixRef<Scalar> dh = projects() ? ConstMatrixRef<Scalar>(db) : ConstMatrixRef<Scalar>(dy.data);

        const Matrix<Scalar> none;
        Matrix<Scalar> dh0(directions() * B, E);
        Sequence<Scalar> dx(B, T, input_size());
        for (Index d = 0; d < directions(); ++d) {
            const ConstMatrixRef<Scalar> dh_final =
                d_final ? ConstMatrixRef<Scalar>(d_final->tensors[0].middleRows(d * B, B)) : ConstMatrixRef<Scalar>(none);
            backward_direction(d, saved, ctx.lengths, B, T, dh.middleCols(d * E, E), db.middleCols(d * E, E), da,
                               dh_final, dh0.middleRows(d * B, B), dx.data);
        }
        if (saved.learned_start) {
            // h0 = g(init) in every row: dL/dinit = sum over the streams of dL/dh0, times g'(init).
            Eigen::Array<Scalar, 1, Eigen::Dynamic> d_init = dh0.colwise().sum().array();
            min_rnn_math::multiply_by_candidate_derivative<Scalar>(HiddenActivation::PositiveG,
                                                                   init_hidden_state_.value.row(0).array(), d_init);
            init_hidden_state_.grad.row(0).array() += d_init;
        }
        if (d_initial) {
            *d_initial = this->initial_state(B);
            d_initial->tensors[0] = dh0;
            d_initial->workspace.resize(1);  // a gradient, not a learned start
        }
        return dx;
    }

    /// One step; the same recurrence, h = a h + b, whatever the mode. A bidirectional
    /// layer refuses (validate_state refuses first when the state is not fresh).
    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        if (bidirectional()) refuse_step();
        const Index B = x.rows();
        if (state.workspace.empty() || state.workspace[0].rows() != B) state.workspace = make_state(B).workspace;
        if (state.workspace.size() > 1) state.workspace.resize(1);  // h holds g(init) already: a step just moves on
        Matrix<Scalar>& pre = state.workspace[0];  // (B, G*E)
        in_proj_.forward(x, pre);                  // (B, D) x (D, G*E)
        const Index E = hidden_size_;
        coefficients(pre, pre.middleCols(E, E), pre.leftCols(E));  // a, b in place
        Matrix<Scalar>& h = state.tensors[0];
        h.array() = pre.middleCols(E, E).array() * h.array() + pre.leftCols(E).array();
        if (projects())
            to_out_.forward(h, y);  // (B, E) x (E, D)
        else
            y = h;
    }

    /// gate_count: 2 for minGRU (hidden, gate), 3 for minLSTM (hidden, f, i).
    MinRNN(const std::string& kind, MinRNNOptions options, int gate_count, const std::string& in_proj_name, Rng& rng)
        : kind_(kind), options_(options), gate_count_(gate_count), in_proj_name_(in_proj_name) {
        if (options.input_size <= 0)
            fail(kind, "input_size must be positive, got " + std::to_string(options.input_size));
        if (options.hidden_size < 0)
            fail(kind, "hidden_size must be positive, or 0 for input_size * expansion; got " +
                           std::to_string(options.hidden_size));
        hidden_size_ = options.hidden_size > 0 ? options.hidden_size
                                               : checked_scaled_size(kind, "expansion", options.input_size, options.expansion);
        check_options(kind, options.activation, options.mode, options.split);
        // The projections' sizes, checked before anything is allocated: (G*E, D) per
        // direction and (D, E), or (D, 2E) when bidirectional.
        const Index gates_width = checked_mul(kind, gate_count, hidden_size_);
        checked_elements(kind, gates_width, options.input_size);
        const Index hidden_width = checked_mul(kind, directions(), hidden_size_);
        in_proj_ = Linear<Scalar>(options.input_size, gates_width, options.bias, rng);
        if (options.bidirectional) reverse_in_proj_ = Linear<Scalar>(options.input_size, gates_width, options.bias, rng);
        if (options.project_out || hidden_size_ != options.input_size)
            to_out_ = Linear<Scalar>(hidden_width, options.input_size, options.bias, rng);
        if (options.learned_initial_state) {
            if (options.bidirectional)
                fail(kind, "learned_initial_state is for a unidirectional layer: the reverse direction's state "
                           "enters at each sequence's last step, and BorealisAI/minRNNs defines no such direction");
            if (options.activation != HiddenActivation::PositiveG)
                fail(kind, "learned_initial_state starts at h0 = g(init_hidden_state): use HiddenActivation::PositiveG");
            init_hidden_state_ = Parameter<Scalar>(hidden_size_);  // torch.randn(E), as the paper's code draws it
            std::normal_distribution<double> normal(0.0, 1.0);
            for (Index j = 0; j < hidden_size_; ++j) init_hidden_state_.value(0, j) = static_cast<Scalar>(normal(rng));
        }
    }

    /// pre (N, G*E) -> the recurrence's coefficients a, b (N, E). In place is
    /// allowed and is how forward and step call it: b may be pre's hidden block
    /// and a its first gate block.
    virtual void coefficients(ConstMatrixRef<Scalar> pre, MatrixRef<Scalar> a, MatrixRef<Scalar> b) const = 0;
    /// pre (N, G*E) -> log a, log b (N, E), computed stably in log space; in place as above.
    virtual void log_coefficients(ConstMatrixRef<Scalar> pre, MatrixRef<Scalar> log_a, MatrixRef<Scalar> log_b) const = 0;
    /// dL/da, dL/db (N, E) -> dL/dpre (N, G*E).
    virtual void coefficients_backward(ConstMatrixRef<Scalar> pre, ConstMatrixRef<Scalar> da,
                                       ConstMatrixRef<Scalar> db, MatrixRef<Scalar> d_pre) const = 0;

    /// The candidate state's activation.
    HiddenActivation activation() const { return options_.activation; }

private:
    // Rows [first, first + count) of a (B*T, ...) matrix: part of one sequence's real steps.
    struct RowBlock {
        Index first = 0, count = 0;
    };

    // The rows of each sequence's real steps, [s*T, s*T + length_s), `real` rows in all, cut
    // into blocks of whole 16-row panels (kMatmulRowAlign), at least kMinRowsPerThread rows
    // long and about a quarter of a thread's share, so that threads taking blocks in turn
    // end together.
    static std::vector<RowBlock> real_row_blocks(const std::vector<Index>& lengths, Index T, Index real) {
        const Index share = (real + 4 * num_threads() - 1) / (4 * num_threads());
        const Index size = std::max(kMinRowsPerThread, (share + kMatmulRowAlign - 1) / kMatmulRowAlign * kMatmulRowAlign);
        std::vector<RowBlock> blocks;
        for (std::size_t s = 0; s < lengths.size(); ++s)
            for (Index t = 0; t < lengths[s]; t += size)
                blocks.push_back({static_cast<Index>(s) * T + t, std::min(size, lengths[s] - t)});
        return blocks;
    }

    // One direction of the forward (d = 0 forward, 1 reverse): pre = x W_d^T, the
    // coefficients a, b, and the scan from h0 (B, E) into h (B*T, E), each sequence's last
    // state into h_final (B, E). The reverse direction scans each sequence from its own last
    // step down to step 0; both stop at a padded sequence's end. A training forward keeps
    // pre in `saved_pre`.
    void forward_direction(Index d, const Sequence<Scalar>& x, ConstMatrixRef<Scalar> h0, MatrixRef<Scalar> h,
                           MatrixRef<Scalar> h_final, Matrix<Scalar>* saved_pre) const {
        const Index B = x.batch, T = x.steps, E = hidden_size_, N = B * T, GE = gate_count_ * E;
        const Linear<Scalar>& in_proj = d == 0 ? in_proj_ : reverse_in_proj_;

        // Training mode keeps the pre-activations for backward in the context's own buffer
        // and writes the gates to scratch; otherwise the gates overwrite them in scratch.
        Eigen::Map<Matrix<Scalar>> coeffs = scratch_matrix<Scalar>(ScratchSlot::A, N, GE);  // [b | a | ...]
        MatrixRef<Scalar> pre = saved_pre ? MatrixRef<Scalar>(resized(*saved_pre, N, GE)) : MatrixRef<Scalar>(coeffs);
        if (!x.padded()) {
            in_proj.forward(x.data, pre);  // (B*T, D) x (D, G*E): every gate of every step, one GEMM
            compute_coefficients(pre, coeffs);
        } else {
            // A padded batch: only the rows of real steps, which are all the scan reads, in
            // blocks of one sequence's rows, a thread taking the next block as it finishes one.
            const Index real = std::accumulate(x.lengths.begin(), x.lengths.end(), Index(0));
            const std::vector<RowBlock> blocks = real_row_blocks(x.lengths, T, real);
            const double flops = 2.0 * double(real) * double(input_size()) * double(GE);
            parallel_items(threads_for(flops, static_cast<Index>(blocks.size())), static_cast<Index>(blocks.size()),
                           [&](Index i, int) {
                               const RowBlock& r = blocks[static_cast<std::size_t>(i)];
                               auto block_pre = pre.middleRows(r.first, r.count);
                               in_proj.forward(x.data.middleRows(r.first, r.count), block_pre);  // (n, D) x (D, G*E)
                               compute_coefficients(block_pre, coeffs.middleRows(r.first, r.count));
                           });
            if (saved_pre) zero_padding<Scalar>(pre, T, x.lengths);  // backward reads every row of it
        }
        const auto b = coeffs.leftCols(E);       // (B*T, E), row stride G*E
        const auto a = coeffs.middleCols(E, E);  // (B*T, E)

        const ScanOptions options = scan_options(d);
        if (options_.mode == MinRNNMode::LogSpace) {
            // a, b hold log a, log b. A zero state contributes nothing and has no logarithm: scan without it.
            const bool zero_start = h0.isZero(0);
            if (!zero_start) check_positive(this->where(Call::Forward), h0);
            const Matrix<Scalar> log_h0 = zero_start ? Matrix<Scalar>() : Matrix<Scalar>(h0.array().log().matrix());
            log_scan_forward<Scalar>(h, h_final, a, b, log_h0, B, T, options, x.lengths);  // log h, log h_T
            parallel_for(N, streamed_work(E), [&](Index r0, Index r1) {  // log h = -inf past each end: h = 0
                h.middleRows(r0, r1 - r0).array() = h.middleRows(r0, r1 - r0).array().exp();
            });
            h_final = h_final.array().exp().matrix();
        } else {
            scan_forward<Scalar>(h, h_final, a, b, h0, B, T, options, x.lengths);
        }
    }

    // One direction of the backward, as forward_direction ran it: from dL/dh (B*T, E) and
    // dL/dh_final (B, E, or empty) of direction d, the reverse scan's dL/db (into db, which
    // may be dh) and dL/da (into da), dL/dh0 (into dh0), then dL/dpre, the input
    // projection's gradients and dL/dx, written into dx (d = 0) or added to it (d = 1).
    void backward_direction(Index d, const Saved& saved, const std::vector<Index>& lengths, Index B, Index T,
                            ConstMatrixRef<Scalar> dh, MatrixRef<Scalar> db, MatrixRef<Scalar> da,
                            ConstMatrixRef<Scalar> dh_final, MatrixRef<Scalar> dh0, Matrix<Scalar>& dx) {
        const Index E = hidden_size_, N = B * T, GE = gate_count_ * E;
        Linear<Scalar>& in_proj = d == 0 ? in_proj_ : reverse_in_proj_;
        const Matrix<Scalar>& pre = d == 0 ? saved.pre : saved.reverse_pre;

        // The forward's coefficients a, b again, from the saved pre-activations.
        Eigen::Map<Matrix<Scalar>> coeffs = scratch_matrix<Scalar>(ScratchSlot::A, N, GE);  // [b | a | ...]
        compute_coefficients(pre, coeffs, /*log_space=*/false);
        const auto a = coeffs.middleCols(E, E);  // (B*T, E)

        // The reverse scan: dL/da and dL/db of h_t = a_t h_{t-1} + b_t (h_{t+1} for the
        // reverse direction), and dL/dh0; zero past each end. The log-space mode computes
        // the same function, so it shares this gradient.
        scan_backward<Scalar>(da, db, dh0, dh, dh_final, a, saved.h.middleCols(d * E, E), saved.h0.middleRows(d * B, B),
                              B, T, scan_options(d), lengths);

        Eigen::Map<Matrix<Scalar>> d_pre = scratch_matrix<Scalar>(ScratchSlot::C, N, GE);
        parallel_for(N, streamed_work(E), [&](Index r0, Index r1) {
            const Index n = r1 - r0;
            coefficients_backward(pre.middleRows(r0, n), da.middleRows(r0, n), db.middleRows(r0, n),
                                  d_pre.middleRows(r0, n));
        });
        // Past an end a = 1 and b = 0 are constants: dL/dpre is zero there, even where the
        // padding's pre-activations are not finite (0 * inf).
        if (!lengths.empty()) zero_padding<Scalar>(d_pre, T, lengths);
        if (d == 0) {
            in_proj.backward(saved.input, d_pre, dx);  // (B*T, G*E) x (G*E, D)
        } else {
            // The coefficients are spent: slot A takes this direction's share of dL/dx.
            Eigen::Map<Matrix<Scalar>> dx_reverse = scratch_matrix<Scalar>(ScratchSlot::A, N, input_size());
            in_proj.backward(saved.input, d_pre, dx_reverse);  // (B*T, G*E) x (G*E, D)
            parallel_add<Scalar>(dx, dx_reverse);
        }
    }

    // Whether a forward from state `s` starts at the learned initial state: s was made by
    // initial_state (marked) and still holds g(init_hidden_state) in every row.
    bool is_learned_start(const State<Scalar>& s) const {
        if (!learns_initial_state() || s.workspace.size() < 2) return false;
        const Matrix<Scalar> h0 = learned_h0();
        const Matrix<Scalar>& h = s.tensors[0];
        for (Index r = 0; r < h.rows(); ++r)
            if (h.row(r) != h0.row(0)) return false;
        return true;
    }

    // The refusal of step() by a bidirectional layer.
    void refuse_step() const {
        fail(this->where(Call::Step), "cannot stream: its reverse direction needs the whole sequence (run forward "
                                      "on whole sequences, or use a unidirectional layer)");
    }

    // pre (N, G*E) -> coeffs (N, G*E) with b in the first E columns and a in the next E
    // (log a, log b in the log-space mode), split across threads; coeffs may be pre.
    void compute_coefficients(ConstMatrixRef<Scalar> pre, MatrixRef<Scalar> coeffs) const {
        compute_coefficients(pre, coeffs, options_.mode == MinRNNMode::LogSpace);
    }
    void compute_coefficients(ConstMatrixRef<Scalar> pre, MatrixRef<Scalar> coeffs, bool log_space) const {
        const Index E = hidden_size_;
        parallel_for(pre.rows(), streamed_work(E), [&](Index r0, Index r1) {
            const Index n = r1 - r0;
            auto a = coeffs.middleCols(E, E).middleRows(r0, n), b = coeffs.leftCols(E).middleRows(r0, n);
            if (log_space)
                log_coefficients(pre.middleRows(r0, n), a, b);
            else
                coefficients(pre.middleRows(r0, n), a, b);
        });
    }

    // How direction d (0 forward, 1 reverse) scans.
    ScanOptions scan_options(Index d = 0) const {
        return {.mode = options_.mode == MinRNNMode::Sequential ? ScanMode::Sequential : ScanMode::Parallel,
                .split = options_.split,
                .reverse = d == 1};
    }

    // Refuses a combination of options that cannot run as asked.
    static void check_options(const std::string& kind, HiddenActivation activation, MinRNNMode mode, ScanSplit split) {
        if (mode == MinRNNMode::LogSpace && activation != HiddenActivation::PositiveG)
            fail(kind, "the log-space scan needs h > 0: use HiddenActivation::PositiveG, not Identity");
        if (split != ScanSplit::Auto && split != ScanSplit::Channels && split != ScanSplit::Time)
            fail(kind, "split must be ScanSplit::Auto, Channels or Time, got " +
                           std::to_string(static_cast<int>(split)));
        if (split != ScanSplit::Auto && mode == MinRNNMode::Sequential)
            fail(kind, std::string("split ScanSplit::") + (split == ScanSplit::Time ? "Time" : "Channels") +
                           " forces a parallel split, but the mode is MinRNNMode::Sequential (time in order on one "
                           "thread); use MinRNNMode::Parallel or ScanSplit::Auto");
        if (split == ScanSplit::Time && mode == MinRNNMode::LogSpace)
            fail(kind, "the log-space scan splits over channels only: ScanSplit::Time needs MinRNNMode::Parallel "
                       "(use ScanSplit::Channels or Auto with MinRNNMode::LogSpace)");
    }

    static void check_positive(const std::string& where, ConstMatrixRef<Scalar> h0) {
        if ((h0.array() <= Scalar(0)).any())
            fail(where, "the log-space scan needs an initial state that is all positive or all zero; h0 " +
                            shape_string(h0) + " has entries <= 0 (use a linear-space mode for such states)");
    }

    std::string kind_;
    MinRNNOptions options_;
    int gate_count_;
    std::string in_proj_name_;
    Index hidden_size_ = 0;
    Linear<Scalar> in_proj_;          // (G*E, D): rows [hidden; gates]
    Linear<Scalar> reverse_in_proj_;  // (G*E, D), the reverse direction's; empty unless bidirectional
    Linear<Scalar> to_out_;           // (D, E) or (D, 2E), empty when not projecting
    Parameter<Scalar> init_hidden_state_;  // (E) as (1, E), empty unless learned_initial_state
};

}  // namespace seqnn
