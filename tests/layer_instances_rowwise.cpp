// Compiles the row-wise layers once for the whole test suite (see layer_instances.hpp).
#include "layer_instances.hpp"

template class seqnn::Dropout<float>;
template class seqnn::Dropout<double>;
template class seqnn::FeedForward<float>;
template class seqnn::FeedForward<double>;
template class seqnn::Rowwise<float, seqnn::Linear<float>>;
template class seqnn::Rowwise<double, seqnn::Linear<double>>;
template class seqnn::Rowwise<float, seqnn::LayerNorm<float>>;
template class seqnn::Rowwise<double, seqnn::LayerNorm<double>>;
template class seqnn::Rowwise<float, seqnn::RMSNorm<float>>;
template class seqnn::Rowwise<double, seqnn::RMSNorm<double>>;
