#include "models/nets/conditional_vit.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <tuple>

#include "core/backend.h"
#include "models/layers/attention.h"
#include "models/layers/gelu.h"
#include "models/layers/layer_norm.h"
#include "models/layers/linear.h"
#include "models/layers/mean_pool.h"
#include "models/layers/mlp.h"
#include "models/layers/patch_embed.h"
#include "models/layers/pre_norm_block.h"
#include "models/moe/router_math.h"
#include "models/nets/families.h"
#include "models/nets/moe_placement.h"
#include "models/nets/vision_transformer.h"
#include "models/moe/routing_rule_registry.h"

namespace moe {

using Level = proto::ConditionalConfig;

uint32_t TokenAttributeBits(int task, int modality, bool task_token) {
  CHECK(task == 0 || task == 1) << "task " << task;
  CHECK(modality == 0 || modality == 1) << "modality " << modality;
  return (1u << modality) | (1u << (2 + task)) | (1u << (task_token ? 5 : 4));
}

int64_t ConditionalTokensPerImage(const proto::ModelConfig& model) {
  const int64_t side = model.image_size() / model.patch_size();
  return side * side + (model.conditional().task_token() ? 1 : 0);
}

uint32_t RoutingLevelMask(proto::ConditionalConfig::RoutingLevel level) {
  switch (level) {
    case Level::TOKEN:
    case Level::CONTEXT: return 0;
    case Level::MODALITY: return 0x03;
    case Level::TASK: return 0x0c;
    case Level::ATTRIBUTE: return 0xff;
  }
  return 0;
}

RoutingRule RoutingRuleForLevel(proto::ConditionalConfig::RoutingLevel level) {
  switch (level) {
    case Level::TOKEN: return RoutingRule::kTokenTopK;
    case Level::CONTEXT: return RoutingRule::kPerImage;
    default: return RoutingRule::kAttribute;
  }
}

int ConditionalNumOutputs(const proto::ModelConfig& model) {
  return 10 + model.conditional().num_superclasses();
}

MoeLayerOptions ConditionalMoeOptions(const proto::ModelConfig& model) {
  const int64_t T = ConditionalTokensPerImage(model);
  const int hidden =
      model.moe().expert_hidden_dim() > 0 ? model.moe().expert_hidden_dim() : model.mlp_dim();
  MoeLayerOptions o = MoeOptionsFromConfig(model, model.hidden_dim(), hidden, T);
  o.rule = RoutingRuleForLevel(model.conditional().routing_level());
  // The released top-2 gate has no auxiliary losses: off unless the config sets them.
  if (!model.moe().has_importance_loss_weight()) o.importance_weight = 0.f;
  if (!model.moe().has_load_loss_weight()) o.load_weight = 0.f;
  // Uni-Perceiver-MoE renormalises the top-k gates at every level (kAttribute always does).
  o.renormalise_gates = true;
  if (MakeRoutingRule(o.rule)->router_input() == RouterInputKind::kAttributes)
    o.attribute_dim = kTokenAttributeBits;
  return o;
}

MoeLinearPairOptions ConditionalPairOptions(const proto::ModelConfig& model, int64_t in1,
                                            int64_t out1, int64_t in2, int64_t out2) {
  MoeLinearPairOptions o;
  o.in1 = in1;
  o.out1 = out1;
  o.in2 = in2;
  o.out2 = out2;
  o.num_experts = model.moe().num_experts();
  o.top_k = model.moe().top_k();
  o.tokens_per_image = ConditionalTokensPerImage(model);
  o.images_per_group = model.moe().group_size_images();
  o.noise_scale = model.moe().router_noise_scale();
  using RI = MoeLinearPairOptions::RouterInput;
  switch (RoutingRuleForLevel(model.conditional().routing_level())) {
    case RoutingRule::kTokenTopK: o.router_input = RI::kToken; break;
    case RoutingRule::kPerImage: o.router_input = RI::kImageMean; break;
    default:
      o.router_input = RI::kAttributes;
      o.attribute_dim = kTokenAttributeBits;
  }
  return o;
}

namespace {

// The paper's routed FFN: fc1 routed, fc2 reusing fc1's decision, GELU between; the pair merges
// the chosen experts' weights, y = (sum_g W2_e) GELU((sum_g W1_e) x + b1) + b2.
class MoeFfnPair : public Layer {
 public:
  MoeFfnPair(const std::string& name, const MoeLinearPairOptions& o, uint64_t seed)
      : pair_(name, o, seed) {}
  Tensor Forward(const Tensor& x) override {
    return pair_.ForwardSecond(gelu_.Forward(pair_.ForwardFirst(x)));
  }
  Tensor Backward(const Tensor& dy) override {
    return pair_.BackwardFirst(gelu_.Backward(pair_.BackwardSecond(dy)));
  }
  std::vector<Parameter*> Parameters() override { return pair_.Parameters(); }
  MoeLinearPair* pair() { return &pair_; }

 private:
  MoeLinearPair pair_;
  Gelu gelu_;
};

// Multi-head attention between the two routed projections: qkv [B*T, 3D] ([q | k | v] columns,
// head h owning columns h*dh.. of each part) -> o [B*T, D]; per image and head
// P = softmax(Q K^T / sqrt(dh)), O = P V: the backend's attention core, as in
// MultiHeadSelfAttention, except that the scale is rounded from a float square root (as this
// family has always computed it; the same value as the double one for power-of-two head dims).
class AttentionCore {
 public:
  AttentionCore(int64_t dim, int heads, int64_t tokens)
      : D_(dim), H_(heads), dh_(dim / heads), T_(tokens) {
    CHECK_EQ(dim % heads, 0);
  }

  Tensor Forward(const Tensor& qkv) {
    qkv_ = qkv;
    return BackendFor(qkv.device()).SelfAttentionForward(qkv, Shape(qkv.dim(0) / T_), &probs_);
  }

  Tensor Backward(const Tensor& dout) {
    return BackendFor(dout.device())
        .SelfAttentionBackward(qkv_, probs_, dout, Shape(qkv_.dim(0) / T_));
  }

 private:
  AttentionShape Shape(int64_t batch) const {
    AttentionShape s;
    s.batch = batch;
    s.heads = H_;
    s.tokens = T_;
    s.dim = D_;
    s.scale = 1.f / std::sqrt(static_cast<float>(dh_));
    return s;
  }

  int64_t D_;
  int H_;
  int64_t dh_, T_;
  Tensor qkv_, probs_;
};

// Attention whose qkv and output projections are routed linear experts with one shared decision.
class MoeSelfAttention : public Layer {
 public:
  MoeSelfAttention(const std::string& name, const MoeLinearPairOptions& o, int heads,
                   uint64_t seed)
      : pair_(name, o, seed), core_(o.in1, heads, o.tokens_per_image) {}
  Tensor Forward(const Tensor& x) override {
    return pair_.ForwardSecond(core_.Forward(pair_.ForwardFirst(x)));
  }
  Tensor Backward(const Tensor& dy) override {
    Tensor dx = pair_.BackwardFirst(core_.Backward(pair_.BackwardSecond(dy)));
    // With one decision per image, every token of the image gets the same merged key bias, which
    // cannot change the attention (each query's softmax is shift-invariant): its true gradient
    // is 0 and what the backward leaves there is rounding noise -- which AdamW would normalise
    // into +-lr steps that differ between a sharded and a one-rank run. So it stays at its
    // initial 0 (its gate-gradient term <db, b_k> is then 0 too). Several decisions in an image
    // (per token, or a task token routed apart from the patches) mix different expert biases
    // across its tokens, and there the key bias does matter.
    if (!pair_.one_decision_per_image()) return dx;
    const int64_t D = pair_.options().in1;
    pair_.ZeroBiasGradColumns(0, D, D);
    return dx;
  }
  std::vector<Parameter*> Parameters() override { return pair_.Parameters(); }
  MoeLinearPair* pair() { return &pair_; }

 private:
  MoeLinearPair pair_;
  AttentionCore core_;
};

}  // namespace

ConditionalVit::ConditionalVit(const proto::ModelConfig& config, Communicator* comm,
                               uint64_t seed)
    : config_(config) {
  const int D = config.hidden_dim();
  const int p = config.patch_size();
  dim_ = D;
  patches_ = (config.image_size() / p) * (config.image_size() / p);
  tokens_per_image_ = static_cast<int>(ConditionalTokensPerImage(config));
  embed_ = std::make_unique<PatchEmbed>("embed", config.image_size(), config.channels(), p, D, seed);
  task_embed_ = MakeParameter("embed.task", {2, D}, InitKind::kNormal, 0.02f, seed);
  modality_embed_ = MakeParameter("embed.modality", {2, D}, InitKind::kNormal, 0.02f, seed);
  if (config.conditional().task_token())
    task_token_ = MakeParameter("embed.task_token", {1, D}, InitKind::kNormal, 0.02f, seed);
  const proto::ConditionalConfig& cc = config.conditional();
  const std::set<int> moe_blocks =
      config.use_moe() ? EvenBlockIndices(config.num_layers()) : std::set<int>();
  for (int i = 0; i < config.num_layers(); ++i) {
    const std::string prefix = "block" + std::to_string(i);
    std::unique_ptr<Layer> attn;  // MultiHeadSelfAttention or MoeSelfAttention
    std::unique_ptr<Layer> mlp;   // Mlp or MoeLayer
    const bool moe = moe_blocks.count(i) > 0;
    if (moe && cc.moe_in_attention()) {
      MoeLinearPairOptions o = ConditionalPairOptions(config, D, 3 * D, D, D);
      o.first_name = "qkv";
      o.second_name = "proj";
      auto a = std::make_unique<MoeSelfAttention>(prefix + ".attn.moe", o, config.num_heads(), seed);
      attention_moe_.push_back(a->pair());
      attn = std::move(a);
    } else {
      attn = std::make_unique<MultiHeadSelfAttention>(prefix + ".attn", D, config.num_heads(),
                                                         tokens_per_image_, seed);
    }
    if (moe && cc.ffn_form() == proto::ConditionalConfig::ROUTED_PAIR) {
      const int hidden = config.moe().expert_hidden_dim() > 0 ? config.moe().expert_hidden_dim()
                                                              : config.mlp_dim();
      auto f = std::make_unique<MoeFfnPair>(
          prefix + ".ffn.moe", ConditionalPairOptions(config, D, hidden, hidden, D), seed);
      ffn_moe_.push_back(f->pair());
      mlp = std::move(f);
    } else if (moe) {
      auto m = std::make_unique<MoeLayer>(prefix + ".moe", ConditionalMoeOptions(config), comm, seed);
      moe_layers_.push_back(m.get());
      mlp = std::move(m);
    } else {
      mlp = std::make_unique<Mlp>(prefix + ".mlp", D, config.mlp_dim(), seed);
    }
    moe_attention_.push_back(moe && cc.moe_in_attention());
    blocks_.push_back(std::make_unique<PreNormBlock>(
        std::make_unique<LayerNorm>(prefix + ".ln1", D, seed), std::move(attn),
        std::make_unique<LayerNorm>(prefix + ".ln2", D, seed), std::move(mlp)));
  }
  final_norm_ = std::make_unique<LayerNorm>("final_ln", D, seed);
  pool_ = std::make_unique<MeanPoolTokens>(tokens_per_image_);
  head_ = std::make_unique<Linear>("head", D, ConditionalNumOutputs(config), seed);
}

ConditionalVit::~ConditionalVit() = default;

void ConditionalVit::MoveTo(Device d) {
  // Everything, the routed attention's routers included (MoeLinearPair keeps host copies of its
  // router for the host-side routing itself), so the optimizer sees one device.
  MoveParameterTo(&task_embed_, d);
  MoveParameterTo(&modality_embed_, d);
  CHECK(task_token_.value.empty() || d == Device::kCPU)
      << "conditional.task_token: host path only (the validator refuses it with device cuda)";
  embed_->MoveTo(d);
  for (auto& b : blocks_) b->MoveTo(d);
  final_norm_->MoveTo(d);
  pool_->MoveTo(d);
  head_->MoveTo(d);
}

void ConditionalVit::SetMoeContext(const MoeStepContext& ctx) { ctx_ = ctx; }

void ConditionalVit::SetBatchInfo(const BatchInfo& info) {
  next_task_ = info.task != nullptr ? *info.task : std::vector<int>();
  next_modality_ = info.modality != nullptr ? *info.modality : std::vector<int>();
}

void ConditionalVit::TakeBatchIds(int64_t B) {
  // The ids are consumed: a later Forward without SetBatchInfo means task 0 on the image.
  task_ = next_task_.empty() ? std::vector<int>(B, 0) : next_task_;
  modality_ = next_modality_.empty() ? std::vector<int>(B, 0) : next_modality_;
  next_task_.clear();
  next_modality_.clear();
  CHECK_EQ(static_cast<int64_t>(task_.size()), B) << "one task id per image";
  CHECK_EQ(static_cast<int64_t>(modality_.size()), B) << "one modality id per image";
  for (int64_t i = 0; i < B; ++i) {
    CHECK(task_[i] == 0 || task_[i] == 1) << "task id " << task_[i] << " of image " << i;
    CHECK(modality_[i] == 0 || modality_[i] == 1)
        << "modality id " << modality_[i] << " of image " << i;
  }
}

Tensor ConditionalVit::EmbedTokens(const Tensor& images) {
  Tensor x = embed_->Forward(images);
  if (!task_token_.value.empty()) x = InsertTaskTokens(x);
  // x[t] += E_task[task of t's image] + E_modality[modality of t's image].
  BackendFor(x.device())
      .AddImageEmbeddings(&x, tokens_per_image_, task_embed_.value, task_, modality_embed_.value,
                          modality_);
  return x;
}

void ConditionalVit::SetRoutingContexts(int64_t B) {
  // The routers' attributes: every token of image b carries the bits of (task, modality) and
  // its token type, masked to the routing level's bits.
  const int64_t T = tokens_per_image_;
  const uint32_t mask = RoutingLevelMask(config_.conditional().routing_level());
  if (config_.use_moe() && mask != 0) {
    attributes_ = Tensor::Zeros({B * T, kTokenAttributeBits});
    for (int64_t t = 0; t < B * T; ++t) {
      const bool is_task_token = !task_token_.value.empty() && t % T == 0;
      const uint32_t bits =
          TokenAttributeBits(task_[t / T], modality_[t / T], is_task_token) & mask;
      for (int j = 0; j < kTokenAttributeBits; ++j)
        attributes_.at(t * kTokenAttributeBits + j) = static_cast<float>((bits >> j) & 1u);
    }
  } else {
    attributes_ = Tensor();
  }
  MoeStepContext ctx = ctx_;
  ctx.attributes = attributes_.empty() ? nullptr : &attributes_;
  for (MoeLayer* m : moe_layers_) m->SetStepContext(ctx);
  for (MoeLinearPair* a : attention_moe_) a->SetStepContext(ctx);
  for (MoeLinearPair* f : ffn_moe_) f->SetStepContext(ctx);
}

Tensor ConditionalVit::Forward(const Tensor& images) {
  const int64_t B = images.dim(0);
  TakeBatchIds(B);
  Tensor x = EmbedTokens(images);
  SetRoutingContexts(B);
  for (auto& b : blocks_) x = b->Forward(x);
  return head_->Forward(pool_->Forward(final_norm_->Forward(x)));
}

void ConditionalVit::Backward(const Tensor& dlogits) {
  Tensor dx = final_norm_->Backward(pool_->Backward(head_->Backward(dlogits)));
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) dx = (*it)->Backward(dx);
  BackendFor(dx.device())
      .ImageEmbeddingsBackward(dx, tokens_per_image_, task_, &task_embed_.grad, modality_,
                               &modality_embed_.grad);
  embed_->Backward(task_token_.value.empty() ? dx : TaskTokenBackward(dx));
}

Tensor ConditionalVit::InsertTaskTokens(const Tensor& patches) const {
  const int64_t B = patches.dim(0) / patches_, T = tokens_per_image_, D = dim_;
  Tensor x({B * T, D});
  for (int64_t b = 0; b < B; ++b) {
    std::copy_n(task_token_.value.data(), D, x.data() + b * T * D);
    std::copy_n(patches.data() + b * patches_ * D, patches_ * D, x.data() + (b * T + 1) * D);
  }
  return x;
}

Tensor ConditionalVit::TaskTokenBackward(const Tensor& dx) {
  const int64_t T = tokens_per_image_, D = dim_, B = dx.dim(0) / T;
  Tensor dpatches({B * patches_, D});
  for (int64_t b = 0; b < B; ++b) {
    const float* dtok = dx.data() + b * T * D;
    for (int64_t j = 0; j < D; ++j) task_token_.grad.data()[j] += dtok[j];
    std::copy_n(dtok + D, patches_ * D, dpatches.data() + b * patches_ * D);
  }
  return dpatches;
}

double ConditionalVit::FlopsPerImage() const {
  // Multiply-adds per image x 2, as VisionTransformer counts them. A routed attention block
  // costs its router plus, with merged weights, one merge per image (k expert weights) and the
  // dense projections' GEMMs; a routed FFN costs its router plus k expert MLPs per token.
  const double T = tokens_per_image_, D = dim_, H = config_.mlp_dim();
  const double P = config_.patch_size() * config_.patch_size() * config_.channels();
  double macs = patches_ * P * D + 2 * T * D;  // patch embedding, task + modality embeddings
  size_t moe_i = 0, pair_i = 0;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    macs += T * 4 * D * D + 2 * T * T * D;
    if (moe_attention_[i]) {
      const double E = config_.moe().num_experts(), k = config_.moe().top_k();
      macs += D * E + k * 4 * D * D;  // one router row and one merge per image
    }
    const bool is_moe = moe_i < moe_layers_.size() && blocks_[i]->mlp() == moe_layers_[moe_i];
    const auto* ffn_pair = dynamic_cast<MoeFfnPair*>(blocks_[i]->mlp());
    const bool is_pair = ffn_pair != nullptr;
    if (is_pair) {
      // Router row and one merge of k experts' fc1 and fc2 per image, then the dense GEMMs.
      const MoeLinearPairOptions& o = ffn_moe_.at(pair_i++)->options();
      macs += D * o.num_experts + o.top_k * 2 * D * o.out1 + T * 2 * D * o.out1;
    } else if (is_moe) {
      const MoeLayerOptions& o = moe_layers_[moe_i++]->options();
      macs += T * D * o.num_experts + o.top_k * T * 2 * D * o.hidden;
    } else {
      macs += T * 2 * D * H;
    }
  }
  macs += D * ConditionalNumOutputs(config_);
  return 2 * macs;
}

std::vector<Parameter*> ConditionalVit::Parameters() {
  std::vector<Parameter*> ps;
  auto add = [&ps](const std::vector<Parameter*>& v) { ps.insert(ps.end(), v.begin(), v.end()); };
  add(embed_->Parameters());
  ps.push_back(&task_embed_);
  ps.push_back(&modality_embed_);
  if (!task_token_.value.empty()) ps.push_back(&task_token_);
  for (auto& b : blocks_) add(b->Parameters());
  add(final_norm_->Parameters());
  add(head_->Parameters());
  return ps;
}

std::unique_ptr<Net> CreateConditionalVit(const proto::TrainConfig& c, Communicator* comm) {
  return std::make_unique<ConditionalVit>(c.model(), comm, c.seed());
}

void ValidateConditionalVitConfig(const proto::TrainConfig& c, std::vector<std::string>* errors) {
  const proto::ModelConfig& m = c.model();
  const proto::ConditionalConfig& cc = m.conditional();
  const proto::MoeConfig& moe = m.moe();
  if (cc.num_superclasses() < 2 || cc.num_superclasses() > 10)
    errors->push_back(ConfigError("model.conditional.num_superclasses",
                                  std::to_string(cc.num_superclasses()),
                                  "the coarse task needs 2..10 super-classes"));
  if (cc.task_token() && c.device() == "cuda")
    errors->push_back(ConfigError("model.conditional.task_token", "true",
                                  "not supported on the CUDA path yet"));
  if (!m.use_moe()) return;
  if (moe.has_routing())
    errors->push_back(ConfigError(
        "model.moe.routing", proto::MoeConfig::RoutingRule_Name(moe.routing()),
        "family \"conditional\" takes its rule from model.conditional.routing_level; leave "
        "model.moe.routing unset"));
  if (moe.superclass_loss_weight() != 0)
    errors->push_back(ConfigError("model.moe.superclass_loss_weight",
                                  std::to_string(moe.superclass_loss_weight()),
                                  "super-class router guidance is family \"mobile_vmoe\""));
  // The routed pair has no auxiliary losses (the released top-2 gate has none) and no capacity:
  // refuse weights that would silently do nothing. MOE_LAYER keeps them settable.
  if (cc.ffn_form() == proto::ConditionalConfig::ROUTED_PAIR) {
    using Weight = std::tuple<const char*, bool, float>;
    for (auto [field, set, w] :
         {Weight{"model.moe.importance_loss_weight", moe.has_importance_loss_weight(),
                 moe.importance_loss_weight()},
          Weight{"model.moe.load_loss_weight", moe.has_load_loss_weight(), moe.load_loss_weight()},
          Weight{"model.moe.switch_loss_weight", moe.has_switch_loss_weight(),
                 moe.switch_loss_weight()}})
      if (set && w != 0)
        errors->push_back(ConfigError(field, std::to_string(w),
                                      "the routed-pair FFN (model.conditional.ffn_form: "
                                      "ROUTED_PAIR) has no auxiliary losses; use ffn_form: "
                                      "MOE_LAYER for them"));
  }
  if (moe.attribute_with_token() && RoutingRuleForLevel(cc.routing_level()) != RoutingRule::kAttribute)
    errors->push_back(ConfigError("model.moe.attribute_with_token", "true",
                                  "only the MODALITY, TASK and ATTRIBUTE routing levels read "
                                  "attributes"));
}

}  // namespace moe
