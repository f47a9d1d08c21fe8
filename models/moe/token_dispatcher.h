// TokenDispatcher: moves the tokens of one MoE layer between the ranks that hold them and the
// ranks that hold their experts, following a routing plan, and back. It owns the send/receive
// layout, the pack into capacity buffers, the two all-to-alls, the rearrangement to expert-major
// rows, the gate-weighted combine, and the backward of each. One interface, one implementation
// per backend (cpu_token_dispatcher.h on host memory with MPI, cuda_token_dispatcher.h on device
// memory with NCCL); other exchange strategies (hierarchical, pipelined) are further
// implementations of the same interface.
//
// Layouts (every implementation):
//   send buffer     [E experts][G groups][block rows]: expert-major, so the rows bound for EP
//                   peer p are contiguous (experts p*El .. p*El+El-1); block (e, g) holds the
//                   plan's capacity C rows (padding rows zero) or, dropless, exactly its rows
//   received        [EP sources][El local experts][G groups][block rows], as the all-to-all
//                   delivers them
//   expert-major    [El][EP][G][rows]: each local expert's rows contiguous, for one GEMM each
// Call order per step: BeginStep, Dispatch, (experts), Combine, EndStep; backward: BeginStep,
// CombineBackward, (experts), DispatchBackward, EndStep. The plan must outlive the backward.
// A dispatcher that drives the experts itself (drives_experts(): the pipelined one) is called
// instead as BeginStep, ForwardThroughExperts, EndStep and BeginStep, BackwardThroughExperts,
// EndStep, and calls the experts once per chunk of its own.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/profiler.h"
#include "core/tensor.h"

namespace moe {

// Which TokenDispatcher a layer uses (config: parallel.dispatcher, ranks_per_node,
// pipeline_chunks); moe_backend.cc makes it.
enum class DispatcherKind { kFlat, kHierarchical, kPipelined };
const char* DispatcherKindName(DispatcherKind kind);
struct DispatcherOptions {
  DispatcherKind kind = DispatcherKind::kFlat;
  int ranks_per_node = 0;   // kHierarchical: 0 = the machine's nodes; > 0 simulated nodes
  int pipeline_chunks = 2;  // kPipelined
};

// One Forward's routing plan as the dispatcher reads it.
struct DispatchPlan {
  int64_t rows = 0, groups = 0, group_tokens = 0;
  int kc = 0;              // choices per row
  int64_t capacity = 0;    // rows per block; -1: dropless, blocks sized by block_rows
  // Per choice [rows * kc], in the dispatcher's memory: expert, slot in its (expert, group)
  // block (-1: dropped or not taken), gate.
  const int* expert = nullptr;
  const int* slot = nullptr;
  const float* gate = nullptr;
  // Host: rows per send block [E * G] (e * G + g).
  std::vector<int64_t> block_rows;
  // Host: rows per received block [EP * El * G] ((src * El + l) * G + g). Empty: the dispatcher
  // derives them (all C, or exchanged with the peers when dropless).
  std::vector<int64_t> recv_block_rows;
  // Device copies, for a device dispatcher: first row of each send block, received block sizes.
  const int64_t* block_offset_device = nullptr;
  const int64_t* recv_block_rows_device = nullptr;
};

// Where the combine backward writes d(objective)/d(gate).
struct GateGradTarget {
  float* d_gate = nullptr;   // [rows * kc], per choice (kept choices written, others untouched)
  float* d_probs = nullptr;  // or [rows, E]: added at each kept choice's expert (kc = top_k)
  // Called once the gradient is written (a device dispatcher: enqueued), before the exchange, so
  // a device planner can start copying it to the host while the all-to-all runs.
  std::function<void()> on_written;
};

class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  // Brackets each Forward and each Backward (a device dispatcher orders its stream there).
  virtual void BeginStep(Profiler* profiler) { profiler_ = profiler; }
  virtual void EndStep() {}
  // The stream the experts must run on (a cudaStream_t), nullptr on the host.
  virtual void* device_stream() const { return nullptr; }
  // With a profiler attached, a device dispatcher waits for its stream here, so that a phase's
  // time is device time (profiling serialises host and device).
  virtual void SyncIfProfiling() {}

  // x [rows, D] -> the local experts' input, expert-major [sum expert_rows(), D].
  virtual Tensor Dispatch(const Tensor& x, const DispatchPlan& plan) = 0;
  // Rows per local expert of the last Dispatch.
  virtual const std::vector<int64_t>& expert_rows() const = 0;
  // The experts' output (Dispatch's layout) -> y [rows, D] = sum over kept choices of gate * out.
  virtual Tensor Combine(const Tensor& expert_out) = 0;
  // dy [rows, D] -> d(expert output) in Dispatch's layout; d(gate) into `gate_grad`.
  virtual Tensor CombineBackward(const Tensor& dy, const GateGradTarget& gate_grad) = 0;
  // d(expert input) -> dx [rows, D] (the tokens' share; the router adds its own).
  virtual Tensor DispatchBackward(const Tensor& d_expert_in) = 0;

  // Optional seam for a dispatcher that overlaps its exchanges with the experts: it runs them
  // itself, chunk by chunk (chunks numbered 0.. in order, each a set of whole routing groups, in
  // Dispatch's expert-major layout restricted to the chunk's rows).
  virtual bool drives_experts() const { return false; }
  // experts(chunk, input, rows per local expert) -> the experts' output for that chunk.
  using ExpertsForwardFn =
      std::function<Tensor(int chunk, const Tensor& input, const std::vector<int64_t>& rows)>;
  // experts(chunk, d(output)) -> d(input) for the chunk (the bank accumulates its grads).
  using ExpertsBackwardFn = std::function<Tensor(int chunk, const Tensor& d_output)>;
  // Dispatch, the experts and Combine in one: x -> y. Default: not supported (CHECK-fails).
  virtual Tensor ForwardThroughExperts(const Tensor& x, const DispatchPlan& plan,
                                       const ExpertsForwardFn& experts);
  // CombineBackward, the experts' backward and DispatchBackward in one: dy -> dx.
  virtual Tensor BackwardThroughExperts(const Tensor& dy, const GateGradTarget& gate_grad,
                                        const ExpertsBackwardFn& experts);

 protected:
  Profiler* profiler_ = nullptr;
};

// Base of the dispatchers that drive the experts themselves (drives_experts(): the PIPELINED
// ones, host and device): the separate Dispatch / Combine calls make no sense for them and
// CHECK-fail, naming the layer.
class ExpertDrivingDispatcher : public TokenDispatcher {
 public:
  explicit ExpertDrivingDispatcher(std::string layer) : layer_(std::move(layer)) {}
  bool drives_experts() const final { return true; }
  Tensor Dispatch(const Tensor& x, const DispatchPlan& plan) final;
  const std::vector<int64_t>& expert_rows() const final;
  Tensor Combine(const Tensor& expert_out) final;
  Tensor CombineBackward(const Tensor& dy, const GateGradTarget& gate_grad) final;
  Tensor DispatchBackward(const Tensor& d_expert_in) final;

 protected:
  std::string layer_;
};

// The host bookkeeping every dispatcher needs from the block sizes.
struct DispatchLayout {
  std::vector<int64_t> block_offset;  // [E * G] first send row of each block
  int64_t send_rows = 0, recv_rows = 0;
  std::vector<int64_t> send_rows_per_peer, recv_rows_per_peer;  // [EP]
  std::vector<int64_t> expert_rows;                              // [El]
};
DispatchLayout ComputeDispatchLayout(const std::vector<int64_t>& block_rows,
                                     const std::vector<int64_t>& recv_block_rows, int E, int EP,
                                     int64_t G);

}  // namespace moe
