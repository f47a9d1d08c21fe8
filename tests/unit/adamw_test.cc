// AdamW against hand-computed updates, the weight-decay rule, and the warm-up + cosine schedule.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/optim/adamw.h"
#include "core/optim/lr_schedule.h"

namespace moe {
namespace {

Parameter Scalar(const std::string& name, float value) {
  Parameter p;
  p.name = name;
  p.value = Tensor::FromVector({1}, {value});
  p.grad = Tensor::Zeros({1});
  return p;
}

AdamWConfig Config() {
  AdamWConfig c;
  c.lr = 0.1f;
  c.beta1 = 0.9f;
  c.beta2 = 0.999f;
  c.eps = 1e-8f;
  c.weight_decay = 0.01f;
  return c;
}

// p = 1, g1 = 0.5, lr = 0.1, wd = 0.01:
//   decay:  p = 1 - 0.1 * 0.01 * 1 = 0.999
//   m = 0.05, v = 0.00025; m_hat = 0.05 / 0.1 = 0.5; v_hat = 0.00025 / 0.001 = 0.25
//   p = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.899000002
// g2 = -0.25:
//   decay:  p = 0.899000002 * (1 - 0.001) = 0.898101002
//   m = 0.9 * 0.05 - 0.025 = 0.02;  v = 0.999 * 0.00025 + 0.001 * 0.0625 = 0.00031225
//   m_hat = 0.02 / 0.19 = 0.1052632; v_hat = 0.00031225 / 0.001999 = 0.1562031 (sqrt 0.3952254)
//   p = 0.898101002 - 0.1 * 0.1052632 / 0.3952254 = 0.8714673
TEST(AdamW, TwoStepsOnAScalarMatchHandComputation) {
  Parameter w = Scalar("block0.mlp.fc1.w", 1.f);
  AdamW opt(Config());
  w.grad.at(0) = 0.5f;
  opt.Step({&w}, 0.1f);
  EXPECT_EQ(opt.step_count(), 1);
  EXPECT_NEAR(w.value.at(0), 0.899000002, 1e-6);
  w.grad.at(0) = -0.25f;
  opt.Step({&w}, 0.1f);
  EXPECT_NEAR(w.value.at(0), 0.8714672987, 1e-6);
  const AdamWMoments* s = opt.FindMoments(&w);
  ASSERT_NE(s, nullptr);
  EXPECT_NEAR(s->m[0], 0.02, 1e-7);
  EXPECT_NEAR(s->v[0], 0.00031225, 0.00031225 * 1e-4);  // float (1 - beta2) is 1.00005e-3
}

TEST(AdamW, FirstStepMovesEveryElementByLrTimesSign) {
  // Bias correction makes step 1 exactly lr * g / (|g| + eps) whatever the betas.
  Parameter w;
  w.name = "head.w";
  w.value = Tensor::FromVector({4}, {0.f, 0.f, 0.f, 0.f});
  w.grad = Tensor::FromVector({4}, {3.f, -0.001f, 100.f, -7.f});
  AdamWConfig c = Config();
  c.weight_decay = 0.f;
  AdamW opt(c);
  opt.Step({&w}, 0.01f);
  EXPECT_NEAR(w.value.at(0), -0.01f, 1e-7);
  EXPECT_NEAR(w.value.at(1), 0.01f, 1e-6);  // eps matters a little at |g| = 1e-3
  EXPECT_NEAR(w.value.at(2), -0.01f, 1e-7);
  EXPECT_NEAR(w.value.at(3), 0.01f, 1e-7);
}

TEST(AdamW, WeightDecayRule) {
  EXPECT_TRUE(DecayApplies("block0.mlp.fc1.w"));
  EXPECT_TRUE(DecayApplies("block1.mlp.moe.w1"));
  EXPECT_TRUE(DecayApplies("block0.attn.qkv.w"));
  EXPECT_TRUE(DecayApplies("head.w"));
  EXPECT_TRUE(DecayApplies("block1.mlp.moe.router.w"));
  EXPECT_TRUE(DecayApplies("embed.proj.w"));
  EXPECT_FALSE(DecayApplies("head.b"));
  EXPECT_FALSE(DecayApplies("block0.mlp.fc1.bias"));
  EXPECT_FALSE(DecayApplies("block0.ln1.gamma"));
  EXPECT_FALSE(DecayApplies("block0.ln2.beta"));
  EXPECT_FALSE(DecayApplies("final_norm.gamma"));
  EXPECT_FALSE(DecayApplies("embed.pos_embed"));
  // ".b" must be the end of the name, not a prefix of a longer component.
  EXPECT_TRUE(DecayApplies("block0.attn.bproj.w"));

  // With zero gradient the only change is the decay, and only where it applies.
  AdamW opt(Config());
  Parameter w = Scalar("block0.mlp.fc1.w", 2.f);
  Parameter b = Scalar("block0.mlp.fc1.b", 2.f);
  Parameter g = Scalar("block0.ln1.gamma", 2.f);
  opt.Step({&w, &b, &g}, 0.1f);
  EXPECT_FLOAT_EQ(w.value.at(0), 2.f * (1.f - 0.1f * 0.01f));
  EXPECT_FLOAT_EQ(b.value.at(0), 2.f);
  EXPECT_FLOAT_EQ(g.value.at(0), 2.f);
}

TEST(AdamW, StateIsPerParameter) {
  AdamW opt(Config());
  Parameter a = Scalar("a.w", 0.f), b = Scalar("b.w", 0.f);
  a.grad.at(0) = 1.f;
  b.grad.at(0) = -4.f;
  opt.Step({&a, &b}, 0.1f);
  EXPECT_NEAR(opt.FindMoments(&a)->m[0], 0.1, 1e-7);
  EXPECT_NEAR(opt.FindMoments(&b)->m[0], -0.4, 1e-7);
  EXPECT_EQ(opt.FindMoments(nullptr), nullptr);
}

TEST(LrSchedule, WarmupThenCosine) {
  const float peak = 1e-3f, ratio = 0.05f;
  const int total = 1101, warmup = 100;  // cosine spans steps 100..1100 (1000 steps)
  EXPECT_NEAR(WarmupCosineLr(0, total, warmup, peak, ratio), peak / warmup, 1e-9);
  EXPECT_NEAR(WarmupCosineLr(50, total, warmup, peak, ratio), peak * (0.01 + 0.99 * 0.5), 1e-9);
  EXPECT_NEAR(WarmupCosineLr(warmup, total, warmup, peak, ratio), peak, 1e-9);
  // Halfway through the cosine: the mean of peak and min.
  EXPECT_NEAR(WarmupCosineLr(600, total, warmup, peak, ratio), 0.5 * (peak + peak * ratio), 1e-9);
  EXPECT_NEAR(WarmupCosineLr(total - 1, total, warmup, peak, ratio), peak * ratio, 1e-9);
  EXPECT_NEAR(WarmupCosineLr(total + 50, total, warmup, peak, ratio), peak * ratio, 1e-9);
  // Rising through warm-up, falling after it.
  for (int s = 1; s <= warmup; ++s)
    EXPECT_GT(WarmupCosineLr(s, total, warmup, peak, ratio),
              WarmupCosineLr(s - 1, total, warmup, peak, ratio)) << s;
  for (int s = warmup + 1; s < total; ++s)
    EXPECT_LT(WarmupCosineLr(s, total, warmup, peak, ratio),
              WarmupCosineLr(s - 1, total, warmup, peak, ratio)) << s;
}

TEST(LrSchedule, NoWarmupAndDegenerateLengths) {
  EXPECT_NEAR(WarmupCosineLr(0, 11, 0, 1.f, 0.f), 1.f, 1e-7);
  EXPECT_NEAR(WarmupCosineLr(5, 11, 0, 1.f, 0.f), 0.5f, 1e-6);
  EXPECT_NEAR(WarmupCosineLr(10, 11, 0, 1.f, 0.f), 0.f, 1e-7);
  // Warm-up longer than the run: warm-up values, then the end value at the last step.
  EXPECT_NEAR(WarmupCosineLr(0, 5, 10, 1.f, 0.1f), 0.1f, 1e-7);
  EXPECT_NEAR(WarmupCosineLr(4, 5, 10, 1.f, 0.1f), 0.1f, 1e-7);
  EXPECT_NEAR(WarmupCosineLr(0, 1, 0, 1.f, 0.25f), 0.25f, 1e-7);
}

// pMoE's experts-only phase freezes the routers: a frozen parameter keeps its exact value (no
// Adam update, no weight decay, though its name would be decayed) and gets no moments, while
// the parameters stepped with it move; unfreezing lets it move again.
TEST(AdamW, FrozenParameterIsLeftUntouched) {
  AdamW opt(Config());
  Parameter router = Scalar("moe.router.w", 0.75f), expert = Scalar("moe.expert.w1", 0.75f);
  router.frozen = true;
  for (int step = 0; step < 3; ++step) {
    router.grad.at(0) = 2.f;
    expert.grad.at(0) = 2.f;
    opt.Step({&router, &expert}, 0.1f);
    EXPECT_EQ(router.value.at(0), 0.75f) << "step " << step;
    EXPECT_EQ(router.grad.at(0), 2.f) << "step " << step;  // grads are the trainer's to zero
  }
  EXPECT_LT(expert.value.at(0), 0.75f - 0.25f);
  EXPECT_EQ(opt.FindMoments(&router), nullptr);
  router.frozen = false;
  opt.Step({&router, &expert}, 0.1f);
  EXPECT_LT(router.value.at(0), 0.75f);
}

// The SIMD update (AdamWUpdateHost) gives the scalar loop's bits: each operation is correctly
// rounded once either way. The reference is that loop, with volatile stores so that the compiler
// keeps it scalar and in this order; n is no multiple of 16 (the widest clone), so the remainder
// paths run too.
TEST(AdamW, SimdUpdateEqualsTheScalarLoopBitForBit) {
  const int64_t n = 1000 + 3;
  AdamWStepScalars s;
  s.lr = 3e-3f;
  s.beta1 = 0.9f;
  s.beta2 = 0.999f;
  s.eps = 1e-8f;
  s.weight_decay = 0.05f;
  s.step = 7;
  std::vector<float> w(n), g(n), m(n), v(n);
  for (int64_t i = 0; i < n; ++i) {
    w[i] = std::sin(0.37f * i);
    g[i] = std::cos(0.11f * i) * (i % 7 == 0 ? 1e-6f : 1.f);
    m[i] = 0.01f * std::sin(0.5f * i);
    v[i] = 1e-4f * (1.f + std::cos(0.3f * i));
  }
  const std::vector<float> w0 = w, m0 = m, v0 = v;
  AdamWUpdateHost(w.data(), g.data(), m.data(), v.data(), n, s);
  const double t = static_cast<double>(s.step);
  const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(s.beta1), t));
  const float bc2_sqrt =
      static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(s.beta2), t)));
  const float decay = s.lr * s.weight_decay;
  for (int64_t i = 0; i < n; ++i) {
    volatile float mi = s.beta1 * m0[i] + (1.f - s.beta1) * g[i];
    volatile float vi = s.beta2 * v0[i] + (1.f - s.beta2) * g[i] * g[i];
    volatile float m_hat = mi / bc1;
    volatile float denom = std::sqrt(static_cast<float>(vi)) / bc2_sqrt + s.eps;
    volatile float wi = w0[i] - decay * w0[i] - s.lr * m_hat / denom;
    ASSERT_EQ(m[i], mi) << i;
    ASSERT_EQ(v[i], vi) << i;
    ASSERT_EQ(w[i], wi) << i;
  }
}

}  // namespace
}  // namespace moe
