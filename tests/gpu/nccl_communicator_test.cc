// NcclCommunicator on device memory: all-to-all-v with random per-peer counts (zeros included),
// the int64 all-to-all, all-reduce, broadcast and barrier, on the world, expert and data groups
// for ep_size 1, 2 (when the world size is even) and the world size.
//
// Works with whatever world it is started in: 1 rank under plain ctest, P ranks under mpirun
// (several ranks may share one GPU: the tests bind with allow_shared_gpu, see
// BindDeviceForRank). Without a GPU every test reports SKIPPED before touching MPI or NCCL.
// MPI is initialised lazily by the first test that runs, and finalised at exit only if these
// tests initialised it. Every rank runs the same collectives in the same order whatever it finds;
// results are checked only after the last collective of a test, so a failure never leaves a peer
// waiting.
//
//   mpirun -np 4 moe_gpu_tests --gtest_filter='NcclCommunicator.*'
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/nccl/nccl_communicator.h"
#include "comm/process_groups.h"
#include "core/kernels/cuda/cuda_check.h"
#include "tests/gpu/gpu_test_util.h"

namespace moe {
namespace {

// ---- the process-wide MPI/NCCL state, created on first use, torn down once at exit ----

struct Communicators {
  std::unique_ptr<MpiCommunicator> mpi;
  std::unique_ptr<NcclCommunicator> nccl;
};

struct State {
  bool initialised_mpi = false;  // these tests called MPI_Init, so they call MPI_Finalize
  cudaStream_t stream = nullptr;
  std::map<int, Communicators> by_ep_size;
};

State& GetState() {
  static State* s = new State;  // never destroyed: TearDown empties it before MPI_Finalize
  return *s;
}

void EnsureMpiAndDevice() {
  State& s = GetState();
  if (s.stream != nullptr) return;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SINGLE, &provided);
    s.initialised_mpi = true;
  }
  // Tests may run several ranks on one GPU; with one rank per GPU this changes nothing.
  BindDeviceForRank(MPI_COMM_WORLD, /*allow_shared_gpu=*/true);
  CUDA_CHECK(cudaStreamCreate(&s.stream));
}

int WorldSize() {
  int w = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  return w;
}

// ep_size 1, 2 if the world is even, and the world size.
std::vector<int> EpSizes() {
  const int w = WorldSize();
  std::vector<int> sizes = {1};
  if (w % 2 == 0) sizes.push_back(2);
  if (w > 2) sizes.push_back(w);
  return sizes;
}

NcclCommunicator& Comm(int ep_size) {
  State& s = GetState();
  Communicators& c = s.by_ep_size[ep_size];
  if (!c.nccl) {
    c.mpi = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, ep_size);
    c.nccl = std::make_unique<NcclCommunicator>(*c.mpi, s.stream);
  }
  return *c.nccl;
}

class MpiNcclEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    State& s = GetState();
    s.by_ep_size.clear();  // NCCL communicators, then the MPI ones: before MPI_Finalize
    if (s.stream != nullptr) {
      CUDA_CHECK(cudaStreamDestroy(s.stream));
      s.stream = nullptr;
    }
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (s.initialised_mpi && !finalized) MPI_Finalize();
  }
};

::testing::Environment* const kMpiNcclEnvironment =
    ::testing::AddGlobalTestEnvironment(new MpiNcclEnvironment);

// ---- helpers ----

constexpr GroupKind kGroups[] = {GroupKind::kWorld, GroupKind::kExpert, GroupKind::kData};

// World rank of the member at group rank j of this rank's group g.
int MemberWorldRank(const ProcessGroupLayout& l, GroupKind g, int j) {
  switch (g) {
    case GroupKind::kWorld: return j;
    case GroupKind::kExpert: return ExpertGroupMemberWorldRank(l, j);
    case GroupKind::kData: return DataGroupMemberWorldRank(l, j);
  }
  return -1;
}

template <typename T>
struct TypedDeviceBuffer {
  explicit TypedDeviceBuffer(size_t n) : n(n) {
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), (n ? n : 1) * sizeof(T)));
  }
  ~TypedDeviceBuffer() { cudaFree(p); }
  void Upload(const std::vector<T>& v) {
    CUDA_CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> Download() const {
    std::vector<T> v(n);
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
  T* p = nullptr;
  size_t n;
};

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Floats src -> dst in case `seed`: both sides compute it, so no counts are exchanged.
//   seed 0: nothing moves at all; seed 1: rank 0 sends nothing and rank P-1 receives nothing;
//   otherwise random in [0, 3000) with about a quarter exactly zero.
constexpr int64_t kMaxCount = 4096;  // > any count; value encoding below relies on it
int64_t PairCount(int seed, GroupKind g, int src, int dst, int p) {
  if (seed == 0) return 0;
  if (seed == 1 && (src == 0 || dst == p - 1)) return 0;
  const uint64_t h = SplitMix(static_cast<uint64_t>(seed) * 1000003u +
                              static_cast<uint64_t>(g) * 10007u + src * 101u + dst);
  return h % 4 == 0 ? 0 : static_cast<int64_t>((h >> 8) % 3000);
}

// Element i of the block src -> dst, exact in float while (P*P*kMaxCount) <= 2^24.
float Encode(int src, int dst, int64_t i, int p) {
  return static_cast<float>((static_cast<int64_t>(src) * p + dst) * kMaxCount + i);
}

// ---- tests ----

TEST(NcclCommunicator, RanksAndSizesMatchMpi) {
  SKIP_WITHOUT_GPU();
  EnsureMpiAndDevice();
  for (int ep : EpSizes()) {
    NcclCommunicator& c = Comm(ep);
    const MpiCommunicator& mpi = *GetState().by_ep_size[ep].mpi;
    for (GroupKind g : kGroups) {
      EXPECT_EQ(c.Rank(g), mpi.Rank(g)) << GroupName(g) << " ep_size " << ep;
      EXPECT_EQ(c.Size(g), mpi.Size(g)) << GroupName(g) << " ep_size " << ep;
      EXPECT_NE(c.nccl_comm(g), nullptr);
    }
    EXPECT_EQ(c.Size(GroupKind::kExpert), ep);
    EXPECT_EQ(c.stream(), GetState().stream);
  }
}

TEST(NcclCommunicator, AllToAllVRandomCountsWithZerosMovesEveryElementOnce) {
  SKIP_WITHOUT_GPU();
  EnsureMpiAndDevice();
  constexpr size_t kTail = 17;  // poisoned floats past the receive blocks: must stay untouched
  for (int ep : EpSizes()) {
    NcclCommunicator& c = Comm(ep);
    for (GroupKind g : kGroups) {
      const int p = c.Size(g), me = c.Rank(g);
      ASSERT_LE(p, 32) << "value encoding is exact in float only up to 32 ranks";  // same on all
      for (int seed = 0; seed < 5; ++seed) {
        SCOPED_TRACE(std::string(GroupName(g)) + " ep_size " + std::to_string(ep) + " seed " +
                     std::to_string(seed));
        std::vector<int64_t> send_counts(p), recv_counts(p);
        std::vector<float> send;
        for (int d = 0; d < p; ++d) {
          send_counts[d] = PairCount(seed, g, me, d, p);
          recv_counts[d] = PairCount(seed, g, d, me, p);
          for (int64_t i = 0; i < send_counts[d]; ++i) send.push_back(Encode(me, d, i, p));
        }
        int64_t recv_total = 0;
        for (int64_t n : recv_counts) recv_total += n;
        DeviceBuffer dsend(send.size()), drecv(recv_total + kTail);
        if (!send.empty()) dsend.Upload(send);
        drecv.Poison();
        c.set_verify_counts(seed == 2);  // also exercise the MPI count check once
        c.AllToAllV(dsend.p, send_counts, drecv.p, recv_counts, g);
        c.set_verify_counts(false);
        const std::vector<float> got = drecv.Download();
        int64_t wrong = 0, at = 0;
        std::string first;
        for (int s = 0; s < p; ++s)
          for (int64_t i = 0; i < recv_counts[s]; ++i, ++at)
            if (!(got[at] == Encode(s, me, i, p)) && wrong++ == 0)
              first = "from rank " + std::to_string(s) + " element " + std::to_string(i) +
                      ": got " + std::to_string(got[at]) + " want " +
                      std::to_string(Encode(s, me, i, p));
        for (size_t t = 0; t < kTail; ++t)
          if (!std::isnan(got[recv_total + t]) && wrong++ == 0)
            first = "wrote past the end, at tail element " + std::to_string(t);
        EXPECT_EQ(wrong, 0) << "rank " << me << " of " << p << ", first: " << first;
      }
    }
  }
}

TEST(NcclCommunicator, AllToAllInt64MovesEveryValue) {
  SKIP_WITHOUT_GPU();
  EnsureMpiAndDevice();
  for (int ep : EpSizes()) {
    NcclCommunicator& c = Comm(ep);
    for (GroupKind g : kGroups) {
      const int p = c.Size(g), me = c.Rank(g);
      for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{1000}}) {
        SCOPED_TRACE(std::string(GroupName(g)) + " ep_size " + std::to_string(ep) +
                     " count_per_peer " + std::to_string(n));
        // Values above 2^53: a trip through double would lose them.
        auto value = [&](int src, int dst, int64_t i) {
          return (int64_t{1} << 60) + ((static_cast<int64_t>(src) * p + dst) << 20) + i;
        };
        std::vector<int64_t> send(p * n);
        for (int d = 0; d < p; ++d)
          for (int64_t i = 0; i < n; ++i) send[d * n + i] = value(me, d, i);
        TypedDeviceBuffer<int64_t> dsend(send.size()), drecv(p * n + 3);
        if (!send.empty()) dsend.Upload(send);
        drecv.Upload(std::vector<int64_t>(drecv.n, std::numeric_limits<int64_t>::min()));
        c.AllToAllInt64(dsend.p, drecv.p, n, g);
        const std::vector<int64_t> got = drecv.Download();
        int64_t wrong = 0;
        for (int s = 0; s < p; ++s)
          for (int64_t i = 0; i < n; ++i) wrong += got[s * n + i] != value(s, me, i);
        for (size_t t = p * n; t < got.size(); ++t)
          wrong += got[t] != std::numeric_limits<int64_t>::min();
        EXPECT_EQ(wrong, 0) << "rank " << me << " of " << p;
      }
    }
  }
}

TEST(NcclCommunicator, AllReduceSumMaxMinOnEachGroup) {
  SKIP_WITHOUT_GPU();
  EnsureMpiAndDevice();
  const int64_t n = 1237;  // not a multiple of any vector width
  for (int ep : EpSizes()) {
    NcclCommunicator& c = Comm(ep);
    const ProcessGroupLayout& l = c.layout();
    for (GroupKind g : kGroups) {
      SCOPED_TRACE(std::string(GroupName(g)) + " ep_size " + std::to_string(ep));
      const int p = c.Size(g);
      // Small integers and quarters: every sum is exact, whatever NCCL's order.
      auto fval = [](int w, int64_t i) { return static_cast<float>((w + 1) * (i % 97 + 1)); };
      auto dval = [](int w, int64_t i) { return 1.25 * (w + 1) + static_cast<double>(i % 31) * (w % 3 - 1); };
      std::vector<float> f(n);
      std::vector<double> d(n);
      for (int64_t i = 0; i < n; ++i) {
        f[i] = fval(l.world_rank, i);
        d[i] = dval(l.world_rank, i);
      }
      DeviceBuffer df(n);
      TypedDeviceBuffer<double> dsum(n), dmax(n), dmin(n);
      df.Upload(f);
      dsum.Upload(d);
      dmax.Upload(d);
      dmin.Upload(d);
      c.AllReduceSum(df.p, n, g);
      c.AllReduceSum(dsum.p, n, g);
      c.AllReduceMax(dmax.p, n, g);
      c.AllReduceMin(dmin.p, n, g);
      c.AllReduceSum(df.p, 0, g);  // empty: a no-op
      const std::vector<float> gf = df.Download();
      const std::vector<double> gs = dsum.Download(), gmax = dmax.Download(), gmin = dmin.Download();
      int64_t wrong = 0;
      for (int64_t i = 0; i < n; ++i) {
        float wf = 0;
        double ws = 0, wmax = -1e300, wmin = 1e300;
        for (int j = 0; j < p; ++j) {
          const int w = MemberWorldRank(l, g, j);
          wf += fval(w, i);
          ws += dval(w, i);
          wmax = std::max(wmax, dval(w, i));
          wmin = std::min(wmin, dval(w, i));
        }
        wrong += gf[i] != wf;
        wrong += gs[i] != ws;
        wrong += gmax[i] != wmax;
        wrong += gmin[i] != wmin;
      }
      EXPECT_EQ(wrong, 0) << "rank " << c.Rank(g) << " of " << p;
    }
  }
}

TEST(NcclCommunicator, BroadcastFromFirstAndLastRankOfEachGroup) {
  SKIP_WITHOUT_GPU();
  EnsureMpiAndDevice();
  const int64_t n = 3001;
  for (int ep : EpSizes()) {
    NcclCommunicator& c = Comm(ep);
    const ProcessGroupLayout& l = c.layout();
    for (GroupKind g : kGroups) {
      const int p = c.Size(g);
      for (int root : {0, p - 1}) {
        SCOPED_TRACE(std::string(GroupName(g)) + " ep_size " + std::to_string(ep) + " root " +
                     std::to_string(root));
        auto val = [](int w, int64_t i) { return static_cast<float>(w * 10000 + i); };
        std::vector<float> v(n);
        for (int64_t i = 0; i < n; ++i) v[i] = val(l.world_rank, i);
        DeviceBuffer buf(n);
        buf.Upload(v);
        c.Broadcast(buf.p, n, root, g);
        const std::vector<float> got = buf.Download();
        const int root_world = MemberWorldRank(l, g, root);
        int64_t wrong = 0;
        for (int64_t i = 0; i < n; ++i) wrong += got[i] != val(root_world, i);
        EXPECT_EQ(wrong, 0) << "rank " << c.Rank(g) << " of " << p;
      }
    }
  }
}

TEST(NcclCommunicator, BarrierOnEachGroupReturns) {
  SKIP_WITHOUT_GPU();
  EnsureMpiAndDevice();
  for (int ep : EpSizes()) {
    NcclCommunicator& c = Comm(ep);
    for (GroupKind g : kGroups) c.Barrier(g);
    // Barrier synchronises the stream: nothing may be left pending on it.
    EXPECT_EQ(cudaStreamQuery(c.stream()), cudaSuccess);
  }
}

}  // namespace
}  // namespace moe
