// Net: what the trainer needs from a model family. Every family (ViT/V-MoE, Sparse-MLP, pMoE,
// Mobile V-MoE, conditional MoE) is one Net built by CreateNet (net_factory.h) from the config,
// together with its TaskHead (CreateTaskHead, task_head.h): what the logits are trained and
// scored against. The trainer drives the pair and never knows which family, nor whether the net
// is single- or multi-task: the head makes each batch's per-image side information
// (ImageSideInfo, e.g. the conditional family's task and modality ids), scores the logits (plain
// softmax cross-entropy, or each row on its task's slice), and says how many evaluation passes
// the test set takes; the trainer only hands the side information on.
//
// Contract: Forward(images [B, C*H*W]) -> logits [B, num_outputs]; Backward(dlogits) accumulates
// every parameter's grad (the caller zeroes them); MoE layers read their step context (set with
// SetMoeContext before Forward) and the per-step side information some routing rules need
// (SetBatchInfo: class labels for super-class guidance, task/modality ids for conditional
// routing). Parameters() lists every parameter exactly once, dense and expert ones together
// (Parameter::is_expert tells them apart).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/parameter.h"
#include "core/tensor.h"
#include "models/layers/drop_path.h"
#include "models/moe/moe_layer.h"

namespace moe {

// Per-step, per-image side information, host vectors of the micro-batch's length (or null).
struct BatchInfo {
  const std::vector<int>* labels = nullptr;    // class labels
  const std::vector<int>* task = nullptr;      // conditional multi-task: task id per image
  const std::vector<int>* modality = nullptr;  // conditional multi-task: modality id per image
};

// A batch's per-image side information beside its images and labels, made by the family's
// TaskHead and carried through the trainer unread. Empty vectors: the family has none.
struct ImageSideInfo {
  std::vector<int> task;      // conditional multi-task: task id per image
  std::vector<int> modality;  // conditional multi-task: modality id per image
};

// What SetBatchInfo gets for a batch: `labels` (may be null) and the side information's ids
// (null where the family has none).
inline BatchInfo MakeBatchInfo(const std::vector<int>* labels, const ImageSideInfo& side) {
  BatchInfo info;
  info.labels = labels;
  info.task = side.task.empty() ? nullptr : &side.task;
  info.modality = side.modality.empty() ? nullptr : &side.modality;
  return info;
}

class Net {
 public:
  virtual ~Net() = default;
  virtual Tensor Forward(const Tensor& images) = 0;
  virtual void Backward(const Tensor& dlogits) = 0;
  virtual std::vector<Parameter*> Parameters() = 0;
  // Moves every parameter to d; Forward then takes images on d.
  virtual void MoveTo(Device d) = 0;

  const std::vector<MoeLayer*>& moe_layers() const { return moe_layers_; }
  // The same context for every MoE layer (routing groups are counted in images, so one
  // context fits layers whose rows are tokens, channels or patches alike).
  virtual void SetMoeContext(const MoeStepContext& ctx) {
    for (MoeLayer* m : moe_layers_) m->SetStepContext(ctx);
  }
  // Called before Forward with this step's side information; families that need none ignore it.
  virtual void SetBatchInfo(const BatchInfo& info) { (void)info; }
  // Called before Forward: whether this is training, and the step and images the stochastic-depth
  // masks are keyed on (model.drop_path_rate; nets without DropPath layers never read it).
  void SetDropPathContext(const DropPathContext& ctx) { drop_path_context_ = ctx; }
  // Forward multiply-adds x 2 per image, counting only the experts a row actually visits at the
  // configured capacity (the results table's "FLOPs per image").
  virtual double FlopsPerImage() const = 0;

 protected:
  std::vector<MoeLayer*> moe_layers_;
  DropPathContext drop_path_context_;  // read by the net's DropPath layers (drop_path.h)
};

}  // namespace moe
