// Batches from the data set, and the test-set evaluation split across the world.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"
#include "launcher/idx_dataset.h"
#include "launcher/routing_analytics.h"
#include "launcher/training_session.h"

namespace moe {

// Copies the rows `idx` of the data set into a [n, pixels] batch and a label vector.
void GatherBatch(const ImageDataset& d, const std::vector<int64_t>& idx, Tensor* images,
                 std::vector<int>* labels);

// Test accuracy on the first eval_images (0: all) images, split across the world; every rank runs
// the same number of batches (padded with valid=0 rows) so the MoE all-to-alls stay matched.
// With `analytics`, every batch's kept routing assignments are counted per expert and class
// (this rank's share). Collective.
double EvaluateTestSet(TrainingSession* session, const ImageDataset& test, int64_t eval_images,
                       int64_t batch, Communicator* comm, RoutingAnalytics* analytics = nullptr);

}  // namespace moe
