#include "tensors/ivalue_output.h"

#include "tensors/tree.h"

namespace shoal {

namespace {
OutputValue::Kind Classify(const c10::IValue& v) {
  using Kind = OutputValue::Kind;
  if (v.isTensor()) return Kind::kTensor;
  if (v.isTuple()) return Kind::kTuple;
  if (v.isList()) return Kind::kList;
  if (v.isGenericDict()) return Kind::kDict;
  if (v.isDouble()) return Kind::kFloat;
  if (v.isBool()) return Kind::kBool;
  if (v.isInt()) return Kind::kInt;
  if (v.isString()) return Kind::kStr;
  if (v.isNone()) return Kind::kNone;
  return Kind::kOther;
}
}  // namespace

IValueOutput::IValueOutput(c10::IValue value) : value_(std::move(value)), kind_(Classify(value_)) {
  if (kind_ == Kind::kTuple) {
    items_ = value_.toTupleRef().elements().vec();
  } else if (kind_ == Kind::kList) {
    items_ = value_.toListRef().vec();
  } else if (kind_ == Kind::kDict) {
    for (const auto& kv : value_.toGenericDict()) {
      items_.push_back(kv.key());
      items_.push_back(kv.value());
    }
  }
}

std::string IValueOutput::TupleName() const {
  if (kind_ != Kind::kTuple) return {};
  auto type = value_.toTupleRef().type();
  if (type == nullptr || !type->schema()) return {};
  return type->name() ? type->name()->name() : "NamedTuple";
}

std::vector<std::string> IValueOutput::TupleFields() const {
  std::vector<std::string> out;
  if (kind_ != Kind::kTuple) return out;
  auto type = value_.toTupleRef().type();
  if (type == nullptr || !type->schema()) return out;
  for (const auto& arg : type->schema()->arguments()) out.push_back(arg.name());
  return out;
}

OutputInt IValueOutput::Int() const {
  OutputInt out;
  out.s = value_.toInt();  // TorchScript ints are 64-bit
  return out;
}

size_t IValueOutput::Size() const { return kind_ == Kind::kDict ? items_.size() / 2 : items_.size(); }

std::unique_ptr<OutputValue> IValueOutput::Item(size_t i) const { return std::make_unique<IValueOutput>(items_[i]); }
std::unique_ptr<OutputValue> IValueOutput::Key(size_t i) const {
  return std::make_unique<IValueOutput>(items_[2 * i]);
}
std::unique_ptr<OutputValue> IValueOutput::Value(size_t i) const {
  return std::make_unique<IValueOutput>(items_[2 * i + 1]);
}

Result<OutputTensor> IValueOutput::Tensor(bool keep_gpu) {
  try {
    cpu_ = value_.toTensor();
    if (!cpu_.device().is_cpu() && !(keep_gpu && cpu_.device().is_cuda())) cpu_ = cpu_.cpu();
  } catch (const std::exception& e) {
    return Status(Code::kModelError, e.what());
  }
  OutputTensor t;
  t.dtype = DTypeName(cpu_.scalar_type());
  t.engine_dtype = std::string("torch.") + c10::toString(cpu_.scalar_type());
  t.shape = cpu_.sizes().vec();
  t.strides = cpu_.strides().vec();
  t.data = static_cast<const uint8_t*>(cpu_.data_ptr());
  t.plain = t.data != nullptr && !cpu_.is_conj() && !cpu_.is_neg() && !cpu_._is_zerotensor();
  if (cpu_.device().is_cuda()) t.device = cpu_.device().index();
  return t;
}

Status IValueOutput::CopyTensor(uint8_t* dst, const std::vector<int64_t>& strides) {
  try {
    torch::from_blob(dst, cpu_.sizes(), strides, cpu_.options()).copy_(cpu_);
  } catch (const std::exception& e) {
    return Status(Code::kModelError, e.what());
  }
  return Status::Ok();
}

}  // namespace shoal
