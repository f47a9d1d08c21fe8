// Dense-layer kernels on device pointers (the CUDA backend's dense ops), each mirroring a host
// kernel or the CPU backend's loop and checked against it by tests/gpu/dense_kernels_test.cc
// (fp32, relative error < 1e-5):
//   LayerNorm{Forward,Backward}Cuda     core/kernels/cpu/layer_norm.h
//   Softmax{Forward,Backward}RowsCuda   core/kernels/cpu/softmax.h (attention probabilities)
//   BiasAddRowsCuda, ColumnSumAccumulateCuda   Backend::AddRowVector / AccumulateColumnSums
//                                        (Linear's bias and its gradient, pos_embed and its)
//   AddInPlaceCuda                       residual adds
//   SoftmaxCrossEntropyForwardCuda       Backend::SoftmaxCrossEntropy (core/cpu_backend_layers.cc)
//   MeanPoolTokens{Forward,Backward}Cuda Backend::MeanPoolTokens{Forward,Backward}
//   PatchifyCuda / UnpatchifyCuda        Backend::Patchify / Unpatchify
//
// Conventions: row-major float arrays; every launch is asynchronous on `stream` (nullptr = the
// legacy default stream); launch errors are fatal (CUDA_CHECK_LAUNCH), bad sizes are glog CHECKs.
// Statistics and sums are accumulated in double like the CPU code, so results agree with it to a
// few float ulps. Every reduction here has a fixed order (no float atomics): results are
// bit-reproducible run to run. Kernels use 16-byte (float4) accesses when every pointer involved
// is 16-byte aligned and the row length is a multiple of 4, scalar ones otherwise.
// Launch configurations and limits are stated next to each kernel in dense_kernels.cu; sizes are
// int64 throughout except where noted.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moe {

// ---- LayerNorm (one warp per row, any dim) ----

// x, y: [rows, dim]; gamma, beta: [dim]. Writes y and the per-row mean and rstd ([rows]),
// statistics in double (two-pass variance, biased), y = float((x - mean) * rstd) * gamma + beta.
// y may alias x.
void LayerNormForwardCuda(const float* x, const float* gamma, const float* beta, int64_t rows,
                          int64_t dim, float eps, float* y, float* mean, float* rstd,
                          cudaStream_t stream = nullptr);

// WRITES dx and ACCUMULATES dgamma, dbeta ([dim]) from Forward's x, mean, rstd and dy. The
// parameter gradients use a deterministic two-stage column reduction (per-chunk partials in
// double, then a fixed-order sum) with stream-ordered scratch (cudaMallocAsync). dx may alias dy
// (not x).
void LayerNormBackwardCuda(const float* x, const float* dy, const float* gamma, const float* mean,
                           const float* rstd, int64_t rows, int64_t dim, float* dx, float* dgamma,
                           float* dbeta, cudaStream_t stream = nullptr);

// ---- row softmax (one warp per row) ----

// y[r, :] = softmax(x[r, :]): float max, exp and the sum in double. cols <= 1024 keeps the row in
// registers; longer rows take a three-pass path (correct, slower). y may alias x.
void SoftmaxForwardRowsCuda(const float* x, int64_t rows, int64_t cols, float* y,
                            cudaStream_t stream = nullptr);
// dx = y * (dy - sum_j y_j dy_j) per row (dot in double). WRITES dx; dx may alias dy. Any cols.
void SoftmaxBackwardRowsCuda(const float* y, const float* dy, int64_t rows, int64_t cols,
                             float* dx, cudaStream_t stream = nullptr);

// ---- bias, residual, column sums ----

// y[r, j] += b[j] for [rows, cols] (also pos_embed: rows = B, cols = T*D).
void BiasAddRowsCuda(float* y, const float* b, int64_t rows, int64_t cols,
                     cudaStream_t stream = nullptr);
// db[j] += sum_r dy[r, j] (summed in double, fixed order; two-stage like LayerNormBackward).
void ColumnSumAccumulateCuda(const float* dy, int64_t rows, int64_t cols, float* db,
                             cudaStream_t stream = nullptr);
// y[i] += x[i] for i < n. x may equal y (doubles it).
void AddInPlaceCuda(float* y, const float* x, int64_t n, cudaStream_t stream = nullptr);

// ---- classification loss (one warp per row, any C) ----

// For logits [B, C] and labels [B] (device ints in [0, C)), label smoothing eps in [0, 1):
// row_loss[r] = (1 - eps)(lse_r - logits[r, label]) + eps (lse_r - mean_j logits[r, j]) (eps = 0:
// lse_r - logits[r, label]; computed in double, stored as float), pred[r] = argmax (lowest index
// on ties; a row with NaN gets an unspecified index), dlogits[r, j] = loss_scale * p_rj - off,
// minus on at the label, off = loss_scale * (eps / C), on = loss_scale * (1 - eps),
// p = float(exp(logit - lse)), exactly the float operations of the host backend.
// row_loss and pred may be nullptr. A label outside [0, C) traps the kernel (the CPU CHECK-fails).
// dlogits may alias logits.
void SoftmaxCrossEntropyForwardCuda(const float* logits, const int* labels, int64_t B, int64_t C,
                                    float loss_scale, float label_smoothing, float* row_loss,
                                    int* pred, float* dlogits, cudaStream_t stream = nullptr);

// ---- mean over each image's tokens ----

// y[b, j] = float(sum_t x[b*T + t, j] (double) / T); x [B*T, D], y [B, D].
void MeanPoolTokensForwardCuda(const float* x, int64_t batch, int64_t tokens, int64_t dim,
                               float* y, cudaStream_t stream = nullptr);
// dx[b*T + t, j] = dy[b, j] * (1.f / T) (written).
void MeanPoolTokensBackwardCuda(const float* dy, int64_t batch, int64_t tokens, int64_t dim,
                                float* dx, cudaStream_t stream = nullptr);

// ---- patches ----

// images [B, C*S*S] (CHW, S = image_size) <-> patches [B*T, C*p*p], T = (S/p)^2, in PatchEmbed's
// order: token t = py*(S/p) + px, patch element (c, i, j) -> c*p*p + i*p + j. S % p == 0.
// Both are permutations: every output element is written exactly once. No aliasing.
void PatchifyCuda(const float* images, int64_t batch, int64_t channels, int64_t image_size,
                  int64_t patch, float* patches, cudaStream_t stream = nullptr);
void UnpatchifyCuda(const float* patches, int64_t batch, int64_t channels, int64_t image_size,
                    int64_t patch, float* images, cudaStream_t stream = nullptr);

}  // namespace moe
