// The one interface every sequence layer implements: RNN, LSTM, GRU, minGRU,
// minLSTM, attention, Transformer blocks and stacks of them.
//
// The public calls (forward, step, backward, initial_state) are written once, here: they
// check the caller's shapes, the state and the context, record B and T, make a fresh
// state, advance State::position and mark the context with the layer's signature. A
// layer implements only its math, in the protected *_impl functions, which may assume
// that everything the contract checks holds. Calls are coarse (whole sequences, or one
// step of B streams), so a virtual interface costs nothing measurable.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/parameter.hpp"
#include "seqnn/core/types.hpp"

#include <string>
#include <vector>

namespace seqnn {

/// Which public call checks a state: its name is in the messages, and some checks apply to
/// one call only (a full KV cache refuses a step; forward grows it).
enum class Call { Forward, Step, Backward };

/// "forward", "step" or "backward".
inline const char* call_name(Call call) {
    switch (call) {
        case Call::Forward: return "forward";
        case Call::Step: return "step";
        case Call::Backward: return "backward";
    }
    return "?";
}

/// The interface every sequence layer implements (forward, step, backward, parameters).
template <typename Scalar>
class Layer {
public:
    virtual ~Layer() = default;

    /// The layer's name in error messages, e.g. "GRU".
    virtual std::string kind() const = 0;
    /// Features per input row, D.
    virtual Index input_size() const = 0;
    /// Features per output row.
    virtual Index output_size() const = 0;
    /// The layer's kind and sizes, e.g. "GRU(5 -> 9, L=2, bias=true)": what a training
    /// forward writes into Context::owner and backward expects there.
    virtual std::string signature() const {
        return kind() + "(" + std::to_string(input_size()) + " -> " + std::to_string(output_size()) + ")";
    }

    /// A zero state for `batch` streams, with the workspace step() needs: after this, step()
    /// does not allocate. A stateless layer's state holds nothing but B.
    State<Scalar> initial_state(Index batch) const {
        if (batch <= 0) fail(kind() + ".initial_state", "batch must be positive, got " + std::to_string(batch));
        State<Scalar> s = make_state(batch);
        s.batch = batch;
        return s;
    }

    /// Runs whole sequences x (B*T, input_size) -> y (B*T, output_size).
    /// state: nullptr starts from zeros and keeps nothing (a Transformer then keeps no KV
    ///        cache); otherwise an empty state starts from zeros and a non-empty one is the
    ///        initial state. Either way it holds the final state on return, so a long
    ///        stream can be fed in chunks.
    /// ctx:   non-null puts the layer in training mode: it keeps there what backward needs.
    ///        The caller owns it; reusing one Context from step to step lets a layer reuse
    ///        its buffers.
    /// lengths: x.lengths, when given, marks each sequence's padding (see Sequence): y is
    ///        zero there and carries the same lengths, the state ends at each sequence's
    ///        own last step, and backward passes no gradient through padding.
    /// forward is const: one layer object may serve several threads at once.
    Sequence<Scalar> forward(const Sequence<Scalar>& x, State<Scalar>* state = nullptr,
                             Context<Scalar>* ctx = nullptr) const {
        check_sequence(where(Call::Forward), "input", x, input_size());
        check_lengths(where(Call::Forward), x.lengths, x.batch, x.steps);
        if (state) {
            if (state->empty())
                *state = initial_state(x.batch);
            else
                check_state(*state, x.batch, Call::Forward);
        }
        if (ctx) {
            ctx->owner.clear();  // set once the forward has succeeded: a failed one leaves no usable context
            ctx->batch = x.batch;
            ctx->steps = x.steps;
            ctx->lengths = x.lengths;
        }
        Sequence<Scalar> y = forward_impl(x, state, ctx);
        if (x.padded()) {
            y.lengths = x.lengths;
            zero_padding<Scalar>(y.data, y.steps, y.lengths);
        }
        if (state) state->position += x.steps;
        if (ctx) ctx->owner = signature();
        return y;
    }

    /// One step for B streams: x (B, input_size) -> y (B, output_size), advancing `state`
    /// (made by initial_state or returned by forward; an empty one starts from zeros).
    /// x may be a block or a strided view, e.g. Sequence::at_step(t): it is not copied.
    /// y is resized only if its shape is wrong. With a state from initial_state, a step
    /// allocates nothing.
    void step(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const {
        if (x.cols() != input_size() || x.rows() <= 0)
            fail(where(Call::Step), "input has shape " + shape_string(x) + ", expected (B, " +
                                        std::to_string(input_size()) + ") with B > 0");
        const Index B = x.rows();
        if (state.empty())
            state = initial_state(B);
        else
            check_state(state, B, Call::Step);
        if (y.rows() != B || y.cols() != output_size()) y.resize(B, output_size());
        step_impl(x, state, y);
        state.position += 1;
    }

    /// Throws what `call` would throw because of `state` alone, for B = `batch` streams: a
    /// state made for another B, tensors of the wrong number or shape, and for a step a
    /// full KV cache or a position past a learned table. Changes nothing and, when the
    /// state passes, allocates nothing. A composite checks all its children this way, so a
    /// step that a later child refuses has not advanced the earlier ones.
    void check_state(const State<Scalar>& state, Index batch, Call call) const {
        if (state.batch != 0 && state.batch != batch)
            fail(where(call), "the state" + tensor_shapes(state) + " was made for " + std::to_string(state.batch) +
                                  " streams, not B=" + std::to_string(batch));
        validate_state(state, batch, call);
    }

    /// Makes room in `state` (from initial_state, for state.batch streams) for `length`
    /// positions per stream, so that forward and step run that far without growing
    /// anything: a KV cache grows, keeping what it holds; other states have nothing to grow.
    /// A composite reserves for every child.
    void reserve(State<Scalar>& state, Index length) const {
        if (state.batch <= 0) fail(where("reserve"), "the state records no stream count: make it with initial_state");
        if (length < 0) fail(where("reserve"), "length must be >= 0, got " + std::to_string(length));
        check_state(state, state.batch, Call::Forward);
        reserve_impl(state, length);
    }

    /// Given dL/dy (B*T, output_size) for the forward that filled `ctx`, and optionally
    /// dL/d(final state), adds the parameters' gradients into their .grad, returns dL/dx
    /// and, if d_initial is non-null, fills it with dL/d(initial state).
    Sequence<Scalar> backward(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                              const State<Scalar>* d_final = nullptr, State<Scalar>* d_initial = nullptr) {
        check_context_owner(where(Call::Backward), ctx, signature());
        check_sequence(where(Call::Backward), "dy", dy, output_size());
        if (dy.batch != ctx.batch || dy.steps != ctx.steps)
            fail(where(Call::Backward), "dy " + shape_string(dy) + " does not match the forward's (B=" +
                                            std::to_string(ctx.batch) + ", T=" + std::to_string(ctx.steps) + ")");
        const State<Scalar>* d_last = d_final && !d_final->empty() ? d_final : nullptr;
        if (d_last) check_state(*d_last, ctx.batch, Call::Backward);
        if (d_initial) *d_initial = State<Scalar>{};
        if (ctx.lengths.empty()) {
            if (dy.padded())
                fail(where(Call::Backward), "dy carries lengths, but the forward had none");
            return backward_impl(dy, ctx, d_last, d_initial);
        }
        // A padded batch: y was zero past each end whatever the input, so dL/dy there reaches
        // nothing. Layers read dy's padding as zero; a dy that is not gets a zeroed copy.
        if (dy.padded() && dy.lengths != ctx.lengths)
            fail(where(Call::Backward), "dy's lengths differ from the forward's");
        Sequence<Scalar> dx;
        if (padding_is_zero(dy.data, dy.steps, ctx.lengths)) {
            dx = backward_impl(dy, ctx, d_last, d_initial);
        } else {
            Sequence<Scalar> zeroed = dy;
            zero_padding<Scalar>(zeroed.data, zeroed.steps, ctx.lengths);
            dx = backward_impl(zeroed, ctx, d_last, d_initial);
        }
        dx.lengths = ctx.lengths;
        zero_padding<Scalar>(dx.data, dx.steps, dx.lengths);
        return dx;
    }

    /// Appends the parameters, named as in PyTorch's state_dict, after `prefix`.
    virtual void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) = 0;

    /// Every parameter, named as in PyTorch's state_dict, with its gradient.
    ParameterList<Scalar> parameters() {
        ParameterList<Scalar> out;
        collect_parameters("", out);
        return out;
    }
    /// Sets every parameter's gradient to zero.
    void zero_grad() { seqnn::zero_grad(parameters()); }

protected:
    /// The zero state and step workspace for `batch` > 0 streams (initial_state records B).
    /// The default is a stateless layer's: nothing.
    virtual State<Scalar> make_state(Index batch) const {
        (void)batch;
        return {};
    }
    /// The layer's own checks of a state for `batch` streams (check_state has checked B).
    /// Must not allocate when the state passes: build messages only on failure. The
    /// default accepts a stateless layer's state: no tensors.
    virtual void validate_state(const State<Scalar>& state, Index batch, Call call) const {
        (void)batch;
        check_state_tensors(state, call, 0, 0, 0);
    }
    /// What reserve() grows (the state is valid for state.batch streams). The default, for a
    /// state with nothing to grow, does nothing.
    virtual void reserve_impl(State<Scalar>& state, Index length) const {
        (void)state;
        (void)length;
    }
    /// The forward's math. x matches input_size; `state`, when given, is a valid state for
    /// x.batch streams; ctx, when given, has B and T recorded. The contract advances the
    /// state's position and marks the context afterwards.
    virtual Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>* state,
                                          Context<Scalar>* ctx) const = 0;
    /// The step's math: x (B, input_size), a valid state for B streams, y already (B, output_size).
    virtual void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const = 0;
    /// The backward's math: ctx is this layer's, dy matches it, d_final is null or a valid
    /// state, d_initial (when given) is empty.
    virtual Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                                           const State<Scalar>* d_final, State<Scalar>* d_initial) = 0;

    /// " (tensors (2, 7), (2, 7))": the shapes of every tensor of a state tree, for messages;
    /// "" when it has none.
    static std::string tensor_shapes(const State<Scalar>& state) {
        const std::vector<const Matrix<Scalar>*> tensors = state_tensors(state);
        if (tensors.empty()) return "";
        std::string out = " (tensors ";
        for (std::size_t i = 0; i < tensors.size(); ++i) out += (i ? ", " : "") + shape_string(*tensors[i]);
        return out + ")";
    }

    /// For a layer whose state is one position shared by all B streams (a KV cache, a
    /// position table's offset): a padded batch would leave its streams at different
    /// positions, so it runs without a state only.
    void refuse_padded_state(const Sequence<Scalar>& x, const State<Scalar>* state) const {
        if (x.padded() && state)
            fail(where(Call::Forward), "a padded batch (with lengths) cannot run with a state: the state holds one "
                                       "position for all " + std::to_string(x.batch) +
                                       " streams, and the sequences end at different steps; run it without a state");
    }

    /// "<kind>.<call>", for messages.
    std::string where(Call call) const { return kind() + "." + call_name(call); }
    /// "<kind>.<what>", for messages of other functions.
    std::string where(const char* what) const { return kind() + "." + what; }

    /// The common state check: exactly `count` tensors of (rows, cols) each. Allocates only to fail.
    void check_state_tensors(const State<Scalar>& state, Call call, std::size_t count, Index rows, Index cols) const {
        if (state.tensors.size() != count)
            fail(where(call), "the state has " + std::to_string(state.tensors.size()) + " tensors, expected " +
                                  std::to_string(count));
        for (const auto& t : state.tensors)
            if (t.rows() != rows || t.cols() != cols)
                fail(where(call), "state tensor has shape " + shape_string(t) + ", expected " + shape_string(rows, cols));
        if (!state.children.empty())
            fail(where(call), "the state has " + std::to_string(state.children.size()) +
                                  " child states; this layer has no children");
    }
};

}  // namespace seqnn
