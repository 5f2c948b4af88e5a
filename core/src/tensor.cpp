#include "weft/tensor.hpp"

#include "weft/error.hpp"

namespace weft {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
  }
  return "?";
}

const char* mem_category_name(MemCategory category) {
  switch (category) {
    case MemCategory::Param: return "param";
    case MemCategory::Grad: return "grad";
    case MemCategory::OptimState: return "optim";
    case MemCategory::Activation: return "act";
    case MemCategory::CommBuffer: return "comm";
    case MemCategory::Workspace: return "workspace";
  }
  return "?";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t offset_bytes, Shape shape, DType dtype)
    : storage_(std::move(storage)), offset_(offset_bytes), shape_(std::move(shape)), dtype_(dtype) {
  numel_ = shape_numel(shape_);
  WEFT_ASSERT(!storage_ || offset_ + numel_ * dtype_size(dtype_) <= storage_->bytes,
              "tensor " + shape_str(shape_) + " exceeds its storage");
}

Tensor Tensor::view(int64_t element_offset, Shape shape) const {
  WEFT_ASSERT(element_offset >= 0 && element_offset + shape_numel(shape) <= numel_,
              "view " + shape_str(shape) + " at " + std::to_string(element_offset) + " outside " +
                  shape_str(shape_));
  return Tensor(storage_, offset_ + element_offset * dtype_size(dtype_), std::move(shape), dtype_);
}

Tensor Tensor::reshape(Shape shape) const {
  WEFT_ASSERT(shape_numel(shape) == numel_, "reshape " + shape_str(shape_) + " to " + shape_str(shape));
  return Tensor(storage_, offset_, std::move(shape), dtype_);
}

}  // namespace weft
