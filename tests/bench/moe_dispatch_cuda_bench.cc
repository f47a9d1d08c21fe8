// Device MoE dispatch/combine bandwidth: the pack, combine, their backward and the block
// permutation (core/kernels/cuda/moe_dispatch_kernels.h), each against a device-to-device
// cudaMemcpyAsync timed in the same run, plus the router kernels' time. One process, one GPU:
//   moe_dispatch_cuda_bench --rows 16384 --dim 768 --experts 8 --top_k 2
// Conventions: time = mean over --iters launches after --warmup, measured with CUDA events
// around the whole batch. "bytes" = bytes the op must read plus write (row data only, maps and
// gates ignored): pack reads the kept rows and writes every send row; combine reads the kept
// returned rows and writes y; combine_bwd writes d_returned (reading dy per kept row) and reads
// dy + returned for the gate gradients; dispatch_bwd reads the kept rows and writes dx; permute
// reads and writes the send buffer. GB/s = bytes / time (1 GB = 1e9 B). "memcpy GB/s" is a
// cudaMemcpyAsync D2D of the op's written bytes counted the same way (read + write), and
// "of memcpy" the ratio. Without a GPU it prints "no GPU: skipped" and exits 0; built without
// CUDA it says so and exits 0.
#include <gflags/gflags.h>
#include <glog/logging.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#ifdef MOE_EP_HAS_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <functional>
#include <random>

#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/moe_dispatch_kernels.h"
#include "core/kernels/cuda/moe_routing_kernels.h"
#include "models/moe/capacity.h"
#include "models/moe/router_math.h"
#include "models/moe/slot_assignment.h"
#endif

DEFINE_int64(rows, 16384, "tokens routed per iteration (whole routing groups)");
DEFINE_int64(group_tokens, 2048, "tokens per routing group");
DEFINE_int64(dim, 768, "model width D");
DEFINE_int32(experts, 8, "experts E");
DEFINE_int32(top_k, 2, "experts per token");
DEFINE_double(capacity_factor, 1.25, "capacity factor; <= 0 means dropless");
DEFINE_int32(ep, 4, "EP size for the permutation (experts must divide by it)");
DEFINE_int32(iters, 50, "timed iterations");
DEFINE_int32(warmup, 5, "untimed iterations");

#ifdef MOE_EP_HAS_CUDA
namespace moe {
namespace {

struct Buf {
  explicit Buf(size_t bytes) { CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1)); }
  ~Buf() { cudaFree(p); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
  void* p = nullptr;
};

template <typename T>
void Upload(const Buf& b, const std::vector<T>& v) {
  CUDA_CHECK(cudaMemcpy(b.p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
}

// Mean milliseconds per call of fn over FLAGS_iters, after FLAGS_warmup calls.
double TimeMs(const std::function<void()>& fn) {
  for (int i = 0; i < FLAGS_warmup; ++i) fn();
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  CUDA_CHECK(cudaEventRecord(start));
  for (int i = 0; i < FLAGS_iters; ++i) fn();
  CUDA_CHECK(cudaEventRecord(stop));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  return ms / FLAGS_iters;
}

int Run() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    std::printf("no GPU: skipped\n");
    return 0;
  }
  const int64_t rows = FLAGS_rows, n = FLAGS_group_tokens, D = FLAGS_dim;
  const int E = FLAGS_experts, k = FLAGS_top_k, ep = FLAGS_ep;
  CHECK_GT(n, 0);
  CHECK_EQ(rows % n, 0) << "--rows must be whole routing groups";
  CHECK_EQ(E % ep, 0) << "--experts must divide by --ep";
  const int64_t G = rows / n;
  const int64_t capacity =
      FLAGS_capacity_factor <= 0
          ? -1
          : CapacityPerExpert(k, n, FLAGS_capacity_factor, E, CapacityRounding::kCeil);

  // Routing on the host (random router), the layout as MoeLayer builds it.
  std::mt19937 gen(1);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> logits(rows * E), probs(rows * E), gate(rows * k);
  for (auto& v : logits) v = normal(gen);
  SoftmaxRows(logits.data(), rows, E, probs.data());
  std::vector<int> expert(rows * k), slot(rows * k);
  TopKRows(probs.data(), rows, E, k, expert.data(), gate.data());
  std::vector<int64_t> counts(G * E);
  for (int64_t g = 0; g < G; ++g)
    AssignSlots(expert.data() + g * n * k, n, k, E, capacity, IdentityOrder(n),
                slot.data() + g * n * k, counts.data() + g * E);
  std::vector<int64_t> block_rows(E * G), block_offset(E * G);
  int64_t send_rows = 0, kept = 0;
  for (int e = 0; e < E; ++e)
    for (int64_t g = 0; g < G; ++g) {
      block_rows[e * G + g] = capacity < 0 ? counts[g * E + e] : capacity;
      block_offset[e * G + g] = send_rows;
      send_rows += block_rows[e * G + g];
      kept += counts[g * E + e];
    }
  // The permutation's view: ep peers each holding E/ep experts; this rank's send layout is the
  // src-major receive layout of one EP exchange with G groups (block sizes as sent).
  const int el = E / ep;

  const size_t row_bytes = D * sizeof(float);
  Buf dx(rows * row_bytes), dsend(send_rows * row_bytes), dsend2(send_rows * row_bytes),
      dy(rows * row_bytes), dret(send_rows * row_bytes), ddret(send_rows * row_bytes),
      ddx(rows * row_bytes), dgrad(rows * k * sizeof(float)), dgate(rows * k * sizeof(float)),
      dexpert(rows * k * sizeof(int)), dslot(rows * k * sizeof(int)),
      dchoice_row(rows * k * sizeof(int)), drow_choice(send_rows * sizeof(int)),
      doffset(E * G * sizeof(int64_t)), dblock_rows(E * G * sizeof(int64_t)),
      dlogits(rows * E * sizeof(float)), dprobs(rows * E * sizeof(float)),
      dorder(rows * sizeof(int)), dcounts(G * E * sizeof(int64_t)),
      dtotal(sizeof(int64_t));
  CUDA_CHECK(cudaMemset(dx.p, 0, rows * row_bytes));
  CUDA_CHECK(cudaMemset(dy.p, 0, rows * row_bytes));
  CUDA_CHECK(cudaMemset(dret.p, 0, send_rows * row_bytes));
  Upload(dgate, gate);
  Upload(dexpert, expert);
  Upload(dslot, slot);
  Upload(doffset, block_offset);
  Upload(dlogits, logits);
  // Rows per src-major block (s, l, g) = this layout's (e = s*el + l, g): same order as e*G + g.
  Upload(dblock_rows, block_rows);
  BuildDispatchMapsCuda(dexpert.as<int>(), dslot.as<int>(), doffset.as<int64_t>(), rows, k, n, E,
                        send_rows, dchoice_row.as<int>(), drow_choice.as<int>());
  CUDA_CHECK(cudaDeviceSynchronize());

  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("# %s; rows=%lld groups=%lld D=%lld E=%d k=%d capacity=%lld (%s) send_rows=%lld "
              "kept=%lld\n",
              prop.name, static_cast<long long>(rows), static_cast<long long>(G),
              static_cast<long long>(D), E, k, static_cast<long long>(capacity),
              capacity < 0 ? "dropless" : "per group and expert",
              static_cast<long long>(send_rows), static_cast<long long>(kept));
  std::printf("# mean of %d iterations after %d warm-up; bytes = read + write of row data\n",
              FLAGS_iters, FLAGS_warmup);
  std::printf("%-14s %12s %10s %9s %12s %9s\n", "op", "bytes", "time_us", "GB/s", "memcpy GB/s",
              "of memcpy");

  const double rb = static_cast<double>(row_bytes);
  auto report = [&](const char* name, double bytes, double written, const std::function<void()>& fn) {
    const double ms = TimeMs(fn);
    const size_t copy_bytes = static_cast<size_t>(written);
    const double ref_ms = TimeMs([&] {
      CUDA_CHECK(cudaMemcpyAsync(dsend2.p, dret.p, std::min(copy_bytes, send_rows * row_bytes),
                                 cudaMemcpyDeviceToDevice));
    });
    const double gbs = bytes / (ms * 1e6);
    const double ref = 2.0 * std::min<double>(copy_bytes, send_rows * rb) / (ref_ms * 1e6);
    std::printf("%-14s %12.0f %10.2f %9.1f %12.1f %8.0f%%\n", name, bytes, ms * 1e3, gbs, ref,
                100.0 * gbs / ref);
  };
  report("pack", kept * rb + send_rows * rb, send_rows * rb, [&] {
    DispatchPackCuda(dx.as<float>(), drow_choice.as<int>(), send_rows, k, D, dsend.as<float>());
  });
  report("combine", kept * rb + rows * rb, rows * rb, [&] {
    CombineCuda(dret.as<float>(), dchoice_row.as<int>(), dgate.as<float>(), rows, k, D,
                ddx.as<float>());
  });
  report("combine_bwd", kept * rb + send_rows * rb + 2 * kept * rb, send_rows * rb, [&] {
    CombineBackwardCuda(dy.as<float>(), dret.as<float>(), dgate.as<float>(), dexpert.as<int>(),
                        dchoice_row.as<int>(), drow_choice.as<int>(), rows, k, E, send_rows, D,
                        ddret.as<float>(), dgrad.as<float>(), nullptr);
  });
  report("dispatch_bwd", kept * rb + rows * rb, rows * rb, [&] {
    DispatchBackwardCuda(dsend.as<float>(), dchoice_row.as<int>(), rows, k, D, ddx.as<float>(),
                         false);
  });
  report("permute", 2 * send_rows * rb, send_rows * rb, [&] {
    PermuteBlocksCuda(dsend.as<float>(), dsend2.as<float>(), D, dblock_rows.as<int64_t>(), ep,
                      el, G, send_rows, true);
  });

  // The router chain (noise, softmax, top-k, BPR order, slots, layout): time only.
  const double router_ms = TimeMs([&] {
    AddRouterNoiseCuda(dlogits.as<float>(), dprobs.as<float>(), G, n, E, 1.f / E, 1234, 0);
    SoftmaxRowsCuda(dprobs.as<float>(), rows, E, dprobs.as<float>());
    TopKRowsCuda(dprobs.as<float>(), rows, E, k, dexpert.as<int>(), dgate.as<float>());
    BatchPrioritizedOrderCuda(dgate.as<float>(), G, n, k, dorder.as<int>());
    AssignSlotsCuda(dexpert.as<int>(), dorder.as<int>(), G, n, k, E, capacity, dslot.as<int>(),
                    dcounts.as<int64_t>());
    SendLayoutCuda(dcounts.as<int64_t>(), G, E, capacity, dblock_rows.as<int64_t>(),
                   doffset.as<int64_t>(), dtotal.as<int64_t>());
  });
  std::printf("# router chain (noise, softmax, top-k, BPR, slots, layout): %.2f us\n",
              router_ms * 1e3);
  return 0;
}

}  // namespace
}  // namespace moe
#endif  // MOE_EP_HAS_CUDA

int main(int argc, char** argv) {
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
#ifdef MOE_EP_HAS_CUDA
  return moe::Run();
#else
  std::printf("built without CUDA: skipped\n");
  return 0;
#endif
}
