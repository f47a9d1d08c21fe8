#include "models/moe/moe_layer.h"

#include <glog/logging.h>

#include "models/moe/expert_bank.h"
#include "models/moe/moe_backend.h"
#include "models/moe/router.h"
#include "models/moe/routing_rule_registry.h"

namespace moe {

MoeLayer::MoeLayer(const std::string& name, const MoeLayerOptions& options, Communicator* comm,
                   uint64_t seed)
    : name_(name), opt_(options), comm_(comm), seed_(seed) {
  CHECK(comm_ != nullptr);
  CHECK_GT(opt_.dim, 0);
  CHECK_GT(opt_.hidden, 0);
  CHECK_GT(opt_.group_tokens, 0);
  rule_ = MakeRoutingRule(opt_.rule);
  ValidateRoutingOptions(*rule_, name_, opt_);
  ep_size_ = comm_->Size(GroupKind::kExpert);
  ep_rank_ = comm_->Rank(GroupKind::kExpert);
  CHECK_EQ(opt_.num_experts % ep_size_, 0)
      << name << ": num_experts " << opt_.num_experts << " not divisible by ep_size " << ep_size_;
  experts_per_rank_ = opt_.num_experts / ep_size_;
  router_ = std::make_unique<Router>(name_, opt_, rule_->router_input(), seed);
  experts_ = std::make_unique<ExpertBank>(name + ".expert", opt_.dim, opt_.hidden,
                                          ep_rank_ * experts_per_rank_, experts_per_rank_, seed,
                                          opt_.expert_activation);
  view_.reset(new MoeLayerView{name_,   opt_,     ctx_,      *router_, *rule_,
                               comm_,   seed_,    metrics_,  external_, dispatch_});
}

MoeLayer::~MoeLayer() = default;

void MoeLayer::MoveTo(Device device) {
  router_->MoveTo(device);
  experts_->MoveTo(device);
  backend_.reset();
  forward_rows_ = -1;
}

std::vector<Parameter*> MoeLayer::Parameters() {
  // An external decision's owner holds the router weights.
  std::vector<Parameter*> ps = router_->Parameters(/*with_weight=*/!opt_.external_decision);
  for (Parameter* p : experts_->Parameters()) ps.push_back(p);
  return ps;
}

void MoeLayer::SetDispatcherOptions(const DispatcherOptions& options) {
  dispatch_ = options;
  backend_.reset();
  forward_rows_ = -1;
}

int64_t MoeLayer::CurrentCapacity() const { return view_->Capacity(); }

void MoeLayer::ForEachKeptAssignment(const std::function<void(int64_t, int, float)>& fn) const {
  const RoutingState* R = backend_ ? backend_->planner->host_state() : nullptr;
  CHECK(R != nullptr) << name_ << ": no host-path Forward to report on";
  for (int64_t t = 0; t < R->rows; ++t)
    for (int r = 0; r < R->kc; ++r)
      if (R->slot[t * R->kc + r] >= 0) fn(t, R->expert[t * R->kc + r], R->gate[t * R->kc + r]);
}

void MoeLayer::AddExternalMetrics(double aux_loss, double superclass_loss,
                                  int64_t superclass_correct) {
  metrics_.aux_loss += aux_loss;
  metrics_.superclass_loss += superclass_loss;
  metrics_.superclass_correct += superclass_correct;
}

void MoeLayer::CheckInput(const Tensor& x) const {
  CHECK_EQ(x.ndim(), 2) << name_ << ": input must be [rows, dim]";
  CHECK_EQ(x.dim(1), opt_.dim) << name_ << ": input width";
  CHECK_EQ(x.dim(0) % opt_.group_tokens, 0)
      << name_ << ": " << x.dim(0) << " rows is not a whole number of routing groups of "
      << opt_.group_tokens << " tokens";
  const Device params = router_->weight().value.device();
  CHECK(params == x.device()) << name_ << ": input on " << DeviceName(x.device())
                              << ", parameters on " << DeviceName(params) << " (MoveTo)";
}

MoeBackend& MoeLayer::BackendOn(Device device) {
  if (!backend_ || backend_->device != device) backend_ = MakeMoeBackend(device, *view_);
  return *backend_;
}

Tensor MoeLayer::Forward(const Tensor& x) {
  CheckInput(x);
  MoeBackend& b = BackendOn(x.device());
  TokenDispatcher& d = *b.dispatcher;
  d.BeginStep(ctx_.profiler);
  const DispatchPlan& plan = b.planner->Plan(x);
  if (d.drives_experts()) {  // pipelined: the dispatcher runs the bank chunk by chunk
    experts_->set_cuda_stream(d.device_stream());
    Tensor y = d.ForwardThroughExperts(
        x, plan, [this, &d](int chunk, const Tensor& in, const std::vector<int64_t>& rows) {
          ScopedPhase ph(ctx_.profiler, "experts");
          Tensor out = experts_->Forward(in, rows, chunk);
          d.SyncIfProfiling();
          return out;
        });
    b.planner->FinishForward();
    forward_rows_ = x.dim(0);
    d.EndStep();
    return y;
  }
  Tensor expert_in = d.Dispatch(x, plan);
  Tensor expert_out;
  {
    ScopedPhase ph(ctx_.profiler, "experts");
    experts_->set_cuda_stream(d.device_stream());
    expert_out = experts_->Forward(expert_in, d.expert_rows());
    d.SyncIfProfiling();
  }
  Tensor y = d.Combine(expert_out);
  b.planner->FinishForward();
  forward_rows_ = x.dim(0);
  d.EndStep();
  return y;  // expert_in, expert_out released after EndStep: a device stream is done with them
}

Tensor MoeLayer::Backward(const Tensor& dy) {
  CHECK(backend_ && forward_rows_ >= 0) << name_ << ": Backward before Forward";
  CHECK(dy.device() == backend_->device) << name_ << ": dy on " << DeviceName(dy.device())
                                         << ", the last Forward on "
                                         << DeviceName(backend_->device);
  CHECK_EQ(dy.numel(), forward_rows_ * opt_.dim) << name_ << ": dy shape";
  TokenDispatcher& d = *backend_->dispatcher;
  RoutingPlanner& planner = *backend_->planner;
  d.BeginStep(ctx_.profiler);
  const GateGradTarget gate_grad = planner.StartBackward();
  if (d.drives_experts()) {
    experts_->set_cuda_stream(d.device_stream());
    Tensor dx = d.BackwardThroughExperts(dy, gate_grad, [this, &d](int chunk, const Tensor& d_out) {
      ScopedPhase ph(ctx_.profiler, "experts_bwd");
      Tensor d_in = experts_->Backward(d_out, chunk);
      d.SyncIfProfiling();
      return d_in;
    });
    planner.Backward(&dx);
    d.EndStep();
    return dx;
  }
  Tensor d_expert_out = d.CombineBackward(dy, gate_grad);
  Tensor d_expert_in;
  {
    ScopedPhase ph(ctx_.profiler, "experts_bwd");
    experts_->set_cuda_stream(d.device_stream());
    d_expert_in = experts_->Backward(d_expert_out);
    d.SyncIfProfiling();
  }
  Tensor dx = d.DispatchBackward(d_expert_in);
  planner.Backward(&dx);
  d.EndStep();
  return dx;  // d_expert_out, d_expert_in released after EndStep
}

}  // namespace moe
