#include "models/moe/expert_bank.h"

#include <glog/logging.h>

#include <cmath>


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
  caches_.clear();
  previous_.clear();
  compute_.reset();
}

ExpertWeights ExpertBank::WeightsOf(int l) {
  Expert& ex = experts_[l];
  return ExpertWeights{ex.w1.value.data(), ex.b1.value.data(), ex.w2.value.data(),
                       ex.b2.value.data(), ex.w1.grad.data(),  ex.b1.grad.data(),
                       ex.w2.grad.data(),  ex.b2.grad.data()};
}

ExpertCompute& ExpertBank::ComputeOn(Device device) {
  if (!compute_ || compute_->device() != device || compute_stream_ != cuda_stream_) {
    compute_ = MakeExpertCompute(device, cuda_stream_);
    compute_stream_ = cuda_stream_;
  }
  return *compute_;
}

// The bank alone holds its caches' hidden tensors, and the previous step's Backward has read them
// by the time the next Forward runs; on the host nothing else orders the two (on a device, a
// stream would have to), so the host reuses them when the row count is unchanged.
Tensor ExpertBank::HiddenRows(ExpertCompute& c, int chunk, Tensor Cache::*buffer, int64_t rows) {
  if (c.device() == Device::kCPU && chunk < static_cast<int>(previous_.size())) {
    Tensor& old = previous_[chunk].*buffer;
    if (old.device() == Device::kCPU && old.numel() == rows * hidden_ && rows > 0) {
      Tensor reused = old;
      old = Tensor();
      return reused;
    }
  }
  return c.NewRows(rows, hidden_);
}

Tensor ExpertBank::Forward(const Tensor& input, const std::vector<int64_t>& rows_per_expert,
                           int chunk) {
  CHECK(chunk == 0 || chunk == static_cast<int>(caches_.size()))
      << "ExpertBank: chunk " << chunk << " after " << caches_.size() << " chunks (run in order)";
  CHECK_EQ(static_cast<int>(rows_per_expert.size()), num_local_);
  CHECK_EQ(input.ndim(), 2);
  CHECK_EQ(input.dim(1), dim_);
  CHECK(experts_[0].w1.value.device() == input.device())
      << "ExpertBank: input on " << DeviceName(input.device()) << ", parameters on "
      << DeviceName(experts_[0].w1.value.device()) << " (MoveTo first)";
  int64_t total = 0;
  for (int64_t r : rows_per_expert) total += r;
  CHECK_EQ(total, input.dim(0)) << "expert rows do not add up to the dispatched rows";
  ExpertCompute& c = ComputeOn(input.device());
  const ExpertShape shape{dim_, hidden_, activation_};
  if (chunk == 0) {
    previous_.swap(caches_);
    caches_.clear();
  }
  caches_.resize(chunk + 1);
  Cache& k = caches_[chunk];
  k.input = input;
  k.rows = rows_per_expert;
  k.hidden_saved = HiddenRows(c, chunk, &Cache::hidden_saved, total);
  k.hidden_act = HiddenRows(c, chunk, &Cache::hidden_act, total);
  Tensor out = c.NewRows(total, dim_);
  int64_t row = 0;
  for (int l = 0; l < num_local_; ++l) {
    const int64_t m = k.rows[l];
    if (m == 0) continue;
    c.Forward(WeightsOf(l), shape, m, input.data() + row * dim_,
              k.hidden_saved.data() + row * hidden_, k.hidden_act.data() + row * hidden_,
              out.data() + row * dim_);
    row += m;
  }
  return out;
}

Tensor ExpertBank::Backward(const Tensor& d_output, int chunk) {
  CHECK(chunk >= 0 && chunk < static_cast<int>(caches_.size()))
      << "ExpertBank::Backward of chunk " << chunk << " without its Forward";
  const Cache& k = caches_[chunk];
  CHECK_EQ(d_output.numel(), k.input.numel()) << "ExpertBank::Backward without matching Forward";
  CHECK(d_output.device() == k.input.device())
      << "ExpertBank: gradient on " << DeviceName(d_output.device()) << ", the Forward on "
      << DeviceName(k.input.device());
  ExpertCompute& c = ComputeOn(k.input.device());
  const ExpertShape shape{dim_, hidden_, activation_};
  const int64_t total = k.input.dim(0);
  Tensor d_input = c.NewRows(total, dim_);
  float* d_hidden = c.HiddenGradScratch(total * hidden_);
  int64_t row = 0;
  for (int l = 0; l < num_local_; ++l) {
    const int64_t m = k.rows[l];
    if (m == 0) continue;
    c.Backward(WeightsOf(l), shape, m, k.input.data() + row * dim_,
               k.hidden_saved.data() + row * hidden_, k.hidden_act.data() + row * hidden_,
               d_output.data() + row * dim_, d_hidden + row * hidden_,
               d_input.data() + row * dim_);
    row += m;
  }
  return d_input;
}

}  // namespace moe
