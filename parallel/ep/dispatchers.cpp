#include "dispatchers.hpp"

#include <algorithm>

#include "weft/error.hpp"

namespace weft {

namespace {

int64_t width(const Tensor& rows) { return rows.shape().size() == 2 ? rows.dim(1) : 0; }

// Row offset of expert `e`'s rows inside source `s`'s token-side block.
int64_t offset_in_source(const DispatchLayout& l, int s, int64_t e) {
  int64_t off = 0;
  for (int64_t x = 0; x < e; ++x) off += l.count(s, x);
  return off;
}

}  // namespace

DispatchLayout RowDispatcher::plan(const std::vector<int64_t>& rows_per_expert) {
  DispatchLayout l;
  l.ep = ep_size();
  l.ep_rank = ep_rank();
  l.experts = static_cast<int64_t>(rows_per_expert.size());
  WEFT_ASSERT(l.experts % l.ep == 0, "dispatcher: experts must split evenly over the ep ranks");
  if (l.ep == 1) {
    l.counts = rows_per_expert;
    return l;
  }
  Tensor mine = backend_->alloc_uninitialized({l.experts}, DType::I64, MemCategory::Workspace);
  Tensor all = backend_->alloc_uninitialized({l.ep * l.experts}, DType::I64, MemCategory::Workspace);
  backend_->copy_from_host(mine, rows_per_expert.data());
  ep_->all_gather(mine, all)->wait();
  l.counts.resize(static_cast<size_t>(l.ep * l.experts));
  backend_->copy_to_host(l.counts.data(), all);
  return l;
}

void RowDispatcher::copy_rows(const Tensor& dst, int64_t to, const Tensor& src, int64_t from, int64_t rows,
                              int64_t c) {
  if (rows > 0) backend_->copy(dst.view(to * c, {rows, c}), src.view(from * c, {rows, c}));
}

// ---------------------------------------------------------------- alltoall

Tensor AllToAllDispatcher::regroup(const DispatchLayout& l, const Tensor& rows, bool to_expert_major) {
  const int64_t c = width(rows), local = l.local_experts(), first = l.first_local();
  Tensor out = backend_->alloc_uninitialized(rows.shape(), DType::F32, MemCategory::Activation);
  // Row offsets of block (s, j) in both orders.
  std::vector<int64_t> source_major(static_cast<size_t>(l.ep * local)), expert_major(source_major.size());
  int64_t off = 0;
  for (int s = 0; s < l.ep; ++s)
    for (int64_t j = 0; j < local; ++j) source_major[s * local + j] = off, off += l.count(s, first + j);
  off = 0;
  for (int64_t j = 0; j < local; ++j)
    for (int s = 0; s < l.ep; ++s) expert_major[s * local + j] = off, off += l.count(s, first + j);
  for (int s = 0; s < l.ep; ++s)
    for (int64_t j = 0; j < local; ++j) {
      const size_t b = static_cast<size_t>(s * local + j);
      const int64_t n = l.count(s, first + j);
      if (to_expert_major)
        copy_rows(out, expert_major[b], rows, source_major[b], n, c);
      else
        copy_rows(out, source_major[b], rows, expert_major[b], n, c);
    }
  return out;
}

Tensor AllToAllDispatcher::to_experts(const DispatchLayout& l, const Tensor& rows) {
  if (l.ep == 1) return rows;
  const int64_t c = width(rows);
  WEFT_ASSERT(rows.dim(0) == l.token_rows(), "alltoall: token rows do not match the layout");
  std::vector<int64_t> send(l.ep), recv(l.ep);
  for (int r = 0; r < l.ep; ++r) {
    send[r] = l.rows_between(l.ep_rank, r) * c;
    recv[r] = l.rows_between(r, l.ep_rank) * c;
  }
  Tensor got = backend_->alloc_uninitialized({l.expert_rows(), c}, DType::F32, MemCategory::Activation);
  ep_->all_to_all_v(rows, send, got, recv)->wait();
  return regroup(l, got, true);
}

Tensor AllToAllDispatcher::to_tokens(const DispatchLayout& l, const Tensor& rows) {
  if (l.ep == 1) return rows;
  const int64_t c = width(rows);
  WEFT_ASSERT(rows.dim(0) == l.expert_rows(), "alltoall: expert rows do not match the layout");
  std::vector<int64_t> send(l.ep), recv(l.ep);
  for (int r = 0; r < l.ep; ++r) {
    send[r] = l.rows_between(r, l.ep_rank) * c;
    recv[r] = l.rows_between(l.ep_rank, r) * c;
  }
  Tensor by_source = regroup(l, rows, false);
  Tensor back = backend_->alloc_uninitialized({l.token_rows(), c}, DType::F32, MemCategory::Activation);
  ep_->all_to_all_v(by_source, send, back, recv)->wait();
  return back;
}

// ---------------------------------------------------------------- allgather

namespace {

int64_t longest_source(const DispatchLayout& l) {
  int64_t n = 0;
  for (int s = 0; s < l.ep; ++s) n = std::max(n, l.rows_of_source(s));
  return n;
}

}  // namespace

Tensor AllGatherDispatcher::to_experts(const DispatchLayout& l, const Tensor& rows) {
  if (l.ep == 1) return rows;
  const int64_t c = width(rows), pad = longest_source(l), first = l.first_local();
  WEFT_ASSERT(rows.dim(0) == l.token_rows(), "allgather: token rows do not match the layout");
  Tensor mine = backend_->alloc({pad, c}, DType::F32, MemCategory::CommBuffer);  // zero padding
  copy_rows(mine, 0, rows, 0, rows.dim(0), c);
  Tensor all = backend_->alloc_uninitialized({l.ep * pad, c}, DType::F32, MemCategory::CommBuffer);
  ep_->all_gather(mine, all)->wait();
  Tensor out = backend_->alloc_uninitialized({l.expert_rows(), c}, DType::F32, MemCategory::Activation);
  int64_t at = 0;
  for (int64_t j = 0; j < l.local_experts(); ++j)
    for (int s = 0; s < l.ep; ++s) {
      const int64_t n = l.count(s, first + j);
      copy_rows(out, at, all, s * pad + offset_in_source(l, s, first + j), n, c);
      at += n;
    }
  return out;
}

Tensor AllGatherDispatcher::to_tokens(const DispatchLayout& l, const Tensor& rows) {
  if (l.ep == 1) return rows;
  const int64_t c = width(rows), pad = longest_source(l), first = l.first_local();
  WEFT_ASSERT(rows.dim(0) == l.expert_rows(), "allgather: expert rows do not match the layout");
  // Every rank's rows at their token-side places, zero elsewhere; the sum over
  // ranks is then each row from the one rank that computed it.
  Tensor all = backend_->alloc({l.ep * pad, c}, DType::F32, MemCategory::CommBuffer);
  int64_t at = 0;
  for (int64_t j = 0; j < l.local_experts(); ++j)
    for (int s = 0; s < l.ep; ++s) {
      const int64_t n = l.count(s, first + j);
      copy_rows(all, s * pad + offset_in_source(l, s, first + j), rows, at, n, c);
      at += n;
    }
  Tensor mine = backend_->alloc_uninitialized({pad, c}, DType::F32, MemCategory::Activation);
  ep_->reduce_scatter(all, mine, ReduceOp::Sum)->wait();
  return mine.view(0, {l.token_rows(), c});
}

}  // namespace weft
