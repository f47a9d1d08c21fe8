// CpuBackend (core/cpu_backend.h): the optimizer side of a training step on host tensors.
#include <glog/logging.h>

#include <algorithm>

#include "core/cpu_backend.h"

namespace moe {

void CpuBackend::AdamWStep(Tensor* w, const Tensor& g, Tensor* m, Tensor* v,
                           const AdamWStepScalars& s) const {
  AdamWUpdateHost(w->data(), g.data(), m->data(), v->data(), w->numel(), s);
}

std::vector<double> CpuBackend::SquaredNormsByGroup(const std::vector<const Tensor*>& tensors,
                                                    const std::vector<int>& group,
                                                    int groups) const {
  CHECK_EQ(tensors.size(), group.size());
  std::vector<double> sums(groups, 0.0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const float* d = tensors[i]->data();
    double& sum = sums.at(group[i]);
    for (int64_t k = 0; k < tensors[i]->numel(); ++k) sum += double(d[k]) * d[k];
  }
  return sums;
}

void CpuBackend::Scale(Tensor* t, float s) const {
  float* d = t->data();
  for (int64_t i = 0; i < t->numel(); ++i) d[i] *= s;
}

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
