// The per-image router's input on the device (MoeLayer with RoutingRule::kPerImage, CUDA path):
// the mean of each image's token rows and the backward of that mean. Both reproduce the host
// loops of models/moe (SetRouterInput, ApplyRouterGrad) operation for operation -- divide each
// element by T, then add in token order, in float without FMA -- so the router input, and with
// it the routing decision, is bit-identical to the CPU path's. (MeanPoolTokens*Cuda of
// dense_kernels.h sums in double and divides once: a different rounding.)
//
// x / dx are [images * T, D] (an image's T rows contiguous), mean / d_mean [images, D]. Launches
// are asynchronous on `stream` (nullptr = legacy default stream); one thread per output element,
// grid-stride.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moe {

// mean[b, j] = (...((0 + x[b*T, j] / T) + x[b*T + 1, j] / T) ...) + x[b*T + T-1, j] / T.
// Every element of mean is written.
void ImageMeanRowsCuda(const float* x, int64_t images, int64_t T, int64_t D, float* mean,
                       cudaStream_t stream = nullptr);

// dx[b*T + t, j] += d_mean[b, j] / T for every t < T (accumulates into dx).
void ImageMeanRowsBackwardCuda(const float* d_mean, int64_t images, int64_t T, int64_t D,
                               float* dx, cudaStream_t stream = nullptr);

}  // namespace moe
