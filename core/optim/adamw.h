// AdamW (Loshchilov & Hutter): Adam with weight decay decoupled from the gradient.
//
// Per parameter p with gradient g, at step t (1-based, one Step() call = one step):
//   p <- p - lr * wd * p                    (only where DecayApplies(p.name); uses p before the
//                                            Adam update, as PyTorch's AdamW does)
//   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
//   p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// State (m, v) is kept per Parameter*, created zeroed on first sight, so the same optimizer can be
// stepped with any subset of parameters. Every replica runs the same update on the same (already
// synchronised) gradients, so the replicas stay bit-identical.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/parameter.h"

namespace moe {

struct AdamWConfig {
  float lr = 1e-3f;            // peak rate; Step() takes the scheduled rate explicitly
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 1e-4f;
};

// Weight decay applies to weights only. It is skipped for a parameter whose name
//   - ends in ".b" or ".bias"                   (biases),
//   - contains "norm" or "ln"                   (LayerNorm gains and shifts: "block0.ln1.gamma"),
//   - contains "pos_embed"                      (position embeddings).
// Matching is on the raw name string, case-sensitive.
bool DecayApplies(const std::string& name);

// One update's scalars for one parameter tensor: the scheduled rate, the betas and eps, the weight
// decay to apply (the config's value where DecayApplies(name), 0 otherwise) and the 1-based step
// count after the increment (it drives the bias corrections).
struct AdamWStepScalars {
  float lr = 0.f, beta1 = 0.f, beta2 = 0.f, eps = 0.f, weight_decay = 0.f;
  int64_t step = 1;
};

// The update above on one host tensor of n elements: w, m, v in place, g read. AdamW::Step runs
// it per parameter; the CPU backend's AdamWStep (core/backend.h) runs it for the trainer.
void AdamWUpdateHost(float* w, const float* g, float* m, float* v, int64_t n,
                     const AdamWStepScalars& s);

struct AdamWMoments {
  std::vector<float> m, v;  // same element count as the parameter
};

class AdamW {
 public:
  explicit AdamW(const AdamWConfig& config);

  // One update of every parameter in params with learning rate lr (host tensors only).
  // Increments the step counter once per call.
  void Step(const std::vector<Parameter*>& params, float lr);
  // Same with config().lr.
  void Step(const std::vector<Parameter*>& params) { Step(params, config_.lr); }

  const AdamWConfig& config() const { return config_; }
  int64_t step_count() const { return step_; }
  // For checkpoint restore: the number of steps already taken (drives the bias correction).
  void set_step_count(int64_t step) { step_ = step; }

  // The moments of p (created zeroed on first use); for checkpointing and tests.
  AdamWMoments& MomentsFor(const Parameter* p);
  // nullptr when p has never been stepped.
  const AdamWMoments* FindMoments(const Parameter* p) const;

 private:
  AdamWConfig config_;
  int64_t step_ = 0;
  std::unordered_map<const Parameter*, AdamWMoments> state_;
};

}  // namespace moe
