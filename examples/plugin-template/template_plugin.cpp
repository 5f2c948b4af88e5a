// One plugin file, two families: a model built from the SDK's nn blocks and a
// metrics sink. Copy this folder, rename the plugins, keep the shape.
//
//   model "template-gpt":  token embedding [V,C] -> L pre-LN blocks -> LayerNorm
//                          -> output tied to the embedding, cross entropy
//   metrics_sink "template-csv": out_dir/metrics.csv, one row per logged step
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "weft/metrics.hpp"
#include "weft/model.hpp"
#include "weft/nn.hpp"
#include "weft/plugin.hpp"

namespace {

using namespace weft;

// Layer L+1: final LayerNorm and the output tied to the embedding table.
class Head : public Module {
 public:
  Head(LayerProvider& layers, Param& table, int64_t vocab, int64_t dim)
      : table_(table), norm_("lnf", dim), output_(layers.tied_output_loss(table, vocab)) {}
  Tensor forward(Context& ctx, const Tensor& x) override { return output_->forward(ctx, norm_.forward(ctx, x)); }
  Tensor backward(Context& ctx, const Tensor& dy) override { return norm_.backward(ctx, output_->backward(ctx, dy)); }
  void collect_params(std::vector<Param*>& out) override { norm_.collect_params(out); }
  void collect_shared_params(std::vector<Param*>& out) override { out.push_back(&table_); }

 private:
  Param& table_;
  nn::LayerNorm norm_;
  std::unique_ptr<Module> output_;
};

class TemplateGpt : public Model {
 public:
  TemplateGpt(const Options& o, const ModelEnv& env) {
    const int64_t dim = o.get_int("hidden"), heads = o.get_int("heads");
    if (dim % heads != 0) o.fail("heads", "hidden " + std::to_string(dim) + " is not divisible by heads");
    vocab_ = env.vocab_size;
    seq_ = o.get_int("seq_length");
    dim_ = dim;
    LayerProvider& layers = env.layers ? *env.layers : serial_;
    const int64_t pad = 64 * layers.tp_size();  // every tensor-parallel shard a multiple of 64 rows
    const int64_t padded = (vocab_ + pad - 1) / pad * pad;
    embedding_ = layers.embedding("wte", padded, dim, 0.02f);
    for (int64_t i = 0; i < o.get_int("layers"); ++i)
      blocks_.push_back(std::make_unique<nn::Block>("blocks." + std::to_string(i), dim, heads, layers));
    head_ = std::make_unique<Head>(layers, embedding_->weight(), vocab_, dim);
  }
  std::vector<Module*> layers() override {
    std::vector<Module*> out{embedding_.get()};
    for (auto& b : blocks_) out.push_back(b.get());
    out.push_back(head_.get());
    return out;
  }
  std::vector<Param*> params() override {
    std::vector<Param*> out;
    for (Module* m : layers()) m->collect_params(out);
    return out;
  }
  ModelSummary summary() const override {
    ModelSummary s;
    s.seq_length = seq_;
    s.hidden = dim_;
    s.vocab = vocab_;
    s.padded_vocab = embedding_->weight().full_shape[0];
    for (Param* p : const_cast<TemplateGpt*>(this)->params()) s.params += shape_numel(p->full_shape);
    s.flops_per_token = 6 * s.params;
    s.act_bytes_per_sample = 4 * seq_ * dim_ * 16 * static_cast<int64_t>(blocks_.size());
    return s;
  }

 private:
  nn::SerialLayerProvider serial_;
  int64_t vocab_ = 0, seq_ = 0, dim_ = 0;
  std::unique_ptr<TableEmbedding> embedding_;
  std::vector<std::unique_ptr<nn::Block>> blocks_;
  std::unique_ptr<Head> head_;
};

class CsvSink : public MetricsSink {
 public:
  CsvSink(const Options& o, const MetricsEnv& env) : out_(env.out_dir + "/" + o.get_string("file"), std::ios::app) {
    if (!out_) throw Error(env.out_dir + "/" + o.get_string("file") + ": cannot open for writing");
  }
  void write(const MetricsRecord& r) override {
    if (!header_done_) {
      out_ << "step";
      for (const auto& [name, value] : r.values) out_ << "," << name;
      out_ << "\n";
      header_done_ = true;
    }
    out_ << r.step;
    char buf[32];
    for (const auto& [name, value] : r.values) {
      std::snprintf(buf, sizeof buf, "%.9g", value);
      out_ << "," << buf;
    }
    out_ << "\n";
  }
  void flush() override { out_.flush(); }

 private:
  std::ofstream out_;
  bool header_done_ = false;
};

void register_template(Registry& registry) {
  registry.add<Model>("template-gpt",
                      {opt_int("layers", 2, "transformer blocks", 1, 64), opt_int("hidden", 64, "width C", 1, 4096),
                       opt_int("heads", 4, "attention heads; must divide hidden", 1, 64),
                       opt_int("seq_length", 32, "sequence length T", 1, 8192)},
                      "a small GPT made of the SDK's nn blocks (template)",
                      [](const Options& o, const ModelEnv& env) { return std::make_unique<TemplateGpt>(o, env); });
  registry.add<MetricsSink>("template-csv", {opt_string("file", "metrics.csv", "file under out_dir")},
                            "one CSV row per logged step (template)",
                            [](const Options& o, const MetricsEnv& env) { return std::make_unique<CsvSink>(o, env); });
}

}  // namespace

WEFT_PLUGIN("model", "template-gpt", "0.1.0", register_template)
