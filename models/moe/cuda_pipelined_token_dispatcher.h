// PIPELINED on the device: the routing plan cut into chunks of whole routing groups
// (dispatch_chunks.h), each moved as the FLAT device dispatcher moves a whole plan (the same
// kernels, cuda_token_dispatcher.h), with the exchanges on one stream and the experts on another
// so that they overlap (drives_experts(): MoeLayer calls ForwardThroughExperts and
// BackwardThroughExperts).
//
// Streams: the exchanges run on the layer's communicator stream (CudaMoeContext::stream, where
// NCCL works and the planner runs); pack, permutations, the experts (device_stream()) and the
// combine run on this dispatcher's own compute stream. Events order them, the host never waits:
//   comm:     to[0] | to[1]           from[0] | to[2] ...   (from[c] waits for experts c)
//   compute:  pack  |  wait to[0], experts 0  | wait to[1], experts 1 ...
// so chunk c's experts overlap chunk c+1's dispatch and chunk c-1's return; the combine waits
// for every return. Forward and backward fork compute from the communicator stream on entry
// and join it back on exit, so the planner and the legacy-stream ordering of the FLAT device
// dispatcher (cuda_moe_context.h) apply unchanged.
//
// Memory: every buffer of a step is allocated and freed on the compute stream; the
// communicator stream touches one only between an event wait on the compute stream (after the
// allocation) and the compute stream's wait for the last return (before the free). Tensors the
// compute stream uses are kept until EndStep has ordered the legacy stream after it.
//
// Against FLAT: each row meets the same kernels, so the routing, the combine order and the
// gate gradients are the same; the experts' GEMMs see fewer rows per call (cuBLAS may pick
// another kernel: outputs within float rounding of FLAT's, not bit-equal) and an expert's weight
// gradients are summed chunk by chunk (tests/gpu/moe_dispatcher_gpu_test.cc states the bounds).
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <string>
#include <vector>

#include "models/moe/cuda_moe_context.h"
#include "models/moe/dispatch_chunks.h"
#include "models/moe/token_dispatcher.h"

namespace moe {

class CudaPipelinedTokenDispatcher : public ExpertDrivingDispatcher {
 public:
  CudaPipelinedTokenDispatcher(const std::string& layer, std::shared_ptr<CudaMoeContext> cuda,
                               int num_experts, int ep_size, int dim, int chunks);
  ~CudaPipelinedTokenDispatcher() override;
  CudaPipelinedTokenDispatcher(const CudaPipelinedTokenDispatcher&) = delete;
  CudaPipelinedTokenDispatcher& operator=(const CudaPipelinedTokenDispatcher&) = delete;

  void BeginStep(Profiler* profiler) override;
  void EndStep() override;
  void* device_stream() const override { return compute_; }
  void SyncIfProfiling() override;

  Tensor ForwardThroughExperts(const Tensor& x, const DispatchPlan& plan,
                               const ExpertsForwardFn& experts) override;
  Tensor BackwardThroughExperts(const Tensor& dy, const GateGradTarget& gate_grad,
                                const ExpertsBackwardFn& experts) override;

 private:
  // A chunk with its device block tables, dispatch maps and returned expert rows.
  struct Chunk : DispatchChunk {
    moe_cuda::DeviceArray<int64_t> block_offset, recv_rows;  // layout.block_offset, recv sizes
    moe_cuda::DeviceArray<int> choice_row, row_choice;
    moe_cuda::DeviceArray<float> returned;  // the experts' output back at the source
  };
  using Buffers = std::vector<moe_cuda::DeviceArray<float>>;
  using ChunkExpertsFn = std::function<Tensor(int chunk, const Tensor& expert_major)>;

  void Prepare(const DispatchPlan& plan);
  void UploadTables();
  Buffers PackChunks(const Tensor& x);
  // Every chunk's `outgoing` rows (send layout) to the experts, through `experts`, and back.
  Buffers Pipeline(const Buffers& outgoing, const ChunkExpertsFn& experts, const char* to_phase,
                   const char* back_phase);
  Tensor RunExperts(int c, const moe_cuda::DeviceArray<float>& received,
                    const ChunkExpertsFn& experts, float* src_major);
  void Fork();  // the compute stream after the communicator stream
  void Join();  // the communicator stream after the compute stream
  cudaEvent_t ChunkEvent(int c);

  std::shared_ptr<CudaMoeContext> cuda_;
  int num_experts_, ep_size_, dim_, max_chunks_;
  int64_t rows_ = 0;
  cudaStream_t compute_ = nullptr;
  std::vector<Chunk> chunks_;
  std::vector<cudaEvent_t> exchanged_;  // per chunk: its exchange to the experts is done
  std::vector<Tensor> step_tensors_;    // used on the compute stream; released after EndStep
};

}  // namespace moe
