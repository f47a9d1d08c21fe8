#include "models/nets/mobile_vmoe.h"

#include <glog/logging.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/gemm.h"
#include "core/rng.h"
#include "models/moe/router_math.h"
#include "models/nets/families.h"

namespace moe {

namespace {

// A whole token as a base-10 int (strtol alone accepts "3x" and "3.5" as 3).
bool ParseInt(const std::string& token, int* out) {
  if (token.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(token.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || v < INT_MIN || v > INT_MAX) return false;
  *out = static_cast<int>(v);
  return true;
}

// Shared router: every MoE layer follows the decision; only the first reports the guidance (the
// trainer's super-class accuracy counts the layers whose superclass_weight is > 0).
VisionTransformer::MoeOptionsAdjust SharedDecisionOptions(const proto::ModelConfig& config) {
  if (!config.moe().shared_router()) return nullptr;
  return [](size_t moe_index, MoeLayerOptions* o) {
    o->external_decision = true;
    if (moe_index > 0) o->superclass_weight = 0.f;
  };
}

}  // namespace

bool ParseSuperclassMap(std::istream& in, const std::string& source, int num_classes,
                        int num_superclasses, std::vector<int>* class_to_superclass,
                        std::string* error) {
  std::vector<int> map(num_classes, -1), line_of(num_classes, 0);
  std::string line;
  int line_no = 0;
  auto fail = [&](const std::string& why) {
    *error = source + ":" + std::to_string(line_no) + ": " + why;
    return false;
  };
  while (std::getline(in, line)) {
    ++line_no;
    const size_t hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    std::istringstream fields(line);
    std::vector<std::string> tokens;
    for (std::string t; fields >> t;) tokens.push_back(t);
    if (tokens.empty()) continue;
    int cls = 0, sup = 0;
    if (tokens.size() != 2 || !ParseInt(tokens[0], &cls) || !ParseInt(tokens[1], &sup))
      return fail("expected \"class superclass\" (two integers), got \"" + line + "\"");
    if (cls < 0 || cls >= num_classes)
      return fail("class " + std::to_string(cls) + " is not in [0, " + std::to_string(num_classes) + ")");
    if (map[cls] >= 0)
      return fail("class " + std::to_string(cls) + " listed twice (first on line " +
                  std::to_string(line_of[cls]) + ")");
    if (sup < 0 || sup >= num_superclasses)
      return fail("super-class " + std::to_string(sup) + " of class " + std::to_string(cls) +
                  " is not an expert id in [0, " + std::to_string(num_superclasses) +
                  ") (model.moe.num_experts)");
    map[cls] = sup;
    line_of[cls] = line_no;
  }
  std::string missing;
  for (int c = 0; c < num_classes; ++c)
    if (map[c] < 0) missing += (missing.empty() ? "" : ", ") + std::to_string(c);
  if (!missing.empty()) {
    *error = source + ": no super-class for class(es) " + missing + " (every class 0.." +
             std::to_string(num_classes - 1) + " must appear once)";
    return false;
  }
  *class_to_superclass = std::move(map);
  return true;
}

bool LoadSuperclassFile(const std::string& path, int num_classes, int num_superclasses,
                        std::vector<int>* class_to_superclass, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = path + ": cannot open file";
    return false;
  }
  return ParseSuperclassMap(in, path, num_classes, num_superclasses, class_to_superclass, error);
}

MobileVmoe::MobileVmoe(const proto::ModelConfig& config, Communicator* comm, uint64_t seed,
                       std::vector<int> class_to_superclass)
    : VisionTransformer(config, comm, seed, SharedDecisionOptions(config)),
      class_to_superclass_(std::move(class_to_superclass)) {
  CHECK(!moe_layers().empty()) << "Mobile V-MoE without MoE layers (validate the config first)";
  for (const MoeLayer* m : moe_layers())
    CHECK(m->options().rule == RoutingRule::kPerImage) << m->name() << ": routing must be per image";
  if (!config.moe().shared_router()) return;
  shared_.on = true;
  seed_ = seed;
  shared_.first_block = *MoeBlockIndices(config).begin();
  // Dense (no expert id): replicated, all-reduced over the world with the other dense params.
  shared_.w = MakeParameter("shared_router.w", {config.hidden_dim(), config.moe().num_experts()},
                            InitKind::kNormal, 0.02f, seed);
  for (MoeLayer* m : moe_layers()) m->SetExternalDecision(&shared_.decision);
}

std::vector<Parameter*> MobileVmoe::Parameters() {
  std::vector<Parameter*> ps = VisionTransformer::Parameters();
  if (shared_.on) ps.push_back(&shared_.w);
  return ps;
}

void MobileVmoe::MoveTo(Device d) {
  CHECK(!shared_.on || d == Device::kCPU)
      << "Mobile V-MoE: the shared router is host-only (model.moe.shared_router: false on CUDA)";
  VisionTransformer::MoveTo(d);
}

double MobileVmoe::FlopsPerImage() const {
  double f = VisionTransformer::FlopsPerImage();
  if (!shared_.on) return f;
  // The base counts 2 (T D + D E) per MoE layer for its mean token and logits; here one router.
  const double T = tokens_per_image(), D = shared_.w.value.dim(0), E = shared_.w.value.dim(1);
  return f - 2.0 * (T * D + D * E) * static_cast<double>(moe_layers().size() - 1);
}

// m_b = mean of image b's tokens of x, clean logits = m W_s.
void MobileVmoe::SharedRouterLogits(const Tensor& x, std::vector<float>* clean) {
  CHECK(x.device() == Device::kCPU) << "Mobile V-MoE: the shared router is host-only";
  const int64_t T = tokens_per_image(), D = shared_.w.value.dim(0), E = shared_.w.value.dim(1);
  const int64_t B = x.dim(0) / T;
  shared_.in = Tensor::Zeros({B, D});
  for (int64_t t = 0; t < x.dim(0); ++t) {
    float* m = shared_.in.data() + (t / T) * D;
    const float* xt = x.data() + t * D;
    for (int64_t j = 0; j < D; ++j) m[j] += xt[j] / static_cast<float>(T);
  }
  clean->assign(B * E, 0.f);
  Sgemm(false, false, B, E, D, 1.f, shared_.in.data(), D, shared_.w.value.data(), E, 0.f,
        clean->data(), E);
}

// Training noise N(0, (noise_scale / E)^2), keyed like MoeLayer's on (seed, router name, step,
// global routing group, index in group), so any EP x DP layout draws the same numbers for an
// image; then softmax and top-k (gates not renormalised, as the per-layer rule).
void MobileVmoe::SharedRouterDecide(const std::vector<float>& clean) {
  const MoeLayerOptions& o = moe_layers()[0]->options();
  const int E = o.num_experts, k = o.top_k;
  const int64_t B = shared_.in.dim(0), per_group = o.group_tokens / o.tokens_per_image;
  std::vector<float> noisy = clean;
  if (ctx_.training && o.noise_scale > 0.f) {
    CounterRng rng(MixKey(MixKey(seed_, HashString("shared_router.router_noise")), ctx_.step));
    const float sigma = o.noise_scale / E;
    for (int64_t g = 0; g < B / per_group; ++g) {
      const uint64_t gid = static_cast<uint64_t>(ctx_.first_global_group + g);
      for (int64_t i = 0; i < per_group * E; ++i)
        noisy[g * per_group * E + i] += sigma * rng.Normal(gid, static_cast<uint64_t>(i));
    }
  }
  shared_.probs.resize(B * E);
  shared_.probs_clean.resize(B * E);
  SoftmaxRows(noisy.data(), B, E, shared_.probs.data());
  SoftmaxRows(clean.data(), B, E, shared_.probs_clean.data());
  ExternalImageDecision& d = shared_.decision;
  d.expert.resize(B * k);
  d.gate.resize(B * k);
  TopKRows(shared_.probs.data(), B, E, k, d.expert.data(), d.gate.data());
  d.d_gate.assign(B * k, 0.f);
}

// Guidance, once per image: w * image_loss_scale * CE(clean logits, super-class) (the paper's
// super-class loss, w = 0.3), scaled like the classification loss so P ranks sum to 1 rank's.
void MobileVmoe::SharedRouterGuidance() {
  const int E = static_cast<int>(shared_.w.value.dim(1));
  const int64_t B = shared_.in.dim(0);
  shared_.d_clean_aux.assign(B * E, 0.f);
  shared_.aux_loss = shared_.superclass_loss = 0;
  shared_.superclass_correct = 0;
  const float weight = moe_layers()[0]->options().superclass_weight;
  if (!ctx_.training || weight <= 0.f) return;
  CHECK_EQ(static_cast<int64_t>(batch_superclasses_.size()), B) << "one super-class per image";
  CHECK_GT(ctx_.image_loss_scale, 0.f) << "image_loss_scale not set";
  const float w = weight * ctx_.image_loss_scale;
  for (int64_t i = 0; i < B; ++i) {
    const int c = batch_superclasses_[i];
    const float* p = shared_.probs_clean.data() + i * E;
    const double ce = -std::log(std::max(static_cast<double>(p[c]), 1e-30));
    shared_.superclass_loss += ce;
    shared_.aux_loss += w * ce;
    if (std::max_element(p, p + E) - p == c) ++shared_.superclass_correct;
    for (int e = 0; e < E; ++e) shared_.d_clean_aux[i * E + e] = w * (p[e] - (e == c ? 1.f : 0.f));
  }
}

void MobileVmoe::OnBlockInput(int block, const Tensor& x) {
  if (!shared_.on || block != shared_.first_block) return;
  std::vector<float> clean;
  SharedRouterLogits(x, &clean);
  SharedRouterDecide(clean);
  SharedRouterGuidance();
}

// d(gates) of every MoE layer (summed in decision.d_gate) -> d(noisy probs) -> softmax backward
// -> d(logits) (the noise is additive), plus the guidance's d(clean logits); then W_s's gradient
// and the dense part's share, 1/T per token of the image.
void MobileVmoe::OnBlockInputGrad(int block, Tensor* dx) {
  if (!shared_.on || block != shared_.first_block) return;
  const ExternalImageDecision& d = shared_.decision;
  const int64_t T = tokens_per_image(), D = shared_.w.value.dim(0), E = shared_.w.value.dim(1);
  const int64_t B = shared_.in.dim(0);
  const int k = static_cast<int>(d.expert.size() / B);
  std::vector<float> d_probs(B * E, 0.f), d_logits(B * E);
  for (int64_t i = 0; i < B; ++i)
    for (int r = 0; r < k; ++r) d_probs[i * E + d.expert[i * k + r]] += d.d_gate[i * k + r];
  SoftmaxRowsBackward(shared_.probs.data(), d_probs.data(), B, E, d_logits.data());
  for (int64_t i = 0; i < B * E; ++i) d_logits[i] += shared_.d_clean_aux[i];
  Sgemm(true, false, D, E, B, 1.f, shared_.in.data(), D, d_logits.data(), E, 1.f,
        shared_.w.grad.data(), E);
  Tensor d_in({B, D});
  Sgemm(false, true, B, D, E, 1.f, d_logits.data(), E, shared_.w.value.data(), E, 0.f,
        d_in.data(), D);
  for (int64_t t = 0; t < dx->dim(0); ++t) {
    const float* di = d_in.data() + (t / T) * D;
    float* dxt = dx->data() + t * D;
    for (int64_t j = 0; j < D; ++j) dxt[j] += di[j] / static_cast<float>(T);
  }
}

void MobileVmoe::SetMoeContext(const MoeStepContext& ctx) {
  training_ = ctx.training;
  ctx_ = ctx;
  MoeStepContext with_labels = ctx;
  // The vector is filled by SetBatchInfo, which may come before or after this call.
  with_labels.superclass = guided() ? &batch_superclasses_ : nullptr;
  VisionTransformer::SetMoeContext(with_labels);
}

void MobileVmoe::SetBatchInfo(const BatchInfo& info) {
  if (!guided() || info.labels == nullptr) return;
  const int C = static_cast<int>(class_to_superclass_.size());
  batch_superclasses_.resize(info.labels->size());
  for (size_t i = 0; i < info.labels->size(); ++i) {
    const int label = (*info.labels)[i];
    CHECK(label >= 0 && label < C) << "label " << label << " of image " << i << " is not a class in [0, "
                                   << C << ")";
    batch_superclasses_[i] = class_to_superclass_[label];
  }
  labels_fresh_ = true;
}

Tensor MobileVmoe::Forward(const Tensor& images) {
  if (guided() && training_)
    CHECK(labels_fresh_) << "Mobile V-MoE: a guided training Forward needs SetBatchInfo with this "
                            "step's labels first";
  labels_fresh_ = false;
  Tensor logits = VisionTransformer::Forward(images);
  if (shared_.on)  // the guidance is counted once, in the first MoE layer's metrics
    moe_layers()[0]->AddExternalMetrics(shared_.aux_loss, shared_.superclass_loss,
                                        shared_.superclass_correct);
  return logits;
}

std::unique_ptr<Net> CreateMobileVmoe(const proto::TrainConfig& c, Communicator* comm) {
  const proto::ModelConfig& m = c.model();
  std::vector<int> map;
  if (m.moe().superclass_loss_weight() > 0) {
    std::string error;
    CHECK(LoadSuperclassFile(m.moe().superclass_file(), m.num_classes(), m.moe().num_experts(), &map,
                             &error))
        << error << " (validate the config first)";
  }
  return std::make_unique<MobileVmoe>(m, comm, c.seed(), std::move(map));
}

namespace {

// What the shared router does not do (it adds only the super-class loss, runs on the host, and
// its gates are the kept softmax values).
void ValidateSharedRouter(const proto::TrainConfig& c, std::vector<std::string>* errors) {
  const proto::MoeConfig& moe = c.model().moe();
  if (c.device() == "cuda")
    errors->push_back(ConfigError("model.moe.shared_router", "true",
                                  "not supported on the CUDA path yet (device: \"cuda\"); set "
                                  "shared_router: false there"));
  const std::pair<const char*, float> losses[] = {
      {"importance_loss_weight", moe.importance_loss_weight()},
      {"load_loss_weight", moe.load_loss_weight()},
      {"switch_loss_weight", moe.switch_loss_weight()},
      {"z_loss_weight", moe.z_loss_weight()},
      {"balance_sq_loss_weight", moe.balance_sq_loss_weight()}};
  for (const auto& [field, w] : losses)
    if (w != 0.f)
      errors->push_back(ConfigError(std::string("model.moe.") + field, std::to_string(w),
                                    "the shared router (model.moe.shared_router) adds only the "
                                    "super-class loss: set 0, or shared_router: false"));
  if (moe.renormalise_gates())
    errors->push_back(ConfigError("model.moe.renormalise_gates", "true",
                                  "not with the shared router (model.moe.shared_router)"));
  if (moe.router_noise() != proto::MoeConfig::FIXED)
    errors->push_back(ConfigError("model.moe.router_noise",
                                  proto::MoeConfig::RouterNoise_Name(moe.router_noise()),
                                  "the shared router draws the fixed V-MoE noise"));
}

}  // namespace

void ValidateMobileVmoeConfig(const proto::TrainConfig& c, std::vector<std::string>* errors) {
  const proto::ModelConfig& m = c.model();
  const proto::MoeConfig& moe = m.moe();
  if (!m.use_moe())
    errors->push_back(ConfigError("model.use_moe", "false",
                                  "family \"mobile_vmoe\" is an MoE net (its dense baseline is "
                                  "family \"vit\" with use_moe false)"));
  if (moe.routing() != proto::MoeConfig::PER_IMAGE)
    errors->push_back(ConfigError("model.moe.routing", proto::MoeConfig::RoutingRule_Name(moe.routing()),
                                  "family \"mobile_vmoe\" routes whole images: PER_IMAGE"));
  if (moe.placement() == proto::MoeConfig::LAST_BLOCKS && moe.last_n() > m.num_layers())
    errors->push_back(ConfigError("model.moe.last_n", std::to_string(moe.last_n()),
                                  "more MoE blocks than model.num_layers=" +
                                      std::to_string(m.num_layers())));
  const float w = moe.superclass_loss_weight();
  if (!(w >= 0))
    errors->push_back(ConfigError("model.moe.superclass_loss_weight", std::to_string(w), "must be >= 0"));
  if (moe.shared_router()) ValidateSharedRouter(c, errors);
  const std::string& file = moe.superclass_file();
  if (w > 0 && file.empty())
    errors->push_back(ConfigError("model.moe.superclass_file", "\"\"",
                                  "super-class guidance (superclass_loss_weight > 0) needs the "
                                  "class -> super-class file (launcher/superclasses/)"));
  // A named file must be valid even when unused, so a typo never passes unnoticed.
  if (!file.empty() && moe.num_experts() > 0 && m.num_classes() > 0) {
    std::vector<int> map;
    std::string error;
    if (!LoadSuperclassFile(file, m.num_classes(), moe.num_experts(), &map, &error))
      errors->push_back(ConfigError("model.moe.superclass_file", "\"" + file + "\"", error));
  }
}

}  // namespace moe
