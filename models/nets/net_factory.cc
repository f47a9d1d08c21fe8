#include "models/nets/net_factory.h"

#include <glog/logging.h>

#include "models/nets/families.h"

namespace moe {

namespace {
struct Family {
  std::string name;
  std::unique_ptr<Net> (*create)(const proto::TrainConfig&, Communicator*);
  void (*validate)(const proto::TrainConfig&, std::vector<std::string>*);
};

const std::vector<Family>& Families() {
  static const std::vector<Family> f = {
      {"vit", CreateVit, ValidateVitConfig},
      {"mixer", CreateMixer, ValidateMixerConfig},
      {"pmoe", CreatePatchCnn, ValidatePatchCnnConfig},
      {"mobile_vmoe", CreateMobileVmoe, ValidateMobileVmoeConfig},
      {"conditional", CreateConditionalVit, ValidateConditionalVitConfig},
  };
  return f;
}

const Family* Find(const std::string& name) {
  for (const Family& f : Families())
    if (f.name == name) return &f;
  return nullptr;
}
}  // namespace

const std::vector<std::string>& NetFamilies() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const Family& f : Families()) n.push_back(f.name);
    return n;
  }();
  return names;
}

void ValidateNetConfig(const proto::TrainConfig& config, std::vector<std::string>* errors) {
  const Family* f = Find(config.model().family());
  if (f == nullptr) {
    std::string names;
    for (const std::string& n : NetFamilies()) names += (names.empty() ? "\"" : ", \"") + n + "\"";
    errors->push_back(
        ConfigError("model.family", "\"" + config.model().family() + "\"", "supported: " + names));
    return;
  }
  f->validate(config, errors);
}

std::unique_ptr<Net> CreateNet(const proto::TrainConfig& config, Communicator* comm) {
  const Family* f = Find(config.model().family());
  CHECK(f != nullptr) << "model.family=\"" << config.model().family() << "\" (validate first)";
  return f->create(config, comm);
}

}  // namespace moe
