// All-to-all on the world, expert and data groups (run on 4 ranks; also valid on 2): every row
// arrives exactly once, at the right place. Each float sent encodes (source world rank,
// destination world rank, index within the block), and the receive buffer starts filled with a
// sentinel and has a guard tail, so a lost, duplicated, misplaced or overflowing row - or a row
// from a rank of the wrong group - fails a check naming it.
#include <gtest/gtest.h>
#include <mpi.h>

#include <climits>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/process_groups.h"

namespace moe {
namespace {

constexpr int kMaxCount = 300;     // floats per (src, dst) block at most
constexpr int kMaxWorld = 16;      // encodings stay exact in float below 2^24
constexpr float kSentinel = -1.0f;
constexpr int kGuard = 17;

int WorldRank() { int r; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
int WorldSize() { int s; MPI_Comm_size(MPI_COMM_WORLD, &s); return s; }

// World rank of group rank j in this rank's group g.
int MemberWorldRank(const ProcessGroupLayout& l, GroupKind g, int j) {
  switch (g) {
    case GroupKind::kWorld: return j;
    case GroupKind::kExpert: return ExpertGroupMemberWorldRank(l, j);
    case GroupKind::kData: return DataGroupMemberWorldRank(l, j);
  }
  return -1;
}

// Deterministic count of the (src, dst) block: differs per ordered pair and per seed, with zeros
// (about one pair in five, always including src == dst for seed 3) mixed in.
int64_t BlockCount(uint32_t seed, int src, int dst) {
  uint32_t h = seed * 2654435761u ^ (src * 40503u + 1) * 2246822519u ^ (dst * 97u + 7) * 3266489917u;
  h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
  if (h % 5 == 0 || (seed == 3 && src == dst)) return 0;
  return 1 + static_cast<int64_t>(h % kMaxCount);
}

float Encode(int src, int dst, int64_t i) {
  return static_cast<float>((src * kMaxWorld + dst) * (kMaxCount + 1) + i);
}

std::string Describe(float v) {
  if (v < 0) return "sentinel (nothing written)";
  const int64_t x = static_cast<int64_t>(v);
  const int64_t pair = x / (kMaxCount + 1);
  return "row " + std::to_string(x % (kMaxCount + 1)) + " from world rank " +
         std::to_string(pair / kMaxWorld) + " to world rank " + std::to_string(pair % kMaxWorld);
}

// One AllToAllV on group g with counts from `count(src_world, dst_world)`; checks every float.
template <typename CountFn>
void ExchangeAndVerify(MpiCommunicator& comm, GroupKind g, CountFn count, const std::string& what) {
  SCOPED_TRACE(what + " on the " + GroupName(g) + " group, world rank " +
               std::to_string(WorldRank()));
  const ProcessGroupLayout& l = comm.layout();
  const int p = comm.Size(g);
  const int me = l.world_rank;
  std::vector<int64_t> send_counts(p), recv_counts(p);
  std::vector<float> send;
  for (int j = 0; j < p; ++j) {
    const int peer = MemberWorldRank(l, g, j);
    send_counts[j] = count(me, peer);
    recv_counts[j] = count(peer, me);
    for (int64_t i = 0; i < send_counts[j]; ++i) send.push_back(Encode(me, peer, i));
  }
  int64_t total_recv = 0;
  for (int64_t c : recv_counts) total_recv += c;
  std::vector<float> recv(total_recv + kGuard, kSentinel);
  comm.AllToAllV(send.empty() ? nullptr : send.data(), send_counts,
                 total_recv == 0 ? nullptr : recv.data(), recv_counts, g);
  int64_t offset = 0, errors = 0;
  for (int j = 0; j < p; ++j) {
    const int peer = MemberWorldRank(l, g, j);
    for (int64_t i = 0; i < recv_counts[j]; ++i, ++offset) {
      const float want = Encode(peer, me, i);
      if (recv[offset] != want && ++errors <= 5)
        ADD_FAILURE() << "recv[" << offset << "] holds " << Describe(recv[offset]) << ", expected "
                      << Describe(want);
    }
  }
  for (int k = 0; k < kGuard; ++k)
    EXPECT_EQ(recv[total_recv + k], kSentinel) << "write past the end of the receive buffer";
  EXPECT_EQ(errors, 0);
}

const GroupKind kGroups[] = {GroupKind::kWorld, GroupKind::kExpert, GroupKind::kData};

std::vector<int> EpSizesForThisWorld() {
  std::vector<int> out;
  for (int ep : {1, 2, 4})
    if (WorldSize() % ep == 0) out.push_back(ep);
  return out;
}

TEST(MpiCommunicator, GroupRanksAndSizes) {
  const int w = WorldRank(), n = WorldSize();
  for (int ep : EpSizesForThisWorld()) {
    MpiCommunicator comm(MPI_COMM_WORLD, ep);
    SCOPED_TRACE("ep_size " + std::to_string(ep));
    EXPECT_EQ(comm.Rank(GroupKind::kWorld), w);
    EXPECT_EQ(comm.Size(GroupKind::kWorld), n);
    EXPECT_EQ(comm.Rank(GroupKind::kExpert), w % ep);
    EXPECT_EQ(comm.Size(GroupKind::kExpert), ep);
    EXPECT_EQ(comm.Rank(GroupKind::kData), w / ep);
    EXPECT_EQ(comm.Size(GroupKind::kData), n / ep);
    // Membership seen by MPI itself: gather world ranks over each group.
    for (GroupKind g : {GroupKind::kExpert, GroupKind::kData}) {
      std::vector<int> members(comm.Size(g));
      MPI_Allgather(&w, 1, MPI_INT, members.data(), 1, MPI_INT, comm.comm(g));
      for (int j = 0; j < comm.Size(g); ++j)
        EXPECT_EQ(members[j], MemberWorldRank(comm.layout(), g, j)) << GroupName(g) << " " << j;
    }
  }
}

TEST(MpiCommunicator, FourRanksEpTwoGroupsAreTheDocumentedOnes) {
  if (WorldSize() != 4) GTEST_SKIP() << "needs 4 ranks";
  MpiCommunicator comm(MPI_COMM_WORLD, 2);
  const int w = WorldRank();
  const int ep_group[4][2] = {{0, 1}, {0, 1}, {2, 3}, {2, 3}};
  const int dp_group[4][2] = {{0, 2}, {1, 3}, {0, 2}, {1, 3}};
  for (int j = 0; j < 2; ++j) {
    EXPECT_EQ(ExpertGroupMemberWorldRank(comm.layout(), j), ep_group[w][j]);
    EXPECT_EQ(DataGroupMemberWorldRank(comm.layout(), j), dp_group[w][j]);
  }
}

TEST(MpiCommunicator, AllToAllVRandomCountsEveryGroupEveryEpSize) {
  for (int ep : EpSizesForThisWorld()) {
    MpiCommunicator comm(MPI_COMM_WORLD, ep);
    for (GroupKind g : kGroups)
      for (uint32_t seed : {1u, 2u, 3u, 4u})
        ExchangeAndVerify(
            comm, g, [seed](int s, int d) { return BlockCount(seed, s, d); },
            "ep_size " + std::to_string(ep) + " seed " + std::to_string(seed));
  }
}

TEST(MpiCommunicator, AllToAllVCountsHaveZerosAndDifferPerPair) {
  // Guards the test itself: the random counts must really exercise zeros and asymmetry.
  int zeros = 0, asymmetric = 0;
  for (uint32_t seed : {1u, 2u, 3u, 4u})
    for (int s = 0; s < 4; ++s)
      for (int d = 0; d < 4; ++d) {
        zeros += BlockCount(seed, s, d) == 0;
        asymmetric += BlockCount(seed, s, d) != BlockCount(seed, d, s);
      }
  EXPECT_GT(zeros, 4);
  EXPECT_GT(asymmetric, 20);
}

TEST(MpiCommunicator, AllToAllVAllCountsZero) {
  for (int ep : EpSizesForThisWorld()) {
    MpiCommunicator comm(MPI_COMM_WORLD, ep);
    for (GroupKind g : kGroups)
      ExchangeAndVerify(comm, g, [](int, int) { return int64_t{0}; }, "all zero");
  }
}

TEST(MpiCommunicator, AllToAllVOneSenderOnly) {
  // Only world rank 1 sends (to everybody, itself included); everybody else sends nothing.
  for (int ep : EpSizesForThisWorld()) {
    MpiCommunicator comm(MPI_COMM_WORLD, ep);
    for (GroupKind g : kGroups)
      ExchangeAndVerify(
          comm, g, [](int s, int d) { return s == 1 ? int64_t{5 + d} : int64_t{0}; },
          "one sender");
  }
}

TEST(MpiCommunicator, AllToAllVPairwiseAlgorithm) {
  // The same exchanges through Isend/Irecv; a lowered message limit cuts blocks into several
  // messages (limit 7 floats: up to 43 per block), as blocks above INT_MAX floats would be.
  for (int ep : EpSizesForThisWorld()) {
    MpiCommunicator comm(MPI_COMM_WORLD, ep);
    comm.set_all_to_all_algorithm(AllToAllAlgorithm::kPairwise);
    for (int64_t limit : {int64_t{INT_MAX}, int64_t{7}, int64_t{64}, int64_t{1000}}) {
      comm.set_max_message_floats(limit);
      for (GroupKind g : kGroups) {
        for (uint32_t seed : {1u, 3u})
          ExchangeAndVerify(
              comm, g, [seed](int s, int d) { return BlockCount(seed, s, d); },
              "pairwise, ep_size " + std::to_string(ep) + " limit " + std::to_string(limit));
        ExchangeAndVerify(comm, g, [](int, int) { return int64_t{0}; }, "pairwise, all zero");
      }
    }
  }
}

TEST(MpiCommunicator, AllToAllVMpiAlltoallvAlgorithm) {
  // The default is the pairwise exchange; the MPI_Ialltoallv one must move the same bytes.
  for (int ep : EpSizesForThisWorld()) {
    MpiCommunicator comm(MPI_COMM_WORLD, ep);
    comm.set_all_to_all_algorithm(AllToAllAlgorithm::kAlltoallv);
    for (GroupKind g : kGroups) {
      for (uint32_t seed : {2u, 5u})
        ExchangeAndVerify(
            comm, g, [seed](int s, int d) { return BlockCount(seed, s, d); },
            "MPI_Ialltoallv, ep_size " + std::to_string(ep));
      ExchangeAndVerify(comm, g, [](int, int) { return int64_t{0}; }, "MPI_Ialltoallv, all zero");
    }
  }
}

TEST(MpiCommunicator, AllToAllVWithCountVerification) {
  for (int ep : EpSizesForThisWorld()) {
    MpiCommunicator comm(MPI_COMM_WORLD, ep);
    comm.set_verify_counts(true);
    for (GroupKind g : kGroups)
      ExchangeAndVerify(comm, g, [](int s, int d) { return BlockCount(4, s, d); }, "verified");
  }
}

TEST(MpiCommunicator, AllToAllInt64EveryGroup) {
  for (int ep : EpSizesForThisWorld()) {
    MpiCommunicator comm(MPI_COMM_WORLD, ep);
    const ProcessGroupLayout& l = comm.layout();
    for (GroupKind g : kGroups) {
      for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{0}}) {
        SCOPED_TRACE(std::string(GroupName(g)) + " ep_size " + std::to_string(ep) + " n " +
                     std::to_string(n));
        const int p = comm.Size(g);
        std::vector<int64_t> send(p * n + 1), recv(p * n + 1, -1);
        // Values above 2^32 catch a 32-bit datatype; the encoding names src, dst and index.
        auto code = [](int src, int dst, int64_t i) {
          return (int64_t{src + 1} << 40) | (int64_t{dst} << 20) | i;
        };
        for (int j = 0; j < p; ++j)
          for (int64_t i = 0; i < n; ++i)
            send[j * n + i] = code(l.world_rank, MemberWorldRank(l, g, j), i);
        comm.AllToAllInt64(send.data(), recv.data(), n, g);
        for (int j = 0; j < p; ++j)
          for (int64_t i = 0; i < n; ++i)
            EXPECT_EQ(recv[j * n + i], code(MemberWorldRank(l, g, j), l.world_rank, i))
                << "from group rank " << j << " index " << i;
        EXPECT_EQ(recv[p * n], -1) << "write past the end";
      }
    }
  }
}

TEST(MpiCommunicator, ManyCommunicatorsCoexist) {
  // Two live communicators with different layouts must not see each other's messages.
  if (WorldSize() % 2 != 0) GTEST_SKIP();
  MpiCommunicator a(MPI_COMM_WORLD, 2), b(MPI_COMM_WORLD, 1);
  ExchangeAndVerify(a, GroupKind::kExpert, [](int s, int d) { return BlockCount(1, s, d); }, "a");
  ExchangeAndVerify(b, GroupKind::kData, [](int s, int d) { return BlockCount(2, s, d); }, "b");
  ExchangeAndVerify(a, GroupKind::kData, [](int s, int d) { return BlockCount(3, s, d); }, "a");
}

}  // namespace
}  // namespace moe
