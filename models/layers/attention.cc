#include "models/layers/attention.h"

#include <glog/logging.h>

#include <cmath>
#include <vector>

#include "core/gemm.h"
#include "core/kernels/cpu/softmax.h"

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

Tensor MultiHeadSelfAttention::Forward(const Tensor& x) {
  CHECK(x.ndim() == 2 && x.dim(1) == dim_)
      << name_ << ": expected input [B*T, " << dim_ << "], got " << x.ShapeString();
  CHECK_EQ(x.dim(0) % tokens_, 0) << name_ << ": " << x.dim(0)
                                  << " rows are not a whole number of images of "
                                  << tokens_ << " tokens";
  batch_ = x.dim(0) / tokens_;
#ifdef MOE_EP_HAS_CUDA
  if (x.device() == Device::kCUDA) return ForwardCuda(x);
#endif
  CHECK(x.device() == Device::kCPU) << name_ << ": unsupported device";
  const int64_t T = tokens_, D = dim_, dh = head_dim_, ld = 3 * D;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dh)));

  qkv_out_ = qkv_.Forward(x);
  probs_ = Tensor({batch_, heads_, T, T});
  Tensor ctx({batch_ * T, D});
  for (int64_t b = 0; b < batch_; ++b) {
    const float* base = qkv_out_.data() + b * T * ld;
    for (int64_t h = 0; h < heads_; ++h) {
      const float* q = base + h * dh;
      const float* k = base + D + h * dh;
      const float* v = base + 2 * D + h * dh;
      float* p = probs_.data() + (b * heads_ + h) * T * T;
      Sgemm(false, true, T, T, dh, scale, q, ld, k, ld, 0.f, p, T);  // S = Q K^T / sqrt(dh)
      SoftmaxForwardRows(p, T, T, p);
      Sgemm(false, false, T, dh, T, 1.f, p, T, v, ld, 0.f, ctx.data() + b * T * D + h * dh, D);
    }
  }
  return proj_.Forward(ctx);
}

Tensor MultiHeadSelfAttention::Backward(const Tensor& dy) {
  const int64_t T = tokens_, D = dim_, dh = head_dim_, ld = 3 * D;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dh)));
  CHECK(dy.ndim() == 2 && dy.dim(0) == batch_ * T && dy.dim(1) == D)
      << name_ << ": expected dy [" << batch_ * T << ", " << D << "], got " << dy.ShapeString();
  CHECK(dy.device() == qkv_out_.device())
      << name_ << ": dy is on " << DeviceName(dy.device()) << ", the last Forward's input on "
      << DeviceName(qkv_out_.device());
#ifdef MOE_EP_HAS_CUDA
  if (dy.device() == Device::kCUDA) return BackwardCuda(dy);
#endif

  const Tensor dctx = proj_.Backward(dy);
  Tensor dqkv({batch_ * T, ld});
  std::vector<float> dp(T * T);
  for (int64_t b = 0; b < batch_; ++b) {
    const float* base = qkv_out_.data() + b * T * ld;
    float* dbase = dqkv.data() + b * T * ld;
    for (int64_t h = 0; h < heads_; ++h) {
      const float* q = base + h * dh;
      const float* k = base + D + h * dh;
      const float* v = base + 2 * D + h * dh;
      const float* p = probs_.data() + (b * heads_ + h) * T * T;
      const float* dout = dctx.data() + b * T * D + h * dh;
      // dP = dO V^T; dV = P^T dO.
      Sgemm(false, true, T, T, dh, 1.f, dout, D, v, ld, 0.f, dp.data(), T);
      Sgemm(true, false, T, dh, T, 1.f, p, T, dout, D, 0.f, dbase + 2 * D + h * dh, ld);
      // dS = softmax'(dP); dQ = dS K / sqrt(dh); dK = dS^T Q / sqrt(dh).
      SoftmaxBackwardRows(p, dp.data(), T, T, dp.data());
      Sgemm(false, false, T, dh, T, scale, dp.data(), T, k, ld, 0.f, dbase + h * dh, ld);
      Sgemm(true, false, T, dh, T, scale, dp.data(), T, q, ld, 0.f, dbase + D + h * dh, ld);
    }
  }
  // The key bias adds the same constant to every score of a softmax row, so its gradient is
  // exactly zero; in float32 it comes out as rounding noise, which AdamW would normalise into
  // full-size random updates (and make sharded and single-rank runs drift apart). Keep the
  // exact zero: restore the key-bias slice of the bias gradient after the Linear backward.
  Parameter* bias = qkv_.bias();
  std::vector<float> key_bias_grad;
  if (bias) key_bias_grad.assign(bias->grad.data() + D, bias->grad.data() + 2 * D);
  Tensor dx = qkv_.Backward(dqkv);
  if (bias) std::copy(key_bias_grad.begin(), key_bias_grad.end(), bias->grad.data() + D);
  return dx;
}

std::vector<Parameter*> MultiHeadSelfAttention::Parameters() {
  std::vector<Parameter*> ps = qkv_.Parameters();
  for (Parameter* p : proj_.Parameters()) ps.push_back(p);
  return ps;
}

}  // namespace moe
