#include "launcher/memory_estimate.h"

#include "launcher/config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "models/moe/capacity.h"
#include "models/nets/conditional_vit.h"
#include "models/nets/patch_cnn.h"
#include "models/nets/vision_transformer.h"
#include "models/moe/routing_rule_registry.h"

namespace moe {
namespace {

constexpr double kFloatBytes = 4;
// Fashion-MNIST: 60,000 training and 10,000 test images, every rank loads both, as stored: one
// byte per pixel (launcher/idx_dataset.h) and an int label.
constexpr double kDataImages = 70000;
constexpr double kLabelBytes = 4;
// MPI (shared-memory segments), OpenBLAS buffers and the binary: a 1-step vmoe_tiny rank peaked
// at 100 MiB resident (GNU time), of which about 53 MiB are the data sets; rounded up.
constexpr double kRuntimeBytes = 64.0 * 1024 * 1024;

double LinearParams(double in, double out, bool bias = true) { return in * out + (bias ? out : 0); }
double NormParams(double dim) { return 2 * dim; }
double MlpParams(double dim, double hidden) {
  return LinearParams(dim, hidden) + LinearParams(hidden, dim);
}
double AttentionParams(double dim) { return LinearParams(dim, 3 * dim) + LinearParams(dim, dim); }
double TokensPerImage(const proto::ModelConfig& m) {
  const double grid = m.patch_size() > 0 ? m.image_size() / m.patch_size() : 0;
  return grid * grid;
}
double PatchEmbedParams(const proto::ModelConfig& m) {
  const double patch = static_cast<double>(m.channels()) * m.patch_size() * m.patch_size();
  return LinearParams(patch, m.hidden_dim()) + TokensPerImage(m) * m.hidden_dim();
}

// C of one routing group, as MoeLayer::CurrentCapacity computes it; in double beyond what an
// int64 holds (such a run cannot be allocated anyway, and the estimate must still say so).
double CapacityPerGroup(const MoeLayerOptions& o, double factor) {
  const double n = static_cast<double>(o.group_tokens);
  const double bound = std::max(1, o.top_k) * n * factor / std::max(1, o.num_experts);
  // An absurd config gets a number large enough to be refused, without integer overflow.
  if (!(bound < 1e15) || o.top_k < 1 || o.num_experts < 1 || !(factor > 0) ||
      o.group_tokens < 1 || o.tokens_per_image < 1)
    return bound;
  return static_cast<double>(MakeRoutingRule(o.rule)->Capacity(o, factor));
}

// Rows of one step's capacity buffers on this rank: every (expert, group) block holds C rows;
// dropless sends only the kept rows, at most k per token.
double BufferRows(const MoeLayerOptions& o, double groups, double factor) {
  if (o.dropless) return groups * static_cast<double>(o.group_tokens) * o.top_k;
  return static_cast<double>(o.num_experts) * groups * CapacityPerGroup(o, factor);
}

// `count` identical MoeLayers: router (and attribute projection) are dense, the experts this
// rank holds are its E / ep_size, and each layer has its capacity buffers.
void AddMoeLayers(const MoeLayerOptions& o, double count, const proto::TrainConfig& c,
                  MemoryEstimate* est) {
  if (count <= 0) return;
  const int ep = std::max(1, c.parallel().ep_size());
  const double experts_here = std::max(0, o.num_experts / ep);
  double router = static_cast<double>(o.dim) * o.num_experts;
  if (MakeRoutingRule(o.rule)->router_input() == RouterInputKind::kAttributes &&
      o.attribute_dim > 0)
    router += LinearParams(o.attribute_dim, o.dim) + NormParams(o.dim);
  est->dense_params += count * router;
  est->expert_params += count * experts_here * MlpParams(o.dim, o.hidden);
  const double groups = std::floor(static_cast<double>(c.data().batch_per_rank()) /
                                   std::max(1, c.model().moe().group_size_images()));
  MoeBufferEstimate b;
  b.dim = o.dim;
  b.hidden = o.hidden;
  b.rows_train = BufferRows(o, groups, o.capacity_factor_train);
  b.rows_eval = BufferRows(o, groups, o.capacity_factor_eval);
  b.count = count;
  est->moe_layers.push_back(b);
}

// family "vit" and "mobile_vmoe" (a ViT whose MoE blocks route whole images).
void CountVit(const proto::TrainConfig& c, MemoryEstimate* est) {
  const proto::ModelConfig& m = c.model();
  const double D = m.hidden_dim(), L = std::max(0, m.num_layers());
  const double half = std::floor(L / 2), last_n = std::max(0, m.moe().last_n());
  double moe_blocks = 0;  // as MoeBlockIndices places them, counted instead of listed
  if (m.use_moe()) {
    switch (m.moe().placement()) {
      case proto::MoeConfig::EVERY_2: moe_blocks = half; break;
      case proto::MoeConfig::LAST_N: moe_blocks = std::min(last_n, half); break;
      case proto::MoeConfig::LAST_BLOCKS: moe_blocks = std::min(last_n, L); break;
    }
  }
  est->dense_params += PatchEmbedParams(m) + NormParams(D) + LinearParams(D, m.num_classes());
  est->dense_params += L * (2 * NormParams(D) + AttentionParams(D));
  est->dense_params += (L - moe_blocks) * MlpParams(D, m.mlp_dim());
  AddMoeLayers(MoeOptionsFromConfig(m), moe_blocks, c, est);
  // Mobile V-MoE's shared router: one [D, E] router for all its MoE layers, not one each.
  if (m.family() == "mobile_vmoe" && m.moe().shared_router() && moe_blocks > 1)
    est->dense_params -= (moe_blocks - 1) * D * m.moe().num_experts();
}

// family "conditional": MoE in the even blocks, the attention projections routed too.
void CountConditional(const proto::TrainConfig& c, MemoryEstimate* est) {
  const proto::ModelConfig& m = c.model();
  const double D = m.hidden_dim(), L = std::max(0, m.num_layers());
  const double moe_blocks = m.use_moe() ? std::ceil(L / 2) : 0;
  est->dense_params += PatchEmbedParams(m) + 2 * 2 * D /* task, modality embeddings */ +
                       (m.conditional().task_token() ? D : 0) + NormParams(D) +
                       LinearParams(D, ConditionalNumOutputs(m));
  est->dense_params += L * 2 * NormParams(D) + (L - moe_blocks) * MlpParams(D, m.mlp_dim());
  const double E = m.moe().num_experts();
  double attention = AttentionParams(D);
  if (m.use_moe() && m.conditional().moe_in_attention()) {
    const RoutingRule rule = RoutingRuleForLevel(m.conditional().routing_level());
    attention = E * (LinearParams(D, 3 * D) + LinearParams(D, D)) + D * E;  // MoeLinearPair
    if (MakeRoutingRule(rule)->router_input() == RouterInputKind::kAttributes)
      attention += LinearParams(kTokenAttributeBits, D) + NormParams(D);
  }
  est->dense_params += (L - moe_blocks) * AttentionParams(D) + moe_blocks * attention;
  if (m.conditional().ffn_form() == proto::ConditionalConfig::MOE_LAYER) {
    AddMoeLayers(ConditionalMoeOptions(m), moe_blocks, c, est);
    return;
  }
  // ROUTED_PAIR: fc1 and fc2 as replicated routed linear experts (dense, no capacity buffers).
  const double H = m.moe().expert_hidden_dim() > 0 ? m.moe().expert_hidden_dim() : m.mlp_dim();
  double ffn = E * (LinearParams(D, H) + LinearParams(H, D)) + D * E;
  const RoutingRule rule = RoutingRuleForLevel(m.conditional().routing_level());
  if (MakeRoutingRule(rule)->router_input() == RouterInputKind::kAttributes)
    ffn += LinearParams(kTokenAttributeBits, D) + NormParams(D);
  est->dense_params += moe_blocks * ffn;
}

// family "mixer" (MLP-Mixer / Sparse-MLP): the last num_sparse_blocks blocks hold MoE_S and
// MoE_C, with the re-represent layers around MoE_S.
void CountMixer(const proto::TrainConfig& c, MemoryEstimate* est) {
  const proto::ModelConfig& m = c.model();
  const proto::MixerConfig& mx = m.mixer();
  const int C = m.hidden_dim(), S = static_cast<int>(TokensPerImage(m));
  const double L = std::max(0, m.num_layers());
  const double sparse = m.use_moe() ? std::clamp<double>(mx.num_sparse_blocks(), 0, L) : 0;
  const bool rerep = mx.re_represent(), both = rerep && mx.re_represent_both();
  const int S1 = rerep ? 2 * S : S, C1 = rerep ? C / 2 : C;
  auto expert_hidden = [&m](int per_layer, int dense) {
    return per_layer > 0                     ? per_layer
           : m.moe().expert_hidden_dim() > 0 ? m.moe().expert_hidden_dim()
                                             : dense;
  };
  est->dense_params += PatchEmbedParams(m) + NormParams(C) + LinearParams(C, m.num_classes());
  est->dense_params += (L - sparse) * (2 * NormParams(C) + LinearParams(S, mx.token_mlp_dim()) +
                                       LinearParams(mx.token_mlp_dim(), S, /*bias=*/false) +
                                       MlpParams(C, mx.channel_mlp_dim()));
  double sparse_dense = NormParams(C) + (both ? NormParams(C1) : NormParams(C));
  if (rerep)
    sparse_dense +=
        LinearParams(C, C1) + LinearParams(S, S1) + LinearParams(S1, S) + LinearParams(C1, C);
  est->dense_params += sparse * sparse_dense;
  MoeLayerOptions token = MoeOptionsFromConfig(
      m, S1, expert_hidden(mx.token_expert_hidden_dim(), mx.token_mlp_dim()), C1);
  token.top_k = mx.token_moe_top_k();
  const int channel_hidden = expert_hidden(mx.channel_expert_hidden_dim(), mx.channel_mlp_dim());
  MoeLayerOptions channel = both ? MoeOptionsFromConfig(m, C1, channel_hidden, S1)
                                 : MoeOptionsFromConfig(m, C, channel_hidden, S);
  channel.top_k = mx.channel_moe_top_k();
  AddMoeLayers(token, sparse, c, est);
  AddMoeLayers(channel, sparse, c, est);
}

// family "pmoe": patch embedding, one MoE (or dense MLP) over the patches, a head on the G x G
// region means (pmoe.pool_grid).
void CountPatchCnn(const proto::TrainConfig& c, MemoryEstimate* est) {
  const proto::ModelConfig& m = c.model();
  const double D = m.hidden_dim();
  const double patch = static_cast<double>(m.channels()) * m.patch_size() * m.patch_size();
  const double regions = static_cast<double>(m.pmoe().pool_grid()) * m.pmoe().pool_grid();
  est->dense_params += LinearParams(patch, D) + LinearParams(regions * D, m.num_classes());
  if (m.use_moe())
    AddMoeLayers(PmoeMoeOptions(m), 1, c, est);
  else
    est->dense_params += MlpParams(D, m.pmoe().conv_channels());
}

void AddBufferBytes(MemoryEstimate* est) {
  double largest_transient = 0;
  for (const MoeBufferEstimate& b : est->moe_layers) {
    const double rows = std::max(b.rows_train, b.rows_eval);
    est->moe_buffer_bytes += b.count * rows * (2.0 * b.dim + 2.0 * b.hidden) * kFloatBytes;
    largest_transient = std::max(largest_transient, rows * 3.0 * b.dim * kFloatBytes);
  }
  est->moe_buffer_bytes += largest_transient;
}

}  // namespace

MemoryEstimate EstimateRankMemory(const proto::TrainConfig& unresolved, int world_size) {
  // The shard size comes from parallel.ep_size (0: the world); the batch is per rank.
  proto::TrainConfig c = unresolved;
  ResolveWorldSizeFields(world_size, &c);
  MemoryEstimate est;
  const std::string& family = c.model().family();
  if (family == "mixer")
    CountMixer(c, &est);
  else if (family == "pmoe")
    CountPatchCnn(c, &est);
  else if (family == "conditional")
    CountConditional(c, &est);
  else
    CountVit(c, &est);  // "vit", "mobile_vmoe"
  const double params = est.dense_params + est.expert_params;
  est.parameter_bytes = params * kFloatBytes;
  // Gradients, AdamW m and v, and the flat bucket the dense gradients are all-reduced in.
  est.optimizer_bytes = (3 * params + est.dense_params) * kFloatBytes;
  AddBufferBytes(&est);
  const proto::ModelConfig& m = c.model();
  const double B = c.data().batch_per_rank(), T = TokensPerImage(m),
               L = std::max(0, m.num_layers());
  est.activation_bytes = L * B * T * (8.0 * m.hidden_dim() + 2.0 * m.mlp_dim()) * kFloatBytes +
                         L * B * std::max(1, m.num_heads()) * T * T * kFloatBytes;
  est.data_bytes =
      kDataImages * (static_cast<double>(m.image_size()) * m.image_size() * m.channels() +
                     kLabelBytes);
  est.runtime_bytes = kRuntimeBytes;
  return est;
}

std::string FormatBytes(double bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024 && u < 6) {
    bytes /= 1024;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), bytes < 10 && u > 0 ? "%.1f %s" : "%.0f %s", bytes, kUnits[u]);
  return buf;
}

std::string MemoryEstimate::Describe() const {
  std::string s = FormatBytes(total_bytes()) + " (";
  const std::pair<const char*, double> parts[] = {{"MoE capacity buffers", moe_buffer_bytes},
                                                  {"parameters", parameter_bytes},
                                                  {"gradients and AdamW state", optimizer_bytes},
                                                  {"activations", activation_bytes},
                                                  {"data sets", data_bytes},
                                                  {"MPI and libraries", runtime_bytes}};
  bool first = true;
  for (const auto& [name, bytes] : parts) {
    if (bytes <= 0) continue;
    s += (first ? "" : ", ") + std::string(name) + " " + FormatBytes(bytes);
    first = false;
  }
  return s + ")";
}

double AvailableHostMemoryBytes() {
  double available = -1;
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  double kib = 0;
  while (meminfo >> key >> kib) {
    if (key == "MemAvailable:") available = kib * 1024;
    meminfo.ignore(256, '\n');
  }
  if (available < 0)
    available = static_cast<double>(sysconf(_SC_AVPHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  // A container's cgroup v2 limit can be far below what the host has free.
  std::ifstream max_file("/sys/fs/cgroup/memory.max"),
      current_file("/sys/fs/cgroup/memory.current");
  double limit = 0, current = 0;
  if (max_file >> limit && current_file >> current)
    available = std::min(available, limit - current);
  return available;
}

namespace {

// A set numeric field of the config, as a path of fields from the top message.
using FieldPath = std::vector<const google::protobuf::FieldDescriptor*>;

void CollectNumericFields(const google::protobuf::Message& msg, FieldPath prefix,
                          std::vector<FieldPath>* out) {
  using google::protobuf::FieldDescriptor;
  std::vector<const FieldDescriptor*> fields;
  msg.GetReflection()->ListFields(msg, &fields);
  for (const FieldDescriptor* f : fields) {
    if (f->is_repeated()) continue;
    FieldPath path = prefix;
    path.push_back(f);
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE)
      CollectNumericFields(msg.GetReflection()->GetMessage(msg, f), path, out);
    else if (f->cpp_type() != FieldDescriptor::CPPTYPE_STRING &&
             f->cpp_type() != FieldDescriptor::CPPTYPE_BOOL &&
             f->cpp_type() != FieldDescriptor::CPPTYPE_ENUM)
      out->push_back(path);
  }
}

// "model.moe.num_experts=100000" and the field's default, from a path.
std::string DescribeField(const google::protobuf::Message& top, const FieldPath& path,
                          std::string* default_value) {
  using google::protobuf::FieldDescriptor;
  const google::protobuf::Message* msg = &top;
  std::string name;
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    name += path[i]->name() + ".";
    msg = &msg->GetReflection()->GetMessage(*msg, path[i]);
  }
  const FieldDescriptor* f = path.back();
  const google::protobuf::Reflection* r = msg->GetReflection();
  std::ostringstream value, def;
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      value << r->GetInt32(*msg, f);
      def << f->default_value_int32();
      break;
    case FieldDescriptor::CPPTYPE_INT64:
      value << r->GetInt64(*msg, f);
      def << f->default_value_int64();
      break;
    case FieldDescriptor::CPPTYPE_UINT32:
      value << r->GetUInt32(*msg, f);
      def << f->default_value_uint32();
      break;
    case FieldDescriptor::CPPTYPE_UINT64:
      value << r->GetUInt64(*msg, f);
      def << f->default_value_uint64();
      break;
    case FieldDescriptor::CPPTYPE_FLOAT:
      value << r->GetFloat(*msg, f);
      def << f->default_value_float();
      break;
    case FieldDescriptor::CPPTYPE_DOUBLE:
      value << r->GetDouble(*msg, f);
      def << f->default_value_double();
      break;
    default: break;
  }
  *default_value = def.str();
  return name + f->name() + "=" + value.str();
}

// The set field whose reset to its default shrinks the estimate most ("" when none does).
std::string LargestField(const proto::TrainConfig& c, int world_size, std::string* default_value,
                         double* total_at_default) {
  std::vector<FieldPath> paths;
  CollectNumericFields(c, {}, &paths);
  std::string best;
  double best_total = EstimateRankMemory(c, world_size).total_bytes();
  for (const FieldPath& path : paths) {
    proto::TrainConfig reset = c;
    google::protobuf::Message* msg = &reset;
    for (size_t i = 0; i + 1 < path.size(); ++i)
      msg = msg->GetReflection()->MutableMessage(msg, path[i]);
    msg->GetReflection()->ClearField(msg, path.back());
    const double total = EstimateRankMemory(reset, world_size).total_bytes();
    if (total < best_total) {
      best_total = total;
      best = DescribeField(c, path, default_value);
      *total_at_default = total;
    }
  }
  return best;
}

}  // namespace

std::string CheckMemoryFits(const proto::TrainConfig& config, int world_size, int ranks_on_host,
                            double available_bytes, double fraction) {
  const MemoryEstimate est = EstimateRankMemory(config, world_size);
  const int ranks = std::max(1, ranks_on_host);
  const double budget = available_bytes * fraction / ranks;
  if (est.total_bytes() <= budget) return "";
  std::string default_value;
  double total_at_default = 0;
  const std::string field = LargestField(config, world_size, &default_value, &total_at_default);
  std::ostringstream os;
  os << "config error: " << (field.empty() ? "this config" : field) << ": a rank would need about "
     << est.Describe() << ", but this host has " << FormatBytes(available_bytes)
     << " available for its " << ranks << (ranks == 1 ? " rank" : " ranks") << " ("
     << FormatBytes(budget) << " each, " << static_cast<int>(fraction * 100 + 0.5)
     << "% of the share)";
  if (!field.empty())
    os << "; at its default (" << default_value << ") the estimate is "
       << FormatBytes(total_at_default) << " per rank";
  os << " (what is counted: launcher/memory_estimate.h)";
  return os.str();
}

}  // namespace moe
