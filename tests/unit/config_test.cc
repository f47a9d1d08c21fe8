// Config loading and validation: the shipped configs are valid; each bad value is reported with
// its field name and value; the hash that ranks compare changes with any field.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "launcher/config.h"

namespace moe {
namespace {

const std::string kSrc = MOE_EP_SOURCE_DIR;

proto::TrainConfig LoadOk(const std::string& path, const std::string& overrides = "") {
  proto::TrainConfig c;
  std::string err;
  EXPECT_TRUE(LoadTrainConfig(path, overrides, &c, &err)) << err;
  return c;
}

std::string JoinedErrors(const proto::TrainConfig& c, int world) {
  std::string s;
  for (const auto& e : ValidateTrainConfig(c, world)) s += e + "\n";
  return s;
}

// Every config shipped in launcher/configs (found by listing the folder, so a new one is
// covered), on 4 ranks and on 2 (the main job's default on a 2-core machine).
TEST(Config, ShippedConfigsAreValidOnFourAndTwoRanks) {
  int seen = 0;
  for (const auto& entry : std::filesystem::directory_iterator(kSrc + "/launcher/configs")) {
    if (entry.path().extension() != ".pbtxt") continue;
    ++seen;
    const std::string name = entry.path().filename().string();
    auto c = LoadOk(entry.path().string());
    auto* moe = c.mutable_model()->mutable_moe();  // the file is named relative to the repo
    if (!moe->superclass_file().empty())
      moe->set_superclass_file(kSrc + "/" + moe->superclass_file());
    EXPECT_EQ(JoinedErrors(c, 4), "") << name << " on 4 ranks";
    EXPECT_EQ(JoinedErrors(c, 2), "") << name << " on 2 ranks";
  }
  EXPECT_GE(seen, 13);
  EXPECT_TRUE(LoadOk(kSrc + "/launcher/configs/vmoe_tiny.pbtxt").model().use_moe());
  EXPECT_FALSE(LoadOk(kSrc + "/launcher/configs/vit_tiny.pbtxt").model().use_moe());
}

TEST(Config, OverridesMergeOverTheFile) {
  const auto c = LoadOk(kSrc + "/launcher/configs/vmoe_tiny.pbtxt",
                        "steps: 7 model { moe { top_k: 1 } }");
  EXPECT_EQ(c.steps(), 7);
  EXPECT_EQ(c.model().moe().top_k(), 1);
  EXPECT_EQ(c.model().moe().num_experts(), 8);  // untouched fields survive the merge
}

TEST(Config, UnknownFieldIsNamedWithItsLine) {
  const std::string path = ::testing::TempDir() + "/bad.pbtxt";
  std::ofstream(path) << "steps: 3\nmodel { moe { num_expert: 8 } }\n";
  proto::TrainConfig c;
  std::string err;
  EXPECT_FALSE(LoadTrainConfig(path, "", &c, &err));
  EXPECT_NE(err.find("num_expert"), std::string::npos) << err;
  EXPECT_NE(err.find("bad.pbtxt:2"), std::string::npos) << err;
}

TEST(Config, EmptyOrCommentOnlyFileIsRefused) {
  for (const char* text : {"", "# nothing but a comment\n\n   # and another\n"}) {
    const std::string path = ::testing::TempDir() + "/empty.pbtxt";
    std::ofstream(path) << text;
    proto::TrainConfig c;
    std::string err;
    EXPECT_FALSE(LoadTrainConfig(path, "steps: 3", &c, &err)) << "text: " << text;
    EXPECT_NE(err.find("config error: --config=" + path + " sets no fields"), std::string::npos) << err;
  }
}

TEST(Config, MissingFileIsNamed) {
  proto::TrainConfig c;
  std::string err;
  EXPECT_FALSE(LoadTrainConfig("/nonexistent/x.pbtxt", "", &c, &err));
  EXPECT_NE(err.find("/nonexistent/x.pbtxt"), std::string::npos) << err;
}

struct BadCase {
  const char* overrides;
  int world;
  const char* expected;
};

class ConfigBadValue : public ::testing::TestWithParam<BadCase> {};

TEST_P(ConfigBadValue, NamesFieldAndValue) {
  const BadCase b = GetParam();
  const auto c = LoadOk(kSrc + "/launcher/configs/vmoe_tiny.pbtxt", b.overrides);
  const std::string errs = JoinedErrors(c, b.world);
  EXPECT_NE(errs.find(std::string("config error: ") + b.expected), std::string::npos) << "got: " << errs;
  for (const std::string& e : ValidateTrainConfig(c, b.world))
    EXPECT_EQ(e.rfind("config error: ", 0), 0u) << e;
}

INSTANTIATE_TEST_SUITE_P(
    Fields, ConfigBadValue,
    ::testing::Values(
        BadCase{"model { moe { num_experts: 6 } }", 4, "model.moe.num_experts=6"},
        BadCase{"model { moe { top_k: 9 } }", 4, "model.moe.top_k=9"},
        BadCase{"model { moe { top_k: 0 } }", 4, "model.moe.top_k=0"},
        BadCase{"model { moe { capacity_factor_train: 0 } }", 4,
                "model.moe.capacity_factor_train=0"},
        BadCase{"model { moe { capacity_factor_eval: -1 } }", 4,
                "model.moe.capacity_factor_eval=-1"},
        BadCase{"parallel { ep_size: 3 }", 4, "parallel.ep_size=3"},
        BadCase{"parallel { ep_size: -1 }", 4,
                "parallel.ep_size=-1: must be >= 0 (0 = every rank of the job)"},
        BadCase{"parallel { ep_size: 0 }", 3,
                "model.moe.num_experts=8: not divisible by parallel.ep_size=3"},
        BadCase{"parallel { ranks_per_node: -1 }", 4, "parallel.ranks_per_node=-1: must be >= 0"},
        BadCase{"parallel { ranks_per_node: 3 }", 4,
                "parallel.ranks_per_node=3: the world size 4 is not a multiple of it"},
        BadCase{"parallel { dispatcher: PIPELINED pipeline_chunks: 0 }", 4,
                "parallel.pipeline_chunks=0: must be >= 1"},
        BadCase{"model { moe { group_size_images: 5 } }", 4, "model.moe.group_size_images=5"},
        BadCase{"model { patch_size: 5 }", 4, "model.patch_size=5"},
        BadCase{"model { num_heads: 3 }", 4, "model.num_heads=3"},
        BadCase{"data { batch_per_rank: 0 }", 4, "data.batch_per_rank=0"},
        BadCase{"device: 'tpu'", 4, "device=\"tpu\""},
        BadCase{"optimizer { learning_rate: -1 }", 4, "optimizer.learning_rate=-1"},
        BadCase{"steps: 0", 4, "steps=0"},
        // Every other numeric field of proto/moe_ep.proto, one out-of-range value each.
        BadCase{"steps: -3", 4, "steps=-3: must be >= 1"},
        BadCase{"log_every: 0", 4, "log_every=0: must be >= 1"},
        BadCase{"eval_every: -1", 4, "eval_every=-1: must be >= 0"},
        BadCase{"data { eval_images: -1 }", 4, "data.eval_images=-1"},
        BadCase{"model { image_size: 32 }", 4, "model.image_size=32"},
        BadCase{"model { channels: 3 }", 4, "model.channels=3"},
        BadCase{"model { num_classes: 5 }", 4, "model.num_classes=5"},
        BadCase{"model { hidden_dim: 0 }", 4, "model.hidden_dim=0"},
        BadCase{"model { mlp_dim: 0 }", 4, "model.mlp_dim=0"},
        BadCase{"model { num_layers: 0 }", 4, "model.num_layers=0"},
        BadCase{"optimizer { learning_rate: inf }", 4,
                "optimizer.learning_rate=inf: must be finite"},
        BadCase{"optimizer { weight_decay: -1 }", 4,
                "optimizer.weight_decay=-1: must be finite and >= 0"},
        BadCase{"optimizer { learning_rate: 0.5 weight_decay: 2 }", 4,
                "optimizer.weight_decay=2: learning_rate x weight_decay must be < 1"},
        BadCase{"optimizer { beta1: 1 }", 4, "optimizer.beta1=1: must be in [0, 1)"},
        BadCase{"optimizer { beta2: -0.1 }", 4, "optimizer.beta2=-0.1"},
        BadCase{"optimizer { epsilon: 0 }", 4, "optimizer.epsilon=0: must be finite and > 0"},
        BadCase{"optimizer { epsilon: nan }", 4, "optimizer.epsilon=nan"},
        BadCase{"optimizer { warmup_steps: -1 }", 4, "optimizer.warmup_steps=-1"},
        BadCase{"optimizer { min_lr_ratio: -5 }", 4,
                "optimizer.min_lr_ratio=-5: must be in [0, 1]"},
        BadCase{"optimizer { min_lr_ratio: 1.5 }", 4, "optimizer.min_lr_ratio=1.5"},
        BadCase{"optimizer { grad_clip_norm: -1 }", 4,
                "optimizer.grad_clip_norm=-1: must be finite and >= 0"},
        BadCase{"model { moe { num_experts: 0 } }", 4, "model.moe.num_experts=0"},
        BadCase{"model { moe { capacity_factor_train: inf } }", 4,
                "model.moe.capacity_factor_train=inf"},
        BadCase{"model { moe { capacity_factor_eval: nan } }", 4,
                "model.moe.capacity_factor_eval=nan"},
        BadCase{"model { moe { router_noise_scale: -1 } }", 4, "model.moe.router_noise_scale=-1"},
        BadCase{"model { moe { expert_hidden_dim: -1 } }", 4, "model.moe.expert_hidden_dim=-1"},
        BadCase{"model { moe { importance_loss_weight: -1 } }", 4,
                "model.moe.importance_loss_weight=-1"},
        BadCase{"model { moe { load_loss_weight: -1 } }", 4, "model.moe.load_loss_weight=-1"},
        BadCase{"model { moe { switch_loss_weight: -1 } }", 4, "model.moe.switch_loss_weight=-1"},
        BadCase{"model { moe { z_loss_weight: inf } }", 4, "model.moe.z_loss_weight=inf"},
        BadCase{"model { moe { superclass_loss_weight: -1 } }", 4,
                "model.moe.superclass_loss_weight=-1"},
        BadCase{"model { moe { group_size_images: 0 } }", 4, "model.moe.group_size_images=0"},
        BadCase{"model { moe { patch_top_l: 0 } }", 4, "model.moe.patch_top_l=0"},
        BadCase{"model { moe { placement: LAST_N last_n: 3 } }", 4,
                "model.moe.last_n=3: must be in [1, 2]"},
        BadCase{"model { moe { placement: LAST_BLOCKS last_n: 0 } }", 4, "model.moe.last_n=0"},
        BadCase{"model { moe { load_loss_weight: 0.01 router_noise_scale: 0 } }", 4,
                "model.moe.load_loss_weight=0.01: the load loss needs router noise"},
        BadCase{"model { mixer { token_mlp_dim: 0 } }", 4, "model.mixer.token_mlp_dim=0"},
        BadCase{"model { mixer { channel_mlp_dim: 0 } }", 4, "model.mixer.channel_mlp_dim=0"},
        BadCase{"model { mixer { num_sparse_blocks: 5 } }", 4, "model.mixer.num_sparse_blocks=5"},
        BadCase{"model { mixer { token_moe_top_k: 0 } }", 4, "model.mixer.token_moe_top_k=0"},
        BadCase{"model { mixer { channel_moe_top_k: 0 } }", 4, "model.mixer.channel_moe_top_k=0"},
        BadCase{"model { mixer { token_expert_hidden_dim: -1 } }", 4,
                "model.mixer.token_expert_hidden_dim=-1"},
        BadCase{"model { mixer { channel_expert_hidden_dim: -1 } }", 4,
                "model.mixer.channel_expert_hidden_dim=-1"},
        BadCase{"model { pmoe { router_phase_steps: -1 } }", 4, "model.pmoe.router_phase_steps=-1"},
        BadCase{"model { pmoe { conv_channels: 0 } }", 4, "model.pmoe.conv_channels=0"},
        BadCase{"model { conditional { num_superclasses: 1 } }", 4,
                "model.conditional.num_superclasses=1"},
        // Shazeer's learned noise and seed 004's balance loss (models/moe/README.md).
        BadCase{"model { moe { balance_sq_loss_weight: -1 } }", 4,
                "model.moe.balance_sq_loss_weight=-1: must be finite and >= 0"},
        BadCase{"model { moe { balance_sq_loss_weight: inf } }", 4,
                "model.moe.balance_sq_loss_weight=inf"},
        BadCase{"model { moe { balance_sq_loss_weight: 0.1 routing: EXPERT_CHOICE } }", 4,
                "model.moe.balance_sq_loss_weight=0.1: reads k gates per row"},
        BadCase{"model { moe { router_noise: LEARNED_SOFTPLUS load_loss_weight: 0 "
                "routing: EXPERT_CHOICE } }",
                4, "model.moe.router_noise=LEARNED_SOFTPLUS: learned softplus noise is for the "
                   "token top-k rule only"},
        BadCase{"model { moe { router_noise: LEARNED_SOFTPLUS } }", 4,
                "model.moe.load_loss_weight=0.005: the load loss assumes the FIXED noise std"},
        BadCase{"device: 'cuda' model { moe { router_noise: LEARNED_SOFTPLUS load_loss_weight: 0 } }",
                4, "model.moe.router_noise=LEARNED_SOFTPLUS: not supported on the CUDA path yet"},
        BadCase{"device: 'cuda' model { moe { balance_sq_loss_weight: 0.01 } }", 4,
                "model.moe.balance_sq_loss_weight=0.01: not supported on the CUDA path yet"}));

// The generic top-k options are valid where the layer defines them: token top-k on the host.
TEST(Config, ShazeerNoiseAndBalanceSqLossAreValidOnCpu) {
  const auto c = LoadOk(kSrc + "/launcher/configs/vmoe_tiny.pbtxt",
                        "model { moe { router_noise: LEARNED_SOFTPLUS load_loss_weight: 0 "
                        "balance_sq_loss_weight: 0.01 } }");
  EXPECT_EQ(JoinedErrors(c, 4), "");
}

// On the CUDA path HIERARCHICAL takes the machine's nodes with ranks_per_node 0 (the default),
// as on the host; PIPELINED has a device dispatcher too (compute and communication streams).
TEST(Config, CudaDispatchers) {
  const std::string tiny = kSrc + "/launcher/configs/vmoe_tiny.pbtxt";
  for (const char* kind : {"HIERARCHICAL", "PIPELINED"}) {
    const auto c =
        LoadOk(tiny, std::string("device: 'cuda' parallel { dispatcher: ") + kind + " }");
    EXPECT_EQ(JoinedErrors(c, 4).find("parallel."), std::string::npos) << JoinedErrors(c, 4);
  }
}

// A value a family's own check refuses too is reported once.
TEST(Config, OneMessagePerField) {
  const auto c = LoadOk(kSrc + "/launcher/configs/sparse_mlp_tiny.pbtxt",
                        "model { mixer { num_sparse_blocks: 9 } }");
  const std::string errs = JoinedErrors(c, 4);
  size_t n = 0;
  for (size_t at = errs.find("model.mixer.num_sparse_blocks="); at != std::string::npos;
       at = errs.find("model.mixer.num_sparse_blocks=", at + 1))
    ++n;
  EXPECT_EQ(n, 1u) << errs;
}

TEST(Config, HashSeesEveryField) {
  const auto a = LoadOk(kSrc + "/launcher/configs/vmoe_tiny.pbtxt");
  auto b = a;
  EXPECT_EQ(ConfigHash(a), ConfigHash(b));
  b.set_seed(a.seed() + 1);
  EXPECT_NE(ConfigHash(a), ConfigHash(b));
  b = a;
  b.mutable_model()->mutable_moe()->set_capacity_factor_train(1.06f);
  EXPECT_NE(ConfigHash(a), ConfigHash(b));
}

}  // namespace
}  // namespace moe
