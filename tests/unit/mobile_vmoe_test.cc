// Mobile V-MoE (models/nets/mobile_vmoe.h) on one rank (SelfCommunicator): case 10 of
// models/moe/README.md through the whole net, the shared router by hand (one decision for both
// MoE layers, the guidance counted once), the super-class loss value (on one MoE layer, by
// hand) and its gradient (through the net, by finite differences, shared and per-layer routers),
// the super-class file parser's
// errors, the config validator, and the shipped config against its dense baseline.
#include "models/nets/mobile_vmoe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "comm/self_communicator.h"
#include "launcher/config.h"
#include "models/layers/softmax_cross_entropy.h"
#include "models/nets/net_factory.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

using testing::ExpectGradientsMatch;
using testing::GradCheckOptions;
using testing::RandomTensor;

const std::string kSrc = MOE_EP_SOURCE_DIR;
constexpr int kTokens = 16;  // 28x28 images, 7x7 patches

// Fashion-MNIST's E = 4 grouping: tops, trousers + dresses, shoes, bags + boots (any valid map
// serves the tests; this one is the shape the super-class tool produces).
const char* kSuperclasses =
    "# class superclass\n0 0\n1 1\n2 0\n3 1\n4 0\n5 2\n6 0\n7 2\n8 3\n9 3\n";

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

std::string SuperclassFile() { return WriteTemp("mobile_vmoe_superclasses.txt", kSuperclasses); }

// A small Mobile V-MoE: 3 blocks, the last 2 MoE (LAST_BLOCKS), E = 4, k = 1, routing groups of
// 4 images, room for every image (no drops), super-class guidance on.
proto::TrainConfig SmallMobile() {
  proto::TrainConfig c;
  auto* m = c.mutable_model();
  m->set_family("mobile_vmoe");
  m->set_hidden_dim(16);
  m->set_mlp_dim(32);
  m->set_num_heads(2);
  m->set_num_layers(3);
  m->set_use_moe(true);
  auto* moe = m->mutable_moe();
  moe->set_num_experts(4);
  moe->set_top_k(1);
  moe->set_routing(proto::MoeConfig::PER_IMAGE);
  moe->set_placement(proto::MoeConfig::LAST_BLOCKS);
  moe->set_last_n(2);
  moe->set_group_size_images(4);
  moe->set_capacity_factor_train(4.0);
  moe->set_capacity_factor_eval(4.0);
  moe->set_superclass_loss_weight(0.3f);
  moe->set_superclass_file(SuperclassFile());
  moe->set_importance_loss_weight(0.f);  // the paper's loss: classes + guidance only
  moe->set_load_loss_weight(0.f);
  c.mutable_data()->set_batch_per_rank(8);
  c.set_seed(5);
  return c;
}

MoeStepContext TrainingContext(int64_t images) {
  MoeStepContext ctx;
  ctx.training = true;
  ctx.step = 2;
  ctx.num_global_groups = images / 4;
  ctx.image_loss_scale = 1.f / static_cast<float>(images);
  return ctx;
}

std::vector<int> Labels(int n) {
  std::vector<int> l(n);
  for (int i = 0; i < n; ++i) l[i] = (3 * i + 1) % 10;
  return l;
}

// Makes the router logits O(1) so images spread over experts and gates differ (the shared
// router, or every layer's own).
void SharpenRouters(Net* net, float factor) {
  for (Parameter* r : net->Parameters()) {
    if (r->name.find("router.w") == std::string::npos) continue;
    for (int64_t i = 0; i < r->value.numel(); ++i) r->value.at(i) *= factor;
  }
}

// A dense ViT that records each block's input: with the Mobile V-MoE's seed and widths its
// block 0 holds the same parameters (initialised from (seed, name)), so the input of block 1 is
// the Mobile V-MoE's dense-part output.
class BlockInputProbe : public VisionTransformer {
 public:
  using VisionTransformer::VisionTransformer;
  std::map<int, Tensor> inputs;

 protected:
  void OnBlockInput(int block, const Tensor& x) override { inputs[block] = x.Clone(); }
};

TEST(MobileVmoe, BuildsTheLastBlocksAsPerImageMoe) {
  SelfCommunicator comm;
  const proto::TrainConfig c = SmallMobile();
  std::vector<std::string> errors;
  ValidateNetConfig(c, &errors);
  ASSERT_TRUE(errors.empty()) << errors[0];
  auto net = CreateNet(c, &comm);
  ASSERT_EQ(net->moe_layers().size(), 2u);
  EXPECT_EQ(net->moe_layers()[0]->name(), "block1.moe");
  EXPECT_EQ(net->moe_layers()[1]->name(), "block2.moe");
  for (MoeLayer* m : net->moe_layers()) {
    EXPECT_EQ(m->options().rule, RoutingRule::kPerImage);
    EXPECT_EQ(m->options().tokens_per_image, kTokens);
    EXPECT_TRUE(m->options().external_decision);
  }
  // Shared router (the default): only the first layer reports the one guidance term.
  EXPECT_FLOAT_EQ(net->moe_layers()[0]->options().superclass_weight, 0.3f);
  EXPECT_FLOAT_EQ(net->moe_layers()[1]->options().superclass_weight, 0.f);
  auto* mobile = dynamic_cast<MobileVmoe*>(net.get());
  ASSERT_NE(mobile, nullptr);
  EXPECT_TRUE(mobile->shared_router());
  EXPECT_EQ(mobile->class_to_superclass(), (std::vector<int>{0, 1, 0, 1, 0, 2, 0, 2, 3, 3}));
  const std::vector<int> labels = {9, 0, 5, 3};
  BatchInfo info;
  info.labels = &labels;
  net->SetBatchInfo(info);
  EXPECT_EQ(mobile->batch_superclasses(), (std::vector<int>{3, 0, 2, 1}));
}

// Case 10 (models/moe/README.md) through the net: in both MoE layers, every token of an image has
// the same experts and the same gates (k = 1, the paper's setting, and k = 2, its tie).
TEST(MobileVmoe, Case10EveryTokenOfAnImageSharesExpertsAndGates) {
  for (int k : {1, 2}) {
    SelfCommunicator comm;
    proto::TrainConfig c = SmallMobile();
    c.mutable_model()->mutable_moe()->set_top_k(k);
    auto net = CreateNet(c, &comm);
    SharpenRouters(net.get(), 30.f);
    const int B = 8;
    net->SetMoeContext(TrainingContext(B));  // with router noise: still one draw per image
    const std::vector<int> labels = Labels(B);
    BatchInfo info;
    info.labels = &labels;
    net->SetBatchInfo(info);
    net->Forward(RandomTensor({B, 784}, 31));
    for (MoeLayer* m : net->moe_layers()) {
      EXPECT_EQ(m->metrics().dropped, 0) << m->name();
      std::map<int64_t, std::map<int, float>> by_row;
      m->ForEachKeptAssignment([&by_row](int64_t row, int e, float g) { by_row[row][e] = g; });
      ASSERT_EQ(by_row.size(), static_cast<size_t>(B * kTokens)) << m->name();
      std::set<int> experts_used;
      for (int img = 0; img < B; ++img) {
        const auto& first = by_row[img * kTokens];
        EXPECT_EQ(first.size(), static_cast<size_t>(k));
        for (const auto& [e, g] : first) experts_used.insert(e);
        for (int t = 1; t < kTokens; ++t)
          EXPECT_EQ(by_row[img * kTokens + t], first) << m->name() << " image " << img << " token " << t;
      }
      // The check means something only if images actually differ in their experts.
      EXPECT_GE(experts_used.size(), 2u) << m->name();
    }
  }
}

// The shared router by hand (the paper's form): ONE decision per image, the top-k of
// softmax(m W_s) with m the mean token of the dense part's output (block 0's output = block 1's
// input, recorded by a dense probe holding the same parameters, so bit-identical); both MoE
// layers give every token of the image exactly those experts and gates; the guidance is
// 0.3 * (1/B) * sum of the images' CE, counted once (with per-layer routers it would be L times).
TEST(MobileVmoe, SharedRouterDecidesForBothLayersAndGuidesOnce) {
  constexpr int B = 8, D = 16, E = 4;
  for (int k : {1, 2}) {
    SelfCommunicator comm;
    proto::TrainConfig c = SmallMobile();
    c.mutable_model()->mutable_moe()->set_top_k(k);
    c.mutable_model()->mutable_moe()->set_router_noise_scale(0.f);  // clean logits: exact
    auto net = CreateNet(c, &comm);
    SharpenRouters(net.get(), 30.f);
    const Tensor images = RandomTensor({B, 784}, 57);
    net->SetMoeContext(TrainingContext(B));
    const std::vector<int> labels = Labels(B);
    BatchInfo info;
    info.labels = &labels;
    net->SetBatchInfo(info);
    net->Forward(images);
    auto* mobile = dynamic_cast<MobileVmoe*>(net.get());
    ASSERT_NE(mobile, nullptr);

    proto::ModelConfig dense = c.model();
    dense.set_family("vit");
    dense.set_use_moe(false);
    BlockInputProbe probe(dense, &comm, c.seed());
    probe.Forward(images);
    const Tensor& h = probe.inputs.at(1);  // [B * T, D]
    const Parameter* w = nullptr;
    for (Parameter* p : net->Parameters())
      if (p->name == "shared_router.w") w = p;
    ASSERT_NE(w, nullptr);

    const ExternalImageDecision& d = mobile->shared_decision();
    ASSERT_EQ(d.expert.size(), static_cast<size_t>(B * k));
    double want_ce = 0;
    std::set<int> used;
    for (int b = 0; b < B; ++b) {
      double logit[E] = {0, 0, 0, 0}, z = 0, p[E];
      for (int j = 0; j < D; ++j) {
        double m = 0;
        for (int t = 0; t < kTokens; ++t) m += h.at((b * kTokens + t) * D + j);
        for (int e = 0; e < E; ++e) logit[e] += m / kTokens * w->value.at(j * E + e);
      }
      for (int e = 0; e < E; ++e) z += std::exp(logit[e]);
      for (int e = 0; e < E; ++e) p[e] = std::exp(logit[e]) / z;
      want_ce += std::log(z) - logit[mobile->batch_superclasses()[b]];
      std::vector<int> order = {0, 1, 2, 3};  // by probability, ties to the lower id
      std::stable_sort(order.begin(), order.end(), [&p](int a, int c2) { return p[a] > p[c2]; });
      std::map<int, float> want;
      for (int r = 0; r < k; ++r) {
        EXPECT_EQ(d.expert[b * k + r], order[r]) << "k " << k << " image " << b;
        // Float32 logits of 16 products vs double: ~1e-6 relative; gates are <= 1.
        EXPECT_NEAR(d.gate[b * k + r], p[order[r]], 1e-5) << "k " << k << " image " << b;
        want[d.expert[b * k + r]] = d.gate[b * k + r];
        used.insert(order[r]);
      }
      for (MoeLayer* m : net->moe_layers()) {
        std::map<int64_t, std::map<int, float>> by_row;
        m->ForEachKeptAssignment([&by_row](int64_t row, int e, float g) { by_row[row][e] = g; });
        for (int t = 0; t < kTokens; ++t)
          EXPECT_EQ(by_row[b * kTokens + t], want) << m->name() << " image " << b << " token " << t;
      }
    }
    EXPECT_GE(used.size(), 2u) << "the check needs images on different experts";
    double aux = 0, sc = 0;
    for (MoeLayer* m : net->moe_layers()) {
      aux += m->metrics().aux_loss;
      sc += m->metrics().superclass_loss;
    }
    // Same float32-vs-double logits: 1e-5 relative on a sum of 8 CEs.
    EXPECT_NEAR(sc, want_ce, 1e-5 * want_ce) << "k " << k;
    EXPECT_NEAR(aux, 0.3 * want_ce / B, 1e-5 * 0.3 * want_ce / B) << "k " << k;
  }
}

// The super-class loss on one per-image MoE layer, by hand: router input = the image's mean
// token, CE(softmax(mean W), super-class), weighted by superclass_weight * image_loss_scale.
TEST(MobileVmoe, SuperclassLossValueByHand) {
  SelfCommunicator comm;
  MoeLayerOptions o;
  o.dim = 2;
  o.hidden = 3;
  o.num_experts = 3;
  o.top_k = 1;
  o.tokens_per_image = 2;
  o.group_tokens = 4;  // two images per group
  o.rule = RoutingRule::kPerImage;
  o.capacity_factor_train = 3.0;
  o.noise_scale = 0.f;  // clean logits only: the value is exact
  o.importance_weight = 0.f;
  o.load_weight = 0.f;
  o.superclass_weight = 0.3f;
  MoeLayer layer("moe", o, &comm, 1);
  Parameter* router = layer.Parameters()[0];
  ASSERT_EQ(router->value.numel(), 6);  // [D = 2, E = 3]
  const float w[6] = {1.f, 0.f, -1.f, 0.5f, 2.f, 0.f};
  for (int i = 0; i < 6; ++i) router->value.at(i) = w[i];
  // Image 0 tokens (1, 0), (3, 2): mean (2, 1). Image 1 tokens (0, 1), (0, -3): mean (0, -1).
  Tensor x({4, 2});
  const float xs[8] = {1, 0, 3, 2, 0, 1, 0, -3};
  for (int i = 0; i < 8; ++i) x.at(i) = xs[i];
  const std::vector<int> superclass = {2, 0};
  MoeStepContext ctx;
  ctx.training = true;
  ctx.num_global_groups = 1;
  ctx.image_loss_scale = 0.5f;
  ctx.superclass = &superclass;
  layer.SetStepContext(ctx);
  layer.Forward(x);
  auto ce = [&](float m0, float m1, int c) {
    double logit[3], z = 0;
    for (int e = 0; e < 3; ++e) z += std::exp(logit[e] = m0 * w[0 * 3 + e] + m1 * w[1 * 3 + e]);
    return std::log(z) - logit[c];
  };
  // Image 0 logits (2.5, 2, -2): argmax 0, label 2 -> wrong. Image 1 logits (-0.5, -2, 0):
  // argmax 2, label 0 -> wrong.
  const double want = ce(2, 1, 2) + ce(0, -1, 0);
  EXPECT_NEAR(layer.metrics().superclass_loss, want, 1e-5);
  EXPECT_NEAR(layer.metrics().aux_loss, 0.3 * 0.5 * want, 1e-6);
  EXPECT_EQ(layer.metrics().superclass_correct, 0);
  const std::vector<int> right = {0, 2};
  ctx.superclass = &right;
  layer.SetStepContext(ctx);
  layer.Forward(x);
  EXPECT_EQ(layer.metrics().superclass_correct, 2);
  EXPECT_NEAR(layer.metrics().superclass_loss, ce(2, 1, 0) + ce(0, -1, 2), 1e-5);
}

// The guided objective's gradient through the whole net (both per-image MoE layers, the dense
// blocks, the mean-token router input) against central differences. The objective is what the
// trainer minimises: mean class CE + sum of the layers' aux losses (here the super-class term
// only, weighted heavily so a wrong gradient cannot hide).
class MobileVmoeGrad : public ::testing::TestWithParam<bool> {};

TEST_P(MobileVmoeGrad, GuidedObjectiveGradientMatchesFiniteDifferences) {
  const bool shared = GetParam();
  SelfCommunicator comm;
  proto::TrainConfig c = SmallMobile();
  auto* moe = c.mutable_model()->mutable_moe();
  moe->set_shared_router(shared);
  moe->set_superclass_loss_weight(2.f);
  moe->set_importance_loss_weight(0.f);
  moe->set_load_loss_weight(0.f);
  auto net = CreateNet(c, &comm);
  SharpenRouters(net.get(), 10.f);
  const int B = 8;
  const Tensor images = RandomTensor({B, 784}, 41);
  const std::vector<int> labels = Labels(B);
  SoftmaxCrossEntropy loss;
  double superclass_loss = 0;
  auto forward = [&]() {
    net->SetMoeContext(TrainingContext(B));
    BatchInfo info;
    info.labels = &labels;
    net->SetBatchInfo(info);
    const Tensor logits = net->Forward(images);
    double objective = loss.Forward(logits, labels, 1.f / B);
    superclass_loss = 0;
    for (MoeLayer* m : net->moe_layers()) {
      objective += m->metrics().aux_loss;
      superclass_loss += m->metrics().superclass_loss;
    }
    return objective;
  };
  forward();
  double aux = 0;
  for (MoeLayer* m : net->moe_layers()) aux += m->metrics().aux_loss;
  // Every aux term but the super-class one is off: aux = weight * (1 / B) * sum of image CEs
  // (one CE per image with the shared router, one per image and layer without).
  EXPECT_GT(superclass_loss, 0);
  EXPECT_EQ(net->moe_layers()[1]->metrics().superclass_loss > 0, !shared);
  EXPECT_NEAR(aux, 2.0 / B * superclass_loss, 1e-6 * superclass_loss);

  for (Parameter* p : net->Parameters()) p->grad.Zero();
  forward();
  net->Backward(loss.Backward());
  GradCheckOptions opt;
  opt.step = 1e-2f;
  opt.abs_floor = 5e-3;
  opt.max_checks_per_tensor = 6;
  int routers = 0;
  for (Parameter* p : net->Parameters()) {
    const Tensor analytic = p->grad.Clone();
    ExpectGradientsMatch(p->name + (p->is_expert() ? " expert " + std::to_string(p->global_expert_id) : ""),
                         &p->value, analytic, forward, opt);
    routers += p->name.find("router") != std::string::npos;
  }
  EXPECT_EQ(routers, shared ? 1 : 2);
}

INSTANTIATE_TEST_SUITE_P(SharedAndPerLayer, MobileVmoeGrad, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return std::string(i.param ? "SharedRouter" : "PerLayerRouters");
                         });

TEST(MobileVmoeDeathTest, GuidedTrainingForwardNeedsFreshLabels) {
  SelfCommunicator comm;
  auto net = CreateNet(SmallMobile(), &comm);
  net->SetMoeContext(TrainingContext(8));
  EXPECT_DEATH(net->Forward(RandomTensor({8, 784}, 3)), "SetBatchInfo");
}

// Parser errors name the file and the line (or the missing classes), and say what is wrong.
std::string ParseError(const std::string& text, int num_experts = 4) {
  std::istringstream in(text);
  std::vector<int> map;
  std::string err;
  EXPECT_FALSE(ParseSuperclassMap(in, "sc.txt", 10, num_experts, &map, &err)) << text;
  return err;
}

TEST(SuperclassFile, CommentsBlankLinesAndSpacesAreAccepted) {
  std::istringstream in("# header\n\n  0 0   # trailing comment\n1 1\n2 0\n3 1\n4 0\n5 2\n6 0\n"
                        "\t7\t2\n8 3\n9 3");
  std::vector<int> map;
  std::string err;
  ASSERT_TRUE(ParseSuperclassMap(in, "sc.txt", 10, 4, &map, &err)) << err;
  EXPECT_EQ(map, (std::vector<int>{0, 1, 0, 1, 0, 2, 0, 2, 3, 3}));
}

TEST(SuperclassFile, ErrorsNameFileLineAndCause) {
  const std::string ok_tail = "1 1\n2 0\n3 1\n4 0\n5 2\n6 0\n7 2\n8 3\n9 3\n";
  EXPECT_EQ(ParseError("0 0\n# c\n1 x\n"), "sc.txt:3: expected \"class superclass\" (two integers), got \"1 x\"");
  EXPECT_EQ(ParseError("0 0 7\n"), "sc.txt:1: expected \"class superclass\" (two integers), got \"0 0 7\"");
  EXPECT_EQ(ParseError("0 1.5\n"), "sc.txt:1: expected \"class superclass\" (two integers), got \"0 1.5\"");
  EXPECT_EQ(ParseError("0 0\n10 1\n"), "sc.txt:2: class 10 is not in [0, 10)");
  EXPECT_EQ(ParseError("0 0\n" + ok_tail + "0 1\n"), "sc.txt:11: class 0 listed twice (first on line 1)");
  EXPECT_EQ(ParseError("0 4\n" + ok_tail),
            "sc.txt:1: super-class 4 of class 0 is not an expert id in [0, 4) (model.moe.num_experts)");
  EXPECT_EQ(ParseError("0 -1\n" + ok_tail).substr(0, 22), "sc.txt:1: super-class ");
  EXPECT_EQ(ParseError("0 0\n1 1\n2 0\n3 1\n4 0\n5 2\n6 0\n8 3\n"),
            "sc.txt: no super-class for class(es) 7, 9 (every class 0..9 must appear once)");
  std::vector<int> map;
  std::string err;
  EXPECT_FALSE(LoadSuperclassFile("/nonexistent/sc.txt", 10, 4, &map, &err));
  EXPECT_EQ(err, "/nonexistent/sc.txt: cannot open file");
}

std::string Errors(const proto::TrainConfig& c) {
  std::string s;
  for (const auto& e : ValidateTrainConfig(c, 1)) s += e + "\n";
  return s;
}

TEST(MobileVmoeConfig, ValidatorReportsFieldValueAndWhy) {
  EXPECT_EQ(Errors(SmallMobile()), "");
  proto::TrainConfig c = SmallMobile();
  c.mutable_model()->mutable_moe()->set_routing(proto::MoeConfig::TOKEN_TOP_K);
  EXPECT_NE(Errors(c).find("config error: model.moe.routing=TOKEN_TOP_K: family \"mobile_vmoe\" "
                           "routes whole images: PER_IMAGE"),
            std::string::npos) << Errors(c);
  c = SmallMobile();
  c.mutable_model()->mutable_moe()->set_superclass_loss_weight(-0.1f);
  EXPECT_NE(Errors(c).find("config error: model.moe.superclass_loss_weight=-0.1: must be finite and >= 0"),
            std::string::npos) << Errors(c);
  c = SmallMobile();
  c.mutable_model()->mutable_moe()->set_superclass_file("/nonexistent/sc.txt");
  EXPECT_NE(Errors(c).find("config error: model.moe.superclass_file=\"/nonexistent/sc.txt\": "
                           "/nonexistent/sc.txt: cannot open file"),
            std::string::npos) << Errors(c);
  c = SmallMobile();
  c.mutable_model()->mutable_moe()->set_superclass_file("");
  EXPECT_NE(Errors(c).find("config error: model.moe.superclass_file=\"\": super-class guidance"),
            std::string::npos) << Errors(c);
  // Super-class 3 with only 3 experts: the file's line is named (class c is on line c + 2).
  c = SmallMobile();
  c.mutable_model()->mutable_moe()->set_num_experts(3);
  EXPECT_NE(Errors(c).find(":10: super-class 3 of class 8 is not an expert id in [0, 3)"),
            std::string::npos) << Errors(c);
  c = SmallMobile();
  c.mutable_model()->set_use_moe(false);
  EXPECT_NE(Errors(c).find("config error: model.use_moe=false: family \"mobile_vmoe\" is an MoE net"),
            std::string::npos) << Errors(c);
  c = SmallMobile();
  c.mutable_model()->mutable_moe()->set_last_n(4);
  EXPECT_NE(Errors(c).find("config error: model.moe.last_n=4: must be in [1, 3] (blocks of model.num_layers=3)"),
            std::string::npos) << Errors(c);
  // What the shared router (the default) does not do, each refused with the field and why.
  c = SmallMobile();
  c.mutable_model()->mutable_moe()->set_importance_loss_weight(0.005f);
  EXPECT_NE(Errors(c).find("config error: model.moe.importance_loss_weight=0.005000: the shared "
                           "router (model.moe.shared_router) adds only the super-class loss"),
            std::string::npos) << Errors(c);
  c.mutable_model()->mutable_moe()->set_shared_router(false);  // per-layer routers take them
  EXPECT_EQ(Errors(c), "");
  c = SmallMobile();
  c.set_device("cuda");
  EXPECT_NE(Errors(c).find("config error: model.moe.shared_router=true: not supported on the CUDA "
                           "path yet"),
            std::string::npos) << Errors(c);
  c = SmallMobile();
  c.mutable_model()->mutable_moe()->set_renormalise_gates(true);
  EXPECT_NE(Errors(c).find("config error: model.moe.renormalise_gates=true: not with the shared router"),
            std::string::npos) << Errors(c);
  // Unguided (learned) image routing needs no file.
  c = SmallMobile();
  c.mutable_model()->mutable_moe()->set_superclass_loss_weight(0.f);
  c.mutable_model()->mutable_moe()->clear_superclass_file();
  EXPECT_EQ(Errors(c), "");
  // Family "vit" keeps refusing per-image routing.
  c = SmallMobile();
  c.mutable_model()->set_family("vit");
  EXPECT_NE(Errors(c).find("model.moe.routing=PER_IMAGE"), std::string::npos) << Errors(c);
}

TEST(MobileVmoe, UnguidedNetRunsWithoutLabels) {
  SelfCommunicator comm;
  proto::TrainConfig c = SmallMobile();
  c.mutable_model()->mutable_moe()->set_superclass_loss_weight(0.f);
  auto net = CreateNet(c, &comm);
  net->SetMoeContext(TrainingContext(8));
  const Tensor logits = net->Forward(RandomTensor({8, 784}, 3));
  EXPECT_EQ(logits.dim(1), 10);
  for (MoeLayer* m : net->moe_layers()) EXPECT_EQ(m->metrics().superclass_loss, 0);
}

// The shipped config is valid on its 4 ranks with the committed super-class file, and costs what
// its dense baseline costs: per-image routing with k = 1 runs ONE expert MLP of the dense MLP's
// width per token; only the router (a mean over tokens and a D x E product per image) is extra.
TEST(MobileVmoeConfig, ShippedConfigMatchesTheDenseBaselinesFlops) {
  proto::TrainConfig mobile, dense;
  std::string err;
  const std::string file = kSrc + "/launcher/superclasses/fashion_mnist_E4.txt";
  ASSERT_TRUE(LoadTrainConfig(kSrc + "/launcher/configs/mobile_vmoe_tiny.pbtxt",
                              "model { moe { superclass_file: \"" + file + "\" } }", &mobile, &err))
      << err;
  ASSERT_TRUE(LoadTrainConfig(kSrc + "/launcher/configs/vit_tiny.pbtxt", "", &dense, &err)) << err;
  const auto four = ValidateTrainConfig(mobile, 4);
  EXPECT_TRUE(four.empty()) << four[0];
  ResolveWorldSizeFields(4, &mobile);  // one expert per rank on 4 ranks
  EXPECT_EQ(mobile.model().moe().num_experts(), mobile.parallel().ep_size());
  SelfCommunicator comm;
  auto m = CreateNet(mobile, &comm);
  auto d = CreateNet(dense, &comm);
  const double fm = m->FlopsPerImage(), fd = d->FlopsPerImage();
  EXPECT_GT(fm, fd);
  EXPECT_LT(fm, 1.01 * fd) << "mobile " << fm << " vs dense " << fd;
  EXPECT_EQ(m->moe_layers().size(), 2u);
}

}  // namespace
}  // namespace moe
