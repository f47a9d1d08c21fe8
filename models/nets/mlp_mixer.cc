#include "models/nets/mlp_mixer.h"

#include <glog/logging.h>

#include "models/layers/drop_path.h"
#include "models/layers/gelu.h"
#include "models/layers/layer_norm.h"
#include "models/layers/linear.h"
#include "models/layers/mean_pool.h"
#include "models/layers/mlp.h"
#include "models/layers/patch_embed.h"
#include "models/layers/residual.h"
#include "models/layers/transpose_tokens.h"
#include "models/nets/families.h"
#include "models/nets/vision_transformer.h"
#include "models/moe/routing_rule_registry.h"

namespace moe {

namespace {

using Branch = std::vector<std::unique_ptr<Layer>>;

// Expert hidden width: the per-layer mixer field, else moe.expert_hidden_dim, else the dense
// one, which makes each expert a copy of the MLP it replaces, as in Sparse-MLP (mlp_mixer.h).
int ExpertHidden(const proto::ModelConfig& m, int per_layer, int dense) {
  if (per_layer > 0) return per_layer;
  if (m.moe().expert_hidden_dim() > 0) return m.moe().expert_hidden_dim();
  return dense;
}

// Experts a routed row visits on average (what FlopsPerImage charges per row).
double ExpertsPerRow(const MoeLayerOptions& o) {
  return MakeRoutingRule(o.rule)->ExpertVisitsPerRow(o);
}

// Builds the net's branches and tallies multiply-adds per image as it adds each layer.
class Builder {
 public:
  Builder(const proto::ModelConfig& config, Communicator* comm, uint64_t seed,
          std::vector<MoeLayer*>* moe_layers, double* macs, const DropPathContext* drop_path)
      : config_(config),
        comm_(comm),
        seed_(seed),
        moe_layers_(moe_layers),
        macs_(macs),
        drop_path_(drop_path) {}

  // The stochastic-depth rate of the block being built (0: no DropPath layers).
  void set_block_drop_rate(float rate) { block_drop_rate_ = rate; }

  // rows_per_image rows of width `in` -> `out`.
  std::unique_ptr<Layer> Lin(const std::string& name, int rows_per_image, int in, int out,
                             bool bias = true) {
    *macs_ += static_cast<double>(rows_per_image) * in * out;
    return std::make_unique<Linear>(name, in, out, seed_, bias);
  }
  std::unique_ptr<Layer> DenseMlp(const std::string& name, int rows_per_image, int dim,
                                  int hidden) {
    *macs_ += 2.0 * rows_per_image * dim * hidden;
    return std::make_unique<Mlp>(name, dim, hidden, seed_);
  }
  // An MoE MLP over rows_per_image rows of width dim per image, routed in groups of
  // moe.group_size_images images.
  std::unique_ptr<Layer> Moe(const std::string& name, int rows_per_image, int dim, int hidden,
                             int top_k) {
    MoeLayerOptions o = MoeOptionsFromConfig(config_, dim, hidden, rows_per_image);
    o.top_k = top_k;
    *macs_ += static_cast<double>(rows_per_image) *
              (static_cast<double>(dim) * o.num_experts + ExpertsPerRow(o) * 2.0 * dim * hidden);
    auto m = std::make_unique<MoeLayer>(name, o, comm_, seed_);
    moe_layers_->push_back(m.get());
    return m;
  }
  std::unique_ptr<Layer> Norm(const std::string& name, int dim) {
    return std::make_unique<LayerNorm>(name, dim, seed_);
  }
  static std::unique_ptr<Layer> Transpose(int rows_per_image) {
    return std::make_unique<TransposeTokens>(rows_per_image);
  }
  static std::unique_ptr<Layer> Res(Branch branch) {
    return std::make_unique<Residual>(std::move(branch));
  }
  // A block's own residual (token or channel mixing), its branch ended by a DropPath when the
  // block's rate is above 0; residuals nested inside a branch stay plain (Res).
  std::unique_ptr<Layer> BlockRes(Branch branch) {
    if (block_drop_rate_ > 0)
      branch.push_back(std::make_unique<DropPath>(block_drop_rate_, residuals_++, drop_path_));
    return Res(std::move(branch));
  }

 private:
  const proto::ModelConfig& config_;
  Communicator* comm_;
  uint64_t seed_;
  std::vector<MoeLayer*>* moe_layers_;
  double* macs_;
  const DropPathContext* drop_path_;
  float block_drop_rate_ = 0;
  int residuals_ = 0;  // DropPath layers made so far: each one's index in the mask key
};

template <typename... L>
Branch MakeBranch(L&&... layers) {
  Branch b;
  (b.push_back(std::forward<L>(layers)), ...);
  return b;
}

}  // namespace

namespace {

// A dense Mixer block on S patches of C channels: token mixing, then channel mixing.
void AddDenseBlock(Builder& b, const std::string& pre, int S, int C, const proto::MixerConfig& mx,
                   Branch* body) {
  // Token mixing: [B*S, C] -> [B*C, S] -> MLP along patches -> back. The MLP's output
  // layer has no bias: a bias along patches adds the same value to every channel of a patch,
  // which every later LayerNorm (over channels) removes, so its gradient is exactly zero and
  // AdamW would only turn rounding noise into updates (the EP-invariance test sees that).
  const int Dt = mx.token_mlp_dim();
  body->push_back(b.BlockRes(MakeBranch(
      b.Norm(pre + ".ln1", C), b.Transpose(S), b.Lin(pre + ".token_mlp.fc1", C, S, Dt),
      std::make_unique<Gelu>(), b.Lin(pre + ".token_mlp.fc2", C, Dt, S, /*bias=*/false),
      b.Transpose(C))));
  body->push_back(b.BlockRes(MakeBranch(
      b.Norm(pre + ".ln2", C), b.DenseMlp(pre + ".channel_mlp", S, C, mx.channel_mlp_dim()))));
}

// The widths of a sparse block: S patches, C channels; with re-representation the MoE layers
// see S1 = 2 S patches of C1 = C / 2 channels.
struct SparseWidths {
  int S, C, S1, C1, token_hidden, channel_hidden;
  bool rerep, both;
};

// A sparse block (mlp_mixer.h). Down maps: C -> C1 on the patch rows, then S -> S1 on the
// channel rows; the MoE layers; up maps back.
void AddSparseBlock(Builder& b, const std::string& pre, const SparseWidths& w,
                    const proto::MixerConfig& mx, Branch* body) {
  const int S = w.S, C = w.C, S1 = w.S1, C1 = w.C1;
  Branch token = MakeBranch(b.Norm(pre + ".ln1", C));
  if (w.rerep) token.push_back(b.Lin(pre + ".rerep.channel_down", S, C, C1));
  token.push_back(b.Transpose(S));
  if (w.rerep) token.push_back(b.Lin(pre + ".rerep.patch_up", C1, S, S1));
  std::unique_ptr<Layer> moe_s =
      b.Moe(pre + ".token_moe", C1, S1, w.token_hidden, mx.token_moe_top_k());
  if (w.both) {
    token.push_back(b.Res(MakeBranch(std::move(moe_s))));
    token.push_back(b.Transpose(C1));  // [B*C1, S1] -> [B*S1, C1]
    token.push_back(b.Res(MakeBranch(
        b.Norm(pre + ".ln3", C1),
        b.Moe(pre + ".channel_moe", S1, C1, w.channel_hidden, mx.channel_moe_top_k()))));
    token.push_back(b.Transpose(S1));  // back to channel rows [B*C1, S1] for the up maps
  } else {
    token.push_back(std::move(moe_s));
  }
  // Up maps: S1 -> S on the channel rows, then C1 -> C on the patch rows.
  if (w.rerep) token.push_back(b.Lin(pre + ".rerep.patch_down", C1, S1, S));
  token.push_back(b.Transpose(C1));
  if (w.rerep) token.push_back(b.Lin(pre + ".rerep.channel_up", S, C1, C));
  body->push_back(b.BlockRes(std::move(token)));
  if (!w.both)
    body->push_back(b.BlockRes(MakeBranch(
        b.Norm(pre + ".ln2", C),
        b.Moe(pre + ".channel_moe", S, C, w.channel_hidden, mx.channel_moe_top_k()))));
}

}  // namespace

MlpMixer::MlpMixer(const proto::ModelConfig& config, Communicator* comm, uint64_t seed)
    : config_(config) {
  const proto::MixerConfig& mx = config.mixer();
  const int C = config.hidden_dim();
  const int p = config.patch_size();
  const int S = (config.image_size() / p) * (config.image_size() / p);
  patches_ = S;
  embed_ = std::make_unique<PatchEmbed>("embed", config.image_size(), config.channels(), p, C, seed);
  // No position embedding in a Mixer (see mlp_mixer.h): a frozen zero one adds nothing.
  embed_->pos_embed()->value.Zero();
  embed_->pos_embed()->frozen = true;
  macs_per_image_ += static_cast<double>(S) * p * p * config.channels() * C;

  Builder b(config, comm, seed, &moe_layers_, &macs_per_image_, &drop_path_context_);
  const int L = config.num_layers();
  const int num_sparse = config.use_moe() ? mx.num_sparse_blocks() : 0;
  SparseWidths w;
  w.S = S;
  w.C = C;
  w.rerep = mx.re_represent();
  w.both = w.rerep && mx.re_represent_both();
  w.S1 = w.rerep ? 2 * S : S;
  w.C1 = w.rerep ? C / 2 : C;
  w.token_hidden = ExpertHidden(config, mx.token_expert_hidden_dim(), mx.token_mlp_dim());
  w.channel_hidden = ExpertHidden(config, mx.channel_expert_hidden_dim(), mx.channel_mlp_dim());
  for (int i = 0; i < L; ++i) {
    const std::string pre = "block" + std::to_string(i);
    b.set_block_drop_rate(DropPathRateOfBlock(config.drop_path_rate(), i, L));
    if (i < L - num_sparse) AddDenseBlock(b, pre, S, C, mx, &body_);
    else AddSparseBlock(b, pre, w, mx, &body_);
  }
  final_norm_ = std::make_unique<LayerNorm>("final_ln", C, seed);
  pool_ = std::make_unique<MeanPoolTokens>(S);
  head_ = std::make_unique<Linear>("head", C, config.num_classes(), seed);
  macs_per_image_ += static_cast<double>(C) * config.num_classes();
}

MlpMixer::~MlpMixer() = default;

void MlpMixer::MoveTo(Device d) {
  embed_->MoveTo(d);
  for (auto& u : body_) u->MoveTo(d);
  final_norm_->MoveTo(d);
  pool_->MoveTo(d);
  head_->MoveTo(d);
}

Tensor MlpMixer::Forward(const Tensor& images) {
  Tensor x = embed_->Forward(images);
  for (auto& u : body_) x = u->Forward(x);
  return head_->Forward(pool_->Forward(final_norm_->Forward(x)));
}

void MlpMixer::Backward(const Tensor& dlogits) {
  Tensor dx = final_norm_->Backward(pool_->Backward(head_->Backward(dlogits)));
  for (auto it = body_.rbegin(); it != body_.rend(); ++it) dx = (*it)->Backward(dx);
  embed_->Backward(dx);
}

std::vector<Parameter*> MlpMixer::Parameters() {
  std::vector<Parameter*> ps;
  auto add = [&ps](const std::vector<Parameter*>& v) { ps.insert(ps.end(), v.begin(), v.end()); };
  add(embed_->Parameters());
  for (auto& u : body_) add(u->Parameters());
  add(final_norm_->Parameters());
  add(head_->Parameters());
  return ps;
}

std::unique_ptr<Net> CreateMixer(const proto::TrainConfig& c, Communicator* comm) {
  return std::make_unique<MlpMixer>(c.model(), comm, c.seed());
}

void ValidateMixerConfig(const proto::TrainConfig& c, std::vector<std::string>* errors) {
  const proto::ModelConfig& m = c.model();
  const proto::MixerConfig& mx = m.mixer();
  auto bad = [errors](const std::string& field, int64_t value, const std::string& why) {
    errors->push_back(ConfigError(field, std::to_string(value), why));
  };
  if (mx.token_mlp_dim() <= 0) bad("model.mixer.token_mlp_dim", mx.token_mlp_dim(), "must be > 0");
  if (mx.channel_mlp_dim() <= 0)
    bad("model.mixer.channel_mlp_dim", mx.channel_mlp_dim(), "must be > 0");
  if (mx.token_expert_hidden_dim() < 0)
    bad("model.mixer.token_expert_hidden_dim", mx.token_expert_hidden_dim(), "must be >= 0");
  if (mx.channel_expert_hidden_dim() < 0)
    bad("model.mixer.channel_expert_hidden_dim", mx.channel_expert_hidden_dim(), "must be >= 0");
  if (mx.num_sparse_blocks() < 0 || mx.num_sparse_blocks() > m.num_layers())
    bad("model.mixer.num_sparse_blocks", mx.num_sparse_blocks(),
        "must be in [0, model.num_layers=" + std::to_string(m.num_layers()) + "]");
  if (mx.re_represent_both() && !mx.re_represent())
    errors->push_back(ConfigError("model.mixer.re_represent_both", "true",
                                  "needs model.mixer.re_represent=true (it wraps both MoEs in the "
                                  "re-represent layers)"));
  if (!m.use_moe()) return;  // the rest concerns the sparse blocks
  if (mx.num_sparse_blocks() == 0)
    bad("model.mixer.num_sparse_blocks", 0,
        "model.use_moe=true needs at least one sparse block (or set use_moe=false)");
  if (mx.re_represent() && m.hidden_dim() % 2 != 0)
    bad("model.hidden_dim", m.hidden_dim(),
        "must be even with model.mixer.re_represent (C1 = C/2 channels before MoE_S)");
  const int E = m.moe().num_experts();
  // The MoE layer checks k even under expert choice (where it is unused), so check it always.
  for (auto [field, k] : {std::pair<const char*, int>{"model.mixer.token_moe_top_k",
                                                      mx.token_moe_top_k()},
                          {"model.mixer.channel_moe_top_k", mx.channel_moe_top_k()}})
    if (k < 1 || (E > 0 && k > E))
      bad(field, k, "must be in [1, model.moe.num_experts=" + std::to_string(E) + "]");
  if (m.moe().routing() != proto::MoeConfig::TOKEN_TOP_K &&
      m.moe().routing() != proto::MoeConfig::EXPERT_CHOICE)
    errors->push_back(ConfigError(
        "model.moe.routing", proto::MoeConfig::RoutingRule_Name(m.moe().routing()),
        "family \"mixer\" routes rows (channel vectors in MoE_S, patches in MoE_C): TOKEN_TOP_K "
        "(Sparse-MLP) or EXPERT_CHOICE"));
}

}  // namespace moe
