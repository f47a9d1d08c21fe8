// The host optimizer's passes over the gradients (core/cpu_backend_optim.cc): the squared norms
// that gradient clipping reads, within their derived rounding bound of an extended-precision
// reference and identical from call to call; the clip's scaling and the zero fill, exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/backend.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace moe {
namespace {

Tensor Gradient(int64_t n, uint64_t key, float scale) {
  Tensor t({n});
  const CounterRng rng(key);
  for (int64_t i = 0; i < n; ++i) t.data()[i] = scale * rng.Normal(i);
  return t;
}

// Every product of two floats is exact in double (24 + 24 bits <= 53), so the only error is in the
// n - 1 additions of non-negative terms: at most (n - 1) u_d of the exact sum (u_d = 2^-53) in any
// order. The long double reference carries its own (n - 1) 2^-64.
double NormBound(int64_t n, long double exact) {
  return static_cast<double>((n - 1) * (std::ldexp(1.0L, -53) + std::ldexp(1.0L, -64)) * exact);
}

TEST(GradientPasses, SquaredNormsByGroupWithinTheirBoundAndRepeatable) {
  // Sizes around the 16-lane blocks, one large; magnitudes far apart so a dropped or doubled
  // element shows above the bound.
  const std::vector<int64_t> sizes = {1, 15, 16, 17, 100003, 33};
  std::vector<Tensor> grads;
  std::vector<const Tensor*> ptrs;
  std::vector<int> group;
  long double exact[2] = {0, 0};
  int64_t count[2] = {0, 0};
  for (size_t i = 0; i < sizes.size(); ++i) {
    grads.push_back(Gradient(sizes[i], 40 + i, i % 2 ? 1e-3f : 3.f));
    group.push_back(static_cast<int>(i % 2));
  }
  for (size_t i = 0; i < grads.size(); ++i) {
    ptrs.push_back(&grads[i]);
    for (int64_t k = 0; k < grads[i].numel(); ++k)
      exact[group[i]] += static_cast<long double>(grads[i].data()[k]) * grads[i].data()[k];
    count[group[i]] += grads[i].numel();
  }
  const Backend& be = BackendFor(Device::kCPU);
  const std::vector<double> sums = be.SquaredNormsByGroup(ptrs, group, 2);
  ASSERT_EQ(sums.size(), 2u);
  for (int g = 0; g < 2; ++g)
    EXPECT_NEAR(sums[g], static_cast<double>(exact[g]), NormBound(count[g], exact[g]))
        << "group " << g;
  EXPECT_EQ(be.SquaredNormsByGroup(ptrs, group, 2), sums);  // same tensors, same bits
}

TEST(GradientPasses, ScaleAndZeroFillAreExact) {
  const Backend& be = BackendFor(Device::kCPU);
  Tensor g = Gradient(1000 + 7, 77, 2.f);
  const std::vector<float> before(g.data(), g.data() + g.numel());
  be.Scale(&g, 0.37f);
  for (int64_t i = 0; i < g.numel(); ++i) ASSERT_EQ(g.data()[i], before[i] * 0.37f) << i;
  be.Fill(g.data(), g.numel(), 0.f);
  for (int64_t i = 0; i < g.numel(); ++i) ASSERT_EQ(g.data()[i], 0.f) << i;
  be.Fill(g.data(), g.numel() - 3, 1.5f);
  for (int64_t i = 0; i < g.numel(); ++i) ASSERT_EQ(g.data()[i], i < g.numel() - 3 ? 1.5f : 0.f);
}

}  // namespace
}  // namespace moe
