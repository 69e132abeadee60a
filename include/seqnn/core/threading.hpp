// The old home of the thread controls and the threaded element-wise passes, kept for the
// includes of layers/ and models/ (removed once they include what they use): the threads
// are core/parallel.hpp's, the passes kernels/elementwise.hpp's.
#pragma once

#include "seqnn/core/parallel.hpp"
#include "seqnn/kernels/elementwise.hpp"
