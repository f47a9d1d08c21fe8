// Batches from the data set, and the test-set evaluation split across the world.
#pragma once

#include <cstdint>
#include <string>
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

// Test accuracy per evaluation pass of the net's task head (one for a single-task net; one per
// (task, modality) pair for the conditional family) and their mean, the run's test accuracy.
struct TestSetAccuracy {
  std::vector<double> per_pass;
  double mean = 0;
};

// Test accuracy on the first eval_images (0: all) images, split across the world; every rank runs
// the same number of batches (padded with valid=0 rows) so the MoE all-to-alls stay matched.
// Each pass runs the whole share, its batches made by TaskHead::MakeEvalBatch. With `analytics`,
// every batch's kept routing assignments are counted per expert and data-set class (this rank's
// share; over every pass). Collective.
TestSetAccuracy EvaluateTestSet(TrainingSession* session, const ImageDataset& test,
                                int64_t eval_images, int64_t batch, Communicator* comm,
                                RoutingAnalytics* analytics = nullptr);

// "fine/image 0.8123  fine/view2 0.7990  ..." (the head's pass names, 4 decimals).
std::string FormatPassAccuracies(const TaskHead& head, const TestSetAccuracy& accuracy);

}  // namespace moe
