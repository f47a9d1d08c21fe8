#include "launcher/config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <utility>

#include "core/backend.h"
#include "core/rng.h"
#include "models/nets/net_factory.h"

namespace moe {

namespace {

// Collects the parser's messages (which name the unknown field) instead of printing them.
class CollectingErrors : public google::protobuf::io::ErrorCollector {
 public:
  explicit CollectingErrors(std::string source) : source_(std::move(source)) {}
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    os_ << source_ << ":" << (line + 1) << ":" << (column + 1) << ": " << message << "\n";
  }
  void AddWarning(int, google::protobuf::io::ColumnNumber, const std::string&) override {}
  std::string str() const { return os_.str(); }

 private:
  std::string source_;
  std::ostringstream os_;
};

bool ParseInto(const std::string& text, const std::string& source, bool merge,
               proto::TrainConfig* config, std::string* error) {
  google::protobuf::TextFormat::Parser parser;
  CollectingErrors errors(source);
  parser.RecordErrorsTo(&errors);
  const bool ok = merge ? parser.MergeFromString(text, config) : parser.ParseFromString(text, config);
  if (!ok) *error = "config error: " + errors.str();
  return ok;
}

}  // namespace

bool LoadTrainConfig(const std::string& path, const std::string& overrides,
                     proto::TrainConfig* config, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = "config error: --config=" + path + ": cannot open file";
    return false;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  if (!ParseInto(ss.str(), path, /*merge=*/false, config, error)) return false;
  // An empty file parses fine and would train the built-in defaults (a dense ViT) without a
  // word: a wrong path or an unsaved editor buffer must not look like a run.
  std::vector<const google::protobuf::FieldDescriptor*> set_fields;
  config->GetReflection()->ListFields(*config, &set_fields);
  if (set_fields.empty()) {
    *error = "config error: --config=" + path +
             " sets no fields (the file is empty or holds only comments); start from one of "
             "launcher/configs/*.pbtxt";
    return false;
  }
  if (!overrides.empty() && !ParseInto(overrides, "--override", /*merge=*/true, config, error))
    return false;
  return true;
}

namespace {

// Adds "config error: FIELD=VALUE: WHY" messages; VALUE is printed as the parser read it
// (1e+09, -5, 0.05, nan), so the user finds the number they wrote.
class Checker {
 public:
  explicit Checker(std::vector<std::string>* errs) : errs_(errs) {}
  void Bad(const std::string& field, const std::string& value, const std::string& why) {
    errs_->push_back("config error: " + field + "=" + value + ": " + why);
  }
  void AtLeast(const std::string& field, int64_t v, int64_t lo, const std::string& why = "") {
    if (v < lo) Bad(field, std::to_string(v), "must be >= " + std::to_string(lo) + why);
  }
  void InRange(const std::string& field, int64_t v, int64_t lo, int64_t hi,
               const std::string& why = "") {
    if (v < lo || v > hi)
      Bad(field, std::to_string(v),
          "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]" + why);
  }
  // v finite and v >= lo (or v > lo when strict). NaN and infinities fail every comparison
  // that matters downstream, so they are refused here by name.
  void Finite(const std::string& field, double v, double lo, bool strict,
              const std::string& why = "") {
    if (!std::isfinite(v) || v < lo || (strict && v == lo))
      Bad(field, Num(v),
          std::string("must be finite and ") + (strict ? "> " : ">= ") + Num(lo) + why);
  }
  void FiniteIn(const std::string& field, double v, double lo, double hi, bool hi_open,
                const std::string& why = "") {
    if (!std::isfinite(v) || v < lo || v > hi || (hi_open && v == hi))
      Bad(field, Num(v), "must be in [" + Num(lo) + ", " + Num(hi) + (hi_open ? ")" : "]") + why);
  }
  static std::string Num(double v) {
    std::ostringstream os;
    os << v;
    return os.str();
  }

 private:
  std::vector<std::string>* errs_;
};

void ValidateDispatcher(const proto::TrainConfig& c, int world_size, Checker* k) {
  const proto::ParallelConfig& p = c.parallel();
  k->AtLeast("parallel.ranks_per_node", p.ranks_per_node(), 0, " (0 = the machine's nodes)");
  if (p.ranks_per_node() > 0 && world_size % p.ranks_per_node() != 0)
    k->Bad("parallel.ranks_per_node", std::to_string(p.ranks_per_node()),
           "the world size " + std::to_string(world_size) + " is not a multiple of it");
  k->AtLeast("parallel.pipeline_chunks", p.pipeline_chunks(), 1);
}

void ValidateTopLevel(const proto::TrainConfig& c, int world_size, Checker* k) {
  if (c.device() != "cpu" && c.device() != "cuda")
    k->Bad("device", "\"" + c.device() + "\"", "must be \"cpu\" or \"cuda\"");
  if (c.device() == "cuda" && !BackendAvailable(Device::kCUDA))
    k->Bad("device", "\"cuda\"",
           "this build has no CUDA path (configured with MOE_EP_WITH_CUDA=OFF or without nvcc); "
           "use \"cpu\" or rebuild with CUDA");
  const int ep = c.parallel().ep_size();
  k->AtLeast("parallel.ep_size", ep, 0, " (0 = every rank of the job)");
  if (ep >= 1 && world_size % ep != 0)
    k->Bad("parallel.ep_size", std::to_string(ep),
           "the world size " + std::to_string(world_size) + " is not a multiple of it");
  ValidateDispatcher(c, world_size, k);
  k->AtLeast("steps", c.steps(), 1);
  k->AtLeast("log_every", c.log_every(), 1, " (a progress line every N steps)");
  k->AtLeast("eval_every", c.eval_every(), 0, " (0 = evaluate at the end only)");
  k->AtLeast("data.batch_per_rank", c.data().batch_per_rank(), 1);
  k->AtLeast("data.eval_images", c.data().eval_images(), 0, " (0 = all test images)");
}

void ValidateModelShape(const proto::ModelConfig& m, Checker* k) {
  if (m.image_size() != 28)
    k->Bad("model.image_size", std::to_string(m.image_size()), "Fashion-MNIST is 28");
  if (m.channels() != 1)
    k->Bad("model.channels", std::to_string(m.channels()), "Fashion-MNIST is grey (1)");
  if (m.num_classes() != 10)
    k->Bad("model.num_classes", std::to_string(m.num_classes()), "Fashion-MNIST has 10 classes");
  if (m.patch_size() <= 0 || (m.image_size() > 0 && m.image_size() % m.patch_size() != 0))
    k->Bad("model.patch_size", std::to_string(m.patch_size()),
           "must divide model.image_size=" + std::to_string(m.image_size()));
  k->AtLeast("model.hidden_dim", m.hidden_dim(), 1);
  if (m.num_heads() <= 0 || (m.hidden_dim() > 0 && m.hidden_dim() % m.num_heads() != 0))
    k->Bad("model.num_heads", std::to_string(m.num_heads()),
           "must divide model.hidden_dim=" + std::to_string(m.hidden_dim()));
  k->AtLeast("model.mlp_dim", m.mlp_dim(), 1);
  k->AtLeast("model.num_layers", m.num_layers(), 1);
}

void ValidateOptimizer(const proto::OptimizerConfig& o, Checker* k) {
  k->Finite("optimizer.learning_rate", o.learning_rate(), 0, /*strict=*/true);
  k->Finite("optimizer.weight_decay", o.weight_decay(), 0, false);
  // Decoupled decay multiplies every weight by (1 - lr * wd) each step: at 1 or more it zeroes
  // or flips the weights.
  if (std::isfinite(o.weight_decay()) && o.weight_decay() > 0 && o.learning_rate() > 0 &&
      o.learning_rate() * o.weight_decay() >= 1)
    k->Bad("optimizer.weight_decay", Checker::Num(o.weight_decay()),
           "learning_rate x weight_decay must be < 1 (learning_rate=" +
               Checker::Num(o.learning_rate()) + ")");
  k->FiniteIn("optimizer.beta1", o.beta1(), 0, 1, /*hi_open=*/true);
  k->FiniteIn("optimizer.beta2", o.beta2(), 0, 1, /*hi_open=*/true);
  k->Finite("optimizer.epsilon", o.epsilon(), 0, /*strict=*/true, " (Adam's denominator guard)");
  k->AtLeast("optimizer.warmup_steps", o.warmup_steps(), 0);
  k->FiniteIn("optimizer.min_lr_ratio", o.min_lr_ratio(), 0, 1, false,
              " (the final learning rate as a fraction of learning_rate)");
  k->Finite("optimizer.grad_clip_norm", o.grad_clip_norm(), 0, false, " (0 disables clipping)");
}

// Ranges of every MoE field, whether or not use_moe is set: a value out of range is a mistake
// even where it is not read yet.
void ValidateMoeRanges(const proto::MoeConfig& moe, Checker* k) {
  k->AtLeast("model.moe.num_experts", moe.num_experts(), 1);
  k->AtLeast("model.moe.top_k", moe.top_k(), 1);
  k->Finite("model.moe.capacity_factor_train", moe.capacity_factor_train(), 0, true);
  k->Finite("model.moe.capacity_factor_eval", moe.capacity_factor_eval(), 0, true);
  k->Finite("model.moe.router_noise_scale", moe.router_noise_scale(), 0, false);
  k->AtLeast("model.moe.expert_hidden_dim", moe.expert_hidden_dim(), 0, " (0 = model.mlp_dim)");
  for (auto [name, w] :
       {std::pair<const char*, float>{"importance_loss_weight", moe.importance_loss_weight()},
        {"load_loss_weight", moe.load_loss_weight()},
        {"switch_loss_weight", moe.switch_loss_weight()},
        {"z_loss_weight", moe.z_loss_weight()},
        {"balance_sq_loss_weight", moe.balance_sq_loss_weight()},
        {"superclass_loss_weight", moe.superclass_loss_weight()}})
    k->Finite(std::string("model.moe.") + name, w, 0, false);
  k->AtLeast("model.moe.group_size_images", moe.group_size_images(), 1);
  k->AtLeast("model.moe.patch_top_l", moe.patch_top_l(), 1);
}

// How the MoE fields fit the rest of the config (only when the net has MoE layers).
void ValidateMoeFit(const proto::TrainConfig& c, Checker* k) {
  const auto& m = c.model();
  const auto& moe = m.moe();
  const int E = moe.num_experts(), ep = c.parallel().ep_size(), batch = c.data().batch_per_rank();
  if (E >= 1 && ep >= 1 && E % ep != 0)
    k->Bad("model.moe.num_experts", std::to_string(E),
           "not divisible by parallel.ep_size=" + std::to_string(ep));
  if (E >= 1 && moe.top_k() > E)
    k->Bad("model.moe.top_k", std::to_string(moe.top_k()),
           "must be in [1, model.moe.num_experts=" + std::to_string(E) + "]");
  if (moe.group_size_images() >= 1 && batch >= 1 && batch % moe.group_size_images() != 0)
    k->Bad("model.moe.group_size_images", std::to_string(moe.group_size_images()),
           "must divide data.batch_per_rank=" + std::to_string(batch));
  if (moe.load_loss_weight() > 0 && moe.router_noise_scale() == 0)
    k->Bad("model.moe.load_loss_weight", Checker::Num(moe.load_loss_weight()),
           "the load loss needs router noise (model.moe.router_noise_scale > 0)");
  // The placements read by the ViT families; MoeBlockIndices would silently place fewer.
  const int odd_blocks = std::max(0, m.num_layers()) / 2;
  if (moe.placement() == proto::MoeConfig::LAST_N)
    k->InRange("model.moe.last_n", moe.last_n(), 1, std::max(1, odd_blocks),
               " (the odd blocks of model.num_layers=" + std::to_string(m.num_layers()) + ")");
  if (moe.placement() == proto::MoeConfig::LAST_BLOCKS)
    k->InRange("model.moe.last_n", moe.last_n(), 1, std::max(1, m.num_layers()),
               " (blocks of model.num_layers=" + std::to_string(m.num_layers()) + ")");
  if (m.num_layers() < 2)
    k->Bad("model.num_layers", std::to_string(m.num_layers()),
           "MoE blocks are the odd blocks: need >= 2");
}

// Shazeer's learned noise and seed 004's balance loss (models/moe/README.md, "Token top-k"):
// where the layer defines them, and not on the CUDA path, whose device router has neither.
void ValidateGenericTopK(const proto::TrainConfig& c, Checker* k) {
  const auto& moe = c.model().moe();
  const bool learned = moe.router_noise() == proto::MoeConfig::LEARNED_SOFTPLUS;
  const std::string noise = "LEARNED_SOFTPLUS";
  if (learned && (moe.routing() != proto::MoeConfig::TOKEN_TOP_K ||
                  c.model().family() == "conditional"))
    k->Bad("model.moe.router_noise", noise,
           "learned softplus noise is for the token top-k rule only (model.moe.routing: "
           "TOKEN_TOP_K, not the conditional family)");
  if (learned && moe.load_loss_weight() > 0)
    k->Bad("model.moe.load_loss_weight", Checker::Num(moe.load_loss_weight()),
           "the load loss assumes the FIXED noise std; set it to 0 with router_noise: "
           "LEARNED_SOFTPLUS");
  const bool expert_side = moe.routing() == proto::MoeConfig::EXPERT_CHOICE ||
                           moe.routing() == proto::MoeConfig::PATCH_TOP_L;
  if (moe.balance_sq_loss_weight() > 0 && expert_side)
    k->Bad("model.moe.balance_sq_loss_weight", Checker::Num(moe.balance_sq_loss_weight()),
           "reads k gates per row: token-side rules only (TOKEN_TOP_K, ATTRIBUTE, PER_IMAGE)");
  if (c.device() != "cuda") return;
  if (learned)
    k->Bad("model.moe.router_noise", noise, "not supported on the CUDA path yet (device: \"cuda\")");
  if (moe.balance_sq_loss_weight() > 0)
    k->Bad("model.moe.balance_sq_loss_weight", Checker::Num(moe.balance_sq_loss_weight()),
           "not supported on the CUDA path yet (device: \"cuda\")");
}

// The family sections' ranges (the family validators add the cross-field checks of the family
// in use).
void ValidateFamilyRanges(const proto::ModelConfig& m, Checker* k) {
  const auto& mx = m.mixer();
  k->AtLeast("model.mixer.token_mlp_dim", mx.token_mlp_dim(), 1);
  k->AtLeast("model.mixer.channel_mlp_dim", mx.channel_mlp_dim(), 1);
  k->InRange("model.mixer.num_sparse_blocks", mx.num_sparse_blocks(), 0,
             std::max(0, m.num_layers()),
             " (model.num_layers=" + std::to_string(m.num_layers()) + ")");
  k->AtLeast("model.mixer.token_moe_top_k", mx.token_moe_top_k(), 1);
  k->AtLeast("model.mixer.channel_moe_top_k", mx.channel_moe_top_k(), 1);
  k->AtLeast("model.mixer.token_expert_hidden_dim", mx.token_expert_hidden_dim(), 0,
             " (0 = model.mixer.token_mlp_dim, experts as wide as the dense MLP)");
  k->AtLeast("model.mixer.channel_expert_hidden_dim", mx.channel_expert_hidden_dim(), 0,
             " (0 = model.mixer.channel_mlp_dim, experts as wide as the dense MLP)");
  k->AtLeast("model.pmoe.router_phase_steps", m.pmoe().router_phase_steps(), 0);
  k->AtLeast("model.pmoe.conv_channels", m.pmoe().conv_channels(), 1);
  k->InRange("model.conditional.num_superclasses", m.conditional().num_superclasses(), 2, 10,
             " (the coarse task groups the 10 classes)");
}

// The training recipe (proto RecipeConfig, model.drop_path_rate, data.train_images_limit).
void ValidateRecipe(const proto::TrainConfig& c, Checker* k) {
  const proto::RecipeConfig& r = c.recipe();
  k->InRange("recipe.crop_padding", r.crop_padding(), 0, 8, " (0 = no random crop)");
  k->FiniteIn("recipe.label_smoothing", r.label_smoothing(), 0, 1, /*hi_open=*/true,
              " (0 = off)");
  k->AtLeast("recipe.epochs", r.epochs(), 0, " (>= 1 for a schedule in epochs; 0 = use steps)");
  k->Finite("recipe.warmup_epochs", r.warmup_epochs(), 0, /*strict=*/false, " (0 = off)");
  k->AtLeast("data.train_images_limit", c.data().train_images_limit(), 0,
             " (0 = every training image)");
  const float dp = c.model().drop_path_rate();
  k->FiniteIn("model.drop_path_rate", dp, 0, 1, /*hi_open=*/true, " (0 = off)");
  if (!(dp > 0)) return;
  const std::string& family = c.model().family();
  if (family != "vit" && family != "mobile_vmoe" && family != "mixer")
    k->Bad("model.drop_path_rate", Checker::Num(dp),
           "stochastic depth is built into the families \"vit\", \"mobile_vmoe\" and "
           "\"mixer\", not \"" + family + "\"");
}

// One message per field: the generic range check and a family's own check may both fire for
// the same value; the first (the generic one) stays.
void DropRepeatedFields(std::vector<std::string>* errs) {
  std::vector<std::string> kept, seen;
  for (const std::string& e : *errs) {
    const std::string field = e.substr(0, e.find('='));
    if (std::find(seen.begin(), seen.end(), field) != seen.end()) continue;
    seen.push_back(field);
    kept.push_back(e);
  }
  errs->swap(kept);
}

}  // namespace

void ResolveWorldSizeFields(int world_size, proto::TrainConfig* config) {
  if (config->parallel().ep_size() == 0) config->mutable_parallel()->set_ep_size(world_size);
}

std::vector<std::string> ValidateTrainConfig(const proto::TrainConfig& unresolved, int world_size) {
  proto::TrainConfig c = unresolved;
  ResolveWorldSizeFields(world_size, &c);
  std::vector<std::string> errs;
  Checker k(&errs);
  ValidateTopLevel(c, world_size, &k);
  ValidateModelShape(c.model(), &k);
  ValidateOptimizer(c.optimizer(), &k);
  ValidateMoeRanges(c.model().moe(), &k);
  ValidateFamilyRanges(c.model(), &k);
  ValidateRecipe(c, &k);
  if (c.model().use_moe()) ValidateMoeFit(c, &k);
  if (c.model().use_moe()) ValidateGenericTopK(c, &k);
  ValidateNetConfig(c, &errs);  // the family name and the family's own fields
  DropRepeatedFields(&errs);
  return errs;
}

uint64_t ConfigHash(const proto::TrainConfig& config) {
  std::string bytes;
  google::protobuf::io::StringOutputStream stream(&bytes);
  {
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    config.SerializeToCodedStream(&coded);
  }
  return HashString(bytes);
}

}  // namespace moe
