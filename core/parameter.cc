#include "core/parameter.h"

#include <glog/logging.h>

#include "core/rng.h"

namespace moe {

void InitParameter(Parameter* p, InitKind kind, float scale, uint64_t seed) {
  CHECK(p->value.device() == Device::kCPU) << "initialise on the host, then copy to the device";
  uint64_t key = MixKey(MixKey(seed, HashString(p->name)),
                        static_cast<uint64_t>(static_cast<int64_t>(p->global_expert_id)));
  CounterRng rng(key);
  float* v = p->value.data();
  const int64_t n = p->value.numel();
  for (int64_t i = 0; i < n; ++i) {
    switch (kind) {
      case InitKind::kZeros: v[i] = 0.f; break;
      case InitKind::kOnes: v[i] = 1.f; break;
      case InitKind::kNormal: v[i] = scale * rng.Normal(i); break;
      case InitKind::kTruncNormal: {
        // Redraw outside 2 std, with a bounded number of tries keyed on the attempt.
        float z = rng.Normal(i, 0);
        for (uint64_t t = 1; t < 16 && std::abs(z) > 2.f; ++t) z = rng.Normal(i, t);
        v[i] = scale * std::max(-2.f, std::min(2.f, z));
        break;
      }
      case InitKind::kUniformFanIn: v[i] = scale * (2.f * rng.Uniform(i) - 1.f); break;
    }
  }
  if (!p->grad.empty()) p->grad.Zero();
}

Parameter MakeParameter(const std::string& name, std::vector<int64_t> shape, InitKind kind,
                        float scale, uint64_t seed, int global_expert_id) {
  Parameter p;
  p.name = name;
  p.global_expert_id = global_expert_id;
  p.value = Tensor(shape);
  p.grad = Tensor::Zeros(shape);
  InitParameter(&p, kind, scale, seed);
  return p;
}

namespace {
Tensor MovedTo(const Tensor& t, Device d) {
  if (t.empty() || t.device() == d) return t;
  Tensor moved(t.shape(), d);
  moved.CopyFrom(t);
  return moved;
}
}  // namespace

void MoveParameterTo(Parameter* p, Device d) {
  p->value = MovedTo(p->value, d);
  p->grad = MovedTo(p->grad, d);
}

}  // namespace moe
