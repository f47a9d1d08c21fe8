// Gradient clipping through the trainer (TrainingSession::ClipGradients): the reported norm is
// the global norm of the gradients, within its derived rounding bound of an extended-precision
// sum; with a limit below it, every gradient is the unclipped one times
// float(max_norm / (norm + 1e-6)), bit for bit; with the limit above it, nothing changes.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "comm/self_communicator.h"
#include "launcher/training_session.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

using testing::RandomTensor;

proto::TrainConfig TinyVit(float grad_clip_norm) {
  proto::TrainConfig c;
  auto* m = c.mutable_model();
  m->set_family("vit");
  m->set_hidden_dim(16);
  m->set_mlp_dim(32);
  m->set_num_heads(2);
  m->set_num_layers(1);
  c.mutable_data()->set_batch_per_rank(4);
  c.mutable_optimizer()->set_grad_clip_norm(grad_clip_norm);
  c.set_seed(7);
  return c;
}

struct Gradients {
  std::vector<std::vector<float>> values;
  double norm = 0;  // as the session reported it
};

Gradients GradientsOfOneStep(float grad_clip_norm) {
  SelfCommunicator comm;
  TrainingSession session(TinyVit(grad_clip_norm), &comm, nullptr);
  const Tensor images = RandomTensor({4, 784}, 31);
  const StepStats s = session.ComputeGradients(0, images, {3, 7, 1, 9});
  Gradients g;
  g.norm = s.grad_norm;
  for (Parameter* p : session.Parameters())
    g.values.emplace_back(p->grad.data(), p->grad.data() + p->grad.numel());
  return g;
}

// sum of squares in long double, and the element count.
long double SumOfSquares(const Gradients& g, int64_t* count) {
  long double sum = 0;
  *count = 0;
  for (const auto& v : g.values) {
    for (float x : v) sum += static_cast<long double>(x) * x;
    *count += static_cast<int64_t>(v.size());
  }
  return sum;
}

TEST(GradientClipping, NormIsTheGlobalNormAndClippingScalesEveryGradient) {
  const Gradients free = GradientsOfOneStep(0.f);  // 0 disables clipping
  int64_t n = 0;
  const long double exact = SumOfSquares(free, &n);
  ASSERT_GT(exact, 0);
  // Squares of floats are exact in double; the n - 1 adds of non-negative terms err by at most
  // (n - 1) 2^-53 of the sum in any order (the long double reference by (n - 1) 2^-64), and the
  // square root halves a relative error.
  const double want = std::sqrt(static_cast<double>(exact));
  const double bound = want * (0.5 * (n - 1) * (std::ldexp(1.0, -53) + std::ldexp(1.0, -64)) +
                               std::ldexp(1.0, -53));
  EXPECT_NEAR(free.norm, want, bound);

  // A limit below the norm: the same norm is reported, and every gradient is scaled.
  const float limit = static_cast<float>(free.norm / 4);
  const Gradients clipped = GradientsOfOneStep(limit);
  EXPECT_EQ(clipped.norm, free.norm);
  const float scale = static_cast<float>(static_cast<double>(limit) / (free.norm + 1e-6));
  ASSERT_EQ(clipped.values.size(), free.values.size());
  for (size_t p = 0; p < free.values.size(); ++p)
    for (size_t i = 0; i < free.values[p].size(); ++i)
      ASSERT_EQ(clipped.values[p][i], free.values[p][i] * scale) << "parameter " << p << " " << i;
  int64_t m = 0;
  EXPECT_NEAR(std::sqrt(static_cast<double>(SumOfSquares(clipped, &m))), limit, 1e-5 * limit);

  // A limit above the norm: untouched.
  const Gradients loose = GradientsOfOneStep(static_cast<float>(free.norm * 2));
  for (size_t p = 0; p < free.values.size(); ++p) ASSERT_EQ(loose.values[p], free.values[p]);
}

}  // namespace
}  // namespace moe
