// The layers every test uses, compiled once: each is explicitly instantiated for float and
// double in one of the layer_instances_*.cpp files (the seqnn_test_layers library), and this
// header tells each test file not to instantiate them again. A layer's work sits in its
// virtual *_impl functions, which a test then links instead of compiling, so the test suite
// builds in a fraction of the time. Include it after the seqnn headers, before any test.
#pragma once

#include <seqnn/layers/attention.hpp>
#include <seqnn/layers/causal_conv.hpp>
#include <seqnn/layers/dropout.hpp>
#include <seqnn/layers/feed_forward.hpp>
#include <seqnn/layers/gru.hpp>
#include <seqnn/layers/lstm.hpp>
#include <seqnn/layers/mingru.hpp>
#include <seqnn/layers/minlstm.hpp>
#include <seqnn/layers/positional.hpp>
#include <seqnn/layers/rnn.hpp>
#include <seqnn/layers/rowwise.hpp>
#include <seqnn/models/block.hpp>
#include <seqnn/models/language_model.hpp>
#include <seqnn/models/lm_block.hpp>
#include <seqnn/models/residual.hpp>
#include <seqnn/models/sequential.hpp>
#include <seqnn/models/transformer_block.hpp>

// layer_instances_recurrent.cpp
extern template class seqnn::RecurrentStack<float>;
extern template class seqnn::RecurrentStack<double>;
extern template class seqnn::RNN<float>;
extern template class seqnn::RNN<double>;
extern template class seqnn::LSTM<float>;
extern template class seqnn::LSTM<double>;
extern template class seqnn::GRU<float>;
extern template class seqnn::GRU<double>;

// layer_instances_min_rnn.cpp
extern template class seqnn::MinRNN<float>;
extern template class seqnn::MinRNN<double>;
extern template class seqnn::MinGRU<float>;
extern template class seqnn::MinGRU<double>;
extern template class seqnn::MinLSTM<float>;
extern template class seqnn::MinLSTM<double>;
extern template class seqnn::CausalDepthwiseConv1d<float>;
extern template class seqnn::CausalDepthwiseConv1d<double>;

// layer_instances_attention.cpp
extern template class seqnn::SelfAttention<float>;
extern template class seqnn::SelfAttention<double>;
extern template class seqnn::SinusoidalPositionalEncoding<float>;
extern template class seqnn::SinusoidalPositionalEncoding<double>;
extern template class seqnn::LearnedPositionalEmbedding<float>;
extern template class seqnn::LearnedPositionalEmbedding<double>;

// layer_instances_rowwise.cpp
extern template class seqnn::Dropout<float>;
extern template class seqnn::Dropout<double>;
extern template class seqnn::FeedForward<float>;
extern template class seqnn::FeedForward<double>;
extern template class seqnn::Rowwise<float, seqnn::Linear<float>>;
extern template class seqnn::Rowwise<double, seqnn::Linear<double>>;
extern template class seqnn::Rowwise<float, seqnn::LayerNorm<float>>;
extern template class seqnn::Rowwise<double, seqnn::LayerNorm<double>>;
extern template class seqnn::Rowwise<float, seqnn::RMSNorm<float>>;
extern template class seqnn::Rowwise<double, seqnn::RMSNorm<double>>;

// layer_instances_models.cpp
extern template class seqnn::Sequential<float>;
extern template class seqnn::Sequential<double>;
extern template class seqnn::Residual<float>;
extern template class seqnn::Residual<double>;
extern template class seqnn::Block<float>;
extern template class seqnn::Block<double>;
extern template class seqnn::LMBlock<float>;
extern template class seqnn::LMBlock<double>;
extern template class seqnn::TransformerBlock<float>;
extern template class seqnn::TransformerBlock<double>;
extern template class seqnn::LanguageModel<float>;
extern template class seqnn::LanguageModel<double>;
