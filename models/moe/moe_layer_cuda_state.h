// MoeLayer's CUDA-path state and the small device helpers its two translation units share:
// moe_layer_cuda.cc (Forward/Backward on device tensors, the device token top-k router) and
// moe_layer_cuda_host_route.cc (the rules decided on the host). Internal to models/moe; compiled
// only with MOE_EP_HAS_CUDA. Stream ordering and host synchronisation: moe_layer_cuda.cc's header.
#pragma once

#ifdef MOE_EP_HAS_CUDA

#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/stream.h"
#include "core/profiler.h"
#include "core/tensor.h"
#include "models/layers/layer.h"
#include "models/moe/moe_layer.h"

namespace moe {
namespace moe_cuda {

// MOE_EP_CUDA_POISON=1 (debug/tests): every device buffer that a kernel must fill completely is
// first set to NaN (floats) or 0x7f7f7f7f (ints), so an unwritten element cannot pass for data.
inline bool PoisonDeviceOutputs() {
  const char* v = std::getenv("MOE_EP_CUDA_POISON");
  return v != nullptr && v[0] != '\0' && v[0] != '0';
}

// A stream-ordered device array (cudaMallocAsync / cudaFreeAsync on one stream).
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(int64_t n, cudaStream_t stream, bool poison = true) : n_(n), stream_(stream) {
    CHECK_GE(n, 0);
    if (n == 0) return;
    CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&p_), n * sizeof(T), stream));
    if (poison && PoisonDeviceOutputs())
      CUDA_CHECK(cudaMemsetAsync(p_, std::is_same<T, float>::value ? 0xff : 0x7f, n * sizeof(T),
                                 stream));
  }
  DeviceArray(DeviceArray&& o) noexcept { *this = std::move(o); }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      Release();
      p_ = o.p_;
      n_ = o.n_;
      stream_ = o.stream_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { Release(); }

  T* get() const { return p_; }
  int64_t size() const { return n_; }
  void Zero() {
    if (n_ > 0) CUDA_CHECK(cudaMemsetAsync(p_, 0, n_ * sizeof(T), stream_));
  }

 private:
  void Release() {
    // Errors ignored: at process exit the runtime may be gone, and a failed free loses nothing.
    if (p_ != nullptr) cudaFreeAsync(p_, stream_);
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  int64_t n_ = 0;
  cudaStream_t stream_ = nullptr;
};

// Page-locked host memory, grown on demand (asynchronous copies need it to be asynchronous).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() {
    if (p_ != nullptr) cudaFreeHost(p_);
  }
  // Ensures `bytes` of room. A copy still queued from/to the old buffer must have completed:
  // the caller synchronises `stream` first when the buffer grows.
  char* Reserve(size_t bytes, cudaStream_t stream) {
    if (bytes > cap_) {
      if (p_ != nullptr) {
        CUDA_CHECK(cudaStreamSynchronize(stream));
        CUDA_CHECK(cudaFreeHost(p_));
        p_ = nullptr;
      }
      cap_ = std::max(bytes, cap_ * 3 / 2);
      CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&p_), cap_));
    }
    return p_;
  }

 private:
  char* p_ = nullptr;
  size_t cap_ = 0;
};

// A profiler phase that, when a profiler is attached, waits for the stream before it closes.
class DevicePhase {
 public:
  DevicePhase(Profiler* profiler, const char* phase, cudaStream_t stream, int64_t bytes = 0)
      : phase_(profiler, phase, bytes), sync_(profiler != nullptr), stream_(stream) {}
  ~DevicePhase() {
    if (sync_) CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

 private:
  ScopedPhase phase_;  // destroyed (phase closed) after the body above has synchronised
  bool sync_;
  cudaStream_t stream_;
};

// A device Tensor for work on `stream`. Tensor memory is stream-ordered on the legacy stream
// (core/kernels/cuda/device_memory_cuda.cu), so `stream` is made to wait for the legacy stream
// after the allocation: the block may have been freed there by work still queued. The release
// is ordered by LeaveToLegacyStream, which must come after the last use on `stream` and before
// the last reference to the Tensor goes.
inline Tensor NewDeviceTensor(std::vector<int64_t> shape, cudaStream_t stream) {
  Tensor t(std::move(shape), Device::kCUDA);
  if (t.numel() > 0 && stream != nullptr && stream != cudaStreamLegacy)
    OrderAfter(stream, cudaStreamLegacy);
  if (t.numel() > 0 && PoisonDeviceOutputs())
    CUDA_CHECK(cudaMemsetAsync(t.data(), 0xff, t.numel() * sizeof(float), stream));
  return t;
}

}  // namespace moe_cuda

// Everything one device Forward decides and Backward reuses; index conventions as Routing in
// moe_layer.cc. Device arrays unless named *_host.
struct MoeLayer::CudaState {
  cudaStream_t stream = nullptr;
  Communicator* nccl = nullptr;  // device-memory communicator; nullptr: ep_size == 1, local copies
  cudaEvent_t routed = nullptr;      // recorded after the device->host copies of the routing
  cudaEvent_t enter = nullptr, leave = nullptr;  // ordering with the legacy default stream
  moe_cuda::PinnedBuffer down, up;   // staging: device->host (counts, router arrays), host->device

  bool have_forward = false;
  int64_t rows = 0, groups = 0, send_rows = 0, recv_rows = 0;
  Tensor x;
  moe_cuda::DeviceArray<float> clean, noisy, probs, probs_clean;  // noisy/probs_clean empty without noise
  const float* probs_clean_ptr = nullptr;               // probs_clean, or probs without noise
  moe_cuda::DeviceArray<int> expert, slot, order, choice_row, row_choice;
  moe_cuda::DeviceArray<float> gate;
  moe_cuda::DeviceArray<int64_t> counts, block_rows, block_offset, recv_block_rows_exchanged;
  const int64_t* recv_block_rows = nullptr;  // exchanged (dropless) or block_rows (all C)
  std::vector<int64_t> send_rows_per_peer, recv_rows_per_peer, expert_rows;
  moe_cuda::DeviceArray<float> returned;  // expert outputs back at the source, send layout
  // Auxiliary-loss gradients from Forward's host computation, applied in Backward:
  //   d_probs_aux  (switch loss) joins d(probs) before the softmax backward;
  //   d_logits_extra = d_logits_aux (z) + softmax_bwd(probs_clean, d_probs_clean_aux)
  //                    (importance) + d_clean_logits_aux (load), added to d(clean logits),
  // summed in that order, as moe_layer.cc does.
  bool have_aux_grads = false;
  moe_cuda::DeviceArray<float> d_probs_aux, d_logits_extra;

  // The rules decided on the host (every rule but plain token top-k; moe_layer_cuda_host_route.cc)
  // upload their plan into expert/slot/gate/block_rows/block_offset above and use these.
  bool host_routed = false;
  int kc = 0;  // choices per row of the plan: top_k, or E for the expert-side rules
  // Block sizes on the host: [E*G] in send order, [EP*El*G] src-major as received.
  std::vector<int64_t> block_rows_host, recv_block_rows_host;
  moe_cuda::DeviceArray<float> router_in;  // kPerImage: image means [B, D]; others route on x
  moe_cuda::DeviceArray<float> dgate;      // Backward: d(gate) per choice [rows * kc]
  std::vector<float> w_host;               // kAttribute: this step's router weights [D, E]
  // kAttribute: host copies of the embedding layers, refreshed from the device every Forward.
  std::unique_ptr<Layer> attr_proj_host, attr_norm_host;
  cudaEvent_t downloaded = nullptr;  // after the device->host copies Download waits for
  cudaEvent_t uploaded = nullptr;    // after the host->device copies of the last Upload
  moe_cuda::PinnedBuffer host_down, host_up;

  ~CudaState() {
    for (cudaEvent_t e : {routed, enter, leave, downloaded, uploaded})
      if (e != nullptr) cudaEventDestroy(e);
  }

  // Enqueues a device->host copy of every (device source, bytes) into one pinned buffer and
  // records `downloaded`; waits for it unless wait is false (then WaitDownload() before reading).
  // Returns the host copies, valid until the next Download (which first waits for this one's
  // copies, so the buffer is never refilled under a copy still in flight).
  std::vector<const char*> Download(const std::vector<std::pair<const void*, size_t>>& parts,
                                    bool wait = true) {
    WaitDownload();
    size_t total = 0;
    for (const auto& p : parts) total += Padded(p.second);
    char* h = host_down.Reserve(total, stream);
    std::vector<const char*> out;
    for (const auto& p : parts) {
      if (p.second > 0)
        CUDA_CHECK(cudaMemcpyAsync(h, p.first, p.second, cudaMemcpyDeviceToHost, stream));
      out.push_back(h);
      h += Padded(p.second);
    }
    CUDA_CHECK(cudaEventRecord(downloaded, stream));
    if (wait) WaitDownload();
    return out;
  }
  void WaitDownload() { CUDA_CHECK(cudaEventSynchronize(downloaded)); }

  // Enqueues a host->device copy of every (device destination, host source, bytes), staged
  // through one pinned buffer; returns without waiting. The buffer is rewritten only once the
  // previous Upload's copies have completed (an event wait, normally already satisfied).
  void Upload(const std::vector<std::tuple<void*, const void*, size_t>>& parts) {
    CUDA_CHECK(cudaEventSynchronize(uploaded));
    size_t total = 0;
    for (const auto& p : parts) total += Padded(std::get<2>(p));
    char* h = host_up.Reserve(total, stream);
    for (const auto& p : parts) {
      const size_t bytes = std::get<2>(p);
      if (bytes > 0) {
        std::memcpy(h, std::get<1>(p), bytes);
        CUDA_CHECK(cudaMemcpyAsync(std::get<0>(p), h, bytes, cudaMemcpyHostToDevice, stream));
      }
      h += Padded(bytes);
    }
    CUDA_CHECK(cudaEventRecord(uploaded, stream));
  }

  static size_t Padded(size_t bytes) { return (bytes + 15) / 16 * 16; }

  // Work enqueued on `stream` from now on runs after everything already on the legacy stream.
  void EnterFromLegacyStream() {
    if (stream == nullptr) return;
    CUDA_CHECK(cudaEventRecord(enter, cudaStreamLegacy));
    CUDA_CHECK(cudaStreamWaitEvent(stream, enter, 0));
  }
  // Work enqueued on the legacy stream from now on runs after everything on `stream`.
  void LeaveToLegacyStream() {
    if (stream == nullptr) return;
    CUDA_CHECK(cudaEventRecord(leave, stream));
    CUDA_CHECK(cudaStreamWaitEvent(cudaStreamLegacy, leave, 0));
  }
};

namespace moe_cuda {

// The layer's all-to-all-v on device rows: through NCCL, or a local copy when ep_size == 1.
inline void DeviceAllToAllV(Communicator* nccl, cudaStream_t s, const float* send,
                     const std::vector<int64_t>& send_rows, float* recv,
                     const std::vector<int64_t>& recv_rows, int64_t D) {
  std::vector<int64_t> sc(send_rows.size()), rc(recv_rows.size());
  for (size_t p = 0; p < sc.size(); ++p) sc[p] = send_rows[p] * D;
  for (size_t p = 0; p < rc.size(); ++p) rc[p] = recv_rows[p] * D;
  if (nccl != nullptr) {
    nccl->AllToAllV(send, sc, recv, rc, GroupKind::kExpert);
    return;
  }
  CHECK_EQ(sc.size(), 1u);
  CHECK_EQ(sc[0], rc[0]);
  if (sc[0] > 0)
    CUDA_CHECK(cudaMemcpyAsync(recv, send, sc[0] * sizeof(float), cudaMemcpyDeviceToDevice, s));
}

}  // namespace moe_cuda
}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
