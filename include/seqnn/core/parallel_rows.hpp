// The old name of the row loop, kept while layers/, models/ and core/types.hpp still call
// it; core/parallel.hpp has the loop and the rule.
#pragma once

#include "seqnn/core/parallel.hpp"

namespace seqnn {

/// Calls body(begin, end) on contiguous blocks of [0, rows), rows of `cols` elements:
/// parallel_for(rows, streamed_work(cols), body).
// forwards to parallel_for; removed once layers/ and models/ call it directly
template <typename Body>
void parallel_row_blocks(Eigen::Index rows, Eigen::Index cols, const Body& body) {
    parallel_for(rows, streamed_work(cols), body);
}

}  // namespace seqnn
