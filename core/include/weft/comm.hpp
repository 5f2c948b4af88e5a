// Communicator (c10d/NCCL-like): collectives on Tensors of this rank's backend
// device, async work handles, a per-call timeout, and counters of bytes sent.
// A CommLauncher starts the ranks: threads in one process (comm-local) or one
// process per rank under mpirun/srun (comm-mpi, comm-nccl).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "weft/options.hpp"
#include "weft/plugin.hpp"
#include "weft/tensor.hpp"

namespace weft {

enum class ReduceOp { Sum, Max, Min };

// An operation in flight. wait() throws weft::Error naming the collective and
// the ranks that did not arrive when the timeout passes or a peer failed.
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
  virtual bool done() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;

  // buf[n] reduced in place on every rank
  virtual std::unique_ptr<Work> all_reduce(const Tensor& buf, ReduceOp op) = 0;
  // in[size*n] -> out[n]: rank r gets the reduction of block r
  virtual std::unique_ptr<Work> reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) = 0;
  // in[n] -> out[size*n], block r from rank r
  virtual std::unique_ptr<Work> all_gather(const Tensor& in, const Tensor& out) = 0;
  // in[size*n] -> out[size*n]: block j of rank i lands in block i of rank j
  virtual std::unique_ptr<Work> all_to_all(const Tensor& in, const Tensor& out) = 0;
  // counts in elements, one per peer; blocks packed in rank order
  virtual std::unique_ptr<Work> all_to_all_v(const Tensor& in, const std::vector<int64_t>& in_counts,
                                             const Tensor& out, const std::vector<int64_t>& out_counts) = 0;
  virtual std::unique_ptr<Work> send(const Tensor& buf, int peer, int tag) = 0;
  virtual std::unique_ptr<Work> recv(const Tensor& buf, int peer, int tag) = 0;
  virtual std::unique_ptr<Work> broadcast(const Tensor& buf, int root) = 0;
  virtual void barrier() = 0;

  // Ranks with the same color form a new communicator ordered by (key, rank).
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  virtual void set_timeout(double seconds) = 0;
  virtual int64_t bytes_sent() const = 0;  // by this rank, since creation
};

struct LaunchInfo {
  bool external = false;  // started by mpirun/srun/torchrun: world and rank from the environment
  int world = 1;
  int rank = 0;
  int local_rank = 0;
  int local_size = 1;
};

class CommLauncher {
 public:
  virtual ~CommLauncher() = default;
  // What the environment says about this process (launcher variables).
  virtual LaunchInfo detect() const = 0;
  // Runs `per_rank` once for every rank this process hosts; returns when all ended.
  // An exception in any rank is rethrown after every rank stopped.
  virtual void run(int world, const std::function<void(Communicator& world_comm, const LaunchInfo&)>& per_rank) = 0;
  // Refuses, before any rank starts, what run() could not do on this machine
  // (comm-nccl without a GPU); `weft check` calls it too.
  virtual void validate(int world) const { (void)world; }
};

template <>
struct FamilyTraits<CommLauncher> {
  static constexpr const char* kName = "communicator";
  using Factory = std::function<std::unique_ptr<CommLauncher>(const Options&)>;
};

}  // namespace weft
