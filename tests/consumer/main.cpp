#include <seqnn/seqnn.hpp>

#include <iostream>

int main() {
    seqnn::Rng rng(42);
    seqnn::GRU<float> gru({.input_size = 8, .hidden_size = 16, .num_layers = 2}, rng);

    seqnn::Sequence<float> x(/*batch=*/4, /*steps=*/100, /*features=*/8);  // data is (4*100, 8)
    x.data.setRandom();
    seqnn::Sequence<float> y = gru.forward(x);  // whole sequences at once: y.data is (4*100, 16)

    seqnn::State<float> state = gru.initial_state(4);  // or stream them, one step for all 4 at a time
    seqnn::Matrix<float> x_t, y_t;
    for (seqnn::Index t = 0; t < x.steps; ++t) {
        x_t = x.at_step(t);  // (4, 8)
        gru.step(x_t, state, y_t);  // y_t: (4, 16)
    }
    std::cout << "last step, max |forward - streamed| = " << (y.at_step(99) - y_t).cwiseAbs().maxCoeff() << "\n";
}
