// KeepFreedHostMemory: after it, a block of several MB comes from the heap (not a mapping of its
// own) and freeing it does not shrink the heap, so the next step's block of that size finds its
// pages already mapped.
#include "core/host_memory.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace moe {
namespace {

TEST(HostMemory, LargeFreedBlocksStayInTheProcess) {
  std::string error;
  ASSERT_TRUE(KeepFreedHostMemory(&error)) << error;
  constexpr size_t kBlock = size_t{8} << 20;  // far above glibc's default 128 KB mmap threshold
  const struct mallinfo2 before = mallinfo2();
  void* p = std::malloc(kBlock);
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, kBlock);
  const struct mallinfo2 with_block = mallinfo2();
  EXPECT_EQ(with_block.hblkhd, before.hblkhd) << "the block was mapped on its own";
  EXPECT_GE(with_block.arena, before.arena + kBlock) << "the block is not in the heap";
  std::free(p);
  EXPECT_GE(mallinfo2().arena, with_block.arena) << "freeing the block shrank the heap";
}

}  // namespace
}  // namespace moe
