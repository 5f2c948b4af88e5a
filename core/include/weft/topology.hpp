// Topology: a pure function from (world, rank, sizes) to this rank's
// coordinates and every group it belongs to. Megatron order tp-cp-ep-dp-pp:
// tp varies fastest, pp slowest. Dense params replicate over dp; expert
// params shard over ep (ep divides dp) and replicate over dp/ep.
#pragma once

#include <string>
#include <vector>

namespace weft {

struct ParallelSizes {
  int tp = 1, pp = 1, dp = 1, ep = 1, cp = 1;
  int world() const { return tp * pp * dp * cp; }
};

struct RankCoords {
  int tp = 0, cp = 0, ep = 0, dp = 0, pp = 0;
  int edp = 0;  // index in the expert-data-parallel group (dp / ep ranks)
};

struct Topology {
  ParallelSizes sizes;
  int world = 1;
  int rank = 0;
  RankCoords coords;
  // Global ranks of each group this rank belongs to, in group-rank order.
  std::vector<int> tp_group, pp_group, dp_group, ep_group, edp_group, cp_group;
  std::string describe() const;  // one line: coordinates and groups
};

// Throws weft::Error when sizes do not multiply to world or ep does not divide dp.
Topology make_topology(int world, int rank, const ParallelSizes& sizes);

}  // namespace weft
