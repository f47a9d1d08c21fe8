#include "models/nets/patch_cnn.h"

#include <glog/logging.h>

#include <algorithm>

#include "models/layers/linear.h"
#include "models/layers/mean_pool.h"
#include "models/layers/mlp.h"
#include "models/layers/patchify.h"
#include "models/nets/families.h"
#include "models/nets/vision_transformer.h"

namespace moe {

int64_t PmoeStride(const proto::ModelConfig& model) {
  return model.pmoe().patch_stride() > 0 ? model.pmoe().patch_stride() : model.patch_size();
}

int64_t PmoeGrid(const proto::ModelConfig& model) {
  return (model.image_size() - model.patch_size()) / PmoeStride(model) + 1;
}

int64_t PmoePatchesPerImage(const proto::ModelConfig& model) {
  const int64_t g = PmoeGrid(model);
  return g * g;
}

int PmoeExpertHidden(const proto::ModelConfig& model) {
  if (model.moe().expert_hidden_dim() > 0) return model.moe().expert_hidden_dim();
  return model.pmoe().conv_channels() / model.moe().num_experts();
}

MoeLayerOptions PmoeMoeOptions(const proto::ModelConfig& model) {
  MoeLayerOptions o = MoeOptionsFromConfig(model, model.hidden_dim(), PmoeExpertHidden(model),
                                           PmoePatchesPerImage(model));
  o.top_k = 1;  // unused by PATCH_TOP_L (a patch goes to 0..E experts); 1 keeps the layer's check
  o.expert_activation = model.pmoe().expert_activation() == proto::PmoeConfig::GELU
                            ? MoeLayerOptions::Activation::kGelu
                            : MoeLayerOptions::Activation::kRelu;
  return o;
}

namespace {

// The router phase's fixed readout [E, C] (patch_cnn.h): expert s serves class c when
// s = c (mod min(E, C)); column c averages its experts' pooled scores, so every class has at
// least one router voting for it and every router votes for at least one class.
void SetRouterReadout(Parameter* w, int experts, int classes) {
  const int period = std::min(experts, classes);
  for (int c = 0; c < classes; ++c) {
    int serving = 0;
    for (int s = 0; s < experts; ++s) serving += (s % period == c % period);
    for (int s = 0; s < experts; ++s)
      w->value.at(s * classes + c) = s % period == c % period ? 1.f / serving : 0.f;
  }
}

}  // namespace

PatchCnn::PatchCnn(const proto::ModelConfig& config, Communicator* comm, uint64_t seed)
    : config_(config) {
  const int D = config.hidden_dim();
  const int64_t G = config.pmoe().pool_grid();
  PatchifyOptions patches;
  patches.stride = PmoeStride(config);
  patches.region_grid = G;  // each region's tokens contiguous: the pool is a MeanPoolTokens
  patchify_ = std::make_unique<Patchify>(config.image_size(), config.channels(),
                                         config.patch_size(), patches);
  tokens_ = patchify_->tokens_per_image();
  embed_ = std::make_unique<Linear>("embed", patchify_->patch_dim(), D, seed);
  if (config.use_moe()) {
    CHECK(config.moe().routing() == proto::MoeConfig::PATCH_TOP_L)
        << "family \"pmoe\" routes with PATCH_TOP_L (validate the config first)";
    moe_ = std::make_unique<MoeLayer>("moe", PmoeMoeOptions(config), comm, seed);
    moe_layers_.push_back(moe_.get());
    for (Parameter* p : moe_->Parameters())
      if (p->name.rfind("moe.router", 0) == 0) routers_.push_back(p);
    CHECK_EQ(routers_.size(), 1u) << "pmoe: expected the MoE layer's one router weight [D, E]";
  } else {
    mlp_ = std::make_unique<Mlp>("mlp", D, config.pmoe().conv_channels(), seed);
  }
  regions_ = G * G;
  pool_ = std::make_unique<MeanPoolTokens>(tokens_ / regions_);
  head_ = std::make_unique<Linear>("head", regions_ * D, config.num_classes(), seed);
  if (moe_ && config.pmoe().recipe() == proto::PmoeConfig::ROUTER_THEN_EXPERTS) {
    const int E = moe_->options().num_experts;
    router_pool_ = std::make_unique<MeanPoolTokens>(tokens_);  // all n patches, any pool_grid
    router_view_ = std::make_unique<Linear>("router_view", D, E, seed, /*bias=*/false);
    readout_ = std::make_unique<Linear>("router_readout", E, config.num_classes(), seed,
                                        /*bias=*/false);
    SetRouterReadout(readout_->weight(), E, config.num_classes());
    // Zero router steps: the routers stay at their initial values from the start.
    SetPhase(config.pmoe().router_phase_steps() > 0 ? Phase::kRouters : Phase::kExperts);
  }
}

PatchCnn::~PatchCnn() = default;

void PatchCnn::SetPhase(Phase phase) {
  if (phase == phase_) return;
  phase_ = phase;
  const bool routers_phase = phase == Phase::kRouters;
  for (Parameter* p : Parameters()) p->frozen = routers_phase;  // only the routers learn
  for (Parameter* p : routers_) p->frozen = !routers_phase;
  // What the routers see stays fixed in both phases (patch_cnn.h).
  for (Parameter* p : embed_->Parameters()) p->frozen = true;
  moe_->set_hard_gates(phase == Phase::kExperts);
  LOG(INFO) << "pmoe: "
            << (routers_phase ? "router phase: only the routers train, on their own loss "
                                "(pooled scores, fixed expert-to-class readout)"
                              : "experts-only phase: routers frozen, hard gates; fresh experts "
                                "and head train, embed stays frozen");
}

void PatchCnn::SetMoeContext(const MoeStepContext& ctx) {
  // Only a training step moves the phase: the trainer evaluates with step 0, which must not
  // send a model trained past the router phase back to the router phase.
  if (ctx.training && phase_ != Phase::kJoint)
    SetPhase(ctx.step < config_.pmoe().router_phase_steps() ? Phase::kRouters : Phase::kExperts);
  Net::SetMoeContext(ctx);
}

void PatchCnn::MoveTo(Device d) {
  patchify_->MoveTo(d);
  embed_->MoveTo(d);
  if (moe_) moe_->MoveTo(d);
  if (mlp_) mlp_->MoveTo(d);
  pool_->MoveTo(d);
  head_->MoveTo(d);
  // The view's weight is re-bound to the router before each use, so its own buffers only need
  // to be somewhere; the readout's values must follow the net.
  if (router_view_) router_view_->MoveTo(d);
  if (router_pool_) router_pool_->MoveTo(d);
  if (readout_) readout_->MoveTo(d);
}

Tensor PatchCnn::RouterPhaseForward(const Tensor& h) {
  // Shallow copies: the view computes with, and accumulates into, the router's own tensors.
  Parameter* w = router_view_->weight();
  w->value = routers_[0]->value;
  w->grad = routers_[0]->grad;
  // The scores are linear in the patch, so the mean of the n scores r_{j,s} is the score of the
  // mean patch: pool first, then one [B, D] x [D, E] GEMM.
  return readout_->Forward(router_view_->Forward(router_pool_->Forward(h)));
}

void PatchCnn::RouterPhaseBackward(const Tensor& dlogits) {
  router_view_->Backward(readout_->Backward(dlogits));  // d(pooled h) unused: embed is frozen
  readout_->weight()->grad.Zero();  // the fixed readout's gradient is never used
}

Tensor PatchCnn::Forward(const Tensor& images) {
  Tensor h = embed_->Forward(patchify_->Forward(images));
  if (phase_ == Phase::kRouters) return RouterPhaseForward(h);
  // Per-patch outputs: sum_s gate * E_s(x_j) (0 for patches no expert kept), or the dense Mlp.
  Tensor y = moe_ ? moe_->Forward(h) : mlp_->Forward(h);
  return head_->Forward(Pool(y));
}

Tensor PatchCnn::Pool(const Tensor& y) {
  // [B*n, D] -> region means [B*G*G, D] (region-major tokens, patchify.h) -> [B, G*G*D].
  const Tensor means = pool_->Forward(y);
  return means.Reshape({means.dim(0) / regions_, regions_ * means.dim(1)});
}

Tensor PatchCnn::PoolBackward(const Tensor& dpooled) {
  return pool_->Backward(
      dpooled.Reshape({dpooled.dim(0) * regions_, dpooled.dim(1) / regions_}));
}

void PatchCnn::Backward(const Tensor& dlogits) {
  if (phase_ == Phase::kRouters) {
    RouterPhaseBackward(dlogits);
    return;
  }
  Tensor dy = PoolBackward(head_->Backward(dlogits));
  Tensor dh = moe_ ? moe_->Backward(dy) : mlp_->Backward(dy);
  // embed's weight grads come from its Backward (skipped while it is frozen, so that its grad
  // stays 0 and out of the clipping norm); d(images) is not needed, so Patchify's Backward (a
  // permutation) is skipped.
  if (!embed_->weight()->frozen) embed_->Backward(dh);
}

double PatchCnn::FlopsPerImage() const {
  // Multiply-adds x 2 of the GEMMs that run (gate scaling, pooling and the softmax are O(n D)
  // and left out, as in the ViT's count). pMoE's capacity is exactly l patches per expert per
  // image, so the experts run E * l rows of width h; the dense CNN runs n rows of width m.
  const double n = static_cast<double>(tokens_), D = config_.hidden_dim();
  const double P = static_cast<double>(patchify_->patch_dim());
  // embed (the conv's first half) + head on the G*G region means
  double macs = n * P * D + regions_ * D * config_.num_classes();
  if (moe_) {
    const MoeLayerOptions& o = moe_->options();
    macs += n * D * o.num_experts;                                  // router scores r_{j,s}
    macs += double(o.num_experts) * o.patch_top_l * 2 * D * o.hidden;  // E * l expert rows
  } else {
    macs += n * 2 * D * config_.pmoe().conv_channels();
  }
  return 2 * macs;
}

std::vector<Parameter*> PatchCnn::Parameters() {
  std::vector<Parameter*> ps;
  auto add = [&ps](const std::vector<Parameter*>& v) { ps.insert(ps.end(), v.begin(), v.end()); };
  add(embed_->Parameters());
  add(moe_ ? moe_->Parameters() : mlp_->Parameters());
  add(head_->Parameters());
  return ps;
}

std::unique_ptr<Net> CreatePatchCnn(const proto::TrainConfig& c, Communicator* comm) {
  return std::make_unique<PatchCnn>(c.model(), comm, c.seed());
}

namespace {

// pmoe.patch_stride and pmoe.pool_grid against the patch size and the grid they make (for a
// valid patch size); false when either is unusable.
bool ValidPatchGrid(const proto::TrainConfig& c, std::vector<std::string>* errors) {
  const proto::ModelConfig& m = c.model();
  const int p = m.patch_size(), span = m.image_size() - m.patch_size();
  const int s = m.pmoe().patch_stride(), G = m.pmoe().pool_grid();
  const size_t before = errors->size();
  if (s < 0 || s > p || (s > 0 && span % s != 0))
    errors->push_back(ConfigError(
        "model.pmoe.patch_stride", std::to_string(s),
        "must be 0 (= model.patch_size, non-overlapping) or in [1, model.patch_size=" +
            std::to_string(p) + "] dividing model.image_size - model.patch_size = " +
            std::to_string(span) + " (so that the last patch ends at the image's edge; a larger "
            "stride would skip pixels)"));
  const int64_t g = errors->size() == before ? PmoeGrid(m) : 0;
  if (G < 1 || (g > 0 && g % G != 0))
    errors->push_back(ConfigError(
        "model.pmoe.pool_grid", std::to_string(G),
        "must be >= 1 and divide the patch grid's side g = " + std::to_string(g) +
            " (equal regions of the g x g patches)"));
  if (c.device() == "cuda" && s > 0 && s != p)
    errors->push_back(ConfigError("model.pmoe.patch_stride", std::to_string(s),
                                  "overlapping patches are not supported on the CUDA path yet "
                                  "(device: \"cuda\"); host path only"));
  if (c.device() == "cuda" && G > 1)
    errors->push_back(ConfigError("model.pmoe.pool_grid", std::to_string(G),
                                  "region pooling is not supported on the CUDA path yet "
                                  "(device: \"cuda\"); host path only"));
  return errors->size() == before;
}

}  // namespace

void ValidatePatchCnnConfig(const proto::TrainConfig& c, std::vector<std::string>* errors) {
  auto bad = [errors](const std::string& field, const std::string& value, const std::string& why) {
    errors->push_back(ConfigError(field, value, why));
  };
  auto str = [](auto v) { return std::to_string(v); };
  const proto::ModelConfig& m = c.model();
  const proto::MoeConfig& moe = m.moe();
  const proto::PmoeConfig& pm = m.pmoe();
  // Shapes themselves (patch_size divides image_size, ...) are checked by ValidateTrainConfig.
  const bool shapes_ok = m.patch_size() > 0 && m.image_size() > 0 &&
                         m.image_size() % m.patch_size() == 0 &&
                         ValidPatchGrid(c, errors);
  const int64_t n = shapes_ok ? PmoePatchesPerImage(m) : 0;
  if (pm.conv_channels() <= 0)
    bad("model.pmoe.conv_channels", str(pm.conv_channels()), "must be >= 1");
  if (!m.use_moe()) {
    if (pm.recipe() != proto::PmoeConfig::JOINT)
      bad("model.pmoe.recipe", proto::PmoeConfig::Recipe_Name(pm.recipe()),
          "the dense CNN (model.use_moe=false) has no routers to train first; use JOINT");
    return;
  }
  if (moe.routing() != proto::MoeConfig::PATCH_TOP_L)
    bad("model.moe.routing", proto::MoeConfig::RoutingRule_Name(moe.routing()),
        "family \"pmoe\" routes patches with PATCH_TOP_L");
  if (shapes_ok && (moe.patch_top_l() < 1 || moe.patch_top_l() >= n))
    bad("model.moe.patch_top_l", str(moe.patch_top_l()),
        "must be in [1, n) with n = " + str(n) + " patches per image (l < n is pMoE's saving)");
  if (moe.router_noise_scale() != 0)
    bad("model.moe.router_noise_scale", str(moe.router_noise_scale()),
        "pMoE's routers have no noise: set 0");
  for (auto [name, w] : {std::pair<const char*, float>{"importance_loss_weight", moe.importance_loss_weight()},
                         {"load_loss_weight", moe.load_loss_weight()},
                         {"switch_loss_weight", moe.switch_loss_weight()},
                         {"z_loss_weight", moe.z_loss_weight()}})
    if (w != 0)
      bad(std::string("model.moe.") + name, str(w),
          "pMoE trains without auxiliary losses (each expert takes exactly l patches, so there "
          "is nothing to balance): set 0");
  if (moe.dropless())
    bad("model.moe.dropless", "true", "PATCH_TOP_L fills every slot by construction; set false");
  if (moe.renormalise_gates())
    bad("model.moe.renormalise_gates", "true",
        "PATCH_TOP_L gates are a softmax per expert already; set false");
  if (moe.superclass_loss_weight() != 0)
    bad("model.moe.superclass_loss_weight", str(moe.superclass_loss_weight()),
        "super-class guidance is PER_IMAGE routing (family \"mobile_vmoe\")");
  if (moe.num_experts() > 0 && moe.expert_hidden_dim() == 0 && pm.conv_channels() > 0 &&
      pm.conv_channels() % moe.num_experts() != 0)
    bad("model.pmoe.conv_channels", str(pm.conv_channels()),
        "with model.moe.expert_hidden_dim=0 each expert gets conv_channels / num_experts "
        "filters: must be a multiple of num_experts=" + str(moe.num_experts()));
  if (pm.recipe() == proto::PmoeConfig::ROUTER_THEN_EXPERTS &&
      (pm.router_phase_steps() < 0 || pm.router_phase_steps() >= c.steps()))
    bad("model.pmoe.router_phase_steps", str(pm.router_phase_steps()),
        "must be in [0, steps=" + str(c.steps()) + ") so that the experts-only phase runs");
}

}  // namespace moe
