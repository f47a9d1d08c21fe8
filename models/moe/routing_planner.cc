#include "models/moe/routing_planner.h"

#include <glog/logging.h>

namespace moe {

int64_t MoeLayerView::Capacity() const {
  if (opt.dropless) return -1;
  return rule.Capacity(opt, ctx.training ? opt.capacity_factor_train : opt.capacity_factor_eval);
}

void StartRouting(const MoeLayerView& L, int64_t rows, RoutingState* R) {
  R->rows = rows;
  R->groups = rows / L.opt.group_tokens;
  R->kc = L.rule.ChoicesPerRow(L.opt);
  R->router_rows = L.router.RouterRows(rows);
  L.metrics = MoeMetrics();
  L.metrics.tokens_per_expert.assign(L.opt.num_experts, 0);
}

void DecideOnHost(const MoeLayerView& L, const Tensor& x, const float* router_w, Layer* proj,
                  Layer* norm, RoutingState* R) {
  if (!L.opt.external_decision) {
    L.router.SetInput(x, L.ctx, proj, norm, R);
    L.router.Logits(router_w, R);
  }
  DecideFromLogits(L, R);
}

void DecideFromLogits(const MoeLayerView& L, RoutingState* R) {
  // Every rule reads the probabilities, and the router backward needs them even where a rule's
  // gates do not depend on them; an external decision has no router here.
  const bool noisy = !L.opt.external_decision && L.router.NoiseOn(L.ctx);
  if (!L.opt.external_decision) L.router.Probs(L.ctx, noisy, R);
  RuleContext c{L.name, L.opt, L.ctx, L.router, *R, L.metrics, L.Capacity(), L.external, noisy};
  L.rule.Decide(c);
  CHECK_EQ(static_cast<int64_t>(R->expert.size()), R->rows * R->kc) << L.name << ": plan size";
  CHECK_EQ(static_cast<int64_t>(R->block_rows.size()), int64_t{L.opt.num_experts} * R->groups)
      << L.name << ": block sizes";
}

std::vector<float> CleanLogitsGradOnHost(const MoeLayerView& L, const std::vector<float>& d_gate,
                                         RoutingState* R) {
  const int64_t E = L.opt.num_experts;
  CHECK_EQ(static_cast<int64_t>(d_gate.size()), R->rows * R->kc) << L.name << ": d_gate size";
  // The gates' gradient: the combine's, plus that of the aux losses that read the gates (a
  // dropped choice gets only the latter: the loss sees the gating function, not the capacity).
  std::vector<float> d_gate_all = d_gate;
  for (size_t i = 0; i < R->d_gate_aux.size(); ++i) d_gate_all[i] += R->d_gate_aux[i];
  std::vector<float> d_probs = R->d_probs_aux;              // w.r.t. softmax(noisy logits)
  if (d_probs.empty()) d_probs.assign(R->router_rows * E, 0.f);
  std::vector<float> d_logits(R->router_rows * E, 0.f);     // w.r.t. the noisy logits directly
  RuleContext c{L.name,     L.opt,         L.ctx,      L.router,
                *R,         L.metrics,     L.Capacity(), L.external,
                R->noisy};
  L.rule.GateBackward(c, d_gate_all, &d_probs, &d_logits);
  return L.router.CleanLogitsGrad(d_probs, d_logits, R);
}

}  // namespace moe
