// MoeLinearPair: two routed linear layers that share ONE routing decision -- Uni-Perceiver-MoE's
// MoE attention, where the qkv projection is routed and the output projection reuses its routing
// (models/moe/README.md, "Conditional routing"). The caller runs whatever sits between the two
// (the attention).
//
//   first:   y1_t = sum_r g_tr (x_t W1[e_tr] + b1[e_tr])     W1 [E, in1, out1], b1 [E, out1]
//   second:  y2_t = sum_r g_tr (h_t W2[e_tr] + b2[e_tr])     W2 [E, in2, out2], b2 [E, out2]
//
// Routing follows the conditional rules of the FFN MoE (MoeLayer, kAttribute / renormalised
// top-k): logits = z W_g (no bias; + N(0, (noise_scale / E)^2) in training), probs = softmax,
// top-k, the k gates renormalised to sum to 1 (RenormalisedTopK, rule_selections.h). The router's
// input z, by the pair's RouterInput:
//   kToken       the token x_t: one decision per token
//   kImageMean   the mean of the image's tokens: one decision per image (the "context" level)
//   kAttributes  LayerNorm(Linear(a)) of an attribute row (MoeStepContext::attributes): one
//                decision per (image, segment), a segment being the image's tokens with one
//                attribute row (all of them when every token carries the same bits; the task
//                token and the patch tokens otherwise)
// The noise is keyed on (layer, step, global image, key, expert) with key = the token in the image
// (kToken), 0 (kImageMean) or the segment's attribute bits (kAttributes), so a sharded run draws
// what one rank draws and equal attributes in an image share one draw in training too. Each pair
// (the conditional FFN's, the attention's) has its own router, as in the paper, and no auxiliary
// losses: nothing is dropped, and under attribute routing the load is fixed by the data's
// (task, modality, token type) mix, not by the router.
//
// Where the experts live: on EVERY rank, as dense (replicated) parameters whose gradients are
// all-reduced over the world -- not sharded like MoeLayer's experts. That is what makes the
// merged weights possible: with one decision per image, W = sum_r g_r W[e_r] (exact for linear
// experts, models/moe/README.md, case 11) is built once per distinct decision and the image's
// rows take ONE GEMM, with no dispatch and no all-to-all. Under attribute routing at evaluation
// an entire batch has at most (tasks x modalities x token types) distinct decisions. Per-token
// decisions (kToken), images of several attribute segments, or merge_weights off, take the
// per-expert path: gather each expert's rows, one GEMM per expert, gate-weighted scatter. Both
// paths are exact; a test checks they agree. (Bytes this moves against a token all-to-all:
// tests/bench/RESULTS.md, conditional part.)
//
// Call order per step: ForwardFirst, ForwardSecond, BackwardSecond, BackwardFirst (the router's
// gradients from both layers are applied in BackwardFirst).
//
// Devices: the pair runs where ForwardFirst's input is (moe_linear_pair_cuda.cc, compiled with
// MOE_EP_HAS_CUDA; every parameter on the device after MoveParameterTo). On the device the
// routing decision and the router's backward stay on the host (the same code as the host path,
// on host copies of the router's parameters refreshed every step); the merged weights, the
// GEMMs and the expert gradients run on the device. Both paths: the merged one, and the
// per-expert one (kToken, or merge_weights off) with the (row, choice) lists and gates uploaded
// per forward and a gather / GEMM / gate-weighted scatter-add per expert.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/parameter.h"
#include "core/tensor.h"
#include "models/layers/layer.h"
#include "models/moe/moe_layer.h"

namespace moe {

struct MoeLinearPairOptions {
  // Parameter names: <name>.<first_name>.w / .b, <name>.<second_name>.w / .b, <name>.router.*.
  std::string first_name = "fc1", second_name = "fc2";
  int64_t in1 = 0, out1 = 0, in2 = 0, out2 = 0;
  int num_experts = 8;
  int top_k = 2;
  enum class RouterInput { kToken, kImageMean, kAttributes };
  RouterInput router_input = RouterInput::kAttributes;
  int64_t tokens_per_image = 0;
  // Routing groups of the step context are counted in images: the global image of local image i
  // is first_global_group * images_per_group + i (the noise key).
  int64_t images_per_group = 1;
  int attribute_dim = 0;     // kAttributes: bits per row of MoeStepContext::attributes
  float noise_scale = 1.f;   // noise std = noise_scale / num_experts, training only
  bool merge_weights = true; // per-image decisions: merged weights (false: per-expert path)
};

class MoeLinearPair {
 public:
  MoeLinearPair(const std::string& name, const MoeLinearPairOptions& options, uint64_t seed);
  ~MoeLinearPair();

  void SetStepContext(const MoeStepContext& ctx) { ctx_ = ctx; }
  // x [rows, in1], rows a whole number of images: routes, then returns y1 [rows, out1].
  Tensor ForwardFirst(const Tensor& x);
  // h [rows, in2] -> y2 [rows, out2] with the routing of the last ForwardFirst.
  Tensor ForwardSecond(const Tensor& h);
  // dy2 -> dh; accumulates the second layer's grads and keeps its gate grads for the router.
  Tensor BackwardSecond(const Tensor& dy2);
  // dy1 -> dx (the router's share included for kToken / kImageMean); accumulates the first
  // layer's and the router's grads.
  Tensor BackwardFirst(const Tensor& dy1);
  std::vector<Parameter*> Parameters();
  // Zeroes columns [begin, begin + count) of every expert's bias gradient of layer 0 or 1, on
  // whichever device the gradient is (MoeSelfAttention's key bias).
  void ZeroBiasGradColumns(int layer, int64_t begin, int64_t count);

  const MoeLinearPairOptions& options() const { return opt_; }
  // Expert weights [E, in, out] and biases [E, out] of layer 0 (first) or 1 (second).
  Parameter* weight(int layer) { return &w_[layer]; }
  Parameter* bias(int layer) { return &b_[layer]; }
  // The last ForwardFirst's plan, per ROW (token): k experts and their gates, [rows * k].
  std::vector<int> RowExperts() const;
  std::vector<float> RowGates() const;
  // The last ForwardFirst's router input, on the host ([decisions, in1]): what the gates are
  // computed from. For kImageMean it is MeanPoolTokens' mean (double sums in token order, one
  // division), on both paths, so that host and device twins route identically.
  const Tensor& router_input() const { return router_in_; }
  // Distinct decisions the merged path ran (GEMMs per layer); 0 on the per-expert path.
  int64_t merged_groups() const { return static_cast<int64_t>(groups_.size()); }
  // Whether the last ForwardFirst took exactly one decision per image.
  bool one_decision_per_image() const { return decisions_ * opt_.tokens_per_image == rows_; }

 private:
  bool PerImage() const { return opt_.router_input != MoeLinearPairOptions::RouterInput::kToken; }
  int64_t DecisionOf(int64_t row) const { return decision_of_row_[row]; }
  // The decisions of this forward: decisions_, decision_of_row_, decision_image_, decision_key_
  // (kAttributes reads the step's attributes for the segments).
  void PlanDecisions();
  // The router's input (router_in_, host) from the host path's x.
  void RouterInputHost(const Tensor& x);
  // From router_in_: logits, noise, softmax, top-k and the groups of identical decisions.
  void Decide();
  void GroupDecisions();
  void MergeGroupsHost();
  // The router parameter and attribute layers the host-side routing reads and writes: the real
  // ones on the host path, the host copies on the device path.
  Parameter& RouterParam() { return on_device_ ? host_router_ : router_; }
  Layer* AttrProj() { return on_device_ ? host_attr_proj_.get() : attr_proj_.get(); }
  Layer* AttrNorm() { return on_device_ ? host_attr_norm_.get() : attr_norm_.get(); }
  // One routed linear (w [E, in, out], b [E, out]) on input x; `which` picks the cached state.
  Tensor RoutedForward(int which, const Tensor& x);
  Tensor RoutedBackward(int which, const Tensor& dy);
  // Host router backward: router (and attribute-layer) grads accumulated; returns dL/d(router
  // input) [decisions, in1] for kToken / kImageMean (empty for kAttributes).
  Tensor RouterBackward();
  // The device half: moe_linear_pair_cuda.cc (a build without the CUDA path links
  // moe_linear_pair_cpu_only.cc instead, where they are unreachable: no tensor lives on a device).
  void RouterInputCuda(const Tensor& x);
  void MergeGroupsCuda();
  Tensor RoutedForwardCuda(int which, const Tensor& x);
  Tensor RoutedBackwardCuda(int which, const Tensor& dy);
  Tensor MergedInputGradCuda(int which, const Tensor& dy);
  // Per-expert path on the device: the plan (by_expert_) up, then per expert gather / GEMM /
  // scatter-add; the backward's gate gradients come down into d_gate_.
  void UploadExpertPlanCuda();
  Tensor RoutedForwardExpertsCuda(int which, const Tensor& x);
  Tensor RoutedBackwardExpertsCuda(int which, const Tensor& dy);
  void RouterBackwardCuda(Tensor* dx);
  void ZeroBiasGradColumnsCuda(int layer, int64_t begin, int64_t count);

  std::string name_;
  MoeLinearPairOptions opt_;
  uint64_t seed_;
  Parameter w_[2], b_[2];
  Parameter router_;  // [in1, E]
  std::unique_ptr<Layer> attr_proj_, attr_norm_;
  MoeStepContext ctx_;

  // Per-forward state.
  int64_t rows_ = 0, decisions_ = 0;
  std::vector<int64_t> decision_of_row_;   // [rows]
  std::vector<int64_t> decision_image_;    // [decisions] local image of each decision
  std::vector<uint64_t> decision_key_;     // [decisions] the noise key within the image
  std::vector<int64_t> decision_row_;      // [decisions] its first row
  Tensor router_in_;                       // [decisions, in1]
  std::vector<float> probs_;               // [decisions, E] softmax of the (noisy) logits
  std::vector<int> expert_;                // [decisions * k]
  std::vector<float> gate_, d_gate_;       // [decisions * k]
  Tensor in_[2];                           // the two layers' inputs
  // Merged path: images grouped by identical decisions; each group's merged weights per layer.
  struct Group {
    int64_t decision = 0;                  // a representative decision (its experts and gates)
    std::vector<int64_t> images;
    Tensor w[2], b[2];
  };
  std::vector<Group> groups_;
  // Per-expert path: (row, choice) pairs per expert, and every choice's unweighted output.
  std::vector<std::vector<std::pair<int64_t, int>>> by_expert_;
  Tensor choice_out_[2];                   // [rows * k, out]

  // Device path: whether the last ForwardFirst ran on the device; the host copies of the router
  // parameters; every group's merged weights and biases as rows of one device tensor per layer
  // ([groups, in * out], [groups, out]; group g = groups_[g]).
  bool on_device_ = false;
  Parameter host_router_;
  std::unique_ptr<Layer> host_attr_proj_, host_attr_norm_;
  Tensor merged_w_[2], merged_b_[2];
  // Device per-expert path: by_expert_ flattened in expert order (expert e owns entries
  // [plan_offset_[e], plan_offset_[e + 1])): the rows (an int32 tensor) and each entry's gate;
  // choice_out_[l] then holds the expert outputs in that order.
  std::vector<int64_t> plan_offset_;
  Tensor plan_rows_, plan_gates_;
};

}  // namespace moe
