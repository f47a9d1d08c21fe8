// Routing rules beyond V-MoE's token top-k, as pure functions on one routing group (host arrays).
// The model families build on these: expert choice (Zhou et al. 2022), pMoE's
// per-expert top-l patches, Mobile V-MoE's per-image routing, and conditional MoE's renormalised
// top-k with merged expert weights. Ties always go to the lower index, as in TopKRows.
#pragma once

#include <cstdint>
#include <vector>

namespace moe {

// Expert choice: scores [n, E] (softmax over experts per token); expert e takes the `capacity`
// tokens with the highest scores[:, e] (capacity <= n). token[e * capacity + c] is its c-th
// token in descending score order, gate[...] that score. A token may be taken by 0..E experts.
void ExpertChoiceSelect(const float* scores, int64_t n, int E, int64_t capacity, int64_t* token,
                        float* gate);

// pMoE gate modes (models/moe/README.md, "pMoE: per-expert top-l patches"): softmax over the l
// kept scores (the MNIST version, default), or softmax over all n patches with the top-l values
// kept unnormalised (the WideResNet version).
enum class PatchGateMode { kSoftmaxOverKept, kSoftmaxOverAllKeepTopL };

// pMoE: scores [n, E] for one image (r_{j,s} = <w_s, x_j>); expert s keeps its own top-l patches.
// patch[s * l + i] is expert s's i-th patch (descending score), gate[s * l + i] its gate.
void PatchTopL(const float* scores, int64_t n, int E, int l, PatchGateMode mode, int64_t* patch,
               float* gate);

// Mobile V-MoE: one routing decision per image. image_probs [B, E] come from the router applied
// to a per-image vector; top-k experts per image (gates = probs, not renormalised) are copied to
// every one of its tokens_per_image tokens: expert/gate are [B * tokens_per_image * k].
void PerImageRouting(const float* image_probs, int64_t B, int E, int k, int64_t tokens_per_image,
                     int* expert, float* gate);

// Conditional MoE (Uni-Perceiver-MoE): top-k of probs [n, E] with the k gates renormalised to
// sum to 1.
void RenormalisedTopK(const float* probs, int64_t n, int E, int k, int* expert, float* gate);

// Merged expert weights: out = sum_i gates[i] * weights[i], each weight `size` floats. For a
// linear expert, running the merged weight equals the gate-weighted sum of the experts' outputs.
void MergeExpertWeights(const std::vector<const float*>& weights, const std::vector<float>& gates,
                        int64_t size, float* out);

}  // namespace moe
