// LayerProvider (family tensor_parallel): builds the layers whose weights a
// tensor-parallel strategy shards. The serial provider builds plain layers;
// Megatron-style providers build column/row-parallel ones over the tp group.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "weft/comm.hpp"
#include "weft/module.hpp"
#include "weft/options.hpp"
#include "weft/plugin.hpp"
#include "weft/topology.hpp"

namespace weft {

struct LinearSpec {
  std::string name;  // logical prefix, e.g. "blocks.0.attn.qkv"
  int64_t in = 0, out = 0;
  bool bias = true;
  float init_std = 0.02f;
};

class LayerProvider {
 public:
  virtual ~LayerProvider() = default;
  // y[N,out] = x[N,in] W^T + b, output features split over tp.
  virtual std::unique_ptr<Module> column_linear(const LinearSpec& spec) = 0;
  // input features split over tp, output reduced over tp.
  virtual std::unique_ptr<Module> row_linear(const LinearSpec& spec) = 0;
  virtual int tp_size() const = 0;
};

struct ParallelEnv {
  const Topology* topology = nullptr;
  Communicator* tp = nullptr;
  Communicator* pp = nullptr;
  Communicator* dp = nullptr;
  Communicator* ep = nullptr;
  Backend* backend = nullptr;
};

template <>
struct FamilyTraits<LayerProvider> {
  static constexpr const char* kName = "tensor_parallel";
  using Factory = std::function<std::unique_ptr<LayerProvider>(const Options&, const ParallelEnv&)>;
};

}  // namespace weft
