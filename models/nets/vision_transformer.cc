#include "models/nets/vision_transformer.h"

#include <glog/logging.h>

#include "models/layers/attention.h"
#include "models/layers/layer_norm.h"
#include "models/layers/linear.h"
#include "models/layers/mean_pool.h"
#include "models/layers/mlp.h"
#include "models/layers/patch_embed.h"

#ifdef MOE_EP_HAS_CUDA
#include "core/kernels/cuda/dense_kernels.h"
#endif

namespace moe {

namespace {
void AddInPlace(Tensor* a, const Tensor& b) {
  CHECK_EQ(a->numel(), b.numel());
  CHECK(a->device() == b.device()) << "residual add across devices";
  if (a->device() == Device::kCUDA) {
#ifdef MOE_EP_HAS_CUDA
    AddInPlaceCuda(a->data(), b.data(), a->numel());  // legacy default stream, like the layers
    return;
#else
    LOG(FATAL) << "a CUDA tensor in a build without the CUDA path";
#endif
  }
  float* x = a->data();
  const float* y = b.data();
  for (int64_t i = 0; i < a->numel(); ++i) x[i] += y[i];
}
}  // namespace

struct VisionTransformer::Block {
  std::unique_ptr<LayerNorm> ln1, ln2;
  std::unique_ptr<MultiHeadSelfAttention> attn;
  std::unique_ptr<Layer> mlp;  // Mlp or MoeLayer
};

MoeLayerOptions MoeOptionsFromConfig(const proto::ModelConfig& model) {
  const proto::MoeConfig& m = model.moe();
  MoeLayerOptions o;
  o.dim = model.hidden_dim();
  o.hidden = m.expert_hidden_dim() > 0 ? m.expert_hidden_dim() : model.mlp_dim();
  o.num_experts = m.num_experts();
  o.top_k = m.top_k();
  const int p = model.patch_size();
  const int64_t tokens = static_cast<int64_t>(model.image_size() / p) * (model.image_size() / p);
  o.group_tokens = tokens * m.group_size_images();
  o.capacity_factor_train = m.capacity_factor_train();
  o.capacity_factor_eval = m.capacity_factor_eval();
  switch (m.capacity_rounding()) {
    case proto::MoeConfig::CEIL: o.rounding = CapacityRounding::kCeil; break;
    case proto::MoeConfig::ROUND: o.rounding = CapacityRounding::kRound; break;
    case proto::MoeConfig::CEIL_MULTIPLE_OF_4: o.rounding = CapacityRounding::kCeilMultipleOf4; break;
  }
  o.batch_prioritized = m.batch_prioritized_routing();
  o.dropless = m.dropless();
  o.noise_scale = m.router_noise_scale();
  o.importance_weight = m.importance_loss_weight();
  o.load_weight = m.load_loss_weight();
  o.switch_weight = m.switch_loss_weight();
  o.z_weight = m.z_loss_weight();
  return o;
}

VisionTransformer::VisionTransformer(const proto::ModelConfig& config, Communicator* comm,
                                     uint64_t seed)
    : config_(config) {
  const int D = config.hidden_dim();
  const int p = config.patch_size();
  tokens_per_image_ = (config.image_size() / p) * (config.image_size() / p);
  embed_ = std::make_unique<PatchEmbed>("embed", config.image_size(), config.channels(), p, D, seed);
  const std::set<int> moe_blocks = MoeBlockIndices(config);
  for (int i = 0; i < config.num_layers(); ++i) {
    const std::string prefix = "block" + std::to_string(i);
    auto b = std::make_unique<Block>();
    b->ln1 = std::make_unique<LayerNorm>(prefix + ".ln1", D, seed);
    b->attn = std::make_unique<MultiHeadSelfAttention>(prefix + ".attn", D, config.num_heads(),
                                                       tokens_per_image_, seed);
    b->ln2 = std::make_unique<LayerNorm>(prefix + ".ln2", D, seed);
    if (moe_blocks.count(i)) {
      auto m = std::make_unique<MoeLayer>(prefix + ".moe", MoeOptionsFromConfig(config), comm, seed);
      moe_layers_.push_back(m.get());
      b->mlp = std::move(m);
    } else {
      b->mlp = std::make_unique<Mlp>(prefix + ".mlp", D, config.mlp_dim(), seed);
    }
    blocks_.push_back(std::move(b));
  }
  final_norm_ = std::make_unique<LayerNorm>("final_ln", D, seed);
  pool_ = std::make_unique<MeanPoolTokens>(tokens_per_image_);
  head_ = std::make_unique<Linear>("head", D, config.num_classes(), seed);
}

VisionTransformer::~VisionTransformer() = default;

void VisionTransformer::SetMoeContext(const MoeStepContext& ctx) {
  for (MoeLayer* m : moe_layers_) m->SetStepContext(ctx);
}

void VisionTransformer::MoveTo(Device d) {
  embed_->MoveTo(d);
  for (auto& b : blocks_) {
    b->ln1->MoveTo(d);
    b->attn->MoveTo(d);
    b->ln2->MoveTo(d);
    b->mlp->MoveTo(d);
  }
  final_norm_->MoveTo(d);
  pool_->MoveTo(d);
  head_->MoveTo(d);
}

Tensor VisionTransformer::Forward(const Tensor& images) {
  Tensor x = embed_->Forward(images);
  for (auto& b : blocks_) {
    Tensor h = b->attn->Forward(b->ln1->Forward(x));
    AddInPlace(&h, x);
    Tensor y = b->mlp->Forward(b->ln2->Forward(h));
    AddInPlace(&y, h);
    x = y;
  }
  return head_->Forward(pool_->Forward(final_norm_->Forward(x)));
}

void VisionTransformer::Backward(const Tensor& dlogits) {
  Tensor dx = final_norm_->Backward(pool_->Backward(head_->Backward(dlogits)));
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
    Block& b = **it;
    // y = h + mlp(ln2(h)): dh = dy + ln2'(mlp'(dy)).
    Tensor dh = b.ln2->Backward(b.mlp->Backward(dx));
    AddInPlace(&dh, dx);
    // h = x + attn(ln1(x)).
    Tensor dxin = b.ln1->Backward(b.attn->Backward(dh));
    AddInPlace(&dxin, dh);
    dx = dxin;
  }
  embed_->Backward(dx);
}

std::vector<Parameter*> VisionTransformer::Parameters() {
  std::vector<Parameter*> ps;
  auto add = [&ps](const std::vector<Parameter*>& v) { ps.insert(ps.end(), v.begin(), v.end()); };
  add(embed_->Parameters());
  for (auto& b : blocks_) {
    add(b->ln1->Parameters());
    add(b->attn->Parameters());
    add(b->ln2->Parameters());
    add(b->mlp->Parameters());
  }
  add(final_norm_->Parameters());
  add(head_->Parameters());
  return ps;
}

}  // namespace moe
