#include "core/kernels/cuda/stream.h"

#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include <map>
#include <mutex>
#include <vector>

#include "core/kernels/cuda/cuda_check.h"

namespace moe {

namespace {

// Free events per device. An event is taken only for the duration of one OrderAfter call, so the
// pool holds about as many events as threads that ever called OrderAfter at once.
class EventPool {
 public:
  static EventPool& Get() {
    static EventPool* pool = new EventPool();  // never destroyed: used until process exit
    return *pool;
  }

  cudaEvent_t Take(int device) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::vector<cudaEvent_t>& free = free_[device];
      if (!free.empty()) {
        const cudaEvent_t e = free.back();
        free.pop_back();
        return e;
      }
    }
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }

  void Give(int device, cudaEvent_t e) {
    std::lock_guard<std::mutex> lock(mu_);
    free_[device].push_back(e);
  }

  void ReleaseAll() {
    std::lock_guard<std::mutex> lock(mu_);
    int current = 0;
    CUDA_CHECK(cudaGetDevice(&current));
    for (auto& kv : free_) {
      CUDA_CHECK(cudaSetDevice(kv.first));
      for (cudaEvent_t e : kv.second) CUDA_CHECK(cudaEventDestroy(e));
    }
    free_.clear();
    CUDA_CHECK(cudaSetDevice(current));
  }

 private:
  std::mutex mu_;
  std::map<int, std::vector<cudaEvent_t>> free_;
};

}  // namespace

void OrderAfter(cudaStream_t waiter, cudaStream_t producer) {
  if (waiter == producer) return;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  EventPool& pool = EventPool::Get();
  const cudaEvent_t e = pool.Take(device);
  CUDA_CHECK(cudaEventRecord(e, producer));
  CUDA_CHECK(cudaStreamWaitEvent(waiter, e, 0));
  pool.Give(device, e);
}

void ReleaseOrderEvents() { EventPool::Get().ReleaseAll(); }

}  // namespace moe
