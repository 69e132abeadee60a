// seqnn's files: safetensors, PyTorch state dicts and training checkpoints. Include it
// beside seqnn/seqnn.hpp where a program reads or writes them; it brings nlohmann/json.
#pragma once

#include "seqnn/io/safetensors.hpp"
#include "seqnn/io/state_dict.hpp"
#include "seqnn/train/checkpoint.hpp"
