// Backend: device memory with accounting by category, and the kernel set the
// nn blocks need. Pointers are device pointers of this backend; row-major,
// contiguous. Letters: B batch, T time, C channels, V vocab (Vp padded),
// H heads, N = B*T rows.
//
// The dtype contract (docs/plugins.md): a precision mode keeps the weights the
// model computes with in F32, BF16 or F16, and casts GEMM inputs to that
// dtype. So GEMM inputs, every weight a kernel reads (bias, LayerNorm
// weight and bias, embedding table) and the activations kept for backward in
// that dtype (GeLU's input, attention's q|k|v and output, the norms' inputs)
// are TypedPtr: a pointer with its dtype.
// Everything a kernel writes, and every other input (activations, gradients,
// optimizer state), is fp32. Arithmetic is fp32 throughout (16-bit values are
// widened on load): GEMMs accumulate in fp32, reductions, LayerNorm
// statistics, softmax and cross entropy as before. With F32 inputs every
// kernel gives exactly the bits it gave before the contract had dtypes.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "weft/error.hpp"
#include "weft/options.hpp"
#include "weft/plugin.hpp"
#include "weft/tensor.hpp"

namespace weft {

struct MemStats {
  std::array<int64_t, kMemCategoryCount> current{};  // bytes live now
  std::array<int64_t, kMemCategoryCount> peak{};     // high-water mark since reset_peak()
};

// A read-only device pointer and the dtype of what it points at (F32, BF16, F16).
// An fp32 pointer converts implicitly, so fp32 call sites read as before.
struct TypedPtr {
  const void* data = nullptr;
  DType dtype = DType::F32;
  TypedPtr() = default;
  TypedPtr(const float* p) : data(p) {}  // NOLINT(google-explicit-constructor)
  TypedPtr(const void* p, DType t) : data(p), dtype(t) {}
  static TypedPtr of(const Tensor& t) { return TypedPtr(t.raw(), t.dtype()); }
};

// C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b], row-major; op(A) is [m,k], op(B) [k,n].
// With beta = 0, C is only written: its old contents (even NaN) do not matter.
// A and B may each be F32, BF16 or F16; products are accumulated in fp32 and C is fp32.
struct GemmArgs {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  float alpha = 1.f, beta = 0.f;
  TypedPtr a; int64_t lda = 0;
  TypedPtr b; int64_t ldb = 0;
  float* c = nullptr; int64_t ldc = 0;
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;  // elements
};

// Dropout of x[B,T,C] (see weft/rng.hpp): sample first_sample + b, element
// index (t0 + t) * C + c, so a slice of the sequence (sequence parallelism)
// draws the elements of the full sequence it holds.
struct DropoutArgs {
  float p = 0.f;              // drop probability; kept elements are scaled by 1 / (1 - p)
  uint64_t key = 0;           // dropout_site_key(seed, site name)
  int64_t first_sample = 0;   // sample index of batch row 0
  int64_t t0 = 0;             // position of row t = 0 in the full sequence
};

// What the fused attention masks and drops beyond the causal mask; defaults: nothing.
struct AttentionMask {
  // [B,T] int32: the first position of each query's document; query i sees
  // keys doc_start[b,i] <= j <= i (Megatron's reset_attention_mask). Null: all j <= i.
  const int32_t* doc_start = nullptr;
  // Dropout of the attention probabilities, element index (head * T + i) * T + j
  // with head the logical head (first_head + local head) and sample first_sample + b.
  float dropout = 0.f;
  uint64_t dropout_key = 0;
  int64_t first_sample = 0;
  int64_t first_head = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;
  virtual int threads() const = 0;

  // Zero-filled allocation of `shape` counted under `category`.
  virtual Tensor alloc(const Shape& shape, DType dtype, MemCategory category) = 0;
  // The same without the zero fill: contents unspecified. Only for buffers the
  // next kernel overwrites whole (a GEMM output with beta 0, the outputs of
  // layernorm_forward, gelu_*, attention_*, add, cross_entropy).
  virtual Tensor alloc_uninitialized(const Shape& shape, DType dtype, MemCategory category) = 0;
  virtual MemStats mem_stats() const = 0;
  virtual void reset_peak() = 0;
  virtual void copy_to_host(void* dst, const Tensor& src) = 0;
  virtual void copy_from_host(const Tensor& dst, const void* src) = 0;
  virtual void copy(const Tensor& dst, const Tensor& src) = 0;
  virtual void synchronize() = 0;

  virtual void gemm(const GemmArgs& args) = 0;
  // out[N,O] += bias[O] broadcast over rows
  virtual void add_bias(float* out, TypedPtr bias, int64_t n, int64_t o) = 0;
  // dbias[O] += sum over rows of dout[N,O]
  virtual void bias_grad(float* dbias, const float* dout, int64_t n, int64_t o) = 0;

  // out[N,C] = (x - mean) * rstd * w + b; saves mean[N], rstd[N] (fp32 statistics).
  // x is F32, BF16 or F16: 16-bit modes keep a norm's input in the compute dtype
  // and normalise that rounded copy, so backward reads the values forward used.
  virtual void layernorm_forward(float* out, float* mean, float* rstd, TypedPtr x,
                                 TypedPtr w, TypedPtr b, int64_t n, int64_t c, float eps) = 0;
  // dx[N,C] += ..., dw[C] += ..., db[C] += ... (x as forward read it)
  virtual void layernorm_backward(float* dx, float* dw, float* db, const float* dout, TypedPtr x,
                                  TypedPtr w, const float* mean, const float* rstd, int64_t n,
                                  int64_t c) = 0;
  // GeLU, tanh approximation: out[n] = gelu(x), dx[n] = gelu'(x) dout (overwritten).
  // x is F32, BF16 or F16 (a 16-bit mode keeps GeLU's input in its compute dtype).
  virtual void gelu_forward(float* out, TypedPtr x, int64_t n) = 0;
  virtual void gelu_backward(float* dx, TypedPtr x, const float* dout, int64_t n) = 0;
  // Exact GeLU x * Phi(x) = x/2 (1 + erf(x / sqrt 2)) (model.gelu = "erf"); a backend without it refuses.
  virtual void gelu_erf_forward(float* /*out*/, TypedPtr /*x*/, int64_t /*n*/) {
    throw Error("backend '" + name() + "' has no exact (erf) GeLU kernel (set model.gelu = \"tanh\")");
  }
  virtual void gelu_erf_backward(float* /*dx*/, TypedPtr /*x*/, const float* /*dout*/, int64_t /*n*/) {
    throw Error("backend '" + name() + "' has no exact (erf) GeLU kernel (set model.gelu = \"tanh\")");
  }

  // Causal multi-head attention. qkv[B,T,3C] (q|k|v, heads of size C/H inside each;
  // F32, BF16 or F16: 16-bit modes keep it in the compute dtype), out[B,T,C],
  // lse[B,H,T] log-sum-exp of each score row (saved for backward).
  // `mask` adds document boundaries and dropout (backward takes the same mask).
  virtual void attention_forward(float* out, float* lse, TypedPtr qkv, int64_t b, int64_t t,
                                 int64_t c, int64_t h, const AttentionMask& mask = {}) = 0;
  // dqkv[B,T,3C] = gradient (overwritten); out as forward wrote it or rounded to
  // the compute dtype (what 16-bit modes keep)
  virtual void attention_backward(float* dqkv, const float* dout, TypedPtr qkv, TypedPtr out,
                                  const float* lse, int64_t b, int64_t t, int64_t c, int64_t h,
                                  const AttentionMask& mask = {}) = 0;
  // In place: x[B,T,C] *= keep / (1 - p), the mask drawn from the counter-based
  // RNG; forward and backward both call it (the same mask). A backend without
  // it refuses dropout.
  virtual void dropout(float* /*x*/, int64_t /*b*/, int64_t /*t*/, int64_t /*c*/, const DropoutArgs& /*args*/) {
    throw Error("backend '" + name() + "' has no dropout kernel (set model.hidden_dropout = 0)");
  }

  // Rows [first, first + rows) of a table (all of it, or this rank's vocabulary shard):
  // out[N,C] = table[ids[n] - first, :] for ids in that range, 0 for the others.
  virtual void embedding_forward(float* out, const int32_t* ids, TypedPtr table, int64_t n, int64_t c,
                                 int64_t first, int64_t rows) = 0;
  // dtable[ids[n] - first, :] += dout[n, :] for ids in [first, first + rows)
  virtual void embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t n, int64_t c,
                                  int64_t first, int64_t rows) = 0;

  // Fused softmax cross-entropy over the first v of vp columns of logits[N,Vp].
  // losses[N] = -log softmax(logits)[target]; when dlogits is non-null it gets
  // dloss_scale * (softmax - onehot) (padded columns 0). Targets < 0 are ignored
  // (loss 0, gradient 0). dlogits may be logits itself: the gradient then
  // replaces the logits in place (no second [N,Vp] buffer).
  virtual void cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                             int64_t n, int64_t v, int64_t vp, float dloss_scale) = 0;

  // Vocabulary-parallel cross entropy, in three passes over one shard:
  // logits[N,Vs] are the logical columns [first, first + Vs) of [N,Vp]; columns
  // >= v are padding. Between the passes the caller reduces over the shards:
  // row_max with Max, target_logit and sum_exp with Sum.
  // Pass 1: row_max[N] = max over the shard's real columns (-inf when none);
  // target_logit[N] = the target's logit when this shard holds it, else 0.
  virtual void xent_shard_max(float* row_max, float* target_logit, const float* logits, const int32_t* targets,
                              int64_t n, int64_t vs, int64_t first, int64_t v) = 0;
  // Pass 2: sum_exp[N] = sum over the shard's real columns of exp(logit - row_max).
  virtual void xent_shard_sum_exp(float* sum_exp, const float* logits, const float* row_max, int64_t n,
                                  int64_t vs, int64_t first, int64_t v) = 0;
  // Pass 3: losses[N] = log(sum_exp) + row_max - target_logit (0 for targets < 0);
  // dlogits (may alias logits) = dloss_scale * (softmax - onehot) on real columns, 0 on padding.
  virtual void xent_shard_finish(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                                 const float* row_max, const float* sum_exp, const float* target_logit,
                                 int64_t n, int64_t vs, int64_t first, int64_t v, float dloss_scale) = 0;

  virtual void add(float* out, const float* a, const float* b, int64_t n) = 0;  // out = a + b
  virtual void accumulate(float* acc, const float* x, int64_t n) = 0;          // acc += x
  virtual void scale(float* x, float s, int64_t n) = 0;                        // x *= s
  virtual void fill(float* x, float value, int64_t n) = 0;  // x = value (also clears inf/nan, unlike scale(0))
  // x (F32, BF16 or F16) summed in fp64: 16-bit values are widened exactly first.
  virtual double sum_squares(TypedPtr x, int64_t n) = 0;
  // acc[numel] += x[numel], acc F32, BF16 or F16: each sum is formed in fp32
  // and rounded once to acc's dtype (round to nearest even); 16-bit gradient
  // buffers accumulate with it.
  virtual void accumulate_rounded(const Tensor& acc, const float* x) = 0;
  virtual void zero(const Tensor& x) = 0;  // every byte 0: +0 in every dtype (also clears inf/nan)
  virtual double sum(const float* x, int64_t n) = 0;

  // AdamW on a flat range, decoupled weight decay: p -= lr*(mhat/(sqrt(vhat)+eps) + wd*p),
  // with the gradient taken as grad_scale * g[i] (one fp32 multiply, the clip
  // factor; 1 = unclipped), so clipping costs no separate pass over g.
  virtual void adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1,
                     float beta2, float eps, float weight_decay, int64_t step, float grad_scale) = 0;
  // dst (bf16/f16/f32) = cast(src) and back, round to nearest even (inf where
  // f16 overflows); the compute copy of the weights is made with it.
  virtual void cast(const Tensor& dst, const Tensor& src) = 0;
  // Whether this backend runs the kernels above with 16-bit weights and GEMM
  // inputs of `dtype` (`weft check` refuses a precision it cannot run).
  virtual bool supports_compute_dtype(DType dtype) const = 0;

  // ---- Llama-family kernels (RMSNorm, rotary embeddings, SwiGLU, grouped-query attention)

  // out[N,C] = x * rstd * w with rstd[N] = 1 / sqrt(mean(x^2) + eps) (saved for backward).
  // x is F32, BF16 or F16, as layernorm_forward's.
  virtual void rmsnorm_forward(float* out, float* rstd, TypedPtr x, TypedPtr w, int64_t n, int64_t c,
                               float eps) = 0;
  // dx[N,C] = gradient (overwritten), dw[C] += sum over rows of dout * x * rstd.
  virtual void rmsnorm_backward(float* dx, float* dw, const float* dout, TypedPtr x, TypedPtr w,
                                const float* rstd, int64_t n, int64_t c) = 0;
  // Rotary position embedding on x[B,T,H,D] (D even), position = t, Hugging Face's
  // rotate-half layout: for i < D/2, angle = t * theta^(-2i/D),
  //   out[i] = x[i] cos - x[i+D/2] sin,  out[i+D/2] = x[i+D/2] cos + x[i] sin.
  // out may alias x.
  virtual void rope_forward(float* out, const float* x, int64_t b, int64_t t, int64_t h, int64_t d,
                            float theta) = 0;
  // dx = the transposed rotation of dout (same layout; dx may alias dout).
  virtual void rope_backward(float* dx, const float* dout, int64_t b, int64_t t, int64_t h, int64_t d,
                             float theta) = 0;
  // SwiGLU: out[n] = silu(gate) * up, silu(g) = g / (1 + e^-g). gate and up
  // are F32, BF16 or F16 (16-bit modes keep them in the compute dtype, as GeLU's input).
  virtual void swiglu_forward(float* out, TypedPtr gate, TypedPtr up, int64_t n) = 0;
  // dgate, dup (overwritten) from dout.
  virtual void swiglu_backward(float* dgate, float* dup, TypedPtr gate, TypedPtr up, const float* dout,
                               int64_t n) = 0;
  // Grouped-query attention through the fused kernel: q[B,T,H*D], k and v
  // [B,T,KV*D] with KV dividing H -> qkv[B,T,3*H*D] (the attention_* layout),
  // head i reading kv head i / (H/KV) (Hugging Face's repeat_kv).
  virtual void gqa_pack(float* qkv, const float* q, const float* k, const float* v, int64_t b, int64_t t,
                        int64_t h, int64_t kv, int64_t d) = 0;
  // The transpose: dq, dk, dv (overwritten) from dqkv; dk and dv sum over the heads of their group.
  virtual void gqa_unpack(float* dq, float* dk, float* dv, const float* dqkv, int64_t b, int64_t t, int64_t h,
                          int64_t kv, int64_t d) = 0;
};

struct BackendEnv {
  int rank = 0;        // global rank
  int local_rank = 0;  // rank on this node (device choice)
  int cores = 1;       // CPU cores this rank may use (share of the node)
};

template <>
struct FamilyTraits<Backend> {
  static constexpr const char* kName = "backend";
  using Factory = std::function<std::unique_ptr<Backend>(const Options&, const BackendEnv&)>;
};

}  // namespace weft
