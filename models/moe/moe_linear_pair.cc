#include "models/moe/moe_linear_pair.h"

#include <glog/logging.h>

#include <cmath>
#include <cstring>
#include <map>

#include "core/gemm.h"
#include "core/rng.h"
#include "models/layers/layer_norm.h"
#include "models/layers/linear.h"
#include "models/layers/mean_pool.h"
#include "models/moe/router_math.h"
#include "models/moe/router.h"
#include "models/moe/routing_rule.h"
#include "models/moe/rule_selections.h"

namespace moe {

namespace {

double DotF(const float* a, const float* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

void Axpy(float alpha, const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// Column sums of a [rows, cols] block.
void ColumnSums(const float* a, int64_t rows, int64_t cols, float* out) {
  std::fill(out, out + cols, 0.f);
  for (int64_t r = 0; r < rows; ++r) Axpy(1.f, a + r * cols, cols, out);
}

}  // namespace

MoeLinearPair::MoeLinearPair(const std::string& name, const MoeLinearPairOptions& options,
                             uint64_t seed)
    : name_(name), opt_(options), seed_(seed) {
  CHECK(opt_.in1 > 0 && opt_.out1 > 0 && opt_.in2 > 0 && opt_.out2 > 0) << name << ": shapes";
  CHECK(opt_.top_k >= 1 && opt_.top_k <= opt_.num_experts)
      << name << ": top_k " << opt_.top_k << " must be in [1, num_experts=" << opt_.num_experts
      << "]";
  CHECK_GT(opt_.tokens_per_image, 0) << name << ": tokens_per_image";
  CHECK_GT(opt_.images_per_group, 0) << name << ": images_per_group";
  const int64_t E = opt_.num_experts;
  const int64_t in[2] = {opt_.in1, opt_.in2}, out[2] = {opt_.out1, opt_.out2};
  const std::string part[2] = {opt_.first_name, opt_.second_name};
  for (int l = 0; l < 2; ++l) {
    // Each expert starts like a dense Linear (xavier-uniform over its [in, out]); every element
    // is its own draw, so the experts differ from the start.
    const float a = std::sqrt(6.f / static_cast<float>(in[l] + out[l]));
    w_[l] = MakeParameter(name + "." + part[l] + ".w", {E, in[l], out[l]}, InitKind::kUniformFanIn,
                          a, seed);
    b_[l] = MakeParameter(name + "." + part[l] + ".b", {E, out[l]}, InitKind::kZeros, 0.f, seed);
  }
  router_ = MakeParameter(name + ".router.w", {opt_.in1, E}, InitKind::kNormal, 0.02f, seed);
  if (opt_.router_input == MoeLinearPairOptions::RouterInput::kAttributes) {
    CHECK_GT(opt_.attribute_dim, 0) << name << ": attribute routing needs attribute_dim";
    attr_proj_ = std::make_unique<Linear>(name + ".router.attr_proj", opt_.attribute_dim,
                                          opt_.in1, seed);
    attr_norm_ = std::make_unique<LayerNorm>(name + ".router.attr_norm", opt_.in1, seed);
  }
}

MoeLinearPair::~MoeLinearPair() = default;

std::vector<Parameter*> MoeLinearPair::Parameters() {
  std::vector<Parameter*> ps = {&router_};
  for (Layer* l : {attr_proj_.get(), attr_norm_.get()})
    if (l != nullptr)
      for (Parameter* p : l->Parameters()) ps.push_back(p);
  for (int l = 0; l < 2; ++l) {
    ps.push_back(&w_[l]);
    ps.push_back(&b_[l]);
  }
  return ps;
}

void MoeLinearPair::RouterInputHost(const Tensor& x) {
  using RI = MoeLinearPairOptions::RouterInput;
  const int64_t T = opt_.tokens_per_image;
  switch (opt_.router_input) {
    case RI::kToken: router_in_ = x; break;
    case RI::kImageMean: {
      // MeanPoolTokens' mean (double sums in token order, one division), the very definition
      // the device path computes (MeanPoolTokensForwardCuda): the gates depend on these bits,
      // and host and device twins must route identically.
      MeanPoolTokens pool(T);
      router_in_ = pool.Forward(x);
      break;
    }
    case RI::kAttributes: {
      // One attribute row per decision (PlanDecisions checked the attributes' shape).
      const int64_t A = opt_.attribute_dim;
      Tensor rows({decisions_, A});
      for (int64_t d = 0; d < decisions_; ++d)
        std::copy_n(ctx_.attributes->data() + decision_row_[d] * A, A, rows.data() + d * A);
      router_in_ = AttrNorm()->Forward(AttrProj()->Forward(rows));
      break;
    }
  }
}

void MoeLinearPair::PlanDecisions() {
  using RI = MoeLinearPairOptions::RouterInput;
  const int64_t T = opt_.tokens_per_image;
  decision_of_row_.assign(rows_, 0);
  decision_image_.clear();
  decision_key_.clear();
  decision_row_.clear();
  const Tensor* a = ctx_.attributes;
  const int64_t A = opt_.attribute_dim;
  if (opt_.router_input == RI::kAttributes) {
    CHECK(a != nullptr) << name_ << ": attribute routing needs the step's attributes";
    CHECK(a->device() == Device::kCPU)
        << name_ << ": the attributes are host data (MoeStepContext::attributes)";
    CHECK(a->ndim() == 2 && a->dim(0) == rows_ && a->dim(1) == A)
        << name_ << ": attributes " << a->ShapeString() << ", want [" << rows_ << ", " << A << "]";
    CHECK_LE(A, 64) << name_ << ": the noise key packs the attribute bits into 64";
  }
  for (int64_t i = 0; i < rows_ / T; ++i) {
    // The image's decisions by key: the token (kToken), one (kImageMean), the bits (kAttributes).
    std::map<uint64_t, int64_t> of_key;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = i * T + t;
      uint64_t key = 0;
      if (opt_.router_input == RI::kToken) key = static_cast<uint64_t>(t);
      if (opt_.router_input == RI::kAttributes)
        for (int64_t j = 0; j < A; ++j)
          key |= static_cast<uint64_t>(a->at(row * A + j) != 0.f) << j;
      auto [it, fresh] = of_key.emplace(key, static_cast<int64_t>(decision_image_.size()));
      if (fresh) {
        decision_image_.push_back(i);
        decision_key_.push_back(key);
        decision_row_.push_back(row);
      }
      decision_of_row_[row] = it->second;
    }
  }
  decisions_ = static_cast<int64_t>(decision_image_.size());
}

void MoeLinearPair::Decide() {
  const int64_t D = opt_.in1;
  const int E = opt_.num_experts, k = opt_.top_k;
  std::vector<float> logits(decisions_ * E, 0.f);
  Sgemm(false, false, decisions_, E, D, 1.f, router_in_.data(), D, RouterParam().value.data(), E,
        0.f, logits.data(), E);
  if (ctx_.training && opt_.noise_scale > 0.f) {
    const float sigma = opt_.noise_scale / static_cast<float>(E);
    CounterRng rng(RouterNoiseKey(seed_, name_, ctx_.step));
    for (int64_t d = 0; d < decisions_; ++d) {
      const uint64_t global_image = static_cast<uint64_t>(
          ctx_.first_global_group * opt_.images_per_group + decision_image_[d]);
      for (int e = 0; e < E; ++e)
        logits[d * E + e] +=
            sigma * rng.Normal(global_image, decision_key_[d] * static_cast<uint64_t>(E) + e);
    }
  }
  probs_.resize(decisions_ * E);
  SoftmaxRows(logits.data(), decisions_, E, probs_.data());
  expert_.resize(decisions_ * k);
  gate_.resize(decisions_ * k);
  TopKGates(probs_.data(), decisions_, E, k, /*renormalise=*/true, expert_.data(), gate_.data());
  d_gate_.assign(decisions_ * k, 0.f);
  GroupDecisions();
}

void MoeLinearPair::GroupDecisions() {
  const int k = opt_.top_k;
  groups_.clear();
  by_expert_.assign(opt_.num_experts, {});
  if (PerImage() && opt_.merge_weights && one_decision_per_image()) {
    // Images whose experts and gates are bit-identical share one merged weight and one GEMM.
    std::map<std::vector<uint32_t>, size_t> index;
    for (int64_t i = 0; i < decisions_; ++i) {
      std::vector<uint32_t> key(2 * k);
      for (int r = 0; r < k; ++r) {
        key[r] = static_cast<uint32_t>(expert_[i * k + r]);
        std::memcpy(&key[k + r], &gate_[i * k + r], sizeof(float));
      }
      auto [it, fresh] = index.emplace(key, groups_.size());
      if (fresh) {
        groups_.emplace_back();
        groups_.back().decision = i;
      }
      groups_[it->second].images.push_back(i);
    }
    return;
  }
  for (int64_t t = 0; t < rows_; ++t)
    for (int r = 0; r < k; ++r) by_expert_[expert_[DecisionOf(t) * k + r]].push_back({t, r});
}

void MoeLinearPair::MergeGroupsHost() {
  const int k = opt_.top_k;
  for (Group& g : groups_) {
    std::vector<float> gates(gate_.begin() + g.decision * k, gate_.begin() + (g.decision + 1) * k);
    for (int l = 0; l < 2; ++l) {
      const int64_t in = w_[l].value.dim(1), out = w_[l].value.dim(2);
      std::vector<const float*> ws, bs;
      for (int r = 0; r < k; ++r) {
        const int e = expert_[g.decision * k + r];
        ws.push_back(w_[l].value.data() + e * in * out);
        bs.push_back(b_[l].value.data() + e * out);
      }
      g.w[l] = Tensor({in, out});
      g.b[l] = Tensor({out});
      MergeExpertWeights(ws, gates, in * out, g.w[l].data());
      MergeExpertWeights(bs, gates, out, g.b[l].data());
    }
  }
}

Tensor MoeLinearPair::RoutedForward(int l, const Tensor& x) {
  const int64_t in = w_[l].value.dim(1), out = w_[l].value.dim(2), T = opt_.tokens_per_image;
  const int k = opt_.top_k;
  CHECK(x.ndim() == 2 && x.dim(0) == rows_ && x.dim(1) == in)
      << name_ << ": layer " << l << " input " << x.ShapeString() << ", want [" << rows_ << ", "
      << in << "]";
  in_[l] = x;
  Tensor y = Tensor::Zeros({rows_, out});
  if (!groups_.empty()) {
    for (const Group& g : groups_) {
      const int64_t n = static_cast<int64_t>(g.images.size()) * T;
      Tensor xs({n, in}), ys({n, out});
      for (size_t j = 0; j < g.images.size(); ++j)
        std::copy(x.data() + g.images[j] * T * in, x.data() + (g.images[j] + 1) * T * in,
                  xs.data() + j * T * in);
      for (int64_t r = 0; r < n; ++r) std::copy(g.b[l].data(), g.b[l].data() + out, ys.data() + r * out);
      Sgemm(false, false, n, out, in, 1.f, xs.data(), in, g.w[l].data(), out, 1.f, ys.data(), out);
      for (size_t j = 0; j < g.images.size(); ++j)
        std::copy(ys.data() + j * T * out, ys.data() + (j + 1) * T * out,
                  y.data() + g.images[j] * T * out);
    }
    return y;
  }
  choice_out_[l] = Tensor({rows_ * k, out});
  for (int e = 0; e < opt_.num_experts; ++e) {
    const auto& list = by_expert_[e];
    const int64_t n = static_cast<int64_t>(list.size());
    if (n == 0) continue;
    Tensor xs({n, in}), os({n, out});
    for (int64_t j = 0; j < n; ++j) {
      std::copy(x.data() + list[j].first * in, x.data() + (list[j].first + 1) * in,
                xs.data() + j * in);
      std::copy(b_[l].value.data() + e * out, b_[l].value.data() + (e + 1) * out,
                os.data() + j * out);
    }
    Sgemm(false, false, n, out, in, 1.f, xs.data(), in, w_[l].value.data() + e * in * out, out,
          1.f, os.data(), out);
    for (int64_t j = 0; j < n; ++j) {
      const auto [t, r] = list[j];
      const float* o = os.data() + j * out;
      std::copy(o, o + out, choice_out_[l].data() + (t * k + r) * out);
      Axpy(gate_[DecisionOf(t) * k + r], o, out, y.data() + t * out);
    }
  }
  return y;
}

Tensor MoeLinearPair::RoutedBackward(int l, const Tensor& dy) {
  const int64_t in = w_[l].value.dim(1), out = w_[l].value.dim(2), T = opt_.tokens_per_image;
  const int k = opt_.top_k;
  CHECK(in_[l].ndim() == 2) << name_ << ": Backward before Forward";
  CHECK(dy.ndim() == 2 && dy.dim(0) == rows_ && dy.dim(1) == out) << name_ << ": dy shape";
  const Tensor& x = in_[l];
  Tensor dx = Tensor::Zeros({rows_, in});
  float* dw = w_[l].grad.data();
  float* db = b_[l].grad.data();
  const float* w = w_[l].value.data();
  const float* b = b_[l].value.data();
  if (!groups_.empty()) {
    // Per image i with merged W_m = sum_r g_r W[e_r]:  dX_i = dY_i W_m^T;  dW_m = X_i^T dY_i;
    // dW[e_r] += g_r dW_m;  dg_r = <dW_m, W[e_r]> + <colsum dY_i, b[e_r]>.
    std::vector<float> dwm(in * out), dbm(out);
    for (const Group& g : groups_)
      for (int64_t i : g.images) {
        const float* dyi = dy.data() + i * T * out;
        const float* xi = x.data() + i * T * in;
        Sgemm(false, true, T, in, out, 1.f, dyi, out, g.w[l].data(), out, 0.f,
              dx.data() + i * T * in, in);
        Sgemm(true, false, in, out, T, 1.f, xi, in, dyi, out, 0.f, dwm.data(), out);
        ColumnSums(dyi, T, out, dbm.data());
        for (int r = 0; r < k; ++r) {
          const int e = expert_[i * k + r];
          const float gr = gate_[i * k + r];
          d_gate_[i * k + r] += static_cast<float>(DotF(dwm.data(), w + e * in * out, in * out) +
                                                   DotF(dbm.data(), b + e * out, out));
          Axpy(gr, dwm.data(), in * out, dw + e * in * out);
          Axpy(gr, dbm.data(), out, db + e * out);
        }
      }
    return dx;
  }
  for (int e = 0; e < opt_.num_experts; ++e) {
    const auto& list = by_expert_[e];
    const int64_t n = static_cast<int64_t>(list.size());
    if (n == 0) continue;
    Tensor xs({n, in}), gs({n, out}), dxs({n, in});
    for (int64_t j = 0; j < n; ++j) {
      const auto [t, r] = list[j];
      const int64_t c = DecisionOf(t) * k + r;
      std::copy(x.data() + t * in, x.data() + (t + 1) * in, xs.data() + j * in);
      const float* dyt = dy.data() + t * out;
      for (int64_t o = 0; o < out; ++o) gs.data()[j * out + o] = gate_[c] * dyt[o];
      d_gate_[c] += static_cast<float>(DotF(dyt, choice_out_[l].data() + (t * k + r) * out, out));
    }
    Sgemm(true, false, in, out, n, 1.f, xs.data(), in, gs.data(), out, 1.f, dw + e * in * out, out);
    for (int64_t j = 0; j < n; ++j) Axpy(1.f, gs.data() + j * out, out, db + e * out);
    Sgemm(false, true, n, in, out, 1.f, gs.data(), out, w + e * in * out, out, 0.f, dxs.data(), in);
    for (int64_t j = 0; j < n; ++j) Axpy(1.f, dxs.data() + j * in, in, dx.data() + list[j].first * in);
  }
  return dx;
}

Tensor MoeLinearPair::RouterBackward() {
  using RI = MoeLinearPairOptions::RouterInput;
  const int E = opt_.num_experts, k = opt_.top_k;
  const int64_t D = opt_.in1;
  // The renormalised top-k rule's gate backward, as the MoE layer's attribute rule runs it.
  std::vector<float> dprobs(decisions_ * E, 0.f), dlogits(decisions_ * E);
  for (int64_t d = 0; d < decisions_; ++d)
    TopKGatesBackward(probs_.data() + d * E, expert_.data() + d * k, gate_.data() + d * k,
                      d_gate_.data() + d * k, k, /*renormalised=*/true, dprobs.data() + d * E);
  SoftmaxRowsBackward(probs_.data(), dprobs.data(), decisions_, E, dlogits.data());
  Parameter& router = RouterParam();
  Sgemm(true, false, D, E, decisions_, 1.f, router_in_.data(), D, dlogits.data(), E, 1.f,
        router.grad.data(), E);
  Tensor dz({decisions_, D});
  Sgemm(false, true, decisions_, D, E, 1.f, dlogits.data(), E, router.value.data(), E, 0.f,
        dz.data(), D);
  if (opt_.router_input != RI::kAttributes) return dz;
  AttrProj()->Backward(AttrNorm()->Backward(dz));
  return Tensor();
}

Tensor MoeLinearPair::ForwardFirst(const Tensor& x) {
  CHECK(x.ndim() == 2 && x.dim(1) == opt_.in1) << name_ << ": input " << x.ShapeString();
  rows_ = x.dim(0);
  CHECK_EQ(rows_ % opt_.tokens_per_image, 0)
      << name_ << ": " << rows_ << " rows is not whole images of " << opt_.tokens_per_image;
  PlanDecisions();
  on_device_ = x.device() == Device::kCUDA;
  if (on_device_) {
    RouterInputCuda(x);
    Decide();
    if (groups_.empty()) {
      UploadExpertPlanCuda();
    } else {
      MergeGroupsCuda();
    }
    return RoutedForwardCuda(0, x);
  }
  RouterInputHost(x);
  Decide();
  MergeGroupsHost();
  return RoutedForward(0, x);
}

Tensor MoeLinearPair::ForwardSecond(const Tensor& h) {
  if (on_device_) return RoutedForwardCuda(1, h);
  return RoutedForward(1, h);
}

Tensor MoeLinearPair::BackwardSecond(const Tensor& dy2) {
  if (on_device_) return RoutedBackwardCuda(1, dy2);
  return RoutedBackward(1, dy2);
}

Tensor MoeLinearPair::BackwardFirst(const Tensor& dy1) {
  if (on_device_) {
    Tensor dx = RoutedBackwardCuda(0, dy1);
    RouterBackwardCuda(&dx);
    return dx;
  }
  Tensor dx = RoutedBackward(0, dy1);
  const Tensor dz = RouterBackward();
  const int64_t D = opt_.in1, T = opt_.tokens_per_image;
  switch (opt_.router_input) {
    case MoeLinearPairOptions::RouterInput::kToken:
      Axpy(1.f, dz.data(), dz.numel(), dx.data());
      break;
    case MoeLinearPairOptions::RouterInput::kImageMean:
      for (int64_t t = 0; t < rows_; ++t)
        Axpy(1.f / static_cast<float>(T), dz.data() + (t / T) * D, D, dx.data() + t * D);
      break;
    case MoeLinearPairOptions::RouterInput::kAttributes: break;
  }
  return dx;
}

void MoeLinearPair::ZeroBiasGradColumns(int layer, int64_t begin, int64_t count) {
  Tensor& g = b_[layer].grad;
  const int64_t E = g.dim(0), cols = g.dim(1);
  CHECK(begin >= 0 && count >= 0 && begin + count <= cols) << name_ << ": bias columns";
  if (g.device() == Device::kCUDA) return ZeroBiasGradColumnsCuda(layer, begin, count);
  for (int64_t e = 0; e < E; ++e) std::fill_n(g.data() + e * cols + begin, count, 0.f);
}

std::vector<int> MoeLinearPair::RowExperts() const {
  const int k = opt_.top_k;
  std::vector<int> out(rows_ * k);
  for (int64_t t = 0; t < rows_; ++t)
    for (int r = 0; r < k; ++r) out[t * k + r] = expert_[DecisionOf(t) * k + r];
  return out;
}

std::vector<float> MoeLinearPair::RowGates() const {
  const int k = opt_.top_k;
  std::vector<float> out(rows_ * k);
  for (int64_t t = 0; t < rows_; ++t)
    for (int r = 0; r < k; ++r) out[t * k + r] = gate_[DecisionOf(t) * k + r];
  return out;
}

}  // namespace moe
