#include "models/moe/token_dispatcher.h"

#include <glog/logging.h>

namespace moe {

const char* DispatcherKindName(DispatcherKind kind) {
  switch (kind) {
    case DispatcherKind::kFlat: return "flat";
    case DispatcherKind::kHierarchical: return "hierarchical";
    case DispatcherKind::kPipelined: return "pipelined";
  }
  return "?";
}

Tensor TokenDispatcher::ForwardThroughExperts(const Tensor&, const DispatchPlan&,
                                              const ExpertsForwardFn&) {
  LOG(FATAL) << "this token dispatcher does not drive the experts (drives_experts() is false)";
  return Tensor();
}

Tensor TokenDispatcher::BackwardThroughExperts(const Tensor&, const GateGradTarget&,
                                               const ExpertsBackwardFn&) {
  LOG(FATAL) << "this token dispatcher does not drive the experts (drives_experts() is false)";
  return Tensor();
}

Tensor ExpertDrivingDispatcher::Dispatch(const Tensor&, const DispatchPlan&) {
  LOG(FATAL) << layer_ << ": this dispatcher runs the experts itself; call ForwardThroughExperts";
  return Tensor();
}

const std::vector<int64_t>& ExpertDrivingDispatcher::expert_rows() const {
  LOG(FATAL) << layer_ << ": this dispatcher has expert rows per chunk only";
  static const std::vector<int64_t> none;
  return none;
}

Tensor ExpertDrivingDispatcher::Combine(const Tensor&) {
  LOG(FATAL) << layer_ << ": this dispatcher combines in ForwardThroughExperts";
  return Tensor();
}

Tensor ExpertDrivingDispatcher::CombineBackward(const Tensor&, const GateGradTarget&) {
  LOG(FATAL) << layer_ << ": this dispatcher runs BackwardThroughExperts";
  return Tensor();
}

Tensor ExpertDrivingDispatcher::DispatchBackward(const Tensor&) {
  LOG(FATAL) << layer_ << ": this dispatcher runs BackwardThroughExperts";
  return Tensor();
}

DispatchLayout ComputeDispatchLayout(const std::vector<int64_t>& block_rows,
                                     const std::vector<int64_t>& recv_block_rows, int E, int EP,
                                     int64_t G) {
  const int El = E / EP;
  CHECK_EQ(static_cast<int64_t>(block_rows.size()), E * G);
  CHECK_EQ(static_cast<int64_t>(recv_block_rows.size()), int64_t{EP} * El * G);
  DispatchLayout L;
  L.block_offset.assign(E * G, 0);
  L.send_rows_per_peer.assign(EP, 0);
  for (int e = 0; e < E; ++e)
    for (int64_t g = 0; g < G; ++g) {
      L.block_offset[e * G + g] = L.send_rows;
      L.send_rows += block_rows[e * G + g];
      L.send_rows_per_peer[e / El] += block_rows[e * G + g];
    }
  L.recv_rows_per_peer.assign(EP, 0);
  L.expert_rows.assign(El, 0);
  for (int s = 0; s < EP; ++s)
    for (int l = 0; l < El; ++l)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t r = recv_block_rows[(static_cast<int64_t>(s) * El + l) * G + g];
        L.recv_rows_per_peer[s] += r;
        L.expert_rows[l] += r;
        L.recv_rows += r;
      }
  return L;
}

}  // namespace moe
