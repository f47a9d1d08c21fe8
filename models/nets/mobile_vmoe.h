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

 private:
  bool guided() const { return !class_to_superclass_.empty(); }

  std::vector<int> class_to_superclass_;
  // Lives as long as the net: the MoE layers keep a pointer to it in their step context.
  std::vector<int> batch_superclasses_;
  bool training_ = true;
  bool labels_fresh_ = false;
};

}  // namespace moe
