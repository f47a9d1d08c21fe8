#include "launcher/comm_sweep_measure.h"

#include <glog/logging.h>

#include <unistd.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "comm/mpi_check.h"
#include "comm/mpi_communicator.h"
#include "core/backend.h"
#include "core/profiler.h"
#include "core/rng.h"
#include "launcher/a2a_profile.h"
#include "launcher/comm_model.h"
#include "launcher/device_comm.h"
#include "models/moe/moe_layer.h"

namespace moe {

namespace {

const char* const kExchangePhases[] = {"a2a_dispatch", "a2a_combine", "a2a_combine_bwd",
                                       "a2a_dispatch_bwd"};
const char kLayerPhase[] = "fwd_bwd";

// Drawn on the host (the same values on either device), then copied to `device`.
Tensor RandomRows(int64_t rows, int dim, uint64_t seed, Device device) {
  Tensor x({rows, dim});
  CounterRng rng(seed);
  for (int64_t i = 0; i < x.numel(); ++i) x.at(i) = rng.Normal(i);
  if (device == Device::kCPU) return x;
  Tensor on_device = BackendFor(device).NewTensor(x.shape());
  on_device.CopyFrom(x);
  return on_device;
}

// Device work is queued, not done, when Backward returns: a one-float host read of its result
// waits for it, so that the step's time covers the layer's kernels too.
void AwaitResult(const Tensor& dx) {
  if (dx.device() == Device::kCPU || dx.empty()) return;
  float first = 0.f;
  BackendFor(dx.device()).Copy(&first, Device::kCPU, dx.data(), dx.device(), sizeof(float));
}

MoeLayerOptions LayerOptions(const SweepPoint& p) {
  MoeLayerOptions o;
  o.dim = p.dim;
  o.hidden = p.hidden;
  o.num_experts = p.experts;
  o.top_k = p.top_k;
  o.group_tokens = p.group_tokens;
  o.capacity_factor_train = p.capacity;
  return o;
}

// Warm-up steps, then timed ones with `prof` attached; ranks start each step together.
void RunSteps(MoeLayer& layer, MpiCommunicator& comm, const SweepPoint& p,
              const MeasureOptions& opt, Profiler* prof) {
  const int rank = comm.Rank(GroupKind::kWorld), world = comm.Size(GroupKind::kWorld);
  const int64_t groups = p.tokens / p.group_tokens;
  const Tensor x = RandomRows(p.tokens, p.dim, 2 * rank + 1, opt.device);
  const Tensor dy = RandomRows(p.tokens, p.dim, 2 * rank + 2, opt.device);
  MoeStepContext ctx;
  ctx.first_global_group = rank * groups;
  ctx.num_global_groups = world * groups;
  for (int it = 0; it < opt.warmup + opt.iters; ++it) {
    const bool timed = it >= opt.warmup;
    ctx.step = it;
    ctx.profiler = timed ? prof : nullptr;
    layer.SetStepContext(ctx);
    comm.Barrier(GroupKind::kWorld);
    ScopedPhase whole(timed ? prof : nullptr, kLayerPhase);
    layer.Forward(x);
    AwaitResult(layer.Backward(dy));
  }
}

double MeanOverRanks(MpiCommunicator& comm, double v) {
  comm.AllReduceSum(&v, 1, GroupKind::kWorld);
  return v / comm.Size(GroupKind::kWorld);
}

// Per exchange, mean over ranks: the time spent waiting for the EP group's last rank (skew) and
// the rest (transfer), as the end-of-run profile splits them; `calls_per_step` per rank.
void SplitSkewTransfer(const Profiler& prof, int steps, double calls_per_step,
                       MpiCommunicator& comm, SweepRow* r) {
  const AllToAllProfile profile = ProfileAllToAlls(prof, steps, &comm);
  double ms[2] = {0, 0};  // per step, summed over the phases (world rank 0 has the rows)
  for (const AllToAllRow& row : profile.rows) {
    ms[0] += row.skew_ms;
    ms[1] += row.transfer_ms;
  }
  MPI_CHECK(MPI_Bcast(ms, 2, MPI_DOUBLE, 0, comm.comm(GroupKind::kWorld)));
  r->skew_us = 1e3 * ms[0] / calls_per_step;
  r->transfer_us = 1e3 * ms[1] / calls_per_step;
}

// This rank's host as MPI sees it (the shared-memory node): how many ranks of `world` it holds,
// and this rank's place among them. Collective over `world`.
struct HostPlace {
  int ranks = 0, rank = 0;
};
HostPlace PlaceOnHost(MPI_Comm world) {
  MPI_Comm local = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local));
  HostPlace h;
  MPI_CHECK(MPI_Comm_size(local, &h.ranks));
  MPI_CHECK(MPI_Comm_rank(local, &h.rank));
  MPI_CHECK(MPI_Comm_free(&local));
  return h;
}

}  // namespace

NodeLayout DetectNodeLayout(MPI_Comm world, int ranks_per_node_flag) {
  int world_size = 0;
  MPI_CHECK(MPI_Comm_size(world, &world_size));
  NodeLayout l;
  if (ranks_per_node_flag > 0) {
    l.ranks_per_node = ranks_per_node_flag;
    l.nodes = world_size / ranks_per_node_flag;
    return l;
  }
  const HostPlace host = PlaceOnHost(world);
  const int local_size = host.ranks;
  int min_size = 0, max_size = 0, leader = host.rank == 0 ? 1 : 0;
  MPI_CHECK(MPI_Allreduce(&local_size, &min_size, 1, MPI_INT, MPI_MIN, world));
  MPI_CHECK(MPI_Allreduce(&local_size, &max_size, 1, MPI_INT, MPI_MAX, world));
  MPI_CHECK(MPI_Allreduce(&leader, &l.nodes, 1, MPI_INT, MPI_SUM, world));
  l.ranks_per_node = min_size;
  l.uneven = min_size != max_size;
  return l;
}

HostCrowding MostCrowdedHost(MPI_Comm world) {
  const int ranks = PlaceOnHost(world).ranks;
  const int cores = static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  // MAXLOC over the surplus picks one host's (ranks, cores) pair, consistently on every rank.
  struct {
    int surplus, rank;
  } mine{ranks - cores, 0}, worst{};
  MPI_CHECK(MPI_Comm_rank(world, &mine.rank));
  MPI_CHECK(MPI_Allreduce(&mine, &worst, 1, MPI_2INT, MPI_MAXLOC, world));
  int pair[2] = {ranks, cores};
  MPI_CHECK(MPI_Bcast(pair, 2, MPI_INT, worst.rank, world));
  return HostCrowding{pair[0], pair[1]};
}

SweepRow MeasurePoint(const SweepPoint& p, const NodeLayout& layout,
                      const MeasureOptions& opt) {
  MpiCommunicator comm(MPI_COMM_WORLD, p.ep);
  // Declared after comm, so destroyed before it (NCCL mirrors and uses comm's MPI groups).
  std::unique_ptr<DeviceComm> device_comm;
  Communicator* layer_comm = &comm;
  if (opt.device == Device::kCUDA) {
    device_comm = MakeDeviceComm(comm);
    layer_comm = device_comm->get();
  }
  MoeLayer layer("comm_bench", LayerOptions(p), layer_comm, /*seed=*/1);
  if (opt.device != Device::kCPU) layer.MoveTo(opt.device);
  DispatcherOptions d;
  d.kind = p.dispatcher;
  d.ranks_per_node = opt.ranks_per_node;
  d.pipeline_chunks = opt.pipeline_chunks;
  layer.SetDispatcherOptions(d);
  Profiler prof;
  prof.set_common_clock(opt.clock.offset_us, opt.clock.error_us);
  RunSteps(layer, comm, p, opt, &prof);

  const auto& stats = prof.Stats();
  double exchange_s = 0, bytes = 0;
  int64_t calls = 0;
  for (const char* phase : kExchangePhases) {
    auto it = stats.find(phase);
    CHECK(it != stats.end()) << "moe_comm_bench: the layer recorded no phase " << phase;
    exchange_s += it->second.total_seconds;
    bytes += static_cast<double>(it->second.bytes);
    calls += it->second.calls;
  }
  SweepRow r;
  r.dispatcher = DispatcherKindName(p.dispatcher);
  r.tokens = p.tokens;
  r.dim = p.dim;
  r.hidden = p.hidden;
  r.experts = p.experts;
  r.top_k = p.top_k;
  r.capacity = p.capacity;
  r.ep = p.ep;
  r.ranks_per_node = layout.ranks_per_node;
  r.nodes = layout.nodes;
  r.bytes = static_cast<int64_t>(MeanOverRanks(comm, bytes / calls) + 0.5);
  const double per_exchange_s = MeanOverRanks(comm, exchange_s / calls);
  r.exchange_us = 1e6 * per_exchange_s;
  r.algbw_gbs = AlgBandwidthGBs(r.bytes, per_exchange_s);
  r.busbw_gbs = BusBandwidthGBs(r.algbw_gbs, p.ep);
  r.a2a_ms = 1e3 * MeanOverRanks(comm, exchange_s / opt.iters);
  r.layer_ms = 1e3 * MeanOverRanks(comm, stats.at(kLayerPhase).total_seconds / opt.iters);
  r.share = r.a2a_ms / r.layer_ms;
  SplitSkewTransfer(prof, opt.iters, MeanOverRanks(comm, static_cast<double>(calls) / opt.iters),
                    comm, &r);
  return r;
}

}  // namespace moe
