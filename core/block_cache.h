// BlockCache: the bookkeeping of a caching allocator, independent of where the memory comes from.
// It hands out blocks from a backend (an allocate and a release callback: cudaMalloc/cudaFree in
// core/kernels/cuda/caching_allocator.cc, malloc/free in tests/unit/caching_allocator_test.cc)
// and, when a block is freed, keeps it on a free list keyed by its rounded size instead of
// returning it, so the next request of the same size class is served without a backend call.
// Memory goes back to the backend only in ReleaseCached() (or in Allocate, once, when the backend
// reports that it is out of memory, before retrying).
//
// Size classes: a request is rounded up to a multiple of 512 bytes, then to the next of four
// steps per power of two (2^k, 1.25 2^k, 1.5 2^k, 1.75 2^k), so at most 25% is wasted and a
// workload whose sizes vary a little still reuses blocks. A cached block is reused only for the
// same class (no splitting, no coalescing): simple and predictable.
//
// Thread-safe: one mutex guards all state; the backend callbacks run under it. Header-only so
// that both the CUDA library and CPU-only builds can use it without a link dependency.
#pragma once

#include <glog/logging.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace moe {

struct BlockCacheStats {
  size_t bytes_in_use = 0;     // rounded sizes of blocks handed out and not yet freed
  size_t bytes_cached = 0;     // rounded sizes of blocks on the free lists
  size_t blocks_in_use = 0;
  size_t blocks_cached = 0;
  uint64_t backend_allocs = 0;    // calls to the allocate callback that succeeded
  uint64_t backend_releases = 0;  // calls to the release callback
  uint64_t requests = 0;          // Allocate calls with bytes > 0
  uint64_t cache_hits = 0;        // of those, served from a free list
};

class BlockCache {
 public:
  // alloc(bytes) returns nullptr when the backend is out of memory; release(ptr) frees a block
  // that alloc returned.
  using AllocFn = std::function<void*(size_t)>;
  using ReleaseFn = std::function<void(void*)>;

  static constexpr size_t kMinBlock = 512;

  BlockCache(AllocFn alloc, ReleaseFn release)
      : alloc_(std::move(alloc)), release_(std::move(release)) {}
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;
  // Returns the cached blocks to the backend. Blocks still in use are not freed (a destructor
  // cannot know whether a kernel still reads them); they are the caller's leak.
  ~BlockCache() { ReleaseCached(); }

  // The size class of a request: a multiple of kMinBlock and one of four steps per power of two.
  static size_t RoundSize(size_t bytes) {
    CHECK_LE(bytes, SIZE_MAX / 4) << "BlockCache: request of " << bytes << " bytes";
    if (bytes <= kMinBlock) return kMinBlock;
    size_t s = (bytes + kMinBlock - 1) / kMinBlock * kMinBlock;
    if (s <= 4 * kMinBlock) return s;  // 512, 1024, 1536, 2048: already fine-grained
    // Highest power of two <= s, then the step of a quarter of it.
    size_t pow2 = 1;
    while (pow2 <= s / 2) pow2 <<= 1;
    const size_t step = pow2 / 4;
    return (s + step - 1) / step * step;
  }

  // nullptr for bytes == 0. Returns nullptr (and changes nothing) only when the backend fails
  // even after the cache has been emptied.
  void* Allocate(size_t bytes) {
    if (bytes == 0) return nullptr;
    const size_t size = RoundSize(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.requests;
    void* p = nullptr;
    auto it = free_.find(size);
    if (it != free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      stats_.bytes_cached -= size;
      --stats_.blocks_cached;
      ++stats_.cache_hits;
    } else {
      p = alloc_(size);
      if (p == nullptr && stats_.blocks_cached > 0) {
        ReleaseCachedLocked();  // fragmentation across classes: give everything back, retry
        p = alloc_(size);
      }
      if (p == nullptr) return nullptr;
      ++stats_.backend_allocs;
    }
    in_use_.emplace(p, size);
    stats_.bytes_in_use += size;
    ++stats_.blocks_in_use;
    return p;
  }

  // Puts p on its free list. nullptr is ignored; a pointer this cache did not hand out (or
  // freed twice) is a fatal error.
  void Free(void* p) {
    if (p == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = in_use_.find(p);
    CHECK(it != in_use_.end()) << "BlockCache::Free: " << p
                               << " was not allocated here or was already freed";
    const size_t size = it->second;
    in_use_.erase(it);
    stats_.bytes_in_use -= size;
    --stats_.blocks_in_use;
    free_[size].push_back(p);
    stats_.bytes_cached += size;
    ++stats_.blocks_cached;
  }

  // True when p is a block handed out by this cache and not yet freed.
  bool Owns(const void* p) const {
    std::lock_guard<std::mutex> lock(mu_);
    return in_use_.count(const_cast<void*>(p)) > 0;
  }

  // Returns every cached (free) block to the backend; blocks in use are untouched.
  void ReleaseCached() {
    std::lock_guard<std::mutex> lock(mu_);
    ReleaseCachedLocked();
  }

  BlockCacheStats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

 private:
  void ReleaseCachedLocked() {
    for (auto& kv : free_) {
      for (void* p : kv.second) {
        release_(p);
        ++stats_.backend_releases;
      }
      stats_.bytes_cached -= kv.first * kv.second.size();
      stats_.blocks_cached -= kv.second.size();
    }
    free_.clear();
  }

  AllocFn alloc_;
  ReleaseFn release_;
  mutable std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;  // rounded size -> cached blocks
  std::unordered_map<void*, size_t> in_use_;             // block -> rounded size
  BlockCacheStats stats_;
};

}  // namespace moe
