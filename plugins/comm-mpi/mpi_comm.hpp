// comm-mpi: one process per rank, started by mpirun or srun. Collectives are
// nonblocking MPI calls (MPI_Iallreduce, ...) on host tensors; a Work's wait()
// polls MPI_Test until the operation completes or the timeout passes.
//
// Failure handling runs on a control channel (a duplicate of MPI_COMM_WORLD
// that only this plugin uses), serviced by every waiting rank:
//   QUERY(comm, seq) -> STATUS(collectives this rank entered on comm)
//     sent by a rank whose wait timed out (or was stopped) to learn which group
//     members never reached the collective: those are the "missing ranks".
//   ABORT(text)      a rank failed; every wait ends with an error naming its
//                    collective and the ranks missing from it.
//   DONE             a rank finished its work.
// A rank that fails prints its error, sends ABORT to every rank, waits
// (bounded) until every rank reported, then calls MPI_Abort: no rank hangs.
#pragma once

// The C API only (OpenMPI's and MPICH's C++ bindings are deprecated).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <array>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "weft/comm.hpp"

namespace weft::mpi {

// What mpirun (OpenMPI), PMI (MPICH, srun --mpi=pmi2), Slurm (srun) or a
// torchrun-style launcher (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)
// put into the environment; external = false when none of them.
LaunchInfo detect_launch_env();

// Process-wide MPI state: initialisation, the control channel, per-communicator
// collective counters. Every MPI call goes through lock(): calls are
// serialised per process (needed where MPI_THREAD_MULTIPLE is not provided).
class MpiContext {
 public:
  // MPI_Init_thread where MPI is not initialised yet; refuses a second run
  // after MPI_Finalize.
  explicit MpiContext(double timeout_s);
  ~MpiContext();
  MpiContext(const MpiContext&) = delete;
  MpiContext& operator=(const MpiContext&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  double timeout_s() const { return timeout_s_; }
  std::unique_lock<std::recursive_mutex> lock() { return std::unique_lock<std::recursive_mutex>(mu_); }

  // Counts one collective on the communicator `comm_id`; returns its 0-based
  // sequence number (the same on every member: collectives are called in order).
  int64_t enter(uint64_t comm_id);

  // What a wait is for, to name it when it fails.
  struct WaitFor {
    std::string op;
    uint64_t comm_id = 0;
    int64_t seq = 0;
    std::vector<int> members;  // world ranks of the communicator, in its rank order
    int peer = -1;             // world rank of the peer of a send/recv (-1: a collective)
    double timeout_s = 300;
  };
  // Polls `test` (called with the lock held) until it returns true, servicing
  // control messages. Throws weft::Error naming the operation and the missing
  // ranks when the timeout passes or another rank failed.
  void wait(const std::function<bool()>& test, const WaitFor& what);

  // The reduction of 16-bit floats (BF16, F16) for `op`: MPI has no such
  // type, so user operations widen to fp32, reduce and round to nearest even
  // (one rounding per combining step).
  MPI_Op half_op(DType dtype, ReduceOp op) const;

  // True once any wait failed or a peer reported a failure.
  bool failing() const { return failing_ || abort_from_ >= 0; }

  // Success: tell every rank, wait for theirs (bounded), MPI_Finalize where
  // this object initialised MPI.
  void finish();
  // Failure: print `message`, tell every rank, wait (bounded) until each
  // reported, then MPI_Abort(code). Never returns.
  [[noreturn]] void fail(const std::string& message, int code);

 private:
  struct CtrlMsg;
  void service();  // lock held
  void send_ctrl(int to, int kind, uint64_t comm, int64_t seq, int64_t query, int64_t value, const std::string& text);
  void post_recv();
  std::vector<int> missing_ranks(const WaitFor& what);
  double query_window() const;
  bool everyone_reported() const;

  std::recursive_mutex mu_;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  double timeout_s_;
  bool initialised_here_ = false;
  bool finished_ = false;
  MPI_Comm ctrl_ = MPI_COMM_NULL;
  std::unique_ptr<CtrlMsg> recv_msg_;
  MPI_Request recv_req_ = MPI_REQUEST_NULL;
  std::list<std::pair<std::unique_ptr<CtrlMsg>, MPI_Request>> sends_;
  std::map<uint64_t, int64_t> entered_;
  std::vector<int> reported_;  // per world rank: 0 nothing yet, 1 done, 2 failed
  int abort_from_ = -1;
  std::string abort_text_;
  int64_t query_id_ = 0;
  std::map<int, int64_t> replies_;  // world rank -> collectives entered, for query_id_
  std::set<int> silent_;            // ranks that did not answer a query in time
  bool failing_ = false;
  std::array<MPI_Op, 6> half_ops_{};  // [bf16 sum, max, min, f16 sum, max, min]
};

class MpiCommunicator : public weft::Communicator {
 public:
  // Takes ownership of `comm`; `members` are the world ranks of its ranks.
  MpiCommunicator(std::shared_ptr<MpiContext> ctx, MPI_Comm comm, uint64_t id, std::vector<int> members,
               double timeout_s);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(members_.size()); }
  std::string name() const override { return "mpi"; }
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
  std::unique_ptr<weft::Communicator> split(int color, int key) override;
  void set_timeout(double seconds) override { timeout_s_ = seconds; }
  int64_t bytes_sent() const override { return bytes_sent_; }

  // For communicators built on top (comm-nccl): the world ranks of this group,
  // its identity on the control channel, the shared context.
  const std::vector<int>& members() const { return members_; }
  uint64_t id() const { return id_; }
  const std::shared_ptr<MpiContext>& context() const { return ctx_; }
  MPI_Comm handle() const { return comm_; }
  double timeout_s() const { return timeout_s_; }

 private:
  MpiContext::WaitFor collective(const char* op);
  MpiContext::WaitFor p2p(const std::string& op, int peer);
  std::unique_ptr<Work> start(MpiContext::WaitFor what, const std::function<int(MPI_Request*)>& call,
                              std::vector<Tensor> keep, std::shared_ptr<void> hold = nullptr,
                              std::function<void(const MPI_Status&)> on_complete = nullptr);
  void count_ring(double bytes);

  std::shared_ptr<MpiContext> ctx_;
  MPI_Comm comm_;
  uint64_t id_;
  std::vector<int> members_;
  int rank_ = 0;
  double timeout_s_;
  int64_t bytes_sent_ = 0;
  int64_t splits_ = 0;
  int tag_ub_ = 32767;
};

// Runs `body` once in this process with the world communicator, then the
// DONE handshake and MPI_Finalize; an exception from `body` goes through
// MpiContext::fail (printed, peers told, MPI_Abort).
void run_world(double timeout_s, int world,
               const std::function<void(MpiCommunicator& world_comm, const LaunchInfo& info)>& body);

class MpiLauncher : public CommLauncher {
 public:
  explicit MpiLauncher(double timeout_s) : timeout_s_(timeout_s) {}
  LaunchInfo detect() const override { return detect_launch_env(); }
  void run(int world, const std::function<void(weft::Communicator&, const LaunchInfo&)>& per_rank) override;

 private:
  double timeout_s_;
};

// MPI datatype of a weft dtype (16-bit floats move as MPI_UINT16_T and cannot be reduced).
MPI_Datatype mpi_type(DType dtype);
// Throws weft::Error "comm-mpi: what: MPI's message" unless rc == MPI_SUCCESS.
void check(int rc, const std::string& what);

}  // namespace weft::mpi
