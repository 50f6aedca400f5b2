// A TorchScript model's output (c10::IValue) as the one output encoder sees it
// (protocol/output_tree.h): the TorchScript runner encodes its results through this, the
// Python runner through shoal._native's PyOutput, so both answer alike.
// Thread-compatible: one per job, on the job's thread.
#pragma once

#include <ATen/core/ivalue.h>
#include <torch/types.h>  // torch::Tensor and the factories; not torch/torch.h (nn, optim, data: much slower to compile)

#include <memory>
#include <string>
#include <vector>

#include "protocol/output_tree.h"

namespace shoal {

class IValueOutput : public OutputValue {
 public:
  explicit IValueOutput(c10::IValue value);
  IValueOutput(const IValueOutput&) = delete;
  IValueOutput& operator=(const IValueOutput&) = delete;

  // The value itself (the C++ client takes its tensors from it).
  const c10::IValue& value() const { return value_; }
  Kind kind() const override { return kind_; }
  std::string OtherTypeName() const override { return value_.tagKind(); }
  double Float() const override { return value_.toDouble(); }
  OutputInt Int() const override;
  bool Bool() const override { return value_.toBool(); }
  std::string Str() const override { return value_.toStringRef(); }
  std::string TupleName() const override;
  std::vector<std::string> TupleFields() const override;
  size_t Size() const override;
  std::unique_ptr<OutputValue> Item(size_t i) const override;
  std::unique_ptr<OutputValue> Key(size_t i) const override;
  std::unique_ptr<OutputValue> Value(size_t i) const override;
  Result<OutputTensor> Tensor(bool keep_gpu) override;
  Status CopyTensor(uint8_t* dst, const std::vector<int64_t>& strides) override;

 private:
  c10::IValue value_;
  Kind kind_;
  std::vector<c10::IValue> items_;  // tuple/list: items; dict: key, value, key, value...
  torch::Tensor cpu_;               // tensor: on the CPU, or kept on its GPU
};

}  // namespace shoal
