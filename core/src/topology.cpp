#include "weft/topology.hpp"

#include "weft/error.hpp"

namespace weft {

namespace {

std::string group_str(const std::vector<int>& g) {
  std::string s = "[";
  for (size_t i = 0; i < g.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(g[i]);
  }
  return s + "]";
}

}  // namespace

std::string Topology::describe() const {
  return "rank " + std::to_string(rank) + ": tp " + std::to_string(coords.tp) + " pp " + std::to_string(coords.pp) +
         " dp " + std::to_string(coords.dp) + " ep " + std::to_string(coords.ep) + " | tp group " +
         group_str(tp_group) + " pp group " + group_str(pp_group) + " dp group " + group_str(dp_group) +
         " ep group " + group_str(ep_group) + " edp group " + group_str(edp_group);
}

Topology make_topology(int world, int rank, const ParallelSizes& s) {
  if (s.tp < 1 || s.pp < 1 || s.dp < 1 || s.ep < 1 || s.cp < 1)
    throw Error("parallel sizes must be positive (tensor " + std::to_string(s.tp) + ", pipeline " +
                std::to_string(s.pp) + ", data " + std::to_string(s.dp) + ", expert " + std::to_string(s.ep) + ")");
  if (static_cast<long long>(s.tp) * s.pp * s.dp * s.cp != world)
    throw Error("tensor " + std::to_string(s.tp) + " x pipeline " + std::to_string(s.pp) + " x data " +
                std::to_string(s.dp) + " = " + std::to_string(s.tp * s.pp * s.dp * s.cp) + " ranks, but world is " +
                std::to_string(world));
  if (s.dp % s.ep != 0)
    throw Error("expert " + std::to_string(s.ep) + " does not divide data " + std::to_string(s.dp));
  WEFT_ASSERT(rank >= 0 && rank < world, "rank outside world");

  // Megatron order tp-cp-ep-dp-pp: rank = tp + TP*(cp + CP*(dp + DP*pp)), and
  // within the dp index ep varies fastest: dp = ep + EP*edp.
  auto rank_of = [&](int tp, int cp, int dp, int pp) { return tp + s.tp * (cp + s.cp * (dp + s.dp * pp)); };
  Topology t;
  t.sizes = s;
  t.world = world;
  t.rank = rank;
  RankCoords& c = t.coords;
  c.tp = rank % s.tp;
  c.cp = (rank / s.tp) % s.cp;
  c.dp = (rank / (s.tp * s.cp)) % s.dp;
  c.pp = rank / (s.tp * s.cp * s.dp);
  c.ep = c.dp % s.ep;
  c.edp = c.dp / s.ep;
  for (int i = 0; i < s.tp; ++i) t.tp_group.push_back(rank_of(i, c.cp, c.dp, c.pp));
  for (int i = 0; i < s.cp; ++i) t.cp_group.push_back(rank_of(c.tp, i, c.dp, c.pp));
  for (int i = 0; i < s.dp; ++i) t.dp_group.push_back(rank_of(c.tp, c.cp, i, c.pp));
  for (int i = 0; i < s.pp; ++i) t.pp_group.push_back(rank_of(c.tp, c.cp, c.dp, i));
  for (int i = 0; i < s.ep; ++i) t.ep_group.push_back(rank_of(c.tp, c.cp, i + s.ep * c.edp, c.pp));
  for (int i = 0; i < s.dp / s.ep; ++i) t.edp_group.push_back(rank_of(c.tp, c.cp, c.ep + s.ep * i, c.pp));
  return t;
}

}  // namespace weft
