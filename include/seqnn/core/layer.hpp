// The one interface every sequence layer implements: RNN, LSTM, GRU, minGRU,
// minLSTM, Transformer blocks and stacks of them. Calls are coarse (whole
// sequences), so a virtual interface costs nothing measurable.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/parameter.hpp"
#include "seqnn/core/types.hpp"

#include <string>

namespace seqnn {

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

    /// A zero state for `batch` streams, with the workspace step() needs: after
    /// this, step() does not allocate.
    virtual State<Scalar> initial_state(Index batch) const = 0;

    /// Runs whole sequences x (B*T, input_size) -> y (B*T, output_size).
    /// state: nullptr starts from zeros; otherwise an empty state starts from
    ///        zeros and a non-empty one is the initial state. Either way it holds
    ///        the final state on return, so a long stream can be fed in chunks.
    /// ctx:   non-null puts the layer in training mode: it keeps there what
    ///        backward needs. The caller owns it; reusing one Context from step to
    ///        step lets a layer reuse its buffers (see Context::buffer).
    /// forward is const: one layer object may serve several threads at once.
    virtual Sequence<Scalar> forward(const Sequence<Scalar>& x, State<Scalar>* state = nullptr,
                                     Context<Scalar>* ctx = nullptr) const = 0;

    /// One step for B streams: x (B, input_size) -> y (B, output_size), advancing
    /// `state` (made by initial_state or returned by forward). y is resized only
    /// if its shape is wrong.
    virtual void step(const Matrix<Scalar>& x, State<Scalar>& state, Matrix<Scalar>& y) const = 0;

    /// Throws what step() would throw, for B = `batch` streams, because of `state` alone (its
    /// shapes, its stream count, a full KV cache), and changes nothing: a composite checks
    /// every child this way before any child steps, so that a step that fails in a later
    /// child has not advanced the earlier ones. An empty state passes (step makes one). A
    /// composite swaps its children's tensors in and back, hence the non-const state. The
    /// default checks nothing (step still checks everything).
    virtual void check_step_state(State<Scalar>& state, Index batch) const {
        (void)state;
        (void)batch;
    }

    /// Given dL/dy (B*T, output_size) for the forward that filled `ctx`, and
    /// optionally dL/d(final state), adds the parameters' gradients into their
    /// .grad, returns dL/dx and, if d_initial is non-null, fills it with
    /// dL/d(initial state).
    virtual Sequence<Scalar> backward(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                                      const State<Scalar>* d_final = nullptr,
                                      State<Scalar>* d_initial = nullptr) = 0;

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
};

}  // namespace seqnn
