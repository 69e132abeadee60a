// Compiles the minGRU, minLSTM and causal conv layers once for the whole test suite (see layer_instances.hpp).
#include "layer_instances.hpp"

template class seqnn::MinRNN<float>;
template class seqnn::MinRNN<double>;
template class seqnn::MinGRU<float>;
template class seqnn::MinGRU<double>;
template class seqnn::MinLSTM<float>;
template class seqnn::MinLSTM<double>;
template class seqnn::CausalDepthwiseConv1d<float>;
template class seqnn::CausalDepthwiseConv1d<double>;
