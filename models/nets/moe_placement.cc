#include "models/nets/moe_placement.h"

#include <algorithm>
#include <vector>

namespace moe {

std::set<int> MoeBlockIndices(const proto::ModelConfig& model) {
  std::set<int> out;
  if (!model.use_moe()) return out;
  if (model.moe().placement() == proto::MoeConfig::LAST_BLOCKS) {
    // Mobile V-MoE keeps the early blocks dense and makes the last L blocks MoE, consecutive.
    const int n = std::min(std::max(0, model.moe().last_n()), model.num_layers());
    for (int i = model.num_layers() - n; i < model.num_layers(); ++i) out.insert(i);
    return out;
  }
  std::vector<int> odd;
  for (int i = 1; i < model.num_layers(); i += 2) odd.push_back(i);
  if (model.moe().placement() == proto::MoeConfig::EVERY_2) {
    out.insert(odd.begin(), odd.end());
  } else {
    const int n = std::min<int>(std::max(0, model.moe().last_n()), static_cast<int>(odd.size()));
    out.insert(odd.end() - n, odd.end());
  }
  return out;
}

std::set<int> EvenBlockIndices(int num_layers) {
  std::set<int> out;
  for (int i = 0; i < num_layers; i += 2) out.insert(i);
  return out;
}

}  // namespace moe
