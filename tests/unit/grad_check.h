// Finite-difference gradient checking shared by every layer test.
//
// The scalar objective is L = sum(y * probe) with a fixed random probe, so dL/dy = probe and the
// analytic gradients come from one Backward call. Central differences in double-accumulated
// float32 need a step around 1e-2..1e-3; tolerances are relative to the gradient's magnitude.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/parameter.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace moe::testing {

inline Tensor RandomTensor(std::vector<int64_t> shape, uint64_t key, float scale = 1.f) {
  Tensor t(std::move(shape));
  CounterRng rng(key);
  for (int64_t i = 0; i < t.numel(); ++i) t.at(i) = scale * rng.Normal(i);
  return t;
}

inline double Dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += static_cast<double>(a.at(i)) * b.at(i);
  return s;
}

struct GradCheckOptions {
  float step = 1e-2f;
  double rel_tol = 2e-2;      // on |analytic - numeric| / max(|analytic|, |numeric|, abs_floor)
  double abs_floor = 1e-3;
  int max_checks_per_tensor = 64;  // evenly spaced elements, so large tensors stay fast
};

// Compares d(objective)/d(target) from `analytic` against central differences of `objective`.
// `objective` must recompute the forward pass from scratch with the current target values.
inline void ExpectGradientsMatch(const std::string& what, Tensor* target, const Tensor& analytic,
                                 const std::function<double()>& objective,
                                 const GradCheckOptions& opt = {}) {
  ASSERT_EQ(target->numel(), analytic.numel()) << what;
  const int64_t n = target->numel();
  const int64_t stride = std::max<int64_t>(1, n / opt.max_checks_per_tensor);
  int failures = 0;
  for (int64_t i = 0; i < n && failures < 5; i += stride) {
    const float saved = target->at(i);
    target->at(i) = saved + opt.step;
    const double up = objective();
    target->at(i) = saved - opt.step;
    const double down = objective();
    target->at(i) = saved;
    const double numeric = (up - down) / (2.0 * opt.step);
    const double a = analytic.at(i);
    const double denom = std::max({std::abs(a), std::abs(numeric), opt.abs_floor});
    if (std::abs(a - numeric) / denom > opt.rel_tol) {
      ++failures;
      ADD_FAILURE() << what << "[" << i << "]: analytic " << a << " vs numeric " << numeric;
    }
  }
}

}  // namespace moe::testing
