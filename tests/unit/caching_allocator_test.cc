// BlockCache (core/block_cache.h), the bookkeeping of the CUDA caching allocator, driven by a
// malloc backend so it runs without a GPU: size classes, free-list reuse, statistics, release,
// the out-of-memory retry and concurrent use.
#include "core/block_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

namespace moe {
namespace {

// A malloc backend that counts its calls and can refuse once `limit` bytes are live.
struct MallocBackend {
  std::atomic<size_t> live_bytes{0};
  std::atomic<int> allocs{0}, releases{0};
  size_t limit = SIZE_MAX;
  std::unordered_map<void*, size_t> sizes;  // guarded by BlockCache's lock (callbacks run under it)

  BlockCache::AllocFn Alloc() {
    return [this](size_t bytes) -> void* {
      if (live_bytes + bytes > limit) return nullptr;
      void* p = std::malloc(bytes);
      sizes[p] = bytes;
      live_bytes += bytes;
      ++allocs;
      return p;
    };
  }
  BlockCache::ReleaseFn Release() {
    return [this](void* p) {
      live_bytes -= sizes.at(p);
      sizes.erase(p);
      ++releases;
      std::free(p);
    };
  }
};

TEST(BlockCache, RoundSizeClasses) {
  EXPECT_EQ(BlockCache::RoundSize(1), 512u);
  EXPECT_EQ(BlockCache::RoundSize(512), 512u);
  EXPECT_EQ(BlockCache::RoundSize(513), 1024u);
  EXPECT_EQ(BlockCache::RoundSize(2048), 2048u);
  EXPECT_EQ(BlockCache::RoundSize(2049), 2560u);
  EXPECT_EQ(BlockCache::RoundSize(4096), 4096u);
  EXPECT_EQ(BlockCache::RoundSize(4097), 5120u);
  EXPECT_EQ(BlockCache::RoundSize(size_t(1) << 30), size_t(1) << 30);
  EXPECT_EQ(BlockCache::RoundSize((size_t(1) << 30) + 1), (size_t(1) << 30) + (size_t(1) << 28));
  size_t prev = 0;
  for (size_t b = 1; b < (size_t(1) << 22); b = b * 9 / 8 + 1) {
    const size_t r = BlockCache::RoundSize(b);
    EXPECT_GE(r, b);
    EXPECT_EQ(r % BlockCache::kMinBlock, 0u) << b;
    EXPECT_GE(r, prev) << "classes must grow with the request: " << b;
    EXPECT_EQ(BlockCache::RoundSize(r), r) << "a class is its own class: " << b;
    if (b > 2048) EXPECT_LE(static_cast<double>(r), 1.25 * static_cast<double>(b)) << b;
    prev = r;
  }
}

TEST(BlockCache, ReusesFreedBlockOfTheSameClass) {
  MallocBackend be;
  BlockCache cache(be.Alloc(), be.Release());
  EXPECT_EQ(cache.Allocate(0), nullptr);
  void* a = cache.Allocate(1000);  // class 1024
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(be.allocs, 1);
  cache.Free(a);
  EXPECT_EQ(be.releases, 0) << "freeing must cache, not release";
  void* b = cache.Allocate(600);  // also class 1024: the same block
  EXPECT_EQ(b, a);
  EXPECT_EQ(be.allocs, 1);
  void* c = cache.Allocate(1000);  // class 1024 again, but the cached block is in use
  EXPECT_NE(c, a);
  EXPECT_EQ(be.allocs, 2);
  void* d = cache.Allocate(3000);  // another class
  EXPECT_EQ(be.allocs, 3);
  const BlockCacheStats s = cache.stats();
  EXPECT_EQ(s.requests, 4u);
  EXPECT_EQ(s.cache_hits, 1u);
  EXPECT_EQ(s.backend_allocs, 3u);
  EXPECT_EQ(s.blocks_in_use, 3u);
  EXPECT_EQ(s.bytes_in_use, 1024u + 1024u + 3072u);
  EXPECT_EQ(s.bytes_cached, 0u);
  cache.Free(b);
  cache.Free(c);
  cache.Free(d);
  cache.Free(nullptr);
  EXPECT_EQ(cache.stats().bytes_in_use, 0u);
  EXPECT_EQ(cache.stats().bytes_cached, 1024u + 1024u + 3072u);
  EXPECT_EQ(cache.stats().blocks_cached, 3u);
  // A steady-state loop of the same sizes calls the backend no more.
  for (int it = 0; it < 10; ++it) {
    void* x = cache.Allocate(1024);
    void* y = cache.Allocate(1020);
    void* z = cache.Allocate(2900);
    cache.Free(z);
    cache.Free(x);
    cache.Free(y);
  }
  EXPECT_EQ(be.allocs, 3);
  EXPECT_EQ(be.releases, 0);
}

TEST(BlockCache, ReleaseCachedKeepsBlocksInUse) {
  MallocBackend be;
  BlockCache cache(be.Alloc(), be.Release());
  void* a = cache.Allocate(100);
  void* b = cache.Allocate(5000);
  void* c = cache.Allocate(5000);
  cache.Free(b);
  cache.Free(c);
  cache.ReleaseCached();
  EXPECT_EQ(be.releases, 2);
  const BlockCacheStats s = cache.stats();
  EXPECT_EQ(s.bytes_cached, 0u);
  EXPECT_EQ(s.blocks_cached, 0u);
  EXPECT_EQ(s.backend_releases, 2u);
  EXPECT_EQ(s.blocks_in_use, 1u);
  EXPECT_TRUE(cache.Owns(a));
  EXPECT_FALSE(cache.Owns(b));
  EXPECT_EQ(be.live_bytes.load(), 512u);
  cache.Free(a);
  // Destruction returns the cache to the backend.
}

TEST(BlockCache, DestructorReleasesCachedBlocks) {
  MallocBackend be;
  {
    BlockCache cache(be.Alloc(), be.Release());
    cache.Free(cache.Allocate(10));
    cache.Free(cache.Allocate(10000));
  }
  EXPECT_EQ(be.allocs, 2);
  EXPECT_EQ(be.releases, 2);
  EXPECT_EQ(be.live_bytes.load(), 0u);
}

TEST(BlockCache, OutOfMemoryReleasesTheCacheAndRetries) {
  MallocBackend be;
  be.limit = 8192;
  BlockCache cache(be.Alloc(), be.Release());
  void* a = cache.Allocate(4096);
  void* b = cache.Allocate(4096);
  cache.Free(a);
  cache.Free(b);  // 8192 cached, the backend is full
  void* c = cache.Allocate(6000);  // class 6144: needs the cache released first
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(be.releases, 2);
  EXPECT_EQ(cache.stats().bytes_cached, 0u);
  EXPECT_EQ(cache.stats().bytes_in_use, 6144u);
  // Still too large after releasing everything: nullptr and no state change.
  EXPECT_EQ(cache.Allocate(4096), nullptr);
  EXPECT_EQ(cache.stats().blocks_in_use, 1u);
  EXPECT_EQ(cache.stats().requests, 4u);
  cache.Free(c);
}

TEST(BlockCacheDeathTest, FreeOfUnknownPointerIsFatal) {
  MallocBackend be;
  BlockCache cache(be.Alloc(), be.Release());
  int local = 0;
  EXPECT_DEATH(cache.Free(&local), "not allocated here");
  void* a = cache.Allocate(10);
  cache.Free(a);
  EXPECT_DEATH(cache.Free(a), "already freed");
}

TEST(BlockCache, ConcurrentAllocateAndFree) {
  MallocBackend be;
  BlockCache cache(be.Alloc(), be.Release());
  const int kThreads = 4, kIters = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&cache, t] {
      std::vector<void*> held;
      for (int i = 0; i < kIters; ++i) {
        const size_t bytes = 256 + static_cast<size_t>((i * 7 + t * 13) % 5) * 1000;
        held.push_back(cache.Allocate(bytes));
        if (held.size() > 3) {
          cache.Free(held.front());
          held.erase(held.begin());
        }
      }
      for (void* p : held) cache.Free(p);
    });
  }
  for (auto& th : threads) th.join();
  const BlockCacheStats s = cache.stats();
  EXPECT_EQ(s.blocks_in_use, 0u);
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.requests, static_cast<uint64_t>(kThreads) * kIters);
  EXPECT_EQ(s.backend_allocs, static_cast<uint64_t>(be.allocs.load()));
  EXPECT_EQ(s.blocks_cached, s.backend_allocs);
  // At most 4 blocks per thread are live at once, so the backend saw few allocations.
  EXPECT_LE(be.allocs.load(), kThreads * 4 * 5);
}

}  // namespace
}  // namespace moe
