// MoE dispatch/combine kernels on device pointers: pack token rows into the send buffer, combine
// the returned expert rows, their backward passes, and the block permutation between the order
// the all-to-all delivers (src-major) and the order the experts want (expert-major). Each mirrors
// a loop of models/moe/moe_layer.cc and is checked against it by tests/gpu/moe_kernels_test.cc.
//
// Index conventions (as MoeLayer): choice c = t*k + r (token t, choice rank r); G = rows / n
// routing groups of n = group_tokens tokens; send block (e, g) -> index e*G + g, its first row
// block_offset[e*G + g]; a kept choice (slot >= 0) owns send row block_offset[e*G + g] + slot.
// Rows and choices are int32 on the device: rows*k < 2^31 and send_rows < 2^31 (host CHECK).
// Launches are asynchronous on `stream`; float4 accesses are used when D % 4 == 0 and every
// row pointer is 16-byte aligned, scalar ones otherwise.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moe {

// The two maps every other kernel here uses, from the router's expert/slot [rows*k] and the
// send layout block_offset [E*G]:
//   choice_row[c]   = send row of choice c, or -1 if dropped                    [rows*k]
//   row_choice[row] = the choice that fills send row `row`, or -1 (padding)     [send_rows]
// Traps on an expert id outside [0, E) or a row outside [0, send_rows) (inconsistent layout).
void BuildDispatchMapsCuda(const int* expert, const int* slot, const int64_t* block_offset,
                           int64_t rows, int k, int64_t group_tokens, int E, int64_t send_rows,
                           int* choice_row, int* row_choice, cudaStream_t stream = nullptr);

// send[row] = x[row_choice[row] / k], or zeros for padding rows (capacity mode). Every one of
// the send_rows rows is written.
void DispatchPackCuda(const float* x, const int* row_choice, int64_t send_rows, int k, int64_t D,
                      float* send, cudaStream_t stream = nullptr);

// y[t] = sum over kept choices r (in order r = 0..k-1) of gate[t*k + r] * returned[choice_row],
// in float without FMA (the CPU's rounding); zeros for a token with no kept choice. y is written.
void CombineCuda(const float* returned, const int* choice_row, const float* gate, int64_t rows,
                 int k, int64_t D, float* y, cudaStream_t stream = nullptr);

// Combine backward.
//   d_returned[row] = gate[c] * dy[c / k] for c = row_choice[row], zeros for padding rows
//                     (all send_rows rows written);
//   dgate[c]        = <dy[t], returned[choice_row[c]]> (double accumulation), 0 for a dropped
//                     choice; dgate may be nullptr;
//   d_probs[t*E + expert[c]] += dgate[c] for kept choices when d_probs is not nullptr (as
//                     MoeLayer::Backward; a token's experts are distinct, so no two choices
//                     touch the same element).
void CombineBackwardCuda(const float* dy, const float* returned, const float* gate,
                         const int* expert, const int* choice_row, const int* row_choice,
                         int64_t rows, int k, int E, int64_t send_rows, int64_t D,
                         float* d_returned, float* dgate, float* d_probs,
                         cudaStream_t stream = nullptr);

// Dispatch backward: dx[t] = (accumulate ? dx[t] : 0) + sum over kept choices r (in order) of
// d_send[choice_row[t*k + r]].
void DispatchBackwardCuda(const float* d_send, const int* choice_row, int64_t rows, int k,
                          int64_t D, float* dx, bool accumulate, cudaStream_t stream = nullptr);

// PermuteBlocks (moe_layer.cc): moves row blocks between src-major order, block
// b = (s*el + l)*G + g, and expert-major order, (l*ep + s)*G + g. block_rows [ep*el*G] (device,
// int64) is indexed src-major in both directions; total_rows = its sum (host-known: it sizes
// the grid; the kernel bounds itself by the sum it computes). in and out must not overlap.
// One kernel, not a cudaMemcpyAsync per block: the blocks are many (E*G) and small (C rows), and
// dropless sizes live on the device. ep*el*G <= 12288 (shared-memory offset tables).
void PermuteBlocksCuda(const float* in, float* out, int64_t D, const int64_t* block_rows, int ep,
                       int el, int64_t groups, int64_t total_rows, bool to_expert_major,
                       cudaStream_t stream = nullptr);

}  // namespace moe
