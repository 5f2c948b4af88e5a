// Tensor: dtype, shape, device and a shared storage; always contiguous, with
// cheap views (offset + shape) into the same storage. No autograd tape.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace weft {

enum class DType : uint8_t { F32, BF16, F16, I32, I64, U8 };
enum class Device : uint8_t { Host, Cuda };

// Memory is accounted by what it is for (metrics.jsonl, `weft check`).
enum class MemCategory : uint8_t { Param, Grad, OptimState, Activation, CommBuffer, Workspace };
inline constexpr int kMemCategoryCount = 6;

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* mem_category_name(MemCategory category);

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);

// Owns one allocation; `release` returns it to the backend that made it.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::Host;
  std::function<void(Storage&)> release;
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (release) release(*this);
  }
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Storage> storage, size_t offset_bytes, Shape shape, DType dtype);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int64_t numel() const { return numel_; }
  size_t bytes() const { return numel_ * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::Host; }

  void* raw() const { return static_cast<char*>(storage_->data) + offset_; }
  template <class T>
  T* data() const { return static_cast<T*>(raw()); }

  // A view of `shape` starting `element_offset` elements into this tensor.
  Tensor view(int64_t element_offset, Shape shape) const;
  // The same elements under another shape (numel must match).
  Tensor reshape(Shape shape) const;

 private:
  std::shared_ptr<Storage> storage_;  // shared by all views
  size_t offset_ = 0;                 // bytes from storage_->data
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::F32;
};

}  // namespace weft
