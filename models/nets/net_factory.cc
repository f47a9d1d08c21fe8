#include "models/nets/net_factory.h"

#include <glog/logging.h>

#include "models/nets/families.h"
#include "models/nets/multitask_head.h"

namespace moe {

namespace {
struct Family {
  std::string name;
  std::unique_ptr<Net> (*create)(const proto::TrainConfig&, Communicator*);
  void (*validate)(const proto::TrainConfig&, std::vector<std::string>*);
  // The family's own task head (false with a one-line error); null: a SingleTaskHead.
  bool (*create_head)(const proto::TrainConfig&, std::unique_ptr<TaskHead>*, std::string*);
};

const std::vector<Family>& Families() {
  static const std::vector<Family> f = {
      {"vit", CreateVit, ValidateVitConfig, nullptr},
      {"mixer", CreateMixer, ValidateMixerConfig, nullptr},
      {"pmoe", CreatePatchCnn, ValidatePatchCnnConfig, nullptr},
      {"mobile_vmoe", CreateMobileVmoe, ValidateMobileVmoeConfig, nullptr},
      {"conditional", CreateConditionalVit, ValidateConditionalVitConfig, CreateMultiTaskHead},
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
  const size_t before = errors->size();
  f->validate(config, errors);
  // The head reads files the fields name (super-class maps): only worth it on valid fields.
  std::unique_ptr<TaskHead> head;
  std::string error;
  if (errors->size() == before && f->create_head != nullptr &&
      !f->create_head(config, &head, &error))
    errors->push_back("config error: " + error);
}

DispatcherOptions DispatcherOptionsFromConfig(const proto::ParallelConfig& p) {
  DispatcherOptions o;
  switch (p.dispatcher()) {
    case proto::ParallelConfig::FLAT: o.kind = DispatcherKind::kFlat; break;
    case proto::ParallelConfig::HIERARCHICAL: o.kind = DispatcherKind::kHierarchical; break;
    case proto::ParallelConfig::PIPELINED: o.kind = DispatcherKind::kPipelined; break;
  }
  o.ranks_per_node = p.ranks_per_node();
  o.pipeline_chunks = p.pipeline_chunks();
  return o;
}

std::unique_ptr<Net> CreateNet(const proto::TrainConfig& config, Communicator* comm) {
  const Family* f = Find(config.model().family());
  CHECK(f != nullptr) << "model.family=\"" << config.model().family() << "\" (validate first)";
  std::unique_ptr<Net> net = f->create(config, comm);
  // How tokens travel is the job's layout, not the family's: every MoE layer gets it here.
  const DispatcherOptions dispatch = DispatcherOptionsFromConfig(config.parallel());
  for (MoeLayer* m : net->moe_layers()) m->SetDispatcherOptions(dispatch);
  return net;
}

std::unique_ptr<TaskHead> CreateTaskHead(const proto::TrainConfig& config) {
  const Family* f = Find(config.model().family());
  CHECK(f != nullptr) << "model.family=\"" << config.model().family() << "\" (validate first)";
  if (f->create_head == nullptr) return std::make_unique<SingleTaskHead>();
  std::unique_ptr<TaskHead> head;
  std::string error;
  CHECK(f->create_head(config, &head, &error)) << error << " (validate the config first)";
  return head;
}

}  // namespace moe
