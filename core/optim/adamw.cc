#include "core/optim/adamw.h"

#include <glog/logging.h>

#include <cmath>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

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

void AdamWUpdateHost(float* w, const float* g, float* m, float* v, int64_t n,
                     const AdamWStepScalars& s) {
  const double t = static_cast<double>(s.step);
  const float b1 = s.beta1, b2 = s.beta2, eps = s.eps, lr = s.lr;
  // Bias corrections folded into the step size and the denominator, computed in double.
  const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(b1), t));
  const float bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(b2), t)));
  const float decay = lr * s.weight_decay;
  int64_t i = 0;
#if defined(__SSE2__)
  // Four elements at a time with SSE (x86-64's baseline): the scalar loop's operations in its
  // order, each rounded once (mul, add, div and sqrt are correctly rounded in IEEE float), so the
  // same bits; the compiler does not vectorise the scalar loop itself because std::sqrt may set
  // errno.
  const __m128 vb1 = _mm_set1_ps(b1), vb2 = _mm_set1_ps(b2), vc1 = _mm_set1_ps(1.f - b1),
               vc2 = _mm_set1_ps(1.f - b2), vbc1 = _mm_set1_ps(bc1),
               vbc2 = _mm_set1_ps(bc2_sqrt), veps = _mm_set1_ps(eps),
               vdecay = _mm_set1_ps(decay), vlr = _mm_set1_ps(lr);
  for (; i + 4 <= n; i += 4) {
    const __m128 gi = _mm_loadu_ps(g + i);
    const __m128 mi = _mm_add_ps(_mm_mul_ps(vb1, _mm_loadu_ps(m + i)), _mm_mul_ps(vc1, gi));
    const __m128 vi = _mm_add_ps(_mm_mul_ps(vb2, _mm_loadu_ps(v + i)),
                                 _mm_mul_ps(_mm_mul_ps(vc2, gi), gi));
    _mm_storeu_ps(m + i, mi);
    _mm_storeu_ps(v + i, vi);
    const __m128 m_hat = _mm_div_ps(mi, vbc1);
    const __m128 denom = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(vi), vbc2), veps);
    const __m128 wi = _mm_loadu_ps(w + i);
    _mm_storeu_ps(w + i, _mm_sub_ps(_mm_sub_ps(wi, _mm_mul_ps(vdecay, wi)),
                                    _mm_div_ps(_mm_mul_ps(vlr, m_hat), denom)));
  }
#endif
  for (; i < n; ++i) {
    const float gi = g[i];
    m[i] = b1 * m[i] + (1.f - b1) * gi;
    v[i] = b2 * v[i] + (1.f - b2) * gi * gi;
    const float m_hat = m[i] / bc1;
    const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
    w[i] = w[i] - decay * w[i] - lr * m_hat / denom;
  }
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
