// ConditionalVit: the conditional MoE family ("conditional"; Uni-Perceiver-MoE, Zhu et al. 2022)
// on multi-task Fashion-MNIST (models/nets/multitask.h): one ViT, two task heads, two modalities.
//
//   images -> [task token | PatchEmbed (+ position)] + task_embed[task] + modality_embed[modality]
//   on every token -> L pre-LN blocks -> LayerNorm -> mean over tokens -> head [D, 10 + S]
// The task token (conditional.task_token, default on; host path only) is one learned vector put
// in front of each image's patch tokens.
//   block i: h = x + Attn_i(LN1(x));  y = h + FFN_i(LN2(h))
// The task and modality embeddings are in the dense net too, so the dense baseline knows the
// task as well as the MoE net does (the comparison isolates routing, not task information).
// The logits hold both heads: fine classes [0, 10), super-classes [10, 10 + S); the family's task
// head (MultiTaskHead, multitask_head.h) scores each sample on its task's slice only.
//
// MoE (model.use_moe): blocks {0, 2, 4, ...} (EvenBlockIndices). FFN_i by
// conditional.ffn_form: ROUTED_PAIR (default, the paper's released code) -- fc1 and fc2 are a
// MoeLinearPair, fc2 reusing fc1's decision, experts merged by weights,
// y = (sum_g W2_e) GELU((sum_g W1_e) x), experts replicated, no auxiliary losses; MOE_LAYER --
// the expert-parallel MoeLayer (each expert fc1 -> GELU -> fc2 under ONE routing decision). With
// conditional.moe_in_attention, Attn_i's qkv and output projections are routed linear experts
// sharing one decision (MoeLinearPair, its own router; experts replicated, merged weights).
//
// Token attributes: 8 bits per token, the attribute router's input (the paper leaves the meaning
// per bit open; ours):
//   bit 0  modality 0 (the image)          bit 1  modality 1 (the second view)
//   bit 2  task 0 (fine, 10 classes)       bit 3  task 1 (coarse, S super-classes)
//   bit 4  token type "image patch"          bit 5  token type "task token"
//   bits 6-7 reserved, always 0 (room for other token types, e.g. text)
// Routing levels (conditional.routing_level) -> the MoE layer's rule:
//   TOKEN     kTokenTopK, gates renormalised (the token's features)
//   CONTEXT   kPerImage, gates renormalised (the mean of the image's tokens)
//   MODALITY  kAttribute on bits {0, 1}        TASK  kAttribute on bits {2, 3}
//   ATTRIBUTE kAttribute on all 8 bits
// Under the attribute levels the tokens of an image with the same bits (its patches; its task
// token has its own under ATTRIBUTE) take the same experts and gates at evaluation
// (models/moe/README.md, case 11). In training the
// routed pairs (attention, and the ROUTED_PAIR FFN) draw one noise vector per image, keyed on the
// global image (one decision per image, as the paper); the MOE_LAYER FFN draws its noise per token
// (MoeLayer keys it on the row), so there near-ties may split an image.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "models/moe/moe_layer.h"
#include "models/moe/moe_linear_pair.h"
#include "models/nets/net.h"
#include "proto/moe_ep.pb.h"

namespace moe {

class LayerNorm;
class PreNormBlock;
class PatchEmbed;
class MeanPoolTokens;
class Linear;

constexpr int kTokenAttributeBits = 8;
// The 8 attribute bits of a token of an image with this task and modality: a patch, or the task
// token (bit i = (v >> i) & 1).
uint32_t TokenAttributeBits(int task, int modality, bool task_token = false);
// Tokens per image: the patches, plus the task token when conditional.task_token.
int64_t ConditionalTokensPerImage(const proto::ModelConfig& model);
// Bits the router sees at each level (0 for TOKEN and CONTEXT, which do not read attributes).
uint32_t RoutingLevelMask(proto::ConditionalConfig::RoutingLevel level);
// The MoE layer's rule for a level.
RoutingRule RoutingRuleForLevel(proto::ConditionalConfig::RoutingLevel level);
// The MOE_LAYER FFN's options for this model (rule, renormalisation and attribute width by level;
// importance and load losses 0 unless the config sets them).
MoeLayerOptions ConditionalMoeOptions(const proto::ModelConfig& model);
// A routed pair's options for this model: [in1 -> out1] and [in2 -> out2], router input by level.
MoeLinearPairOptions ConditionalPairOptions(const proto::ModelConfig& model, int64_t in1,
                                            int64_t out1, int64_t in2, int64_t out2);
// Logit count: 10 fine classes + num_superclasses.
int ConditionalNumOutputs(const proto::ModelConfig& model);

class ConditionalVit : public Net {
 public:
  ConditionalVit(const proto::ModelConfig& config, Communicator* comm, uint64_t seed);
  ~ConditionalVit() override;

  // images [B, C*H*W] -> logits [B, 10 + S]. Uses the task / modality ids of the last
  // SetBatchInfo (consumed by this Forward); without them every image is task 0, modality 0.
  Tensor Forward(const Tensor& images) override;
  void Backward(const Tensor& dlogits) override;
  std::vector<Parameter*> Parameters() override;
  // Every parameter and layer; on CUDA the routing decisions stay on the host (MoeLayer's and
  // MoeLinearPair's device paths), everything else runs on the device.
  void MoveTo(Device d) override;
  double FlopsPerImage() const override;
  void SetMoeContext(const MoeStepContext& ctx) override;
  void SetBatchInfo(const BatchInfo& info) override;

  const std::vector<MoeLinearPair*>& attention_moe() const { return attention_moe_; }
  // The ROUTED_PAIR FFNs (empty with ffn_form MOE_LAYER, whose layers are moe_layers()).
  const std::vector<MoeLinearPair*>& ffn_moe() const { return ffn_moe_; }
  // The masked attribute rows [B*T, 8] of the last Forward (empty for TOKEN / CONTEXT).
  const Tensor& attributes() const { return attributes_; }
  int tokens_per_image() const { return tokens_per_image_; }

 private:
  // The task token: [B*P, D] patch rows -> [B*T, D] with each image's task token first; and
  // back, accumulating the task token's gradient.
  Tensor InsertTaskTokens(const Tensor& patches) const;
  Tensor TaskTokenBackward(const Tensor& dx);
  // Forward's steps: take this batch's task and modality ids (from SetBatchInfo, else 0);
  // images -> tokens with the task token and the task and modality embeddings; the routers'
  // attribute rows and every routed layer's step context.
  void TakeBatchIds(int64_t batch);
  Tensor EmbedTokens(const Tensor& images);
  void SetRoutingContexts(int64_t batch);

  proto::ModelConfig config_;
  int tokens_per_image_;
  int dim_;
  std::unique_ptr<PatchEmbed> embed_;
  Parameter task_embed_, modality_embed_;  // [2, D] each
  Parameter task_token_;                   // [1, D]; empty without conditional.task_token
  int64_t patches_ = 0;                    // patch tokens per image
  std::vector<std::unique_ptr<PreNormBlock>> blocks_;
  std::vector<bool> moe_attention_;  // per block: routed attention (MoeSelfAttention)
  std::unique_ptr<LayerNorm> final_norm_;
  std::unique_ptr<MeanPoolTokens> pool_;
  std::unique_ptr<Linear> head_;
  std::vector<MoeLinearPair*> attention_moe_;
  std::vector<MoeLinearPair*> ffn_moe_;
  MoeStepContext ctx_;
  std::vector<int> next_task_, next_modality_;  // from SetBatchInfo, for the next Forward
  std::vector<int> task_, modality_;            // of the last Forward
  Tensor attributes_;
};

}  // namespace moe
