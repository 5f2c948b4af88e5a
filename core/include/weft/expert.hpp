// Dispatcher (family expert_parallel: alltoall, allgather): moves a
// microbatch's routed rows between the token side (the rank whose tokens they
// are) and the expert side (the ep rank holding their expert), and back.
//
// Experts split over the ep group in contiguous blocks: ep rank r holds
// experts [r*E/ep, (r+1)*E/ep). Token-side rows are grouped by expert in
// ascending order (so also by destination rank); expert-side rows are grouped
// by local expert, and within an expert by source rank, each source's rows in
// its own order. Letters: R rows, C width, E experts, ep ranks.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "weft/layers.hpp"
#include "weft/options.hpp"
#include "weft/plugin.hpp"

namespace weft {

// Who sends how many rows to which expert, for one exchange (a microbatch of
// one MoE layer; its backward reuses it).
struct DispatchLayout {
  int ep = 1, ep_rank = 0;
  int64_t experts = 0;          // E over all ranks
  std::vector<int64_t> counts;  // [ep, E]: rows ep rank s routes to expert e

  int64_t local_experts() const { return experts / ep; }
  int64_t first_local() const { return ep_rank * local_experts(); }
  int64_t count(int source, int64_t expert) const { return counts[source * experts + expert]; }
  // Rows source `s` routes to the experts of rank `d`.
  int64_t rows_between(int s, int d) const {
    int64_t n = 0;
    for (int64_t e = d * local_experts(); e < (d + 1) * local_experts(); ++e) n += count(s, e);
    return n;
  }
  int64_t token_rows() const { return rows_of_source(ep_rank); }  // R on this rank's token side
  int64_t rows_of_source(int s) const {
    int64_t n = 0;
    for (int64_t e = 0; e < experts; ++e) n += count(s, e);
    return n;
  }
  // [E/ep] rows each local expert receives, summed over sources.
  std::vector<int64_t> local_rows() const {
    std::vector<int64_t> rows(local_experts(), 0);
    for (int s = 0; s < ep; ++s)
      for (int64_t j = 0; j < local_experts(); ++j) rows[j] += count(s, first_local() + j);
    return rows;
  }
  int64_t expert_rows() const {  // R' on this rank's expert side
    int64_t n = 0;
    for (int64_t r : local_rows()) n += r;
    return n;
  }
};

class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  // Collective over the ep group: every rank's rows per expert ([E], this
  // rank's token side) -> the layout of the exchange.
  virtual DispatchLayout plan(const std::vector<int64_t>& rows_per_expert) = 0;
  // Token side [R,C] -> expert side [R',C] (collective).
  virtual Tensor to_experts(const DispatchLayout& layout, const Tensor& rows) = 0;
  // Expert side [R',C] -> token side [R,C], the inverse (collective).
  virtual Tensor to_tokens(const DispatchLayout& layout, const Tensor& rows) = 0;
  virtual int ep_size() const = 0;
  virtual int ep_rank() const = 0;
};

template <>
struct FamilyTraits<Dispatcher> {
  static constexpr const char* kName = "expert_parallel";
  using Factory = std::function<std::unique_ptr<Dispatcher>(const Options&, const ParallelEnv&)>;
};

}  // namespace weft
