// MoeLinearPair's image-mean router input has ONE definition on both paths: MeanPoolTokens'
// (double sums in token order, one division, rounded to float), which is also what the device
// computes (MeanPoolTokensForwardCuda, checked bit-equal to the layer in tests/gpu). Gates are
// compared exactly between the host and device twins (tests/gpu/conditional_gpu_test.cc), so one
// last-bit difference in a mean can flip a top-k choice or change a gate. Here, on the host: the
// pair's router input must be bit-equal to the layer's mean. (The old host code added
// float(1/T) * x token by token in float: at T = 6 it differed in the last bits from the
// double-sum mean in 51 of these 84 means.)
#include <gtest/gtest.h>

#include <cstring>

#include "core/rng.h"
#include "models/layers/mean_pool.h"
#include "models/moe/moe_linear_pair.h"

namespace moe {
namespace {

Tensor Normal(std::vector<int64_t> shape, uint64_t key) {
  Tensor t(std::move(shape));
  CounterRng rng(key);
  for (int64_t i = 0; i < t.numel(); ++i) t.at(i) = rng.Normal(static_cast<uint64_t>(i));
  return t;
}

TEST(MoeLinearPairImageMean, RouterInputIsTheMeanPoolLayersMeanBitForBit) {
  for (int64_t T : {1, 3, 6, 7, 16}) {
    SCOPED_TRACE("tokens_per_image " + std::to_string(T));
    MoeLinearPairOptions o;
    o.in1 = 12;
    o.out1 = 8;
    o.in2 = 8;
    o.out2 = 4;
    o.num_experts = 5;
    o.top_k = 2;
    o.tokens_per_image = T;
    o.images_per_group = 1;
    o.router_input = MoeLinearPairOptions::RouterInput::kImageMean;
    MoeLinearPair pair("pair", o, 11);
    MoeStepContext ctx;
    ctx.training = false;
    pair.SetStepContext(ctx);
    const int64_t B = 7;
    const Tensor x = Normal({B * T, o.in1}, 1 + T);
    pair.ForwardFirst(x);
    MeanPoolTokens pool(T);
    const Tensor want = pool.Forward(x);
    const Tensor& got = pair.router_input();
    ASSERT_EQ(got.shape(), want.shape());
    int differ = 0;
    for (int64_t i = 0; i < want.numel(); ++i) {
      uint32_t a, b;  // bit patterns: exact equality, -0 vs +0 included
      std::memcpy(&a, &got.data()[i], 4);
      std::memcpy(&b, &want.data()[i], 4);
      differ += a != b;
    }
    EXPECT_EQ(differ, 0) << differ << " of " << want.numel() << " image means differ in bits";
  }
}

}  // namespace
}  // namespace moe
