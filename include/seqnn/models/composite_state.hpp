// The state of a composite layer (a stack, a language-model block): its children's
// state tensors concatenated in child order. A child with k tensors owns k
// consecutive entries of State::tensors, so a stack of [GRU(L=1), Linear-like, LSTM]
// has the state {h_gru, h_lstm, c_lstm}. All children share the composite's
// `position` (they have all seen the same steps).
//
// For step(), initial_state also keeps one State per child in State::children (its
// workspace; its tensor slots are empty). A step swaps the child's tensors in,
// steps the child, and swaps them back: Eigen swaps pointers, so nothing allocates.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"

#include <concepts>
#include <string>
#include <vector>

namespace seqnn {

/// Where each child's tensors sit in a composite layer's State.
template <typename Scalar>
class CompositeState {
public:
    CompositeState() = default;
    /// Records how many state tensors each child has.
    explicit CompositeState(const std::vector<const Layer<Scalar>*>& children) {
        for (const Layer<Scalar>* c : children) add(*c);
    }

    /// Appends a child and the number of its state tensors.
    void add(const Layer<Scalar>& child) {
        offsets_.push_back(total_);
        counts_.push_back(static_cast<Index>(child.initial_state(1).tensors.size()));
        total_ += counts_.back();
    }

    /// The number of state tensors of all the children.
    Index total() const { return total_; }
    /// The number of state tensors of child i.
    Index count(std::size_t i) const { return counts_[i]; }

    /// The children's zero states, concatenated, with the step shells.
    State<Scalar> initial(const std::vector<const Layer<Scalar>*>& children, Index batch) const {
        State<Scalar> s;
        for (const Layer<Scalar>* c : children) {
            State<Scalar> cs = c->initial_state(batch);
            for (auto& t : cs.tensors) {
                s.tensors.push_back(std::move(t));
                t = Matrix<Scalar>();
            }
            s.children.push_back(std::move(cs));
        }
        s.batch = batch;
        return s;
    }

    /// A state made for another number of streams than `batch` (State::batch; 0 is not
    /// recorded and passes) is refused before any child runs, so a mismatch changes nothing.
    template <typename Where>
    void check_batch(const Where& where, const State<Scalar>& s, Index batch) const {
        if (s.batch != 0 && s.batch != batch)
            fail(name_of(where), "the state was made for " + std::to_string(s.batch) + " streams, not B=" +
                                     std::to_string(batch));
    }

    /// The composite's state holds as many tensors as its children together. `where` is
    /// the layer's name for the message, or a callable that makes it (so that step()
    /// builds no string unless it fails).
    template <typename Where>
    void check(const Where& where, const State<Scalar>& s) const {
        if (static_cast<Index>(s.tensors.size()) != total_)
            fail(name_of(where), "state has " + std::to_string(s.tensors.size()) + " tensors, expected " +
                            std::to_string(total_) + " (its children's state tensors, concatenated)");
    }

    /// A copy of child i's state (for forward and backward, which may allocate).
    State<Scalar> child(const State<Scalar>& s, std::size_t i) const {
        State<Scalar> cs;
        for (Index j = 0; j < counts_[i]; ++j) cs.tensors.push_back(s.tensors[static_cast<std::size_t>(offsets_[i] + j)]);
        cs.position = s.position;
        cs.batch = s.batch;
        return cs;
    }

    /// Writes child i's state back into the composite's (its tensors are moved).
    /// A child that returned no tensors (e.g. an empty dL/d(initial state)) leaves its
    /// slots as `fallback` (a zero state of the right shape).
    void set_child(State<Scalar>& s, std::size_t i, State<Scalar>&& cs, const Layer<Scalar>& child, Index batch) const {
        if (counts_[i] == 0) return;
        if (static_cast<Index>(cs.tensors.size()) != counts_[i]) cs = child.initial_state(batch);
        for (Index j = 0; j < counts_[i]; ++j)
            s.tensors[static_cast<std::size_t>(offsets_[i] + j)] = std::move(cs.tensors[static_cast<std::size_t>(j)]);
    }

    /// Whether the state has its step shells (a state from forward, or from a file, has not).
    bool has_shells(const State<Scalar>& s) const { return s.children.size() == counts_.size(); }
    /// Makes them.
    void make_shells(State<Scalar>& s, const std::vector<const Layer<Scalar>*>& children, Index batch) const {
        s.children.clear();
        for (const Layer<Scalar>* c : children) {
            State<Scalar> cs = c->initial_state(batch);
            for (auto& t : cs.tensors) t = Matrix<Scalar>();
            s.children.push_back(std::move(cs));
        }
    }

    /// Exchanges child i's tensors between the composite's state and its shell
    /// (call once before the child's step and once after). Never allocates.
    void swap(State<Scalar>& s, std::size_t i) const {
        State<Scalar>& cs = s.children[i];
        for (Index j = 0; j < counts_[i]; ++j)
            cs.tensors[static_cast<std::size_t>(j)].swap(s.tensors[static_cast<std::size_t>(offsets_[i] + j)]);
        cs.position = s.position;
        cs.batch = s.batch;
    }

    /// Child i's tensors swapped into its shell for the guard's lifetime, and back when it
    /// ends, also when the child's step throws: the composite's state keeps its tensors
    /// whatever happens (`auto in = layout.swapped(state, i); child.step(x, state.children[i], y);`).
    class Swapped {
    public:
        /// Swaps child i's tensors into its shell.
        Swapped(const CompositeState& layout, State<Scalar>& s, std::size_t i) : layout_(layout), s_(s), i_(i) {
            layout_.swap(s_, i_);
        }
        ~Swapped() { layout_.swap(s_, i_); }
        Swapped(const Swapped&) = delete;
        Swapped& operator=(const Swapped&) = delete;

    private:
        const CompositeState& layout_;
        State<Scalar>& s_;
        std::size_t i_;
    };
    /// Child i's tensors in its shell until the guard ends.
    Swapped swapped(State<Scalar>& s, std::size_t i) const { return Swapped(*this, s, i); }

private:
    static std::string name_of(const std::string& where) { return where; }
    template <typename F>
        requires std::invocable<const F&>
    static std::string name_of(const F& where) {
        return where();
    }

    std::vector<Index> offsets_, counts_;
    Index total_ = 0;
};

}  // namespace seqnn
