// comm-nccl on CUDA device tensors (suite 'gpu'). Skips where no CUDA device
// is visible. Runs as one process (MPI singleton, world 1) or under
// `mpirun -np N` with one GPU per rank; the checks hold for any N.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <vector>

#include "nccl_comm.hpp"

namespace {

bool have_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

// A device tensor of n floats (freed with the tensor).
weft::Tensor device_floats(int64_t n) {
  auto storage = std::make_shared<weft::Storage>();
  EXPECT_EQ(cudaMalloc(&storage->data, n * sizeof(float)), cudaSuccess);
  storage->bytes = n * sizeof(float);
  storage->device = weft::Device::Cuda;
  storage->release = [](weft::Storage& s) { cudaFree(s.data); };
  return weft::Tensor(storage, 0, {n}, weft::DType::F32);
}

void upload(const weft::Tensor& t, const std::vector<float>& v) {
  ASSERT_EQ(cudaMemcpy(t.raw(), v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
}
std::vector<float> download(const weft::Tensor& t) {
  std::vector<float> v(t.numel());
  EXPECT_EQ(cudaMemcpy(v.data(), t.raw(), v.size() * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

TEST(CommNccl, CollectivesOnDeviceTensors) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  weft::LaunchInfo env = weft::mpi::detect_launch_env();
  int world = env.external ? env.world : 1;
  weft::nccl::NcclLauncher launcher(60.0);
  launcher.run(world, [&](weft::Communicator& c, const weft::LaunchInfo&) {
    int n = c.size(), r = c.rank();
    EXPECT_EQ(c.name(), "nccl");
    const int64_t k = 1024;

    weft::Tensor a = device_floats(k);
    upload(a, std::vector<float>(k, static_cast<float>(r + 1)));
    int64_t before = c.bytes_sent();
    c.all_reduce(a, weft::ReduceOp::Sum)->wait();
    EXPECT_EQ(c.bytes_sent() - before, static_cast<int64_t>(2.0 * 4 * k * (n - 1) / n));
    EXPECT_EQ(download(a)[k - 1], static_cast<float>(n * (n + 1) / 2));

    weft::Tensor in = device_floats(n * k), out = device_floats(k);
    upload(in, std::vector<float>(n * k, 1.0f));
    c.reduce_scatter(in, out, weft::ReduceOp::Sum)->wait();
    EXPECT_EQ(download(out)[0], static_cast<float>(n));

    weft::Tensor mine = device_floats(k), all = device_floats(n * k);
    upload(mine, std::vector<float>(k, static_cast<float>(r)));
    c.all_gather(mine, all)->wait();
    std::vector<float> got = download(all);
    for (int i = 0; i < n; ++i) EXPECT_EQ(got[i * k], static_cast<float>(i));

    weft::Tensor b = device_floats(16);
    upload(b, std::vector<float>(16, r == 0 ? 7.0f : 0.0f));
    c.broadcast(b, 0)->wait();
    EXPECT_EQ(download(b)[15], 7.0f);

    weft::Tensor tx = device_floats(8), rx = device_floats(8);
    upload(tx, std::vector<float>(8, static_cast<float>(r)));
    auto recv = c.recv(rx, (r + n - 1) % n, 0);
    auto send = c.send(tx, (r + 1) % n, 0);
    send->wait();
    recv->wait();
    EXPECT_EQ(download(rx)[0], static_cast<float>((r + n - 1) % n));

    weft::Tensor t_in = device_floats(n * 4), t_out = device_floats(n * 4);
    upload(t_in, std::vector<float>(n * 4, static_cast<float>(r)));
    c.all_to_all(t_in, t_out)->wait();
    got = download(t_out);
    for (int i = 0; i < n; ++i) EXPECT_EQ(got[i * 4], static_cast<float>(i));

    auto sub = c.split(0, r);
    EXPECT_EQ(sub->size(), n);
    weft::Tensor s = device_floats(4);
    upload(s, std::vector<float>(4, 1.0f));
    sub->all_reduce(s, weft::ReduceOp::Sum)->wait();
    EXPECT_EQ(download(s)[0], static_cast<float>(n));
    c.barrier();

    std::vector<float> host_v(4);
    auto storage = std::make_shared<weft::Storage>();
    storage->data = host_v.data();
    storage->bytes = 16;
    EXPECT_THROW(c.all_reduce(weft::Tensor(storage, 0, {4}, weft::DType::F32), weft::ReduceOp::Sum),
                 weft::Error);  // host tensors are refused
  });
}

// Sends and receives are queued and launched as one group (nccl_comm.hpp):
// a receive posted before its send on every rank, a rank sending to itself
// (world 1), a queue flushed by the next collective, and one launched by
// polling done() all complete.
TEST(CommNccl, QueuedSendRecvBatches) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  weft::LaunchInfo env = weft::mpi::detect_launch_env();
  int world = env.external ? env.world : 1;
  weft::nccl::NcclLauncher launcher(60.0);
  launcher.run(world, [&](weft::Communicator& c, const weft::LaunchInfo&) {
    const int n = c.size(), r = c.rank(), next = (r + 1) % n, prev = (r + n - 1) % n;
    weft::Tensor tx = device_floats(64), rx = device_floats(64), a = device_floats(8);
    upload(tx, std::vector<float>(64, static_cast<float>(10 + r)));
    upload(a, std::vector<float>(8, 1.0f));
    // 1. recv first, then send; the all_reduce launches the queued pair before itself.
    auto recv = c.recv(rx, prev, 0);
    auto send = c.send(tx, next, 0);
    c.all_reduce(a, weft::ReduceOp::Sum)->wait();
    recv->wait();
    send->wait();
    EXPECT_EQ(download(rx)[63], static_cast<float>(10 + prev));
    EXPECT_EQ(download(a)[0], static_cast<float>(n));
    // 2. the receive's done() launches the batch; then the send is already done.
    upload(tx, std::vector<float>(64, static_cast<float>(20 + r)));
    auto s2 = c.send(tx, next, 0);
    auto r2 = c.recv(rx, prev, 0);
    while (!r2->done()) {
    }
    s2->wait();
    EXPECT_EQ(download(rx)[0], static_cast<float>(20 + prev));
    // 3. several messages to one peer keep their order.
    weft::Tensor tx2 = device_floats(4), rx2 = device_floats(4);
    upload(tx2, std::vector<float>(4, static_cast<float>(30 + r)));
    auto ra = c.recv(rx, prev, 0), rb = c.recv(rx2, prev, 1);
    auto sa = c.send(tx, next, 0), sb = c.send(tx2, next, 1);
    rb->wait();
    ra->wait();
    sa->wait();
    sb->wait();
    EXPECT_EQ(download(rx)[0], static_cast<float>(20 + prev));
    EXPECT_EQ(download(rx2)[0], static_cast<float>(30 + prev));
  });
}

}  // namespace
