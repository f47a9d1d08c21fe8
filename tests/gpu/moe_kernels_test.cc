// GPU tests of the MoE routing and dispatch kernels (core/kernels/cuda/moe_routing_kernels.h,
// moe_dispatch_kernels.h) against the CPU code they mirror: CounterRng, SoftmaxRows(+Backward),
// TopKRows, BatchPrioritizedOrder, AssignSlots, and loops copied from models/moe/moe_layer.cc for
// the send layout, pack, combine, their backward and PermuteBlocks. Every device output is
// poisoned first (NaN for floats, 0x7f7f7f7f for integers) so an unwritten element fails.
// Integer outputs must be equal, the Philox draws and the router noise bit-identical, copies and
// the float sums the kernels do in the CPU's order bit-identical too; the rest within 1e-5
// relative. Without a GPU every test reports SKIPPED.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/moe_dispatch_kernels.h"
#include "core/kernels/cuda/moe_routing_kernels.h"
#include "core/rng.h"
#include "models/moe/capacity.h"
#include "models/moe/router_math.h"
#include "models/moe/slot_assignment.h"
#include "models/moe/block_permute.h"
#include "tests/gpu/gpu_test_util.h"

namespace moe {
namespace {

// A typed device array, poisoned on request: NaN for float, bytes 0x7f for integers (an
// impossible expert, slot, row or count).
template <typename T>
struct DeviceArray {
  explicit DeviceArray(size_t n) : n(n) {
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), (n ? n : 1) * sizeof(T)));
  }
  explicit DeviceArray(const std::vector<T>& v) : DeviceArray(v.size()) { Upload(v); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(p); }
  void Upload(const std::vector<T>& v) {
    CHECK_EQ(v.size(), n) << "DeviceArray::Upload: size";
    CUDA_CHECK(cudaMemcpy(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  void Poison() {
    if constexpr (std::is_same_v<T, float>) {
      Upload(std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()));
    } else {
      CUDA_CHECK(cudaMemset(p, 0x7f, n * sizeof(T)));
    }
  }
  std::vector<T> Download() const {
    std::vector<T> v(n);
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
  T* p = nullptr;
  size_t n;
};

std::vector<float> RandomFloats(size_t n, unsigned seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(gen);
  return v;
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

// Index of the first element whose bits differ, or -1.
int64_t FirstBitMismatch(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (Bits(a[i]) != Bits(b[i])) return static_cast<int64_t>(i);
  return -1;
}

// Worst |got - ref| / max(scale, floor) with scale the size rounding errors live on; NaN in got
// (an unwritten element) counts as infinitely wrong.
double WorstRelErr(const std::vector<float>& got, const std::vector<double>& ref,
                   const std::vector<double>& scale, double floor = 1e-30) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) && !std::isnan(ref[i])) return std::numeric_limits<double>::infinity();
    if (std::isnan(ref[i])) continue;
    worst = std::max(worst, std::fabs(got[i] - ref[i]) / std::max(scale[i], floor));
  }
  return worst;
}

std::vector<double> ToDouble(const std::vector<float>& v) { return {v.begin(), v.end()}; }
std::vector<double> Abs(const std::vector<float>& v) {
  std::vector<double> a(v.size());
  for (size_t i = 0; i < v.size(); ++i) a[i] = std::fabs(static_cast<double>(v[i]));
  return a;
}

// ---------------------------------------------------------------------------------------------
// 1. Philox and the router noise.

TEST(MoeKernels, PhiloxDrawsBitIdenticalToCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t key = MixKey(MixKey(1234, HashString("blocks.3.moe.router_noise")), 17);
  const CounterRng rng(key);
  const int64_t n = 1 << 15;
  for (uint64_t i : {uint64_t{0}, uint64_t{5}, (uint64_t{1} << 32) + 3, ~uint64_t{0} - 1}) {
    for (uint64_t j0 : {uint64_t{0}, (uint64_t{1} << 33) + 7}) {
      SCOPED_TRACE("i=" + std::to_string(i) + " j0=" + std::to_string(j0));
      DeviceArray<float> dn(n), du(n);
      dn.Poison();
      du.Poison();
      CounterNormalCuda(key, i, j0, n, dn.p);
      CounterUniformCuda(key, i, j0, n, du.p);
      std::vector<float> want_n(n), want_u(n);
      for (int64_t j = 0; j < n; ++j) {
        want_n[j] = rng.Normal(i, j0 + j);
        want_u[j] = rng.Uniform(i, j0 + j);
      }
      EXPECT_EQ(FirstBitMismatch(dn.Download(), want_n), -1) << "Normal draws differ";
      EXPECT_EQ(FirstBitMismatch(du.Download(), want_u), -1) << "Uniform draws differ";
    }
  }
}

TEST(MoeKernels, RouterNoiseBitIdenticalToMoeLayerRoute) {
  SKIP_WITHOUT_GPU();
  for (int E : {8, 5}) {
    const int64_t G = 3, n = 37, first_group = 5, step = 42;
    const float sigma = 1.f / E;
    SCOPED_TRACE("E=" + std::to_string(E));
    const uint64_t key = MixKey(MixKey(7, HashString("moe0.router_noise")), step);
    const std::vector<float> clean = RandomFloats(G * n * E, 11 + E, -2.f, 2.f);
    // As MoeLayer::Route writes it.
    std::vector<float> want = clean;
    const CounterRng rng(key);
    for (int64_t g = 0; g < G; ++g) {
      const uint64_t gid = static_cast<uint64_t>(first_group + g);
      for (int64_t i = 0; i < n * E; ++i)
        want[g * n * E + i] += sigma * rng.NormalF32(gid, static_cast<uint64_t>(i));
    }
    DeviceArray<float> dclean(clean), dnoisy(clean.size());
    dnoisy.Poison();
    AddRouterNoiseCuda(dclean.p, dnoisy.p, G, n, E, sigma, key, first_group);
    EXPECT_EQ(FirstBitMismatch(dnoisy.Download(), want), -1) << "out of place";
    AddRouterNoiseCuda(dclean.p, dclean.p, G, n, E, sigma, key, first_group);  // in place
    EXPECT_EQ(FirstBitMismatch(dclean.Download(), want), -1) << "in place";
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Softmax and its backward.

TEST(MoeKernels, SoftmaxForwardBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 517;
  for (int E : {1, 4, 8, 31, 32, 33, 64, 100, 128, 256}) {
    SCOPED_TRACE("E=" + std::to_string(E));
    std::vector<float> logits = RandomFloats(n * E, 100 + E, -4.f, 4.f);
    for (int j = 0; j < E; ++j) logits[1 * E + j] += 80.f;  // large values: max subtraction
    for (int j = 0; j < E; ++j) logits[2 * E + j] = 0.5f;   // a flat row
    std::vector<float> want(n * E);
    SoftmaxRows(logits.data(), n, E, want.data());
    DeviceArray<float> dlogits(logits), dprobs(n * E);
    dprobs.Poison();
    SoftmaxRowsCuda(dlogits.p, n, E, dprobs.p);
    const std::vector<float> got = dprobs.Download();
    EXPECT_LT(WorstRelErr(got, ToDouble(want), Abs(want)), 1e-5) << "forward";
    // Same float exp (core/kernels/cpu/exp_f32.h), same double sum in the same order as the
    // CPU: bit-identical, required.
    EXPECT_EQ(FirstBitMismatch(got, want), -1) << "forward, first differing element";
    SoftmaxRowsCuda(dlogits.p, n, E, dlogits.p);  // in place
    EXPECT_LT(WorstRelErr(dlogits.Download(), ToDouble(want), Abs(want)), 1e-5) << "in place";

    // Backward from the CPU probabilities, so both sides start from the same values.
    const std::vector<float> dp = RandomFloats(n * E, 200 + E);
    std::vector<float> want_dl(n * E);
    SoftmaxRowsBackward(want.data(), dp.data(), n, E, want_dl.data());
    std::vector<double> scale(n * E);
    for (int64_t t = 0; t < n; ++t) {
      double dot = 0;
      for (int j = 0; j < E; ++j) dot += std::fabs(static_cast<double>(want[t * E + j]) * dp[t * E + j]);
      for (int j = 0; j < E; ++j)
        scale[t * E + j] = std::fabs(want[t * E + j]) * (std::fabs(dp[t * E + j]) + dot);
    }
    DeviceArray<float> dy(want), ddp(dp), ddl(n * E);
    ddl.Poison();
    SoftmaxRowsBackwardCuda(dy.p, ddp.p, n, E, ddl.p);
    const std::vector<float> got_dl = ddl.Download();
    EXPECT_LT(WorstRelErr(got_dl, ToDouble(want_dl), scale), 1e-5) << "backward";
    EXPECT_EQ(FirstBitMismatch(got_dl, want_dl), -1) << "backward: same order, same rounding";
    SoftmaxRowsBackwardCuda(dy.p, ddp.p, n, E, ddp.p);  // dlogits aliasing dprobs
    EXPECT_EQ(FirstBitMismatch(ddp.Download(), want_dl), -1) << "backward in place";
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Top-k.

TEST(MoeKernels, TopKMatchesCpuWithTiesZerosAndNaN) {
  SKIP_WITHOUT_GPU();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t n = 300;
  for (int E : {3, 8, 33, 64, 128, 200}) {
    for (int k : {1, 2, 8, E}) {
      if (k > E || (k == E && E > 8)) continue;
      SCOPED_TRACE("E=" + std::to_string(E) + " k=" + std::to_string(k));
      std::vector<float> logits = RandomFloats(n * E, 300 + E * 10 + k, -3.f, 3.f);
      std::vector<float> p(n * E);
      SoftmaxRows(logits.data(), n, E, p.data());
      std::mt19937 gen(E * 100 + k);
      for (int j = 0; j < E; ++j) p[0 * E + j] = 1.f / E;            // all tied
      for (int j = 0; j < E; j += 2) p[1 * E + j] = 0.25f;           // many tied maxima
      for (int j = 0; j < E; ++j) p[2 * E + j] = (j % 2) ? -0.f : 0.f;  // signed zeros
      p[2 * E + E - 1] = -1.f;
      p[3 * E + 0] = nan;                                            // NaN first: taken first
      p[4 * E + E / 2] = nan;                                        // NaN later: never wins
      for (int j = 0; j < E; ++j) p[5 * E + j] = nan;                // all NaN
      p[6 * E + 1] = nan;
      p[6 * E + 0] = 2.f;
      for (int64_t t = 10; t < 60; ++t)  // coarse values: ties everywhere
        for (int j = 0; j < E; ++j) p[t * E + j] = static_cast<float>(gen() % 4) * 0.125f;
      std::vector<int> want_e(n * k);
      std::vector<float> want_g(n * k);
      TopKRows(p.data(), n, E, k, want_e.data(), want_g.data());
      DeviceArray<float> dp(p), dg(n * k);
      DeviceArray<int> de(n * k);
      dg.Poison();
      de.Poison();
      TopKRowsCuda(dp.p, n, E, k, de.p, dg.p);
      EXPECT_EQ(de.Download(), want_e);
      EXPECT_EQ(FirstBitMismatch(dg.Download(), want_g), -1) << "gates";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 4. BPR order and slot assignment.

// Gates [G*n*k] with few distinct values (ties), a NaN and signed zeros in each group.
std::vector<float> TiedGates(int64_t G, int64_t n, int k, unsigned seed) {
  std::mt19937 gen(seed);
  std::vector<float> gate(G * n * k);
  for (auto& g : gate) g = static_cast<float>(gen() % 7) * 0.125f;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t t0 = g * n;
    if (n > 3) {
      gate[(t0 + 1) * k] = std::numeric_limits<float>::quiet_NaN();
      gate[(t0 + 2) * k] = -0.f;
      gate[(t0 + 3) * k] = 0.f;
    }
  }
  return gate;
}

TEST(MoeKernels, BatchPrioritizedOrderMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const int k = 2;
  const int64_t G = 3;
  // 4096 is the largest shared-memory sort; 5000 and 9000 take the cub segmented sort.
  for (int64_t n : {1, 7, 256, 1000, 4096, 5000, 9000}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const std::vector<float> gate = TiedGates(G, n, k, 17 + n);
    DeviceArray<float> dgate(gate);
    DeviceArray<int> dorder(G * n);
    dorder.Poison();
    BatchPrioritizedOrderCuda(dgate.p, G, n, k, dorder.p);
    const std::vector<int> got = dorder.Download();
    for (int64_t g = 0; g < G; ++g) {
      const std::vector<int64_t> want = BatchPrioritizedOrder(gate.data() + g * n * k, n, k);
      const std::vector<int64_t> got_g(got.begin() + g * n, got.begin() + (g + 1) * n);
      ASSERT_EQ(got_g, want) << "group " << g;
    }
  }
}

struct SlotCase {
  int64_t G, n;
  int E, k;
  int64_t capacity;  // -1: dropless
  bool bpr;
};

std::string Describe(const SlotCase& c) {
  return "G=" + std::to_string(c.G) + " n=" + std::to_string(c.n) + " E=" + std::to_string(c.E) +
         " k=" + std::to_string(c.k) + " C=" + std::to_string(c.capacity) +
         (c.bpr ? " bpr" : " vanilla");
}

// Router output for a case: skewed softmax (some experts popular, so capacity binds) -> top-k.
void MakeRouting(const SlotCase& c, unsigned seed, std::vector<int>* expert,
                 std::vector<float>* gate) {
  const int64_t rows = c.G * c.n;
  std::vector<float> logits = RandomFloats(rows * c.E, seed, -2.f, 2.f);
  for (int64_t t = 0; t < rows; ++t)
    for (int e = 0; e < c.E; ++e) logits[t * c.E + e] += 2.f * std::exp(-0.5f * e);
  std::vector<float> probs(rows * c.E);
  SoftmaxRows(logits.data(), rows, c.E, probs.data());
  expert->resize(rows * c.k);
  gate->resize(rows * c.k);
  TopKRows(probs.data(), rows, c.E, c.k, expert->data(), gate->data());
}

// AssignSlots per group, as MoeLayer::Route calls it.
void CpuSlots(const SlotCase& c, const std::vector<int>& expert, const std::vector<float>& gate,
              std::vector<int>* slot, std::vector<int64_t>* counts) {
  slot->assign(c.G * c.n * c.k, 0);
  counts->assign(c.G * c.E, 0);
  for (int64_t g = 0; g < c.G; ++g) {
    const int64_t t0 = g * c.n;
    const std::vector<int64_t> order =
        c.bpr ? BatchPrioritizedOrder(gate.data() + t0 * c.k, c.n, c.k) : IdentityOrder(c.n);
    AssignSlots(expert.data() + t0 * c.k, c.n, c.k, c.E, c.capacity, order,
                slot->data() + t0 * c.k, counts->data() + g * c.E);
  }
}

// Device slots: BPR order from the device gates, then AssignSlotsCuda.
void DeviceSlots(const SlotCase& c, const std::vector<int>& expert,
                 const std::vector<float>& gate, std::vector<int>* slot,
                 std::vector<int64_t>* counts) {
  DeviceArray<int> dexpert(expert), dslot(expert.size()), dorder(c.G * c.n);
  DeviceArray<float> dgate(gate);
  DeviceArray<int64_t> dcounts(c.G * c.E);
  dslot.Poison();
  dcounts.Poison();
  dorder.Poison();
  if (c.bpr) BatchPrioritizedOrderCuda(dgate.p, c.G, c.n, c.k, dorder.p);
  AssignSlotsCuda(dexpert.p, c.bpr ? dorder.p : nullptr, c.G, c.n, c.k, c.E, c.capacity, dslot.p,
                  dcounts.p);
  *slot = dslot.Download();
  *counts = dcounts.Download();
}

TEST(MoeKernels, AssignSlotsMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const auto cap = [](int k, int64_t n, double cf, int E) {
    return CapacityPerExpert(k, n, cf, E, CapacityRounding::kCeil);
  };
  const std::vector<SlotCase> cases = {
      {2, 8, 4, 1, 2, false},
      {3, 1000, 8, 2, cap(2, 1000, 1.05, 8), false},
      {3, 1000, 8, 2, cap(2, 1000, 1.05, 8), true},
      {4, 777, 64, 2, -1, false},  // dropless
      {4, 777, 64, 2, -1, true},
      {2, 1576, 8, 2, cap(2, 1576, 1.05, 8), true},  // V-MoE: 8 images x 197 tokens
      {2, 300, 16, 2, 0, false},                     // capacity 0: everything dropped
      {1, 300, 1024, 1, 1, false},                   // the largest E
      {2, 129, 5, 5, 30, false},                     // k == E
      {2, 5000, 16, 2, cap(2, 5000, 1.25, 16), true},  // BPR through the cub sort
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const SlotCase& c = cases[i];
    SCOPED_TRACE(Describe(c));
    std::vector<int> expert;
    std::vector<float> gate;
    MakeRouting(c, 500 + i, &expert, &gate);
    std::vector<int> want_slot, got_slot;
    std::vector<int64_t> want_counts, got_counts;
    CpuSlots(c, expert, gate, &want_slot, &want_counts);
    DeviceSlots(c, expert, gate, &got_slot, &got_counts);
    EXPECT_EQ(got_slot, want_slot);
    EXPECT_EQ(got_counts, want_counts);
    if (c.capacity > 0 && c.capacity < c.n * c.k / c.E) {
      EXPECT_NE(std::count(want_slot.begin(), want_slot.end(), -1), 0) << "case drops nothing";
    }
  }
}

// Cases 2 and 3 of models/moe/README.md on the device: vanilla and BPR fill of the 3-token example.
TEST(MoeKernels, SeedsCases2And3OnDevice) {
  SKIP_WITHOUT_GPU();
  const std::vector<float> probs = {.4f, 0.f, .2f, .5f, .1f, .4f, .3f, .2f, .6f};
  DeviceArray<float> dp(probs), dgate(6);
  DeviceArray<int> dexpert(6), dslot(6), dorder(3);
  DeviceArray<int64_t> dcounts(3);
  TopKRowsCuda(dp.p, 3, 3, 2, dexpert.p, dgate.p);
  AssignSlotsCuda(dexpert.p, nullptr, 1, 3, 2, 3, 2, dslot.p, dcounts.p);
  EXPECT_EQ(dexpert.Download(), (std::vector<int>{0, 2, 0, 2, 2, 0}));
  EXPECT_EQ(dslot.Download(), (std::vector<int>{0, 1, 1, -1, 0, -1}));
  BatchPrioritizedOrderCuda(dgate.p, 1, 3, 2, dorder.p);
  EXPECT_EQ(dorder.Download(), (std::vector<int>{2, 1, 0}));
  AssignSlotsCuda(dexpert.p, dorder.p, 1, 3, 2, 3, 2, dslot.p, dcounts.p);
  // token 0 -> (e0, 1), e2 dropped; token 1 -> (e0, 0), (e2, 1); token 2 -> (e2, 0), e0 dropped.
  EXPECT_EQ(dslot.Download(), (std::vector<int>{1, -1, 0, 1, 0, -1}));
  EXPECT_EQ(dcounts.Download(), (std::vector<int64_t>{2, 0, 2}));
}

// MoeLayer::BuildSendLayout's block_rows / block_offset.
void CpuSendLayout(const std::vector<int64_t>& counts, int64_t G, int E, int64_t capacity,
                   std::vector<int64_t>* rows, std::vector<int64_t>* offset, int64_t* total) {
  rows->assign(E * G, 0);
  offset->assign(E * G, 0);
  int64_t off = 0;
  for (int e = 0; e < E; ++e)
    for (int64_t g = 0; g < G; ++g) {
      (*rows)[e * G + g] = capacity < 0 ? counts[g * E + e] : capacity;
      (*offset)[e * G + g] = off;
      off += (*rows)[e * G + g];
    }
  *total = off;
}

TEST(MoeKernels, SendLayoutMatchesMoeLayer) {
  SKIP_WITHOUT_GPU();
  for (int64_t G : {1, 3, 300}) {  // 300 * 8 blocks: several scan chunks
    for (int64_t capacity : {int64_t{5}, int64_t{-1}}) {
      const int E = 8;
      SCOPED_TRACE("G=" + std::to_string(G) + " C=" + std::to_string(capacity));
      std::mt19937 gen(G * 10 + (capacity < 0));
      std::vector<int64_t> counts(G * E);
      for (auto& c : counts) c = gen() % 9;
      std::vector<int64_t> want_rows, want_off;
      int64_t want_total = 0;
      CpuSendLayout(counts, G, E, capacity, &want_rows, &want_off, &want_total);
      DeviceArray<int64_t> dcounts(counts), drows(E * G), doff(E * G), dtotal(1);
      drows.Poison();
      doff.Poison();
      dtotal.Poison();
      SendLayoutCuda(dcounts.p, G, E, capacity, drows.p, doff.p, dtotal.p);
      EXPECT_EQ(drows.Download(), want_rows);
      EXPECT_EQ(doff.Download(), want_off);
      EXPECT_EQ(dtotal.Download()[0], want_total);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 5. Dispatch pack, combine, their backward.

struct DispatchCase {
  SlotCase slots;
  int64_t D;
};

void CheckDispatchCombine(const DispatchCase& dc, unsigned seed) {
  const SlotCase& c = dc.slots;
  const int64_t D = dc.D, rows = c.G * c.n, G = c.G;
  const int k = c.k, E = c.E;
  SCOPED_TRACE(Describe(c) + " D=" + std::to_string(D));
  std::vector<int> expert, slot;
  std::vector<float> gate;
  std::vector<int64_t> counts, block_rows, block_offset;
  MakeRouting(c, seed, &expert, &gate);
  CpuSlots(c, expert, gate, &slot, &counts);
  int64_t send_rows = 0;
  CpuSendLayout(counts, G, E, c.capacity, &block_rows, &block_offset, &send_rows);
  auto row_of = [&](int64_t t, int r) -> int64_t {
    const int s = slot[t * k + r];
    return s < 0 ? -1 : block_offset[expert[t * k + r] * G + t / c.n] + s;
  };

  DeviceArray<int> dexpert(expert), dslot(slot), dchoice_row(rows * k), drow_choice(send_rows);
  DeviceArray<float> dgate(gate);
  DeviceArray<int64_t> doffset(block_offset);
  dchoice_row.Poison();
  drow_choice.Poison();
  BuildDispatchMapsCuda(dexpert.p, dslot.p, doffset.p, rows, k, c.n, E, send_rows, dchoice_row.p,
                        drow_choice.p);
  std::vector<int> want_choice_row(rows * k), want_row_choice(send_rows, -1);
  for (int64_t t = 0; t < rows; ++t)
    for (int r = 0; r < k; ++r) {
      const int64_t row = row_of(t, r);
      want_choice_row[t * k + r] = static_cast<int>(row);
      if (row >= 0) want_row_choice[row] = static_cast<int>(t * k + r);
    }
  EXPECT_EQ(dchoice_row.Download(), want_choice_row);
  EXPECT_EQ(drow_choice.Download(), want_row_choice);

  // Pack (MoeLayer::Forward's dispatch_pack loop): copies and zeros, so bit-identical.
  const std::vector<float> x = RandomFloats(rows * D, seed + 1);
  std::vector<float> want_send(send_rows * D, 0.f);
  for (int64_t t = 0; t < rows; ++t)
    for (int r = 0; r < k; ++r) {
      const int64_t row = row_of(t, r);
      if (row >= 0) std::copy(x.begin() + t * D, x.begin() + (t + 1) * D, want_send.begin() + row * D);
    }
  DeviceArray<float> dx(x), dsend(send_rows * D);
  dsend.Poison();
  DispatchPackCuda(dx.p, drow_choice.p, send_rows, k, D, dsend.p);
  EXPECT_EQ(FirstBitMismatch(dsend.Download(), want_send), -1) << "pack";

  // Combine: y_t = sum over kept choices of gate * returned row, in choice order.
  const std::vector<float> returned = RandomFloats(send_rows * D, seed + 2);
  std::vector<float> want_y(rows * D, 0.f);
  std::vector<double> y_scale(rows * D, 0.0);
  for (int64_t t = 0; t < rows; ++t)
    for (int r = 0; r < k; ++r) {
      const int64_t row = row_of(t, r);
      if (row < 0) continue;
      const float w = gate[t * k + r];
      for (int64_t j = 0; j < D; ++j) {
        want_y[t * D + j] += w * returned[row * D + j];
        y_scale[t * D + j] += std::fabs(static_cast<double>(w) * returned[row * D + j]);
      }
    }
  DeviceArray<float> dreturned(returned), dy_out(rows * D);
  dy_out.Poison();
  CombineCuda(dreturned.p, dchoice_row.p, dgate.p, rows, k, D, dy_out.p);
  const std::vector<float> got_y = dy_out.Download();
  EXPECT_LT(WorstRelErr(got_y, ToDouble(want_y), y_scale), 1e-5) << "combine";
  EXPECT_EQ(FirstBitMismatch(got_y, want_y), -1) << "combine: same order, no FMA";

  // Combine backward (MoeLayer::Backward's combine_bwd loop).
  const std::vector<float> dy = RandomFloats(rows * D, seed + 3);
  std::vector<float> want_dret(send_rows * D, 0.f), want_dgate(rows * k, 0.f);
  std::vector<float> dprobs0 = RandomFloats(rows * E, seed + 4);
  std::vector<float> want_dprobs = dprobs0;
  std::vector<double> dgate_scale(rows * k, 0.0), dprobs_scale(rows * E);
  for (int64_t i = 0; i < rows * E; ++i) dprobs_scale[i] = std::fabs(dprobs0[i]);
  for (int64_t t = 0; t < rows; ++t)
    for (int r = 0; r < k; ++r) {
      const int64_t row = row_of(t, r);
      if (row < 0) continue;
      const float w = gate[t * k + r];
      double dg = 0, s = 0;
      for (int64_t j = 0; j < D; ++j) {
        want_dret[row * D + j] = w * dy[t * D + j];
        dg += static_cast<double>(dy[t * D + j]) * returned[row * D + j];
        s += std::fabs(static_cast<double>(dy[t * D + j]) * returned[row * D + j]);
      }
      want_dgate[t * k + r] = static_cast<float>(dg);
      dgate_scale[t * k + r] = s;
      want_dprobs[t * E + expert[t * k + r]] += static_cast<float>(dg);
      dprobs_scale[t * E + expert[t * k + r]] += s;
    }
  DeviceArray<float> ddy(dy), ddret(send_rows * D), ddgate(rows * k), ddprobs(dprobs0);
  ddret.Poison();
  ddgate.Poison();
  CombineBackwardCuda(ddy.p, dreturned.p, dgate.p, dexpert.p, dchoice_row.p, drow_choice.p, rows,
                      k, E, send_rows, D, ddret.p, ddgate.p, ddprobs.p);
  EXPECT_EQ(FirstBitMismatch(ddret.Download(), want_dret), -1) << "d_returned";
  EXPECT_LT(WorstRelErr(ddgate.Download(), ToDouble(want_dgate), dgate_scale), 1e-5) << "dgate";
  EXPECT_LT(WorstRelErr(ddprobs.Download(), ToDouble(want_dprobs), dprobs_scale), 1e-5)
      << "d_probs";

  // Dispatch backward: written, then accumulated onto an existing dx.
  const std::vector<float> d_send = RandomFloats(send_rows * D, seed + 5);
  const std::vector<float> dx0 = RandomFloats(rows * D, seed + 6);
  for (bool accumulate : {false, true}) {
    SCOPED_TRACE(accumulate ? "accumulate" : "write");
    std::vector<float> want_dx = accumulate ? dx0 : std::vector<float>(rows * D, 0.f);
    std::vector<double> dx_scale = accumulate ? Abs(dx0) : std::vector<double>(rows * D, 0.0);
    for (int64_t t = 0; t < rows; ++t)
      for (int r = 0; r < k; ++r) {
        const int64_t row = row_of(t, r);
        if (row < 0) continue;
        for (int64_t j = 0; j < D; ++j) {
          want_dx[t * D + j] += d_send[row * D + j];
          dx_scale[t * D + j] += std::fabs(d_send[row * D + j]);
        }
      }
    DeviceArray<float> dds(d_send), ddx(rows * D);
    if (accumulate) {
      ddx.Upload(dx0);
    } else {
      ddx.Poison();
    }
    DispatchBackwardCuda(dds.p, dchoice_row.p, rows, k, D, ddx.p, accumulate);
    const std::vector<float> got_dx = ddx.Download();
    EXPECT_LT(WorstRelErr(got_dx, ToDouble(want_dx), dx_scale), 1e-5) << "dx";
    EXPECT_EQ(FirstBitMismatch(got_dx, want_dx), -1) << "dx: same order";
  }
}

TEST(MoeKernels, DispatchPackCombineAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  const auto cap = [](int k, int64_t n, double cf, int E) {
    return CapacityPerExpert(k, n, cf, E, CapacityRounding::kCeil);
  };
  const std::vector<DispatchCase> cases = {
      {{3, 200, 8, 2, cap(2, 200, 1.05, 8), false}, 64},  // capacity, float4 path
      {{3, 200, 8, 2, cap(2, 200, 1.05, 8), true}, 30},   // BPR, scalar path (D % 4 != 0)
      {{2, 333, 16, 2, -1, false}, 96},                   // dropless
      {{2, 100, 4, 1, cap(1, 100, 1.0, 4), false}, 7},    // k = 1, odd width
      {{1, 64, 8, 4, cap(4, 64, 0.5, 8), false}, 132},    // heavy dropping, k = 4
  };
  for (size_t i = 0; i < cases.size(); ++i) CheckDispatchCombine(cases[i], 900 + 10 * i);
}

// ---------------------------------------------------------------------------------------------
// 6. Block permutation between src-major and expert-major (moe_layer.cc's PermuteBlocks).


TEST(MoeKernels, PermuteBlocksMatchesCpuAndRoundTrips) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int ep, el;
    int64_t G, D;
    int max_rows;
  };
  // The last case has 8*16*32 = 4096 blocks: 64 KiB of offset tables, past the 48 KiB default.
  for (const Case& c : {Case{4, 2, 3, 8, 5}, Case{4, 2, 3, 7, 5}, Case{1, 1, 1, 16, 9},
                        Case{2, 3, 5, 12, 0}, Case{8, 16, 32, 4, 3}}) {
    SCOPED_TRACE("ep=" + std::to_string(c.ep) + " el=" + std::to_string(c.el) +
                 " G=" + std::to_string(c.G) + " D=" + std::to_string(c.D));
    const int64_t nb = static_cast<int64_t>(c.ep) * c.el * c.G;
    std::mt19937 gen(c.ep * 1000 + c.el * 100 + c.G + c.D);
    std::vector<int64_t> rows(nb);
    for (auto& r : rows) r = gen() % (c.max_rows + 1);  // zeros included (dropless blocks)
    if (c.max_rows == 0) rows[nb / 2] = 3;              // mostly empty blocks
    const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t{0});
    const std::vector<float> src = RandomFloats(total * c.D, 77 + nb);
    std::vector<float> want(total * c.D);
    PermuteBlocks(src.data(), want.data(), c.D, rows, c.ep, c.el, c.G, true);
    DeviceArray<int64_t> drows(rows);
    DeviceArray<float> din(src), dexp(total * c.D), dback(total * c.D);
    dexp.Poison();
    dback.Poison();
    PermuteBlocksCuda(din.p, dexp.p, c.D, drows.p, c.ep, c.el, c.G, total, true);
    EXPECT_EQ(FirstBitMismatch(dexp.Download(), want), -1) << "to expert-major";
    PermuteBlocksCuda(dexp.p, dback.p, c.D, drows.p, c.ep, c.el, c.G, total, false);
    EXPECT_EQ(FirstBitMismatch(dback.Download(), src), -1) << "round trip";
  }
}

// ---------------------------------------------------------------------------------------------
// 7. The router chain end to end: clean logits -> noise -> softmax -> top-k -> BPR -> slots ->
// layout on the device against the same steps of MoeLayer::Route on the CPU. Integer outputs
// must agree exactly; that needs the device softmax to round as the CPU does (same double
// operations in the same order; only exp could differ by a double ulp, and a float rounding flip
// from that at a top-k tie is vanishingly unlikely on random logits).

// The float Box-Muller of the router noise at scale: 2^17 draws over 4 groups (every quadrant and
// radius cell many times), through the noise kernel with clean = 0 and sigma = 1, against
// CounterRng::NormalF32 under the same arithmetic (0 + 1 * z).
TEST(MoeKernels, RouterNoiseDrawsBitIdenticalToCpuAtScale) {
  SKIP_WITHOUT_GPU();
  const int64_t G = 4, n = 4096, first_group = (int64_t{1} << 32) + 9;
  const int E = 8;
  const uint64_t key = MixKey(MixKey(1234, HashString("blocks.1.moe.router_noise")), 99);
  const std::vector<float> zeros(G * n * E, 0.f);
  std::vector<float> want(zeros.size());
  const CounterRng rng(key);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t i = 0; i < n * E; ++i)
      want[g * n * E + i] =
          0.f + 1.f * rng.NormalF32(static_cast<uint64_t>(first_group + g), i);
  DeviceArray<float> dclean(zeros), dnoisy(zeros.size());
  dnoisy.Poison();
  AddRouterNoiseCuda(dclean.p, dnoisy.p, G, n, E, 1.f, key, first_group);
  EXPECT_EQ(FirstBitMismatch(dnoisy.Download(), want), -1) << "NormalF32 draws differ";
}

TEST(MoeKernels, RouterChainMatchesCpuRoute) {
  SKIP_WITHOUT_GPU();
  const SlotCase c{4, 197, 8, 2, CapacityPerExpert(2, 197, 1.05, 8, CapacityRounding::kCeil), true};
  const int64_t rows = c.G * c.n, first_group = 12;
  const float sigma = 1.f / c.E;
  const uint64_t key = MixKey(MixKey(99, HashString("vit.blocks.7.moe.router_noise")), 3);
  const std::vector<float> clean = RandomFloats(rows * c.E, 4242, -0.1f, 0.1f);

  std::vector<float> noisy = clean;
  const CounterRng rng(key);
  for (int64_t g = 0; g < c.G; ++g)
    for (int64_t i = 0; i < c.n * c.E; ++i)
      noisy[g * c.n * c.E + i] += sigma * rng.NormalF32(static_cast<uint64_t>(first_group + g), i);
  std::vector<float> probs(rows * c.E), gate(rows * c.k);
  std::vector<int> expert(rows * c.k), slot;
  SoftmaxRows(noisy.data(), rows, c.E, probs.data());
  TopKRows(probs.data(), rows, c.E, c.k, expert.data(), gate.data());
  std::vector<int64_t> counts, block_rows, block_offset;
  CpuSlots(c, expert, gate, &slot, &counts);
  int64_t send_rows = 0;
  CpuSendLayout(counts, c.G, c.E, c.capacity, &block_rows, &block_offset, &send_rows);

  DeviceArray<float> dlogits(clean), dprobs(rows * c.E), dgate(rows * c.k);
  DeviceArray<int> dexpert(rows * c.k), dorder(rows), dslot(rows * c.k);
  DeviceArray<int64_t> dcounts(c.G * c.E), drows(c.G * c.E), doff(c.G * c.E), dtotal(1);
  dprobs.Poison();
  dgate.Poison();
  dexpert.Poison();
  dslot.Poison();
  dcounts.Poison();
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  AddRouterNoiseCuda(dlogits.p, dlogits.p, c.G, c.n, c.E, sigma, key, first_group, stream);
  SoftmaxRowsCuda(dlogits.p, rows, c.E, dprobs.p, stream);
  TopKRowsCuda(dprobs.p, rows, c.E, c.k, dexpert.p, dgate.p, stream);
  BatchPrioritizedOrderCuda(dgate.p, c.G, c.n, c.k, dorder.p, stream);
  AssignSlotsCuda(dexpert.p, dorder.p, c.G, c.n, c.k, c.E, c.capacity, dslot.p, dcounts.p, stream);
  SendLayoutCuda(dcounts.p, c.G, c.E, c.capacity, drows.p, doff.p, dtotal.p, stream);
  CUDA_CHECK(cudaStreamSynchronize(stream));
  CUDA_CHECK(cudaStreamDestroy(stream));
  EXPECT_EQ(FirstBitMismatch(dlogits.Download(), noisy), -1) << "noisy logits";
  EXPECT_LT(WorstRelErr(dprobs.Download(), ToDouble(probs), Abs(probs)), 1e-5) << "probs";
  EXPECT_EQ(dexpert.Download(), expert);
  EXPECT_EQ(dslot.Download(), slot);
  EXPECT_EQ(dcounts.Download(), counts);
  EXPECT_EQ(drows.Download(), block_rows);
  EXPECT_EQ(doff.Download(), block_offset);
  EXPECT_EQ(dtotal.Download()[0], send_rows);
}

}  // namespace
}  // namespace moe
