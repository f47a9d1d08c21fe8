// Each operation rounded once (no FMA contraction): see AdamWLoop. Built with -fno-math-errno
// (core/CMakeLists.txt), so that sqrt is one instruction.
#pragma GCC optimize("fp-contract=off")

#include "core/optim/adamw.h"

#include <glog/logging.h>

#include <cmath>

namespace moe {

namespace {
bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool Contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }
}  // namespace

bool DecayApplies(const std::string& name) {
  if (EndsWith(name, ".b") || EndsWith(name, ".bias")) return false;
  if (Contains(name, "norm") || Contains(name, "ln") || Contains(name, "pos_embed")) return false;
  return true;
}

AdamW::AdamW(const AdamWConfig& config) : config_(config) {
  CHECK_GE(config.beta1, 0.f);
  CHECK_LT(config.beta1, 1.f);
  CHECK_GE(config.beta2, 0.f);
  CHECK_LT(config.beta2, 1.f);
  CHECK_GT(config.eps, 0.f);
  CHECK_GE(config.weight_decay, 0.f);
}

AdamWMoments& AdamW::MomentsFor(const Parameter* p) {
  AdamWMoments& s = state_[p];
  const size_t n = static_cast<size_t>(p->value.numel());
  if (s.m.size() != n) {
    CHECK(s.m.empty()) << "parameter " << p->name << " changed size from " << s.m.size()
                       << " to " << n << " between AdamW steps";
    s.m.assign(n, 0.f);
    s.v.assign(n, 0.f);
  }
  return s;
}

const AdamWMoments* AdamW::FindMoments(const Parameter* p) const {
  auto it = state_.find(p);
  return it == state_.end() ? nullptr : &it->second;
}

namespace {

// The update of elements [0, n), one plain loop: every operation (mul, add, div, sqrt) is
// correctly rounded in IEEE float and this file contracts nothing into an FMA, so the clones for
// AVX-512 (16 elements per instruction), AVX2 (8) and the baseline (SSE, 4) give the scalar
// loop's bits; without errno, sqrt is one instruction and the loop vectorises. Picked once at
// load time by the CPU. The optimizer streams 4 arrays per parameter: at E = 128 experts this
// loop was a fifth of a vmoe_tiny step at 4 elements per instruction.
__attribute__((target_clones("avx512f", "avx2", "default"))) void AdamWLoop(
    float* w, const float* g, float* m, float* v, int64_t n, float b1, float b2, float bc1,
    float bc2_sqrt, float eps, float lr, float decay) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = b1 * m[i] + (1.f - b1) * gi;
    const float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi / bc1;
    const float denom = std::sqrt(vi) / bc2_sqrt + eps;
    w[i] = w[i] - decay * w[i] - lr * m_hat / denom;
  }
}

}  // namespace

void AdamWUpdateHost(float* w, const float* g, float* m, float* v, int64_t n,
                     const AdamWStepScalars& s) {
  const double t = static_cast<double>(s.step);
  const float b1 = s.beta1, b2 = s.beta2;
  // Bias corrections folded into the step size and the denominator, computed in double.
  const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(b1), t));
  const float bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(b2), t)));
  AdamWLoop(w, g, m, v, n, b1, b2, bc1, bc2_sqrt, s.eps, s.lr, s.lr * s.weight_decay);
}

void AdamW::Step(const std::vector<Parameter*>& params, float lr) {
  ++step_;
  for (Parameter* p : params) {
    CHECK(p != nullptr);
    if (p->frozen) continue;
    CHECK(p->value.device() == Device::kCPU && p->grad.device() == Device::kCPU)
        << "AdamW::Step runs on host tensors; parameter " << p->name << " is on "
        << DeviceName(p->value.device());
    CHECK_EQ(p->value.numel(), p->grad.numel()) << "parameter " << p->name << " value/grad size";
    AdamWMoments& s = MomentsFor(p);
    AdamWStepScalars scalars;
    scalars.lr = lr;
    scalars.beta1 = config_.beta1;
    scalars.beta2 = config_.beta2;
    scalars.eps = config_.eps;
    scalars.weight_decay = DecayApplies(p->name) ? config_.weight_decay : 0.f;
    scalars.step = step_;
    AdamWUpdateHost(p->value.data(), p->grad.data(), s.m.data(), s.v.data(), p->value.numel(),
                    scalars);
  }
}

}  // namespace moe
