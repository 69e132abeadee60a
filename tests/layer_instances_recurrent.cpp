// Compiles the recurrent (RNN, LSTM, GRU) layers once for the whole test suite (see layer_instances.hpp).
#include "layer_instances.hpp"

template class seqnn::RecurrentStack<float>;
template class seqnn::RecurrentStack<double>;
template class seqnn::RNN<float>;
template class seqnn::RNN<double>;
template class seqnn::LSTM<float>;
template class seqnn::LSTM<double>;
template class seqnn::GRU<float>;
template class seqnn::GRU<double>;
