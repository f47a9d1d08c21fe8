#include "launcher/test_set_eval.h"

#include <algorithm>

namespace moe {

void GatherBatch(const ImageDataset& d, const std::vector<int64_t>& idx, Tensor* images,
                 std::vector<int>* labels) {
  const int64_t px = static_cast<int64_t>(d.rows) * d.cols;
  *images = Tensor({static_cast<int64_t>(idx.size()), px});
  labels->resize(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) {
    std::copy(d.pixels.begin() + idx[i] * px, d.pixels.begin() + (idx[i] + 1) * px,
              images->data() + i * px);
    (*labels)[i] = d.labels[idx[i]];
  }
}

double EvaluateTestSet(TrainingSession* session, const ImageDataset& test, int64_t eval_images,
                       int64_t batch, Communicator* comm, RoutingAnalytics* analytics) {
  const int world = comm->Size(GroupKind::kWorld), rank = comm->Rank(GroupKind::kWorld);
  const int64_t n = eval_images > 0 ? std::min<int64_t>(eval_images, test.count) : test.count;
  const int64_t per_round = batch * world;
  const int64_t rounds = (n + per_round - 1) / per_round;
  int64_t correct = 0;
  double loss = 0;
  std::vector<int64_t> idx(batch);
  Tensor images;
  std::vector<int> labels;
  for (int64_t r = 0; r < rounds; ++r) {
    const int64_t first = r * per_round + rank * batch;
    const int64_t valid = std::max<int64_t>(0, std::min<int64_t>(batch, n - first));
    for (int64_t i = 0; i < batch; ++i) idx[i] = i < valid ? first + i : 0;  // pad with image 0
    GatherBatch(test, idx, &images, &labels);
    int64_t c = 0;
    double l = 0;
    session->Evaluate(images, labels, valid, &c, &l);
    if (analytics != nullptr) analytics->ObserveNet(session->net().moe_layers(), labels, valid);
    correct += c;
    loss += l;
  }
  double sums[2] = {static_cast<double>(correct), loss};
  comm->AllReduceSum(sums, 2, GroupKind::kWorld);
  return sums[0] / n;
}

}  // namespace moe
