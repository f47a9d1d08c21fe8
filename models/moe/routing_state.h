// One Forward's routing state on the host: what the router and the rule decide and what the
// router's backward reuses. Internal to models/moe (router, rules/, the host routing planner).
//
// Index conventions:
//   choice (t, r)      -> t * kc + r, t a local row, r < kc. kc = choices per row: top_k for the
//                         token rules, E for the expert-side rules (expert choice, patch top-l),
//                         where choice r is expert r and slot -1 means "not taken".
//   router row i       -> what the router scored: a token (token rules), an image (per-image)
//   send block (e, g)  -> e * G + g: expert-major, so the blocks for EP peer p are contiguous
//   recv block         -> (src * El + l) * G + g, as the all-to-all delivers them
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "models/moe/moe_options.h"

namespace moe {

// The auxiliary gradient buffer *v as `size` zeros on its first use in a step; its data.
inline float* AuxGradBuffer(std::vector<float>* v, size_t size) {
  if (v->empty()) v->assign(size, 0.f);
  return v->data();
}

struct RoutingState {
  int64_t rows = 0, groups = 0;
  int kc = 0;
  Tensor x;
  // The router: logits = router_in [router_rows, D] x W [D, E] (+ noise in training).
  int64_t router_rows = 0;
  Tensor router_in;
  std::vector<float> clean_logits, noisy_logits, probs, probs_clean;  // [router_rows, E]
  // The plan: [rows * kc]; slot -1 = dropped or not taken.
  std::vector<int> expert, slot;
  std::vector<float> gate;
  std::vector<int64_t> block_rows;       // [E * G] rows per send block (C, or exact if dropless)
  std::vector<int64_t> recv_block_rows;  // [EP * El * G], src-major, as this rank receives
  // Auxiliary-loss gradients, computed with the values in Forward and applied in Backward:
  // w.r.t. the noisy probs, the clean probs, the noisy logits and the clean logits
  // [router_rows, E]. Each stays EMPTY (and reads as zeros) until a loss writes it: sized through
  // AuxGradBuffer, so a step whose losses are off fills and reads none of them.
  std::vector<float> d_probs_aux, d_probs_clean_aux, d_logits_aux, d_clean_logits_aux;
  // Aux-loss gradient w.r.t. the plan's gates [rows * kc] (the balance-squared loss); empty
  // when no loss reads the gates.
  std::vector<float> d_gate_aux;
  // kLearnedSoftplus in training: the N(0, 1) draws, u = router_in x W_noise (the std is
  // softplus(u)) [router_rows, E], and d(objective)/du from the router backward.
  std::vector<float> noise_draw, noise_pre, d_noise_pre;
  bool noisy = false;  // this Forward drew noise (noise_draw holds this step's draws)

  // Back to the state of a new RoutingState for the next Forward, keeping the vectors' memory:
  // the router and the rules size every vector they use (and test emptiness where a vector is
  // optional), so reusing one state across steps saves its allocations and nothing else.
  // The logits, probabilities and noise draws keep their contents too: every Forward rewrites
  // them whole (a cleared vector would be zero-filled again by the resize, a pass over
  // [rows, E] each that showed as 17% of the router at E = 128).
  void Reset() {
    rows = groups = router_rows = 0;
    kc = 0;
    noisy = false;
    x = Tensor();
    router_in = Tensor();
    for (std::vector<float>* v :
         {&gate, &d_probs_aux, &d_probs_clean_aux, &d_logits_aux, &d_clean_logits_aux,
          &d_gate_aux, &noise_pre, &d_noise_pre})
      v->clear();
    expert.clear();
    slot.clear();
    block_rows.clear();
    recv_block_rows.clear();
  }
};

}  // namespace moe
