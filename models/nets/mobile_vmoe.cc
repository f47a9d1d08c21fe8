#include "models/nets/mobile_vmoe.h"

#include <glog/logging.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "models/nets/families.h"

namespace moe {

namespace {

// A whole token as a base-10 int (strtol alone accepts "3x" and "3.5" as 3).
bool ParseInt(const std::string& token, int* out) {
  if (token.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(token.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || v < INT_MIN || v > INT_MAX) return false;
  *out = static_cast<int>(v);
  return true;
}

}  // namespace

bool ParseSuperclassMap(std::istream& in, const std::string& source, int num_classes,
                        int num_superclasses, std::vector<int>* class_to_superclass,
                        std::string* error) {
  std::vector<int> map(num_classes, -1), line_of(num_classes, 0);
  std::string line;
  int line_no = 0;
  auto fail = [&](const std::string& why) {
    *error = source + ":" + std::to_string(line_no) + ": " + why;
    return false;
  };
  while (std::getline(in, line)) {
    ++line_no;
    const size_t hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    std::istringstream fields(line);
    std::vector<std::string> tokens;
    for (std::string t; fields >> t;) tokens.push_back(t);
    if (tokens.empty()) continue;
    int cls = 0, sup = 0;
    if (tokens.size() != 2 || !ParseInt(tokens[0], &cls) || !ParseInt(tokens[1], &sup))
      return fail("expected \"class superclass\" (two integers), got \"" + line + "\"");
    if (cls < 0 || cls >= num_classes)
      return fail("class " + std::to_string(cls) + " is not in [0, " + std::to_string(num_classes) + ")");
    if (map[cls] >= 0)
      return fail("class " + std::to_string(cls) + " listed twice (first on line " +
                  std::to_string(line_of[cls]) + ")");
    if (sup < 0 || sup >= num_superclasses)
      return fail("super-class " + std::to_string(sup) + " of class " + std::to_string(cls) +
                  " is not an expert id in [0, " + std::to_string(num_superclasses) +
                  ") (model.moe.num_experts)");
    map[cls] = sup;
    line_of[cls] = line_no;
  }
  std::string missing;
  for (int c = 0; c < num_classes; ++c)
    if (map[c] < 0) missing += (missing.empty() ? "" : ", ") + std::to_string(c);
  if (!missing.empty()) {
    *error = source + ": no super-class for class(es) " + missing + " (every class 0.." +
             std::to_string(num_classes - 1) + " must appear once)";
    return false;
  }
  *class_to_superclass = std::move(map);
  return true;
}

bool LoadSuperclassFile(const std::string& path, int num_classes, int num_superclasses,
                        std::vector<int>* class_to_superclass, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = path + ": cannot open file";
    return false;
  }
  return ParseSuperclassMap(in, path, num_classes, num_superclasses, class_to_superclass, error);
}

MobileVmoe::MobileVmoe(const proto::ModelConfig& config, Communicator* comm, uint64_t seed,
                       std::vector<int> class_to_superclass)
    : VisionTransformer(config, comm, seed),
      class_to_superclass_(std::move(class_to_superclass)) {
  CHECK(!moe_layers().empty()) << "Mobile V-MoE without MoE layers (validate the config first)";
  for (const MoeLayer* m : moe_layers())
    CHECK(m->options().rule == RoutingRule::kPerImage) << m->name() << ": routing must be per image";
}

void MobileVmoe::SetMoeContext(const MoeStepContext& ctx) {
  training_ = ctx.training;
  MoeStepContext with_labels = ctx;
  // The vector is filled by SetBatchInfo, which may come before or after this call.
  with_labels.superclass = guided() ? &batch_superclasses_ : nullptr;
  VisionTransformer::SetMoeContext(with_labels);
}

void MobileVmoe::SetBatchInfo(const BatchInfo& info) {
  if (!guided() || info.labels == nullptr) return;
  const int C = static_cast<int>(class_to_superclass_.size());
  batch_superclasses_.resize(info.labels->size());
  for (size_t i = 0; i < info.labels->size(); ++i) {
    const int label = (*info.labels)[i];
    CHECK(label >= 0 && label < C) << "label " << label << " of image " << i << " is not a class in [0, "
                                   << C << ")";
    batch_superclasses_[i] = class_to_superclass_[label];
  }
  labels_fresh_ = true;
}

Tensor MobileVmoe::Forward(const Tensor& images) {
  if (guided() && training_)
    CHECK(labels_fresh_) << "Mobile V-MoE: a guided training Forward needs SetBatchInfo with this "
                            "step's labels first";
  labels_fresh_ = false;
  return VisionTransformer::Forward(images);
}

std::unique_ptr<Net> CreateMobileVmoe(const proto::TrainConfig& c, Communicator* comm) {
  const proto::ModelConfig& m = c.model();
  std::vector<int> map;
  if (m.moe().superclass_loss_weight() > 0) {
    std::string error;
    CHECK(LoadSuperclassFile(m.moe().superclass_file(), m.num_classes(), m.moe().num_experts(), &map,
                             &error))
        << error << " (validate the config first)";
  }
  return std::make_unique<MobileVmoe>(m, comm, c.seed(), std::move(map));
}

void ValidateMobileVmoeConfig(const proto::TrainConfig& c, std::vector<std::string>* errors) {
  const proto::ModelConfig& m = c.model();
  const proto::MoeConfig& moe = m.moe();
  if (!m.use_moe())
    errors->push_back(ConfigError("model.use_moe", "false",
                                  "family \"mobile_vmoe\" is an MoE net (its dense baseline is "
                                  "family \"vit\" with use_moe false)"));
  if (moe.routing() != proto::MoeConfig::PER_IMAGE)
    errors->push_back(ConfigError("model.moe.routing", proto::MoeConfig::RoutingRule_Name(moe.routing()),
                                  "family \"mobile_vmoe\" routes whole images: PER_IMAGE"));
  if (moe.placement() == proto::MoeConfig::LAST_BLOCKS && moe.last_n() > m.num_layers())
    errors->push_back(ConfigError("model.moe.last_n", std::to_string(moe.last_n()),
                                  "more MoE blocks than model.num_layers=" +
                                      std::to_string(m.num_layers())));
  const float w = moe.superclass_loss_weight();
  if (!(w >= 0))
    errors->push_back(ConfigError("model.moe.superclass_loss_weight", std::to_string(w), "must be >= 0"));
  const std::string& file = moe.superclass_file();
  if (w > 0 && file.empty())
    errors->push_back(ConfigError("model.moe.superclass_file", "\"\"",
                                  "super-class guidance (superclass_loss_weight > 0) needs the "
                                  "class -> super-class file (launcher/superclasses/)"));
  // A named file must be valid even when unused, so a typo never passes unnoticed.
  if (!file.empty() && moe.num_experts() > 0 && m.num_classes() > 0) {
    std::vector<int> map;
    std::string error;
    if (!LoadSuperclassFile(file, m.num_classes(), moe.num_experts(), &map, &error))
      errors->push_back(ConfigError("model.moe.superclass_file", "\"" + file + "\"", error));
  }
}

}  // namespace moe
