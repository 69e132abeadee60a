/// @file
/// seqnn's real-time module: a twin of each streamable layer for one stream (batch 1), one
/// sample or one block at a time, with no allocation, virtual call, parallel region, lock or
/// exception after set-up. Build a twin from a loaded layer (it copies the weights), chain the
/// twins by hand in an audio callback. See docs/realtime.md.
#pragma once

#include "seqnn/realtime/causal_conv.hpp"
#include "seqnn/realtime/gru.hpp"
#include "seqnn/realtime/linear.hpp"
#include "seqnn/realtime/lstm.hpp"
#include "seqnn/realtime/min_rnn.hpp"
#include "seqnn/realtime/rnn.hpp"
