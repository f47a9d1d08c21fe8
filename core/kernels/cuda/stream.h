// Ordering between CUDA streams without a host wait. The MoE layer's device path runs on the
// device communicator's stream and meets the legacy default stream (where the dense layers run
// and Tensor memory is stream-ordered, core/kernels/cuda/device_memory_cuda.cu) through it.
#pragma once

#include <cuda_runtime_api.h>

namespace moe {

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
