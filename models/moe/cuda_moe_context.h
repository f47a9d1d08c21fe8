// The CUDA backend's shared state for one MoE layer (CudaMoeContext: stream, device communicator,
// ordering events, pinned staging) and the small device helpers its planners and its token
// dispatcher use (cuda_moe_backend.cc). Internal to models/moe; compiled only with the CUDA path.
//
// Stream: everything is enqueued on the device communicator's stream (Communicator::device_stream)
// when the layer's communicator works on device memory (so the all-to-alls need no extra
// ordering), else on the legacy default stream. The dense layers run on the legacy default
// stream (models/layers/layer.h), so each Forward and Backward makes its stream wait for the
// legacy stream on entry and the legacy stream wait for its stream on exit (two event records, no
// host wait): correct even when the NCCL stream is non-blocking. y / dx are ready in that order,
// not on return. A host-memory communicator (works_on_device() false) is used only with
// ep_size == 1, where the all-to-alls are local device copies.
//
// Memory: buffers internal to the backend are stream-ordered (cudaMallocAsync / cudaFreeAsync on
// the layer's stream): freeing them never waits. What crosses an interface (the expert bank's
// input/output, y, dx) is a Tensor, whose memory is stream-ordered on the LEGACY stream
// (core/kernels/cuda/device_memory_cuda.cu): NewDeviceTensor orders the layer's stream after its
// allocation, and every Tensor the layer's stream uses stays referenced until
// LeaveToLegacyStream has ordered the legacy stream (where it will be freed) after that use -- by
// the backend's state, the expert bank, or a local of MoeLayer::Forward/Backward, which outlive
// the dispatcher's EndStep.
#pragma once

#include <cuda_runtime_api.h>
#include <glog/logging.h>
#include <nvtx3/nvToolsExt.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/stream.h"
#include "core/profiler.h"
#include "core/tensor.h"
#include "models/layers/layer.h"
#include "comm/communicator.h"

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

// An NVTX range (shown by Nsight Systems on the CPU timeline, with the kernels it launched) while
// a profiler is attached. NVTX v3 is header-only; with no tool attached a range costs a few ns.
class NvtxRange {
 public:
  NvtxRange(bool on, const char* name) : on_(on) {
    if (on_) nvtxRangePushA(name);
  }
  ~NvtxRange() {
    if (on_) nvtxRangePop();
  }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;

 private:
  bool on_;
};

// A profiler phase that, when a profiler is attached, waits for the stream before it closes,
// inside an NVTX range of the same name.
class DevicePhase {
 public:
  DevicePhase(Profiler* profiler, const char* phase, cudaStream_t stream, int64_t bytes = 0)
      : nvtx_(profiler != nullptr, phase),
        phase_(profiler, phase, bytes),
        sync_(profiler != nullptr),
        stream_(stream) {}
  ~DevicePhase() {
    if (sync_) CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

 private:
  NvtxRange nvtx_;     // popped last
  ScopedPhase phase_;  // destroyed (phase closed) after the body above has synchronised
  bool sync_;
  cudaStream_t stream_;
};

// DevicePhase for a device all-to-all: also records the host's arrival and departure
// (ScopedExchange, for the skew / transfer split) and the device time between two CUDA events
// recorded on the stream around the phase's work (Profiler::AddDeviceSeconds). Every profiled
// phase synchronises before it closes, so the stream is idle at arrival and the host mark is
// the device's arrival too.
class DeviceExchange {
 public:
  DeviceExchange(Profiler* profiler, const char* phase, cudaStream_t stream, int64_t bytes)
      : nvtx_(profiler != nullptr, phase),
        exchange_(profiler, phase, bytes),
        profiler_(profiler),
        phase_name_(phase),
        stream_(stream) {
    if (profiler_ == nullptr) return;
    CUDA_CHECK(cudaEventCreate(&start_));
    CUDA_CHECK(cudaEventCreate(&stop_));
    CUDA_CHECK(cudaEventRecord(start_, stream_));
  }
  ~DeviceExchange() {
    if (profiler_ == nullptr) return;
    CUDA_CHECK(cudaEventRecord(stop_, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    profiler_->AddDeviceSeconds(phase_name_, ms * 1e-3);
    CUDA_CHECK(cudaEventDestroy(start_));
    CUDA_CHECK(cudaEventDestroy(stop_));
  }
  DeviceExchange(const DeviceExchange&) = delete;
  DeviceExchange& operator=(const DeviceExchange&) = delete;

 private:
  NvtxRange nvtx_;           // popped last
  ScopedExchange exchange_;  // departure recorded after the body above has synchronised
  Profiler* profiler_;
  const char* phase_name_;
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
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

// Shared by a layer's CUDA planner and dispatcher (one per layer and device backend).
class CudaMoeContext {
 public:
  // nccl: the layer's communicator when it works on device memory, else nullptr (then
  // ep_size must be 1: the all-to-alls are local copies).
  CudaMoeContext(const std::string& layer, Communicator* comm, int ep_size) {
    nccl = comm->works_on_device() ? comm : nullptr;
    CHECK(nccl != nullptr || ep_size == 1)
        << layer << ": the CUDA path with ep_size " << ep_size
        << " needs a device-memory communicator (NCCL); this one works on host memory";
    stream = nccl != nullptr ? static_cast<cudaStream_t>(nccl->device_stream()) : nullptr;
    for (cudaEvent_t* e : {&routed, &enter, &leave, &downloaded, &uploaded})
      CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
  }
  CudaMoeContext(const CudaMoeContext&) = delete;
  CudaMoeContext& operator=(const CudaMoeContext&) = delete;

  cudaStream_t stream = nullptr;
  Communicator* nccl = nullptr;
  cudaEvent_t routed = nullptr;  // the device router's device->host copies are done
  cudaEvent_t enter = nullptr, leave = nullptr;  // ordering with the legacy default stream
  moe_cuda::PinnedBuffer down, up;  // the device router's staging: counts and router arrays
  Profiler* profiler = nullptr;     // the step's, set by the dispatcher's BeginStep
  // A communicator `nccl` points to that the context keeps alive for the layer's planner and
  // dispatcher (the HIERARCHICAL dispatcher's two-level exchange over the job's NCCL one).
  std::unique_ptr<Communicator> owned_comm;

  ~CudaMoeContext() {
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
  cudaEvent_t downloaded = nullptr;  // after the device->host copies Download waits for
  cudaEvent_t uploaded = nullptr;    // after the host->device copies of the last Upload
  moe_cuda::PinnedBuffer host_down, host_up;  // Download / Upload staging

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
