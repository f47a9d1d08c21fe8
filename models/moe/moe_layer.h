// MoeLayer: the expert-parallel MoE MLP (V-MoE style), forward and backward.
//
// Forward on rank r, for the G routing groups of its micro-batch (group = group_tokens rows):
//   router     logits = x W_r (+ N(0, sigma^2) noise in training), probs = softmax, top-k
//   assign     capacity slots per (group, expert), 1st choices before 2nd, BPR optional
//   pack       send buffer ordered (expert, group, slot): expert-major means destination-major
//   a2a out    over the EP group; rank p receives [src][local expert][group][slots]
//   experts    rearranged expert-major, one GEMM per expert weight over all received rows
//   a2a back   the inverse exchange
//   combine    y_t = sum over kept choices of gate * expert output (gates not renormalised)
// Backward runs the same path in reverse (two more all-to-alls).
//
// Dropless mode replaces the fixed capacity by exact per-(group, expert) counts, exchanged with
// an integer all-to-all before the data all-to-all-v; the rest of the path is identical.
//
// Device: the path is chosen by the input's device. After MoveTo(Device::kCUDA), Forward and
// Backward take device tensors and run the same maths with CUDA kernels (moe_layer_cuda.cc; the
// communicator must then work on device memory: an NcclCommunicator, or any communicator when
// ep_size == 1).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/parameter.h"
#include "core/profiler.h"
#include "core/tensor.h"
#include "models/layers/layer.h"
#include "models/moe/capacity.h"

namespace moe {

// How the router turns its input into (row, expert, slot, gate) assignments. One MoE layer
// serves every family; a rule changes only the router and the slot assignment, never the
// dispatch, all-to-all, experts or combine (moe_route_*.cc, one file per rule).
enum class RoutingRule {
  kTokenTopK,     // V-MoE: softmax top-k per token, 1st choices fill before 2nd, BPR optional
  kExpertChoice,  // Zhou 2022: each expert takes its top-C tokens of the group (C from the
                  // capacity factor with k = 1); a token gets 0..E experts; top_k is unused
  kPatchTopL,     // pMoE: expert s's router keeps its own top-l patches of every image; gate =
                  // softmax over the kept scores (or over all patches, kept unnormalised)
  kPerImage,      // Mobile V-MoE: one decision per image from the mean of its tokens; capacity
                  // counts whole images; optional super-class guidance of the router
  kAttribute,     // Uni-Perceiver-MoE: router input LayerNorm(Linear(attribute bits)) (plus
                  // the token, optionally); top-k gates renormalised to sum to 1
};

const char* RoutingRuleName(RoutingRule rule);

// The router's training noise on the clean logits h = x W_r, per (row, expert), drawn from a
// counter-based RNG keyed on (layer, step, global group, row, expert).
enum class RouterNoise {
  kFixed,            // V-MoE: h + N(0, 1) * noise_scale / E
  kLearnedSoftplus,  // Shazeer et al. 2017: h + N(0, 1) * softplus(x W_noise), W_noise learned
                     // (zero at init); gates are a softmax over the kept k (renormalised)
};

struct MoeLayerOptions {
  int dim = 0;
  int hidden = 0;
  int num_experts = 8;
  int top_k = 2;
  int64_t group_tokens = 0;  // rows per routing group
  double capacity_factor_train = 1.05;
  double capacity_factor_eval = 1.25;
  CapacityRounding rounding = CapacityRounding::kCeil;
  bool batch_prioritized = false;
  bool dropless = false;
  float noise_scale = 1.f;  // noise std = noise_scale / num_experts
  float importance_weight = 0.005f;
  float load_weight = 0.005f;
  float switch_weight = 0.f;
  float z_weight = 0.f;
  // kLearnedSoftplus: token top-k only, without the load loss (whose estimator assumes the
  // fixed std); noise_scale is unused.
  RouterNoise noise = RouterNoise::kFixed;
  // Seed 004's balance loss sum_e (1/E - mean over a group's router rows of G_e)^2, G the gates
  // of the kept k (0 elsewhere); token-side rules (kTokenTopK, kAttribute, kPerImage).
  float balance_sq_weight = 0.f;

  RoutingRule rule = RoutingRule::kTokenTopK;
  // kPatchTopL and kPerImage: rows per image (a routing group holds whole images).
  int64_t tokens_per_image = 0;
  // kPatchTopL: patches each expert keeps per image (l < tokens_per_image), the gate form, and
  // hard gates (pMoE's second phase: every kept patch weighs 1, the router gets no gradient).
  int patch_top_l = 0;
  bool patch_gate_over_all = false;  // false: softmax over the kept l (pMoE MNIST version)
  bool hard_gates = false;
  // Renormalise the k kept gates to sum to 1 (kAttribute always does; others may opt in).
  bool renormalise_gates = false;
  // kAttribute: attribute bits per row (MoeStepContext::attributes) and whether the router also
  // sees the token (router input = token + attribute embedding).
  int attribute_dim = 0;
  bool attribute_with_token = false;
  // kPerImage: weight of CE(clean router logits, super-class label) (Mobile V-MoE: 0.3);
  // super-class ids index experts, so they must lie in [0, num_experts).
  float superclass_weight = 0.f;
  // The experts' nonlinearity between fc1 and fc2 (ExpertBank): exact GELU, as ViT's MLP, for
  // every family but pMoE, whose two-layer CNN experts use ReLU (PmoeMoeOptions).
  enum class Activation { kGelu, kRelu };
  Activation expert_activation = Activation::kGelu;
  // kPerImage: the decision comes from outside (SetExternalDecision: Mobile V-MoE's shared
  // router, models/nets/mobile_vmoe.h). The layer then has no router parameter, no noise and no
  // aux losses of its own; superclass_weight only marks the layer that reports the guidance.
  bool external_decision = false;
};

// A per-image decision made outside the layer (options().external_decision), and where the
// layer's Backward returns the gradient of the gates it used.
struct ExternalImageDecision {
  std::vector<int> expert;    // [images * top_k], global expert ids, in image order
  std::vector<float> gate;    // [images * top_k]
  std::vector<float> d_gate;  // [images * top_k]; Backward ADDS d(objective)/d(gate) here
};

// What changes every step; set before Forward.
struct MoeStepContext {
  bool training = true;
  int64_t step = 0;
  int64_t first_global_group = 0;   // global id of this rank's first routing group
  int64_t num_global_groups = 1;    // groups in the global batch (aux losses are their mean)
  Profiler* profiler = nullptr;
  // Scale of per-image supervised router losses (the trainer's 1 / global batch, so that P
  // ranks sum to what 1 rank computes).
  float image_loss_scale = 0.f;
  // kPerImage with superclass_weight > 0: this rank's images' super-class ids (host, one per
  // image of the micro-batch, in row order).
  const std::vector<int>* superclass = nullptr;
  // kAttribute: [rows, attribute_dim] bits (0/1 floats), host, one row per input row.
  const Tensor* attributes = nullptr;
};

// Per-forward statistics, summed over this rank's groups (the trainer reduces over ranks).
struct MoeMetrics {
  std::vector<int64_t> tokens_per_expert;  // kept assignments per global expert
  int64_t assignments = 0;                 // tokens * k
  int64_t dropped = 0;                     // assignments that found their expert full
  int64_t capacity_slots = 0;              // slots offered (C * E * groups); 0 when dropless
  double aux_loss = 0;                     // weighted, already divided by num_global_groups
  double importance_loss = 0, load_loss = 0, switch_loss = 0, z_loss = 0;  // unweighted sums
  double balance_sq_loss = 0;                                             // unweighted sum
  double superclass_loss = 0;  // sum over images of CE(router logits, super-class), unweighted
  int64_t superclass_correct = 0;  // images whose router argmax is their super-class
  // Expert-side rules (expert choice, patch top-l) fill every slot, so nothing is "dropped";
  // what they leave out is rows that no expert took (their MoE output is 0).
  int64_t unrouted_rows = 0;
};

class ExpertBank;

class MoeLayer : public Layer {
 public:
  MoeLayer(const std::string& name, const MoeLayerOptions& options, Communicator* comm,
           uint64_t seed);
  ~MoeLayer() override;

  void SetStepContext(const MoeStepContext& ctx) { ctx_ = ctx; }
  // options().external_decision: the decision the next Forward follows (kept by the caller, who
  // sizes d_gate and zeroes it before Backward), and the guidance metrics its owner computed
  // for this Forward (added to metrics(); call after Forward).
  void SetExternalDecision(ExternalImageDecision* d) { external_ = d; }
  void AddExternalMetrics(double aux_loss, double superclass_loss, int64_t superclass_correct);
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::vector<Parameter*> Parameters() override;
  // Moves every parameter's value and grad to `device` (copies; grads keep their values) and
  // drops the state of the last Forward. Inputs must then live on that device.
  void MoveTo(Device device) override;

  const MoeMetrics& metrics() const { return metrics_; }
  const MoeLayerOptions& options() const { return opt_; }
  // pMoE's experts-only phase switches kPatchTopL to hard gates mid-run. Call between steps
  // (never between a Forward and its Backward: the router backward reads the flag).
  void set_hard_gates(bool on) { opt_.hard_gates = on; }
  // Capacity per (group, expert) for the current mode; -1 when dropless.
  int64_t CurrentCapacity() const;
  const std::string& name() const { return name_; }
  // Routing analytics: calls fn(row, global expert, gate) for every kept assignment of the last
  // Forward on the host path (rows are this rank's input rows; rows / tokens_per_image is the
  // image when the caller's rows are per-image blocks). Not available after a CUDA Forward.
  void ForEachKeptAssignment(const std::function<void(int64_t, int, float)>& fn) const;

 private:
  struct Routing;  // per-forward routing state (moe_routing_state.h)
  // Host routing in three steps, so that the CUDA path can run the last one (and the attribute
  // rule's first two) on host arrays: StartRouting + SetRouterInput + RouterLogits, then
  // RouteFromLogits (the rule's decision from R.clean_logits).
  void Route(const Tensor& x);
  void StartRouting();  // metrics reset, R.kc and R.router_rows for the rule
  // R.router_in from the host input x (x may be empty for kAttribute without the token); the
  // attribute embedding runs through `proj` and `norm` (attr_proj_/attr_norm_ on the host path).
  void SetRouterInput(const Tensor& x, Layer* proj, Layer* norm);
  void RouterLogits(const float* w);  // R.clean_logits = R.router_in x w (host [D, E])
  void RouteFromLogits();
  // Per rule (moe_route_<rule>.cc): fill the routing plan, metrics and aux-loss gradients.
  void RouteTokenTopK();
  void RouteExpertChoice();
  void RoutePatchTopL();
  void RoutePerImage();
  void RouteExternalDecision();  // options().external_decision
  void ExternalDecisionBackward(const std::vector<float>& d_gate);
  // Shared router steps: training noise keyed on global indices, softmax, aux losses.
  bool NoiseOn() const;           // training, and noise configured
  bool RenormalisedGates() const;  // the k kept gates are a softmax over the kept k logits
  void AddRouterNoise();          // R.noisy_logits += N(0, 1) x the configured std
  void RouterProbs(bool noisy);
  void AddAuxLosses(int64_t router_rows_per_group, int k, bool noisy);
  // Balance-squared loss of every group from the plan's gates: value into the metrics, its
  // gradient w.r.t. the gates into R.d_gate_aux (router row i's choices are row i * stride's).
  void AddBalanceSqLoss(int64_t router_rows_per_group, int k);
  // Token-side rules: V-MoE capacity fill of R.expert/R.gate (1st choices first, BPR optional).
  void FillCapacitySlots(int64_t capacity);
  // Backward of the router: d_gate [rows * kc] -> router grads, returns the input's share of dx.
  // = ApplyRouterGrad(RouterLogitsGrad(d_gate), router weights, their grad, dx, attr layers).
  void RouterBackward(const std::vector<float>& d_gate, Tensor* dx);
  // d(clean logits) [router_rows * E]: the rule's gate backward, softmax backward, aux terms.
  std::vector<float> RouterLogitsGrad(const std::vector<float>& d_gate);
  // Its last step: d(noisy probs), d(noisy logits) -> d(clean logits), and R.d_noise_pre.
  std::vector<float> CleanLogitsGrad(const std::vector<float>& d_probs,
                                     const std::vector<float>& d_logits);
  // w_grad += router_in^T d_clean (host [D, E]); dx += the router input's share (skipped when
  // dx is nullptr); kAttribute: backward through `norm` and `proj`.
  void ApplyRouterGrad(const std::vector<float>& d_clean, const float* w, float* w_grad,
                       Tensor* dx, Layer* proj, Layer* norm);
  // kLearnedSoftplus: W_noise's gradient and its share of dx from R.d_noise_pre.
  void ApplyNoiseGrad(Tensor* dx);
  void BuildSendLayout();
  Tensor ExchangeToExperts(const Tensor& send, const char* phase);
  Tensor ExchangeFromExperts(const Tensor& expert_rows, const char* phase);
  // CUDA path (moe_layer_cuda.cc, compiled when MOE_EP_HAS_CUDA): device routing state and
  // pinned staging buffers live in CudaState, defined there.
  struct CudaState;
  Tensor ForwardCuda(const Tensor& x);
  Tensor BackwardCuda(const Tensor& dy);
  // Every rule but plain token top-k decides on the host (moe_layer_cuda_host_route.cc): the
  // plan is uploaded into CudaState; Backward's router step goes through the host again.
  bool RoutesOnDevice() const;
  void RouteOnHostForCuda(const Tensor& x);
  void RouterBackwardForCuda(const float* d_gate_host, Tensor* dx);

  std::string name_;
  MoeLayerOptions opt_;
  Communicator* comm_;
  uint64_t seed_;
  int ep_size_, ep_rank_, experts_per_rank_;
  Parameter router_;  // [D, E], dense: replicated on every rank
  Parameter w_noise_;  // [D, E], dense; kLearnedSoftplus only (empty otherwise)
  // kAttribute: attribute embedding z = LayerNorm(Linear(a)), dense.
  std::unique_ptr<Layer> attr_proj_, attr_norm_;
  std::unique_ptr<ExpertBank> experts_;
  MoeStepContext ctx_;
  MoeMetrics metrics_;
  std::shared_ptr<Routing> routing_;
  std::shared_ptr<CudaState> cuda_;  // CUDA path only
  ExternalImageDecision* external_ = nullptr;
};

}  // namespace moe
