// seqnn: header-only sequence models on Eigen and OpenMP. Include this for everything but
// files: reading and writing safetensors, state dicts and checkpoints is seqnn/io.hpp, so
// that code without files does not compile nlohmann/json.
#pragma once

#include "seqnn/core/checked.hpp"
#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/core/parameter.hpp"
#include "seqnn/core/types.hpp"

#include "seqnn/kernels/attention.hpp"
#include "seqnn/kernels/elementwise.hpp"
#include "seqnn/kernels/log_scan.hpp"
#include "seqnn/kernels/matmul.hpp"
#include "seqnn/kernels/rope.hpp"
#include "seqnn/kernels/scan.hpp"
#include "seqnn/kernels/scan_sequence.hpp"

#include "seqnn/nn/activations.hpp"
#include "seqnn/nn/embedding.hpp"
#include "seqnn/nn/layer_norm.hpp"
#include "seqnn/nn/linear.hpp"
#include "seqnn/nn/rms_norm.hpp"

#include "seqnn/layers/attention.hpp"
#include "seqnn/layers/causal_conv.hpp"
#include "seqnn/layers/dropout.hpp"
#include "seqnn/layers/feed_forward.hpp"
#include "seqnn/layers/gru.hpp"
#include "seqnn/layers/lstm.hpp"
#include "seqnn/layers/mingru.hpp"
#include "seqnn/layers/minlstm.hpp"
#include "seqnn/layers/positional.hpp"
#include "seqnn/layers/rnn.hpp"
#include "seqnn/layers/rowwise.hpp"

#include "seqnn/models/block.hpp"
#include "seqnn/models/generate.hpp"
#include "seqnn/models/language_model.hpp"
#include "seqnn/models/lm_block.hpp"
#include "seqnn/models/mixer.hpp"
#include "seqnn/models/residual.hpp"
#include "seqnn/models/sequential.hpp"
#include "seqnn/models/transformer_block.hpp"

#include "seqnn/train/loss.hpp"
#include "seqnn/train/optimizer.hpp"
#include "seqnn/train/schedule.hpp"
