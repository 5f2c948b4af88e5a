// The expert_parallel dispatchers (parallel/ep) on ep = 2 and 4 ranks as
// threads (comm-local): against a naive regrouping of every rank's rows, the
// expert side holds, for each local expert, every source's rows for it in
// source order; to_tokens inverts to_experts exactly; alltoall and allgather
// give the same bits; alltoall sends exactly the rows that leave the rank.
#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <vector>

#include "cpu_backend.hpp"
#include "dispatchers.hpp"
#include "local_comm.hpp"

using namespace weft;

namespace {

constexpr int64_t C = 3;

// Rows source `s` routes to expert `e`: varied, some zero (a rank may send nothing to an expert).
int64_t rows_for(int s, int64_t e) { return (s * 7 + e * 3) % 5 == 0 ? 0 : (s + 2 * e) % 4 + 1; }

// Value of element c of the i-th row source s routes to expert e: unique per row.
float value(int s, int64_t e, int64_t i, int64_t c) {
  return static_cast<float>(s * 100000 + e * 1000 + i * 10 + c);
}

struct RankResult {
  std::vector<float> expert_side, round_trip, token_side;
  int64_t alltoall_bytes = 0, expected_bytes = 0;
};

std::vector<float> host(Backend& be, const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  if (!v.empty()) be.copy_to_host(v.data(), t);
  return v;
}

std::vector<RankResult> run(int ep, int64_t experts, const char* which) {
  std::vector<RankResult> results(ep);
  std::mutex m;
  LocalLauncher launcher(30.0);
  launcher.run(ep, [&](Communicator& comm, const LaunchInfo&) {
    CpuBackend be(1);
    const int me = comm.rank();
    std::unique_ptr<Dispatcher> d;
    if (std::string(which) == "alltoall")
      d = std::make_unique<AllToAllDispatcher>(&be, &comm);
    else
      d = std::make_unique<AllGatherDispatcher>(&be, &comm);
    std::vector<int64_t> per_expert(experts);
    std::vector<float> rows;
    for (int64_t e = 0; e < experts; ++e) {
      per_expert[e] = rows_for(me, e);
      for (int64_t i = 0; i < per_expert[e]; ++i)
        for (int64_t c = 0; c < C; ++c) rows.push_back(value(me, e, i, c));
    }
    const int64_t r = static_cast<int64_t>(rows.size()) / C;
    Tensor x = be.alloc({r, C}, DType::F32, MemCategory::Activation);
    if (r > 0) be.copy_from_host(x, rows.data());
    DispatchLayout layout = d->plan(per_expert);
    RankResult res;
    const int64_t before = comm.bytes_sent();
    Tensor xe = d->to_experts(layout, x);
    res.alltoall_bytes = comm.bytes_sent() - before;
    for (int peer = 0; peer < ep; ++peer)
      if (peer != me) res.expected_bytes += layout.rows_between(me, peer) * C * 4;
    res.expert_side = host(be, xe);
    // The expert side "computes" y = 2x + rank, so the way back carries new values.
    std::vector<float> y = res.expert_side;
    for (float& v : y) v = 2 * v + static_cast<float>(me);
    Tensor ye = be.alloc({xe.dim(0), C}, DType::F32, MemCategory::Activation);
    if (!y.empty()) be.copy_from_host(ye, y.data());
    res.token_side = host(be, d->to_tokens(layout, ye));
    res.round_trip = host(be, d->to_tokens(layout, d->to_experts(layout, x)));
    EXPECT_EQ(res.round_trip, rows) << which << " rank " << me;
    std::lock_guard<std::mutex> lock(m);
    results[me] = std::move(res);
  });
  return results;
}

}  // namespace

TEST(Dispatchers, MatchNaiveRegroupingInvertExactlyAndAgree) {
  for (int ep : {2, 4}) {
    const int64_t experts = 2 * ep;  // two local experts per rank
    const auto a2a = run(ep, experts, "alltoall");
    const auto ag = run(ep, experts, "allgather");
    for (int d = 0; d < ep; ++d) {
      // Naive: for each local expert, each source's rows for it, in order.
      std::vector<float> expected;
      for (int64_t e = d * 2; e < d * 2 + 2; ++e)
        for (int s = 0; s < ep; ++s)
          for (int64_t i = 0; i < rows_for(s, e); ++i)
            for (int64_t c = 0; c < C; ++c) expected.push_back(value(s, e, i, c));
      EXPECT_EQ(a2a[d].expert_side, expected) << "ep " << ep << " rank " << d;
      EXPECT_EQ(ag[d].expert_side, expected) << "ep " << ep << " rank " << d;
      // Each token-side row comes back from its expert's rank as 2x + that rank.
      std::vector<float> back;
      for (int64_t e = 0; e < experts; ++e)
        for (int64_t i = 0; i < rows_for(d, e); ++i)
          for (int64_t c = 0; c < C; ++c) back.push_back(2 * value(d, e, i, c) + static_cast<float>(e / 2));
      EXPECT_EQ(a2a[d].token_side, back) << "ep " << ep << " rank " << d;
      EXPECT_EQ(ag[d].token_side, back) << "ep " << ep << " rank " << d;
      EXPECT_EQ(a2a[d].alltoall_bytes, a2a[d].expected_bytes) << "ep " << ep << " rank " << d;
      EXPECT_GT(a2a[d].expected_bytes, 0);
    }
  }
}

TEST(Dispatchers, OneRankPassesRowsThrough) {
  CpuBackend be(1);
  AllToAllDispatcher d(&be, nullptr);
  DispatchLayout layout = d.plan({2, 0, 1});
  EXPECT_EQ(layout.local_rows(), (std::vector<int64_t>{2, 0, 1}));
  Tensor x = be.alloc({3, C}, DType::F32, MemCategory::Activation);
  EXPECT_EQ(d.to_experts(layout, x).raw(), x.raw());
  EXPECT_EQ(d.to_tokens(layout, x).raw(), x.raw());
}
