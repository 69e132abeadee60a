// Compiles the composite layers once for the whole test suite (see layer_instances.hpp).
#include "layer_instances.hpp"

template class seqnn::Sequential<float>;
template class seqnn::Sequential<double>;
template class seqnn::Residual<float>;
template class seqnn::Residual<double>;
template class seqnn::Block<float>;
template class seqnn::Block<double>;
template class seqnn::LMBlock<float>;
template class seqnn::LMBlock<double>;
template class seqnn::TransformerBlock<float>;
template class seqnn::TransformerBlock<double>;
template class seqnn::LanguageModel<float>;
template class seqnn::LanguageModel<double>;
