// Mobile V-MoE (Daxberger et al. 2023; models/moe/README.md, "Per-image routing with super-class
// guidance"): a ViT whose last L blocks (placement LAST_BLOCKS, last_n = L = 2) hold MoE MLPs
// that route whole images (PER_IMAGE: the router sees the mean of the image's tokens, every token
// of the image follows that decision), with the router guided towards a super-class per image:
//   loss = CE(classes) + superclass_loss_weight * CE(router logits, super-class(label)).
//
// The net is the V-MoE VisionTransformer itself (same blocks, placement and MoE layer, the rule
// chosen by the config); this subclass adds only what per-image guidance needs: the class ->
// super-class map read once from moe.superclass_file, and the translation of each step's labels
// into super-class ids handed to the MoE layers through MoeStepContext::superclass.
//
// The router (moe.shared_router, default true: the paper's form, its Fig. 2c: MoE layers after
// the dense ViT layers, whose output the router reads; the ablation of Sec. 3.2 / Fig. 3c ties
// the router's accuracy to the 12 - L dense layers in front of it): ONE router W_s [D, E] (dense
// parameter "shared_router.w") reads m = mean over tokens of the first MoE block's input (the
// dense part's output), p = softmax(m W_s + noise), and its top-k experts and gates are the
// decision of EVERY MoE layer (MoeLayer::SetExternalDecision); the guidance
// w CE(clean logits, super-class) is added once. Backward: the gates' gradients of all MoE
// layers, summed, plus the guidance -> W_s and, spread 1/T over the tokens, the dense part.
// With shared_router false each MoE layer routes from the mean of its own input with its own
// router and adds its own guidance term (L terms for L layers).
//
// Super-class file: one "class superclass" pair of integers per line, '#' starts a comment,
// blank lines allowed; every class 0..num_classes-1 exactly once; super-class ids index experts,
// so they lie in [0, num_experts). launcher/superclass_tool writes such files from a dense
// model's confusion matrix.
#pragma once

#include <istream>
#include <string>
#include <vector>

#include "models/nets/vision_transformer.h"

namespace moe {

// Parses a super-class map from `in`; `source` names it in errors ("FILE:LINE: why"). On
// success *class_to_superclass has num_classes entries. Returns false and sets *error otherwise.
bool ParseSuperclassMap(std::istream& in, const std::string& source, int num_classes,
                        int num_superclasses, std::vector<int>* class_to_superclass,
                        std::string* error);
// The same from a file (an unreadable file is an error naming it).
bool LoadSuperclassFile(const std::string& path, int num_classes, int num_superclasses,
                        std::vector<int>* class_to_superclass, std::string* error);

class MobileVmoe : public VisionTransformer {
 public:
  // class_to_superclass: empty when the router is not guided (superclass_loss_weight == 0).
  MobileVmoe(const proto::ModelConfig& config, Communicator* comm, uint64_t seed,
             std::vector<int> class_to_superclass);

  // Forward refuses a guided training step whose labels did not come through SetBatchInfo since
  // the previous Forward: stale super-classes would train the router silently wrong.
  Tensor Forward(const Tensor& images) override;
  void SetMoeContext(const MoeStepContext& ctx) override;
  void SetBatchInfo(const BatchInfo& info) override;

  const std::vector<int>& class_to_superclass() const { return class_to_superclass_; }
  // This step's super-class per image (the router's targets).
  const std::vector<int>& batch_superclasses() const { return batch_superclasses_; }

  std::vector<Parameter*> Parameters() override;
  // The shared router runs on the host only (validation refuses device "cuda" with it).
  void MoveTo(Device d) override;
  // The shared router is counted once (the base class counts one router per MoE layer).
  double FlopsPerImage() const override;
  bool shared_router() const { return shared_.on; }
  // The last Forward's shared decision (empty in per-layer mode).
  const ExternalImageDecision& shared_decision() const { return shared_.decision; }

 protected:
  void OnBlockInput(int block, const Tensor& x) override;
  void OnBlockInputGrad(int block, Tensor* dx) override;

 private:
  bool guided() const { return !class_to_superclass_.empty(); }
  // Shared-router steps: router input and logits; noise, softmax and top-k; the guidance.
  void SharedRouterLogits(const Tensor& x, std::vector<float>* clean);
  void SharedRouterDecide(const std::vector<float>& clean);
  void SharedRouterGuidance();

  struct SharedRouter {
    bool on = false;
    int first_block = -1;  // the first MoE block: its input is the dense part's output
    Parameter w;           // [D, E]
    Tensor in;             // [B, D] mean token per image
    std::vector<float> probs, probs_clean;  // [B, E] noisy (the gates) and clean
    std::vector<float> d_clean_aux;         // [B, E] the guidance's gradient w.r.t. clean logits
    ExternalImageDecision decision;
    double aux_loss = 0, superclass_loss = 0;
    int64_t superclass_correct = 0;
  };
  SharedRouter shared_;
  MoeStepContext ctx_;
  uint64_t seed_ = 0;  // keys the shared router's noise

  std::vector<int> class_to_superclass_;
  // Lives as long as the net: the MoE layers keep a pointer to it in their step context.
  std::vector<int> batch_superclasses_;
  bool training_ = true;
  bool labels_fresh_ = false;
};

}  // namespace moe
