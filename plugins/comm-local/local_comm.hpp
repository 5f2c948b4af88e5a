// comm-local: ranks as threads of one process. Every collective is a
// rendezvous on a shared Hub: ranks stage their inputs, wait for all, compute
// their own output from the staged copies (rank order, so every rank gets
// bitwise the same sums), then wait again before leaving.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "weft/comm.hpp"

namespace weft {

class LocalHub {
 public:
  // world_ranks: the launcher's rank of each member (errors name those); empty = 0..size-1.
  explicit LocalHub(int size, std::vector<int> world_ranks = {})
      : size_(size), world_ranks_(std::move(world_ranks)), staged_(size), posted_(size) {
    if (world_ranks_.empty())
      for (int r = 0; r < size; ++r) world_ranks_.push_back(r);
  }
  int size() const { return size_; }
  int world_rank(int rank) const { return world_ranks_.at(rank); }

  // Everything one rank contributes to a collective.
  struct Post {
    std::vector<char> data;        // staged input bytes
    std::vector<int64_t> counts;   // all_to_all_v counts / split (color, key)
  };
  // Phase 1: stage `post`, wait for every rank; returns all posts (read-only until leave()).
  const std::vector<Post>& arrive(int rank, Post post, const char* op, double timeout_s);
  // Phase 2: wait until every rank is done reading.
  void leave(int rank, const char* op, double timeout_s);
  // Ends every wait with an error (a rank failed).
  void abort(const std::string& reason);

  void send(int src, int dst, int tag, std::vector<char> bytes);
  std::vector<char> recv(int src, int dst, int tag, double timeout_s);

  // Sub-hubs made by a split, keyed by generation and color.
  std::shared_ptr<LocalHub> split_hub(uint64_t generation, int color, std::vector<int> world_ranks);
  uint64_t generation() const {
    std::lock_guard<std::mutex> lock(mu_);
    return generation_;
  }

 private:
  [[noreturn]] void fail_wait(const char* op, const std::vector<int>& missing, double timeout_s);
  int size_;
  std::vector<int> world_ranks_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Post> staged_;
  std::vector<bool> posted_;
  int arrived_ = 0, departed_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
  std::string abort_reason_;
  std::map<std::tuple<int, int, int>, std::deque<std::vector<char>>> mailbox_;
  std::map<std::pair<uint64_t, int>, std::shared_ptr<LocalHub>> splits_;
};

class LocalCommunicator : public Communicator {
 public:
  LocalCommunicator(std::shared_ptr<LocalHub> hub, int rank, double timeout_s)
      : hub_(std::move(hub)), rank_(rank), timeout_s_(timeout_s) {}
  int rank() const override { return rank_; }
  int size() const override { return hub_->size(); }
  std::string name() const override { return "local"; }
  std::unique_ptr<Work> all_reduce(const Tensor& buf, ReduceOp op) override;
  std::unique_ptr<Work> reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) override;
  std::unique_ptr<Work> all_gather(const Tensor& in, const Tensor& out) override;
  std::unique_ptr<Work> all_to_all(const Tensor& in, const Tensor& out) override;
  std::unique_ptr<Work> all_to_all_v(const Tensor& in, const std::vector<int64_t>& in_counts, const Tensor& out,
                                     const std::vector<int64_t>& out_counts) override;
  std::unique_ptr<Work> send(const Tensor& buf, int peer, int tag) override;
  std::unique_ptr<Work> recv(const Tensor& buf, int peer, int tag) override;
  std::unique_ptr<Work> broadcast(const Tensor& buf, int root) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  void set_timeout(double seconds) override { timeout_s_ = seconds; }
  int64_t bytes_sent() const override { return bytes_sent_; }

 private:
  void count_ring(double fraction_of_bytes);
  std::shared_ptr<LocalHub> hub_;
  int rank_;
  double timeout_s_;
  int64_t bytes_sent_ = 0;
};

class LocalLauncher : public CommLauncher {
 public:
  explicit LocalLauncher(double timeout_s) : timeout_s_(timeout_s) {}
  LaunchInfo detect() const override { return {}; }
  void run(int world, const std::function<void(Communicator&, const LaunchInfo&)>& per_rank) override;

 private:
  double timeout_s_;
};

}  // namespace weft
