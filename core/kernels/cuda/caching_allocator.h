// A per-device caching allocator for device memory: blocks come from cudaMalloc once and are kept
// on size-class free lists (core/block_cache.h) after CachingFree, so a training step that
// allocates the same shapes every iteration stops calling cudaMalloc/cudaFree (each of which
// synchronises the device) after the first step. Memory goes back to cudaFree only in
// CachingReleaseAll (or when cudaMalloc runs out, once, before a retry).
//
// Stream semantics: CachingFree does NOT wait for kernels that still use the block (cudaFree
// would). A freed block may be handed out again at once, so free a block only when all work that
// uses it is on the stream that will use the next allocation (stream order then protects it), or
// after ordering that stream behind the others (OrderAfter in core/kernels/cuda/stream.h) or a
// synchronisation.
//
// Thread-safe. One cache per device, chosen by the current device at CachingAlloc; CachingFree
// finds the owning device's cache whatever the current device is.
#pragma once

#include <cstddef>

#include "core/block_cache.h"

namespace moe {

// A block of at least `bytes` on the current device (16-byte aligned or better: cudaMalloc
// returns 256-byte aligned blocks); nullptr for bytes == 0. Out of memory, even after releasing
// the cache, is fatal with the device's free/total and the cache's statistics.
float* CachingAlloc(size_t bytes);
// Returns p to its device's cache. nullptr is ignored; an unknown pointer is fatal.
void CachingFree(float* p);
// cudaFree of every cached block on every device (blocks in use stay valid).
void CachingReleaseAll();
// Statistics of a device's cache (zeros when it has never been used). backend_allocs counts
// cudaMalloc calls.
BlockCacheStats CachingAllocatorStats(int device);

}  // namespace moe
