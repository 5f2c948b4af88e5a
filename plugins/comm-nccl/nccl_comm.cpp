#include "nccl_comm.hpp"

#include <exception>
#include <mutex>

#include "weft/error.hpp"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 18, 0)
#error "comm-nccl needs NCCL 2.18 or newer (ncclCommSplit)"
#endif

namespace weft::nccl {

namespace {

void cuda_check(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) throw Error("comm-nccl: " + what + ": " + cudaGetErrorString(e));
}

void nccl_check(ncclResult_t r, const std::string& what) {
  if (r != ncclSuccess) throw Error("comm-nccl: " + what + ": " + ncclGetErrorString(r));
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return ncclFloat32;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    case DType::U8: return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: return ncclMin;
  }
  return ncclSum;
}

void require_device(const Tensor& t, const std::string& op) {
  if (t.device() != Device::Cuda)
    throw Error(op + ": comm-nccl moves CUDA tensors; use comm-mpi (or comm-local) for host tensors");
}

// A host tensor over memory this code owns (bootstrap messages).
Tensor host_view(void* data, int64_t bytes) {
  auto storage = std::make_shared<Storage>();
  storage->data = data;
  storage->bytes = static_cast<size_t>(bytes);
  storage->device = Device::Host;
  return Tensor(storage, 0, {bytes}, DType::U8);
}

char* at(const Tensor& t, int64_t elements) {
  return static_cast<char*>(t.raw()) + elements * static_cast<int64_t>(dtype_size(t.dtype()));
}

class DoneWork : public Work {
 public:
  void wait() override {}
  bool done() override { return true; }
};

// Buffers of operations abandoned after a failure stay allocated.
void bury(std::vector<Tensor> tensors) {
  static auto* graveyard = new std::vector<std::vector<Tensor>>;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  graveyard->push_back(std::move(tensors));
}

std::shared_ptr<NcclState> make_state(ncclComm_t comm, int device) {
  auto st = std::make_shared<NcclState>();
  st->comm = comm;
  st->device = device;
  cuda_check(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  cuda_check(cudaEventCreateWithFlags(&st->ready, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  return st;
}

// When an operation is done on the GPU: its event, recorded on the state's
// stream once the operation is launched (at once for a collective; for a
// send or receive when its queue is flushed). Shared by the Works of one batch.
struct Completion {
  cudaEvent_t event = nullptr;
  Completion() = default;
  Completion(const Completion&) = delete;
  Completion& operator=(const Completion&) = delete;
  ~Completion() {
    if (event) cudaEventDestroy(event);
  }
};

// Records a new event on the state's stream into `c`.
void record_completion(NcclState& state, Completion& c) {
  cuda_check(cudaEventCreateWithFlags(&c.event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  cuda_check(cudaEventRecord(c.event, state.stream), "cudaEventRecord");
}

// Makes the state's stream wait for the work queued so far on the legacy
// default stream (where the backends' kernels run).
void after_legacy_stream(NcclState& state) {
  cuda_check(cudaSetDevice(state.device), "cudaSetDevice");
  cuda_check(cudaEventRecord(state.ready, cudaStreamLegacy), "cudaEventRecord");
  cuda_check(cudaStreamWaitEvent(state.stream, state.ready, 0), "cudaStreamWaitEvent");
}

}  // namespace

// The sends and receives queued since the last flush: one batch, one Completion.
struct P2pQueue {
  struct Op {
    bool send;
    Tensor buf;
    int peer;
  };
  std::shared_ptr<NcclState> state;
  std::vector<Op> ops;
  std::shared_ptr<Completion> batch = std::make_shared<Completion>();  // what the queued ops complete with

  explicit P2pQueue(std::shared_ptr<NcclState> s) : state(std::move(s)) {}

  // Launches every queued op in one group (in the order queued; NCCL matches
  // a peer's sends and receives in order) and starts the next batch.
  void flush() {
    if (ops.empty()) return;
    if (state->aborted) throw Error("send/recv: the NCCL communicator was aborted after an earlier failure");
    after_legacy_stream(*state);
    nccl_check(ncclGroupStart(), "ncclGroupStart");
    for (const Op& op : ops) {
      if (op.send)
        nccl_check(ncclSend(op.buf.raw(), op.buf.numel(), nccl_type(op.buf.dtype()), op.peer, state->comm,
                            state->stream),
                   "ncclSend");
      else
        nccl_check(ncclRecv(op.buf.raw(), op.buf.numel(), nccl_type(op.buf.dtype()), op.peer, state->comm,
                            state->stream),
                   "ncclRecv");
    }
    nccl_check(ncclGroupEnd(), "ncclGroupEnd (a batch of " + std::to_string(ops.size()) + " sends and receives)");
    record_completion(*state, *batch);
    ops.clear();
    batch = std::make_shared<Completion>();
  }
};

namespace {

class NcclWork : public Work {
 public:
  // `queue`: for a send or receive, the queue that launches it (null for a collective).
  NcclWork(std::shared_ptr<mpi::MpiContext> ctx, std::shared_ptr<NcclState> state,
           std::shared_ptr<Completion> completion, std::shared_ptr<P2pQueue> queue, mpi::MpiContext::WaitFor what,
           std::vector<Tensor> keep)
      : ctx_(std::move(ctx)),
        state_(std::move(state)),
        completion_(std::move(completion)),
        queue_(std::move(queue)),
        what_(std::move(what)),
        keep_(std::move(keep)) {}

  ~NcclWork() override {
    if (!done_) {
      bool waited = false;
      if (std::uncaught_exceptions() == 0 && !ctx_->failing() && !state_->aborted) {
        try {
          wait();
          waited = true;
        } catch (const std::exception&) {
        }
      }
      if (!waited) bury(std::move(keep_));
    }
  }

  void wait() override {
    if (done_) return;
    try {
      ctx_->wait([this] { return poll(); }, what_);
    } catch (...) {
      state_->abort();  // frees the GPU from kernels that wait for missing peers
      throw;
    }
    done_ = true;
    keep_.clear();
  }

  bool done() override {
    if (done_) return true;
    if (poll()) {
      done_ = true;
      keep_.clear();
    }
    return done_;
  }

 private:
  bool poll() {
    if (state_->aborted) throw Error(what_.op + ": the NCCL communicator was aborted after a failure");
    if (!completion_->event) queue_->flush();  // a queued send or receive: launch its batch now
    ncclResult_t async = ncclSuccess;
    nccl_check(ncclCommGetAsyncError(state_->comm, &async), what_.op);
    if (async != ncclSuccess && async != ncclInProgress)
      throw Error(what_.op + ": NCCL reported " + ncclGetErrorString(async));
    cudaError_t q = cudaEventQuery(completion_->event);
    if (q == cudaSuccess) return true;
    if (q != cudaErrorNotReady) cuda_check(q, what_.op);
    return false;
  }

  std::shared_ptr<mpi::MpiContext> ctx_;
  std::shared_ptr<NcclState> state_;
  std::shared_ptr<Completion> completion_;
  std::shared_ptr<P2pQueue> queue_;
  mpi::MpiContext::WaitFor what_;
  std::vector<Tensor> keep_;
  bool done_ = false;
};

}  // namespace

NcclState::~NcclState() {
  if (comm && !aborted) ncclCommDestroy(comm);
  if (ready) cudaEventDestroy(ready);
  if (stream) cudaStreamDestroy(stream);
}

void NcclState::abort() {
  if (comm && !aborted) ncclCommAbort(comm);
  aborted = true;
}

NcclCommunicator::NcclCommunicator(mpi::MpiCommunicator* host, std::unique_ptr<weft::Communicator> host_owner,
                                   std::shared_ptr<NcclState> state, double timeout_s)
    : host_(host),
      host_owner_(std::move(host_owner)),
      state_(std::move(state)),
      p2p_(std::make_shared<P2pQueue>(state_)),
      id_(host->id() ^ 0x6e63636c5f636f6dULL),
      timeout_s_(timeout_s) {}

std::unique_ptr<NcclCommunicator> NcclCommunicator::create(mpi::MpiCommunicator& host, int device, double timeout_s) {
  cuda_check(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
  ncclUniqueId uid{};
  if (host.rank() == 0) nccl_check(ncclGetUniqueId(&uid), "ncclGetUniqueId");
  host.broadcast(host_view(&uid, sizeof uid), 0)->wait();
  ncclComm_t comm = nullptr;
  nccl_check(ncclCommInitRank(&comm, host.size(), uid, host.rank()), "ncclCommInitRank");
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(&host, nullptr, make_state(comm, device), timeout_s));
}

NcclCommunicator::~NcclCommunicator() {
  // After a failure (or while one unwinds) operations may never finish:
  // abort instead of ncclCommDestroy, which would wait for them.
  if (std::uncaught_exceptions() > 0 || host_->context()->failing()) state_->abort();
}

void NcclCommunicator::set_timeout(double seconds) {
  timeout_s_ = seconds;
  host_->set_timeout(seconds);
}

void NcclCommunicator::count_ring(double bytes) {
  int n = size();
  bytes_sent_ += static_cast<int64_t>(bytes * (n - 1) / n);
}

mpi::MpiContext::WaitFor NcclCommunicator::collective(const char* op) {
  mpi::MpiContext::WaitFor w;
  w.op = op;
  w.comm_id = id_;
  w.seq = host_->context()->enter(id_);
  w.members = host_->members();
  w.timeout_s = timeout_s_;
  return w;
}

mpi::MpiContext::WaitFor NcclCommunicator::p2p(const std::string& op, int peer) {
  mpi::MpiContext::WaitFor w;
  w.op = op + std::to_string(host_->members()[peer]);
  w.comm_id = id_;
  w.members = host_->members();
  w.peer = host_->members()[peer];
  w.timeout_s = timeout_s_;
  return w;
}

template <class F>
std::unique_ptr<Work> NcclCommunicator::launch(mpi::MpiContext::WaitFor what, std::vector<Tensor> keep, F enqueue) {
  if (state_->aborted) throw Error(what.op + ": the NCCL communicator was aborted after an earlier failure");
  p2p_->flush();  // queued sends and receives go first, in the order the rank issued them
  after_legacy_stream(*state_);
  enqueue();
  auto done = std::make_shared<Completion>();
  record_completion(*state_, *done);
  return std::make_unique<NcclWork>(host_->context(), state_, std::move(done), nullptr, std::move(what),
                                    std::move(keep));
}

std::unique_ptr<Work> NcclCommunicator::queue_p2p(mpi::MpiContext::WaitFor what, bool send, const Tensor& buf,
                                                  int peer) {
  if (state_->aborted) throw Error(what.op + ": the NCCL communicator was aborted after an earlier failure");
  p2p_->ops.push_back(P2pQueue::Op{send, buf, peer});
  return std::make_unique<NcclWork>(host_->context(), state_, p2p_->batch, p2p_, std::move(what),
                                    std::vector<Tensor>{buf});
}

std::unique_ptr<Work> NcclCommunicator::all_reduce(const Tensor& buf, ReduceOp op) {
  require_device(buf, "all_reduce");
  if (size() == 1) return std::make_unique<DoneWork>();
  auto work = launch(collective("all_reduce"), {buf}, [&] {
    nccl_check(ncclAllReduce(buf.raw(), buf.raw(), buf.numel(), nccl_type(buf.dtype()), nccl_op(op), state_->comm,
                             state_->stream),
               "ncclAllReduce");
  });
  count_ring(2.0 * static_cast<double>(buf.bytes()));
  return work;
}

std::unique_ptr<Work> NcclCommunicator::reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op) {
  require_device(in, "reduce_scatter");
  require_device(out, "reduce_scatter");
  if (in.numel() != out.numel() * size() || in.dtype() != out.dtype())
    throw Error("reduce_scatter: in must be size x out of the same dtype");
  auto work = launch(collective("reduce_scatter"), {in, out}, [&] {
    nccl_check(ncclReduceScatter(in.raw(), out.raw(), out.numel(), nccl_type(out.dtype()), nccl_op(op), state_->comm,
                                 state_->stream),
               "ncclReduceScatter");
  });
  count_ring(static_cast<double>(in.bytes()));
  return work;
}

std::unique_ptr<Work> NcclCommunicator::all_gather(const Tensor& in, const Tensor& out) {
  require_device(in, "all_gather");
  require_device(out, "all_gather");
  if (out.numel() != in.numel() * size() || in.dtype() != out.dtype())
    throw Error("all_gather: out must be size x in of the same dtype");
  auto work = launch(collective("all_gather"), {in, out}, [&] {
    nccl_check(ncclAllGather(in.raw(), out.raw(), in.numel(), nccl_type(in.dtype()), state_->comm, state_->stream),
               "ncclAllGather");
  });
  count_ring(static_cast<double>(out.bytes()));
  return work;
}

std::unique_ptr<Work> NcclCommunicator::all_to_all(const Tensor& in, const Tensor& out) {
  int n = size();
  if (in.numel() % n != 0 || out.numel() != in.numel())
    throw Error("all_to_all: in and out must hold size x n elements");
  std::vector<int64_t> counts(n, in.numel() / n);
  return all_to_all_v(in, counts, out, counts);
}

std::unique_ptr<Work> NcclCommunicator::all_to_all_v(const Tensor& in, const std::vector<int64_t>& in_counts,
                                                      const Tensor& out, const std::vector<int64_t>& out_counts) {
  require_device(in, "all_to_all");
  require_device(out, "all_to_all");
  int n = size();
  if (static_cast<int>(in_counts.size()) != n || static_cast<int>(out_counts.size()) != n || in.dtype() != out.dtype())
    throw Error("all_to_all_v: one count per rank and one dtype expected");
  // Agree on the counts over the host group first (timeout-safe).
  std::vector<int64_t> sent(in_counts), peer(n);
  host_->all_to_all(host_view(sent.data(), n * 8), host_view(peer.data(), n * 8))->wait();
  for (int src = 0; src < n; ++src)
    if (peer[src] != out_counts[src])
      throw Error("all_to_all_v: rank " + std::to_string(host_->members()[src]) + " sends " +
                  std::to_string(peer[src]) + " elements but rank " + std::to_string(host_->members()[rank()]) +
                  " expects " + std::to_string(out_counts[src]));
  ncclDataType_t type = nccl_type(in.dtype());
  auto work = launch(collective("all_to_all"), {in, out}, [&] {
    int64_t so = 0, ro = 0;
    nccl_check(ncclGroupStart(), "ncclGroupStart");
    for (int p = 0; p < n; ++p) {
      if (in_counts[p] > 0) nccl_check(ncclSend(at(in, so), in_counts[p], type, p, state_->comm, state_->stream), "ncclSend");
      if (out_counts[p] > 0) nccl_check(ncclRecv(at(out, ro), out_counts[p], type, p, state_->comm, state_->stream), "ncclRecv");
      so += in_counts[p];
      ro += out_counts[p];
    }
    nccl_check(ncclGroupEnd(), "ncclGroupEnd");
  });
  int64_t bytes = 0;
  for (int p = 0; p < n; ++p)
    if (p != rank()) bytes += in_counts[p];
  bytes_sent_ += bytes * static_cast<int64_t>(dtype_size(in.dtype()));
  return work;
}

// send and recv only queue (see nccl_comm.hpp): the batch launches when one
// of its Works is waited on or polled, or before the next collective.
std::unique_ptr<Work> NcclCommunicator::send(const Tensor& buf, int peer, int /*tag: NCCL matches in order*/) {
  require_device(buf, "send");
  if (peer < 0 || peer >= size()) throw Error("send: peer " + std::to_string(peer) + " is not a rank");
  auto work = queue_p2p(p2p("send to rank ", peer), true, buf, peer);
  bytes_sent_ += static_cast<int64_t>(buf.bytes());
  return work;
}

std::unique_ptr<Work> NcclCommunicator::recv(const Tensor& buf, int peer, int /*tag*/) {
  require_device(buf, "recv");
  if (peer < 0 || peer >= size()) throw Error("recv: peer " + std::to_string(peer) + " is not a rank");
  return queue_p2p(p2p("recv from rank ", peer), false, buf, peer);
}

std::unique_ptr<Work> NcclCommunicator::broadcast(const Tensor& buf, int root) {
  require_device(buf, "broadcast");
  if (size() == 1) return std::make_unique<DoneWork>();
  if (root < 0 || root >= size()) throw Error("broadcast: root " + std::to_string(root) + " is not a rank");
  auto work = launch(collective("broadcast"), {buf}, [&] {
    nccl_check(ncclBroadcast(buf.raw(), buf.raw(), buf.numel(), nccl_type(buf.dtype()), root, state_->comm,
                             state_->stream),
               "ncclBroadcast");
  });
  if (rank() == root) bytes_sent_ += static_cast<int64_t>(buf.bytes());
  return work;
}

void NcclCommunicator::barrier() {
  p2p_->flush();  // a peer may be waiting for a queued send while this rank waits in the barrier
  host_->barrier();
}

std::unique_ptr<weft::Communicator> NcclCommunicator::split(int color, int key) {
  // The host split agrees on membership with a timeout; every member then
  // enters ncclCommSplit, which blocks until all of them did (queued sends go first).
  p2p_->flush();
  std::unique_ptr<weft::Communicator> host_sub = host_->split(color, key);
  auto* mpi_sub = static_cast<mpi::MpiCommunicator*>(host_sub.get());
  cuda_check(cudaSetDevice(state_->device), "cudaSetDevice");
  ncclComm_t sub = nullptr;
  nccl_check(ncclCommSplit(state_->comm, color, key, &sub, nullptr), "ncclCommSplit");
  return std::unique_ptr<NcclCommunicator>(
      new NcclCommunicator(mpi_sub, std::move(host_sub), make_state(sub, state_->device), timeout_s_));
}

namespace {

// The CUDA devices of this node; throws when there is none.
int cuda_devices_or_refuse() {
  int devices = 0;
  cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0)
    throw Error(std::string("comm-nccl: no CUDA device (") + (e == cudaSuccess ? "none found" : cudaGetErrorString(e)) +
                "); use comm-mpi on CPU");
  return devices;
}

}  // namespace

void NcclLauncher::validate(int /*world*/) const { cuda_devices_or_refuse(); }

void NcclLauncher::run(int world, const std::function<void(weft::Communicator&, const LaunchInfo&)>& per_rank) {
  mpi::run_world(timeout_s_, world, [&](mpi::MpiCommunicator& host, const LaunchInfo& info) {
    int devices = cuda_devices_or_refuse();
    auto comm = NcclCommunicator::create(host, info.local_rank % devices, timeout_s_);
    per_rank(*comm, info);
  });
}

}  // namespace weft::nccl
