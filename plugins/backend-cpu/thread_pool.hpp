// ThreadPool: a small persistent pool for the CPU kernels. Workers sleep on a
// condition variable between jobs (no spinning); the calling thread takes part
// in every job, so a pool of `threads` runs threads-1 workers.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace weft {

class ThreadPool {
 public:
  using RangeFn = std::function<void(int64_t begin, int64_t end)>;

  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return threads_; }

  // Calls fn(begin, end) on disjoint chunks that together cover [0, n), each
  // chunk at least `grain` long (except the last). Chunks are handed out
  // dynamically, so fn must not depend on which thread runs a chunk or on the
  // chunk boundaries for its results. Runs inline with one thread, for small n,
  // and when called from inside a running job. Rethrows the first exception.
  void parallel_for(int64_t n, int64_t grain, const RangeFn& fn);

 private:
  void worker_loop();
  void run_chunks();
  void stop_workers();

  int threads_ = 1;
  std::vector<std::thread> workers_;

  std::mutex call_mutex_;  // one job at a time

  std::mutex mutex_;  // guards the fields below
  std::condition_variable wake_;
  std::condition_variable done_;
  uint64_t generation_ = 0;
  int active_ = 0;  // workers that have not finished the current job
  bool stop_ = false;
  std::exception_ptr error_;

  // The current job (written before generation_ is bumped).
  const RangeFn* job_ = nullptr;
  int64_t job_n_ = 0;
  int64_t job_chunk_ = 1;
  std::atomic<int64_t> next_chunk_{0};
};

}  // namespace weft
