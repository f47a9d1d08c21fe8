// One constructor and one validator per model family; net_factory.cc picks by model.family.
// Each pair lives in its family's own file (vision_transformer.cc, mlp_mixer.cc, patch_cnn.cc,
// mobile_vmoe.cc, conditional_vit.cc). Validators append "config error: field=value: why".
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "models/nets/net.h"
#include "proto/moe_ep.pb.h"

namespace moe {

std::unique_ptr<Net> CreateVit(const proto::TrainConfig& c, Communicator* comm);
void ValidateVitConfig(const proto::TrainConfig& c, std::vector<std::string>* errors);

std::unique_ptr<Net> CreateMixer(const proto::TrainConfig& c, Communicator* comm);
void ValidateMixerConfig(const proto::TrainConfig& c, std::vector<std::string>* errors);

std::unique_ptr<Net> CreatePatchCnn(const proto::TrainConfig& c, Communicator* comm);
void ValidatePatchCnnConfig(const proto::TrainConfig& c, std::vector<std::string>* errors);

std::unique_ptr<Net> CreateMobileVmoe(const proto::TrainConfig& c, Communicator* comm);
void ValidateMobileVmoeConfig(const proto::TrainConfig& c, std::vector<std::string>* errors);

std::unique_ptr<Net> CreateConditionalVit(const proto::TrainConfig& c, Communicator* comm);
void ValidateConditionalVitConfig(const proto::TrainConfig& c, std::vector<std::string>* errors);

// "config error: field=value: why" (the form every validator uses).
inline std::string ConfigError(const std::string& field, const std::string& value,
                               const std::string& why) {
  return "config error: " + field + "=" + value + ": " + why;
}

}  // namespace moe
