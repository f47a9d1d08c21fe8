// PLACEHOLDER until the Mobile V-MoE family is built: the factory links, and choosing the family
// fails validation with a clear message. Replaced by the family's implementation.
#include "models/nets/families.h"

#include <glog/logging.h>

namespace moe {

std::unique_ptr<Net> CreateMobileVmoe(const proto::TrainConfig& c, Communicator* comm) {
  (void)comm;
  LOG(FATAL) << "model.family=\"" << c.model().family() << "\" is not built yet";
  return nullptr;
}

void ValidateMobileVmoeConfig(const proto::TrainConfig& c, std::vector<std::string>* errors) {
  errors->push_back(ConfigError("model.family", "\"" + c.model().family() + "\"",
                                "the Mobile V-MoE family is not built yet"));
}

}  // namespace moe
