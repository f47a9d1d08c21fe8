#include "models/moe/expert_bank.h"

#include <glog/logging.h>

#include <cmath>

#include "core/gemm.h"
#include "core/kernels/cpu/gelu.h"

namespace moe {

ExpertBank::ExpertBank(const std::string& name, int dim, int hidden, int first_global_expert,
                       int num_local, uint64_t seed, Activation activation)
    : dim_(dim), hidden_(hidden), num_local_(num_local), activation_(activation) {
  CHECK_GT(dim, 0);
  CHECK_GT(hidden, 0);
  CHECK_GE(num_local, 1);
  // Xavier-uniform limits, as ViT's MLPs use; biases start at zero.
  const float lim1 = std::sqrt(6.f / (dim + hidden));
  for (int l = 0; l < num_local; ++l) {
    const int e = first_global_expert + l;
    Expert ex;
    ex.w1 = MakeParameter(name + ".w1", {dim, hidden}, InitKind::kUniformFanIn, lim1, seed, e);
    ex.b1 = MakeParameter(name + ".b1", {hidden}, InitKind::kZeros, 0.f, seed, e);
    ex.w2 = MakeParameter(name + ".w2", {hidden, dim}, InitKind::kUniformFanIn, lim1, seed, e);
    ex.b2 = MakeParameter(name + ".b2", {dim}, InitKind::kZeros, 0.f, seed, e);
    experts_.push_back(std::move(ex));
  }
}

void ExpertBank::ActivationForward(const float* pre, float* act, int64_t n) const {
  if (activation_ == Activation::kGelu) {
    GeluForward(pre, act, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) act[i] = pre[i] > 0.f ? pre[i] : 0.f;
}

void ExpertBank::ActivationBackward(const float* pre, float* d_act, int64_t n) const {
  if (activation_ == Activation::kGelu) {
    GeluBackward(pre, d_act, d_act, n);
    return;
  }
  // ReLU's derivative at exactly 0 is taken as 0 (the subgradient PyTorch and TF use).
  for (int64_t i = 0; i < n; ++i)
    if (!(pre[i] > 0.f)) d_act[i] = 0.f;
}

std::vector<Parameter*> ExpertBank::Parameters() {
  std::vector<Parameter*> ps;
  for (auto& ex : experts_) {
    ps.push_back(&ex.w1);
    ps.push_back(&ex.b1);
    ps.push_back(&ex.w2);
    ps.push_back(&ex.b2);
  }
  return ps;
}

void ExpertBank::MoveTo(Device device) {
  for (Parameter* p : Parameters()) {
    for (Tensor* t : {&p->value, &p->grad}) {
      if (t->device() == device) continue;
      Tensor moved(t->shape(), device);
      moved.CopyFrom(*t);
      *t = moved;
    }
  }
  input_ = hidden_pre_ = hidden_act_ = Tensor();
  rows_.clear();
}

Tensor ExpertBank::Forward(const Tensor& input, const std::vector<int64_t>& rows_per_expert) {
#ifdef MOE_EP_HAS_CUDA
  if (input.device() == Device::kCUDA) return ForwardCuda(input, rows_per_expert);
#endif
  CHECK_EQ(static_cast<int>(rows_per_expert.size()), num_local_);
  CHECK_EQ(input.ndim(), 2);
  CHECK_EQ(input.dim(1), dim_);
  int64_t total = 0;
  for (int64_t r : rows_per_expert) total += r;
  CHECK_EQ(total, input.dim(0)) << "expert rows do not add up to the dispatched rows";
  input_ = input;
  rows_ = rows_per_expert;
  hidden_pre_ = Tensor({total, hidden_});
  hidden_act_ = Tensor({total, hidden_});
  Tensor out({total, dim_});
  int64_t row = 0;
  for (int l = 0; l < num_local_; ++l) {
    const int64_t m = rows_[l];
    if (m == 0) continue;
    Expert& ex = experts_[l];
    float* hp = hidden_pre_.data() + row * hidden_;
    float* ha = hidden_act_.data() + row * hidden_;
    float* y = out.data() + row * dim_;
    // Bias first, then GEMM with beta = 1: one pass over the output instead of two.
    for (int64_t i = 0; i < m; ++i)
      std::copy(ex.b1.value.data(), ex.b1.value.data() + hidden_, hp + i * hidden_);
    SgemmPacked(false, false, m, hidden_, dim_, 1.f, input.data() + row * dim_, ex.w1.value.data(),
                1.f, hp);
    ActivationForward(hp, ha, m * hidden_);
    for (int64_t i = 0; i < m; ++i)
      std::copy(ex.b2.value.data(), ex.b2.value.data() + dim_, y + i * dim_);
    SgemmPacked(false, false, m, dim_, hidden_, 1.f, ha, ex.w2.value.data(), 1.f, y);
    row += m;
  }
  return out;
}

Tensor ExpertBank::Backward(const Tensor& d_output) {
#ifdef MOE_EP_HAS_CUDA
  if (d_output.device() == Device::kCUDA) return BackwardCuda(d_output);
#endif
  CHECK_EQ(d_output.numel(), input_.numel()) << "ExpertBank::Backward without matching Forward";
  const int64_t total = input_.dim(0);
  Tensor d_input({total, dim_});
  Tensor d_hidden({total, hidden_});
  int64_t row = 0;
  for (int l = 0; l < num_local_; ++l) {
    const int64_t m = rows_[l];
    if (m == 0) continue;
    Expert& ex = experts_[l];
    const float* dy = d_output.data() + row * dim_;
    const float* x = input_.data() + row * dim_;
    const float* hp = hidden_pre_.data() + row * hidden_;
    const float* ha = hidden_act_.data() + row * hidden_;
    float* dh = d_hidden.data() + row * hidden_;
    // Second layer: dW2 += H^T dY, db2 += colsum(dY), dH = dY W2^T.
    SgemmPacked(true, false, hidden_, dim_, m, 1.f, ha, dy, 1.f, ex.w2.grad.data());
    float* db2 = ex.b2.grad.data();
    for (int64_t i = 0; i < m; ++i)
      for (int j = 0; j < dim_; ++j) db2[j] += dy[i * dim_ + j];
    SgemmPacked(false, true, m, hidden_, dim_, 1.f, dy, ex.w2.value.data(), 0.f, dh);
    ActivationBackward(hp, dh, m * hidden_);  // in place: dH_pre = act'(H_pre) * dH
    // First layer.
    SgemmPacked(true, false, dim_, hidden_, m, 1.f, x, dh, 1.f, ex.w1.grad.data());
    float* db1 = ex.b1.grad.data();
    for (int64_t i = 0; i < m; ++i)
      for (int j = 0; j < hidden_; ++j) db1[j] += dh[i * hidden_ + j];
    SgemmPacked(false, true, m, dim_, hidden_, 1.f, dh, ex.w1.value.data(), 0.f,
                d_input.data() + row * dim_);
    row += m;
  }
  return d_input;
}

}  // namespace moe
