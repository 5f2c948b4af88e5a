// Topology (core/src/topology.cpp) against hand-worked layouts, and the
// partition property for every layout of world <= 16.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "weft/error.hpp"
#include "weft/topology.hpp"

namespace {

using Groups = std::vector<std::vector<int>>;

weft::ParallelSizes sizes(int tp, int pp, int dp, int ep = 1) {
  weft::ParallelSizes s;
  s.tp = tp;
  s.pp = pp;
  s.dp = dp;
  s.ep = ep;
  return s;
}

// The distinct groups of one kind over all ranks, sorted by first member.
Groups all_groups(int world, const weft::ParallelSizes& s, std::vector<int> weft::Topology::*member) {
  std::set<std::vector<int>> unique;
  for (int r = 0; r < world; ++r) unique.insert(weft::make_topology(world, r, s).*member);
  Groups out(unique.begin(), unique.end());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.front() < b.front(); });
  return out;
}

std::string error_of(int world, const weft::ParallelSizes& s) {
  try {
    weft::make_topology(world, 0, s);
  } catch (const weft::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a weft::Error";
  return "";
}

}  // namespace

// Megatron-LM's documented example (parallel_state.initialize_model_parallel):
// 16 GPUs, tensor 2, pipeline 4, data 2.
TEST(Topology, MegatronSixteenRankExample) {
  const auto s = sizes(2, 4, 2);
  EXPECT_EQ(all_groups(16, s, &weft::Topology::tp_group),
            (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15}}));
  EXPECT_EQ(all_groups(16, s, &weft::Topology::dp_group),
            (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}, {8, 10}, {9, 11}, {12, 14}, {13, 15}}));
  EXPECT_EQ(all_groups(16, s, &weft::Topology::pp_group),
            (Groups{{0, 4, 8, 12}, {1, 5, 9, 13}, {2, 6, 10, 14}, {3, 7, 11, 15}}));

  // Rank 13 = tp 1, dp 0, pp 3: the groups it belongs to, in group-rank order.
  weft::Topology t = weft::make_topology(16, 13, s);
  EXPECT_EQ(t.world, 16);
  EXPECT_EQ(t.rank, 13);
  EXPECT_EQ(t.coords.tp, 1);
  EXPECT_EQ(t.coords.dp, 0);
  EXPECT_EQ(t.coords.pp, 3);
  EXPECT_EQ(t.coords.cp, 0);
  EXPECT_EQ(t.tp_group, (std::vector<int>{12, 13}));
  EXPECT_EQ(t.dp_group, (std::vector<int>{13, 15}));
  EXPECT_EQ(t.pp_group, (std::vector<int>{1, 5, 9, 13}));
  EXPECT_EQ(t.cp_group, (std::vector<int>{13}));
  EXPECT_EQ(t.ep_group, (std::vector<int>{13}));
  EXPECT_EQ(t.edp_group, (std::vector<int>{13, 15}));
  EXPECT_EQ(t.describe(),
            "rank 13: tp 1 pp 3 dp 0 ep 0 | tp group [12,13] pp group [1,5,9,13] dp group [13,15] ep group [13] edp group [13,15]");
}

// world 8, tensor 2, data 4, expert 2: dp index d = ep + 2 * edp.
//   rank: 0 1 | 2 3 | 4 5 | 6 7      tp pairs
//   dp  : 0 0 | 1 1 | 2 2 | 3 3
//   ep  : 0 0 | 1 1 | 0 0 | 1 1      edp: 0 0 | 0 0 | 1 1 | 1 1
// ep groups (same tp, same edp): [0,2] [1,3] [4,6] [5,7]
// edp groups (same tp, same ep):  [0,4] [1,5] [2,6] [3,7]
TEST(Topology, ExpertParallelByHand) {
  const auto s = sizes(2, 1, 4, 2);
  EXPECT_EQ(all_groups(8, s, &weft::Topology::tp_group), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(all_groups(8, s, &weft::Topology::dp_group), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(all_groups(8, s, &weft::Topology::ep_group), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(all_groups(8, s, &weft::Topology::edp_group), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(all_groups(8, s, &weft::Topology::pp_group),
            (Groups{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}}));

  const int want_ep[8] = {0, 0, 1, 1, 0, 0, 1, 1};
  const int want_edp[8] = {0, 0, 0, 0, 1, 1, 1, 1};
  const int want_dp[8] = {0, 0, 1, 1, 2, 2, 3, 3};
  for (int r = 0; r < 8; ++r) {
    weft::Topology t = weft::make_topology(8, r, s);
    EXPECT_EQ(t.coords.tp, r % 2) << r;
    EXPECT_EQ(t.coords.dp, want_dp[r]) << r;
    EXPECT_EQ(t.coords.ep, want_ep[r]) << r;
    EXPECT_EQ(t.coords.edp, want_edp[r]) << r;
    EXPECT_EQ(t.coords.pp, 0) << r;
  }
  weft::Topology t6 = weft::make_topology(8, 6, s);
  EXPECT_EQ(t6.ep_group, (std::vector<int>{4, 6}));
  EXPECT_EQ(t6.edp_group, (std::vector<int>{2, 6}));
  EXPECT_EQ(t6.dp_group, (std::vector<int>{0, 2, 4, 6}));
}

// Every rank is in exactly one group of each kind, at the position its
// coordinate says, and the groups of a kind partition the world.
TEST(Topology, GroupsPartitionTheWorldForAllLayoutsUpTo16) {
  int layouts = 0;
  for (int world = 1; world <= 16; ++world)
    for (int tp = 1; tp <= world; ++tp)
      for (int pp = 1; pp <= world; ++pp) {
        if (world % (tp * pp) != 0) continue;
        int dp = world / (tp * pp);
        for (int ep = 1; ep <= dp; ++ep) {
          if (dp % ep != 0) continue;
          ++layouts;
          const auto s = sizes(tp, pp, dp, ep);
          SCOPED_TRACE("world " + std::to_string(world) + " tp " + std::to_string(tp) + " pp " + std::to_string(pp) +
                       " dp " + std::to_string(dp) + " ep " + std::to_string(ep));
          struct Kind {
            std::vector<int> weft::Topology::*member;
            int size;
          };
          const Kind kinds[] = {{&weft::Topology::tp_group, tp},      {&weft::Topology::pp_group, pp},
                                {&weft::Topology::dp_group, dp},      {&weft::Topology::ep_group, ep},
                                {&weft::Topology::edp_group, dp / ep}, {&weft::Topology::cp_group, 1}};
          std::vector<weft::Topology> topo;
          for (int r = 0; r < world; ++r) topo.push_back(weft::make_topology(world, r, s));
          for (const Kind& kind : kinds) {
            std::map<int, std::vector<int>> owner;  // rank -> its group
            for (int r = 0; r < world; ++r) {
              const std::vector<int>& g = topo[r].*kind.member;
              ASSERT_EQ(static_cast<int>(g.size()), kind.size);
              ASSERT_EQ(std::count(g.begin(), g.end(), r), 1);
              // Every member sees the very same group (same order).
              for (int m : g) {
                ASSERT_GE(m, 0);
                ASSERT_LT(m, world);
                ASSERT_EQ(topo[m].*kind.member, g) << "member " << m << " of rank " << r << "'s group";
              }
              owner[r] = g;
            }
            std::set<std::vector<int>> distinct;
            for (auto& [r, g] : owner) distinct.insert(g);
            ASSERT_EQ(static_cast<int>(distinct.size()) * kind.size, world);  // disjoint cover
          }
          for (int r = 0; r < world; ++r) {
            const weft::RankCoords& c = topo[r].coords;
            // Coordinates are the positions in the groups; Megatron order tp fastest, pp slowest.
            ASSERT_EQ(topo[r].tp_group[c.tp], r);
            ASSERT_EQ(topo[r].pp_group[c.pp], r);
            ASSERT_EQ(topo[r].dp_group[c.dp], r);
            ASSERT_EQ(topo[r].ep_group[c.ep], r);
            ASSERT_EQ(topo[r].edp_group[c.edp], r);
            ASSERT_EQ(r, c.tp + tp * (c.dp + dp * c.pp));
            ASSERT_EQ(c.dp, c.ep + ep * c.edp);
            // The ep and edp groups are both inside the dp group.
            for (int m : topo[r].ep_group) ASSERT_EQ(std::count(topo[r].dp_group.begin(), topo[r].dp_group.end(), m), 1);
            for (int m : topo[r].edp_group) ASSERT_EQ(std::count(topo[r].dp_group.begin(), topo[r].dp_group.end(), m), 1);
          }
        }
      }
  EXPECT_GT(layouts, 100);
}

TEST(Topology, SizesNotMultiplyingToWorld) {
  EXPECT_EQ(error_of(8, sizes(2, 2, 3)), "tensor 2 x pipeline 2 x data 3 = 12 ranks, but world is 8");
  EXPECT_EQ(error_of(16, sizes(2, 4, 1)), "tensor 2 x pipeline 4 x data 1 = 8 ranks, but world is 16");
}

TEST(Topology, ExpertNotDividingData) {
  EXPECT_EQ(error_of(6, sizes(1, 1, 6, 4)), "expert 4 does not divide data 6");
  EXPECT_EQ(error_of(8, sizes(2, 1, 4, 3)), "expert 3 does not divide data 4");
}

TEST(Topology, NonPositiveSizes) {
  EXPECT_EQ(error_of(4, sizes(0, 1, 4)), "parallel sizes must be positive (tensor 0, pipeline 1, data 4, expert 1)");
  EXPECT_EQ(error_of(4, sizes(1, 1, 4, -2)), "parallel sizes must be positive (tensor 1, pipeline 1, data 4, expert -2)");
}
