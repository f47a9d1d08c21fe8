// Sparse-MLP expert widths: by default (the shipped sparse_mlp_tiny) every expert is a copy of the
// dense Mixer MLP it replaces, as in the paper; the FLOPs-matched form
// (sparse_mlp_flops_matched_tiny) keeps the narrower experts the project trained before. Checked
// on the parameter shapes of the built nets, not on the config fields, so a builder that ignored
// the fields would fail here.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "comm/self_communicator.h"
#include "launcher/config.h"
#include "models/nets/families.h"
#include "models/nets/net.h"

namespace moe {
namespace {

using Shape = std::vector<int64_t>;

proto::TrainConfig LoadShipped(const std::string& name) {
  proto::TrainConfig c;
  std::string err;
  EXPECT_TRUE(LoadTrainConfig(std::string(MOE_EP_SOURCE_DIR) + "/launcher/configs/" + name +
                                  ".pbtxt",
                              "", &c, &err))
      << err;
  return c;
}

// The built net's parameters: name -> shape (experts share a name; all have one shape) and
// name -> how many tensors carry it (E for an expert weight on one rank).
struct BuiltNet {
  std::map<std::string, Shape> shape;
  std::map<std::string, int> count;
  double flops = 0;
};

BuiltNet Build(const proto::TrainConfig& c) {
  SelfCommunicator comm;  // one rank holds all E experts of every MoE layer
  std::unique_ptr<Net> net = CreateMixer(c, &comm);
  BuiltNet b;
  for (Parameter* p : net->Parameters()) {
    b.shape[p->name] = p->value.shape();
    ++b.count[p->name];
  }
  b.flops = net->FlopsPerImage();
  return b;
}

// Sparse blocks of the tiny configs: 4 blocks, the last 2 sparse; S = 16, C = 64, S1 = 32.
constexpr char kMoeS[] = "block2.token_moe.expert.w1";
constexpr char kMoeC[] = "block2.channel_moe.expert.w1";

TEST(MixerWidths, ShippedDefaultExpertsCopyTheDenseMlps) {
  const proto::TrainConfig c = LoadShipped("sparse_mlp_tiny");
  const proto::MixerConfig& mx = c.model().mixer();
  // The default form sets no width: 0 means "as the dense MLP".
  EXPECT_FALSE(mx.has_token_expert_hidden_dim());
  EXPECT_FALSE(mx.has_channel_expert_hidden_dim());
  EXPECT_EQ(c.model().moe().expert_hidden_dim(), 0);

  const BuiltNet dense = Build(LoadShipped("mixer_tiny"));
  const BuiltNet sparse = Build(c);
  const Shape token_fc1 = dense.shape.at("block2.token_mlp.fc1.w");      // [S, D_S]
  const Shape channel_fc1 = dense.shape.at("block2.channel_mlp.fc1.w");  // [C, D_C]
  ASSERT_EQ(token_fc1, (Shape{16, mx.token_mlp_dim()}));
  ASSERT_EQ(channel_fc1, (Shape{64, mx.channel_mlp_dim()}));
  // MoE_S experts: the dense token MLP's hidden width on the re-represented S1 = 2S rows.
  EXPECT_EQ(sparse.shape.at(kMoeS), (Shape{32, token_fc1[1]}));
  EXPECT_EQ(sparse.shape.at("block2.token_moe.expert.w2"), (Shape{token_fc1[1], 32}));
  // MoE_C experts: exactly the dense channel MLP's shapes.
  EXPECT_EQ(sparse.shape.at(kMoeC), channel_fc1);
  EXPECT_EQ(sparse.shape.at("block2.channel_moe.expert.w2"),
            dense.shape.at("block2.channel_mlp.fc2.w"));
  EXPECT_EQ(sparse.count.at(kMoeS), c.model().moe().num_experts());
  EXPECT_EQ(sparse.count.at(kMoeC), c.model().moe().num_experts());
}

TEST(MixerWidths, FlopsMatchedFormKeepsTheNarrowExperts) {
  const proto::TrainConfig paper = LoadShipped("sparse_mlp_tiny");
  const proto::TrainConfig matched = LoadShipped("sparse_mlp_flops_matched_tiny");
  // The two configs are one net but for the two widths.
  proto::TrainConfig stripped = matched;
  stripped.mutable_model()->mutable_mixer()->clear_token_expert_hidden_dim();
  stripped.mutable_model()->mutable_mixer()->clear_channel_expert_hidden_dim();
  EXPECT_EQ(stripped.SerializeAsString(), paper.SerializeAsString());

  const BuiltNet narrow = Build(matched);
  EXPECT_EQ(narrow.shape.at(kMoeS), (Shape{32, 32}));
  EXPECT_EQ(narrow.shape.at(kMoeC), (Shape{64, 64}));
  // Per sparse block the experts' multiply-adds per image shrink by C1 rows x k = 1 x 2 S1 (64 -
  // 32) in MoE_S and S rows x k = 2 x 2 C (128 - 64) in MoE_C; FLOPs = 2 x multiply-adds.
  const double per_block = 32.0 * 1 * 2 * 32 * (64 - 32) + 16.0 * 2 * 2 * 64 * (128 - 64);
  const BuiltNet wide = Build(paper);
  EXPECT_DOUBLE_EQ(wide.flops - narrow.flops, 2 * 2 * per_block);
  // The figures the configs' comments and the README quote (~4.75M, ~3.44M, dense ~3.25M).
  EXPECT_DOUBLE_EQ(wide.flops, 4754688);
  EXPECT_DOUBLE_EQ(narrow.flops, 3443968);
  EXPECT_DOUBLE_EQ(Build(LoadShipped("mixer_tiny")).flops, 3247360);
}

TEST(MixerWidths, BothFormsValidateAndNegativeWidthsAreNamed) {
  for (const char* name : {"sparse_mlp_tiny", "sparse_mlp_flops_matched_tiny"}) {
    const std::vector<std::string> errs = ValidateTrainConfig(LoadShipped(name), 4);
    EXPECT_TRUE(errs.empty()) << name << ": " << (errs.empty() ? "" : errs[0]);
  }
  proto::TrainConfig c = LoadShipped("sparse_mlp_tiny");
  c.mutable_model()->mutable_mixer()->set_token_expert_hidden_dim(-2);
  const std::vector<std::string> errs = ValidateTrainConfig(c, 4);
  ASSERT_EQ(errs.size(), 1u);
  EXPECT_EQ(errs[0].rfind("config error: model.mixer.token_expert_hidden_dim=-2: must be >= 0", 0),
            0u)
      << errs[0];
  EXPECT_NE(errs[0].find("0 = model.mixer.token_mlp_dim"), std::string::npos) << errs[0];
}

}  // namespace
}  // namespace moe
