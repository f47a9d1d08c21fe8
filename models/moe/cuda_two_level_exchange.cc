#include "models/moe/cuda_two_level_exchange.h"

#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include "core/kernels/cuda/cuda_check.h"
#include "models/moe/cuda_moe_context.h"

namespace moe {

namespace {

using moe_cuda::DeviceArray;

// [a][b] table (sizes[a * B + b]) -> its transpose [b][a].
std::vector<int64_t> Transposed(const std::vector<int64_t>& sizes, int A, int B) {
  std::vector<int64_t> t(sizes.size());
  for (int a = 0; a < A; ++a)
    for (int b = 0; b < B; ++b) t[int64_t{b} * A + a] = sizes[int64_t{a} * B + b];
  return t;
}

// Row sums of an [A][B] table.
std::vector<int64_t> RowSums(const std::vector<int64_t>& sizes, int A, int B) {
  std::vector<int64_t> sums(A, 0);
  for (int a = 0; a < A; ++a)
    for (int b = 0; b < B; ++b) sums[a] += sizes[int64_t{a} * B + b];
  return sums;
}

int64_t Total(const std::vector<int64_t>& sizes) {
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  return total;
}

// Device blocks laid out [a][b] (sizes[a * B + b] floats each) rewritten as [b][a] on `s`.
void TransposeDeviceBlocks(const float* in, float* out, const std::vector<int64_t>& sizes, int A,
                           int B, cudaStream_t s) {
  std::vector<int64_t> in_offset(sizes.size());
  int64_t offset = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    in_offset[k] = offset;
    offset += sizes[k];
  }
  for (int b = 0; b < B; ++b)
    for (int a = 0; a < A; ++a) {
      const int64_t k = int64_t{a} * B + b;
      if (sizes[k] > 0)
        CUDA_CHECK(cudaMemcpyAsync(out, in + in_offset[k], sizes[k] * sizeof(float),
                                   cudaMemcpyDeviceToDevice, s));
      out += sizes[k];
    }
}

}  // namespace

CudaTwoLevelExpertCommunicator::CudaTwoLevelExpertCommunicator(const std::string& layer,
                                                               Communicator* base,
                                                               int ranks_per_node)
    : ForwardingCommunicator(base), L_(ranks_per_node) {
  CHECK(base_ != nullptr && base_->works_on_device())
      << layer << ": the device two-level exchange needs a device-memory communicator (NCCL)";
  const int ep = base_->Size(GroupKind::kExpert);
  CHECK(L_ > 0 && ep % L_ == 0)
      << layer << ": parallel.ranks_per_node=" << ranks_per_node << " must be > 0 on the CUDA "
      << "path and divide the expert group's " << ep << " ranks";
  N_ = ep / L_;
  const int r = base_->Rank(GroupKind::kExpert);
  node_ = r / L_;
  position_ = r % L_;
}

std::vector<int64_t> CudaTwoLevelExpertCommunicator::ExchangeLaneSizes(
    const std::vector<int64_t>& lane_sizes) {
  const int ep = L_ * N_;
  const cudaStream_t s = static_cast<cudaStream_t>(base_->device_stream());
  // Row p of the table goes to EP rank p: this node's peers get their lane, others zeros.
  std::vector<int64_t> table(static_cast<size_t>(ep) * N_, 0), got(table.size());
  for (int j = 0; j < L_; ++j)
    for (int m = 0; m < N_; ++m)
      table[(int64_t{node_} * L_ + j) * N_ + m] = lane_sizes[int64_t{j} * N_ + m];
  DeviceArray<int64_t> send(ep * N_, s, /*poison=*/false), recv(ep * N_, s, /*poison=*/false);
  const size_t bytes = table.size() * sizeof(int64_t);
  CUDA_CHECK(cudaMemcpyAsync(send.get(), table.data(), bytes, cudaMemcpyHostToDevice, s));
  base_->AllToAllInt64(send.get(), recv.get(), N_, GroupKind::kExpert);
  CUDA_CHECK(cudaMemcpyAsync(got.data(), recv.get(), bytes, cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));  // the sizes post level 2's NCCL calls
  std::vector<int64_t> staged(static_cast<size_t>(L_) * N_);
  for (int j = 0; j < L_; ++j)
    for (int m = 0; m < N_; ++m)
      staged[int64_t{j} * N_ + m] = got[(int64_t{node_} * L_ + j) * N_ + m];
  return staged;
}

void CudaTwoLevelExpertCommunicator::AllToAllV(const float* send,
                                               const std::vector<int64_t>& send_counts,
                                               float* recv,
                                               const std::vector<int64_t>& recv_counts,
                                               GroupKind g) {
  if (g != GroupKind::kExpert) {
    base_->AllToAllV(send, send_counts, recv, recv_counts, g);
    return;
  }
  const int ep = L_ * N_;
  CHECK_EQ(static_cast<int64_t>(send_counts.size()), ep) << "two-level: one send count per rank";
  CHECK_EQ(static_cast<int64_t>(recv_counts.size()), ep) << "two-level: one recv count per rank";
  const cudaStream_t s = static_cast<cudaStream_t>(base_->device_stream());
  // Level 1: send_counts is [node m][position i]; position j of this node gets column j.
  const std::vector<int64_t> lane_sizes = Transposed(send_counts, N_, L_);  // [j][m]
  const std::vector<int64_t> staged_sizes = ExchangeLaneSizes(lane_sizes);  // [j][m]
  const std::vector<int64_t> lane_rows = RowSums(lane_sizes, L_, N_);
  const std::vector<int64_t> staged_rows = RowSums(staged_sizes, L_, N_);
  std::vector<int64_t> c1_send(ep, 0), c1_recv(ep, 0);
  for (int j = 0; j < L_; ++j) {
    c1_send[node_ * L_ + j] = lane_rows[j];
    c1_recv[node_ * L_ + j] = staged_rows[j];
  }
  DeviceArray<float> lanes(Total(send_counts), s), staged(Total(staged_sizes), s);
  TransposeDeviceBlocks(send, lanes.get(), send_counts, N_, L_, s);
  base_->AllToAllV(lanes.get(), c1_send, staged.get(), c1_recv, GroupKind::kExpert);
  // Level 2: [j][m] -> [m][j], then one message per node at this position; it arrives
  // [node][j], which is EP rank order.
  DeviceArray<float> by_node(staged.size(), s);
  TransposeDeviceBlocks(staged.get(), by_node.get(), staged_sizes, L_, N_, s);
  const std::vector<int64_t> to_node = RowSums(Transposed(staged_sizes, L_, N_), N_, L_);
  const std::vector<int64_t> from_node = RowSums(recv_counts, N_, L_);
  std::vector<int64_t> c2_send(ep, 0), c2_recv(ep, 0);
  for (int m = 0; m < N_; ++m) {
    c2_send[m * L_ + position_] = to_node[m];
    c2_recv[m * L_ + position_] = from_node[m];
  }
  base_->AllToAllV(by_node.get(), c2_send, recv, c2_recv, GroupKind::kExpert);
}

}  // namespace moe
