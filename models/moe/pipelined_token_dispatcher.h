// PIPELINED: the host dispatcher that cuts the capacity buffers into chunks of whole routing
// groups and drives the experts chunk by chunk, so that one chunk's all-to-all travels while
// another chunk's experts compute (drives_experts(): MoeLayer calls ForwardThroughExperts and
// BackwardThroughExperts). Each chunk is FLAT's exchange of its groups: the same pack into
// [E][groups][block rows], the same source-major -> expert-major permutation, the same combine.
//
// Schedule (forward; the backward is the same with the experts' backward):
//   pack every chunk; start chunk 0's dispatch exchange
//   for chunk c: finish c's dispatch; start c+1's; experts on c; start c's return exchange
//   finish every return; combine
// so chunk c's experts overlap chunk c+1's dispatch and chunk c-1's return. Exchanges are the
// communicator's non-blocking pairwise all-to-all-v; they advance while this rank is inside MPI
// (Open MPI without a progress thread), i.e. eager-sized messages fly during the experts and
// larger ones complete in the next wait.
//
// What it guarantees against FLAT: the same routing, drops and combine order; each row meets the
// same arithmetic except that its expert GEMM is a smaller call, which some OpenBLAS kernels round
// differently in the last bit, so layer outputs, dx and the router gradients agree to a few ulps.
// An expert's weight and bias gradients are sums over its rows, accumulated chunk by chunk instead
// of in one GEMM: same terms, another order (tests/mpi/dispatcher_test.cc derives the tolerances).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "models/moe/dispatch_chunks.h"
#include "models/moe/token_dispatcher.h"

namespace moe {

class PipelinedTokenDispatcher : public ExpertDrivingDispatcher {
 public:
  // chunks >= 1: the most chunks a Forward uses (never more than its routing groups).
  PipelinedTokenDispatcher(const std::string& layer, Communicator* comm, int num_experts,
                           int dim, int chunks);

  Tensor ForwardThroughExperts(const Tensor& x, const DispatchPlan& plan,
                               const ExpertsForwardFn& experts) override;
  Tensor BackwardThroughExperts(const Tensor& dy, const GateGradTarget& gate_grad,
                                const ExpertsBackwardFn& experts) override;

  // Chunks of the last Forward.
  int chunks_used() const { return static_cast<int>(chunks_.size()); }

 private:
  // One chunk (dispatch_chunks.h) and the experts' output back at the source, send layout.
  struct Chunk : DispatchChunk {
    Tensor returned;
  };
  using ChunkExpertsFn = std::function<Tensor(int chunk, const Tensor& expert_major)>;

  void SplitIntoChunks(const DispatchPlan& plan);
  // Every chunk's `outgoing` (send layout) to the experts, through `experts`, and back; returns
  // each chunk's answer in send layout. One exchange is in flight while experts run.
  std::vector<Tensor> Pipeline(const std::vector<Tensor>& outgoing, const ChunkExpertsFn& experts,
                               const char* to_phase, const char* back_phase);
  Tensor Pack(const Chunk& c, const Tensor& x) const;
  void CombineInto(const Chunk& c, Tensor* y) const;
  Tensor CombineBackwardOf(const Chunk& c, const Tensor& dy, float* d_gate) const;
  void DispatchBackwardInto(const Chunk& c, const Tensor& d_send, Tensor* dx) const;

  Communicator* comm_;
  int num_experts_, dim_, ep_size_, max_chunks_;
  int64_t rows_ = 0;
  std::vector<Chunk> chunks_;
};

}  // namespace moe
