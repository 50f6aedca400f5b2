// The dtypes a tensor may have to travel through shoal: the one table that C++ and Python
// both read. Python gets it through shoal._native.DTYPES (python/native/native.cc); the
// libtorch side (tensors/tree.cc) maps the third column to at::ScalarType.
//
// Columns: shoal's name, which is also torch's (`torch.float32`); element size in bytes;
// the c10::ScalarType enumerator (at::ScalarType::Float), whose name + "Storage" is the
// legacy storage class that pickles name (`torch.FloatStorage`).
// Thread-safety: constant data and pure functions.
#pragma once

#include <cstddef>
#include <string_view>

// X(name, element size, ScalarType enumerator)
#define SHOAL_DTYPES(X)     \
  X(float32, 4, Float)      \
  X(float64, 8, Double)     \
  X(float16, 2, Half)       \
  X(bfloat16, 2, BFloat16)  \
  X(uint8, 1, Byte)         \
  X(int8, 1, Char)          \
  X(int16, 2, Short)        \
  X(int32, 4, Int)          \
  X(int64, 8, Long)         \
  X(bool, 1, Bool)          \
  X(complex64, 8, ComplexFloat) \
  X(complex128, 16, ComplexDouble)

namespace shoal {

struct DTypeInfo {
  std::string_view name;         // "float32": shoal's and torch's name
  size_t size;                   // bytes per element
  std::string_view scalar_type;  // "Float": c10::ScalarType enumerator
  std::string_view storage;      // "FloatStorage": torch's legacy storage class
};

inline constexpr DTypeInfo kDTypes[] = {
#define SHOAL_DTYPE_INFO(name, size, scalar) {#name, size, #scalar, #scalar "Storage"},
    SHOAL_DTYPES(SHOAL_DTYPE_INFO)
#undef SHOAL_DTYPE_INFO
};

// The entry of a dtype name, or nullptr when shoal does not carry that type.
constexpr const DTypeInfo* FindDType(std::string_view name) {
  for (const auto& d : kDTypes) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

// Element size in bytes of a dtype name, or 0 when the name is unknown.
constexpr size_t DTypeSize(std::string_view name) {
  const DTypeInfo* d = FindDType(name);
  return d == nullptr ? 0 : d->size;
}

}  // namespace shoal
