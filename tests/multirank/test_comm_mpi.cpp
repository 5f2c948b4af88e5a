// comm-mpi under mpirun (run by test_mpirun.py with -np 2 and -np 4): every
// operation of the Communicator interface, its results and the bytes it
// counts (the same ring volumes as comm-local). One MpiLauncher run hosts all
// the tests (MPI starts once per process); only rank 0 prints gtest's report.
//
//   mpirun -np N test_comm_mpi                       the gtest suite
//   mpirun -np N test_comm_mpi --fail=throw|return    rank 1 throws / returns
//       early while the others enter an all_reduce: each of them must stop
//       with an error naming all_reduce and missing rank 1 (the launcher
//       prints it and ends the job with MPI_Abort), never hang.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>

#include "mpi_comm.hpp"
#include "weft/half.hpp"

namespace {

weft::Communicator* g_comm = nullptr;
weft::LaunchInfo g_info;

template <class T>
weft::Tensor host(std::vector<T>& v, weft::DType dtype) {
  auto storage = std::make_shared<weft::Storage>();
  storage->data = v.data();
  storage->bytes = v.size() * sizeof(T);
  return weft::Tensor(storage, 0, {static_cast<int64_t>(v.size())}, dtype);
}
weft::Tensor host(std::vector<float>& v) { return host(v, weft::DType::F32); }
weft::Tensor host(std::vector<int64_t>& v) { return host(v, weft::DType::I64); }

// (n-1)/n of `bytes`: what one rank sends of a ring pass over them.
int64_t share(int n, int64_t bytes) { return static_cast<int64_t>(static_cast<double>(bytes) * (n - 1) / n); }

TEST(CommMpi, LaunchInfoComesFromMpirun) {
  auto& c = *g_comm;
  EXPECT_EQ(g_info.world, c.size());
  EXPECT_EQ(g_info.rank, c.rank());
  EXPECT_TRUE(g_info.external);
  EXPECT_GE(g_info.local_size, 1);
  EXPECT_LT(g_info.local_rank, g_info.local_size);
  weft::LaunchInfo env = weft::mpi::detect_launch_env();
  EXPECT_EQ(env.world, c.size());
  EXPECT_EQ(env.rank, c.rank());
  EXPECT_EQ(c.name(), "mpi");
}

TEST(CommMpi, AllReduceSumMaxMinAndBytes) {
  auto& c = *g_comm;
  int n = c.size(), r = c.rank();
  std::vector<float> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(r + 1) * (i % 7);
  int64_t before = c.bytes_sent();
  c.all_reduce(host(v), weft::ReduceOp::Sum)->wait();
  EXPECT_EQ(c.bytes_sent() - before, share(n, 2 * 4000));
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], static_cast<float>(n * (n + 1) / 2) * (i % 7)) << i;
  std::vector<int64_t> m = {r, -r};
  c.all_reduce(host(m), weft::ReduceOp::Max)->wait();
  EXPECT_EQ(m[0], n - 1);
  EXPECT_EQ(m[1], 0);
  std::vector<float> lo = {static_cast<float>(r)};
  c.all_reduce(host(lo), weft::ReduceOp::Min)->wait();
  EXPECT_EQ(lo[0], 0.0f);
}

// bf16 and f16 buffers reduce in fp32 (small integers: every partial sum is exact).
TEST(CommMpi, SixteenBitFloatsReduce) {
  auto& c = *g_comm;
  int n = c.size(), r = c.rank();
  for (weft::DType dt : {weft::DType::BF16, weft::DType::F16}) {
    const bool bf16 = dt == weft::DType::BF16;
    auto narrow = [&](float x) { return bf16 ? weft::float_to_bf16(x) : weft::float_to_f16(x); };
    auto widen = [&](uint16_t h) { return bf16 ? weft::bf16_to_float(h) : weft::f16_to_float(h); };
    std::vector<uint16_t> v(301);
    for (size_t i = 0; i < v.size(); ++i) v[i] = narrow(static_cast<float>((r + 1) * (i % 5)));
    int64_t before = c.bytes_sent();
    c.all_reduce(host(v, dt), weft::ReduceOp::Sum)->wait();
    EXPECT_EQ(c.bytes_sent() - before, share(n, 2 * 602));
    for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(widen(v[i]), static_cast<float>(n * (n + 1) / 2 * (i % 5))) << i;
    std::vector<uint16_t> m = {narrow(static_cast<float>(r)), narrow(-static_cast<float>(r))};
    c.all_reduce(host(m, dt), weft::ReduceOp::Max)->wait();
    EXPECT_EQ(widen(m[0]), static_cast<float>(n - 1));
    EXPECT_EQ(widen(m[1]), 0.0f);
    const int k = 33;
    std::vector<uint16_t> in(n * k), out(k);
    for (int i = 0; i < n * k; ++i) in[i] = narrow(static_cast<float>(i % 9 + r));
    c.reduce_scatter(host(in, dt), host(out, dt), weft::ReduceOp::Sum)->wait();
    for (int i = 0; i < k; ++i)
      ASSERT_EQ(widen(out[i]), static_cast<float>(n * ((r * k + i) % 9) + n * (n - 1) / 2)) << i;
  }
}

TEST(CommMpi, SeveralOperationsInFlightWaitedOutOfOrder) {
  auto& c = *g_comm;
  int n = c.size();
  std::vector<std::vector<float>> bufs(5, std::vector<float>(257));
  std::vector<std::unique_ptr<weft::Work>> works;
  for (size_t b = 0; b < bufs.size(); ++b) {
    std::fill(bufs[b].begin(), bufs[b].end(), static_cast<float>(b + 1));
    works.push_back(c.all_reduce(host(bufs[b]), weft::ReduceOp::Sum));
  }
  for (size_t b = works.size(); b-- > 0;) works[b]->wait();
  for (size_t b = 0; b < bufs.size(); ++b) {
    EXPECT_TRUE(works[b]->done());
    EXPECT_EQ(bufs[b][256], static_cast<float>(n * (b + 1)));
  }
}

TEST(CommMpi, ReduceScatterAndAllGatherMoveTheRingVolume) {
  auto& c = *g_comm;
  int n = c.size(), r = c.rank();
  const int k = 100;
  std::vector<float> in(n * k), out(k);
  for (int i = 0; i < n * k; ++i) in[i] = static_cast<float>(i + r);
  int64_t before = c.bytes_sent();
  c.reduce_scatter(host(in), host(out), weft::ReduceOp::Sum)->wait();
  EXPECT_EQ(c.bytes_sent() - before, share(n, 4 * n * k));  // (n-1)/n of the input
  for (int i = 0; i < k; ++i) ASSERT_EQ(out[i], static_cast<float>(n * (r * k + i) + n * (n - 1) / 2)) << i;
  std::vector<float> mine(k, static_cast<float>(r)), all(n * k);
  before = c.bytes_sent();
  c.all_gather(host(mine), host(all))->wait();
  EXPECT_EQ(c.bytes_sent() - before, share(n, 4 * n * k));
  for (int i = 0; i < n * k; ++i) ASSERT_EQ(all[i], static_cast<float>(i / k)) << i;
}

TEST(CommMpi, AllToAllAndAllToAllV) {
  auto& c = *g_comm;
  int n = c.size(), r = c.rank();
  std::vector<int64_t> in(n * 3), out(n * 3);
  for (int j = 0; j < n; ++j)
    for (int e = 0; e < 3; ++e) in[j * 3 + e] = 100 * r + 10 * j + e;  // block j goes to rank j
  int64_t before = c.bytes_sent();
  c.all_to_all(host(in), host(out))->wait();
  EXPECT_EQ(c.bytes_sent() - before, static_cast<int64_t>(8 * 3 * (n - 1)));
  for (int i = 0; i < n; ++i)
    for (int e = 0; e < 3; ++e) EXPECT_EQ(out[i * 3 + e], 100 * i + 10 * r + e);
  // Rank r sends j + 1 elements to rank j, so it receives r + 1 from everyone.
  std::vector<int64_t> in_counts(n), out_counts(n, r + 1);
  std::vector<int64_t> vin, vout(n * (r + 1));
  for (int j = 0; j < n; ++j) {
    in_counts[j] = j + 1;
    for (int e = 0; e <= j; ++e) vin.push_back(1000 * r + j);
  }
  c.all_to_all_v(host(vin), in_counts, host(vout), out_counts)->wait();
  for (int src = 0; src < n; ++src)
    for (int e = 0; e <= r; ++e) EXPECT_EQ(vout[src * (r + 1) + e], 1000 * src + r);
}

TEST(CommMpi, SendRecvAroundTheRingAndBroadcast) {
  auto& c = *g_comm;
  int n = c.size(), r = c.rank();
  std::vector<float> mine(64, static_cast<float>(r)), theirs(64, -1.0f);
  int64_t before = c.bytes_sent();
  auto rx = c.recv(host(theirs), (r + n - 1) % n, 5);
  auto tx = c.send(host(mine), (r + 1) % n, 5);
  tx->wait();
  rx->wait();
  EXPECT_EQ(c.bytes_sent() - before, 256);
  EXPECT_EQ(theirs[63], static_cast<float>((r + n - 1) % n));
  std::vector<float> b(10, r == n - 1 ? 42.0f : 0.0f);
  before = c.bytes_sent();
  c.broadcast(host(b), n - 1)->wait();
  EXPECT_EQ(b[9], 42.0f);
  EXPECT_EQ(c.bytes_sent() - before, r == n - 1 ? 40 : 0);
  c.barrier();
}

TEST(CommMpi, SplitOrdersByKeyThenRank) {
  auto& c = *g_comm;
  int n = c.size(), r = c.rank();
  // Two colours (even, odd ranks); key reversed, so the highest world rank comes first.
  auto sub = c.split(r % 2, n - r);
  int members = (n + 1 - r % 2) / 2;
  ASSERT_EQ(sub->size(), members);
  std::vector<int64_t> ids(members);
  std::vector<int64_t> me = {r};
  sub->all_gather(host(me), host(ids))->wait();
  for (int i = 1; i < members; ++i) EXPECT_GT(ids[i - 1], ids[i]);
  EXPECT_EQ(ids[sub->rank()], r);
  std::vector<float> one = {1.0f};
  sub->all_reduce(host(one), weft::ReduceOp::Sum)->wait();
  EXPECT_EQ(one[0], static_cast<float>(members));
  // A split of a split, and a group of one.
  auto self = sub->split(sub->rank(), 0);
  EXPECT_EQ(self->size(), 1);
  self->barrier();
  std::vector<float> alone = {3.0f};
  self->all_reduce(host(alone), weft::ReduceOp::Sum)->wait();
  EXPECT_EQ(alone[0], 3.0f);
}

TEST(CommMpi, HostTensorsOnlyAndBadArgumentsAreRefused) {
  auto& c = *g_comm;
  std::vector<float> v(4);
  EXPECT_THROW(c.send(host(v), c.size(), 0), weft::Error);
  EXPECT_THROW(c.recv(host(v), 0, -1), weft::Error);
  std::vector<float> out(3);
  EXPECT_THROW(c.all_gather(host(v), host(out)), weft::Error);
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  std::string fail;
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--fail=", 7) == 0) fail = argv[i] + 7;
  weft::LaunchInfo env = weft::mpi::detect_launch_env();
  int world = env.external ? env.world : 1;
  int result = 0;
  weft::mpi::MpiLauncher launcher(fail.empty() ? 60.0 : 3.0);
  launcher.run(world, [&](weft::Communicator& comm, const weft::LaunchInfo& info) {
    if (!fail.empty()) {
      std::vector<float> v = {1.0f};
      comm.all_reduce(host(v), weft::ReduceOp::Sum)->wait();
      if (comm.rank() == 1) {
        if (fail == "throw") throw weft::Error("injected failure on rank 1");
        return;  // "return": stops calling
      }
      comm.all_reduce(host(v), weft::ReduceOp::Sum)->wait();
      return;
    }
    g_comm = &comm;
    g_info = info;
    if (comm.rank() != 0) {
      auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
    }
    std::vector<int64_t> failed = {RUN_ALL_TESTS() != 0 ? 1 : 0};
    comm.all_reduce(host(failed), weft::ReduceOp::Max)->wait();
    result = static_cast<int>(failed[0]);
    if (comm.rank() == 0) std::printf("comm-mpi suite on %d ranks: %s\n", comm.size(), result ? "FAILED" : "ok");
  });
  return result;
}
