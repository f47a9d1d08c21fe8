#include "core/kernels/cuda/caching_allocator.h"

#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include <memory>
#include <mutex>
#include <vector>

#include "core/kernels/cuda/cuda_check.h"

namespace moe {

namespace {

void* CudaMallocOrNull(size_t bytes) {
  void* p = nullptr;
  const cudaError_t st = cudaMalloc(&p, bytes);
  if (st == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear it: out of memory is recoverable (release the cache, retry)
    return nullptr;
  }
  CUDA_CHECK(st);
  return p;
}

void CudaRelease(void* p) {
  const cudaError_t st = cudaFree(p);
  if (st == cudaErrorCudartUnloading) return;  // process exit
  CUDA_CHECK(st);
}

// One BlockCache per device, created on first use. Never destroyed: caches must outlive every
// static that frees device memory, and the driver reclaims the memory at exit anyway.
class DeviceCaches {
 public:
  static DeviceCaches& Get() {
    static DeviceCaches* caches = new DeviceCaches();
    return *caches;
  }

  BlockCache& For(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<size_t>(device) >= caches_.size()) caches_.resize(device + 1);
    if (!caches_[device]) caches_[device] = std::make_unique<BlockCache>(CudaMallocOrNull, CudaRelease);
    return *caches_[device];
  }

  // The cache that handed out p: the current device's first, then the others.
  BlockCache* Owner(const void* p, int current) {
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<size_t>(current) < caches_.size() && caches_[current] &&
        caches_[current]->Owns(p))
      return caches_[current].get();
    for (auto& c : caches_)
      if (c && c->Owns(p)) return c.get();
    return nullptr;
  }

  std::vector<BlockCache*> All() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<BlockCache*> out;
    for (auto& c : caches_)
      if (c) out.push_back(c.get());
    return out;
  }

  bool Has(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    return device >= 0 && static_cast<size_t>(device) < caches_.size() && caches_[device];
  }

 private:
  std::mutex mu_;  // guards the vector; each BlockCache has its own lock
  std::vector<std::unique_ptr<BlockCache>> caches_;
};

}  // namespace

float* CachingAlloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  BlockCache& cache = DeviceCaches::Get().For(device);
  void* p = cache.Allocate(bytes);
  if (p == nullptr) {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    const BlockCacheStats s = cache.stats();
    LOG(FATAL) << "CachingAlloc of " << bytes << " bytes (class "
               << BlockCache::RoundSize(bytes) << ") on device " << device
               << " failed: out of memory; device has " << free_b << " of " << total_b
               << " bytes free; cache holds " << s.bytes_in_use << " bytes in use, "
               << s.bytes_cached << " cached";
  }
  return static_cast<float*>(p);
}

void CachingFree(float* p) {
  if (p == nullptr) return;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  BlockCache* owner = DeviceCaches::Get().Owner(p, device);
  CHECK(owner != nullptr) << "CachingFree: " << static_cast<void*>(p)
                          << " was not allocated by CachingAlloc or was already freed";
  owner->Free(p);
}

void CachingReleaseAll() {
  for (BlockCache* c : DeviceCaches::Get().All()) c->ReleaseCached();
}

BlockCacheStats CachingAllocatorStats(int device) {
  if (!DeviceCaches::Get().Has(device)) return BlockCacheStats();
  return DeviceCaches::Get().For(device).stats();
}

}  // namespace moe
