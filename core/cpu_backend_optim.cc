// CpuBackend (core/cpu_backend.h): the optimizer side of a training step on host tensors.
// Each operation rounded once (no FMA contraction): every clone below gives the same bits.
#pragma GCC optimize("fp-contract=off")
#include <glog/logging.h>

#include <algorithm>

#include "core/cpu_backend.h"

namespace moe {

void CpuBackend::AdamWStep(Tensor* w, const Tensor& g, Tensor* m, Tensor* v,
                           const AdamWStepScalars& s) const {
  AdamWUpdateHost(w->data(), g.data(), m->data(), v->data(), w->numel(), s);
}

namespace {

// The optimizer's passes over every gradient, compiled for AVX-512, AVX2 and the baseline (picked
// once at load time by the CPU). With E = 128 experts these passes over 4.2M expert gradients were
// an eighth of a vmoe_tiny step, the norm's one long chain of dependent double adds most of it.
#define MOE_OPTIM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// sum_k d[k]^2 in double, in kLanes interleaved partial sums (independent chains the CPU overlaps
// and vectorises) combined in a fixed order: the same value for the same tensor on every call and
// every CPU (no contraction: the products round to double exactly, then each add rounds once).
constexpr int kLanes = 16;

MOE_OPTIM_CLONES double SumOfSquares(const float* d, int64_t n) {
  double part[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int j = 0; j < kLanes; ++j) part[j] += static_cast<double>(d[k + j]) * d[k + j];
  for (int j = 0; k < n; ++k, ++j) part[j] += static_cast<double>(d[k]) * d[k];
  for (int width = kLanes / 2; width >= 1; width /= 2)  // pairwise: 8 sums, 4, 2, 1
    for (int j = 0; j < width; ++j) part[j] += part[j + width];
  return part[0];
}

MOE_OPTIM_CLONES void ScaleInPlace(float* d, int64_t n, float s) {
  for (int64_t i = 0; i < n; ++i) d[i] *= s;
}

}  // namespace

std::vector<double> CpuBackend::SquaredNormsByGroup(const std::vector<const Tensor*>& tensors,
                                                    const std::vector<int>& group,
                                                    int groups) const {
  CHECK_EQ(tensors.size(), group.size());
  std::vector<double> sums(groups, 0.0);
  for (size_t i = 0; i < tensors.size(); ++i)
    sums.at(group[i]) += SumOfSquares(tensors[i]->data(), tensors[i]->numel());
  return sums;
}

void CpuBackend::Scale(Tensor* t, float s) const { ScaleInPlace(t->data(), t->numel(), s); }

void CpuBackend::FlattenInto(const std::vector<const Tensor*>& tensors, Tensor* bucket) const {
  int64_t off = 0;
  for (const Tensor* t : tensors) {
    CHECK_LE(off + t->numel(), bucket->numel()) << "gradient bucket too small";
    std::copy(t->data(), t->data() + t->numel(), bucket->data() + off);
    off += t->numel();
  }
}

void CpuBackend::UnflattenFrom(const Tensor& bucket, const std::vector<Tensor*>& tensors) const {
  int64_t off = 0;
  for (Tensor* t : tensors) {
    CHECK_LE(off + t->numel(), bucket.numel()) << "gradient bucket too small";
    std::copy(bucket.data() + off, bucket.data() + off + t->numel(), t->data());
    off += t->numel();
  }
}

}  // namespace moe
