#include "models/moe/moe_layer.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/gemm.h"
#include "core/rng.h"
#include "models/moe/aux_losses.h"
#include "models/moe/block_permute.h"
#include "models/moe/expert_bank.h"
#include "models/moe/router_math.h"
#include "models/moe/slot_assignment.h"

namespace moe {

// Everything one Forward decides and Backward reuses. Index conventions:
//   choice (t, r)      -> t * k + r, t a local row, r the choice rank (0 = best)
//   send block (e, g)  -> e * G + g: expert-major, so the blocks for EP peer p are contiguous
//   recv block         -> (src * El + l) * G + g, as the all-to-all delivers them
struct MoeLayer::Routing {
  int64_t rows = 0, groups = 0;
  Tensor x;
  std::vector<float> clean_logits, noisy_logits, probs, probs_clean;
  std::vector<int> expert, slot;
  std::vector<float> gate;
  std::vector<int64_t> block_rows;       // [E * G] rows per send block (C, or exact if dropless)
  std::vector<int64_t> block_offset;     // [E * G] first row of each send block
  int64_t send_rows = 0;
  std::vector<int64_t> recv_block_rows;  // [EP * El * G]
  std::vector<int64_t> send_rows_per_peer, recv_rows_per_peer;
  std::vector<int64_t> expert_rows;      // [El] rows each local expert processes
  Tensor returned;                       // expert outputs back at the source, send layout
  // Auxiliary-loss gradients, computed with the values in Forward and applied in Backward.
  std::vector<float> d_probs_aux, d_probs_clean_aux, d_logits_aux, d_clean_logits_aux;
};

MoeLayer::MoeLayer(const std::string& name, const MoeLayerOptions& options, Communicator* comm,
                   uint64_t seed)
    : name_(name), opt_(options), comm_(comm), seed_(seed) {
  CHECK(comm_ != nullptr);
  CHECK_GT(opt_.dim, 0);
  CHECK_GT(opt_.hidden, 0);
  CHECK_GT(opt_.group_tokens, 0);
  CHECK(opt_.top_k >= 1 && opt_.top_k <= opt_.num_experts)
      << name << ": top_k " << opt_.top_k << " must be in [1, num_experts=" << opt_.num_experts
      << "]";
  ep_size_ = comm_->Size(GroupKind::kExpert);
  ep_rank_ = comm_->Rank(GroupKind::kExpert);
  CHECK_EQ(opt_.num_experts % ep_size_, 0)
      << name << ": num_experts " << opt_.num_experts << " not divisible by ep_size " << ep_size_;
  experts_per_rank_ = opt_.num_experts / ep_size_;
  router_ = MakeParameter(name + ".router.w", {opt_.dim, opt_.num_experts}, InitKind::kNormal,
                          0.02f, seed);
  experts_ = std::make_unique<ExpertBank>(name + ".expert", opt_.dim, opt_.hidden,
                                          ep_rank_ * experts_per_rank_, experts_per_rank_, seed);
}

MoeLayer::~MoeLayer() = default;

// Copies value and grad to `device` (the CUDA path runs on device-resident parameters).
void MoeLayer::MoveTo(Device device) {
  for (Tensor* t : {&router_.value, &router_.grad}) {
    if (t->device() == device) continue;
    Tensor moved(t->shape(), device);
    moved.CopyFrom(*t);
    *t = moved;
  }
  experts_->MoveTo(device);
  routing_.reset();
  cuda_.reset();
}

std::vector<Parameter*> MoeLayer::Parameters() {
  std::vector<Parameter*> ps = {&router_};
  for (Parameter* p : experts_->Parameters()) ps.push_back(p);
  return ps;
}

int64_t MoeLayer::CurrentCapacity() const {
  if (opt_.dropless) return -1;
  const double cf = ctx_.training ? opt_.capacity_factor_train : opt_.capacity_factor_eval;
  return CapacityPerExpert(opt_.top_k, opt_.group_tokens, cf, opt_.num_experts, opt_.rounding);
}

void MoeLayer::Route(const Tensor& x) {
  Routing& R = *routing_;
  const int E = opt_.num_experts, k = opt_.top_k;
  const int64_t n = opt_.group_tokens, rows = R.rows, G = R.groups;
  const float sigma = opt_.noise_scale / E;
  const bool noisy = ctx_.training && sigma > 0.f;

  R.clean_logits.assign(rows * E, 0.f);
  Sgemm(false, false, rows, E, opt_.dim, 1.f, x.data(), opt_.dim, router_.value.data(), E, 0.f,
        R.clean_logits.data(), E);
  R.noisy_logits = R.clean_logits;
  if (noisy) {
    // Keyed on (layer, step, global group, token in group, expert): the same draw whichever
    // rank routes the group.
    CounterRng rng(MixKey(MixKey(seed_, HashString(name_ + ".router_noise")), ctx_.step));
    for (int64_t g = 0; g < G; ++g) {
      const uint64_t gid = static_cast<uint64_t>(ctx_.first_global_group + g);
      for (int64_t i = 0; i < n * E; ++i)
        R.noisy_logits[g * n * E + i] += sigma * rng.Normal(gid, static_cast<uint64_t>(i));
    }
  }
  R.probs.resize(rows * E);
  SoftmaxRows(R.noisy_logits.data(), rows, E, R.probs.data());
  R.probs_clean = R.probs;
  if (noisy) SoftmaxRows(R.clean_logits.data(), rows, E, R.probs_clean.data());

  R.expert.resize(rows * k);
  R.gate.resize(rows * k);
  R.slot.resize(rows * k);
  TopKRows(R.probs.data(), rows, E, k, R.expert.data(), R.gate.data());

  const int64_t capacity = CurrentCapacity();
  R.block_rows.assign(E * G, 0);
  metrics_ = MoeMetrics();
  metrics_.tokens_per_expert.assign(E, 0);
  std::vector<int64_t> counts(E);
  std::vector<int64_t> identity(n);
  std::iota(identity.begin(), identity.end(), 0);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t t0 = g * n;
    const std::vector<int64_t> order =
        opt_.batch_prioritized ? BatchPrioritizedOrder(R.gate.data() + t0 * k, n, k) : identity;
    std::fill(counts.begin(), counts.end(), 0);
    metrics_.dropped += AssignSlots(R.expert.data() + t0 * k, n, k, E, capacity, order,
                                    R.slot.data() + t0 * k, counts.data());
    for (int e = 0; e < E; ++e) {
      R.block_rows[e * G + g] = capacity < 0 ? counts[e] : capacity;
      metrics_.tokens_per_expert[e] += counts[e];
    }
  }
  metrics_.assignments = rows * k;
  metrics_.capacity_slots = capacity < 0 ? 0 : capacity * E * G;

  // Auxiliary losses per group, averaged over every group of the global batch.
  R.d_probs_aux.assign(rows * E, 0.f);
  R.d_probs_clean_aux.assign(rows * E, 0.f);
  R.d_logits_aux.assign(rows * E, 0.f);
  R.d_clean_logits_aux.assign(rows * E, 0.f);
  if (!ctx_.training) return;
  const float per_group = 1.f / static_cast<float>(ctx_.num_global_groups);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t o = g * n * E;
    if (opt_.importance_weight > 0) {
      const double l = ImportanceLoss(R.probs_clean.data() + o, n, E,
                                      opt_.importance_weight * per_group,
                                      R.d_probs_clean_aux.data() + o);
      metrics_.importance_loss += l;
      metrics_.aux_loss += opt_.importance_weight * per_group * l;
    }
    if (opt_.load_weight > 0 && sigma > 0) {
      const double l = LoadLoss(R.clean_logits.data() + o, R.noisy_logits.data() + o, n, E, k,
                                sigma, opt_.load_weight * per_group,
                                R.d_clean_logits_aux.data() + o);
      metrics_.load_loss += l;
      metrics_.aux_loss += opt_.load_weight * per_group * l;
    }
    if (opt_.switch_weight > 0) {
      const double l = SwitchLoss(R.probs.data() + o, n, E, opt_.switch_weight * per_group,
                                  R.d_probs_aux.data() + o);
      metrics_.switch_loss += l;
      metrics_.aux_loss += opt_.switch_weight * per_group * l;
    }
    if (opt_.z_weight > 0) {
      const double l = ZLoss(R.noisy_logits.data() + o, n, E, opt_.z_weight * per_group,
                             R.d_logits_aux.data() + o);
      metrics_.z_loss += l;
      metrics_.aux_loss += opt_.z_weight * per_group * l;
    }
  }
}

void MoeLayer::BuildSendLayout() {
  Routing& R = *routing_;
  const int E = opt_.num_experts, El = experts_per_rank_, EP = ep_size_;
  const int64_t G = R.groups;
  R.block_offset.assign(E * G, 0);
  R.send_rows_per_peer.assign(EP, 0);
  int64_t off = 0;
  for (int e = 0; e < E; ++e)
    for (int64_t g = 0; g < G; ++g) {
      R.block_offset[e * G + g] = off;
      off += R.block_rows[e * G + g];
      R.send_rows_per_peer[e / El] += R.block_rows[e * G + g];
    }
  R.send_rows = off;

  // Receivers need the block sizes. With a fixed capacity they are known; dropless exchanges them.
  R.recv_block_rows.assign(static_cast<int64_t>(EP) * El * G, 0);
  if (opt_.dropless) {
    // Send layout per peer p: [l][g] = block (p * El + l, g), which is already contiguous.
    comm_->AllToAllInt64(R.block_rows.data(), R.recv_block_rows.data(), El * G, GroupKind::kExpert);
  } else {
    std::fill(R.recv_block_rows.begin(), R.recv_block_rows.end(), CurrentCapacity());
  }
  R.recv_rows_per_peer.assign(EP, 0);
  R.expert_rows.assign(El, 0);
  for (int s = 0; s < EP; ++s)
    for (int l = 0; l < El; ++l)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t r = R.recv_block_rows[(static_cast<int64_t>(s) * El + l) * G + g];
        R.recv_rows_per_peer[s] += r;
        R.expert_rows[l] += r;
      }
}

Tensor MoeLayer::ExchangeToExperts(const Tensor& send, const char* phase) {
  Routing& R = *routing_;
  const int64_t D = opt_.dim;
  int64_t recv_rows = 0;
  for (int64_t r : R.recv_rows_per_peer) recv_rows += r;
  Tensor received({recv_rows, D});
  std::vector<int64_t> sc(ep_size_), rc(ep_size_);
  for (int p = 0; p < ep_size_; ++p) {
    sc[p] = R.send_rows_per_peer[p] * D;
    rc[p] = R.recv_rows_per_peer[p] * D;
  }
  {
    ScopedPhase ph(ctx_.profiler, phase, R.send_rows * D * sizeof(float));
    comm_->AllToAllV(send.data(), sc, received.data(), rc, GroupKind::kExpert);
  }
  Tensor expert_major({recv_rows, D});
  PermuteBlocks(received.data(), expert_major.data(), D, R.recv_block_rows, ep_size_,
                experts_per_rank_, R.groups, /*to_expert_major=*/true);
  return expert_major;
}

Tensor MoeLayer::ExchangeFromExperts(const Tensor& expert_rows, const char* phase) {
  Routing& R = *routing_;
  const int64_t D = opt_.dim;
  Tensor src_major(expert_rows.shape());
  PermuteBlocks(expert_rows.data(), src_major.data(), D, R.recv_block_rows, ep_size_,
                experts_per_rank_, R.groups, /*to_expert_major=*/false);
  Tensor back({R.send_rows, D});
  std::vector<int64_t> sc(ep_size_), rc(ep_size_);
  for (int p = 0; p < ep_size_; ++p) {
    sc[p] = R.recv_rows_per_peer[p] * D;
    rc[p] = R.send_rows_per_peer[p] * D;
  }
  ScopedPhase ph(ctx_.profiler, phase, expert_rows.numel() * sizeof(float));
  comm_->AllToAllV(src_major.data(), sc, back.data(), rc, GroupKind::kExpert);
  return back;
}

Tensor MoeLayer::Forward(const Tensor& x) {
  CHECK_EQ(x.ndim(), 2) << name_ << ": input must be [rows, dim]";
  CHECK_EQ(x.dim(1), opt_.dim) << name_ << ": input width";
  CHECK_EQ(x.dim(0) % opt_.group_tokens, 0)
      << name_ << ": " << x.dim(0) << " rows is not a whole number of routing groups of "
      << opt_.group_tokens << " tokens";
  CHECK(router_.value.device() == x.device())
      << name_ << ": input on " << DeviceName(x.device()) << ", parameters on "
      << DeviceName(router_.value.device()) << " (MoveTo)";
#ifdef MOE_EP_HAS_CUDA
  if (x.device() == Device::kCUDA) return ForwardCuda(x);  // same maths, moe_layer_cuda.cc
#endif
  routing_ = std::make_shared<Routing>();
  Routing& R = *routing_;
  R.rows = x.dim(0);
  R.groups = R.rows / opt_.group_tokens;
  R.x = x;
  const int k = opt_.top_k, E = opt_.num_experts;
  const int64_t D = opt_.dim, G = R.groups;
  {
    ScopedPhase ph(ctx_.profiler, "router");
    Route(x);
  }
  Tensor send;
  {
    ScopedPhase ph(ctx_.profiler, "dispatch_pack");
    BuildSendLayout();
    send = Tensor::Zeros({R.send_rows, D});  // padding slots stay zero
    for (int64_t t = 0; t < R.rows; ++t) {
      const int64_t g = t / opt_.group_tokens;
      for (int r = 0; r < k; ++r) {
        const int s = R.slot[t * k + r];
        if (s < 0) continue;
        const int64_t row = R.block_offset[R.expert[t * k + r] * G + g] + s;
        std::copy(x.data() + t * D, x.data() + (t + 1) * D, send.data() + row * D);
      }
    }
  }
  Tensor expert_in = ExchangeToExperts(send, "a2a_dispatch");
  Tensor expert_out;
  {
    ScopedPhase ph(ctx_.profiler, "experts");
    expert_out = experts_->Forward(expert_in, R.expert_rows);
  }
  R.returned = ExchangeFromExperts(expert_out, "a2a_combine");
  Tensor y = Tensor::Zeros({R.rows, D});
  {
    ScopedPhase ph(ctx_.profiler, "combine");
    for (int64_t t = 0; t < R.rows; ++t) {
      const int64_t g = t / opt_.group_tokens;
      float* yt = y.data() + t * D;
      for (int r = 0; r < k; ++r) {
        const int s = R.slot[t * k + r];
        if (s < 0) continue;
        const float w = R.gate[t * k + r];
        const float* o = R.returned.data() + (R.block_offset[R.expert[t * k + r] * G + g] + s) * D;
        for (int64_t j = 0; j < D; ++j) yt[j] += w * o[j];
      }
    }
  }
  (void)E;
  return y;
}

Tensor MoeLayer::Backward(const Tensor& dy) {
#ifdef MOE_EP_HAS_CUDA
  if (dy.device() == Device::kCUDA) return BackwardCuda(dy);  // moe_layer_cuda.cc
#endif
  CHECK(routing_) << name_ << ": Backward before Forward";
  Routing& R = *routing_;
  CHECK_EQ(dy.numel(), R.rows * opt_.dim) << name_ << ": dy shape";
  const int k = opt_.top_k, E = opt_.num_experts;
  const int64_t D = opt_.dim, G = R.groups;

  // combine backward: d(expert output) = gate * dy, d(gate) = <dy, expert output>.
  Tensor d_returned;
  std::vector<float> d_probs(R.rows * E, 0.f);
  {
    ScopedPhase ph(ctx_.profiler, "combine_bwd");
    d_returned = Tensor::Zeros({R.send_rows, D});
    for (int64_t t = 0; t < R.rows; ++t) {
      const int64_t g = t / opt_.group_tokens;
      const float* dyt = dy.data() + t * D;
      for (int r = 0; r < k; ++r) {
        const int s = R.slot[t * k + r];
        if (s < 0) continue;  // a dropped choice contributes nothing, so its gate gets no grad
        const int e = R.expert[t * k + r];
        const int64_t row = R.block_offset[e * G + g] + s;
        const float w = R.gate[t * k + r];
        const float* o = R.returned.data() + row * D;
        float* dout = d_returned.data() + row * D;
        double dg = 0;
        for (int64_t j = 0; j < D; ++j) {
          dout[j] = w * dyt[j];
          dg += static_cast<double>(dyt[j]) * o[j];
        }
        d_probs[t * E + e] += static_cast<float>(dg);
      }
    }
  }
  Tensor d_expert_out = ExchangeToExperts(d_returned, "a2a_combine_bwd");
  Tensor d_expert_in;
  {
    ScopedPhase ph(ctx_.profiler, "experts_bwd");
    d_expert_in = experts_->Backward(d_expert_out);
  }
  Tensor d_send = ExchangeFromExperts(d_expert_in, "a2a_dispatch_bwd");

  Tensor dx = Tensor::Zeros({R.rows, D});
  {
    ScopedPhase ph(ctx_.profiler, "dispatch_bwd");
    for (int64_t t = 0; t < R.rows; ++t) {
      const int64_t g = t / opt_.group_tokens;
      float* dxt = dx.data() + t * D;
      for (int r = 0; r < k; ++r) {
        const int s = R.slot[t * k + r];
        if (s < 0) continue;
        const float* ds = d_send.data() + (R.block_offset[R.expert[t * k + r] * G + g] + s) * D;
        for (int64_t j = 0; j < D; ++j) dxt[j] += ds[j];
      }
    }
  }
  {
    ScopedPhase ph(ctx_.profiler, "router_bwd");
    // Noisy path: probs = softmax(noisy logits), noisy = clean + eps (additive, so d/dclean = 1).
    for (int64_t i = 0; i < R.rows * E; ++i) d_probs[i] += R.d_probs_aux[i];
    std::vector<float> d_clean(R.rows * E);
    SoftmaxRowsBackward(R.probs.data(), d_probs.data(), R.rows, E, d_clean.data());
    std::vector<float> d_from_clean_probs(R.rows * E);
    SoftmaxRowsBackward(R.probs_clean.data(), R.d_probs_clean_aux.data(), R.rows, E,
                        d_from_clean_probs.data());
    for (int64_t i = 0; i < R.rows * E; ++i)
      d_clean[i] += R.d_logits_aux[i] + d_from_clean_probs[i] + R.d_clean_logits_aux[i];
    Sgemm(true, false, D, E, R.rows, 1.f, R.x.data(), D, d_clean.data(), E, 1.f,
          router_.grad.data(), E);
    Sgemm(false, true, R.rows, D, E, 1.f, d_clean.data(), E, router_.value.data(), E, 1.f,
          dx.data(), D);
  }
  return dx;
}

}  // namespace moe
