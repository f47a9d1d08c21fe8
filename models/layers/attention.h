// MultiHeadSelfAttention over each image's tokens (no attention across images).
//
//   qkv = x Wqkv + bqkv            x [B*T, D], Wqkv [D, 3D] laid out as [q | k | v] columns,
//                                  head h owning columns h*dh .. (h+1)*dh - 1 of each part
//   per image b and head h:  P = softmax(Q K^T / sqrt(dh)),  O = P V     (T x T, T x dh)
//   y = concat_h(O) Wo + bo        Wo [D, D]
//
// Parameters: name + ".qkv.w", ".qkv.b", ".proj.w", ".proj.b" (two Linear layers, so their init
// and gradient code is shared; the fused qkv weight gets xavier over [D, 3D]).
// B is inferred as rows / tokens_per_image. The core between the projections is the backend's
// SelfAttentionForward / SelfAttentionBackward (core/backend.h), which the conditional family's
// routed attention shares.
#pragma once

#include <string>
#include <vector>

#include "models/layers/layer.h"
#include "models/layers/linear.h"

namespace moe {

class MultiHeadSelfAttention : public Layer {
 public:
  MultiHeadSelfAttention(const std::string& name, int64_t dim, int num_heads,
                         int64_t tokens_per_image, uint64_t seed);

  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::vector<Parameter*> Parameters() override;  // qkv.w, qkv.b, proj.w, proj.b

  Linear* qkv() { return &qkv_; }
  Linear* proj() { return &proj_; }

 private:
  AttentionShape CoreShape() const;  // this batch's shape, scale 1/sqrt(dh) computed in double

  std::string name_;
  int64_t dim_, heads_, head_dim_, tokens_;
  Linear qkv_, proj_;
  // Forward caches: qkv [B*T, 3D] and probabilities [B, H, T, T] (on the input's device).
  Tensor qkv_out_, probs_;
  int64_t batch_ = 0;
};

}  // namespace moe
