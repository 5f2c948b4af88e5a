#include "thread_pool.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <system_error>

namespace weft {

namespace {
// > 0 while this thread runs inside a job: nested parallel_for runs inline.
thread_local int tls_job_depth = 0;
}  // namespace

ThreadPool::ThreadPool(int threads) : threads_(std::max(1, threads)) {
  workers_.reserve(threads_ - 1);
  try {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
  } catch (const std::system_error& e) {
    // The workers already running must be joined: destroying them unjoined aborts the process.
    const size_t started = workers_.size();
    stop_workers();
    throw std::runtime_error("backend cpu: cannot start thread " + std::to_string(started + 2) + " of " +
                             std::to_string(threads_) + " (backend.threads): " + e.what());
  }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::run_chunks() {
  ++tls_job_depth;
  try {
    for (;;) {
      const int64_t chunk = next_chunk_.fetch_add(1, std::memory_order_relaxed);
      const int64_t begin = chunk * job_chunk_;
      if (begin >= job_n_) break;
      (*job_)(begin, std::min(job_n_, begin + job_chunk_));
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!error_) error_ = std::current_exception();
    // Let the other threads drain the remaining chunks quickly.
    next_chunk_.store(job_n_, std::memory_order_relaxed);
  }
  --tls_job_depth;
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    run_chunks();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--active_ == 0) done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const RangeFn& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (threads_ == 1 || n <= grain || tls_job_depth > 0) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> call(call_mutex_);
  // About four chunks per thread balances uneven work without much overhead.
  const int64_t target = (n + 4 * threads_ - 1) / (4 * threads_);
  job_ = &fn;
  job_n_ = n;
  job_chunk_ = std::max(grain, target);
  next_chunk_.store(0, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = nullptr;
    active_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  run_chunks();
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return active_ == 0; });
    error = error_;
    error_ = nullptr;
    job_ = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace weft
