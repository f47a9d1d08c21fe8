#include "launcher/config.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/text_format.h>

#include <fstream>
#include <sstream>

#include "core/device_memory.h"
#include "core/rng.h"
#include "models/nets/net_factory.h"

namespace moe {

namespace {

// Collects the parser's messages (which name the unknown field) instead of printing them.
class CollectingErrors : public google::protobuf::io::ErrorCollector {
 public:
  explicit CollectingErrors(std::string source) : source_(std::move(source)) {}
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    os_ << source_ << ":" << (line + 1) << ":" << (column + 1) << ": " << message << "\n";
  }
  void AddWarning(int, google::protobuf::io::ColumnNumber, const std::string&) override {}
  std::string str() const { return os_.str(); }

 private:
  std::string source_;
  std::ostringstream os_;
};

bool ParseInto(const std::string& text, const std::string& source, bool merge,
               proto::TrainConfig* config, std::string* error) {
  google::protobuf::TextFormat::Parser parser;
  CollectingErrors errors(source);
  parser.RecordErrorsTo(&errors);
  const bool ok = merge ? parser.MergeFromString(text, config) : parser.ParseFromString(text, config);
  if (!ok) *error = "config error: " + errors.str();
  return ok;
}

}  // namespace

bool LoadTrainConfig(const std::string& path, const std::string& overrides,
                     proto::TrainConfig* config, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = "config error: --config=" + path + ": cannot open file";
    return false;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  if (!ParseInto(ss.str(), path, /*merge=*/false, config, error)) return false;
  if (!overrides.empty() && !ParseInto(overrides, "--override", /*merge=*/true, config, error))
    return false;
  return true;
}

std::vector<std::string> ValidateTrainConfig(const proto::TrainConfig& c, int world_size) {
  std::vector<std::string> errs;
  auto bad = [&errs](const std::string& field, const std::string& value, const std::string& why) {
    errs.push_back("config error: " + field + "=" + value + ": " + why);
  };
  const auto& m = c.model();
  const auto& moe = m.moe();
  const int ep = c.parallel().ep_size();
  if (c.device() != "cpu" && c.device() != "cuda")
    bad("device", "\"" + c.device() + "\"", "must be \"cpu\" or \"cuda\"");
  if (c.device() == "cuda" && !CudaPathCompiled())
    bad("device", "\"cuda\"",
        "this build has no CUDA path (configured with MOE_EP_WITH_CUDA=OFF or without nvcc); "
        "use \"cpu\" or rebuild with CUDA");
  ValidateNetConfig(c, &errs);  // the family name and the family's own fields
  if (ep <= 0) bad("parallel.ep_size", std::to_string(ep), "must be >= 1");
  else if (world_size % ep != 0)
    bad("parallel.ep_size", std::to_string(ep),
        "the world size " + std::to_string(world_size) + " is not a multiple of it");
  if (c.steps() <= 0) bad("steps", std::to_string(c.steps()), "must be >= 1");
  if (m.image_size() <= 0) bad("model.image_size", std::to_string(m.image_size()), "must be > 0");
  if (m.patch_size() <= 0 || (m.image_size() > 0 && m.image_size() % m.patch_size() != 0))
    bad("model.patch_size", std::to_string(m.patch_size()),
        "must divide model.image_size=" + std::to_string(m.image_size()));
  if (m.hidden_dim() <= 0) bad("model.hidden_dim", std::to_string(m.hidden_dim()), "must be > 0");
  if (m.num_heads() <= 0 || (m.hidden_dim() > 0 && m.hidden_dim() % m.num_heads() != 0))
    bad("model.num_heads", std::to_string(m.num_heads()),
        "must divide model.hidden_dim=" + std::to_string(m.hidden_dim()));
  if (m.mlp_dim() <= 0) bad("model.mlp_dim", std::to_string(m.mlp_dim()), "must be > 0");
  if (m.num_layers() <= 0) bad("model.num_layers", std::to_string(m.num_layers()), "must be > 0");
  if (m.num_classes() != 10)
    bad("model.num_classes", std::to_string(m.num_classes()), "Fashion-MNIST has 10 classes");
  if (m.channels() != 1) bad("model.channels", std::to_string(m.channels()), "Fashion-MNIST is grey (1)");
  if (m.image_size() != 28) bad("model.image_size", std::to_string(m.image_size()), "Fashion-MNIST is 28");
  const int batch = c.data().batch_per_rank();
  if (batch <= 0) bad("data.batch_per_rank", std::to_string(batch), "must be > 0");
  if (c.data().eval_images() < 0)
    bad("data.eval_images", std::to_string(c.data().eval_images()), "must be >= 0");
  const auto& o = c.optimizer();
  if (!(o.learning_rate() > 0)) bad("optimizer.learning_rate", std::to_string(o.learning_rate()), "must be > 0");
  if (o.warmup_steps() < 0) bad("optimizer.warmup_steps", std::to_string(o.warmup_steps()), "must be >= 0");
  if (!(o.beta1() >= 0 && o.beta1() < 1)) bad("optimizer.beta1", std::to_string(o.beta1()), "must be in [0, 1)");
  if (!(o.beta2() >= 0 && o.beta2() < 1)) bad("optimizer.beta2", std::to_string(o.beta2()), "must be in [0, 1)");
  if (m.use_moe()) {
    const int E = moe.num_experts();
    if (E <= 0) bad("model.moe.num_experts", std::to_string(E), "must be >= 1");
    else if (ep > 0 && E % ep != 0)
      bad("model.moe.num_experts", std::to_string(E),
          "not divisible by parallel.ep_size=" + std::to_string(ep));
    if (moe.top_k() < 1 || (E > 0 && moe.top_k() > E))
      bad("model.moe.top_k", std::to_string(moe.top_k()),
          "must be in [1, model.moe.num_experts=" + std::to_string(E) + "]");
    if (!(moe.capacity_factor_train() > 0))
      bad("model.moe.capacity_factor_train", std::to_string(moe.capacity_factor_train()), "must be > 0");
    if (!(moe.capacity_factor_eval() > 0))
      bad("model.moe.capacity_factor_eval", std::to_string(moe.capacity_factor_eval()), "must be > 0");
    if (moe.group_size_images() <= 0)
      bad("model.moe.group_size_images", std::to_string(moe.group_size_images()), "must be >= 1");
    else if (batch > 0 && batch % moe.group_size_images() != 0)
      bad("model.moe.group_size_images", std::to_string(moe.group_size_images()),
          "must divide data.batch_per_rank=" + std::to_string(batch));
    if (moe.router_noise_scale() < 0)
      bad("model.moe.router_noise_scale", std::to_string(moe.router_noise_scale()), "must be >= 0");
    if (moe.load_loss_weight() > 0 && moe.router_noise_scale() == 0)
      bad("model.moe.load_loss_weight", std::to_string(moe.load_loss_weight()),
          "the load loss needs router noise (model.moe.router_noise_scale > 0)");
    if (moe.expert_hidden_dim() < 0)
      bad("model.moe.expert_hidden_dim", std::to_string(moe.expert_hidden_dim()), "must be >= 0");
    for (auto [name, w] : {std::pair<const char*, float>{"importance_loss_weight", moe.importance_loss_weight()},
                           {"load_loss_weight", moe.load_loss_weight()},
                           {"switch_loss_weight", moe.switch_loss_weight()},
                           {"z_loss_weight", moe.z_loss_weight()}})
      if (w < 0) bad(std::string("model.moe.") + name, std::to_string(w), "must be >= 0");
    if ((moe.placement() == proto::MoeConfig::LAST_N ||
         moe.placement() == proto::MoeConfig::LAST_BLOCKS) && moe.last_n() <= 0)
      bad("model.moe.last_n", std::to_string(moe.last_n()), "must be >= 1");
    if (m.num_layers() < 2)
      bad("model.num_layers", std::to_string(m.num_layers()), "MoE blocks are the odd blocks: need >= 2");
  }
  return errs;
}

uint64_t ConfigHash(const proto::TrainConfig& config) {
  std::string bytes;
  google::protobuf::io::StringOutputStream stream(&bytes);
  {
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    config.SerializeToCodedStream(&coded);
  }
  return HashString(bytes);
}

}  // namespace moe
