// Compiles the attention and position layers once for the whole test suite (see layer_instances.hpp).
#include "layer_instances.hpp"

template class seqnn::SelfAttention<float>;
template class seqnn::SelfAttention<double>;
template class seqnn::SinusoidalPositionalEncoding<float>;
template class seqnn::SinusoidalPositionalEncoding<double>;
template class seqnn::LearnedPositionalEmbedding<float>;
template class seqnn::LearnedPositionalEmbedding<double>;
