#include "models/moe/moe_layer.h"

#include "comm/collective_watchdog.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/gemm.h"
#include "core/rng.h"
#include "models/moe/aux_losses.h"
#include "models/moe/block_permute.h"
#include "models/moe/expert_bank.h"
#include "models/moe/moe_routing_state.h"
#include "models/layers/layer_norm.h"
#include "models/layers/linear.h"
#include "models/moe/router_math.h"
#include "models/moe/slot_assignment.h"

namespace moe {

namespace {

// softplus(u) = log(1 + e^u), without overflow for large u.
float Softplus(float u) {
  const double v = u;
  return static_cast<float>(v > 0 ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v)));
}

// Where the generic top-k options (Shazeer's noise, the balance-squared loss) are defined.
void CheckGenericTopKOptions(const std::string& name, const MoeLayerOptions& o) {
  if (o.noise == RouterNoise::kLearnedSoftplus) {
    CHECK(o.rule == RoutingRule::kTokenTopK)
        << name << ": learned softplus router noise is for token top-k routing, not "
        << RoutingRuleName(o.rule);
    // LoadLoss's Phi((t - h) / sigma) assumes one fixed sigma for every (row, expert).
    CHECK_EQ(o.load_weight, 0.f) << name << ": the load loss needs the fixed noise std";
  }
  if (o.balance_sq_weight > 0)
    CHECK(o.rule == RoutingRule::kTokenTopK || o.rule == RoutingRule::kAttribute ||
          o.rule == RoutingRule::kPerImage)
        << name << ": the balance-squared loss reads k gates per router row (token-side rules), not "
        << RoutingRuleName(o.rule);
}

}  // namespace

MoeLayer::MoeLayer(const std::string& name, const MoeLayerOptions& options, Communicator* comm,
                   uint64_t seed)
    : name_(name), opt_(options), comm_(comm), seed_(seed) {
  CHECK(comm_ != nullptr);
  CHECK_GT(opt_.dim, 0);
  CHECK_GT(opt_.hidden, 0);
  CHECK_GT(opt_.group_tokens, 0);
  CHECK(opt_.top_k >= 1 && opt_.top_k <= opt_.num_experts)
      << name << ": top_k " << opt_.top_k << " must be in [1, num_experts=" << opt_.num_experts
      << "]";
  ep_size_ = comm_->Size(GroupKind::kExpert);
  ep_rank_ = comm_->Rank(GroupKind::kExpert);
  CHECK_EQ(opt_.num_experts % ep_size_, 0)
      << name << ": num_experts " << opt_.num_experts << " not divisible by ep_size " << ep_size_;
  experts_per_rank_ = opt_.num_experts / ep_size_;
  router_ = MakeParameter(name + ".router.w", {opt_.dim, opt_.num_experts}, InitKind::kNormal,
                          0.02f, seed);
  CheckGenericTopKOptions(name, opt_);
  if (opt_.noise == RouterNoise::kLearnedSoftplus)  // zero at init, as in Shazeer et al.
    w_noise_ = MakeParameter(name + ".router.w_noise", {opt_.dim, opt_.num_experts},
                             InitKind::kZeros, 0.f, seed);
  experts_ = std::make_unique<ExpertBank>(name + ".expert", opt_.dim, opt_.hidden,
                                          ep_rank_ * experts_per_rank_, experts_per_rank_, seed,
                                          opt_.expert_activation);
  const bool per_image = opt_.rule == RoutingRule::kPatchTopL || opt_.rule == RoutingRule::kPerImage;
  if (per_image) {
    CHECK_GT(opt_.tokens_per_image, 0) << name << ": " << RoutingRuleName(opt_.rule)
                                       << " routing needs tokens_per_image";
    CHECK_EQ(opt_.group_tokens % opt_.tokens_per_image, 0)
        << name << ": a routing group of " << opt_.group_tokens << " rows is not whole images of "
        << opt_.tokens_per_image;
  }
  if (opt_.rule == RoutingRule::kPatchTopL)
    CHECK(opt_.patch_top_l >= 1 && opt_.patch_top_l <= opt_.tokens_per_image)
        << name << ": patch_top_l " << opt_.patch_top_l << " must be in [1, tokens_per_image="
        << opt_.tokens_per_image << "]";
  if (opt_.rule == RoutingRule::kAttribute) {
    CHECK_GT(opt_.attribute_dim, 0) << name << ": attribute routing needs attribute_dim";
    attr_proj_ = std::make_unique<Linear>(name + ".router.attr_proj", opt_.attribute_dim, opt_.dim,
                                          seed);
    attr_norm_ = std::make_unique<LayerNorm>(name + ".router.attr_norm", opt_.dim, seed);
  }
  if (opt_.external_decision)
    CHECK(opt_.rule == RoutingRule::kPerImage && opt_.noise == RouterNoise::kFixed &&
          opt_.importance_weight == 0.f && opt_.load_weight == 0.f && opt_.switch_weight == 0.f &&
          opt_.z_weight == 0.f && opt_.balance_sq_weight == 0.f)
        << name << ": an external decision is per image, and its router's losses are its owner's";
  CHECK(!(opt_.dropless && (opt_.rule == RoutingRule::kExpertChoice ||
                            opt_.rule == RoutingRule::kPatchTopL)))
      << name << ": dropless applies to the token-side rules only (" << RoutingRuleName(opt_.rule)
      << " fills every slot by construction)";
}

const char* RoutingRuleName(RoutingRule rule) {
  switch (rule) {
    case RoutingRule::kTokenTopK: return "token_top_k";
    case RoutingRule::kExpertChoice: return "expert_choice";
    case RoutingRule::kPatchTopL: return "patch_top_l";
    case RoutingRule::kPerImage: return "per_image";
    case RoutingRule::kAttribute: return "attribute";
  }
  return "?";
}

MoeLayer::~MoeLayer() = default;

// Copies value and grad to `device` (the CUDA path runs on device-resident parameters).
void MoeLayer::MoveTo(Device device) {
  for (Tensor* t : {&router_.value, &router_.grad}) {
    if (t->device() == device) continue;
    Tensor moved(t->shape(), device);
    moved.CopyFrom(*t);
    *t = moved;
  }
  if (!w_noise_.value.empty()) MoveParameterTo(&w_noise_, device);
  experts_->MoveTo(device);
  if (attr_proj_) {
    // The attribute embedding's parameters live with the others (the trainer's optimizer wants
    // every parameter on one device); on the CUDA path it is computed on the host, from host
    // mirrors refreshed each step (moe_layer_cuda_host_route.cc).
    attr_proj_->MoveTo(device);
    attr_norm_->MoveTo(device);
  }
  routing_.reset();
  cuda_.reset();
}

std::vector<Parameter*> MoeLayer::Parameters() {
  std::vector<Parameter*> ps;
  if (!opt_.external_decision) ps.push_back(&router_);  // the decision's owner holds the router
  if (!w_noise_.value.empty()) ps.push_back(&w_noise_);
  for (Layer* l : {attr_proj_.get(), attr_norm_.get()})
    if (l != nullptr)
      for (Parameter* p : l->Parameters()) ps.push_back(p);
  for (Parameter* p : experts_->Parameters()) ps.push_back(p);
  return ps;
}

int64_t MoeLayer::CurrentCapacity() const {
  if (opt_.dropless) return -1;
  const double cf = ctx_.training ? opt_.capacity_factor_train : opt_.capacity_factor_eval;
  switch (opt_.rule) {
    case RoutingRule::kExpertChoice:
      return std::min<int64_t>(opt_.group_tokens,
                               CapacityPerExpert(1, opt_.group_tokens, cf, opt_.num_experts,
                                                 opt_.rounding));
    case RoutingRule::kPatchTopL:
      return static_cast<int64_t>(opt_.patch_top_l) * (opt_.group_tokens / opt_.tokens_per_image);
    case RoutingRule::kPerImage:
      // Whole images: the rounding applies to the image count, then C counts their tokens.
      return opt_.tokens_per_image *
             CapacityPerExpert(opt_.top_k, opt_.group_tokens / opt_.tokens_per_image, cf,
                               opt_.num_experts, opt_.rounding);
    default:
      return CapacityPerExpert(opt_.top_k, opt_.group_tokens, cf, opt_.num_experts, opt_.rounding);
  }
}

void MoeLayer::ForEachKeptAssignment(const std::function<void(int64_t, int, float)>& fn) const {
  CHECK(routing_) << name_ << ": no host-path Forward to report on";
  const Routing& R = *routing_;
  for (int64_t t = 0; t < R.rows; ++t)
    for (int r = 0; r < R.kc; ++r)
      if (R.slot[t * R.kc + r] >= 0) fn(t, R.expert[t * R.kc + r], R.gate[t * R.kc + r]);
}

void MoeLayer::AddExternalMetrics(double aux_loss, double superclass_loss,
                                  int64_t superclass_correct) {
  metrics_.aux_loss += aux_loss;
  metrics_.superclass_loss += superclass_loss;
  metrics_.superclass_correct += superclass_correct;
}

void MoeLayer::Route(const Tensor& x) {
  StartRouting();
  if (opt_.external_decision) {
    RouteExternalDecision();
    return;
  }
  SetRouterInput(x, attr_proj_.get(), attr_norm_.get());
  RouterLogits(router_.value.data());
  RouteFromLogits();
}

void MoeLayer::StartRouting() {
  Routing& R = *routing_;
  metrics_ = MoeMetrics();
  metrics_.tokens_per_expert.assign(opt_.num_experts, 0);
  const bool expert_side =
      opt_.rule == RoutingRule::kExpertChoice || opt_.rule == RoutingRule::kPatchTopL;
  R.kc = expert_side ? opt_.num_experts : opt_.top_k;
  R.router_rows =
      opt_.rule == RoutingRule::kPerImage ? R.rows / opt_.tokens_per_image : R.rows;
}

void MoeLayer::SetRouterInput(const Tensor& x, Layer* proj, Layer* norm) {
  Routing& R = *routing_;
  switch (opt_.rule) {
    case RoutingRule::kAttribute: {
      CHECK(ctx_.attributes != nullptr)
          << name_ << ": attribute routing needs the step's attributes";
      CHECK_EQ(ctx_.attributes->dim(0), R.rows) << name_ << ": one attribute row per input row";
      CHECK_EQ(ctx_.attributes->dim(1), opt_.attribute_dim) << name_ << ": attribute width";
      Tensor z = norm->Forward(proj->Forward(*ctx_.attributes));
      if (opt_.attribute_with_token) {
        for (int64_t i = 0; i < z.numel(); ++i) z.data()[i] += x.data()[i];
      }
      R.router_in = z;
      break;
    }
    case RoutingRule::kPerImage: {
      // Router input: the mean of the image's tokens (the paper leaves the choice open;
      // models/moe/README.md, "Per-image routing with super-class guidance").
      const int64_t T = opt_.tokens_per_image, D = opt_.dim;
      R.router_in = Tensor::Zeros({R.router_rows, D});
      for (int64_t t = 0; t < R.rows; ++t) {
        float* m = R.router_in.data() + (t / T) * D;
        const float* xt = x.data() + t * D;
        for (int64_t j = 0; j < D; ++j) m[j] += xt[j] / static_cast<float>(T);
      }
      break;
    }
    default: R.router_in = x;
  }
}

void MoeLayer::RouterLogits(const float* w) {
  Routing& R = *routing_;
  const int E = opt_.num_experts;
  R.clean_logits.assign(R.router_rows * E, 0.f);
  Sgemm(false, false, R.router_rows, E, opt_.dim, 1.f, R.router_in.data(), opt_.dim, w, E, 0.f,
        R.clean_logits.data(), E);
}

void MoeLayer::RouteFromLogits() {
  switch (opt_.rule) {
    case RoutingRule::kTokenTopK:
    case RoutingRule::kAttribute: RouteTokenTopK(); break;
    case RoutingRule::kExpertChoice: RouteExpertChoice(); break;
    case RoutingRule::kPatchTopL: RoutePatchTopL(); break;
    case RoutingRule::kPerImage: RoutePerImage(); break;
  }
  Routing& R = *routing_;
  CHECK_EQ(static_cast<int64_t>(R.expert.size()), R.rows * R.kc);
  CHECK_EQ(static_cast<int64_t>(R.block_rows.size()), int64_t{opt_.num_experts} * R.groups);
}

bool MoeLayer::NoiseOn() const {
  return ctx_.training && (opt_.noise == RouterNoise::kLearnedSoftplus || opt_.noise_scale > 0.f);
}

bool MoeLayer::RenormalisedGates() const {
  return opt_.rule == RoutingRule::kAttribute || opt_.renormalise_gates ||
         opt_.noise == RouterNoise::kLearnedSoftplus;  // Shazeer: softmax(KeepTopK(H, k))
}

// Training noise on R.noisy_logits (a copy of the clean ones). The N(0, 1) draws are keyed on
// (layer, step, global group, router row in group, expert), so whichever rank routes a group
// draws the same numbers. Their std: fixed (V-MoE), or softplus(router_in x W_noise) (Shazeer).
void MoeLayer::AddRouterNoise() {
  Routing& R = *routing_;
  const int E = opt_.num_experts;
  const int64_t rows = R.router_rows, G = R.groups, per_group = rows / G;
  CounterRng rng(MixKey(MixKey(seed_, HashString(name_ + ".router_noise")), ctx_.step));
  R.noise_draw.resize(rows * E);
  for (int64_t g = 0; g < G; ++g) {
    const uint64_t gid = static_cast<uint64_t>(ctx_.first_global_group + g);
    for (int64_t i = 0; i < per_group * E; ++i)
      R.noise_draw[g * per_group * E + i] = rng.Normal(gid, static_cast<uint64_t>(i));
  }
  if (opt_.noise == RouterNoise::kFixed) {
    const float sigma = opt_.noise_scale / E;
    for (int64_t i = 0; i < rows * E; ++i) R.noisy_logits[i] += sigma * R.noise_draw[i];
    return;
  }
  // Kept for the backward: dH/du = n * sigmoid(u).
  R.noise_pre.assign(rows * E, 0.f);
  Sgemm(false, false, rows, E, opt_.dim, 1.f, R.router_in.data(), opt_.dim,
        w_noise_.value.data(), E, 0.f, R.noise_pre.data(), E);
  for (int64_t i = 0; i < rows * E; ++i)
    R.noisy_logits[i] += Softplus(R.noise_pre[i]) * R.noise_draw[i];
}

// Noise on R.clean_logits (training), softmax, zeroed aux-loss gradient arrays.
void MoeLayer::RouterProbs(bool noisy) {
  Routing& R = *routing_;
  const int E = opt_.num_experts;
  const int64_t rows = R.router_rows;
  CHECK_EQ(static_cast<int64_t>(R.clean_logits.size()), rows * E);
  R.noisy_logits = R.clean_logits;
  R.noise_pre.clear();
  if (noisy) AddRouterNoise();
  R.probs.resize(rows * E);
  SoftmaxRows(R.noisy_logits.data(), rows, E, R.probs.data());
  R.probs_clean = R.probs;
  if (noisy) SoftmaxRows(R.clean_logits.data(), rows, E, R.probs_clean.data());
  R.d_probs_aux.assign(rows * E, 0.f);
  R.d_probs_clean_aux.assign(rows * E, 0.f);
  R.d_logits_aux.assign(rows * E, 0.f);
  R.d_clean_logits_aux.assign(rows * E, 0.f);
  R.d_gate_aux.clear();
}

// Auxiliary losses per routing group (over its router rows), averaged over every group of the
// global batch. Values and gradients are computed here; Backward applies the gradients.
void MoeLayer::AddAuxLosses(int64_t n, int k, bool noisy) {
  Routing& R = *routing_;
  if (!ctx_.training) return;
  const int E = opt_.num_experts;
  const float sigma = opt_.noise_scale / E;
  const float per_group = 1.f / static_cast<float>(ctx_.num_global_groups);
  for (int64_t g = 0; g < R.groups; ++g) {
    const int64_t o = g * n * E;
    if (opt_.importance_weight > 0) {
      const double l = ImportanceLoss(R.probs_clean.data() + o, n, E,
                                      opt_.importance_weight * per_group,
                                      R.d_probs_clean_aux.data() + o);
      metrics_.importance_loss += l;
      metrics_.aux_loss += opt_.importance_weight * per_group * l;
    }
    if (opt_.load_weight > 0 && noisy && sigma > 0) {
      const double l = LoadLoss(R.clean_logits.data() + o, R.noisy_logits.data() + o, n, E, k,
                                sigma, opt_.load_weight * per_group,
                                R.d_clean_logits_aux.data() + o);
      metrics_.load_loss += l;
      metrics_.aux_loss += opt_.load_weight * per_group * l;
    }
    if (opt_.switch_weight > 0) {
      const double l = SwitchLoss(R.probs.data() + o, n, E, opt_.switch_weight * per_group,
                                  R.d_probs_aux.data() + o);
      metrics_.switch_loss += l;
      metrics_.aux_loss += opt_.switch_weight * per_group * l;
    }
    if (opt_.z_weight > 0) {
      const double l = ZLoss(R.noisy_logits.data() + o, n, E, opt_.z_weight * per_group,
                             R.d_logits_aux.data() + o);
      metrics_.z_loss += l;
      metrics_.aux_loss += opt_.z_weight * per_group * l;
    }
  }
  AddBalanceSqLoss(n, k);
}

// Seed 004's balance loss on G, the plan's k gates of each router row scattered to [n, E] (0
// for the experts not kept; dropped choices count, G is the gating function's output). Its
// gradient is w.r.t. the gates, so the router backward sends it through the rule's own gate
// backward (plain or renormalised top-k), and from there to W_r and W_noise.
void MoeLayer::AddBalanceSqLoss(int64_t n, int k) {
  Routing& R = *routing_;
  if (opt_.balance_sq_weight <= 0) return;
  const int E = opt_.num_experts;
  // Per-image: an image's choices are repeated on its tokens; its first token stands for it
  // (the per-image gate backward sums the tokens' gradients).
  const int64_t stride = R.rows / R.router_rows;
  const float scale = opt_.balance_sq_weight / static_cast<float>(ctx_.num_global_groups);
  R.d_gate_aux.assign(R.rows * k, 0.f);
  std::vector<float> G(n * E), dG(n * E);
  for (int64_t g = 0; g < R.groups; ++g) {
    std::fill(G.begin(), G.end(), 0.f);
    std::fill(dG.begin(), dG.end(), 0.f);
    const auto choice = [&](int64_t i, int r) { return (g * n + i) * stride * k + r; };
    for (int64_t i = 0; i < n; ++i)
      for (int r = 0; r < k; ++r) G[i * E + R.expert[choice(i, r)]] = R.gate[choice(i, r)];
    const double l = BalanceSqLoss(G.data(), n, E, scale, dG.data());
    metrics_.balance_sq_loss += l;
    metrics_.aux_loss += scale * l;
    for (int64_t i = 0; i < n; ++i)
      for (int r = 0; r < k; ++r) R.d_gate_aux[choice(i, r)] = dG[i * E + R.expert[choice(i, r)]];
  }
}

void MoeLayer::BuildSendLayout() {
  Routing& R = *routing_;
  const int E = opt_.num_experts, El = experts_per_rank_, EP = ep_size_;
  const int64_t G = R.groups;
  R.block_offset.assign(E * G, 0);
  R.send_rows_per_peer.assign(EP, 0);
  int64_t off = 0;
  for (int e = 0; e < E; ++e)
    for (int64_t g = 0; g < G; ++g) {
      R.block_offset[e * G + g] = off;
      off += R.block_rows[e * G + g];
      R.send_rows_per_peer[e / El] += R.block_rows[e * G + g];
    }
  R.send_rows = off;

  // Receivers need the block sizes. With a fixed capacity they are known; dropless exchanges them.
  R.recv_block_rows.assign(static_cast<int64_t>(EP) * El * G, 0);
  if (opt_.dropless) {
    // Send layout per peer p: [l][g] = block (p * El + l, g), which is already contiguous.
    ScopedActivity act(name_ + " dropless block sizes");
    comm_->AllToAllInt64(R.block_rows.data(), R.recv_block_rows.data(), El * G, GroupKind::kExpert);
  } else {
    std::fill(R.recv_block_rows.begin(), R.recv_block_rows.end(), CurrentCapacity());
  }
  R.recv_rows_per_peer.assign(EP, 0);
  R.expert_rows.assign(El, 0);
  for (int s = 0; s < EP; ++s)
    for (int l = 0; l < El; ++l)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t r = R.recv_block_rows[(static_cast<int64_t>(s) * El + l) * G + g];
        R.recv_rows_per_peer[s] += r;
        R.expert_rows[l] += r;
      }
}

Tensor MoeLayer::ExchangeToExperts(const Tensor& send, const char* phase) {
  Routing& R = *routing_;
  const int64_t D = opt_.dim;
  int64_t recv_rows = 0;
  for (int64_t r : R.recv_rows_per_peer) recv_rows += r;
  Tensor received({recv_rows, D});
  std::vector<int64_t> sc(ep_size_), rc(ep_size_);
  for (int p = 0; p < ep_size_; ++p) {
    sc[p] = R.send_rows_per_peer[p] * D;
    rc[p] = R.recv_rows_per_peer[p] * D;
  }
  {
    ScopedPhase ph(ctx_.profiler, phase, R.send_rows * D * sizeof(float));
    ScopedActivity act(name_ + " " + phase);  // names the phase if the watchdog fires
    comm_->AllToAllV(send.data(), sc, received.data(), rc, GroupKind::kExpert);
  }
  Tensor expert_major({recv_rows, D});
  PermuteBlocks(received.data(), expert_major.data(), D, R.recv_block_rows, ep_size_,
                experts_per_rank_, R.groups, /*to_expert_major=*/true);
  return expert_major;
}

Tensor MoeLayer::ExchangeFromExperts(const Tensor& expert_rows, const char* phase) {
  Routing& R = *routing_;
  const int64_t D = opt_.dim;
  Tensor src_major(expert_rows.shape());
  PermuteBlocks(expert_rows.data(), src_major.data(), D, R.recv_block_rows, ep_size_,
                experts_per_rank_, R.groups, /*to_expert_major=*/false);
  Tensor back({R.send_rows, D});
  std::vector<int64_t> sc(ep_size_), rc(ep_size_);
  for (int p = 0; p < ep_size_; ++p) {
    sc[p] = R.recv_rows_per_peer[p] * D;
    rc[p] = R.send_rows_per_peer[p] * D;
  }
  ScopedPhase ph(ctx_.profiler, phase, expert_rows.numel() * sizeof(float));
  ScopedActivity act(name_ + " " + phase);
  comm_->AllToAllV(src_major.data(), sc, back.data(), rc, GroupKind::kExpert);
  return back;
}

Tensor MoeLayer::Forward(const Tensor& x) {
  CHECK_EQ(x.ndim(), 2) << name_ << ": input must be [rows, dim]";
  CHECK_EQ(x.dim(1), opt_.dim) << name_ << ": input width";
  CHECK_EQ(x.dim(0) % opt_.group_tokens, 0)
      << name_ << ": " << x.dim(0) << " rows is not a whole number of routing groups of "
      << opt_.group_tokens << " tokens";
  CHECK(router_.value.device() == x.device())
      << name_ << ": input on " << DeviceName(x.device()) << ", parameters on "
      << DeviceName(router_.value.device()) << " (MoveTo)";
#ifdef MOE_EP_HAS_CUDA
  if (x.device() == Device::kCUDA) {
    // Config validation refuses these with device "cuda"; the device router has neither.
    CHECK(!opt_.external_decision) << name_ << ": an external decision is host-path only";
    CHECK(opt_.noise == RouterNoise::kFixed && opt_.balance_sq_weight == 0.f)
        << name_ << ": learned softplus router noise and the balance-squared loss are not "
        << "supported on the CUDA path yet";
    return ForwardCuda(x);  // same maths, moe_layer_cuda.cc
  }
#endif
  routing_ = std::make_shared<Routing>();
  Routing& R = *routing_;
  R.rows = x.dim(0);
  R.groups = R.rows / opt_.group_tokens;
  R.x = x;
  const int64_t D = opt_.dim, G = R.groups;
  {
    ScopedPhase ph(ctx_.profiler, "router");
    Route(x);
  }
  Tensor send;
  {
    ScopedPhase ph(ctx_.profiler, "dispatch_pack");
    BuildSendLayout();
    send = Tensor::Zeros({R.send_rows, D});  // padding slots stay zero
    const int k = R.kc;
    for (int64_t t = 0; t < R.rows; ++t) {
      const int64_t g = t / opt_.group_tokens;
      for (int r = 0; r < k; ++r) {
        const int s = R.slot[t * k + r];
        if (s < 0) continue;
        const int64_t row = R.block_offset[R.expert[t * k + r] * G + g] + s;
        std::copy(x.data() + t * D, x.data() + (t + 1) * D, send.data() + row * D);
      }
    }
  }
  Tensor expert_in = ExchangeToExperts(send, "a2a_dispatch");
  Tensor expert_out;
  {
    ScopedPhase ph(ctx_.profiler, "experts");
    expert_out = experts_->Forward(expert_in, R.expert_rows);
  }
  R.returned = ExchangeFromExperts(expert_out, "a2a_combine");
  Tensor y = Tensor::Zeros({R.rows, D});
  {
    ScopedPhase ph(ctx_.profiler, "combine");
    const int k = R.kc;
    for (int64_t t = 0; t < R.rows; ++t) {
      const int64_t g = t / opt_.group_tokens;
      float* yt = y.data() + t * D;
      for (int r = 0; r < k; ++r) {
        const int s = R.slot[t * k + r];
        if (s < 0) continue;
        const float w = R.gate[t * k + r];
        const float* o = R.returned.data() + (R.block_offset[R.expert[t * k + r] * G + g] + s) * D;
        for (int64_t j = 0; j < D; ++j) yt[j] += w * o[j];
      }
    }
  }
  return y;
}

Tensor MoeLayer::Backward(const Tensor& dy) {
#ifdef MOE_EP_HAS_CUDA
  if (dy.device() == Device::kCUDA) return BackwardCuda(dy);  // moe_layer_cuda.cc
#endif
  CHECK(routing_) << name_ << ": Backward before Forward";
  Routing& R = *routing_;
  CHECK_EQ(dy.numel(), R.rows * opt_.dim) << name_ << ": dy shape";
  const int k = R.kc;
  const int64_t D = opt_.dim, G = R.groups;

  // combine backward: d(expert output) = gate * dy, d(gate) = <dy, expert output>.
  Tensor d_returned;
  std::vector<float> d_gate(R.rows * k, 0.f);
  {
    ScopedPhase ph(ctx_.profiler, "combine_bwd");
    d_returned = Tensor::Zeros({R.send_rows, D});
    for (int64_t t = 0; t < R.rows; ++t) {
      const int64_t g = t / opt_.group_tokens;
      const float* dyt = dy.data() + t * D;
      for (int r = 0; r < k; ++r) {
        const int s = R.slot[t * k + r];
        if (s < 0) continue;  // a dropped choice contributes nothing, so its gate gets no grad
        const int e = R.expert[t * k + r];
        const int64_t row = R.block_offset[e * G + g] + s;
        const float w = R.gate[t * k + r];
        const float* o = R.returned.data() + row * D;
        float* dout = d_returned.data() + row * D;
        double dg = 0;
        for (int64_t j = 0; j < D; ++j) {
          dout[j] = w * dyt[j];
          dg += static_cast<double>(dyt[j]) * o[j];
        }
        d_gate[t * k + r] = static_cast<float>(dg);
      }
    }
  }
  Tensor d_expert_out = ExchangeToExperts(d_returned, "a2a_combine_bwd");
  Tensor d_expert_in;
  {
    ScopedPhase ph(ctx_.profiler, "experts_bwd");
    d_expert_in = experts_->Backward(d_expert_out);
  }
  Tensor d_send = ExchangeFromExperts(d_expert_in, "a2a_dispatch_bwd");

  Tensor dx = Tensor::Zeros({R.rows, D});
  {
    ScopedPhase ph(ctx_.profiler, "dispatch_bwd");
    for (int64_t t = 0; t < R.rows; ++t) {
      const int64_t g = t / opt_.group_tokens;
      float* dxt = dx.data() + t * D;
      for (int r = 0; r < k; ++r) {
        const int s = R.slot[t * k + r];
        if (s < 0) continue;
        const float* ds = d_send.data() + (R.block_offset[R.expert[t * k + r] * G + g] + s) * D;
        for (int64_t j = 0; j < D; ++j) dxt[j] += ds[j];
      }
    }
  }
  {
    ScopedPhase ph(ctx_.profiler, "router_bwd");
    if (opt_.external_decision) {
      ExternalDecisionBackward(d_gate);  // the owner's router takes it from there
    } else {
      RouterBackward(d_gate, &dx);
    }
  }
  return dx;
}

}  // namespace moe
