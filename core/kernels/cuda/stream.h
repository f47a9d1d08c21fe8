// The two streams of a rank's GPU work and the one ordering primitive between them.
//
// compute runs the layers; comm runs the NCCL all-to-alls and all-reduces at a HIGHER priority,
// so that a collective whose peers are waiting is scheduled ahead of queued compute kernels when
// both are ready (the overlap of expert compute with the next all-to-all depends on it).
// Both are blocking streams (created without cudaStreamNonBlocking): they still synchronise with
// the legacy default stream, on which core/device_memory.h's copies and fills run, so mixing the
// two styles stays correct.
#pragma once

#include <cuda_runtime_api.h>

namespace moe {

struct StreamPair {
  cudaStream_t compute = nullptr;
  cudaStream_t comm = nullptr;
};

// Creates both streams on the current device: compute at the lowest priority, comm at the
// highest (cudaDeviceGetStreamPriorityRange; equal when the device has no priorities).
StreamPair CreateStreamPair();
// Destroys both (after the work queued on them completes, as cudaStreamDestroy does) and resets
// the handles to nullptr. A pair of nullptrs is ignored.
void DestroyStreamPair(StreamPair* pair);

// Work queued on `waiter` after this call starts only after all work queued on `producer` before
// this call has completed; the host does not wait. Uses an event from a per-device pool (created
// with cudaEventDisableTiming, recorded on producer, waited on by waiter, returned to the pool at
// once: a later cudaEventRecord does not affect a wait already issued), so repeated calls create
// no new events. Both streams must belong to the current device (nullptr = its legacy stream).
// waiter == producer is a no-op.
void OrderAfter(cudaStream_t waiter, cudaStream_t producer);

// Destroys the pooled events of every device (e.g. before cudaDeviceReset); OrderAfter creates
// new ones as needed afterwards. Not to be called concurrently with OrderAfter.
void ReleaseOrderEvents();

}  // namespace moe
