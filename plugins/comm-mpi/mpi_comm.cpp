#include "mpi_comm.hpp"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <numeric>
#include <sstream>
#include <thread>

#include "weft/error.hpp"
#include "weft/half.hpp"

namespace weft::mpi {

namespace {

using Clock = std::chrono::steady_clock;

enum CtrlKind : int32_t { kQuery = 1, kStatus = 2, kAbort = 3, kDone = 4 };
constexpr int kCtrlTag = 7;

// One rank's life status, as others see it (MpiContext::reported_).
constexpr int kReportedDone = 1, kReportedFailed = 2;

Clock::time_point after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

std::string seconds_str(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

std::string ranks_str(const std::vector<int>& ranks) {
  std::string out = "[";
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i) out += ",";
    out += std::to_string(ranks[i]);
  }
  out += "]";
  return out;
}

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

// Polling backoff: a few yields, then short sleeps that leave the cores to
// ranks still computing (oversubscribed nodes).
class Backoff {
 public:
  void pause() {
    if (spins_ < 64) {
      ++spins_;
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(spins_ < 1000 ? 50 : 200));
      ++spins_;
    }
  }

 private:
  int spins_ = 0;
};

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

int env_int(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return -1;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  if (*end != '\0' || n < 0 || n > INT_MAX) return -1;
  return static_cast<int>(n);
}

// Slurm's tasks-per-node list ("2(x3),1") at node `node`.
int slurm_tasks_on_node(const char* list, int node) {
  if (!list || node < 0) return -1;
  std::stringstream ss(list);
  std::string item;
  int index = 0;
  while (std::getline(ss, item, ',')) {
    int count = std::atoi(item.c_str()), repeat = 1;
    auto x = item.find("(x");
    if (x != std::string::npos) repeat = std::atoi(item.c_str() + x + 2);
    if (node < index + repeat) return count;
    index += repeat;
  }
  return -1;
}

int to_count(int64_t n, const std::string& op) {
  if (n < 0 || n > INT_MAX) throw Error(op + ": " + std::to_string(n) + " elements exceed what one MPI call moves (2^31 - 1)");
  return static_cast<int>(n);
}

void require_host(const Tensor& t, const std::string& op) {
  if (t.device() != Device::Host)
    throw Error(op + ": comm-mpi moves host tensors; use comm-nccl for device tensors");
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  return MPI_SUM;
}

// inout[i] = op(in[i], inout[i]) over 16-bit floats, computed in fp32.
template <bool kBf16, ReduceOp kOp>
void reduce_half(void* in, void* inout, int* len, MPI_Datatype* /*type*/) {
  const uint16_t* a = static_cast<const uint16_t*>(in);
  uint16_t* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = kBf16 ? bf16_to_float(a[i]) : f16_to_float(a[i]);
    const float y = kBf16 ? bf16_to_float(b[i]) : f16_to_float(b[i]);
    const float r = kOp == ReduceOp::Sum ? x + y : kOp == ReduceOp::Max ? std::max(x, y) : std::min(x, y);
    b[i] = kBf16 ? float_to_bf16(r) : float_to_f16(r);
  }
}

bool is_half(DType dtype) { return dtype == DType::BF16 || dtype == DType::F16; }

class DoneWork : public Work {
 public:
  void wait() override {}
  bool done() override { return true; }
};

// Keeps buffers of requests abandoned after a failure alive: MPI may still write into them.
void bury(std::vector<Tensor> tensors, std::shared_ptr<void> hold) {
  static auto* graveyard = new std::vector<std::pair<std::vector<Tensor>, std::shared_ptr<void>>>;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  graveyard->emplace_back(std::move(tensors), std::move(hold));
}

class MpiWork : public Work {
 public:
  MpiWork(std::shared_ptr<MpiContext> ctx, MPI_Request req, MpiContext::WaitFor what, std::vector<Tensor> keep,
          std::shared_ptr<void> hold, std::function<void(const MPI_Status&)> on_complete)
      : ctx_(std::move(ctx)), req_(req), what_(std::move(what)), keep_(std::move(keep)), hold_(std::move(hold)),
        on_complete_(std::move(on_complete)) {}

  ~MpiWork() override {
    if (done_) return;
    if (std::uncaught_exceptions() == 0 && !ctx_->failing()) {
      try {
        wait();
        return;
      } catch (const std::exception&) {
      }
    }
    bury(std::move(keep_), std::move(hold_));
  }

  void wait() override {
    if (done_) return;
    ctx_->wait([this] { return test(); }, what_);
    finish();
  }

  bool done() override {
    if (done_) return true;
    auto lock = ctx_->lock();
    if (test()) finish();
    return done_;
  }

 private:
  bool test() {
    int flag = 0;
    check(MPI_Test(&req_, &flag, &status_), what_.op);
    return flag != 0;
  }
  void finish() {
    done_ = true;
    if (on_complete_) on_complete_(status_);
    keep_.clear();
    hold_.reset();
  }

  std::shared_ptr<MpiContext> ctx_;
  MPI_Request req_;
  MPI_Status status_{};
  MpiContext::WaitFor what_;
  std::vector<Tensor> keep_;
  std::shared_ptr<void> hold_;
  std::function<void(const MPI_Status&)> on_complete_;
  bool done_ = false;
};

}  // namespace

void check(int rc, const std::string& what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw Error("comm-mpi: " + what + ": " + std::string(text, len));
}

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return MPI_FLOAT;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::U8: return MPI_UINT8_T;
    case DType::BF16:
    case DType::F16: return MPI_UINT16_T;
  }
  return MPI_BYTE;
}

LaunchInfo detect_launch_env() {
  LaunchInfo info;
  auto take = [&](int world, int rank, int local_rank, int local_size) {
    if (world <= 0 || rank < 0) return false;
    info.external = true;
    info.world = world;
    info.rank = rank;
    info.local_rank = local_rank >= 0 ? local_rank : 0;
    info.local_size = local_size > 0 ? local_size : 1;
    return true;
  };
  // OpenMPI's mpirun
  if (take(env_int("OMPI_COMM_WORLD_SIZE"), env_int("OMPI_COMM_WORLD_RANK"), env_int("OMPI_COMM_WORLD_LOCAL_RANK"),
           env_int("OMPI_COMM_WORLD_LOCAL_SIZE")))
    return info;
  // PMI (MPICH's hydra, srun --mpi=pmi2)
  if (take(env_int("PMI_SIZE"), env_int("PMI_RANK"), env_int("MPI_LOCALRANKID"), env_int("MPI_LOCALNRANKS")))
    return info;
  // Slurm's srun: inside a job step only (batch scripts set SLURM_NTASKS and SLURM_PROCID too)
  int slurm_world = env_int("SLURM_STEP_NUM_TASKS");
  if (slurm_world < 0 && env_int("SLURM_STEP_ID") >= 0) slurm_world = env_int("SLURM_NTASKS");
  if (take(slurm_world, env_int("SLURM_PROCID"), env_int("SLURM_LOCALID"),
           slurm_tasks_on_node(std::getenv("SLURM_STEP_TASKS_PER_NODE"), env_int("SLURM_NODEID"))))
    return info;
  // torchrun-style variables
  take(env_int("WORLD_SIZE"), env_int("RANK"), env_int("LOCAL_RANK"), env_int("LOCAL_WORLD_SIZE"));
  return info;
}

// ---------------------------------------------------------------- MpiContext

struct MpiContext::CtrlMsg {
  int32_t kind = 0;
  int32_t from = 0;
  uint64_t comm = 0;
  int64_t seq = 0;
  int64_t query = 0;
  int64_t value = 0;
  char text[1000] = {};
};

MpiContext::MpiContext(double timeout_s) : timeout_s_(timeout_s) {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (finalised)
    throw Error("comm-mpi: MPI was finalised by an earlier run in this process; start one run per process");
  if (!initialised) {
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
    initialised_here_ = true;
    // Below MPI_THREAD_MULTIPLE the lock in lock() keeps calls serialised; the
    // launcher calls from the thread that initialised MPI.
  }
  auto lk = lock();
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  check(MPI_Comm_dup(MPI_COMM_WORLD, &ctrl_), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(ctrl_, MPI_ERRORS_RETURN);
  MPI_Comm node;
  check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
  MPI_Comm_rank(node, &local_rank_);
  MPI_Comm_size(node, &local_size_);
  MPI_Comm_free(&node);
  reported_.assign(size_, 0);
  MPI_User_function* fns[6] = {reduce_half<true, ReduceOp::Sum>,  reduce_half<true, ReduceOp::Max>,
                               reduce_half<true, ReduceOp::Min>,  reduce_half<false, ReduceOp::Sum>,
                               reduce_half<false, ReduceOp::Max>, reduce_half<false, ReduceOp::Min>};
  for (int i = 0; i < 6; ++i) check(MPI_Op_create(fns[i], 1, &half_ops_[i]), "MPI_Op_create");
  recv_msg_ = std::make_unique<CtrlMsg>();
  post_recv();
}

MPI_Op MpiContext::half_op(DType dtype, ReduceOp op) const {
  const int which = op == ReduceOp::Sum ? 0 : op == ReduceOp::Max ? 1 : 2;
  return half_ops_[(dtype == DType::BF16 ? 0 : 3) + which];
}

MpiContext::~MpiContext() = default;

void MpiContext::post_recv() {
  check(MPI_Irecv(recv_msg_.get(), sizeof(CtrlMsg), MPI_BYTE, MPI_ANY_SOURCE, kCtrlTag, ctrl_, &recv_req_),
        "control channel receive");
}

void MpiContext::send_ctrl(int to, int kind, uint64_t comm, int64_t seq, int64_t query, int64_t value,
                           const std::string& text) {
  auto msg = std::make_unique<CtrlMsg>();
  msg->kind = kind;
  msg->from = rank_;
  msg->comm = comm;
  msg->seq = seq;
  msg->query = query;
  msg->value = value;
  std::strncpy(msg->text, text.c_str(), sizeof(msg->text) - 1);
  MPI_Request req;
  check(MPI_Isend(msg.get(), sizeof(CtrlMsg), MPI_BYTE, to, kCtrlTag, ctrl_, &req), "control channel send");
  sends_.emplace_back(std::move(msg), req);
}

void MpiContext::service() {
  while (recv_req_ != MPI_REQUEST_NULL) {
    int flag = 0;
    if (MPI_Test(&recv_req_, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS || !flag) break;
    CtrlMsg m = *recv_msg_;
    m.text[sizeof(m.text) - 1] = '\0';
    post_recv();
    if (m.from < 0 || m.from >= size_) continue;
    switch (m.kind) {
      case kQuery: {
        auto it = entered_.find(m.comm);
        send_ctrl(m.from, kStatus, m.comm, m.seq, m.query, it == entered_.end() ? 0 : it->second, "");
        break;
      }
      case kStatus:
        if (m.query == query_id_) replies_[m.from] = m.value;
        break;
      case kAbort:
        reported_[m.from] = kReportedFailed;
        if (abort_from_ < 0) {
          abort_from_ = m.from;
          abort_text_ = m.text;
        }
        break;
      case kDone:
        if (reported_[m.from] == 0) reported_[m.from] = kReportedDone;
        break;
      default:
        break;
    }
  }
  for (auto it = sends_.begin(); it != sends_.end();) {
    int flag = 0;
    MPI_Test(&it->second, &flag, MPI_STATUS_IGNORE);
    it = flag ? sends_.erase(it) : std::next(it);
  }
}

int64_t MpiContext::enter(uint64_t comm_id) {
  auto lk = lock();
  return entered_[comm_id]++;
}

double MpiContext::query_window() const { return std::clamp(timeout_s_, 0.25, 2.0); }

bool MpiContext::everyone_reported() const {
  for (int r = 0; r < size_; ++r)
    if (r != rank_ && reported_[r] == 0 && !silent_.count(r)) return false;
  return true;
}

// Asks every other member how many collectives it entered on the
// communicator; those that do not answer within the window, or answer with
// fewer than seq + 1, never reached this collective.
std::vector<int> MpiContext::missing_ranks(const WaitFor& what) {
  std::vector<int> others;
  for (int m : what.members)
    if (m != rank_) others.push_back(m);
  if (others.empty()) return {};
  {
    auto lk = lock();
    ++query_id_;
    replies_.clear();
    for (int m : others) send_ctrl(m, kQuery, what.comm_id, what.seq, query_id_, 0, "");
  }
  auto deadline = after(std::clamp(what.timeout_s, 0.25, 2.0));
  for (;;) {
    {
      auto lk = lock();
      service();
      if (replies_.size() >= others.size()) break;
    }
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  auto lk = lock();
  std::vector<int> missing;
  for (int m : others) {
    auto it = replies_.find(m);
    if (it == replies_.end() || it->second <= what.seq) missing.push_back(m);
    if (it == replies_.end()) silent_.insert(m);  // dead, or stuck outside MPI
  }
  return missing;
}

void MpiContext::wait(const std::function<bool()>& test, const WaitFor& what) {
  auto deadline = after(what.timeout_s);
  Backoff backoff;
  std::string reason;
  for (;;) {
    {
      auto lk = lock();
      try {
        if (test()) return;
      } catch (...) {
        failing_ = true;
        throw;
      }
      service();
      if (abort_from_ >= 0) {
        reason = "stopped because rank " + std::to_string(abort_from_) + " failed (" + abort_text_ + ")";
        break;
      }
    }
    if (Clock::now() >= deadline) {
      reason = "timed out after " + seconds_str(what.timeout_s) + " s";
      break;
    }
    backoff.pause();
  }
  {
    auto lk = lock();
    failing_ = true;
  }
  std::vector<int> missing = what.peer >= 0 ? std::vector<int>{what.peer} : missing_ranks(what);
  // A failed member never arrives, whatever it had entered before it failed.
  int failed = -1;
  {
    auto lk = lock();
    failed = abort_from_;
  }
  if (failed >= 0 && std::find(what.members.begin(), what.members.end(), failed) != what.members.end() &&
      std::find(missing.begin(), missing.end(), failed) == missing.end()) {
    missing.push_back(failed);
    std::sort(missing.begin(), missing.end());
  }
  throw Error(what.op + ": " + reason + "; missing ranks " + ranks_str(missing));
}

void MpiContext::fail(const std::string& message, int code) {
  {
    auto lk = lock();
    failing_ = true;
  }
  std::fflush(stdout);
  std::fprintf(stderr, "weft: %s: [rank %d] %s\n", code == 2 ? "error" : "internal error", rank_,
               one_line(message).c_str());
  std::fflush(stderr);
  {
    auto lk = lock();
    for (int r = 0; r < size_; ++r)
      if (r != rank_) send_ctrl(r, kAbort, 0, 0, 0, 0, one_line(message));
  }
  // Give every rank the time to notice, name what it misses and report; a
  // rank stuck outside MPI is ended by MPI_Abort after the bound, and one
  // that did not answer a query of this rank is not waited for.
  auto deadline = after(timeout_s_ + query_window() + 1.0);
  for (;;) {
    {
      auto lk = lock();
      service();
      if (everyone_reported()) break;
    }
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();  // MPI_Abort does not return
}

void MpiContext::finish() {
  {
    auto lk = lock();
    for (int r = 0; r < size_; ++r)
      if (r != rank_) send_ctrl(r, kDone, 0, 0, 0, 0, "");
  }
  // Ranks still working get their own timeouts first (collectives, then the
  // query window) before this bound reports them.
  double bound = 2 * timeout_s_ + query_window() + 1.0;
  auto deadline = after(bound);
  for (;;) {
    {
      auto lk = lock();
      service();
      if (everyone_reported()) break;
    }
    if (Clock::now() >= deadline) {
      std::vector<int> late;
      {
        auto lk = lock();
        for (int r = 0; r < size_; ++r)
          if (r != rank_ && reported_[r] == 0) late.push_back(r);
      }
      fail("finished, but ranks " + ranks_str(late) + " did not finish within " + seconds_str(bound) + " s", 1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (abort_from_ >= 0) {
    // A failed rank ends the job with MPI_Abort once every rank reported.
    auto until = after(timeout_s_ + query_window() + 2.0);
    while (Clock::now() < until) {
      {
        auto lk = lock();
        service();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  // Our last control messages reached ranks that were servicing; poll them
  // out (bounded), then tear down.
  auto sends_deadline = after(query_window());
  for (;;) {
    {
      auto lk = lock();
      service();
      if (sends_.empty()) break;
    }
    if (Clock::now() >= sends_deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  auto lk = lock();
  for (auto& [msg, req] : sends_) MPI_Request_free(&req);
  for (auto& entry : sends_) entry.first.release();  // MPI may still read a freed request's buffer
  sends_.clear();
  if (recv_req_ != MPI_REQUEST_NULL) {
    MPI_Cancel(&recv_req_);
    MPI_Wait(&recv_req_, MPI_STATUS_IGNORE);
  }
  MPI_Comm_free(&ctrl_);
  finished_ = true;
  if (initialised_here_) MPI_Finalize();
}

// ---------------------------------------------------------------- MpiCommunicator

MpiCommunicator::MpiCommunicator(std::shared_ptr<MpiContext> ctx, MPI_Comm comm, uint64_t id, std::vector<int> members,
                                 double timeout_s)
    : ctx_(std::move(ctx)), comm_(comm), id_(id), members_(std::move(members)), timeout_s_(timeout_s) {
  auto lk = ctx_->lock();
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  int* ub = nullptr;
  int flag = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
  if (flag && ub) tag_ub_ = *ub;
}

MpiCommunicator::~MpiCommunicator() {
  auto lk = ctx_->lock();
  // After a failure, operations may still be pending on it: leave it to MPI_Abort.
  if (!ctx_->failing() && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::count_ring(double bytes) {
  int n = size();
  bytes_sent_ += static_cast<int64_t>(bytes * (n - 1) / n);
}

MpiContext::WaitFor MpiCommunicator::collective(const char* op) {
  MpiContext::WaitFor w;
  w.op = op;
  w.comm_id = id_;
  w.seq = ctx_->enter(id_);
  w.members = members_;
  w.timeout_s = timeout_s_;
  return w;
}

MpiContext::WaitFor MpiCommunicator::p2p(const std::string& op, int peer) {
  if (peer < 0 || peer >= size()) throw Error(op + ": peer " + std::to_string(peer) + " is not a rank of a group of " + std::to_string(size()));
  MpiContext::WaitFor w;
  w.op = op + " rank " + std::to_string(members_[peer]);
  w.comm_id = id_;
  w.members = members_;
  w.peer = members_[peer];
  w.timeout_s = timeout_s_;
  return w;
}

std::unique_ptr<Work> MpiCommunicator::start(MpiContext::WaitFor what, const std::function<int(MPI_Request*)>& call,
                                             std::vector<Tensor> keep, std::shared_ptr<void> hold,
                                             std::function<void(const MPI_Status&)> on_complete) {
  MPI_Request req = MPI_REQUEST_NULL;
  {
    auto lk = ctx_->lock();
    check(call(&req), what.op);
  }
  return std::make_unique<MpiWork>(ctx_, req, std::move(what), std::move(keep), std::move(hold),
                                   std::move(on_complete));
}

std::unique_ptr<Work> MpiCommunicator::all_reduce(const Tensor& buf, ReduceOp op) {
  if (size() == 1) return std::make_unique<DoneWork>();
  require_host(buf, "all_reduce");
  MPI_Datatype type = mpi_type(buf.dtype());
  int n = to_count(buf.numel(), "all_reduce");
  auto work = start(collective("all_reduce"), [&](MPI_Request* r) {
    return MPI_Iallreduce(MPI_IN_PLACE, buf.raw(), n, type,
                          is_half(buf.dtype()) ? ctx_->half_op(buf.dtype(), op) : mpi_op(op), comm_, r);
  }, {buf});
  count_ring(2.0 * static_cast<double>(buf.bytes()));
  return work;
}

std::unique_ptr<Work> MpiCommunicator::reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) {
  require_host(in, "reduce_scatter");
  require_host(out, "reduce_scatter");
  if (in.numel() != out.numel() * size() || in.dtype() != out.dtype())
    throw Error("reduce_scatter: in must be size x out of the same dtype");
  MPI_Datatype type = mpi_type(out.dtype());
  int n = to_count(out.numel(), "reduce_scatter");
  auto work = start(collective("reduce_scatter"), [&](MPI_Request* r) {
    return MPI_Ireduce_scatter_block(in.raw(), out.raw(), n, type,
                                     is_half(out.dtype()) ? ctx_->half_op(out.dtype(), op) : mpi_op(op), comm_, r);
  }, {in, out});
  count_ring(static_cast<double>(in.bytes()));
  return work;
}

std::unique_ptr<Work> MpiCommunicator::all_gather(const Tensor& in, const Tensor& out) {
  require_host(in, "all_gather");
  require_host(out, "all_gather");
  if (out.numel() != in.numel() * size() || in.dtype() != out.dtype())
    throw Error("all_gather: out must be size x in of the same dtype");
  MPI_Datatype type = mpi_type(in.dtype());
  int n = to_count(in.numel(), "all_gather");
  auto work = start(collective("all_gather"), [&](MPI_Request* r) {
    return MPI_Iallgather(in.raw(), n, type, out.raw(), n, type, comm_, r);
  }, {in, out});
  count_ring(static_cast<double>(out.bytes()));
  return work;
}

std::unique_ptr<Work> MpiCommunicator::all_to_all(const Tensor& in, const Tensor& out) {
  require_host(in, "all_to_all");
  require_host(out, "all_to_all");
  int ranks = size();
  if (in.numel() % ranks != 0 || out.numel() != in.numel() || in.dtype() != out.dtype())
    throw Error("all_to_all: in and out must hold size x n elements of the same dtype");
  MPI_Datatype type = mpi_type(in.dtype());
  int n = to_count(in.numel() / ranks, "all_to_all");
  auto work = start(collective("all_to_all"), [&](MPI_Request* r) {
    return MPI_Ialltoall(in.raw(), n, type, out.raw(), n, type, comm_, r);
  }, {in, out});
  bytes_sent_ += static_cast<int64_t>(ranks - 1) * n * static_cast<int64_t>(dtype_size(in.dtype()));
  return work;
}

std::unique_ptr<Work> MpiCommunicator::all_to_all_v(const Tensor& in, const std::vector<int64_t>& in_counts,
                                                    const Tensor& out, const std::vector<int64_t>& out_counts) {
  require_host(in, "all_to_all");
  require_host(out, "all_to_all");
  int ranks = size();
  if (static_cast<int>(in_counts.size()) != ranks || static_cast<int>(out_counts.size()) != ranks)
    throw Error("all_to_all_v: one count per rank expected");
  // Agree on the counts first, so a mismatch is an error, not a truncation.
  auto sent_counts = std::make_shared<std::vector<int64_t>>(in_counts);
  auto peer_counts = std::make_shared<std::vector<int64_t>>(ranks);
  start(collective("all_to_all"), [&](MPI_Request* r) {
    return MPI_Ialltoall(sent_counts->data(), 1, MPI_INT64_T, peer_counts->data(), 1, MPI_INT64_T, comm_, r);
  }, {}, std::make_shared<std::pair<decltype(sent_counts), decltype(peer_counts)>>(sent_counts, peer_counts))->wait();
  for (int src = 0; src < ranks; ++src)
    if ((*peer_counts)[src] != out_counts[src])
      throw Error("all_to_all_v: rank " + std::to_string(members_[src]) + " sends " +
                  std::to_string((*peer_counts)[src]) + " elements but rank " + std::to_string(members_[rank_]) +
                  " expects " + std::to_string(out_counts[src]));
  struct Layout {
    std::vector<int> sc, sd, rc, rd;
  };
  auto lay = std::make_shared<Layout>();
  int64_t so = 0, ro = 0;
  for (int j = 0; j < ranks; ++j) {
    lay->sc.push_back(to_count(in_counts[j], "all_to_all"));
    lay->sd.push_back(to_count(so, "all_to_all"));
    lay->rc.push_back(to_count(out_counts[j], "all_to_all"));
    lay->rd.push_back(to_count(ro, "all_to_all"));
    so += in_counts[j];
    ro += out_counts[j];
  }
  if (so > in.numel() || ro > out.numel()) throw Error("all_to_all_v: counts exceed the tensors");
  MPI_Datatype type = mpi_type(in.dtype());
  auto work = start(collective("all_to_all"), [&](MPI_Request* r) {
    return MPI_Ialltoallv(in.raw(), lay->sc.data(), lay->sd.data(), type, out.raw(), lay->rc.data(),
                          lay->rd.data(), type, comm_, r);
  }, {in, out}, lay);
  int64_t sent = 0;
  for (int j = 0; j < ranks; ++j)
    if (j != rank_) sent += in_counts[j];
  bytes_sent_ += sent * static_cast<int64_t>(dtype_size(in.dtype()));
  return work;
}

std::unique_ptr<Work> MpiCommunicator::send(const Tensor& buf, int peer, int tag) {
  require_host(buf, "send");
  if (tag < 0 || tag > tag_ub_) throw Error("send: tag " + std::to_string(tag) + " outside 0.." + std::to_string(tag_ub_));
  int n = to_count(buf.numel(), "send");
  MPI_Datatype type = mpi_type(buf.dtype());
  auto work = start(p2p("send to", peer), [&](MPI_Request* r) {
    return MPI_Isend(buf.raw(), n, type, peer, tag, comm_, r);
  }, {buf});
  bytes_sent_ += static_cast<int64_t>(buf.bytes());
  return work;
}

std::unique_ptr<Work> MpiCommunicator::recv(const Tensor& buf, int peer, int tag) {
  require_host(buf, "recv");
  if (tag < 0 || tag > tag_ub_) throw Error("recv: tag " + std::to_string(tag) + " outside 0.." + std::to_string(tag_ub_));
  int n = to_count(buf.numel(), "recv");
  MPI_Datatype type = mpi_type(buf.dtype());
  auto what = p2p("recv from", peer);
  int src = what.peer;
  size_t es = dtype_size(buf.dtype());
  return start(std::move(what), [&](MPI_Request* r) { return MPI_Irecv(buf.raw(), n, type, peer, tag, comm_, r); },
               {buf}, nullptr, [n, type, src, es](const MPI_Status& st) {
                 int got = 0;
                 MPI_Get_count(&st, type, &got);
                 if (got != n)
                   throw Error("recv from rank " + std::to_string(src) + ": got " + std::to_string(got * es) +
                               " bytes, expected " + std::to_string(n * es));
               });
}

std::unique_ptr<Work> MpiCommunicator::broadcast(const Tensor& buf, int root) {
  if (size() == 1) return std::make_unique<DoneWork>();
  require_host(buf, "broadcast");
  if (root < 0 || root >= size()) throw Error("broadcast: root " + std::to_string(root) + " is not a rank");
  int n = to_count(buf.numel(), "broadcast");
  MPI_Datatype type = mpi_type(buf.dtype());
  auto work = start(collective("broadcast"), [&](MPI_Request* r) {
    return MPI_Ibcast(buf.raw(), n, type, root, comm_, r);
  }, {buf});
  if (rank_ == root) bytes_sent_ += static_cast<int64_t>(buf.bytes());
  return work;
}

void MpiCommunicator::barrier() {
  if (size() == 1) return;
  start(collective("barrier"), [&](MPI_Request* r) { return MPI_Ibarrier(comm_, r); }, {})->wait();
}

std::unique_ptr<weft::Communicator> MpiCommunicator::split(int color, int key) {
  if (color < 0) throw Error("split: color " + std::to_string(color) + " must be >= 0");
  int ranks = size();
  // Exchange (color, key) with a timeout first: MPI_Comm_split itself blocks.
  auto mine = std::make_shared<std::vector<int64_t>>(std::vector<int64_t>{color, key});
  auto all = std::make_shared<std::vector<int64_t>>(2 * ranks);
  start(collective("split"), [&](MPI_Request* r) {
    return MPI_Iallgather(mine->data(), 2, MPI_INT64_T, all->data(), 2, MPI_INT64_T, comm_, r);
  }, {}, std::make_shared<std::pair<decltype(mine), decltype(all)>>(mine, all))->wait();
  std::vector<std::pair<int64_t, int>> group;  // (key, rank) of my color
  for (int r = 0; r < ranks; ++r)
    if ((*all)[2 * r] == color) group.push_back({(*all)[2 * r + 1], r});
  std::sort(group.begin(), group.end());
  std::vector<int> members;
  for (const auto& [k, r] : group) members.push_back(members_[r]);
  MPI_Comm sub = MPI_COMM_NULL;
  {
    auto lk = ctx_->lock();
    check(MPI_Comm_split(comm_, color, key, &sub), "split");
  }
  uint64_t id = splitmix(splitmix(id_ ^ splitmix(static_cast<uint64_t>(++splits_))) ^ static_cast<uint64_t>(color));
  return std::make_unique<MpiCommunicator>(ctx_, sub, id, std::move(members), timeout_s_);
}

// ---------------------------------------------------------------- launcher

void run_world(double timeout_s, int world,
               const std::function<void(MpiCommunicator& world_comm, const LaunchInfo& info)>& body) {
  auto ctx = std::make_shared<MpiContext>(timeout_s);
  LaunchInfo env = detect_launch_env();
  LaunchInfo info;
  info.external = env.external;
  info.world = ctx->size();
  info.rank = ctx->rank();
  info.local_rank = ctx->local_rank();
  info.local_size = ctx->local_size();
  if (ctx->size() != world) {
    // Every process sees the same sizes: end MPI cleanly, refuse like any recipe error.
    std::string hint;
    if (ctx->size() == 1 && env.external && env.world > 1)
      hint = " (the environment announces " + std::to_string(env.world) +
             " ranks, but MPI sees one process: start weft with mpirun, or srun --mpi=pmix)";
    ctx->finish();
    throw Error("comm-mpi: MPI started " + std::to_string(ctx->size()) + " process" +
                (ctx->size() == 1 ? "" : "es") + ", the recipe needs " + std::to_string(world) + " ranks" + hint);
  }
  int code = 0;
  std::string message;
  try {
    MPI_Comm comm;
    {
      auto lk = ctx->lock();
      check(MPI_Comm_dup(MPI_COMM_WORLD, &comm), "MPI_Comm_dup");
    }
    std::vector<int> members(ctx->size());
    std::iota(members.begin(), members.end(), 0);
    MpiCommunicator world_comm(ctx, comm, 0, std::move(members), timeout_s);
    body(world_comm, info);
  } catch (const Error& e) {
    code = 2;
    message = e.what();
  } catch (const std::exception& e) {
    code = 1;
    message = e.what();
  }
  if (code != 0) ctx->fail(message, code);
  ctx->finish();
}

void MpiLauncher::run(int world, const std::function<void(weft::Communicator&, const LaunchInfo&)>& per_rank) {
  run_world(timeout_s_, world, [&](MpiCommunicator& comm, const LaunchInfo& info) { per_rank(comm, info); });
}

}  // namespace weft::mpi
