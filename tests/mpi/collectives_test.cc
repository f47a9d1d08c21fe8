// All-reduce, broadcast and barrier on the world, expert and data groups, for ep_size 1, 2 and 4
// (on 4 ranks; the ones that divide the world on 2). Rank w contributes 2^w-based values, so a
// sum is the bitmask of the ranks that took part and max/min name the extreme member: any rank
// of the wrong group, a missing one or a counted-twice one changes the result.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/process_groups.h"

namespace moe {
namespace {

int WorldRank() { int r; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
int WorldSize() { int s; MPI_Comm_size(MPI_COMM_WORLD, &s); return s; }

int MemberWorldRank(const ProcessGroupLayout& l, GroupKind g, int j) {
  switch (g) {
    case GroupKind::kWorld: return j;
    case GroupKind::kExpert: return ExpertGroupMemberWorldRank(l, j);
    case GroupKind::kData: return DataGroupMemberWorldRank(l, j);
  }
  return -1;
}

std::vector<int> Members(const MpiCommunicator& c, GroupKind g) {
  std::vector<int> m;
  for (int j = 0; j < c.Size(g); ++j) m.push_back(MemberWorldRank(c.layout(), g, j));
  return m;
}

const GroupKind kGroups[] = {GroupKind::kWorld, GroupKind::kExpert, GroupKind::kData};

std::vector<int> EpSizesForThisWorld() {
  std::vector<int> out;
  for (int ep : {1, 2, 4})
    if (WorldSize() % ep == 0) out.push_back(ep);
  return out;
}

std::string Where(int ep, GroupKind g) {
  return std::string(GroupName(g)) + " group, ep_size " + std::to_string(ep) + ", world rank " +
         std::to_string(WorldRank());
}

constexpr int kCount = 37;

TEST(Collectives, AllReduceSumFloatAndDouble) {
  for (int ep : EpSizesForThisWorld()) {
    MpiCommunicator comm(MPI_COMM_WORLD, ep);
    for (GroupKind g : kGroups) {
      SCOPED_TRACE(Where(ep, g));
      const int w = WorldRank();
      std::vector<float> f(kCount);
      std::vector<double> d(kCount);
      for (int i = 0; i < kCount; ++i) {
        f[i] = std::ldexp(1.0f, w) * (i + 1);       // exact in float for these sizes
        d[i] = std::ldexp(1.0, w) * (i + 1) + 0.25;  // the 0.25 counts the members
      }
      comm.AllReduceSum(f.data(), kCount, g);
      comm.AllReduceSum(d.data(), kCount, g);
      double mask = 0;
      for (int m : Members(comm, g)) mask += std::ldexp(1.0, m);
      const double n = comm.Size(g);
      for (int i = 0; i < kCount; ++i) {
        EXPECT_EQ(f[i], static_cast<float>(mask * (i + 1))) << i;
        EXPECT_EQ(d[i], mask * (i + 1) + 0.25 * n) << i;
      }
    }
  }
}

TEST(Collectives, AllReduceMaxMin) {
  for (int ep : EpSizesForThisWorld()) {
    MpiCommunicator comm(MPI_COMM_WORLD, ep);
    for (GroupKind g : kGroups) {
      SCOPED_TRACE(Where(ep, g));
      const int w = WorldRank();
      // Element i peaks on a different member per i (rotating), with negative values mixed in.
      const std::vector<int> members = Members(comm, g);
      std::vector<double> mx(kCount), mn(kCount);
      for (int i = 0; i < kCount; ++i) {
        const double v = (w == (i % WorldSize())) ? 1000.0 + w : -10.0 * w - i;
        mx[i] = v;
        mn[i] = v;
      }
      comm.AllReduceMax(mx.data(), kCount, g);
      comm.AllReduceMin(mn.data(), kCount, g);
      for (int i = 0; i < kCount; ++i) {
        double want_max = -1e300, want_min = 1e300;
        for (int m : members) {
          const double v = (m == (i % WorldSize())) ? 1000.0 + m : -10.0 * m - i;
          want_max = std::max(want_max, v);
          want_min = std::min(want_min, v);
        }
        EXPECT_EQ(mx[i], want_max) << i;
        EXPECT_EQ(mn[i], want_min) << i;
      }
    }
  }
}

TEST(Collectives, ZeroCountIsANoOp) {
  MpiCommunicator comm(MPI_COMM_WORLD, 1);
  for (GroupKind g : kGroups) {
    comm.AllReduceSum(static_cast<float*>(nullptr), 0, g);
    comm.AllReduceMax(static_cast<double*>(nullptr), 0, g);
    comm.Broadcast(nullptr, 0, 0, g);
  }
}

TEST(Collectives, BroadcastFromEveryRoot) {
  for (int ep : EpSizesForThisWorld()) {
    MpiCommunicator comm(MPI_COMM_WORLD, ep);
    for (GroupKind g : kGroups) {
      for (int root = 0; root < comm.Size(g); ++root) {
        SCOPED_TRACE(Where(ep, g) + ", root " + std::to_string(root));
        const int root_world = MemberWorldRank(comm.layout(), g, root);
        std::vector<float> data(kCount + 1, -1.0f);
        if (comm.Rank(g) == root)
          for (int i = 0; i < kCount; ++i) data[i] = 100.0f * root_world + i;
        comm.Broadcast(data.data(), kCount, root, g);
        for (int i = 0; i < kCount; ++i) EXPECT_EQ(data[i], 100.0f * root_world + i) << i;
        EXPECT_EQ(data[kCount], -1.0f) << "write past the end";
      }
    }
  }
}

// Seconds on the host's monotonic clock, which every rank of this test shares (one host).
double MonotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

TEST(Collectives, BarrierWaitsForTheSlowestMemberOnly) {
  // The group's rank 0 arrives 100 ms late: no member may leave the barrier before rank 0 has
  // entered it. Compared on the shared clock, not as each member's own wait: under
  // oversubscription a member can leave the previous barrier late and so wait less than 100 ms.
  for (int ep : EpSizesForThisWorld()) {
    MpiCommunicator comm(MPI_COMM_WORLD, ep);
    for (GroupKind g : kGroups) {
      SCOPED_TRACE(Where(ep, g));
      comm.Barrier(g);
      double entered_late = -1e300;
      if (comm.Rank(g) == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        entered_late = MonotonicSeconds();
      }
      comm.Barrier(g);
      const double left = MonotonicSeconds();
      comm.AllReduceMax(&entered_late, 1, g);
      EXPECT_GE(left, entered_late);
    }
  }
}

}  // namespace
}  // namespace moe
