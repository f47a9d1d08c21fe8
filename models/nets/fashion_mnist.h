// The data set every family trains on: Fashion-MNIST's class count and the pixel normalisation
// its reader applies (launcher/idx_dataset.h). The multi-task batches (multitask.h) need both:
// the fine task's logit columns, and the normalised form of an inverted pixel.
#pragma once

namespace moe {

// Pixels are scaled to [0, 1] and then normalised with the Fashion-MNIST TRAINING-set statistics
// (mean 0.2860, std 0.3530 of the [0, 1] pixels), the same constants for train and test.
constexpr float kFashionMnistMean = 0.2860f;
constexpr float kFashionMnistStd = 0.3530f;
constexpr int kFashionMnistClasses = 10;

}  // namespace moe
