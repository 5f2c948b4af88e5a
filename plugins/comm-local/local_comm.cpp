#include "local_comm.hpp"

#include <algorithm>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <system_error>
#include <thread>

#include "weft/error.hpp"
#include "weft/half.hpp"

namespace weft {

namespace {

class DoneWork : public Work {
 public:
  void wait() override {}
  bool done() override { return true; }
};
std::unique_ptr<Work> done() { return std::make_unique<DoneWork>(); }

std::vector<char> bytes_of(const Tensor& t) {
  WEFT_ASSERT(t.device() == Device::Host, "comm-local moves host tensors only");
  const char* p = static_cast<const char*>(t.raw());
  return std::vector<char>(p, p + t.bytes());
}

template <class T>
void reduce_into(T* out, const std::vector<const T*>& ins, int64_t n, ReduceOp op) {
  for (int64_t i = 0; i < n; ++i) {
    T acc = ins[0][i];
    for (size_t r = 1; r < ins.size(); ++r) {
      T v = ins[r][i];
      acc = op == ReduceOp::Sum ? acc + v : op == ReduceOp::Max ? std::max(acc, v) : std::min(acc, v);
    }
    out[i] = acc;
  }
}

// 16-bit floats (bf16, f16): widened, reduced in fp32 in rank order, rounded
// once to nearest even (as NCCL sums them; MPI has no such type).
void reduce_into_half(uint16_t* out, const std::vector<const uint16_t*>& ins, int64_t n, ReduceOp op, bool bf16) {
  auto widen = [bf16](uint16_t h) { return bf16 ? bf16_to_float(h) : f16_to_float(h); };
  for (int64_t i = 0; i < n; ++i) {
    float acc = widen(ins[0][i]);
    for (size_t r = 1; r < ins.size(); ++r) {
      const float v = widen(ins[r][i]);
      acc = op == ReduceOp::Sum ? acc + v : op == ReduceOp::Max ? std::max(acc, v) : std::min(acc, v);
    }
    out[i] = bf16 ? float_to_bf16(acc) : float_to_f16(acc);
  }
}

// out[n] = reduction over ranks of block `block` (n elements) of every staged input.
void reduce_block(const Tensor& out, const std::vector<LocalHub::Post>& posts, int64_t block, ReduceOp op) {
  int64_t n = out.numel();
  size_t off = block * n * dtype_size(out.dtype());
  switch (out.dtype()) {
    case DType::F32: {
      std::vector<const float*> ins;
      for (const auto& p : posts) ins.push_back(reinterpret_cast<const float*>(p.data.data() + off));
      reduce_into(out.data<float>(), ins, n, op);
      return;
    }
    case DType::I32: {
      std::vector<const int32_t*> ins;
      for (const auto& p : posts) ins.push_back(reinterpret_cast<const int32_t*>(p.data.data() + off));
      reduce_into(out.data<int32_t>(), ins, n, op);
      return;
    }
    case DType::I64: {
      std::vector<const int64_t*> ins;
      for (const auto& p : posts) ins.push_back(reinterpret_cast<const int64_t*>(p.data.data() + off));
      reduce_into(out.data<int64_t>(), ins, n, op);
      return;
    }
    case DType::BF16:
    case DType::F16: {
      std::vector<const uint16_t*> ins;
      for (const auto& p : posts) ins.push_back(reinterpret_cast<const uint16_t*>(p.data.data() + off));
      reduce_into_half(out.data<uint16_t>(), ins, n, op, out.dtype() == DType::BF16);
      return;
    }
    default:
      throw Error(std::string("comm-local: reduction of ") + dtype_name(out.dtype()) + " is not supported");
  }
}

}  // namespace

void LocalHub::fail_wait(const char* op, const std::vector<int>& missing, double timeout_s) {
  std::string ranks;  // the launcher's ranks, whatever group this is
  for (size_t i = 0; i < missing.size(); ++i) {
    if (i) ranks += ",";
    ranks += std::to_string(world_ranks_.at(missing[i]));
  }
  std::string reason = aborted_ ? abort_reason_
                                : "timed out after " + std::to_string(static_cast<int>(timeout_s)) + " s";
  std::string msg = std::string(op) + ": " + reason + "; missing ranks [" + ranks + "]";
  if (!aborted_) {
    aborted_ = true;
    abort_reason_ = "a peer timed out in " + std::string(op);
    cv_.notify_all();
  }
  throw Error(msg);
}

const std::vector<LocalHub::Post>& LocalHub::arrive(int rank, Post post, const char* op, double timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  // A rank that is fast may arrive before the previous round's leavers reset.
  cv_.wait_until(lock, deadline, [&] { return aborted_ || departed_ == 0; });
  staged_[rank] = std::move(post);
  posted_[rank] = true;
  ++arrived_;
  if (arrived_ == size_) cv_.notify_all();
  bool ok = cv_.wait_until(lock, deadline, [&] { return aborted_ || arrived_ == size_; });
  if (!ok || aborted_) {
    std::vector<int> missing;
    for (int r = 0; r < size_; ++r)
      if (!posted_[r]) missing.push_back(r);
    fail_wait(op, missing, timeout_s);
  }
  return staged_;
}

void LocalHub::leave(int rank, const char* op, double timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  uint64_t gen = generation_;
  posted_[rank] = false;
  ++departed_;
  if (departed_ == size_) {
    arrived_ = 0;
    departed_ = 0;
    ++generation_;
    cv_.notify_all();
    return;
  }
  bool ok = cv_.wait_until(lock, deadline, [&] { return aborted_ || generation_ != gen; });
  if (generation_ != gen) return;  // the round completed, even if an abort came right after
  if (!ok || aborted_) {
    std::vector<int> missing;
    for (int r = 0; r < size_; ++r)
      if (posted_[r]) missing.push_back(r);
    fail_wait(op, missing, timeout_s);
  }
}

void LocalHub::abort(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!aborted_) {
    aborted_ = true;
    abort_reason_ = reason;
  }
  cv_.notify_all();
  for (auto& [key, hub] : splits_) hub->abort(reason);
}

void LocalHub::send(int src, int dst, int tag, std::vector<char> bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  mailbox_[{src, dst, tag}].push_back(std::move(bytes));
  cv_.notify_all();
}

std::vector<char> LocalHub::recv(int src, int dst, int tag, double timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  auto& q = mailbox_[{src, dst, tag}];
  bool ok = cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return aborted_ || !q.empty(); });
  if (!ok || aborted_) fail_wait("recv", {src}, timeout_s);
  std::vector<char> out = std::move(q.front());
  q.pop_front();
  return out;
}

std::shared_ptr<LocalHub> LocalHub::split_hub(uint64_t generation, int color, std::vector<int> world_ranks) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& hub = splits_[{generation, color}];
  if (!hub) hub = std::make_shared<LocalHub>(static_cast<int>(world_ranks.size()), std::move(world_ranks));
  return hub;
}

void LocalCommunicator::count_ring(double bytes) {
  int n = size();
  bytes_sent_ += static_cast<int64_t>(bytes * (n - 1) / n);
}

std::unique_ptr<Work> LocalCommunicator::all_reduce(const Tensor& buf, ReduceOp op) {
  if (size() == 1) return done();
  const auto& posts = hub_->arrive(rank_, {bytes_of(buf), {}}, "all_reduce", timeout_s_);
  reduce_block(buf, posts, 0, op);
  hub_->leave(rank_, "all_reduce", timeout_s_);
  count_ring(2.0 * buf.bytes());
  return done();
}

std::unique_ptr<Work> LocalCommunicator::reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) {
  WEFT_ASSERT(in.numel() == out.numel() * size(), "reduce_scatter: in must be size x out");
  const auto& posts = hub_->arrive(rank_, {bytes_of(in), {}}, "reduce_scatter", timeout_s_);
  reduce_block(out, posts, rank_, op);
  hub_->leave(rank_, "reduce_scatter", timeout_s_);
  count_ring(static_cast<double>(in.bytes()));
  return done();
}

std::unique_ptr<Work> LocalCommunicator::all_gather(const Tensor& in, const Tensor& out) {
  WEFT_ASSERT(out.numel() == in.numel() * size(), "all_gather: out must be size x in");
  const auto& posts = hub_->arrive(rank_, {bytes_of(in), {}}, "all_gather", timeout_s_);
  char* dst = static_cast<char*>(out.raw());
  for (int r = 0; r < size(); ++r) std::memcpy(dst + r * in.bytes(), posts[r].data.data(), in.bytes());
  hub_->leave(rank_, "all_gather", timeout_s_);
  count_ring(static_cast<double>(out.bytes()));
  return done();
}

std::unique_ptr<Work> LocalCommunicator::all_to_all(const Tensor& in, const Tensor& out) {
  int n = size();
  std::vector<int64_t> counts(n, in.numel() / n);
  return all_to_all_v(in, counts, out, counts);
}

std::unique_ptr<Work> LocalCommunicator::all_to_all_v(const Tensor& in, const std::vector<int64_t>& in_counts,
                                                      const Tensor& out, const std::vector<int64_t>& out_counts) {
  int n = size();
  size_t es = dtype_size(in.dtype());
  const auto& posts = hub_->arrive(rank_, {bytes_of(in), in_counts}, "all_to_all", timeout_s_);
  char* dst = static_cast<char*>(out.raw());
  int64_t out_off = 0;
  for (int src = 0; src < n; ++src) {
    int64_t src_off = 0;
    for (int j = 0; j < rank_; ++j) src_off += posts[src].counts[j];
    int64_t count = posts[src].counts[rank_];
    if (count != out_counts[src]) {
      hub_->abort("all_to_all_v: count mismatch");
      throw Error("all_to_all_v: rank " + std::to_string(src) + " sends " + std::to_string(count) +
                  " elements but rank " + std::to_string(rank_) + " expects " + std::to_string(out_counts[src]));
    }
    std::memcpy(dst + out_off * es, posts[src].data.data() + src_off * es, count * es);
    out_off += count;
  }
  hub_->leave(rank_, "all_to_all", timeout_s_);
  int64_t sent = 0;
  for (int j = 0; j < n; ++j)
    if (j != rank_) sent += in_counts[j];
  bytes_sent_ += sent * es;
  return done();
}

std::unique_ptr<Work> LocalCommunicator::send(const Tensor& buf, int peer, int tag) {
  hub_->send(rank_, peer, tag, bytes_of(buf));
  bytes_sent_ += buf.bytes();
  return done();
}

std::unique_ptr<Work> LocalCommunicator::recv(const Tensor& buf, int peer, int tag) {
  std::vector<char> bytes = hub_->recv(peer, rank_, tag, timeout_s_);
  if (bytes.size() != buf.bytes())
    throw Error("recv from rank " + std::to_string(peer) + ": got " + std::to_string(bytes.size()) +
                " bytes, expected " + std::to_string(buf.bytes()));
  std::memcpy(buf.raw(), bytes.data(), bytes.size());
  return done();
}

std::unique_ptr<Work> LocalCommunicator::broadcast(const Tensor& buf, int root) {
  if (size() == 1) return done();
  const auto& posts = hub_->arrive(rank_, {rank_ == root ? bytes_of(buf) : std::vector<char>{}, {}}, "broadcast",
                                   timeout_s_);
  if (rank_ != root) std::memcpy(buf.raw(), posts[root].data.data(), buf.bytes());
  hub_->leave(rank_, "broadcast", timeout_s_);
  if (rank_ == root) bytes_sent_ += buf.bytes();
  return done();
}

void LocalCommunicator::barrier() {
  if (size() == 1) return;
  hub_->arrive(rank_, {}, "barrier", timeout_s_);
  hub_->leave(rank_, "barrier", timeout_s_);
}

std::unique_ptr<Communicator> LocalCommunicator::split(int color, int key) {
  uint64_t gen = hub_->generation();
  const auto& posts = hub_->arrive(rank_, {{}, {color, key}}, "split", timeout_s_);
  std::vector<std::pair<int64_t, int>> members;  // (key, rank) of my color
  for (int r = 0; r < size(); ++r)
    if (posts[r].counts[0] == color) members.push_back({posts[r].counts[1], r});
  hub_->leave(rank_, "split", timeout_s_);
  std::sort(members.begin(), members.end());
  int my_index = 0;
  std::vector<int> world_ranks;
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i].second == rank_) my_index = static_cast<int>(i);
    world_ranks.push_back(hub_->world_rank(members[i].second));
  }
  auto hub = hub_->split_hub(gen, color, std::move(world_ranks));
  return std::make_unique<LocalCommunicator>(hub, my_index, timeout_s_);
}

void LocalLauncher::run(int world, const std::function<void(Communicator&, const LaunchInfo&)>& per_rank) {
  auto hub = std::make_shared<LocalHub>(world);
  std::vector<std::exception_ptr> errors(world);
  std::mutex first_mu;
  int first_failed = -1;
  auto body = [&](int rank) {
    LocalCommunicator comm(hub, rank, timeout_s_);
    LaunchInfo info{false, world, rank, rank, world};
    try {
      per_rank(comm, info);
    } catch (const std::exception& e) {
      errors[rank] = std::current_exception();
      {
        std::lock_guard<std::mutex> lock(first_mu);
        if (first_failed < 0) first_failed = rank;
      }
      hub->abort("rank " + std::to_string(rank) + " failed: " + e.what());
    }
  };
  if (world == 1) {
    body(0);
  } else {
    std::vector<std::thread> threads;
    try {
      for (int r = 0; r < world; ++r) threads.emplace_back(body, r);
    } catch (const std::system_error& e) {
      // Stop the ranks already running (they wait in collectives) and join them before reporting.
      const size_t started = threads.size();
      hub->abort("rank " + std::to_string(started) + " could not be started");
      for (auto& t : threads) t.join();
      throw std::runtime_error("comm local: cannot start the thread of rank " + std::to_string(started) + " of " +
                               std::to_string(world) + ": " + e.what());
    }
    for (auto& t : threads) t.join();
  }
  if (first_failed >= 0) std::rethrow_exception(errors[first_failed]);
}

}  // namespace weft
