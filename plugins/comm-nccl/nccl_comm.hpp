// comm-nccl: collectives on CUDA device tensors through NCCL, one process per
// rank under mpirun/srun and one GPU per local rank (local_rank % devices).
// MPI bootstraps it (rank 0's ncclUniqueId is broadcast over MPI) and stays
// beside every NCCL communicator as its "host" group: split membership,
// barriers and the control channel that names missing ranks on a timeout
// (comm-mpi's MpiContext).
//
// Ordering: an operation first waits (on the GPU, not the host) for the work
// queued on the legacy default stream and the blocking streams, then runs on
// this communicator's own non-blocking stream; its Work records a CUDA event
// there. wait() polls the event and ncclCommGetAsyncError until done or the
// timeout; a failed or timed-out communicator is aborted (ncclCommAbort).
//
// Point-to-point: send() and recv() only queue their operation. The queued
// sends and receives are launched together, in one ncclGroupStart/End (the
// idea of torch's batch_isend_irecv), when a Work of any of them is waited
// on or polled, or before the communicator's next collective, barrier or
// split. (So a pipeline stage's sends start at its next wait: correct, with
// no cycle of sends and receives on two streams, but a stage that only sends
// for a while starts them late.) Separate
// groups per operation deadlock on one stream (a receive posted before the
// matching send on both ranks blocks the stream the send is queued behind)
// and a rank's send to itself is invalid unless the receive is in its group.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <memory>
#include <string>
#include <vector>

#include "mpi_comm.hpp"
#include "weft/comm.hpp"

namespace weft::nccl {

// One NCCL communicator and its stream, shared with the Works it started.
struct P2pQueue;  // queued sends and receives (nccl_comm.cpp)

struct NcclState {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t ready = nullptr;  // recorded on the legacy stream before each operation
  int device = 0;
  bool aborted = false;
  ~NcclState();
  void abort();
};

class NcclCommunicator : public weft::Communicator {
 public:
  // Collective over `host`: rank 0's unique id is broadcast, every rank joins.
  static std::unique_ptr<NcclCommunicator> create(mpi::MpiCommunicator& host, int device, double timeout_s);
  ~NcclCommunicator() override;

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  std::string name() const override { return "nccl"; }
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
  void set_timeout(double seconds) override;
  int64_t bytes_sent() const override { return bytes_sent_; }

 private:
  NcclCommunicator(mpi::MpiCommunicator* host, std::unique_ptr<weft::Communicator> host_owner,
                   std::shared_ptr<NcclState> state, double timeout_s);
  mpi::MpiContext::WaitFor collective(const char* op);
  mpi::MpiContext::WaitFor p2p(const std::string& op, int peer);
  // Launches the queued sends and receives, then runs `enqueue` (NCCL calls
  // on the state's stream) after the legacy stream's pending work; returns a
  // Work waiting for it.
  template <class F>
  std::unique_ptr<Work> launch(mpi::MpiContext::WaitFor what, std::vector<Tensor> keep, F enqueue);
  void count_ring(double bytes);
  // Queues a send (or receive) of buf with peer; its Work launches the queue when waited on or polled.
  std::unique_ptr<Work> queue_p2p(mpi::MpiContext::WaitFor what, bool send, const Tensor& buf, int peer);

  mpi::MpiCommunicator* host_;
  std::unique_ptr<weft::Communicator> host_owner_;  // null for the world (owned by the launcher)
  std::shared_ptr<NcclState> state_;
  std::shared_ptr<P2pQueue> p2p_;  // shared with the Works of queued operations
  uint64_t id_;
  double timeout_s_;
  int64_t bytes_sent_ = 0;
};

class NcclLauncher : public CommLauncher {
 public:
  explicit NcclLauncher(double timeout_s) : timeout_s_(timeout_s) {}
  LaunchInfo detect() const override { return mpi::detect_launch_env(); }
  void run(int world, const std::function<void(weft::Communicator&, const LaunchInfo&)>& per_rank) override;
  void validate(int world) const override;

 private:
  double timeout_s_;
};

}  // namespace weft::nccl
