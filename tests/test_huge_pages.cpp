// core/huge_pages.hpp: the large buffers a layer allocates once and refills (a Context's
// saved tensors through resized(), scratch_matrix, reused_matrix, a recurrent layer's
// output) ask Linux for transparent huge pages before their first write. The request shows
// as the "hg" flag of the memory mapping in /proc/self/smaps, whatever the system then
// grants; without THP in the kernel (or off Linux) the tests are skipped.
#include <seqnn/core/scratch.hpp>
#include <seqnn/core/types.hpp>
#include <seqnn/layers/rnn.hpp>

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

namespace {

using seqnn::Index;
using seqnn::Matrix;

// Off Linux, or on a kernel built without THP, the file is not there.
bool kernel_has_thp() { return std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good(); }

// The VmFlags of the mapping that holds `address`, from /proc/self/smaps ("" if none does).
std::string mapping_flags(const void* address) {
    const auto a = reinterpret_cast<std::uintptr_t>(address);
    std::ifstream smaps("/proc/self/smaps");
    bool inside = false;
    for (std::string line; std::getline(smaps, line);) {
        std::uintptr_t begin = 0, end = 0;
        char dash = 0;
        std::istringstream range(line);
        if (range >> std::hex >> begin >> dash >> end && dash == '-' && line.find(' ') != std::string::npos &&
            line.find(':') > line.find(' ')) {
            inside = begin <= a && a < end;
            continue;
        }
        if (inside && line.rfind("VmFlags:", 0) == 0) return line;
    }
    return "";
}

// An address inside the whole huge pages of [data, data + bytes).
const void* inside_huge_pages(const void* data, std::size_t bytes) {
    const auto begin = reinterpret_cast<std::uintptr_t>(data);
    const std::uintptr_t first = (begin + seqnn::kHugePageBytes - 1) & ~(seqnn::kHugePageBytes - 1);
    EXPECT_LT(first + seqnn::kHugePageBytes, begin + bytes) << "the buffer holds no whole huge page";
    return reinterpret_cast<const void*>(first + 4096);
}

bool asked_for_huge_pages(const void* data, std::size_t bytes) {
    return mapping_flags(inside_huge_pages(data, bytes)).find(" hg") != std::string::npos;
}

constexpr Index kRows = 4096, kCols = 1024;  // 16 MiB of floats
constexpr std::size_t kBytes = std::size_t{kRows * kCols} * sizeof(float);

TEST(HugePages, ANewLargeMatrixAsksForThemBeforeItIsWritten) {
    if (!kernel_has_thp()) GTEST_SKIP() << "no transparent huge pages here (a Linux kernel's THP)";
    const Matrix<float> m = seqnn::uninitialised_matrix<float>(kRows, kCols);
    EXPECT_TRUE(asked_for_huge_pages(m.data(), kBytes)) << mapping_flags(m.data());
}

TEST(HugePages, SavedTensorsScratchAndRecycledMatricesAskForThem) {
    if (!kernel_has_thp()) GTEST_SKIP() << "no transparent huge pages here (a Linux kernel's THP)";
    Matrix<float> saved;
    seqnn::resized(saved, kRows, kCols);
    EXPECT_TRUE(asked_for_huge_pages(saved.data(), kBytes));

    auto scratch = seqnn::scratch_matrix<float>(seqnn::ScratchSlot::C, kRows, kCols);
    EXPECT_TRUE(asked_for_huge_pages(scratch.data(), kBytes));

    const Matrix<float> reused = seqnn::reused_matrix<float>(kRows, kCols + 8);  // none recycled: a new one
    EXPECT_TRUE(asked_for_huge_pages(reused.data(), kBytes));
}

TEST(HugePages, ARecurrentLayersOutputAsksForThem) {
    if (!kernel_has_thp()) GTEST_SKIP() << "no transparent huge pages here (a Linux kernel's THP)";
    seqnn::Rng rng(3);
    const seqnn::RNN<float> rnn(seqnn::RecurrentOptions{.input_size = 8, .hidden_size = 64}, rng);
    const seqnn::Sequence<float> x(Matrix<float>::Random(4 * 6144, 8), 4, 6144);
    const seqnn::Sequence<float> y = rnn.forward(x);  // (B*T, H): 6 MiB
    EXPECT_TRUE(asked_for_huge_pages(y.data.data(), std::size_t(y.data.size()) * sizeof(float)));
}

TEST(HugePages, TheRequestChangesNoContents) {
    Matrix<float> m = Matrix<float>::Random(kRows, kCols);
    const Matrix<float> before = m;
    seqnn::advise_huge_pages(m.data(), kBytes);
    seqnn::advise_huge_pages(nullptr, kBytes);  // nothing to ask for
    seqnn::advise_huge_pages(m.data(), 100);    // too small to hold a huge page
    EXPECT_EQ(m, before);
}

}  // namespace
