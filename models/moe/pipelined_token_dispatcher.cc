#include "models/moe/pipelined_token_dispatcher.h"

#include <glog/logging.h>

#include <algorithm>
#include <utility>

#include "comm/collective_watchdog.h"
#include "models/moe/block_permute.h"
#include "models/moe/host_dispatch_loops.h"

namespace moe {

namespace {

std::vector<int64_t> Floats(const std::vector<int64_t>& rows_per_peer, int64_t dim) {
  std::vector<int64_t> floats(rows_per_peer.size());
  for (size_t p = 0; p < rows_per_peer.size(); ++p) floats[p] = rows_per_peer[p] * dim;
  return floats;
}

}  // namespace

PipelinedTokenDispatcher::PipelinedTokenDispatcher(const std::string& layer, Communicator* comm,
                                                   int num_experts, int dim, int chunks)
    : ExpertDrivingDispatcher(layer), comm_(comm), num_experts_(num_experts), dim_(dim),
      ep_size_(comm->Size(GroupKind::kExpert)), max_chunks_(chunks) {
  CHECK_GE(chunks, 1) << layer << ": parallel.pipeline_chunks=" << chunks << " must be >= 1";
}

void PipelinedTokenDispatcher::SplitIntoChunks(const DispatchPlan& plan) {
  rows_ = plan.rows;
  chunks_.clear();
  const std::vector<int64_t> recv_block_rows = ReceivedBlockRows(plan, comm_, num_experts_, layer_);
  for (DispatchChunk& c :
       moe::SplitIntoChunks(plan, recv_block_rows, num_experts_, ep_size_, max_chunks_))
    chunks_.push_back(Chunk{std::move(c), Tensor()});
}

Tensor PipelinedTokenDispatcher::Pack(const Chunk& c, const Tensor& x) const {
  return PackRows(c.plan, c.layout, x.data() + c.first_row * dim_, dim_);
}

void PipelinedTokenDispatcher::CombineInto(const Chunk& c, Tensor* y) const {
  CombineRows(c.plan, c.layout, c.returned.data(), dim_, y->data() + c.first_row * dim_);
}

Tensor PipelinedTokenDispatcher::CombineBackwardOf(const Chunk& c, const Tensor& dy,
                                                   float* d_gate) const {
  return CombineBackwardRows(c.plan, c.layout, c.returned.data(), dy.data() + c.first_row * dim_,
                             dim_, d_gate + c.first_row * c.plan.kc);
}

void PipelinedTokenDispatcher::DispatchBackwardInto(const Chunk& c, const Tensor& d_send,
                                                    Tensor* dx) const {
  DispatchBackwardRows(c.plan, c.layout, d_send.data(), dim_, dx->data() + c.first_row * dim_);
}

std::vector<Tensor> PipelinedTokenDispatcher::Pipeline(const std::vector<Tensor>& outgoing,
                                                       const ChunkExpertsFn& experts,
                                                       const char* to_phase,
                                                       const char* back_phase) {
  const int K = static_cast<int>(chunks_.size());
  const int64_t D = dim_;
  const int El = num_experts_ / ep_size_;
  std::vector<Tensor> received(K), src_major(K), back(K);
  std::vector<std::unique_ptr<PendingExchange>> to(K), from(K);
  auto start_to = [&](int c) {
    const DispatchLayout& L = chunks_[c].layout;
    received[c] = Tensor({L.recv_rows, D});
    to[c] = comm_->StartAllToAllV(outgoing[c].data(), Floats(L.send_rows_per_peer, D),
                                  received[c].data(), Floats(L.recv_rows_per_peer, D),
                                  GroupKind::kExpert);
  };
  start_to(0);
  for (int c = 0; c < K; ++c) {
    const Chunk& ch = chunks_[c];
    {
      ScopedExchange ph(profiler_, to_phase, ch.layout.send_rows * D * sizeof(float));
      ScopedActivity act(layer_ + " " + to_phase);  // names the phase if the watchdog fires
      to[c]->Wait();
    }
    if (c + 1 < K) start_to(c + 1);  // travels while chunk c's experts run
    Tensor expert_major({ch.layout.recv_rows, D});
    PermuteBlocks(received[c].data(), expert_major.data(), D, ch.recv_block_rows, ep_size_, El,
                  ch.plan.groups, /*to_expert_major=*/true);
    const Tensor answer = experts(c, expert_major);
    src_major[c] = Tensor(answer.shape());
    PermuteBlocks(answer.data(), src_major[c].data(), D, ch.recv_block_rows, ep_size_, El,
                  ch.plan.groups, /*to_expert_major=*/false);
    back[c] = Tensor({ch.layout.send_rows, D});
    from[c] = comm_->StartAllToAllV(src_major[c].data(), Floats(ch.layout.recv_rows_per_peer, D),
                                    back[c].data(), Floats(ch.layout.send_rows_per_peer, D),
                                    GroupKind::kExpert);
  }
  for (int c = 0; c < K; ++c) {
    ScopedExchange ph(profiler_, back_phase, chunks_[c].layout.recv_rows * D * sizeof(float));
    ScopedActivity act(layer_ + " " + back_phase);
    from[c]->Wait();
  }
  return back;
}

Tensor PipelinedTokenDispatcher::ForwardThroughExperts(const Tensor& x, const DispatchPlan& plan,
                                                       const ExpertsForwardFn& experts) {
  std::vector<Tensor> send;
  {
    ScopedPhase ph(profiler_, "dispatch_pack");
    SplitIntoChunks(plan);
    for (const Chunk& c : chunks_) send.push_back(Pack(c, x));
  }
  std::vector<Tensor> back = Pipeline(
      send,
      [&](int c, const Tensor& in) { return experts(c, in, chunks_[c].layout.expert_rows); },
      "a2a_dispatch", "a2a_combine");
  Tensor y = Tensor::Zeros({rows_, int64_t{dim_}});
  ScopedPhase ph(profiler_, "combine");
  for (size_t c = 0; c < chunks_.size(); ++c) {
    chunks_[c].returned = back[c];
    CombineInto(chunks_[c], &y);
  }
  return y;
}

Tensor PipelinedTokenDispatcher::BackwardThroughExperts(const Tensor& dy,
                                                        const GateGradTarget& gate_grad,
                                                        const ExpertsBackwardFn& experts) {
  CHECK(gate_grad.d_gate != nullptr) << layer_ << ": the host dispatcher writes d(gate) per choice";
  CHECK(!chunks_.empty()) << layer_ << ": BackwardThroughExperts before ForwardThroughExperts";
  std::vector<Tensor> d_returned;
  {
    ScopedPhase ph(profiler_, "combine_bwd");
    for (const Chunk& c : chunks_) d_returned.push_back(CombineBackwardOf(c, dy, gate_grad.d_gate));
  }
  if (gate_grad.on_written) gate_grad.on_written();
  std::vector<Tensor> d_send =
      Pipeline(d_returned, experts, "a2a_combine_bwd", "a2a_dispatch_bwd");
  Tensor dx = Tensor::Zeros({rows_, int64_t{dim_}});
  ScopedPhase ph(profiler_, "dispatch_bwd");
  for (size_t c = 0; c < chunks_.size(); ++c) DispatchBackwardInto(chunks_[c], d_send[c], &dx);
  return dx;
}

}  // namespace moe
