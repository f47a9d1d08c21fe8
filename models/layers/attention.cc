#include "models/layers/attention.h"

#include <glog/logging.h>

#include <cmath>
#include <vector>

namespace moe {

MultiHeadSelfAttention::MultiHeadSelfAttention(const std::string& name, int64_t dim,
                                               int num_heads, int64_t tokens_per_image,
                                               uint64_t seed)
    : name_(name),
      dim_(dim),
      heads_(num_heads),
      head_dim_(num_heads > 0 ? dim / num_heads : 0),
      tokens_(tokens_per_image),
      qkv_(name + ".qkv", dim, 3 * dim, seed),
      proj_(name + ".proj", dim, dim, seed) {
  CHECK(num_heads > 0 && dim % num_heads == 0)
      << name << ": dim " << dim << " must be a positive multiple of num_heads " << num_heads;
  CHECK_GT(tokens_per_image, 0) << name << ": tokens_per_image must be positive";
}

AttentionShape MultiHeadSelfAttention::CoreShape() const {
  AttentionShape s;
  s.batch = batch_;
  s.heads = heads_;
  s.tokens = tokens_;
  s.dim = dim_;
  s.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim_)));
  return s;
}

Tensor MultiHeadSelfAttention::Forward(const Tensor& x) {
  CHECK(x.ndim() == 2 && x.dim(1) == dim_)
      << name_ << ": expected input [B*T, " << dim_ << "], got " << x.ShapeString();
  CHECK_EQ(x.dim(0) % tokens_, 0) << name_ << ": " << x.dim(0)
                                  << " rows are not a whole number of images of "
                                  << tokens_ << " tokens";
  batch_ = x.dim(0) / tokens_;
  qkv_out_ = qkv_.Forward(x);  // checks the parameters are on x's device
  const Tensor ctx = BackendFor(x.device()).SelfAttentionForward(qkv_out_, CoreShape(), &probs_);
  return proj_.Forward(ctx);
}

Tensor MultiHeadSelfAttention::Backward(const Tensor& dy) {
  const int64_t D = dim_;
  CHECK(dy.ndim() == 2 && dy.dim(0) == batch_ * tokens_ && dy.dim(1) == D)
      << name_ << ": expected dy [" << batch_ * tokens_ << ", " << D << "], got "
      << dy.ShapeString();
  CheckSameDevice(name_, dy.device(), qkv_out_.device());
  const Backend& be = BackendFor(dy.device());
  const Tensor dctx = proj_.Backward(dy);
  const Tensor dqkv = be.SelfAttentionBackward(qkv_out_, probs_, dctx, CoreShape());
  // The key bias adds the same constant to every score of a softmax row, so its gradient is
  // exactly zero; in float32 it comes out as rounding noise, which AdamW would normalise into
  // full-size random updates (and make sharded and single-rank runs drift apart). Keep the
  // exact zero: restore the key-bias slice of the bias gradient after the Linear backward.
  Parameter* bias = qkv_.bias();
  Tensor key_bias_grad;
  if (bias) {
    key_bias_grad = be.NewTensor({D});
    be.CopyElements(&key_bias_grad, 0, bias->grad, D, D);
  }
  Tensor dx = qkv_.Backward(dqkv);
  if (bias) be.CopyElements(&bias->grad, D, key_bias_grad, 0, D);
  return dx;
}

std::vector<Parameter*> MultiHeadSelfAttention::Parameters() {
  std::vector<Parameter*> ps = qkv_.Parameters();
  for (Parameter* p : proj_.Parameters()) ps.push_back(p);
  return ps;
}

}  // namespace moe
