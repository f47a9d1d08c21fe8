#include "launcher/training_session.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>

#include "comm/collective_watchdog.h"
#include "core/backend.h"
#include "core/optim/lr_schedule.h"
#include "models/nets/net_factory.h"

namespace moe {

TrainingSession::TrainingSession(const proto::TrainConfig& config, Communicator* comm,
                                 Profiler* profiler, Communicator* device_comm)
    : config_(config), comm_(comm), profiler_(profiler) {
  on_device_ = config.device() == "cuda";
  device_ = on_device_ ? Device::kCUDA : Device::kCPU;
  BackendFor(device_);  // a device this build cannot run is a fatal error here, before any work
  grad_comm_ = comm;
  if (on_device_) {
    CHECK(device_comm != nullptr && device_comm->works_on_device())
        << "device=\"cuda\" needs a device communicator (NcclCommunicator)";
    CHECK_EQ(device_comm->Size(GroupKind::kWorld), comm->Size(GroupKind::kWorld));
    CHECK_EQ(device_comm->Size(GroupKind::kExpert), comm->Size(GroupKind::kExpert));
    device_comm_ = device_comm;
    grad_comm_ = device_comm;  // the gradient all-reduces run on the device's own communicator
  }
  net_ = CreateNet(config, on_device_ ? device_comm : comm);
  if (on_device_) net_->MoveTo(Device::kCUDA);
  params_ = net_->Parameters();
  for (Parameter* p : params_) (p->is_expert() ? expert_ : dense_).push_back(p);
  global_batch_ = static_cast<int64_t>(config.data().batch_per_rank()) * comm->Size(GroupKind::kWorld);
  task_head_ = CreateTaskHead(config);
  task_head_->SetLabelSmoothing(config.recipe().label_smoothing());
  int64_t n = 0;
  for (Parameter* p : dense_) n += p->grad.numel();
  grad_bucket_ = Tensor({n}, device_);
  for (Parameter* p : params_) {
    CHECK(p->value.device() == device_ && p->grad.device() == device_)
        << "parameter " << p->name << " not on " << DeviceName(device_) << " after MoveTo";
    adam_m_.push_back(Tensor::Zeros(p->value.shape(), device_));
    adam_v_.push_back(Tensor::Zeros(p->value.shape(), device_));
  }
}

TrainingSession::~TrainingSession() = default;

size_t TrainingSession::IndexOf(const Parameter* p) const {
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i] == p) return i;
  LOG(FATAL) << "parameter " << p->name << " does not belong to this training session";
  return 0;
}

namespace {
// Host copy of a tensor on either device.
std::vector<float> HostCopy(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  if (t.numel() == 0) return out;
  Tensor host({t.numel()});
  host.CopyFrom(t);
  std::copy(host.data(), host.data() + t.numel(), out.begin());
  return out;
}
void UploadTo(Tensor* t, const float* data) {
  Tensor host({t->numel()});
  std::copy(data, data + t->numel(), host.data());
  t->CopyFrom(host);
}
}  // namespace

void TrainingSession::GetTrainingState(const Parameter* p, std::vector<float>* value,
                                       std::vector<float>* adam_m,
                                       std::vector<float>* adam_v) const {
  // Moments start at zero, so a parameter never stepped reads as zeros.
  const size_t i = IndexOf(p);
  *value = HostCopy(p->value);
  *adam_m = HostCopy(adam_m_[i]);
  *adam_v = HostCopy(adam_v_[i]);
}

void TrainingSession::SetTrainingState(Parameter* p, const float* value, const float* adam_m,
                                       const float* adam_v) {
  const size_t i = IndexOf(p);
  UploadTo(&p->value, value);
  UploadTo(&adam_m_[i], adam_m);
  UploadTo(&adam_v_[i], adam_v);
}

int64_t TrainingSession::optimizer_step_count() const { return adam_step_; }

void TrainingSession::set_optimizer_step_count(int64_t steps) { adam_step_ = steps; }

Tensor TrainingSession::ToNetDevice(const Tensor& host) const {
  if (!on_device_ || host.device() == Device::kCUDA) return host;
  Tensor d(host.shape(), Device::kCUDA);
  d.CopyFrom(host);
  return d;
}

void TrainingSession::SetContext(bool training, int64_t step, int64_t rows) {
  // Routed layers other than MoeLayer (the conditional family's routed pairs) read the context
  // too (training flag, global image keys of their noise), so every MoE config sets it.
  if (net_->moe_layers().empty() && !config_.model().use_moe()) return;
  const int64_t images_per_group = config_.model().moe().group_size_images();
  const int64_t groups_per_rank = rows / images_per_group;
  MoeStepContext ctx;
  ctx.training = training;
  ctx.step = step;
  ctx.first_global_group = comm_->Rank(GroupKind::kWorld) * groups_per_rank;
  ctx.num_global_groups = groups_per_rank * comm_->Size(GroupKind::kWorld);
  ctx.profiler = training ? profiler_ : nullptr;  // the profile covers training steps only
  ctx.image_loss_scale = 1.f / static_cast<float>(global_batch_);
  net_->SetMoeContext(ctx);
}

void TrainingSession::SetDropPathContext(bool training, int64_t step, int64_t rows) {
  // World rank r holds rows [r * rows, (r + 1) * rows) of the step's global batch, so the masks
  // key on the same global image index on every layout.
  DropPathContext ctx;
  ctx.training = training;
  ctx.step_key = DropPathStepKey(config_.seed(), step);
  ctx.first_image = static_cast<int64_t>(comm_->Rank(GroupKind::kWorld)) * rows;
  ctx.batch_images = rows;
  net_->SetDropPathContext(ctx);
}

void TrainingSession::SynchroniseGradients() {
  const Backend& be = BackendFor(device_);
  ScopedPhase ph(profiler_, "grad_allreduce", grad_bucket_.numel() * sizeof(float));
  ScopedActivity act("gradient all-reduce");
  // Dense grads as one bucket, one all-reduce over the world. On CUDA the copies and NCCL are
  // ordered through the legacy default stream (see the header).
  std::vector<const Tensor*> grads;
  std::vector<Tensor*> grads_out;
  for (Parameter* p : dense_) {
    grads.push_back(&p->grad);
    grads_out.push_back(&p->grad);
  }
  be.FlattenInto(grads, &grad_bucket_);
  grad_comm_->AllReduceSum(grad_bucket_.data(), grad_bucket_.numel(), GroupKind::kWorld);
  be.UnflattenFrom(grad_bucket_, grads_out);
  if (grad_comm_->Size(GroupKind::kData) > 1)
    for (Parameter* p : expert_)
      grad_comm_->AllReduceSum(p->grad.data(), p->grad.numel(), GroupKind::kData);
}

double TrainingSession::ClipGradients() {
  const Backend& be = BackendFor(device_);
  // Dense grads are identical on every rank; each expert lives once per EP group.
  std::vector<const Tensor*> grads;
  std::vector<int> group;  // 0 dense, 1 expert
  for (Parameter* p : params_) {
    grads.push_back(&p->grad);
    group.push_back(p->is_expert() ? 1 : 0);
  }
  const std::vector<double> sq = be.SquaredNormsByGroup(grads, group, 2);
  double expert_sq = sq[1];
  ScopedActivity act("gradient norm all-reduce");
  comm_->AllReduceSum(&expert_sq, 1, GroupKind::kExpert);  // host scalar: the host communicator
  const double norm = std::sqrt(sq[0] + expert_sq);
  const double max_norm = config_.optimizer().grad_clip_norm();
  if (max_norm > 0 && norm > max_norm) {
    const float s = static_cast<float>(max_norm / (norm + 1e-6));
    for (Parameter* p : params_) be.Scale(&p->grad, s);
  }
  return norm;
}

void TrainingSession::OptimizerStep(float lr) {
  const Backend& be = BackendFor(device_);
  ++adam_step_;
  const auto& o = config_.optimizer();
  for (size_t i = 0; i < params_.size(); ++i) {
    Parameter* p = params_[i];
    if (p->frozen) continue;
    AdamWStepScalars s;
    s.lr = lr;
    s.beta1 = o.beta1();
    s.beta2 = o.beta2();
    s.eps = o.epsilon();
    s.weight_decay = DecayApplies(p->name) ? o.weight_decay() : 0.f;
    s.step = adam_step_;
    be.AdamWStep(&p->value, p->grad, &adam_m_[i], &adam_v_[i], s);
  }
}

StepStats TrainingSession::TrainStep(int64_t step, const Tensor& images,
                                     const std::vector<int>& labels, const ImageSideInfo& side) {
  StepStats s = ComputeGradients(step, images, labels, side);
  ApplyUpdate(step, &s);
  return s;
}

void TrainingSession::ApplyUpdate(int64_t step, StepStats* s) {
  const auto& o = config_.optimizer();
  s->learning_rate = WarmupCosineLr(static_cast<int>(step), config_.steps(), o.warmup_steps(),
                                    o.learning_rate(), o.min_lr_ratio());
  ScopedPhase ph(profiler_, "optimizer");
  OptimizerStep(static_cast<float>(s->learning_rate));
}

StepStats TrainingSession::ComputeGradients(int64_t step, const Tensor& images,
                                            const std::vector<int>& labels,
                                            const ImageSideInfo& side) {
  const int64_t b = images.dim(0);
  SetActivityStep(step);
  for (Parameter* p : params_) p->grad.Zero();
  SetContext(/*training=*/true, step, b);
  SetDropPathContext(/*training=*/true, step, b);
  net_->SetBatchInfo(MakeBatchInfo(&labels, side));
  Tensor logits;
  {
    ScopedPhase ph(profiler_, "forward_total");
    logits = net_->Forward(on_device_ ? ToNetDevice(images) : images);
  }
  const float loss_scale = 1.f / static_cast<float>(global_batch_);
  const float mean_local = task_head_->Forward(logits, labels, side, loss_scale);
  const int num_correct = task_head_->NumCorrect();
  {
    ScopedPhase ph(profiler_, "backward_total");
    net_->Backward(task_head_->Backward());
  }
  SynchroniseGradients();
  const double grad_norm = ClipGradients();
  StepStats s = ReduceStepStatistics(static_cast<double>(mean_local) * b, num_correct);
  s.grad_norm = grad_norm;
  return s;
}

StepStats TrainingSession::ReduceStepStatistics(double loss_sum, int num_correct) {
  StepStats s;
  // Global statistics in ONE all-reduce: [loss sum, correct, aux] then, per MoE layer,
  // [dropped, assignments, offered slots, tokens per expert...].
  const auto& layers = net_->moe_layers();
  std::vector<double> buf = {loss_sum, static_cast<double>(num_correct), 0};
  for (MoeLayer* m : layers) {
    const MoeMetrics& mm = m->metrics();
    buf[2] += mm.aux_loss;
    buf.push_back(mm.dropped);
    buf.push_back(mm.assignments);
    buf.push_back(mm.capacity_slots);
    buf.insert(buf.end(), mm.tokens_per_expert.begin(), mm.tokens_per_expert.end());
  }
  int guided_layers = 0;  // the last slot: super-class hits over the guided layers
  buf.push_back(0);
  for (MoeLayer* m : layers)
    if (m->options().superclass_weight > 0) {
      ++guided_layers;
      buf.back() += static_cast<double>(m->metrics().superclass_correct);
    }
  {
    ScopedActivity act("step statistics all-reduce");
    comm_->AllReduceSum(buf.data(), static_cast<int64_t>(buf.size()), GroupKind::kWorld);
  }
  if (guided_layers > 0)
    s.superclass_accuracy = buf.back() / (static_cast<double>(guided_layers) * global_batch_);
  s.loss = buf[0] / global_batch_;
  s.accuracy = buf[1] / global_batch_;
  s.aux_loss = buf[2];
  double dropped = 0, assignments = 0, offered = 0;
  size_t at = 3;
  for (MoeLayer* m : layers) {
    const double d = buf[at], a = buf[at + 1], o = buf[at + 2];
    at += 3;
    const size_t E = m->metrics().tokens_per_expert.size();
    s.tokens_per_expert.emplace_back(buf.begin() + at, buf.begin() + at + E);
    at += E;
    s.layer_dropped_fraction.push_back(a > 0 ? d / a : 0);
    s.layer_capacity_use.push_back(o > 0 ? (a - d) / o : 0);
    dropped += d;
    assignments += a;
    offered += o;
  }
  s.dropped_fraction = assignments > 0 ? dropped / assignments : 0;
  s.capacity_use = offered > 0 ? (assignments - dropped) / offered : 0;
  return s;
}

void TrainingSession::Evaluate(const Tensor& images, const std::vector<int>& labels,
                               int64_t valid, int64_t* correct, double* loss_sum,
                               const ImageSideInfo& side) {
  SetContext(/*training=*/false, /*step=*/0, images.dim(0));
  SetDropPathContext(/*training=*/false, /*step=*/0, images.dim(0));
  SetActivityStage("evaluation");
  // No labels: evaluation must not lean on them (super-class guidance trains only).
  net_->SetBatchInfo(MakeBatchInfo(/*labels=*/nullptr, side));
  Tensor logits = net_->Forward(on_device_ ? ToNetDevice(images) : images);
  if (logits.device() != Device::kCPU) {  // [B, C] is small: score it on the host
    Tensor host(logits.shape());
    host.CopyFrom(logits);
    logits = host;
  }
  task_head_->Score(logits, labels, side, valid, correct, loss_sum);
}

}  // namespace moe
