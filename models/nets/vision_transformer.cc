#include "models/nets/vision_transformer.h"

#include <glog/logging.h>

#include "models/layers/attention.h"
#include "models/layers/drop_path.h"
#include "models/layers/layer_norm.h"
#include "models/layers/linear.h"
#include "models/layers/mean_pool.h"
#include "models/layers/mlp.h"
#include "models/layers/patch_embed.h"
#include "models/layers/pre_norm_block.h"
#include "models/nets/families.h"
#include "models/moe/routing_rule_registry.h"

namespace moe {

VisionTransformer::VisionTransformer(const proto::ModelConfig& config, Communicator* comm,
                                     uint64_t seed, const MoeOptionsAdjust& adjust_moe)
    : config_(config) {
  const int D = config.hidden_dim();
  const int p = config.patch_size();
  tokens_per_image_ = (config.image_size() / p) * (config.image_size() / p);
  embed_ = std::make_unique<PatchEmbed>("embed", config.image_size(), config.channels(), p, D, seed);
  const std::set<int> moe_blocks = MoeBlockIndices(config);
  for (int i = 0; i < config.num_layers(); ++i) {
    const std::string prefix = "block" + std::to_string(i);
    std::unique_ptr<Layer> mlp;  // Mlp or MoeLayer
    if (moe_blocks.count(i)) {
      MoeLayerOptions o = MoeOptionsFromConfig(config);
      if (adjust_moe) adjust_moe(moe_layers_.size(), &o);
      auto m = std::make_unique<MoeLayer>(prefix + ".moe", o, comm, seed);
      moe_layers_.push_back(m.get());
      mlp = std::move(m);
    } else {
      mlp = std::make_unique<Mlp>(prefix + ".mlp", D, config.mlp_dim(), seed);
    }
    // Stochastic depth: a DropPath ends each branch of a block whose rate is above 0, so a
    // config without it builds exactly the net it always did.
    const float rate = DropPathRateOfBlock(config.drop_path_rate(), i, config.num_layers());
    std::unique_ptr<Layer> attn_drop, mlp_drop;
    if (rate > 0) {
      attn_drop = std::make_unique<DropPath>(rate, 2 * i, &drop_path_context_);
      mlp_drop = std::make_unique<DropPath>(rate, 2 * i + 1, &drop_path_context_);
    }
    blocks_.push_back(std::make_unique<PreNormBlock>(
        std::make_unique<LayerNorm>(prefix + ".ln1", D, seed),
        std::make_unique<MultiHeadSelfAttention>(prefix + ".attn", D, config.num_heads(),
                                                 tokens_per_image_, seed),
        std::make_unique<LayerNorm>(prefix + ".ln2", D, seed), std::move(mlp),
        std::move(attn_drop), std::move(mlp_drop)));
  }
  final_norm_ = std::make_unique<LayerNorm>("final_ln", D, seed);
  pool_ = std::make_unique<MeanPoolTokens>(tokens_per_image_);
  head_ = std::make_unique<Linear>("head", D, config.num_classes(), seed);
}

VisionTransformer::~VisionTransformer() = default;

void VisionTransformer::MoveTo(Device d) {
  embed_->MoveTo(d);
  for (auto& b : blocks_) b->MoveTo(d);
  final_norm_->MoveTo(d);
  pool_->MoveTo(d);
  head_->MoveTo(d);
}

Tensor VisionTransformer::Forward(const Tensor& images) {
  Tensor x = embed_->Forward(images);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    OnBlockInput(static_cast<int>(i), x);
    x = blocks_[i]->Forward(x);
  }
  return head_->Forward(pool_->Forward(final_norm_->Forward(x)));
}

void VisionTransformer::Backward(const Tensor& dlogits) {
  Tensor dx = final_norm_->Backward(pool_->Backward(head_->Backward(dlogits)));
  for (int i = static_cast<int>(blocks_.size()) - 1; i >= 0; --i) {
    dx = blocks_[i]->Backward(dx);
    OnBlockInputGrad(i, &dx);
  }
  embed_->Backward(dx);
}

double VisionTransformer::FlopsPerImage() const {
  // Multiply-adds per image x 2. Per block: attention (qkv + out projections, scores and
  // weighted sum), MLP or MoE (router + k expert MLPs per token; capacity drops not subtracted).
  const double T = tokens_per_image_, D = config_.hidden_dim(), H = config_.mlp_dim();
  const double P = config_.patch_size() * config_.patch_size() * config_.channels();
  double macs = T * P * D;  // patch embedding
  size_t moe_i = 0;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    macs += T * 4 * D * D + 2 * T * T * D;
    const bool is_moe = moe_i < moe_layers_.size() && blocks_[i]->mlp() == moe_layers_[moe_i];
    if (is_moe) {
      const MoeLayerOptions& o = moe_layers_[moe_i++]->options();
      const std::unique_ptr<RoutingRuleImpl> rule = MakeRoutingRule(o.rule);
      const double k = rule->ExpertVisitsPerRow(o);
      const double router = RouterMacsPerImage(rule->router_input(), T, D, o.num_experts);
      macs += router + k * T * 2 * D * o.hidden;
    } else {
      macs += T * 2 * D * H;
    }
  }
  macs += D * config_.num_classes();
  return 2 * macs;
}

std::vector<Parameter*> VisionTransformer::Parameters() {
  std::vector<Parameter*> ps;
  auto add = [&ps](const std::vector<Parameter*>& v) { ps.insert(ps.end(), v.begin(), v.end()); };
  add(embed_->Parameters());
  for (auto& b : blocks_) add(b->Parameters());
  add(final_norm_->Parameters());
  add(head_->Parameters());
  return ps;
}

std::unique_ptr<Net> CreateVit(const proto::TrainConfig& c, Communicator* comm) {
  return std::make_unique<VisionTransformer>(c.model(), comm, c.seed());
}

void ValidateVitConfig(const proto::TrainConfig& c, std::vector<std::string>* errors) {
  const proto::MoeConfig& moe = c.model().moe();
  if (c.model().use_moe() && moe.routing() != proto::MoeConfig::TOKEN_TOP_K &&
      moe.routing() != proto::MoeConfig::EXPERT_CHOICE)
    errors->push_back(ConfigError("model.moe.routing", proto::MoeConfig::RoutingRule_Name(moe.routing()),
                                  "family \"vit\" routes tokens: TOKEN_TOP_K or EXPERT_CHOICE "
                                  "(per-image routing is family \"mobile_vmoe\")"));
}

}  // namespace moe
